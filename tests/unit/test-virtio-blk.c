/* Tests for vcpu-worker/virtio-blk.c: a test driver brings the device up over
 * virtio-mmio and sends requests as Linux's virtio_blk does, against an
 * in-memory backend that completes at once or holds requests and completes
 * them out of order, and that fails requests on demand (werror/rerror).
 *
 * Until vcpu-worker's device models are a library, the sources are included. */
#include "common/error.h"
#include "vcpu-worker/guest-mem.h"
#include "vcpu-worker/virtqueue.h"
#include "vcpu-worker/virtio-mmio.h"
#include "vcpu-worker/virtio-blk.h"
#include "tests/unit/virtio-driver.h"

#define DISK_SECTORS 2048
#define DISK_BYTES (DISK_SECTORS * 512)

/* ---- the in-memory backend ---- */

typedef enum { OP_READ, OP_WRITE, OP_FLUSH, OP_DISCARD, OP_ZEROES, OP_ANY } OpKind;

typedef struct {
    OpKind kind;
    uint64_t offset, len;
    struct iovec iov[VMM_VQ_MAX_IOV];
    unsigned niov;
    VmmBlkRequest *req;
} Op;

typedef struct {
    uint8_t *disk;
    bool deferred;           /* hold operations until the test completes them */
    GPtrArray *pending;      /* Op */
    OpKind fail_kind;
    int fail_errno;
    int fail_count;
    int count[OP_ANY];
    bool last_may_unmap;
} MemBackend;

static int mem_run(MemBackend *b, Op *op)
{
    if (b->fail_count > 0 && (b->fail_kind == OP_ANY || b->fail_kind == op->kind)) {
        b->fail_count--;
        return -b->fail_errno;
    }
    g_assert_cmpuint(op->offset + op->len, <=, DISK_BYTES);
    switch (op->kind) {
    case OP_READ: vmm_iov_from_buf(op->iov, op->niov, 0, b->disk + op->offset, op->len); break;
    case OP_WRITE: vmm_iov_to_buf(op->iov, op->niov, 0, b->disk + op->offset, op->len); break;
    case OP_DISCARD:
    case OP_ZEROES: memset(b->disk + op->offset, 0, op->len); break;
    default: break;
    }
    return 0;
}

static void mem_finish(MemBackend *b, Op *op)
{
    int ret = mem_run(b, op);
    VmmBlkRequest *req = op->req;
    g_free(op);
    vmm_virtio_blk_complete(req, ret);
}

static void mem_start(MemBackend *b, OpKind kind, uint64_t offset, uint64_t len,
                      const struct iovec *iov, unsigned niov, VmmBlkRequest *req)
{
    Op *op = g_new0(Op, 1);
    op->kind = kind;
    op->offset = offset;
    op->len = iov ? vmm_iov_size(iov, niov) : len;
    g_assert_cmpuint(niov, <=, VMM_VQ_MAX_IOV);
    if (niov)
        memcpy(op->iov, iov, niov * sizeof(*iov));
    op->niov = niov;
    op->req = req;
    b->count[kind]++;
    if (b->deferred)
        g_ptr_array_add(b->pending, op);
    else
        mem_finish(b, op);
}

static void mem_read(void *be, uint64_t offset, const struct iovec *iov, unsigned niov,
                     VmmBlkRequest *req)
{
    mem_start(be, OP_READ, offset, 0, iov, niov, req);
}

static void mem_write(void *be, uint64_t offset, const struct iovec *iov, unsigned niov,
                      VmmBlkRequest *req)
{
    mem_start(be, OP_WRITE, offset, 0, iov, niov, req);
}

static void mem_flush(void *be, VmmBlkRequest *req)
{
    mem_start(be, OP_FLUSH, 0, 0, NULL, 0, req);
}

static void mem_discard(void *be, uint64_t offset, uint64_t len, VmmBlkRequest *req)
{
    mem_start(be, OP_DISCARD, offset, len, NULL, 0, req);
}

static void mem_write_zeroes(void *be, uint64_t offset, uint64_t len, bool may_unmap,
                             VmmBlkRequest *req)
{
    MemBackend *b = be;
    b->last_may_unmap = may_unmap;
    mem_start(be, OP_ZEROES, offset, len, NULL, 0, req);
}

static const VmmBlkBackendOps mem_ops = {
    .read = mem_read,
    .write = mem_write,
    .flush = mem_flush,
    .discard = mem_discard,
    .write_zeroes = mem_write_zeroes,
};

/* Completes held operation I (in the order they were started). */
static void mem_complete_at(MemBackend *b, guint i)
{
    Op *op = g_ptr_array_steal_index(b->pending, i);
    mem_finish(b, op);
}

/* ---- fixture ---- */

typedef struct {
    int calls;
    VmmBlkErrorAction action;
    bool is_read;
    int err;
} ErrorLog;

typedef struct {
    TestDriver td;
    MemBackend be;
    VmmVirtioBlk *blk;
    ErrorLog errors;
} Fixture;

static void log_io_error(void *opaque, VmmVirtioBlk *blk, VmmBlkErrorAction action, bool is_read,
                         int err)
{
    ErrorLog *log = opaque;
    log->calls++;
    log->action = action;
    log->is_read = is_read;
    log->err = err;
}

#define BLK_FEATURES ((1ULL << VIRTIO_F_VERSION_1) | (1ULL << VIRTIO_RING_F_EVENT_IDX) | \
                      (1ULL << VIRTIO_RING_F_INDIRECT_DESC) | (1ULL << VIRTIO_BLK_F_SEG_MAX) | \
                      (1ULL << VIRTIO_BLK_F_BLK_SIZE) | (1ULL << VIRTIO_BLK_F_FLUSH) | \
                      (1ULL << VIRTIO_BLK_F_TOPOLOGY))

