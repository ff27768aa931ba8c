/* virtio-mmio transport, version 2. */
#include "vcpu-worker/virtio-mmio.h"
#include "common/error.h"
#include "common/log.h"

#include <string.h>

#define VIRTIO_MMIO_MAX_CONFIG (VIRTIO_MMIO_WINDOW_SIZE - VIRTIO_MMIO_CONFIG)

struct VmmVirtioMmio {
    GMutex lock;
    char *name;
    const VmmGuestMem *mem;
    const VmmVirtioDeviceOps *ops;
    void *dev;
    GMutex *queue_lock;
    VmmVirtioMmioHost host;

    uint64_t device_features;
    uint64_t driver_features;
    uint32_t device_features_sel;
    uint32_t driver_features_sel;
    uint32_t queue_sel;
    uint32_t status;
    uint32_t isr;
    uint32_t config_generation;
    uint32_t config_size;
    bool irq_level;
    uint8_t *shadow;           /* what reads return, for the guest to read without an exit */

    unsigned num_queues;
    VmmVirtqueue *queues;
};

VmmVirtioMmio *vmm_virtio_mmio_new(const VmmVirtioMmioConfig *config)
{
    VmmVirtioMmio *t = g_new0(VmmVirtioMmio, 1);

    g_mutex_init(&t->lock);
    t->name = g_strdup(config->name);
    t->mem = config->mem;
    t->ops = config->ops;
    t->dev = config->dev;
    t->queue_lock = config->queue_lock;
    t->device_features = config->device_features | (1ULL << VIRTIO_F_VERSION_1) |
                         (1ULL << VIRTIO_RING_F_INDIRECT_DESC) | (1ULL << VIRTIO_RING_F_EVENT_IDX);
    t->config_size = MIN(config->config_size, VIRTIO_MMIO_MAX_CONFIG);
    t->num_queues = config->num_queues;
    t->queues = g_new0(VmmVirtqueue, t->num_queues);
    for (unsigned i = 0; i < t->num_queues; i++)
        vmm_vq_init(&t->queues[i], t->mem, t->name, i, config->queue_num_max);
    return t;
}

void vmm_virtio_mmio_free(VmmVirtioMmio *t)
{
    if (!t)
        return;
    for (unsigned i = 0; i < t->num_queues; i++)
        vmm_vq_destroy(&t->queues[i]);
    g_free(t->queues);
    g_free(t->name);
    g_mutex_clear(&t->lock);
    g_free(t);
}

static void shadow_sync_locked(VmmVirtioMmio *t);

void vmm_virtio_mmio_set_shadow(VmmVirtioMmio *t, uint8_t *page)
{
    g_mutex_lock(&t->lock);
    t->shadow = page;
    shadow_sync_locked(t);
    g_mutex_unlock(&t->lock);
}

void vmm_virtio_mmio_set_host(VmmVirtioMmio *t, const VmmVirtioMmioHost *host)
{
    g_mutex_lock(&t->lock);
    t->host = *host;
    g_mutex_unlock(&t->lock);
}

static void lock_queues(VmmVirtioMmio *t)
{
    if (t->queue_lock)
        g_mutex_lock(t->queue_lock);
}

static void unlock_queues(VmmVirtioMmio *t)
{
    if (t->queue_lock)
        g_mutex_unlock(t->queue_lock);
}

/* Called with t->lock held. */
static void update_irq(VmmVirtioMmio *t)
{
    bool level = t->isr != 0;
    if (level == t->irq_level)
        return;
    t->irq_level = level;
    if (t->host.set_irq)
        t->host.set_irq(t->host.opaque, level);
}

/* One register of the shadow page. A single aligned 32-bit store: the
 * guest reads it whole, never half old and half new. */
static void shadow_put(VmmVirtioMmio *t, uint64_t offset, uint32_t v)
{
    if (t->shadow)
        __atomic_store_n((uint32_t *)(void *)(t->shadow + offset), GUINT32_TO_LE(v), __ATOMIC_RELEASE);
}

static uint32_t read_register(VmmVirtioMmio *t, uint64_t offset);

/* The whole page again after a change of state: the config space first, so
 * that a driver that sees the new ConfigGeneration reads the new config. */
