/* Tests for vcpu-worker/guest-mem.c and vcpu-worker/virtqueue.c: a test driver
 * writes split rings into a buffer standing in for guest RAM; the queue must
 * return exactly the chains the driver wrote and turn every malformed ring
 * (loops, out-of-range indexes and addresses, bad indirect tables) into an
 * error without touching memory outside RAM.
 *
 * Until vcpu-worker's device models are a library, the sources are included. */
#include "common/error.h"
#include "vcpu-worker/guest-mem.h"
#include "vcpu-worker/virtqueue.h"
#include "tests/unit/virtio-driver.h"

#include <sys/mman.h>

typedef struct {
    TestDriver td;
    VmmVirtqueue vq;
} Fixture;

static void setup_queue(Fixture *f, uint16_t num, bool event_idx, bool indirect)
{
    TdQueue *q = &f->td.q[0];
    q->num = num;
    q->desc = td_ring_alloc(&f->td, 16 * num, 16);
    q->avail = td_ring_alloc(&f->td, 6 + 2 * num, 2);
    q->used = td_ring_alloc(&f->td, 6 + 8 * num, 4);
    vmm_vq_init(&f->vq, &f->td.mem, "test", 0, 256);
    f->vq.num = num;
    f->vq.desc_gpa = q->desc;
    f->vq.avail_gpa = q->avail;
    f->vq.used_gpa = q->used;
    g_autoptr(GError) error = NULL;
    g_assert_true(vmm_vq_activate(&f->vq, event_idx, indirect, &error));
    g_assert_no_error(error);
}

static void fixture_init(Fixture *f, uint16_t num, bool event_idx, bool indirect)
{
    td_init(&f->td);
    setup_queue(f, num, event_idx, indirect);
}

static void fixture_destroy(Fixture *f)
{
    vmm_vq_destroy(&f->vq);
    td_destroy(&f->td);
}

/* Pops expecting an error whose message contains WHAT; the queue stays broken. */
static void expect_pop_error(Fixture *f, const char *what)
{
    VmmVqElem *elem = (VmmVqElem *)0x1;
    g_autoptr(GError) error = NULL;
    g_assert_cmpint(vmm_vq_pop(&f->vq, &elem, &error), ==, VMM_VQ_ERROR);
    g_assert_null(elem);
    g_assert_error(error, VMM_ERROR, VMM_ERROR_INVALID);
    if (!strstr(error->message, what))
        g_error("error '%s' does not mention '%s'", error->message, what);
    g_clear_error(&error);
    g_assert_true(f->vq.broken);
    g_assert_cmpint(vmm_vq_pop(&f->vq, &elem, &error), ==, VMM_VQ_ERROR);
    g_assert_false(vmm_vq_has_avail(&f->vq));
}

static VmmVqElem *expect_pop(Fixture *f)
{
    VmmVqElem *elem = NULL;
    g_autoptr(GError) error = NULL;
    g_assert_cmpint(vmm_vq_pop(&f->vq, &elem, &error), ==, VMM_VQ_OK);
    g_assert_no_error(error);
    g_assert_nonnull(elem);
    return elem;
}

static void expect_empty(Fixture *f)
{
    VmmVqElem *elem = NULL;
    g_autoptr(GError) error = NULL;
    g_assert_cmpint(vmm_vq_pop(&f->vq, &elem, &error), ==, VMM_VQ_EMPTY);
    g_assert_no_error(error);
    g_assert_null(elem);
}

/* ---- guest memory ---- */