static void fixture_init_with(Fixture *f, VmmVirtioBlkConfig *c)
{
    g_autoptr(GError) error = NULL;
    memset(f, 0, sizeof(*f));
    td_init(&f->td);
    f->be.disk = g_malloc0(DISK_BYTES);
    f->be.pending = g_ptr_array_new();
    c->id = "hd0";
    c->capacity = DISK_SECTORS;
    f->blk = vmm_virtio_blk_new(c, &f->td.mem, &mem_ops, &f->be, &error);
    g_assert_no_error(error);
    vmm_virtio_blk_set_io_error_hook(f->blk, log_io_error, &f->errors);
    td_attach(&f->td, vmm_virtio_blk_transport(f->blk));
}

static void fixture_init(Fixture *f)
{
    VmmVirtioBlkConfig c;
    vmm_virtio_blk_config_init(&c);
    c.serial = "SERIAL-0001";
    c.discard = c.write_zeroes = true;
    c.max_discard_seg = 4;
    c.queue_size = 128;
    fixture_init_with(f, &c);
}

static void fixture_destroy(Fixture *f)
{
    g_assert_cmpuint(f->be.pending->len, ==, 0);
    g_ptr_array_free(f->be.pending, TRUE);
    vmm_virtio_blk_free(f->blk);
    g_free(f->be.disk);
    td_destroy(&f->td);
}

static uint64_t all_features(Fixture *f)
{
    return td_device_features(&f->td);
}

/* A request as Linux lays it out: header, data pieces, status byte. */
typedef struct {
    uint16_t head;
    uint64_t status;
} Req;

static Req build(Fixture *f, unsigned qi, uint32_t type, uint64_t sector, const TdBuf *data,
                 unsigned ndata, bool indirect)
{
    TdBuf bufs[16];
    Req r;
    uint64_t hdr = td_alloc(&f->td, 16);
    uint8_t h[16] = { 0 };
    uint32_t t = GUINT32_TO_LE(type);
    uint64_t s = GUINT64_TO_LE(sector);
    memcpy(h, &t, 4);
    memcpy(h + 8, &s, 8);
    memcpy(td_host(&f->td, hdr), h, 16);
    r.status = td_alloc(&f->td, 1);
    *(uint8_t *)td_host(&f->td, r.status) = 0xee;

    unsigned n = 0;
    bufs[n++] = (TdBuf){ hdr, 16, false };
    for (unsigned i = 0; i < ndata; i++)
        bufs[n++] = data[i];
    bufs[n++] = (TdBuf){ r.status, 1, true };
    r.head = indirect ? td_add_indirect(&f->td, qi, bufs, n) : td_add_chain(&f->td, qi, bufs, n);
    return r;
}

static Req submit(Fixture *f, uint32_t type, uint64_t sector, const TdBuf *data, unsigned ndata)
{
    Req r = build(f, 0, type, sector, data, ndata, false);
    td_submit(&f->td, 0, r.head);
    return r;
}

static uint8_t status_of(Fixture *f, Req r)
{
    return *(uint8_t *)td_host(&f->td, r.status);
}

/* Expects the next used entry to be R with LEN and STATUS. */
static void expect_used(Fixture *f, unsigned qi, Req r, uint32_t len, uint8_t status)
{
    uint32_t id, got_len;
    g_assert_true(td_get_used(&f->td, qi, &id, &got_len));
    g_assert_cmpuint(id, ==, r.head);
    g_assert_cmpuint(got_len, ==, len);
    g_assert_cmpuint(status_of(f, r), ==, status);
}

static void expect_no_used(Fixture *f, unsigned qi)
{
    uint32_t id, len;
    g_assert_false(td_get_used(&f->td, qi, &id, &len));
}

static uint64_t pattern_buf(Fixture *f, uint32_t len, uint8_t seed)
{
    uint64_t gpa = td_alloc(&f->td, len);
    uint8_t *p = td_host(&f->td, gpa);
    for (uint32_t i = 0; i < len; i++)
        p[i] = (uint8_t)(seed + i * 7);
    return gpa;
}

static uint32_t cfg32(Fixture *f, unsigned off)
{
    return td_read(&f->td, VIRTIO_MMIO_CONFIG + off);
}

static uint8_t cfg8(Fixture *f, unsigned off)
{
    uint8_t v;
    vmm_virtio_mmio_access(f->td.t, VIRTIO_MMIO_CONFIG + off, &v, 1, false);
    return v;
}

/* ---- tests ---- */