static void shadow_sync_locked(VmmVirtioMmio *t)
{
    if (!t->shadow)
        return;
    uint8_t config[VIRTIO_MMIO_MAX_CONFIG] = { 0 };
    if (t->ops->get_config && t->config_size)
        t->ops->get_config(t->dev, config);
    memcpy(t->shadow + VIRTIO_MMIO_CONFIG, config, t->config_size);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    for (uint64_t off = 0; off < VIRTIO_MMIO_CONFIG; off += 4)
        shadow_put(t, off, read_register(t, off));
}

static void raise_locked(VmmVirtioMmio *t, uint32_t bits)
{
    t->isr |= bits;
    /* Before the interrupt: the driver's handler reads the status first. */
    shadow_put(t, VIRTIO_MMIO_INTERRUPT_STATUS, t->isr);
    update_irq(t);
}

static VmmVirtqueue *selected_queue(VmmVirtioMmio *t)
{
    return t->queue_sel < t->num_queues ? &t->queues[t->queue_sel] : NULL;
}

static bool has_feature_locked(VmmVirtioMmio *t, unsigned bit)
{
    return (t->driver_features >> bit) & 1;
}

/* Called with t->lock held. */
static void reset_device(VmmVirtioMmio *t)
{
    lock_queues(t);
    if (t->ops->reset)
        t->ops->reset(t->dev);
    for (unsigned i = 0; i < t->num_queues; i++)
        vmm_vq_reset(&t->queues[i]);
    unlock_queues(t);
    t->driver_features = 0;
    t->device_features_sel = t->driver_features_sel = 0;
    t->queue_sel = 0;
    t->status = 0;
    t->isr = 0;
    update_irq(t);
}

static void fail_locked(VmmVirtioMmio *t, const GError *cause)
{
    if (t->status & VIRTIO_STATUS_NEEDS_RESET)
        return;
    /* The cause names the device already. */
    vmm_warn("%s; the device needs a reset", cause->message);
    t->status |= VIRTIO_STATUS_NEEDS_RESET;
    if (t->status & VIRTIO_STATUS_DRIVER_OK) {
        t->config_generation++;
        raise_locked(t, VIRTIO_MMIO_INT_CONFIG);
    }
}

static bool features_acceptable(VmmVirtioMmio *t)
{
    if (t->driver_features & ~t->device_features) {
        vmm_warn("%s: driver accepted features 0x%" G_GINT64_MODIFIER "x the device does not offer",
                 t->name, t->driver_features & ~t->device_features);
        return false;
    }
    if (!has_feature_locked(t, VIRTIO_F_VERSION_1)) {
        vmm_warn("%s: driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)",
                 t->name);
        return false;
    }
    return true;
}

static void write_status(VmmVirtioMmio *t, uint32_t value)
{
    if (value == 0) {
        reset_device(t);
        return;
    }
    uint32_t old = t->status;
    /* The device keeps NEEDS_RESET until a reset, whatever the driver writes. */
    value = (value & 0xff & ~VIRTIO_STATUS_NEEDS_RESET) | (old & VIRTIO_STATUS_NEEDS_RESET);
    if ((value & VIRTIO_STATUS_FEATURES_OK) && !(old & VIRTIO_STATUS_FEATURES_OK) &&
        !features_acceptable(t))
        value &= ~VIRTIO_STATUS_FEATURES_OK;
    t->status = value;
    if ((value & VIRTIO_STATUS_DRIVER_OK) && !(old & VIRTIO_STATUS_DRIVER_OK) && t->ops->driver_ok) {
        lock_queues(t);
        t->ops->driver_ok(t->dev, t->driver_features);
        unlock_queues(t);
    }
}

static void write_queue_ready(VmmVirtioMmio *t, VmmVirtqueue *vq, uint32_t value)
{
    g_autoptr(GError) error = NULL;

    lock_queues(t);
    if (!value) {
        vq->ready = false;
    } else if (!vq->ready &&
               !vmm_vq_activate(vq, has_feature_locked(t, VIRTIO_RING_F_EVENT_IDX),
                                has_feature_locked(t, VIRTIO_RING_F_INDIRECT_DESC), &error)) {
        vq->ready = false;
    }
    unlock_queues(t);
    if (error)
        fail_locked(t, error);
}

static void set_low(uint64_t *v, uint32_t low)
{
    *v = (*v & 0xffffffff00000000ULL) | low;
}