static void test_guest_mem_bounds(void)
{
    uint8_t ram[4096];
    VmmGuestMem mem;
    vmm_guest_mem_init(&mem, ram, sizeof(ram));

    g_assert_true(vmm_guest_mem_ptr(&mem, 0, 4096) == ram);
    g_assert_true(vmm_guest_mem_ptr(&mem, 4095, 1) == ram + 4095);
    g_assert_true(vmm_guest_mem_ptr(&mem, 4096, 0) == NULL);
    g_assert_null(vmm_guest_mem_ptr(&mem, 4095, 2));
    g_assert_null(vmm_guest_mem_ptr(&mem, 4096, 1));
    g_assert_null(vmm_guest_mem_ptr(&mem, UINT64_MAX, 2));
    g_assert_null(vmm_guest_mem_ptr(&mem, 1, UINT64_MAX));
    uint8_t buf[8];
    g_assert_false(vmm_guest_mem_read(&mem, 4090, buf, 8));
    g_assert_false(vmm_guest_mem_write(&mem, UINT64_MAX - 2, buf, 8));
    g_assert_true(vmm_guest_mem_write(&mem, 4088, "abcdefgh", 8));
    g_assert_cmpmem(ram + 4088, 8, "abcdefgh", 8);
    g_assert_cmpuint(vmm_guest_mem_total(&mem), ==, 4096);
}