static void test_config_and_features(void)
{
    Fixture f;
    VmmVirtioBlkConfig c;
    vmm_virtio_blk_config_init(&c);
    c.blk_size = 4096;
    c.physical_block_exp = 1;
    c.min_io_size = 2;
    c.opt_io_size = 16;
    c.discard = c.write_zeroes = true;
    c.num_queues = 2;
    c.config_wce = true;
    c.size_max = 65536;
    fixture_init_with(&f, &c);

    uint64_t feat = all_features(&f);
    for (unsigned bit = 0; bit < 64; bit++) {
        bool expected = bit == VIRTIO_BLK_F_SEG_MAX || bit == VIRTIO_BLK_F_BLK_SIZE ||
                        bit == VIRTIO_BLK_F_FLUSH || bit == VIRTIO_BLK_F_TOPOLOGY ||
                        bit == VIRTIO_BLK_F_DISCARD || bit == VIRTIO_BLK_F_WRITE_ZEROES ||
                        bit == VIRTIO_BLK_F_MQ || bit == VIRTIO_BLK_F_CONFIG_WCE ||
                        bit == VIRTIO_BLK_F_SIZE_MAX || bit == VIRTIO_F_VERSION_1 ||
                        bit == VIRTIO_RING_F_EVENT_IDX || bit == VIRTIO_RING_F_INDIRECT_DESC;
        if (((feat >> bit) & 1) != expected)
            g_error("feature bit %u: offered %d, expected %d", bit, (int)((feat >> bit) & 1), expected);
    }
    g_assert_cmpuint(td_read(&f.td, VIRTIO_MMIO_DEVICE_ID), ==, VIRTIO_ID_BLOCK);
    g_assert_cmpuint(cfg32(&f, VIRTIO_BLK_CFG_CAPACITY), ==, DISK_SECTORS);
    g_assert_cmpuint(cfg32(&f, VIRTIO_BLK_CFG_CAPACITY + 4), ==, 0);
    g_assert_cmpuint(cfg32(&f, VIRTIO_BLK_CFG_SIZE_MAX), ==, 65536);
    g_assert_cmpuint(cfg32(&f, VIRTIO_BLK_CFG_SEG_MAX), ==, 254);
    g_assert_cmpuint(cfg32(&f, VIRTIO_BLK_CFG_BLK_SIZE), ==, 4096);
    g_assert_cmpuint(cfg8(&f, VIRTIO_BLK_CFG_PHYSICAL_BLOCK_EXP), ==, 1);
    g_assert_cmpuint(cfg8(&f, VIRTIO_BLK_CFG_MIN_IO_SIZE), ==, 2);
    g_assert_cmpuint(cfg32(&f, VIRTIO_BLK_CFG_OPT_IO_SIZE), ==, 16);
    g_assert_cmpuint(cfg8(&f, VIRTIO_BLK_CFG_WRITEBACK), ==, 1);
    g_assert_cmpuint(cfg8(&f, VIRTIO_BLK_CFG_NUM_QUEUES), ==, 2);
    g_assert_cmpuint(cfg32(&f, VIRTIO_BLK_CFG_MAX_DISCARD_SECTORS), ==, 0x3fffff);
    g_assert_cmpuint(cfg32(&f, VIRTIO_BLK_CFG_MAX_DISCARD_SEG), ==, 1);
    g_assert_cmpuint(cfg32(&f, VIRTIO_BLK_CFG_DISCARD_SECTOR_ALIGNMENT), ==, 8);
    g_assert_cmpuint(cfg32(&f, VIRTIO_BLK_CFG_MAX_WRITE_ZEROES_SECTORS), ==, 0x3fffff);
    g_assert_cmpuint(cfg32(&f, VIRTIO_BLK_CFG_MAX_WRITE_ZEROES_SEG), ==, 1);
    g_assert_cmpuint(cfg8(&f, VIRTIO_BLK_CFG_WRITE_ZEROES_MAY_UNMAP), ==, 0);

    /* The write cache: on with FLUSH, switchable with CONFIG_WCE. */
    td_bring_up(&f.td, feat & ~(1ULL << VIRTIO_BLK_F_MQ), 1, 64);
    g_assert_true(vmm_virtio_blk_writeback(f.blk));
    uint8_t off = 0;
    vmm_virtio_mmio_access(f.td.t, VIRTIO_MMIO_CONFIG + VIRTIO_BLK_CFG_WRITEBACK, &off, 1, true);
    g_assert_cmpuint(cfg8(&f, VIRTIO_BLK_CFG_WRITEBACK), ==, 0);
    g_assert_false(vmm_virtio_blk_writeback(f.blk));

    /* A resize reaches the driver as a config change. */
    td_ack_irq(&f.td);
    vmm_virtio_blk_set_capacity(f.blk, 4096);
    g_assert_cmpuint(cfg32(&f, VIRTIO_BLK_CFG_CAPACITY), ==, 4096);
    g_assert_cmphex(td_ack_irq(&f.td), ==, VIRTIO_MMIO_INT_CONFIG);
    fixture_destroy(&f);
}

