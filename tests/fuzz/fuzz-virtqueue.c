/* libFuzzer target for the virtqueue and the virtio-blk request parser: the
 * input becomes guest RAM plus the queue's setup; the device then processes
 * the queue as a driver's kick would make it. Nothing may crash, hang or
 * touch memory outside the RAM buffers (ASan sees each one as a separate
 * allocation) or outside the backend's disk.
 *
 * Input: 8 header bytes, then RAM contents.
 *   [0] mode: bit 0 EVENT_IDX, bit 1 INDIRECT_DESC, bit 2 virtio-blk (else the
 *       bare queue), bit 3 hold backend calls and finish them in reverse,
 *       bit 4 reset the device while calls are held, bit 5 fail backend calls,
 *       bit 6 werror/rerror=stop, then resume with a healthy backend
 *   [1] log2 of the queue size (mod 9)
 *   [2..3] descriptor table offset / 16, [4..5] driver area offset / 2,
 *   [6..7] device area offset / 4 (little-endian, in RAM)
 * Until vcpu-worker's device models are a library, the sources are included. */
#include "common/error.h"
#include "vcpu-worker/guest-mem.h"
#include "vcpu-worker/virtqueue.h"
#include "vcpu-worker/virtio-mmio.h"
#include "vcpu-worker/virtio-blk.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define RAM_SIZE (64 * 1024)
#define RAM2_SIZE 4096     /* a second mapping right after the first */
#define DISK_SECTORS 64
#define HEADER 8

typedef struct {
    uint8_t disk[DISK_SECTORS * 512];
    GPtrArray *held;
    bool hold;
    bool fail;
} FuzzBackend;

static void backend_done(FuzzBackend *b, VmmBlkRequest *req)
{
    if (b->hold) {
        g_ptr_array_add(b->held, req);
        return;
    }
    vmm_virtio_blk_complete(req, b->fail ? -EIO : 0);
}

static void check_range(uint64_t offset, uint64_t len)
{
    /* The device must have checked the range against the capacity. */
    if (offset > sizeof(((FuzzBackend *)0)->disk) || len > sizeof(((FuzzBackend *)0)->disk) - offset)
        abort();
}

static void fb_read(void *be, uint64_t offset, const struct iovec *iov, unsigned niov,
                    VmmBlkRequest *req)
{
    FuzzBackend *b = be;
    size_t len = vmm_iov_size(iov, niov);
    check_range(offset, len);
    vmm_iov_from_buf(iov, niov, 0, b->disk + offset, len);
    backend_done(b, req);
}

static void fb_write(void *be, uint64_t offset, const struct iovec *iov, unsigned niov,
                     VmmBlkRequest *req)
{
    FuzzBackend *b = be;
    size_t len = vmm_iov_size(iov, niov);
    check_range(offset, len);
    vmm_iov_to_buf(iov, niov, 0, b->disk + offset, len);
    backend_done(b, req);
}

static void fb_flush(void *be, VmmBlkRequest *req)
{
    backend_done(be, req);
}

static void fb_discard(void *be, uint64_t offset, uint64_t len, VmmBlkRequest *req)
{
    FuzzBackend *b = be;
    check_range(offset, len);
    memset(b->disk + offset, 0, len);
    backend_done(b, req);
}

static void fb_write_zeroes(void *be, uint64_t offset, uint64_t len, bool may_unmap,
                            VmmBlkRequest *req)
{
    fb_discard(be, offset, len, req);
}

static const VmmBlkBackendOps fuzz_backend_ops = {
    fb_read, fb_write, fb_flush, fb_discard, fb_write_zeroes,
};

