/* virtio-rng device model. */
#include "vcpu-worker/virtio-rng.h"
#include "common/error.h"
#include "common/log.h"

#include <errno.h>
#include <limits.h>
#include <unistd.h>

#define RNG_QUEUE_SIZE 64

struct VmmVirtioRng {
    GMutex lock;               /* the queue and the quota (the transport's queue lock) */
    char *id;
    int fd;
    VmmVirtioMmio *transport;
    bool warned_eof;
    /* at most max_bytes per period_ms, as QEMU's max-bytes and period */
    guint64 max_bytes;
    guint32 period_ms;
    guint64 quota;             /* bytes left in this period */
    gint64 period_end_ms;      /* 0: no period has started */
};

typedef enum {
    RNG_FILLED,      /* the request got bytes */
    RNG_DRY,         /* the fd has nothing now (EAGAIN) */
    RNG_FAILED,      /* end of file or a read error */
    RNG_OVER_QUOTA,  /* this period's max-bytes are spent */
} RngFill;

static bool rng_limited(const VmmVirtioRng *rng)
{
    return rng->max_bytes < (guint64)G_MAXINT64;
}

/* Called with rng->lock held. */
static RngFill rng_fill(VmmVirtioRng *rng, VmmVqElem *elem, ssize_t *got)
{
    if (rng->quota == 0)
        return RNG_OVER_QUOTA;
    struct iovec iov[64];
    size_t want = MIN(MIN(elem->in_bytes, VMM_VIRTIO_RNG_MAX_CHUNK), rng->quota);
    unsigned n = vmm_iov_slice(elem->in, elem->n_in, 0, want, iov, G_N_ELEMENTS(iov));
    if (n == 0) {
        *got = 0;     /* no writable bytes: give the request back empty */
        return RNG_FILLED;
    }
    do {
        *got = readv(rng->fd, iov, n);
    } while (*got < 0 && errno == EINTR);
    if (*got > 0) {
        if (rng_limited(rng))
            rng->quota -= (guint64)*got;
        return RNG_FILLED;
    }
    if (*got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return RNG_DRY;
    if (!rng->warned_eof) {
        if (*got == 0)
            vmm_warn("virtio-rng '%s': the entropy source reached its end", rng->id);
        else
            vmm_warn("virtio-rng '%s': reading the entropy source: %s", rng->id, g_strerror(errno));
        rng->warned_eof = true;
    }
    return RNG_FAILED;
}

/* Called with rng->lock held. Returns whether requests wait for the fd;
 * *OVER_QUOTA: whether they wait for the next period. */
static bool rng_serve_locked(VmmVirtioRng *rng, VmmVirtqueue *vq, bool *notify, bool *over_quota,
                             GError **error)
{
    VmmVqElem *elem;

    for (;;) {
        switch (vmm_vq_pop(vq, &elem, error)) {
        case VMM_VQ_EMPTY: return false;
        case VMM_VQ_ERROR: return false;
        case VMM_VQ_OK: break;
        }
        ssize_t got;
        RngFill r = rng_fill(rng, elem, &got);
        if (r != RNG_FILLED) {
            /* Keep the request for when the source has bytes again. */
            vmm_vq_unpop(vq);
            g_free(elem);
            *over_quota = r == RNG_OVER_QUOTA;
            return r == RNG_DRY;
        }
        vmm_vq_push(vq, elem, got);
        g_free(elem);
        *notify |= vmm_vq_should_notify(vq);
    }
}

/* Called with rng->lock held, before serving at NOW_MS: a period that has
 * ended gives the whole quota back, and a new one starts with the first
 * request served while none runs (QEMU starts it at the guest's next kick
 * instead of at the refill; either way no period gives more than max-bytes). */
static void rng_period_begin(VmmVirtioRng *rng, gint64 now_ms)
{
    if (!rng_limited(rng))
        return;
    if (rng->period_end_ms && now_ms >= rng->period_end_ms) {
        rng->quota = rng->max_bytes;
        rng->period_end_ms = 0;
    }
    if (!rng->period_end_ms)
        rng->period_end_ms = now_ms + rng->period_ms;
}

bool vmm_virtio_rng_process_at(VmmVirtioRng *rng, gint64 now_ms, gint64 *wake_ms)
{
    VmmVirtqueue *vq = vmm_virtio_mmio_queue(rng->transport, 0);
    g_autoptr(GError) error = NULL;
    bool notify = false, waiting = false, over_quota = false;

    *wake_ms = -1;
    g_mutex_lock(&rng->lock);
    if (vq->ready) {
        rng_period_begin(rng, now_ms);
        waiting = rng_serve_locked(rng, vq, &notify, &over_quota, &error);
        *wake_ms = over_quota ? rng->period_end_ms : -1;
    }
    g_mutex_unlock(&rng->lock);

    if (error)
        vmm_virtio_mmio_set_needs_reset(rng->transport, error);
    if (notify)
        vmm_virtio_mmio_interrupt_vring(rng->transport);
    return waiting;
}

gint64 vmm_virtio_rng_now_ms(void)
{
    return g_get_monotonic_time() / 1000;
}

bool vmm_virtio_rng_process(VmmVirtioRng *rng, gint64 *wake_ms)
{
    return vmm_virtio_rng_process_at(rng, vmm_virtio_rng_now_ms(), wake_ms);
}

static void rng_queue_notify(void *dev, unsigned queue)
{
    gint64 wake_ms;
    vmm_virtio_rng_process(dev, &wake_ms);
}

static const VmmVirtioDeviceOps rng_device_ops = {
    .device_id = VIRTIO_ID_RNG,
    .queue_notify = rng_queue_notify,
};

VmmVirtioRng *vmm_virtio_rng_new(const char *id, const VmmGuestMem *mem, int fd)
{
    VmmVirtioRng *rng = g_new0(VmmVirtioRng, 1);
    g_mutex_init(&rng->lock);
    rng->id = g_strdup(id ? id : "rng0");
    rng->fd = fd;
    rng->max_bytes = rng->quota = (guint64)G_MAXINT64;
    rng->period_ms = VMM_VIRTIO_RNG_DEFAULT_PERIOD_MS;

    g_autofree char *name = g_strdup_printf("virtio-rng '%s'", rng->id);
    VmmVirtioMmioConfig tc = {
        .name = name,
        .mem = mem,
        .ops = &rng_device_ops,
        .dev = rng,
        .queue_lock = &rng->lock,
        .num_queues = 1,
        .queue_num_max = RNG_QUEUE_SIZE,
        .config_size = 0,
    };
    rng->transport = vmm_virtio_mmio_new(&tc);
    return rng;
}

void vmm_virtio_rng_free(VmmVirtioRng *rng)
{
    if (!rng)
        return;
    vmm_virtio_mmio_free(rng->transport);
    g_free(rng->id);
    g_mutex_clear(&rng->lock);
    g_free(rng);
}

void vmm_virtio_rng_set_limit(VmmVirtioRng *rng, guint64 max_bytes, guint32 period_ms)
{
    g_mutex_lock(&rng->lock);
    rng->max_bytes = rng->quota = MIN(max_bytes, (guint64)G_MAXINT64);
    rng->period_ms = MAX(period_ms, 1u);
    rng->period_end_ms = 0;
    g_mutex_unlock(&rng->lock);
}

VmmVirtioMmio *vmm_virtio_rng_transport(VmmVirtioRng *rng)
{
    return rng->transport;
}