static void test_bad_config(void)
{
    VmmVirtioBlkConfig c;
    g_autoptr(GError) error = NULL;
    uint8_t ram[64];
    VmmGuestMem mem;
    vmm_guest_mem_init(&mem, ram, sizeof(ram));

    vmm_virtio_blk_config_init(&c);
    c.id = "bad";
    c.blk_size = 1000;
    g_assert_null(vmm_virtio_blk_new(&c, &mem, &mem_ops, NULL, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_INVALID);
    g_assert_nonnull(strstr(error->message, "drive 'bad'"));
    g_clear_error(&error);
    vmm_virtio_blk_config_init(&c);
    c.queue_size = 100;
    g_assert_null(vmm_virtio_blk_new(&c, &mem, &mem_ops, NULL, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_INVALID);
}

static void test_write_read(void)
{
    Fixture f;
    fixture_init(&f);
    td_bring_up(&f.td, BLK_FEATURES, 1, 128);

    /* 1 KiB written at sector 8 from two pieces of different sizes. */
    uint64_t a = pattern_buf(&f, 700, 1), b = pattern_buf(&f, 324, 2);
    TdBuf w[] = { { a, 700, false }, { b, 324, false } };
    Req r = submit(&f, VIRTIO_BLK_T_OUT, 8, w, 2);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_OK);
    g_assert_cmpmem(f.be.disk + 8 * 512, 700, td_host(&f.td, a), 700);
    g_assert_cmpmem(f.be.disk + 8 * 512 + 700, 324, td_host(&f.td, b), 324);
    g_assert_true(f.td.irq_level);
    td_ack_irq(&f.td);

    /* Read back in one piece, through an indirect table. */
    uint64_t in = td_alloc(&f.td, 1024);
    TdBuf rd = { in, 1024, true };
    Req r2 = build(&f, 0, VIRTIO_BLK_T_IN, 8, &rd, 1, true);
    td_submit(&f.td, 0, r2.head);
    expect_used(&f, 0, r2, 1025, VIRTIO_BLK_S_OK);
    g_assert_cmpmem(td_host(&f.td, in), 1024, f.be.disk + 8 * 512, 1024);
    g_assert_cmpint(f.be.count[OP_READ], ==, 1);
    g_assert_cmpint(f.be.count[OP_WRITE], ==, 1);
    /* Writeback cache: no flush after the write. */
    g_assert_cmpint(f.be.count[OP_FLUSH], ==, 0);
    fixture_destroy(&f);
}

static void test_many_in_flight_out_of_order(void)
{
    Fixture f;
    fixture_init(&f);
    td_bring_up(&f.td, BLK_FEATURES, 1, 128);
    f.be.deferred = true;

    enum { N = 32 };
    Req reqs[N];
    uint64_t bufs[N];
    for (unsigned i = 0; i < N; i++) {
        bufs[i] = pattern_buf(&f, 512, i);
        TdBuf d = { bufs[i], 512, false };
        reqs[i] = build(&f, 0, VIRTIO_BLK_T_OUT, i, &d, 1, i % 2);
        td_publish(&f.td, 0, reqs[i].head);
    }
    td_kick(&f.td, 0);
    g_assert_cmpuint(f.be.pending->len, ==, N);
    g_assert_cmpuint(vmm_virtio_blk_in_flight(f.blk), ==, N);
    expect_no_used(&f, 0);
    g_assert_false(f.td.irq_level);

    /* The backend answers from the last to the first. */
    for (unsigned i = 0; i < N; i++)
        mem_complete_at(&f.be, f.be.pending->len - 1);
    for (unsigned i = 0; i < N; i++)
        expect_used(&f, 0, reqs[N - 1 - i], 1, VIRTIO_BLK_S_OK);
    for (unsigned i = 0; i < N; i++)
        g_assert_cmpmem(f.be.disk + i * 512, 512, td_host(&f.td, bufs[i]), 512);
    g_assert_cmpuint(vmm_virtio_blk_in_flight(f.blk), ==, 0);
    g_assert_true(f.td.irq_level);

    /* Interleaved: new requests arrive while older ones are still out. */
    Req x = submit(&f, VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
    uint64_t in = td_alloc(&f.td, 512);
    TdBuf rd = { in, 512, true };
    Req y = submit(&f, VIRTIO_BLK_T_IN, 3, &rd, 1);
    mem_complete_at(&f.be, 1);
    expect_used(&f, 0, y, 513, VIRTIO_BLK_S_OK);
    g_assert_cmpmem(td_host(&f.td, in), 512, td_host(&f.td, bufs[3]), 512);
    mem_complete_at(&f.be, 0);
    expect_used(&f, 0, x, 1, VIRTIO_BLK_S_OK);
    fixture_destroy(&f);
}

static void test_event_idx_suppresses_interrupts(void)
{
    Fixture f;
    fixture_init(&f);
    td_bring_up(&f.td, BLK_FEATURES, 1, 128);
    f.be.deferred = true;
    TdQueue *q = &f.td.q[0];
    /* The driver wants to hear only once the third request is used. */
    td_put16(&f.td, q->avail + 4 + 2 * q->num, 2);
    Req r[3];
    for (unsigned i = 0; i < 3; i++)
        r[i] = submit(&f, VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
    mem_complete_at(&f.be, 0);
    g_assert_cmpint(f.td.irq_raised, ==, 1);     /* the first one always interrupts */
    td_ack_irq(&f.td);
    mem_complete_at(&f.be, 0);
    g_assert_cmpint(f.td.irq_raised, ==, 1);
    mem_complete_at(&f.be, 0);
    g_assert_cmpint(f.td.irq_raised, ==, 2);
    for (unsigned i = 0; i < 3; i++)
        expect_used(&f, 0, r[i], 1, VIRTIO_BLK_S_OK);
    fixture_destroy(&f);
}

static void test_flush_and_get_id(void)
{
    Fixture f;
    fixture_init(&f);
    td_bring_up(&f.td, BLK_FEATURES, 1, 128);
    Req r = submit(&f, VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_OK);
    g_assert_cmpint(f.be.count[OP_FLUSH], ==, 1);

    uint64_t id = td_alloc(&f.td, 20);
    memset(td_host(&f.td, id), 'x', 20);
    TdBuf d = { id, 20, true };
    r = submit(&f, VIRTIO_BLK_T_GET_ID, 0, &d, 1);
    expect_used(&f, 0, r, 21, VIRTIO_BLK_S_OK);
    g_assert_cmpmem(td_host(&f.td, id), 20, "SERIAL-0001\0\0\0\0\0\0\0\0\0", 20);

    /* A short buffer gets what fits. */
    memset(td_host(&f.td, id), 'x', 20);
    d.len = 6;
    r = submit(&f, VIRTIO_BLK_T_GET_ID, 0, &d, 1);
    expect_used(&f, 0, r, 7, VIRTIO_BLK_S_OK);
    g_assert_cmpmem(td_host(&f.td, id), 7, "SERIALx", 7);
    fixture_destroy(&f);
}

static void test_serial_of_20_bytes(void)
{
    Fixture f;
    VmmVirtioBlkConfig c;
    vmm_virtio_blk_config_init(&c);
    c.serial = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    fixture_init_with(&f, &c);
    td_bring_up(&f.td, BLK_FEATURES, 1, 64);
    uint64_t id = td_alloc(&f.td, 32);
    memset(td_host(&f.td, id), 'x', 32);
    TdBuf d = { id, 32, true };
    Req r = submit(&f, VIRTIO_BLK_T_GET_ID, 0, &d, 1);
    expect_used(&f, 0, r, 33, VIRTIO_BLK_S_OK);
    /* 20 bytes, no terminator; the rest of the buffer untouched. */
    g_assert_cmpmem(td_host(&f.td, id), 21, "ABCDEFGHIJKLMNOPQRSTx", 21);
    fixture_destroy(&f);
}

static Req discard_req(Fixture *f, uint32_t type, const uint64_t *sectors, const uint32_t *nums,
                       const uint32_t *flags, unsigned n)
{
    uint64_t segs = td_alloc(&f->td, 16 * n);
    for (unsigned i = 0; i < n; i++) {
        uint8_t raw[16];
        uint64_t s = GUINT64_TO_LE(sectors[i]);
        uint32_t num = GUINT32_TO_LE(nums[i]), fl = GUINT32_TO_LE(flags[i]);
        memcpy(raw, &s, 8);
        memcpy(raw + 8, &num, 4);
        memcpy(raw + 12, &fl, 4);
        memcpy(td_host(&f->td, segs + 16 * i), raw, 16);
    }
    TdBuf d = { segs, 16 * n, false };
    return submit(f, type, 0, &d, 1);
}

static void test_discard_write_zeroes(void)
{
    Fixture f;
    fixture_init(&f);
    memset(f.be.disk, 0xab, DISK_BYTES);
    uint64_t feat = BLK_FEATURES | (1ULL << VIRTIO_BLK_F_DISCARD) | (1ULL << VIRTIO_BLK_F_WRITE_ZEROES);
    td_bring_up(&f.td, feat, 1, 128);

    uint64_t s2[] = { 0, 100 };
    uint32_t n2[] = { 4, 8 }, f0[] = { 0, 0 };
    Req r = discard_req(&f, VIRTIO_BLK_T_DISCARD, s2, n2, f0, 2);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_OK);
    g_assert_cmpint(f.be.count[OP_DISCARD], ==, 2);
    g_assert_cmpuint(f.be.disk[0], ==, 0);
    g_assert_cmpuint(f.be.disk[4 * 512], ==, 0xab);
    g_assert_cmpuint(f.be.disk[107 * 512 + 511], ==, 0);

    uint64_t s1[] = { 200 };
    uint32_t n1[] = { 2 }, unmap[] = { VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP };
    r = discard_req(&f, VIRTIO_BLK_T_WRITE_ZEROES, s1, n1, unmap, 1);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_OK);
    g_assert_true(f.be.last_may_unmap);
    g_assert_cmpuint(f.be.disk[200 * 512], ==, 0);
    g_assert_cmpuint(f.be.disk[202 * 512], ==, 0xab);

    /* Discard takes no flags; unknown flags are unsupported. */
    r = discard_req(&f, VIRTIO_BLK_T_DISCARD, s1, n1, unmap, 1);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_UNSUPP);
    uint32_t bad[] = { 2 };
    r = discard_req(&f, VIRTIO_BLK_T_WRITE_ZEROES, s1, n1, bad, 1);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_UNSUPP);
    /* Too many segments (limit 4 for discard, 1 for write-zeroes). */
    uint64_t s5[5] = { 0 };
    uint32_t n5[5] = { 1, 1, 1, 1, 1 }, f5[5] = { 0 };
    r = discard_req(&f, VIRTIO_BLK_T_DISCARD, s5, n5, f5, 5);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_UNSUPP);
    r = discard_req(&f, VIRTIO_BLK_T_WRITE_ZEROES, s2, n2, f0, 2);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_UNSUPP);
    /* Past the end, and over the size limit. */
    uint64_t end[] = { DISK_SECTORS - 1 };
    r = discard_req(&f, VIRTIO_BLK_T_DISCARD, end, n1, f0, 1);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_IOERR);
    uint32_t huge[] = { 0x400000 };
    r = discard_req(&f, VIRTIO_BLK_T_WRITE_ZEROES, s1, huge, f0, 1);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_IOERR);
    /* A backend that cannot discard has still done its job. */
    f.be.fail_kind = OP_DISCARD;
    f.be.fail_errno = ENOTSUP;
    f.be.fail_count = 1;
    r = discard_req(&f, VIRTIO_BLK_T_DISCARD, s1, n1, f0, 1);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_OK);
    g_assert_cmpint(f.errors.calls, ==, 0);
    fixture_destroy(&f);
}