static uint16_t le16_at(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

/* The bare queue: pop everything, touch every byte of every piece, push. */
static void run_queue(VmmGuestMem *mem, const uint8_t *hdr, uint16_t num)
{
    VmmVirtqueue vq;
    vmm_vq_init(&vq, mem, "fuzz", 0, 256);
    vq.num = num;
    vq.desc_gpa = (uint64_t)le16_at(hdr + 2) * 16;
    vq.avail_gpa = (uint64_t)le16_at(hdr + 4) * 2;
    vq.used_gpa = (uint64_t)le16_at(hdr + 6) * 4;
    if (vmm_vq_activate(&vq, hdr[0] & 1, hdr[0] & 2, NULL)) {
        for (int i = 0; i < 600; i++) {
            VmmVqElem *elem;
            VmmVqPopResult r = vmm_vq_pop(&vq, &elem, NULL);
            if (r != VMM_VQ_OK)
                break;
            uint8_t sum = 0;
            for (unsigned k = 0; k < elem->n_out; k++)
                for (size_t j = 0; j < elem->out[k].iov_len; j++)
                    sum += ((uint8_t *)elem->out[k].iov_base)[j];
            /* Readable bytes are read, writable ones written: ASan checks both. */
            for (unsigned k = 0; k < elem->n_in; k++)
                memset(elem->in[k].iov_base, 0xa5, elem->in[k].iov_len);
            if (elem->n_in > 0 && elem->in[0].iov_len > 0)
                *(uint8_t *)elem->in[0].iov_base = sum;
            vmm_vq_push(&vq, elem, (uint32_t)elem->in_bytes);
            vmm_vq_should_notify(&vq);
            g_free(elem);
        }
        vmm_vq_set_notification(&vq, true);
        vmm_vq_has_avail(&vq);
    }
    vmm_vq_destroy(&vq);
}

static void mmio_write(VmmVirtioMmio *t, uint64_t off, uint32_t v)
{
    vmm_virtio_mmio_write32(t, off, v);
}

/* virtio-blk, brought up through its registers like a driver would. */
static void run_blk(VmmGuestMem *mem, const uint8_t *hdr, uint16_t num)
{
    static FuzzBackend be;
    VmmVirtioBlkConfig c;

    memset(be.disk, 0, sizeof(be.disk));
    be.held = g_ptr_array_new();
    be.hold = hdr[0] & 8;
    be.fail = hdr[0] & 32;
    vmm_virtio_blk_config_init(&c);
    c.id = "fuzz";
    c.capacity = DISK_SECTORS;
    c.discard = c.write_zeroes = true;
    c.max_discard_seg = 4;
    c.serial = "fuzz-serial";
    c.werror = c.rerror = (hdr[0] & 64) ? VMM_BLK_ERROR_STOP : VMM_BLK_ERROR_REPORT;
    VmmVirtioBlk *blk = vmm_virtio_blk_new(&c, mem, &fuzz_backend_ops, &be, NULL);
    VmmVirtioMmio *t = vmm_virtio_blk_transport(blk);

    uint64_t features = (1ULL << VIRTIO_F_VERSION_1) | (1ULL << VIRTIO_BLK_F_FLUSH) |
                        (1ULL << VIRTIO_BLK_F_DISCARD) | (1ULL << VIRTIO_BLK_F_WRITE_ZEROES);
    if (hdr[0] & 1)
        features |= 1ULL << VIRTIO_RING_F_EVENT_IDX;
    if (hdr[0] & 2)
        features |= 1ULL << VIRTIO_RING_F_INDIRECT_DESC;
    mmio_write(t, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    mmio_write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    mmio_write(t, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)features);
    mmio_write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    mmio_write(t, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(features >> 32));
    mmio_write(t, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                      VIRTIO_STATUS_FEATURES_OK);
    mmio_write(t, VIRTIO_MMIO_QUEUE_SEL, 0);
    mmio_write(t, VIRTIO_MMIO_QUEUE_NUM, num);
    mmio_write(t, VIRTIO_MMIO_QUEUE_DESC_LOW, le16_at(hdr + 2) * 16);
    mmio_write(t, VIRTIO_MMIO_QUEUE_DRIVER_LOW, le16_at(hdr + 4) * 2);
    mmio_write(t, VIRTIO_MMIO_QUEUE_DEVICE_LOW, le16_at(hdr + 6) * 4);
    mmio_write(t, VIRTIO_MMIO_QUEUE_READY, 1);
    mmio_write(t, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                      VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
    mmio_write(t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    /* A second kick finds the queue as the first left it. */
    mmio_write(t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);

    if (hdr[0] & 16)
        mmio_write(t, VIRTIO_MMIO_STATUS, 0);
    be.hold = false;
    while (be.held->len > 0) {
        VmmBlkRequest *req = g_ptr_array_steal_index(be.held, be.held->len - 1);
        vmm_virtio_blk_complete(req, be.fail ? -EIO : 0);
    }
    if (hdr[0] & 64) {
        be.fail = false;
        vmm_virtio_blk_resume(blk);
    }
    g_ptr_array_free(be.held, TRUE);
    if (vmm_virtio_blk_in_flight(blk) != 0 || vmm_virtio_blk_stopped(blk) != 0)
        abort();
    vmm_virtio_blk_free(blk);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool quiet;
    if (!quiet) {
        /* Every malformed ring logs a warning; keep the fuzzer's output readable. */
        vmm_log_set_spec("err", NULL);
        quiet = true;
    }
    if (size < HEADER)
        return 0;
    const uint8_t *hdr = data;
    uint16_t num = 1u << (hdr[1] % 9);

    uint8_t *ram = g_malloc0(RAM_SIZE);
    uint8_t *ram2 = g_malloc0(RAM2_SIZE);
    size_t body = size - HEADER;
    memcpy(ram, data + HEADER, MIN(body, RAM_SIZE));
    if (body > RAM_SIZE)
        memcpy(ram2, data + HEADER + RAM_SIZE, MIN(body - RAM_SIZE, RAM2_SIZE));
    VmmGuestMem mem;
    vmm_guest_mem_init(&mem, ram, RAM_SIZE);
    vmm_guest_mem_add_region(&mem, RAM_SIZE, ram2, RAM2_SIZE, NULL);

    if (hdr[0] & 4)
        run_blk(&mem, hdr, num);
    else
        run_queue(&mem, hdr, num);
    g_free(ram);
    g_free(ram2);
    return 0;
}
