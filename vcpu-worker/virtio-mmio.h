/* The virtio-mmio transport, version 2 (virtio 1.x section 4.2): the register
 * window of one virtio device. A vCPU's MMIO exit calls vmm_virtio_mmio_access();
 * the transport keeps the common state (status, features, queues, interrupt
 * status) and calls the device model through VmmVirtioDeviceOps.
 *
 * Two host hooks keep the model independent of KVM: notify (a QueueNotify
 * write; later an ioeventfd wakes the I/O thread instead) and set_irq (the
 * interrupt line; later an irqfd).
 *
 * Locking: the transport's lock serialises register accesses and interrupt
 * state. Where the transport changes queues (QueueReady, reset) it also takes
 * the device's queue lock (given to vmm_virtio_mmio_new()), always in that order;
 * so a device must not hold its queue lock while it calls into the transport. */
#pragma once
#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "vcpu-worker/guest-mem.h"
#include "vcpu-worker/virtqueue.h"

#define VIRTIO_MMIO_MAGIC_VALUE 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_VENDOR_ID 0x00c
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW 0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIRTIO_MMIO_SHM_SEL 0x0ac
#define VIRTIO_MMIO_SHM_LEN_LOW 0x0b0
#define VIRTIO_MMIO_SHM_LEN_HIGH 0x0b4
#define VIRTIO_MMIO_SHM_BASE_LOW 0x0b8
#define VIRTIO_MMIO_SHM_BASE_HIGH 0x0bc
#define VIRTIO_MMIO_CONFIG_GENERATION 0x0fc
#define VIRTIO_MMIO_CONFIG 0x100
/* The size of one device's window (config space included). */
#define VIRTIO_MMIO_WINDOW_SIZE 0x200

#define VIRTIO_MMIO_MAGIC 0x74726976   /* "virt" */
#define VIRTIO_MMIO_VENDOR 0x554d4551  /* "QEMU", what Linux and QEMU's microvm use */

#define VIRTIO_MMIO_INT_VRING 1
#define VIRTIO_MMIO_INT_CONFIG 2

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80

#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_RNG 4

typedef struct VmmVirtioMmio VmmVirtioMmio;

typedef struct {
    uint32_t device_id;
    /* Fills the whole config space (config_size bytes, little-endian). */
    void (*get_config)(void *dev, uint8_t *config);
    /* A driver write of LEN bytes at OFFSET, inside the config space. */
    void (*set_config)(void *dev, uint32_t offset, const uint8_t *data, uint32_t len);
    /* Process queue QUEUE: the driver kicked it. */
    void (*queue_notify)(void *dev, unsigned queue);
    /* The driver reset the device: forget requests (called with the queue lock held). */
    void (*reset)(void *dev);
    /* The driver is about to reset the device (optional; called with no lock
     * of the transport's held, so the device's completions can still raise
     * interrupts): wait until nothing it started still uses guest memory. */
    void (*quiesce)(void *dev);
    /* The driver set DRIVER_OK having accepted FEATURES (optional; called with
     * the queue lock held). */
    void (*driver_ok)(void *dev, uint64_t features);
} VmmVirtioDeviceOps;

typedef struct {
    /* A QueueNotify write. NULL: the transport processes the queue at once. */
    void (*notify)(void *opaque, unsigned queue);
    /* The interrupt line's new level (called on changes only). */
    void (*set_irq)(void *opaque, bool level);
    void *opaque;
} VmmVirtioMmioHost;

typedef struct {
    const char *name;           /* for messages, e.g. "virtio-blk 'hd0'" */
    const VmmGuestMem *mem;
    const VmmVirtioDeviceOps *ops;
    void *dev;
    GMutex *queue_lock;         /* the device's; may be NULL */
    unsigned num_queues;
    uint16_t queue_num_max;
    uint64_t device_features;   /* device-specific bits; the ring and VERSION_1 bits are added */
    uint32_t config_size;       /* at most 0x100 */
} VmmVirtioMmioConfig;

VmmVirtioMmio *vmm_virtio_mmio_new(const VmmVirtioMmioConfig *config);
void vmm_virtio_mmio_free(VmmVirtioMmio *t);
void vmm_virtio_mmio_set_host(VmmVirtioMmio *t, const VmmVirtioMmioHost *host);
/* PAGE (VIRTIO_MMIO_WINDOW_SIZE bytes or more; NULL: none) is kept holding
 * what a read of each register and of the config space returns, so that
 * the guest can read the window from memory (a read-only KVM memslot)
 * without an exit; its writes still come to vmm_virtio_mmio_access. No
 * register has a side effect on read, which is what makes this possible. */
void vmm_virtio_mmio_set_shadow(VmmVirtioMmio *t, uint8_t *page);

/* One guest access of LEN bytes at OFFSET into the window; DATA is the value in
 * little-endian byte order (filled on reads). Bad widths and offsets read as
 * zero and ignore writes. */
void vmm_virtio_mmio_access(VmmVirtioMmio *t, uint64_t offset, uint8_t *data, unsigned len,
                            bool is_write);
uint32_t vmm_virtio_mmio_read32(VmmVirtioMmio *t, uint64_t offset);
void vmm_virtio_mmio_write32(VmmVirtioMmio *t, uint64_t offset, uint32_t value);

/* Processes queue QUEUE if the device is live (the I/O thread's side of notify). */
void vmm_virtio_mmio_process_queue(VmmVirtioMmio *t, unsigned queue);
/* Used buffers were pushed and vmm_vq_should_notify() (asked under the queue
 * lock) said the driver wants to hear of them: raises the used-ring interrupt. */
void vmm_virtio_mmio_interrupt_vring(VmmVirtioMmio *t);
/* The device's config space changed: new generation, config interrupt. */
void vmm_virtio_mmio_config_changed(VmmVirtioMmio *t);
/* The device found the driver's data malformed: logs CAUSE, sets
 * DEVICE_NEEDS_RESET and tells the driver; the device stops until reset. */
void vmm_virtio_mmio_set_needs_reset(VmmVirtioMmio *t, const GError *cause);

const char *vmm_virtio_mmio_name(const VmmVirtioMmio *t);
VmmVirtqueue *vmm_virtio_mmio_queue(VmmVirtioMmio *t, unsigned queue);
unsigned vmm_virtio_mmio_num_queues(const VmmVirtioMmio *t);
bool vmm_virtio_mmio_has_feature(VmmVirtioMmio *t, unsigned bit);
uint32_t vmm_virtio_mmio_status(VmmVirtioMmio *t);
/* Whether the interrupt line is up (for tests and for level re-assertion). */
bool vmm_virtio_mmio_irq_level(VmmVirtioMmio *t);