static void test_discard_not_negotiated(void)
{
    Fixture f;
    fixture_init(&f);
    td_bring_up(&f.td, BLK_FEATURES, 1, 128);
    uint64_t s[] = { 0 };
    uint32_t n[] = { 1 }, fl[] = { 0 };
    Req r = discard_req(&f, VIRTIO_BLK_T_DISCARD, s, n, fl, 1);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_UNSUPP);
    r = discard_req(&f, VIRTIO_BLK_T_WRITE_ZEROES, s, n, fl, 1);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_UNSUPP);
    g_assert_cmpint(f.be.count[OP_DISCARD] + f.be.count[OP_ZEROES], ==, 0);
    fixture_destroy(&f);
}

static void test_bad_requests(void)
{
    Fixture f;
    fixture_init(&f);
    td_bring_up(&f.td, BLK_FEATURES, 1, 128);
    uint64_t buf = td_alloc(&f.td, 1024);
    TdBuf rd = { buf, 1024, true }, odd = { buf, 100, true };

    Req r = submit(&f, VIRTIO_BLK_T_IN, DISK_SECTORS - 1, &rd, 1);
    expect_used(&f, 0, r, 1025, VIRTIO_BLK_S_IOERR);
    r = submit(&f, VIRTIO_BLK_T_IN, UINT64_MAX, &rd, 1);
    expect_used(&f, 0, r, 1025, VIRTIO_BLK_S_IOERR);
    r = submit(&f, VIRTIO_BLK_T_IN, 0, &odd, 1);
    expect_used(&f, 0, r, 101, VIRTIO_BLK_S_IOERR);
    r = submit(&f, 77, 0, &rd, 1);
    expect_used(&f, 0, r, 1025, VIRTIO_BLK_S_UNSUPP);
    /* An empty read reads nothing and succeeds. */
    r = submit(&f, VIRTIO_BLK_T_IN, DISK_SECTORS, NULL, 0);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_OK);
    g_assert_cmpint(f.be.count[OP_READ], ==, 0);
    g_assert_cmphex(vmm_virtio_mmio_status(f.td.t) & VIRTIO_STATUS_NEEDS_RESET, ==, 0);
    fixture_destroy(&f);
}