static void set_high(uint64_t *v, uint32_t high)
{
    *v = (*v & 0xffffffffULL) | ((uint64_t)high << 32);
}

/* Writes to a queue's setup registers; ignored once the queue is live. */
static void write_queue_reg(VmmVirtioMmio *t, uint64_t offset, uint32_t value)
{
    VmmVirtqueue *vq = selected_queue(t);
    if (!vq)
        return;
    if (offset == VIRTIO_MMIO_QUEUE_READY) {
        write_queue_ready(t, vq, value);
        return;
    }
    if (vq->ready) {
        vmm_debug("%s: queue %u register 0x%03x written while ready, ignored", t->name, vq->index,
                  (unsigned)offset);
        return;
    }
    switch (offset) {
    case VIRTIO_MMIO_QUEUE_NUM: vq->num = value > UINT16_MAX ? 0 : value; break;
    case VIRTIO_MMIO_QUEUE_DESC_LOW: set_low(&vq->desc_gpa, value); break;
    case VIRTIO_MMIO_QUEUE_DESC_HIGH: set_high(&vq->desc_gpa, value); break;
    case VIRTIO_MMIO_QUEUE_DRIVER_LOW: set_low(&vq->avail_gpa, value); break;
    case VIRTIO_MMIO_QUEUE_DRIVER_HIGH: set_high(&vq->avail_gpa, value); break;
    case VIRTIO_MMIO_QUEUE_DEVICE_LOW: set_low(&vq->used_gpa, value); break;
    case VIRTIO_MMIO_QUEUE_DEVICE_HIGH: set_high(&vq->used_gpa, value); break;
    }
}

static void write_driver_features(VmmVirtioMmio *t, uint32_t value)
{
    if (t->status & VIRTIO_STATUS_FEATURES_OK)
        return;
    if (t->driver_features_sel == 0)
        set_low(&t->driver_features, value);
    else if (t->driver_features_sel == 1)
        set_high(&t->driver_features, value);
}

/* Returns the queue to process when the write was a notify, else -1. */
static int write_register(VmmVirtioMmio *t, uint64_t offset, uint32_t value)
{
    switch (offset) {
    case VIRTIO_MMIO_DEVICE_FEATURES_SEL: t->device_features_sel = value; break;
    case VIRTIO_MMIO_DRIVER_FEATURES: write_driver_features(t, value); break;
    case VIRTIO_MMIO_DRIVER_FEATURES_SEL: t->driver_features_sel = value; break;
    case VIRTIO_MMIO_QUEUE_SEL: t->queue_sel = value; break;
    case VIRTIO_MMIO_QUEUE_NUM:
    case VIRTIO_MMIO_QUEUE_READY:
    case VIRTIO_MMIO_QUEUE_DESC_LOW:
    case VIRTIO_MMIO_QUEUE_DESC_HIGH:
    case VIRTIO_MMIO_QUEUE_DRIVER_LOW:
    case VIRTIO_MMIO_QUEUE_DRIVER_HIGH:
    case VIRTIO_MMIO_QUEUE_DEVICE_LOW:
    case VIRTIO_MMIO_QUEUE_DEVICE_HIGH:
        write_queue_reg(t, offset, value);
        break;
    case VIRTIO_MMIO_QUEUE_NOTIFY:
        return value < t->num_queues ? (int)value : -1;
    case VIRTIO_MMIO_INTERRUPT_ACK:
        t->isr &= ~value;
        update_irq(t);
        break;
    case VIRTIO_MMIO_STATUS: write_status(t, value); break;
    case VIRTIO_MMIO_SHM_SEL: break;
    default:
        vmm_debug("%s: write to read-only or unknown register 0x%03x ignored", t->name,
                  (unsigned)offset);
    }
    return -1;
}

