/* Virtio 1.x split virtqueues, as a device sees them: the driver's descriptor
 * table, available ring and used ring in guest RAM (through VmmGuestMem).
 *
 * Everything read from guest RAM is untrusted. A descriptor is read once into a
 * local copy before it is checked, every address range is checked against RAM,
 * chains are bounded (no loops, no more than the table holds, at most
 * VMM_VQ_MAX_IOV pieces) and a malformed ring makes vmm_vq_pop() fail with an
 * error naming the cause; the queue is then broken until reset and the device
 * sets DEVICE_NEEDS_RESET. Nothing here aborts on guest input.
 *
 * Threading: one queue is popped and pushed by one thread at a time (the
 * device's lock or its I/O thread); different queues are independent. */
#pragma once
#include <glib.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "common/iov.h"
#include "vcpu-worker/guest-mem.h"

/* Feature bits of the rings (virtio 1.x, section 6). */
#define VIRTIO_RING_F_INDIRECT_DESC 28
#define VIRTIO_RING_F_EVENT_IDX 29
#define VIRTIO_F_VERSION_1 32

#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_DESC_F_INDIRECT 4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY 1

/* The largest queue size a split virtqueue can have. */
#define VMM_VQ_MAX_SIZE 32768
/* The most pieces (host iovecs) one request may have, and so the most
 * descriptors in a chain including its indirect table. */
#define VMM_VQ_MAX_IOV 1024

/* One descriptor, as the driver lays it out (little-endian). */
typedef struct {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
} VmmVirtqDesc;

typedef struct {
    uint32_t id;
    uint32_t len;
} VmmVirtqUsedElem;

typedef struct {
    unsigned index;     /* queue number, for messages */
    const char *owner;  /* device name, for messages */
    const VmmGuestMem *mem;
    uint16_t num_max;

    /* Set by the driver through the transport while the queue is not ready. */
    uint16_t num;
    uint64_t desc_gpa, avail_gpa, used_gpa;

    /* Valid once vmm_vq_activate() has succeeded. */
    bool ready;
    bool event_idx, indirect;
    VmmVirtqDesc *desc;
    uint16_t *avail;    /* flags, idx, ring[num], used_event */
    uint16_t *used;     /* flags, idx, then ring elements, then avail_event */
    uint16_t last_avail_idx;
    uint16_t used_idx;
    uint16_t signalled_used;
    bool signalled_used_valid;
    bool broken;
    struct iovec *scratch;   /* VMM_VQ_MAX_IOV, for building a request */
} VmmVirtqueue;

/* A request taken from the available ring: the readable pieces first, then
 * the writable ones, each a host range inside guest RAM. */
typedef struct {
    uint16_t head;
    unsigned n_out, n_in;
    uint64_t out_bytes, in_bytes;
    struct iovec *out;    /* n_out pieces */
    struct iovec *in;     /* n_in pieces, right after out in iov[] */
    struct iovec iov[];
} VmmVqElem;

typedef enum {
    VMM_VQ_EMPTY,   /* nothing available */
    VMM_VQ_OK,      /* *elem holds a request; vmm_vq_push() it, then g_free() it */
    VMM_VQ_ERROR,   /* the ring is malformed; the queue is now broken */
} VmmVqPopResult;

void vmm_vq_init(VmmVirtqueue *vq, const VmmGuestMem *mem, const char *owner, unsigned index,
                 uint16_t num_max);
void vmm_vq_destroy(VmmVirtqueue *vq);
/* Back to the state after device reset: not ready, addresses 0, num = num_max. */
void vmm_vq_reset(VmmVirtqueue *vq);
/* The driver set QueueReady: checks the size and that the three areas are
 * aligned RAM, then starts using them. */
gboolean vmm_vq_activate(VmmVirtqueue *vq, bool event_idx, bool indirect, GError **error);

VmmVqPopResult vmm_vq_pop(VmmVirtqueue *vq, VmmVqElem **elem, GError **error);
/* Gives the last popped request back (the device could not start it now). */
void vmm_vq_unpop(VmmVirtqueue *vq);
/* Puts a finished request on the used ring with LEN bytes written. */
void vmm_vq_push(VmmVirtqueue *vq, const VmmVqElem *elem, uint32_t len);
/* Whether the driver wants an interrupt for what was pushed since the last
 * call (VIRTQ_AVAIL_F_NO_INTERRUPT, or used_event with EVENT_IDX). */
bool vmm_vq_should_notify(VmmVirtqueue *vq);
/* Asks the driver for kicks (ENABLE) or tells it kicks are not needed while
 * the device is already processing the queue. */
void vmm_vq_set_notification(VmmVirtqueue *vq, bool enable);
/* Whether requests are waiting (after re-enabling notification, to close the
 * race with a driver that added one before seeing the flag). */
bool vmm_vq_has_avail(VmmVirtqueue *vq);

/* The iovec helpers (vmm_iov_to_buf, vmm_iov_from_buf, vmm_iov_slice,
 * vmm_iov_size) are in common/iov.h. */