static void test_read_only(void)
{
    Fixture f;
    VmmVirtioBlkConfig c;
    vmm_virtio_blk_config_init(&c);
    c.read_only = true;
    c.discard = c.write_zeroes = true;
    fixture_init_with(&f, &c);
    uint64_t feat = all_features(&f);
    g_assert_true(feat & (1ULL << VIRTIO_BLK_F_RO));
    g_assert_false(feat & (1ULL << VIRTIO_BLK_F_DISCARD));
    g_assert_false(feat & (1ULL << VIRTIO_BLK_F_WRITE_ZEROES));
    td_bring_up(&f.td, BLK_FEATURES | (1ULL << VIRTIO_BLK_F_RO), 1, 64);

    TdBuf w = { pattern_buf(&f, 512, 9), 512, false };
    Req r = submit(&f, VIRTIO_BLK_T_OUT, 0, &w, 1);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_IOERR);
    g_assert_cmpint(f.be.count[OP_WRITE], ==, 0);
    g_assert_cmpuint(f.be.disk[0], ==, 0);
    TdBuf rd = { td_alloc(&f.td, 512), 512, true };
    r = submit(&f, VIRTIO_BLK_T_IN, 0, &rd, 1);
    expect_used(&f, 0, r, 513, VIRTIO_BLK_S_OK);
    fixture_destroy(&f);
}

static void test_malformed_requests_need_reset(void)
{
    /* No status byte; a header shorter than 16 bytes; a descriptor loop. */
    for (int kind = 0; kind < 3; kind++) {
        Fixture f;
        fixture_init(&f);
        td_bring_up(&f.td, BLK_FEATURES, 1, 128);
        uint64_t hdr = td_alloc(&f.td, 16);
        if (kind == 0) {
            TdBuf b = { hdr, 16, false };
            td_submit(&f.td, 0, td_add_chain(&f.td, 0, &b, 1));
        } else if (kind == 1) {
            TdBuf b[] = { { hdr, 15, false }, { td_alloc(&f.td, 1), 1, true } };
            td_submit(&f.td, 0, td_add_chain(&f.td, 0, b, 2));
        } else {
            td_write_desc(&f.td, f.td.q[0].desc, 0, hdr, 16, VIRTQ_DESC_F_NEXT, 1);
            td_write_desc(&f.td, f.td.q[0].desc, 1, hdr, 16, VIRTQ_DESC_F_NEXT, 0);
            td_submit(&f.td, 0, 0);
        }
        g_assert_cmphex(vmm_virtio_mmio_status(f.td.t) & VIRTIO_STATUS_NEEDS_RESET, ==,
                        VIRTIO_STATUS_NEEDS_RESET);
        expect_no_used(&f, 0);
        g_assert_cmphex(td_ack_irq(&f.td), ==, VIRTIO_MMIO_INT_CONFIG);

        /* After a reset the driver can use the device again. */
        f.td.ring_next = 0x1000;
        td_bring_up(&f.td, BLK_FEATURES, 1, 128);
        Req r = submit(&f, VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
        expect_used(&f, 0, r, 1, VIRTIO_BLK_S_OK);
        fixture_destroy(&f);
    }
}

static void fail_next(Fixture *f, OpKind kind, int err)
{
    f->be.fail_kind = kind;
    f->be.fail_errno = err;
    f->be.fail_count = 1;
}

static void test_error_report_and_ignore(void)
{
    Fixture f;
    VmmVirtioBlkConfig c;
    vmm_virtio_blk_config_init(&c);
    c.werror = VMM_BLK_ERROR_IGNORE;
    fixture_init_with(&f, &c);
    td_bring_up(&f.td, BLK_FEATURES, 1, 64);

    /* rerror=report (the default): the guest sees the error. */
    TdBuf rd = { td_alloc(&f.td, 512), 512, true };
    fail_next(&f, OP_READ, EIO);
    Req r = submit(&f, VIRTIO_BLK_T_IN, 0, &rd, 1);
    expect_used(&f, 0, r, 513, VIRTIO_BLK_S_IOERR);
    g_assert_cmpint(f.errors.calls, ==, 1);
    g_assert_cmpint(f.errors.action, ==, VMM_BLK_ERROR_REPORT);
    g_assert_true(f.errors.is_read);
    g_assert_cmpint(f.errors.err, ==, EIO);

    /* werror=ignore: the guest is told the write worked. */
    TdBuf w = { pattern_buf(&f, 512, 3), 512, false };
    fail_next(&f, OP_WRITE, EIO);
    r = submit(&f, VIRTIO_BLK_T_OUT, 0, &w, 1);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_OK);
    g_assert_cmpint(f.errors.calls, ==, 2);
    g_assert_cmpint(f.errors.action, ==, VMM_BLK_ERROR_IGNORE);
    g_assert_false(f.errors.is_read);
    fixture_destroy(&f);
}