static uint32_t read_queue_reg(VmmVirtioMmio *t, uint64_t offset)
{
    VmmVirtqueue *vq = selected_queue(t);
    if (!vq)
        return 0;
    switch (offset) {
    case VIRTIO_MMIO_QUEUE_NUM_MAX: return vq->num_max;
    case VIRTIO_MMIO_QUEUE_READY: return vq->ready;
    /* Write-only in the spec; reading back what was written helps debugging. */
    case VIRTIO_MMIO_QUEUE_NUM: return vq->num;
    case VIRTIO_MMIO_QUEUE_DESC_LOW: return (uint32_t)vq->desc_gpa;
    case VIRTIO_MMIO_QUEUE_DESC_HIGH: return vq->desc_gpa >> 32;
    case VIRTIO_MMIO_QUEUE_DRIVER_LOW: return (uint32_t)vq->avail_gpa;
    case VIRTIO_MMIO_QUEUE_DRIVER_HIGH: return vq->avail_gpa >> 32;
    case VIRTIO_MMIO_QUEUE_DEVICE_LOW: return (uint32_t)vq->used_gpa;
    case VIRTIO_MMIO_QUEUE_DEVICE_HIGH: return vq->used_gpa >> 32;
    }
    return 0;
}

static uint32_t read_register(VmmVirtioMmio *t, uint64_t offset)
{
    switch (offset) {
    case VIRTIO_MMIO_MAGIC_VALUE: return VIRTIO_MMIO_MAGIC;
    case VIRTIO_MMIO_VERSION: return 2;
    case VIRTIO_MMIO_DEVICE_ID: return t->ops->device_id;
    case VIRTIO_MMIO_VENDOR_ID: return VIRTIO_MMIO_VENDOR;
    case VIRTIO_MMIO_DEVICE_FEATURES:
        if (t->device_features_sel > 1)
            return 0;
        return (uint32_t)(t->device_features >> (32 * t->device_features_sel));
    case VIRTIO_MMIO_QUEUE_NUM_MAX:
    case VIRTIO_MMIO_QUEUE_NUM:
    case VIRTIO_MMIO_QUEUE_READY:
    case VIRTIO_MMIO_QUEUE_DESC_LOW:
    case VIRTIO_MMIO_QUEUE_DESC_HIGH:
    case VIRTIO_MMIO_QUEUE_DRIVER_LOW:
    case VIRTIO_MMIO_QUEUE_DRIVER_HIGH:
    case VIRTIO_MMIO_QUEUE_DEVICE_LOW:
    case VIRTIO_MMIO_QUEUE_DEVICE_HIGH:
        return read_queue_reg(t, offset);
    case VIRTIO_MMIO_INTERRUPT_STATUS: return t->isr;
    case VIRTIO_MMIO_STATUS: return t->status;
    /* No shared memory regions: a length of -1 says so. */
    case VIRTIO_MMIO_SHM_LEN_LOW:
    case VIRTIO_MMIO_SHM_LEN_HIGH:
    case VIRTIO_MMIO_SHM_BASE_LOW:
    case VIRTIO_MMIO_SHM_BASE_HIGH:
        return 0xffffffff;
    case VIRTIO_MMIO_CONFIG_GENERATION: return t->config_generation;
    }
    return 0;
}

static void access_config(VmmVirtioMmio *t, uint32_t offset, uint8_t *data, unsigned len,
                          bool is_write)
{
    uint8_t config[VIRTIO_MMIO_MAX_CONFIG] = { 0 };

    if (offset >= t->config_size || len > t->config_size - offset) {
        if (!is_write)
            memset(data, 0, len);
        return;
    }
    if (is_write) {
        if (t->ops->set_config)
            t->ops->set_config(t->dev, offset, data, len);
        return;
    }
    if (t->ops->get_config)
        t->ops->get_config(t->dev, config);
    memcpy(data, config + offset, len);
}

static void store_le32(uint8_t *data, uint32_t v)
{
    v = GUINT32_TO_LE(v);
    memcpy(data, &v, 4);
}

static uint32_t load_le32(const uint8_t *data)
{
    uint32_t v;
    memcpy(&v, data, 4);
    return GUINT32_FROM_LE(v);
}

