/* A minimal virtio 1.x driver for the device-model unit tests: it owns a
 * buffer standing in for guest RAM, negotiates through the virtio-mmio
 * registers, lays out split rings, writes descriptor chains and reads the
 * used ring, as Linux's virtio_mmio and virtio_ring do. Header-only (static
 * functions) so that each test program includes what it uses. */
#pragma once
#include <glib.h>
#include <stdint.h>
#include <string.h>

#include "vcpu-worker/guest-mem.h"
#include "vcpu-worker/virtio-mmio.h"
#include "vcpu-worker/virtqueue.h"

#define TD_RAM_SIZE (4u << 20)
#define TD_DATA_START (1u << 20)   /* rings below, buffers from here */
#define TD_MAX_QUEUES 4

typedef struct {
    uint64_t gpa;
    uint32_t len;
    bool writable;
} TdBuf;

typedef struct {
    unsigned index;
    uint16_t num;
    uint64_t desc, avail, used;
    uint16_t avail_idx;      /* the driver's next available index */
    uint16_t last_used;      /* the next used entry the driver reads */
    uint16_t next_desc;      /* descriptors are handed out round-robin */
} TdQueue;

typedef struct {
    uint8_t *ram;
    VmmGuestMem mem;
    VmmVirtioMmio *t;
    TdQueue q[TD_MAX_QUEUES];
    uint64_t data_next;
    uint64_t ring_next;
    int irq_raised;          /* rising edges seen */
    bool irq_level;
    int notifies;            /* QueueNotify writes seen by the notify hook */
    int last_notify;
    uint8_t shadow[VIRTIO_MMIO_WINDOW_SIZE];  /* the register page, checked on every read */
} TestDriver;

static G_GNUC_UNUSED void td_init(TestDriver *td)
{
    memset(td, 0, sizeof(*td));
    td->ram = g_malloc0(TD_RAM_SIZE);
    vmm_guest_mem_init(&td->mem, td->ram, TD_RAM_SIZE);
    td->data_next = TD_DATA_START;
    td->ring_next = 0x1000;
}

static G_GNUC_UNUSED void td_destroy(TestDriver *td)
{
    g_free(td->ram);
}

static G_GNUC_UNUSED void td_set_irq(void *opaque, bool level)
{
    TestDriver *td = opaque;
    if (level && !td->irq_level)
        td->irq_raised++;
    td->irq_level = level;
}

/* Connects the interrupt line to the driver; notify stays synchronous. */
static G_GNUC_UNUSED void td_attach(TestDriver *td, VmmVirtioMmio *t)
{
    VmmVirtioMmioHost host = { .set_irq = td_set_irq, .opaque = td };
    td->t = t;
    vmm_virtio_mmio_set_host(t, &host);
    vmm_virtio_mmio_set_shadow(t, td->shadow);
}

/* A register read, and what the guest would read from the register page
 * without an exit: always the same. */
static G_GNUC_UNUSED uint32_t td_read(TestDriver *td, uint64_t off)
{
    uint32_t v = vmm_virtio_mmio_read32(td->t, off), page;
    memcpy(&page, td->shadow + off, 4);
    g_assert_cmphex(GUINT32_FROM_LE(page), ==, v);
    return v;
}

static G_GNUC_UNUSED void td_write(TestDriver *td, uint64_t off, uint32_t v)
{
    vmm_virtio_mmio_write32(td->t, off, v);
}