static void test_error_stop_and_resume(void)
{
    Fixture f;
    VmmVirtioBlkConfig c;
    vmm_virtio_blk_config_init(&c);
    c.werror = VMM_BLK_ERROR_STOP;
    fixture_init_with(&f, &c);
    td_bring_up(&f.td, BLK_FEATURES, 1, 64);

    uint64_t data = pattern_buf(&f, 512, 5);
    TdBuf w = { data, 512, false };
    fail_next(&f, OP_WRITE, EIO);
    Req r = submit(&f, VIRTIO_BLK_T_OUT, 4, &w, 1);
    /* Kept, not completed; the VM-level hook was told to stop. */
    expect_no_used(&f, 0);
    g_assert_cmpint(f.errors.calls, ==, 1);
    g_assert_cmpint(f.errors.action, ==, VMM_BLK_ERROR_STOP);
    g_assert_cmpuint(vmm_virtio_blk_stopped(f.blk), ==, 1);
    g_assert_cmpuint(vmm_virtio_blk_in_flight(f.blk), ==, 0);

    /* cont: the request is retried and now succeeds. */
    vmm_virtio_blk_resume(f.blk);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_OK);
    g_assert_cmpmem(f.be.disk + 4 * 512, 512, td_host(&f.td, data), 512);
    g_assert_cmpuint(vmm_virtio_blk_stopped(f.blk), ==, 0);
    g_assert_cmpint(f.be.count[OP_WRITE], ==, 2);
    fixture_destroy(&f);
}

static void test_error_enospc(void)
{
    Fixture f;
    fixture_init(&f);     /* werror=enospc, QEMU's default */
    td_bring_up(&f.td, BLK_FEATURES, 1, 128);
    TdBuf w = { pattern_buf(&f, 512, 5), 512, false };

    fail_next(&f, OP_WRITE, EIO);
    Req r = submit(&f, VIRTIO_BLK_T_OUT, 0, &w, 1);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_IOERR);
    g_assert_cmpint(f.errors.action, ==, VMM_BLK_ERROR_REPORT);

    fail_next(&f, OP_WRITE, ENOSPC);
    r = submit(&f, VIRTIO_BLK_T_OUT, 0, &w, 1);
    expect_no_used(&f, 0);
    g_assert_cmpint(f.errors.action, ==, VMM_BLK_ERROR_STOP);
    g_assert_cmpint(f.errors.err, ==, ENOSPC);
    vmm_virtio_blk_resume(f.blk);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_OK);

    /* A failed flush follows werror too. */
    fail_next(&f, OP_FLUSH, EIO);
    r = submit(&f, VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_IOERR);
    g_assert_false(f.errors.is_read);
    fixture_destroy(&f);
}

static void test_writethrough(void)
{
    Fixture f;
    VmmVirtioBlkConfig c;
    vmm_virtio_blk_config_init(&c);
    c.config_wce = true;
    c.writethrough = true;
    fixture_init_with(&f, &c);
    g_assert_cmpuint(cfg8(&f, VIRTIO_BLK_CFG_WRITEBACK), ==, 0);
    td_bring_up(&f.td, BLK_FEATURES | (1ULL << VIRTIO_BLK_F_CONFIG_WCE), 1, 64);
    g_assert_false(vmm_virtio_blk_writeback(f.blk));
    f.be.deferred = true;

    TdBuf w = { pattern_buf(&f, 512, 5), 512, false };
    Req r = submit(&f, VIRTIO_BLK_T_OUT, 0, &w, 1);
    mem_complete_at(&f.be, 0);
    /* Written, not yet flushed: not complete. */
    expect_no_used(&f, 0);
    g_assert_cmpint(f.be.count[OP_FLUSH], ==, 1);
    mem_complete_at(&f.be, 0);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_OK);

    /* A failed flush fails the write (werror=enospc reports EIO). */
    fail_next(&f, OP_FLUSH, EIO);
    r = submit(&f, VIRTIO_BLK_T_OUT, 0, &w, 1);
    mem_complete_at(&f.be, 0);
    mem_complete_at(&f.be, 0);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_IOERR);

    /* The guest turns the cache on: no more flushes. */
    uint8_t on = 1;
    vmm_virtio_mmio_access(f.td.t, VIRTIO_MMIO_CONFIG + VIRTIO_BLK_CFG_WRITEBACK, &on, 1, true);
    r = submit(&f, VIRTIO_BLK_T_OUT, 0, &w, 1);
    mem_complete_at(&f.be, 0);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_OK);
    g_assert_cmpint(f.be.count[OP_FLUSH], ==, 2);
    fixture_destroy(&f);
}