void vmm_virtio_mmio_access(VmmVirtioMmio *t, uint64_t offset, uint8_t *data, unsigned len,
                            bool is_write)
{
    int notify = -1;

    if (len == 0 || len > 8 || offset >= VIRTIO_MMIO_WINDOW_SIZE) {
        if (!is_write && len <= 8)
            memset(data, 0, len);
        return;
    }
    if (is_write && offset == VIRTIO_MMIO_STATUS && len == 4 && load_le32(data) == 0 && t->ops->quiesce)
        t->ops->quiesce(t->dev);
    g_mutex_lock(&t->lock);
    if (offset >= VIRTIO_MMIO_CONFIG) {
        access_config(t, offset - VIRTIO_MMIO_CONFIG, data, len, is_write);
    } else if (len != 4 || offset % 4) {
        /* The spec allows only aligned 32-bit accesses to the registers. */
        vmm_debug("%s: %u-byte access at 0x%03x ignored", t->name, len, (unsigned)offset);
        if (!is_write)
            memset(data, 0, len);
    } else if (is_write) {
        notify = write_register(t, offset, load_le32(data));
    } else {
        store_le32(data, read_register(t, offset));
    }
    /* An interrupt's acknowledgement (the common write) changes one register. */
    if (is_write && offset == VIRTIO_MMIO_INTERRUPT_ACK)
        shadow_put(t, VIRTIO_MMIO_INTERRUPT_STATUS, t->isr);
    else if (is_write)
        shadow_sync_locked(t);
    VmmVirtioMmioHost host = t->host;
    g_mutex_unlock(&t->lock);

    /* Outside the lock: processing the queue raises interrupts. */
    if (notify >= 0) {
        if (host.notify)
            host.notify(host.opaque, notify);
        else
            vmm_virtio_mmio_process_queue(t, notify);
    }
}

uint32_t vmm_virtio_mmio_read32(VmmVirtioMmio *t, uint64_t offset)
{
    uint8_t data[4];
    vmm_virtio_mmio_access(t, offset, data, 4, false);
    return load_le32(data);
}

void vmm_virtio_mmio_write32(VmmVirtioMmio *t, uint64_t offset, uint32_t value)
{
    uint8_t data[4];
    store_le32(data, value);
    vmm_virtio_mmio_access(t, offset, data, 4, true);
}

void vmm_virtio_mmio_process_queue(VmmVirtioMmio *t, unsigned queue)
{
    g_mutex_lock(&t->lock);
    bool live = queue < t->num_queues && (t->status & VIRTIO_STATUS_DRIVER_OK) &&
                !(t->status & VIRTIO_STATUS_NEEDS_RESET) && t->queues[queue].ready;
    g_mutex_unlock(&t->lock);
    if (live && t->ops->queue_notify)
        t->ops->queue_notify(t->dev, queue);
}

void vmm_virtio_mmio_interrupt_vring(VmmVirtioMmio *t)
{
    g_mutex_lock(&t->lock);
    raise_locked(t, VIRTIO_MMIO_INT_VRING);
    g_mutex_unlock(&t->lock);
}

void vmm_virtio_mmio_config_changed(VmmVirtioMmio *t)
{
    g_mutex_lock(&t->lock);
    t->config_generation++;
    shadow_sync_locked(t);
    if (t->status & VIRTIO_STATUS_DRIVER_OK)
        raise_locked(t, VIRTIO_MMIO_INT_CONFIG);
    g_mutex_unlock(&t->lock);
}

void vmm_virtio_mmio_set_needs_reset(VmmVirtioMmio *t, const GError *cause)
{
    g_mutex_lock(&t->lock);
    fail_locked(t, cause);
    shadow_sync_locked(t);
    g_mutex_unlock(&t->lock);
}

const char *vmm_virtio_mmio_name(const VmmVirtioMmio *t)
{
    return t->name;
}

VmmVirtqueue *vmm_virtio_mmio_queue(VmmVirtioMmio *t, unsigned queue)
{
    return queue < t->num_queues ? &t->queues[queue] : NULL;
}

unsigned vmm_virtio_mmio_num_queues(const VmmVirtioMmio *t)
{
    return t->num_queues;
}

bool vmm_virtio_mmio_has_feature(VmmVirtioMmio *t, unsigned bit)
{
    g_mutex_lock(&t->lock);
    bool has = has_feature_locked(t, bit);
    g_mutex_unlock(&t->lock);
    return has;
}

uint32_t vmm_virtio_mmio_status(VmmVirtioMmio *t)
{
    g_mutex_lock(&t->lock);
    uint32_t status = t->status;
    g_mutex_unlock(&t->lock);
    return status;
}

bool vmm_virtio_mmio_irq_level(VmmVirtioMmio *t)
{
    g_mutex_lock(&t->lock);
    bool level = t->irq_level;
    g_mutex_unlock(&t->lock);
    return level;
}