static G_GNUC_UNUSED uint64_t td_device_features(TestDriver *td)
{
    td_write(td, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    uint64_t lo = td_read(td, VIRTIO_MMIO_DEVICE_FEATURES);
    td_write(td, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    uint64_t hi = td_read(td, VIRTIO_MMIO_DEVICE_FEATURES);
    return lo | (hi << 32);
}

/* Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK. Returns the status read
 * back (FEATURES_OK is missing when the device refused the features). */
static G_GNUC_UNUSED uint32_t td_negotiate(TestDriver *td, uint64_t features)
{
    g_assert_cmphex(td_read(td, VIRTIO_MMIO_MAGIC_VALUE), ==, VIRTIO_MMIO_MAGIC);
    g_assert_cmpuint(td_read(td, VIRTIO_MMIO_VERSION), ==, 2);
    td_write(td, VIRTIO_MMIO_STATUS, 0);
    td_write(td, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
    td_write(td, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    td_write(td, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    td_write(td, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)features);
    td_write(td, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    td_write(td, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(features >> 32));
    td_write(td, VIRTIO_MMIO_STATUS,
             VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
    return td_read(td, VIRTIO_MMIO_STATUS);
}

static G_GNUC_UNUSED uint64_t td_ring_alloc(TestDriver *td, uint64_t size, uint64_t align)
{
    uint64_t gpa = (td->ring_next + align - 1) & ~(align - 1);
    td->ring_next = gpa + size;
    g_assert_cmpuint(td->ring_next, <=, TD_DATA_START);
    return gpa;
}

/* Lays out queue INDEX with NUM entries and sets QueueReady. */
static G_GNUC_UNUSED void td_setup_queue(TestDriver *td, unsigned index, uint16_t num)
{
    TdQueue *q = &td->q[index];
    memset(q, 0, sizeof(*q));
    q->index = index;
    q->num = num;
    q->desc = td_ring_alloc(td, 16 * num, 16);
    q->avail = td_ring_alloc(td, 6 + 2 * num, 2);
    q->used = td_ring_alloc(td, 6 + 8 * num, 4);
    td_write(td, VIRTIO_MMIO_QUEUE_SEL, index);
    g_assert_cmpuint(td_read(td, VIRTIO_MMIO_QUEUE_READY), ==, 0);
    g_assert_cmpuint(td_read(td, VIRTIO_MMIO_QUEUE_NUM_MAX), >=, num);
    td_write(td, VIRTIO_MMIO_QUEUE_NUM, num);
    td_write(td, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)q->desc);
    td_write(td, VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(q->desc >> 32));
    td_write(td, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)q->avail);
    td_write(td, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (uint32_t)(q->avail >> 32));
    td_write(td, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)q->used);
    td_write(td, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (uint32_t)(q->used >> 32));
    td_write(td, VIRTIO_MMIO_QUEUE_READY, 1);
}

static G_GNUC_UNUSED void td_driver_ok(TestDriver *td)
{
    uint32_t st = td_read(td, VIRTIO_MMIO_STATUS);
    td_write(td, VIRTIO_MMIO_STATUS, st | VIRTIO_STATUS_DRIVER_OK);
}

/* Full bring-up of a device with NQ queues of NUM entries. */
static G_GNUC_UNUSED void td_bring_up(TestDriver *td, uint64_t features, unsigned nq, uint16_t num)
{
    uint32_t st = td_negotiate(td, features);
    g_assert_cmphex(st & VIRTIO_STATUS_FEATURES_OK, ==, VIRTIO_STATUS_FEATURES_OK);
    for (unsigned i = 0; i < nq; i++)
        td_setup_queue(td, i, num);
    td_driver_ok(td);
}

static G_GNUC_UNUSED void *td_host(TestDriver *td, uint64_t gpa)
{
    return td->ram + gpa;
}

static G_GNUC_UNUSED uint64_t td_alloc(TestDriver *td, uint32_t len)
{
    uint64_t gpa = td->data_next;
    td->data_next = (td->data_next + len + 15) & ~15ULL;
    if (td->data_next > TD_RAM_SIZE) {
        td->data_next = TD_DATA_START;
        gpa = td->data_next;
        td->data_next = (td->data_next + len + 15) & ~15ULL;
    }
    return gpa;
}

static G_GNUC_UNUSED void td_put16(TestDriver *td, uint64_t gpa, uint16_t v)
{
    v = GUINT16_TO_LE(v);
    memcpy(td->ram + gpa, &v, 2);
}

static G_GNUC_UNUSED uint16_t td_get16(TestDriver *td, uint64_t gpa)
{
    uint16_t v;
    memcpy(&v, td->ram + gpa, 2);
    return GUINT16_FROM_LE(v);
}

static G_GNUC_UNUSED uint32_t td_get32(TestDriver *td, uint64_t gpa)
{
    uint32_t v;
    memcpy(&v, td->ram + gpa, 4);
    return GUINT32_FROM_LE(v);
}

static G_GNUC_UNUSED void td_write_desc(TestDriver *td, uint64_t table, uint16_t i, uint64_t addr,
                                        uint32_t len, uint16_t flags, uint16_t next)
{
    VmmVirtqDesc d = { GUINT64_TO_LE(addr), GUINT32_TO_LE(len), GUINT16_TO_LE(flags),
                       GUINT16_TO_LE(next) };
    memcpy(td->ram + table + 16 * (uint64_t)i, &d, sizeof(d));
}

/* Writes BUFS as a chain of direct descriptors; returns the head. */
static G_GNUC_UNUSED uint16_t td_add_chain(TestDriver *td, unsigned qi, const TdBuf *bufs, unsigned n)
{
    TdQueue *q = &td->q[qi];
    uint16_t head = q->next_desc;
    for (unsigned i = 0; i < n; i++) {
        uint16_t cur = (head + i) % q->num;
        uint16_t next = (head + i + 1) % q->num;
        uint16_t flags = (bufs[i].writable ? VIRTQ_DESC_F_WRITE : 0) |
                         (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
        td_write_desc(td, q->desc, cur, bufs[i].gpa, bufs[i].len, flags, next);
    }
    q->next_desc = (head + n) % q->num;
    return head;
}

/* Writes BUFS as an indirect table behind one descriptor; returns the head. */
static G_GNUC_UNUSED uint16_t td_add_indirect(TestDriver *td, unsigned qi, const TdBuf *bufs,
                                              unsigned n)
{
    TdQueue *q = &td->q[qi];
    uint64_t table = td_alloc(td, 16 * n);
    for (unsigned i = 0; i < n; i++) {
        uint16_t flags = (bufs[i].writable ? VIRTQ_DESC_F_WRITE : 0) |
                         (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
        td_write_desc(td, table, i, bufs[i].gpa, bufs[i].len, flags, i + 1);
    }
    uint16_t head = q->next_desc;
    td_write_desc(td, q->desc, head, table, 16 * n, VIRTQ_DESC_F_INDIRECT, 0);
    q->next_desc = (head + 1) % q->num;
    return head;
}

/* Makes HEAD available without kicking. */
static G_GNUC_UNUSED void td_publish(TestDriver *td, unsigned qi, uint16_t head)
{
    TdQueue *q = &td->q[qi];
    td_put16(td, q->avail + 4 + 2 * (q->avail_idx % q->num), head);
    q->avail_idx++;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    td_put16(td, q->avail + 2, q->avail_idx);
}

static G_GNUC_UNUSED void td_kick(TestDriver *td, unsigned qi)
{
    td_write(td, VIRTIO_MMIO_QUEUE_NOTIFY, qi);
}

static G_GNUC_UNUSED void td_submit(TestDriver *td, unsigned qi, uint16_t head)
{
    td_publish(td, qi, head);
    td_kick(td, qi);
}

/* Takes the next used entry; FALSE when the device has not returned one. */
static G_GNUC_UNUSED bool td_get_used(TestDriver *td, unsigned qi, uint32_t *id, uint32_t *len)
{
    TdQueue *q = &td->q[qi];
    uint16_t used_idx = td_get16(td, q->used + 2);
    *id = *len = 0;
    if (used_idx == q->last_used)
        return false;
    uint64_t e = q->used + 4 + 8 * (uint64_t)(q->last_used % q->num);
    *id = td_get32(td, e);
    *len = td_get32(td, e + 4);
    q->last_used++;
    return true;
}

static G_GNUC_UNUSED uint16_t td_used_idx(TestDriver *td, unsigned qi)
{
    return td_get16(td, td->q[qi].used + 2);
}

/* Reads and acknowledges the interrupt status, as the driver's handler does. */
static G_GNUC_UNUSED uint32_t td_ack_irq(TestDriver *td)
{
    uint32_t isr = td_read(td, VIRTIO_MMIO_INTERRUPT_STATUS);
    td_write(td, VIRTIO_MMIO_INTERRUPT_ACK, isr);
    return isr;
}