static void test_no_flush_feature_is_writethrough(void)
{
    Fixture f;
    fixture_init(&f);
    td_bring_up(&f.td, BLK_FEATURES & ~(1ULL << VIRTIO_BLK_F_FLUSH), 1, 128);
    g_assert_false(vmm_virtio_blk_writeback(f.blk));
    TdBuf w = { pattern_buf(&f, 512, 5), 512, false };
    Req r = submit(&f, VIRTIO_BLK_T_OUT, 0, &w, 1);
    expect_used(&f, 0, r, 1, VIRTIO_BLK_S_OK);
    g_assert_cmpint(f.be.count[OP_FLUSH], ==, 1);
    fixture_destroy(&f);
}

static void test_multiqueue(void)
{
    Fixture f;
    VmmVirtioBlkConfig c;
    vmm_virtio_blk_config_init(&c);
    c.num_queues = 3;
    fixture_init_with(&f, &c);
    td_bring_up(&f.td, BLK_FEATURES | (1ULL << VIRTIO_BLK_F_MQ), 3, 64);
    for (unsigned q = 0; q < 3; q++) {
        TdBuf w = { pattern_buf(&f, 512, q), 512, false };
        Req r = build(&f, q, VIRTIO_BLK_T_OUT, q, &w, 1, false);
        td_submit(&f.td, q, r.head);
        expect_used(&f, q, r, 1, VIRTIO_BLK_S_OK);
        for (unsigned other = 0; other < 3; other++)
            if (other != q)
                g_assert_cmpuint(td_used_idx(&f.td, other), ==, other < q ? 1 : 0);
    }
    fixture_destroy(&f);
}

static void test_reset_with_requests_in_flight(void)
{
    Fixture f;
    fixture_init(&f);
    td_bring_up(&f.td, BLK_FEATURES, 1, 128);
    f.be.deferred = true;
    TdBuf rd = { td_alloc(&f.td, 512), 512, true };
    Req r = submit(&f, VIRTIO_BLK_T_IN, 0, &rd, 1);
    g_assert_cmpuint(vmm_virtio_blk_in_flight(f.blk), ==, 1);
    td_write(&f.td, VIRTIO_MMIO_STATUS, 0);
    /* The late completion must not touch the rings the driver forgot. */
    memset(td_host(&f.td, f.td.q[0].used), 0x5a, 8);
    mem_complete_at(&f.be, 0);
    g_assert_cmpuint(vmm_virtio_blk_in_flight(f.blk), ==, 0);
    g_assert_cmpuint(*(uint8_t *)td_host(&f.td, f.td.q[0].used + 2), ==, 0x5a);
    g_assert_cmpuint(status_of(&f, r), ==, 0xee);
    fixture_destroy(&f);
}

static void test_error_action_names(void)
{
    VmmBlkErrorAction a;
    g_autoptr(GError) error = NULL;
    const char *names[] = { "report", "ignore", "stop", "enospc" };
    for (int i = 0; i < 4; i++) {
        g_assert_true(vmm_blk_error_action_parse(names[i], &a, &error));
        g_assert_cmpstr(vmm_blk_error_action_name(a), ==, names[i]);
    }
    g_assert_false(vmm_blk_error_action_parse("retry", &a, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_INVALID);
    g_assert_nonnull(strstr(error->message, "'retry'"));
    VmmVirtioBlkConfig c;
    vmm_virtio_blk_config_init(&c);
    g_assert_cmpint(c.werror, ==, VMM_BLK_ERROR_ENOSPC);
    g_assert_cmpint(c.rerror, ==, VMM_BLK_ERROR_REPORT);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/virtio-blk/config-and-features", test_config_and_features);
    g_test_add_func("/virtio-blk/bad-config", test_bad_config);
    g_test_add_func("/virtio-blk/write-read", test_write_read);
    g_test_add_func("/virtio-blk/many-in-flight-out-of-order", test_many_in_flight_out_of_order);
    g_test_add_func("/virtio-blk/event-idx", test_event_idx_suppresses_interrupts);
    g_test_add_func("/virtio-blk/flush-and-get-id", test_flush_and_get_id);
    g_test_add_func("/virtio-blk/serial-of-20-bytes", test_serial_of_20_bytes);
    g_test_add_func("/virtio-blk/discard-write-zeroes", test_discard_write_zeroes);
    g_test_add_func("/virtio-blk/discard-not-negotiated", test_discard_not_negotiated);
    g_test_add_func("/virtio-blk/bad-requests", test_bad_requests);
    g_test_add_func("/virtio-blk/read-only", test_read_only);
    g_test_add_func("/virtio-blk/malformed-requests-need-reset", test_malformed_requests_need_reset);
    g_test_add_func("/virtio-blk/error-report-and-ignore", test_error_report_and_ignore);
    g_test_add_func("/virtio-blk/error-stop-and-resume", test_error_stop_and_resume);
    g_test_add_func("/virtio-blk/error-enospc", test_error_enospc);
    g_test_add_func("/virtio-blk/writethrough", test_writethrough);
    g_test_add_func("/virtio-blk/no-flush-feature-is-writethrough", test_no_flush_feature_is_writethrough);
    g_test_add_func("/virtio-blk/multiqueue", test_multiqueue);
    g_test_add_func("/virtio-blk/reset-with-requests-in-flight", test_reset_with_requests_in_flight);
    g_test_add_func("/virtio-blk/error-action-names", test_error_action_names);
    return g_test_run();
}