static void test_guest_mem_regions(void)
{
    uint8_t low[4096], high[4096], far[4096];
    VmmGuestMem mem;
    g_autoptr(GError) error = NULL;
    vmm_guest_mem_init(&mem, low, sizeof(low));
    /* Adjacent to the first region, but a separate mapping. */
    g_assert_true(vmm_guest_mem_add_region(&mem, 4096, high, sizeof(high), &error));
    g_assert_true(vmm_guest_mem_add_region(&mem, 1ULL << 32, far, sizeof(far), &error));
    g_assert_no_error(error);
    g_assert_false(vmm_guest_mem_add_region(&mem, 8000, far, 4096, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_INVALID);
    g_clear_error(&error);

    /* One pointer cannot span two mappings; copies can. */
    g_assert_null(vmm_guest_mem_ptr(&mem, 4090, 12));
    g_assert_true(vmm_guest_mem_write(&mem, 4090, "0123456789ab", 12));
    g_assert_cmpmem(low + 4090, 6, "012345", 6);
    g_assert_cmpmem(high, 6, "6789ab", 6);
    char back[12];
    g_assert_true(vmm_guest_mem_read(&mem, 4090, back, 12));
    g_assert_cmpmem(back, 12, "0123456789ab", 12);
    /* The hole between 8 KiB and 4 GiB is not RAM. */
    g_assert_false(vmm_guest_mem_read(&mem, 8190, back, 4));
    g_assert_true(vmm_guest_mem_ptr(&mem, (1ULL << 32) + 10, 10) == far + 10);
}

/* ---- well-formed chains ---- */

static void test_pop_push_direct(void)
{
    Fixture f;
    fixture_init(&f, 8, false, false);
    uint64_t hdr = td_alloc(&f.td, 16), data = td_alloc(&f.td, 512), st = td_alloc(&f.td, 1);
    TdBuf bufs[] = { { hdr, 16, false }, { data, 512, true }, { st, 1, true } };
    memcpy(td_host(&f.td, hdr), "header-bytes-16!", 16);

    expect_empty(&f);
    uint16_t head = td_add_chain(&f.td, 0, bufs, 3);
    td_publish(&f.td, 0, head);
    g_assert_true(vmm_vq_has_avail(&f.vq));
    VmmVqElem *e = expect_pop(&f);
    g_assert_cmpuint(e->head, ==, head);
    g_assert_cmpuint(e->n_out, ==, 1);
    g_assert_cmpuint(e->n_in, ==, 2);
    g_assert_cmpuint(e->out_bytes, ==, 16);
    g_assert_cmpuint(e->in_bytes, ==, 513);
    g_assert_true(e->out[0].iov_base == td_host(&f.td, hdr));
    g_assert_true(e->in[0].iov_base == td_host(&f.td, data));
    g_assert_cmpuint(e->in[1].iov_len, ==, 1);
    expect_empty(&f);

    vmm_vq_push(&f.vq, e, 513);
    uint32_t id, len;
    g_assert_true(td_get_used(&f.td, 0, &id, &len));
    g_assert_cmpuint(id, ==, head);
    g_assert_cmpuint(len, ==, 513);
    g_assert_false(td_get_used(&f.td, 0, &id, &len));
    g_free(e);
    fixture_destroy(&f);
}

static void test_pop_indirect(void)
{
    Fixture f;
    fixture_init(&f, 8, false, true);
    TdBuf bufs[6];
    for (unsigned i = 0; i < 6; i++)
        bufs[i] = (TdBuf){ td_alloc(&f.td, 100 + i), 100 + i, i >= 2 };
    td_publish(&f.td, 0, td_add_indirect(&f.td, 0, bufs, 6));
    VmmVqElem *e = expect_pop(&f);
    g_assert_cmpuint(e->n_out, ==, 2);
    g_assert_cmpuint(e->n_in, ==, 4);
    g_assert_cmpuint(e->out_bytes, ==, 201);
    g_assert_cmpuint(e->in_bytes, ==, 102 + 103 + 104 + 105);
    g_assert_true(e->in[3].iov_base == td_host(&f.td, bufs[5].gpa));
    g_free(e);
    fixture_destroy(&f);
}

static void test_out_of_order_and_wrap(void)
{
    Fixture f;
    fixture_init(&f, 4, false, false);
    uint64_t buf = td_alloc(&f.td, 64);
    /* Far more requests than the 16-bit indexes hold, two in flight at a time,
     * returned in reverse order. */
    for (unsigned round = 0; round < 40000; round++) {
        TdBuf b = { buf, 64, true };
        uint16_t h1 = td_add_chain(&f.td, 0, &b, 1);
        uint16_t h2 = td_add_chain(&f.td, 0, &b, 1);
        td_publish(&f.td, 0, h1);
        td_publish(&f.td, 0, h2);
        VmmVqElem *e1 = expect_pop(&f), *e2 = expect_pop(&f);
        g_assert_cmpuint(e1->head, ==, h1);
        g_assert_cmpuint(e2->head, ==, h2);
        vmm_vq_push(&f.vq, e2, 2);
        vmm_vq_push(&f.vq, e1, 1);
        uint32_t id, len;
        g_assert_true(td_get_used(&f.td, 0, &id, &len));
        g_assert_cmpuint(id, ==, h2);
        g_assert_true(td_get_used(&f.td, 0, &id, &len));
        g_assert_cmpuint(id, ==, h1);
        g_free(e1);
        g_free(e2);
    }
    g_assert_cmpuint(f.vq.used_idx, ==, (uint16_t)80000);
    fixture_destroy(&f);
}

static void test_unpop(void)
{
    Fixture f;
    fixture_init(&f, 8, false, false);
    TdBuf b = { td_alloc(&f.td, 8), 8, true };
    td_publish(&f.td, 0, td_add_chain(&f.td, 0, &b, 1));
    VmmVqElem *e = expect_pop(&f);
    g_free(e);
    vmm_vq_unpop(&f.vq);
    g_assert_true(vmm_vq_has_avail(&f.vq));
    e = expect_pop(&f);
    g_free(e);
    expect_empty(&f);
    fixture_destroy(&f);
}

static void test_buffer_across_regions(void)
{
    Fixture f;
    fixture_init(&f, 8, false, false);
    /* A second mapping right after the first: one descriptor covering the
     * seam becomes two pieces. */
    uint8_t *extra = g_malloc0(8192);
    g_autoptr(GError) error = NULL;
    g_assert_true(vmm_guest_mem_add_region(&f.td.mem, TD_RAM_SIZE, extra, 8192, &error));
    TdBuf b = { TD_RAM_SIZE - 100, 300, true };
    td_publish(&f.td, 0, td_add_chain(&f.td, 0, &b, 1));
    VmmVqElem *e = expect_pop(&f);
    g_assert_cmpuint(e->n_in, ==, 2);
    g_assert_true(e->in[0].iov_base == f.td.ram + TD_RAM_SIZE - 100);
    g_assert_cmpuint(e->in[0].iov_len, ==, 100);
    g_assert_true(e->in[1].iov_base == extra);
    g_assert_cmpuint(e->in[1].iov_len, ==, 200);
    g_free(e);
    fixture_destroy(&f);
    g_free(extra);
}

/* ---- notification suppression ---- */

static void push_one(Fixture *f)
{
    TdBuf b = { td_alloc(&f->td, 8), 8, true };
    td_publish(&f->td, 0, td_add_chain(&f->td, 0, &b, 1));
    VmmVqElem *e = expect_pop(f);
    vmm_vq_push(&f->vq, e, 0);
    g_free(e);
}

static void test_no_interrupt_flag(void)
{
    Fixture f;
    fixture_init(&f, 8, false, false);
    push_one(&f);
    g_assert_true(vmm_vq_should_notify(&f.vq));
    td_put16(&f.td, f.td.q[0].avail, VIRTQ_AVAIL_F_NO_INTERRUPT);
    push_one(&f);
    g_assert_false(vmm_vq_should_notify(&f.vq));

    vmm_vq_set_notification(&f.vq, false);
    g_assert_cmpuint(td_get16(&f.td, f.td.q[0].used), ==, VIRTQ_USED_F_NO_NOTIFY);
    vmm_vq_set_notification(&f.vq, true);
    g_assert_cmpuint(td_get16(&f.td, f.td.q[0].used), ==, 0);
    fixture_destroy(&f);
}

static void test_event_idx(void)
{
    Fixture f;
    fixture_init(&f, 8, true, false);
    TdQueue *q = &f.td.q[0];
    uint64_t used_event = q->avail + 4 + 2 * q->num;
    uint64_t avail_event = q->used + 4 + 8 * q->num;

    /* The driver wants an interrupt when used index passes 2. */
    td_put16(&f.td, used_event, 2);
    push_one(&f);                                    /* used 1 */
    g_assert_cmpuint(td_get16(&f.td, avail_event), ==, 1);
    g_assert_true(vmm_vq_should_notify(&f.vq));      /* the first always notifies */
    push_one(&f);                                    /* used 2 */
    g_assert_false(vmm_vq_should_notify(&f.vq));
    push_one(&f);                                    /* used 3: passed event 2 */
    g_assert_true(vmm_vq_should_notify(&f.vq));
    push_one(&f);
    g_assert_false(vmm_vq_should_notify(&f.vq));
    td_put16(&f.td, used_event, 4);
    push_one(&f);                                    /* used 5 */
    g_assert_true(vmm_vq_should_notify(&f.vq));
    /* The flag is ignored with EVENT_IDX. */
    td_put16(&f.td, q->avail, VIRTQ_AVAIL_F_NO_INTERRUPT);
    td_put16(&f.td, used_event, 5);
    push_one(&f);
    g_assert_true(vmm_vq_should_notify(&f.vq));

    /* Re-enabling kicks publishes the index the device will wait for. */
    TdBuf b = { td_alloc(&f.td, 8), 8, true };
    td_publish(&f.td, 0, td_add_chain(&f.td, 0, &b, 1));
    vmm_vq_set_notification(&f.vq, true);
    g_assert_cmpuint(td_get16(&f.td, avail_event), ==, 7);
    fixture_destroy(&f);
}

/* ---- activation ---- */

static void expect_activate_error(Fixture *f, const char *what)
{
    g_autoptr(GError) error = NULL;
    g_assert_false(vmm_vq_activate(&f->vq, false, false, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_INVALID);
    if (!strstr(error->message, what))
        g_error("error '%s' does not mention '%s'", error->message, what);
}

static void test_activate_checks(void)
{
    Fixture f;
    fixture_init(&f, 8, false, false);
    VmmVirtqueue *vq = &f.vq;
    uint64_t desc = vq->desc_gpa;

    vq->num = 6;
    expect_activate_error(&f, "power of 2");
    vq->num = 512;
    expect_activate_error(&f, "power of 2");
    vq->num = 0;
    expect_activate_error(&f, "power of 2");
    vq->num = 8;
    vq->desc_gpa = desc + 8;
    expect_activate_error(&f, "aligned");
    vq->desc_gpa = TD_RAM_SIZE - 64;
    expect_activate_error(&f, "not in guest RAM");
    vq->desc_gpa = UINT64_MAX - 15;
    expect_activate_error(&f, "not in guest RAM");
    vq->desc_gpa = desc;
    vq->used_gpa = TD_RAM_SIZE - 4;
    expect_activate_error(&f, "device area");
    vq->used_gpa = f.td.q[0].used + 2;
    expect_activate_error(&f, "aligned");
    fixture_destroy(&f);
}

/* ---- malformed chains ---- */

static void test_direct_loop(void)
{
    Fixture f;
    fixture_init(&f, 8, false, false);
    uint64_t b = td_alloc(&f.td, 16);
    td_write_desc(&f.td, f.td.q[0].desc, 0, b, 16, VIRTQ_DESC_F_NEXT, 1);
    td_write_desc(&f.td, f.td.q[0].desc, 1, b, 16, VIRTQ_DESC_F_NEXT, 0);
    td_publish(&f.td, 0, 0);
    expect_pop_error(&f, "loops");
    /* A reset and a new activation make the queue usable again. */
    uint64_t d = f.vq.desc_gpa, a = f.vq.avail_gpa, u = f.vq.used_gpa;
    vmm_vq_reset(&f.vq);
    f.vq.num = 8;
    f.vq.desc_gpa = d;
    f.vq.avail_gpa = a;
    f.vq.used_gpa = u;
    g_assert_true(vmm_vq_activate(&f.vq, false, false, NULL));
    g_assert_false(f.vq.broken);
    fixture_destroy(&f);
}

static void test_self_loop(void)
{
    Fixture f;
    fixture_init(&f, 256, false, false);
    td_write_desc(&f.td, f.td.q[0].desc, 5, td_alloc(&f.td, 16), 16, VIRTQ_DESC_F_NEXT, 5);
    td_publish(&f.td, 0, 5);
    expect_pop_error(&f, "loops");
    fixture_destroy(&f);
}

static void test_head_out_of_range(void)
{
    Fixture f;
    fixture_init(&f, 8, false, false);
    td_publish(&f.td, 0, 8);
    expect_pop_error(&f, "out of range");
    fixture_destroy(&f);
}

static void test_next_out_of_range(void)
{
    Fixture f;
    fixture_init(&f, 8, false, false);
    td_write_desc(&f.td, f.td.q[0].desc, 0, td_alloc(&f.td, 16), 16, VIRTQ_DESC_F_NEXT, 0xffff);
    td_publish(&f.td, 0, 0);
    expect_pop_error(&f, "next index");
    fixture_destroy(&f);
}

static void test_avail_index_jump(void)
{
    Fixture f;
    fixture_init(&f, 8, false, false);
    td_put16(&f.td, f.td.q[0].avail + 2, 9);
    expect_pop_error(&f, "available index");
    fixture_destroy(&f);
}

static void test_buffer_outside_ram(void)
{
    static const struct {
        uint64_t addr;
        uint32_t len;
        const char *what;
    } cases[] = {
        { TD_RAM_SIZE, 1, "not in guest RAM" },
        { TD_RAM_SIZE - 10, 11, "not in guest RAM" },
        { UINT64_MAX - 5, 100, "wraps" },
        { 1ULL << 40, 4096, "not in guest RAM" },
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        Fixture f;
        fixture_init(&f, 8, false, false);
        TdBuf b = { cases[i].addr, cases[i].len, true };
        td_publish(&f.td, 0, td_add_chain(&f.td, 0, &b, 1));
        expect_pop_error(&f, cases[i].what);
        fixture_destroy(&f);
    }
}

static void test_readable_after_writable(void)
{
    Fixture f;
    fixture_init(&f, 8, false, false);
    TdBuf bufs[] = { { td_alloc(&f.td, 8), 8, true }, { td_alloc(&f.td, 8), 8, false } };
    td_publish(&f.td, 0, td_add_chain(&f.td, 0, bufs, 2));
    expect_pop_error(&f, "readable descriptor after a writable");
    fixture_destroy(&f);
}

static void write_indirect_head(Fixture *f, uint64_t table, uint32_t len, uint16_t flags)
{
    td_write_desc(&f->td, f->td.q[0].desc, 0, table, len, VIRTQ_DESC_F_INDIRECT | flags, 1);
    td_publish(&f->td, 0, 0);
}

static void test_indirect_malformed(void)
{
    static const struct {
        const char *what;
        bool feature;
        uint32_t len;
        uint16_t head_flags;
        uint16_t entry_flags;
        uint16_t entry_next;
        bool table_outside;
    } cases[] = {
        { "without VIRTIO_RING_F_INDIRECT_DESC", false, 32, 0, 0, 0, false },
        { "NEXT flag", true, 32, VIRTQ_DESC_F_NEXT, 0, 0, false },
        { "non-zero multiple of 16", true, 0, 0, 0, 0, false },
        { "non-zero multiple of 16", true, 24, 0, 0, 0, false },
        { "more than", true, 16 * (VMM_VQ_MAX_IOV + 1), 0, 0, 0, false },
        { "inside an indirect table", true, 32, 0, VIRTQ_DESC_F_INDIRECT, 0, false },
        { "loops", true, 32, 0, VIRTQ_DESC_F_NEXT, 0, false },
        { "indirect next index", true, 32, 0, VIRTQ_DESC_F_NEXT, 2, false },
        { "indirect table", true, 32, 0, 0, 0, true },
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        Fixture f;
        fixture_init(&f, 8, false, cases[i].feature);
        uint64_t table = cases[i].table_outside ? TD_RAM_SIZE - 8 : td_alloc(&f.td, 64);
        uint64_t data = td_alloc(&f.td, 16);
        if (!cases[i].table_outside)
            td_write_desc(&f.td, table, 0, data, 16, cases[i].entry_flags, cases[i].entry_next);
        write_indirect_head(&f, table, cases[i].len, cases[i].head_flags);
        expect_pop_error(&f, cases[i].what);
        fixture_destroy(&f);
    }
}

static void test_too_many_pieces(void)
{
    Fixture f;
    fixture_init(&f, 8, false, true);
    /* An indirect table of exactly the limit is fine; one direct piece in
     * front of the same table goes over it. */
    unsigned n = VMM_VQ_MAX_IOV;
    uint64_t table = td_alloc(&f.td, 16 * n);
    uint64_t data = td_alloc(&f.td, 8);
    for (unsigned i = 0; i < n; i++)
        td_write_desc(&f.td, table, i, data, 8, i + 1 < n ? VIRTQ_DESC_F_NEXT : 0, i + 1);
    write_indirect_head(&f, table, 16 * n, 0);
    VmmVqElem *e = expect_pop(&f);
    g_assert_cmpuint(e->n_out, ==, n);
    g_free(e);

    /* One more piece: a direct descriptor before the indirect one. */
    td_write_desc(&f.td, f.td.q[0].desc, 2, data, 8, VIRTQ_DESC_F_NEXT, 3);
    td_write_desc(&f.td, f.td.q[0].desc, 3, table, 16 * n, VIRTQ_DESC_F_INDIRECT, 0);
    td_publish(&f.td, 0, 2);
    expect_pop_error(&f, "more than 1024 pieces");
    fixture_destroy(&f);
}

static void test_request_too_long(void)
{
    Fixture f;
    fixture_init(&f, 8, false, false);
    /* 3 GiB of address space (never touched) as a second RAM region: two
     * descriptors on it claim more than a used length can say. */
    uint64_t size = 3ULL << 30;
    void *big = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
    if (big == MAP_FAILED) {
        g_test_skip("cannot reserve 3 GiB of address space");
        fixture_destroy(&f);
        return;
    }
    g_assert_true(vmm_guest_mem_add_region(&f.td.mem, 8ULL << 30, big, size, NULL));
    TdBuf b[2] = { { 8ULL << 30, 0xc0000000u, true }, { 8ULL << 30, 0x40000000u, true } };
    td_publish(&f.td, 0, td_add_chain(&f.td, 0, b, 2));
    expect_pop_error(&f, "longer than 4 GiB");
    munmap(big, size);
    fixture_destroy(&f);
}

/* ---- iov helpers ---- */

static void test_iov_helpers(void)
{
    char a[3] = "abc", b[4] = "defg", c[2] = "hi";
    struct iovec iov[] = { { a, 3 }, { b, 4 }, { c, 2 } };
    char out[16] = { 0 };

    g_assert_cmpuint(vmm_iov_size(iov, 3), ==, 9);
    g_assert_cmpuint(vmm_iov_to_buf(iov, 3, 2, out, 5), ==, 5);
    g_assert_cmpmem(out, 5, "cdefg", 5);
    g_assert_cmpuint(vmm_iov_to_buf(iov, 3, 7, out, 10), ==, 2);
    g_assert_cmpuint(vmm_iov_from_buf(iov, 3, 6, "XYZ", 3), ==, 3);
    g_assert_cmpmem(b + 3, 1, "X", 1);
    g_assert_cmpmem(c, 2, "YZ", 2);

    struct iovec s[3];
    g_assert_cmpuint(vmm_iov_slice(iov, 3, 1, 4, s, 3), ==, 2);
    g_assert_true(s[0].iov_base == a + 1);
    g_assert_cmpuint(s[0].iov_len, ==, 2);
    g_assert_cmpuint(s[1].iov_len, ==, 2);
    g_assert_cmpuint(vmm_iov_slice(iov, 3, 0, 100, s, 3), ==, 3);
    g_assert_cmpuint(vmm_iov_slice(iov, 3, 9, 1, s, 3), ==, 0);
}

/* Buffers as ranges of a RAM mapping: adjacent ones merged, in order, and
 * nothing for a buffer that is not wholly inside. */
static void test_guest_ram_ranges(void)
{
    static uint8_t ram[64 * 1024];
    VmmRamRange out[4];
    struct iovec ok[4] = {
        { ram + 8192, 4096 }, { ram + 12288, 4096 },   /* adjacent: one range */
        { ram, 100 },                                  /* before: a new one */
        { ram + 100, 50 },
    };
    g_assert_cmpuint(vmm_guest_ram_ranges(ram, sizeof(ram), ok, 4, out), ==, 2);
    g_assert_cmpuint(out[0].offset, ==, 8192);
    g_assert_cmpuint(out[0].len, ==, 8192);
    g_assert_cmpuint(out[1].offset, ==, 0);
    g_assert_cmpuint(out[1].len, ==, 150);
    struct iovec over[2] = { { ram, 10 }, { ram + sizeof(ram) - 10, 20 } };
    g_assert_cmpuint(vmm_guest_ram_ranges(ram, sizeof(ram), over, 2, out), ==, 0);
    uint8_t other[16];
    struct iovec outside = { other, sizeof(other) };
    g_assert_cmpuint(vmm_guest_ram_ranges(ram, sizeof(ram), &outside, 1, out), ==, 0);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/guest-mem/bounds", test_guest_mem_bounds);
    g_test_add_func("/guest-mem/regions", test_guest_mem_regions);
    g_test_add_func("/guest-mem/ram-ranges", test_guest_ram_ranges);
    g_test_add_func("/virtqueue/pop-push-direct", test_pop_push_direct);
    g_test_add_func("/virtqueue/pop-indirect", test_pop_indirect);
    g_test_add_func("/virtqueue/out-of-order-and-wrap", test_out_of_order_and_wrap);
    g_test_add_func("/virtqueue/unpop", test_unpop);
    g_test_add_func("/virtqueue/buffer-across-regions", test_buffer_across_regions);
    g_test_add_func("/virtqueue/no-interrupt-flag", test_no_interrupt_flag);
    g_test_add_func("/virtqueue/event-idx", test_event_idx);
    g_test_add_func("/virtqueue/activate-checks", test_activate_checks);
    g_test_add_func("/virtqueue/malformed/direct-loop", test_direct_loop);
    g_test_add_func("/virtqueue/malformed/self-loop", test_self_loop);
    g_test_add_func("/virtqueue/malformed/head-out-of-range", test_head_out_of_range);
    g_test_add_func("/virtqueue/malformed/next-out-of-range", test_next_out_of_range);
    g_test_add_func("/virtqueue/malformed/avail-index-jump", test_avail_index_jump);
    g_test_add_func("/virtqueue/malformed/buffer-outside-ram", test_buffer_outside_ram);
    g_test_add_func("/virtqueue/malformed/readable-after-writable", test_readable_after_writable);
    g_test_add_func("/virtqueue/malformed/indirect", test_indirect_malformed);
    g_test_add_func("/virtqueue/malformed/too-many-pieces", test_too_many_pieces);
    g_test_add_func("/virtqueue/malformed/too-long", test_request_too_long);
    g_test_add_func("/iov/helpers", test_iov_helpers);
    return g_test_run();
}
