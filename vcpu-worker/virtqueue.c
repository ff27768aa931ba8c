/* Split virtqueues (virtio 1.x section 2.7), device side. */
#include "vcpu-worker/virtqueue.h"
#include "common/error.h"

#include <string.h>

#define AVAIL_FLAGS 0
#define AVAIL_IDX 1
#define AVAIL_RING 2
#define USED_FLAGS 0
#define USED_IDX 1
#define USED_RING 2   /* in uint16_t units; each element is 4 of them */

void vmm_vq_init(VmmVirtqueue *vq, const VmmGuestMem *mem, const char *owner, unsigned index,
                 uint16_t num_max)
{
    memset(vq, 0, sizeof(*vq));
    vq->mem = mem;
    vq->owner = owner;
    vq->index = index;
    vq->num_max = num_max;
    vq->scratch = g_new(struct iovec, VMM_VQ_MAX_IOV);
    vmm_vq_reset(vq);
}

void vmm_vq_destroy(VmmVirtqueue *vq)
{
    g_clear_pointer(&vq->scratch, g_free);
}

void vmm_vq_reset(VmmVirtqueue *vq)
{
    vq->num = vq->num_max;
    vq->desc_gpa = vq->avail_gpa = vq->used_gpa = 0;
    vq->ready = false;
    vq->event_idx = vq->indirect = false;
    vq->desc = NULL;
    vq->avail = vq->used = NULL;
    vq->last_avail_idx = vq->used_idx = 0;
    vq->signalled_used = 0;
    vq->signalled_used_valid = false;
    vq->broken = false;
}

static G_GNUC_PRINTF(3, 4) gboolean vq_fail(VmmVirtqueue *vq, GError **error, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *cause = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: queue %u: %s",
                vq->owner ? vq->owner : "virtio", vq->index, cause);
    return FALSE;
}

/* The rings are accessed as naturally aligned integers, so both the guest
 * address (the spec demands it) and the host mapping must be aligned. */
static void *map_ring_area(VmmVirtqueue *vq, const char *what, uint64_t gpa, uint64_t size,
                           uint64_t align, GError **error)
{
    if (gpa % align) {
        vq_fail(vq, error, "%s area at 0x%" G_GINT64_MODIFIER "x is not %u-byte aligned", what,
                gpa, (unsigned)align);
        return NULL;
    }
    void *p = vmm_guest_mem_ptr(vq->mem, gpa, size);
    if (!p) {
        vq_fail(vq, error, "%s area 0x%" G_GINT64_MODIFIER "x+0x%" G_GINT64_MODIFIER
                "x is not in guest RAM", what, gpa, size);
        return NULL;
    }
    if ((uintptr_t)p % align) {
        vq_fail(vq, error, "%s area is not aligned in the host mapping", what);
        return NULL;
    }
    return p;
}

gboolean vmm_vq_activate(VmmVirtqueue *vq, bool event_idx, bool indirect, GError **error)
{
    uint64_t num = vq->num;

    if (num == 0 || num > vq->num_max || (num & (num - 1)))
        return vq_fail(vq, error, "size %u is not a power of 2 in 1..%u", vq->num, vq->num_max);
    vq->desc = map_ring_area(vq, "descriptor", vq->desc_gpa, 16 * num, 16, error);
    if (!vq->desc)
        return FALSE;
    vq->avail = map_ring_area(vq, "driver", vq->avail_gpa, 6 + 2 * num, 2, error);
    if (!vq->avail)
        return FALSE;
    vq->used = map_ring_area(vq, "device", vq->used_gpa, 6 + 8 * num, 4, error);
    if (!vq->used)
        return FALSE;
    vq->event_idx = event_idx;
    vq->indirect = indirect;
    vq->last_avail_idx = vq->used_idx = 0;
    vq->signalled_used_valid = false;
    vq->broken = false;
    vq->ready = true;
    return TRUE;
}

static uint16_t load_avail_idx(VmmVirtqueue *vq)
{
    /* Acquire: the ring entries and descriptors the index covers are read after it. */
    return GUINT16_FROM_LE(__atomic_load_n(&vq->avail[AVAIL_IDX], __ATOMIC_ACQUIRE));
}

static uint16_t load_u16(const uint16_t *p)
{
    return GUINT16_FROM_LE(__atomic_load_n(p, __ATOMIC_RELAXED));
}

static void store_u16(uint16_t *p, uint16_t v)
{
    __atomic_store_n(p, GUINT16_TO_LE(v), __ATOMIC_RELAXED);
}

/* Reads a descriptor once: the guest may change the table under us, so every
 * check is made on this copy. */
static void read_direct_desc(VmmVirtqueue *vq, uint16_t i, VmmVirtqDesc *d)
{
    memcpy(d, (const void *)&vq->desc[i], sizeof(*d));
    d->addr = GUINT64_FROM_LE(d->addr);
    d->len = GUINT32_FROM_LE(d->len);
    d->flags = GUINT16_FROM_LE(d->flags);
    d->next = GUINT16_FROM_LE(d->next);
}

static bool read_indirect_desc(VmmVirtqueue *vq, uint64_t table, uint32_t i, VmmVirtqDesc *d)
{
    if (!vmm_guest_mem_read(vq->mem, table + (uint64_t)i * 16, d, sizeof(*d)))
        return false;
    d->addr = GUINT64_FROM_LE(d->addr);
    d->len = GUINT32_FROM_LE(d->len);
    d->flags = GUINT16_FROM_LE(d->flags);
    d->next = GUINT16_FROM_LE(d->next);
    return true;
}

/* The chain being gathered into vq->scratch. */
typedef struct {
    unsigned n_iov;
    unsigned n_out;
    uint64_t out_bytes, in_bytes;
    bool seen_writable;
} Chain;

static gboolean chain_add(VmmVirtqueue *vq, Chain *c, const VmmVirtqDesc *d, GError **error)
{
    bool writable = d->flags & VIRTQ_DESC_F_WRITE;

    if (!writable && c->seen_writable)
        return vq_fail(vq, error, "readable descriptor after a writable one");
    c->seen_writable |= writable;
    uint64_t *total = writable ? &c->in_bytes : &c->out_bytes;
    if (*total + d->len > UINT32_MAX)
        return vq_fail(vq, error, "request longer than 4 GiB");
    *total += d->len;

    uint64_t gpa = d->addr, left = d->len;
    if (gpa + left < gpa)
        return vq_fail(vq, error, "buffer 0x%" G_GINT64_MODIFIER "x+0x%x wraps", d->addr, d->len);
    while (left > 0) {
        uint64_t n;
        void *p = vmm_guest_mem_map_prefix(vq->mem, gpa, left, &n);
        if (!p)
            return vq_fail(vq, error, "buffer 0x%" G_GINT64_MODIFIER "x+0x%x is not in guest RAM",
                           d->addr, d->len);
        if (c->n_iov >= VMM_VQ_MAX_IOV)
            return vq_fail(vq, error, "request has more than %d pieces", VMM_VQ_MAX_IOV);
        vq->scratch[c->n_iov++] = (struct iovec){ .iov_base = p, .iov_len = n };
        if (!writable)
            c->n_out++;
        gpa += n;
        left -= n;
    }
    return TRUE;
}

static gboolean walk_indirect(VmmVirtqueue *vq, Chain *c, const VmmVirtqDesc *head, GError **error)
{
    if (!vq->indirect)
        return vq_fail(vq, error, "indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC");
    if (head->flags & VIRTQ_DESC_F_NEXT)
        return vq_fail(vq, error, "indirect descriptor with the NEXT flag");
    if (head->len == 0 || head->len % 16)
        return vq_fail(vq, error, "indirect table length %u is not a non-zero multiple of 16",
                       head->len);
    uint32_t entries = head->len / 16;
    if (entries > VMM_VQ_MAX_IOV)
        return vq_fail(vq, error, "indirect table has %u entries, more than %d", entries,
                       VMM_VQ_MAX_IOV);

    uint32_t i = 0;
    for (uint32_t steps = 0;; steps++) {
        VmmVirtqDesc d;
        /* A chain visits each entry at most once; more steps mean a loop. */
        if (steps >= entries)
            return vq_fail(vq, error, "indirect chain loops or is longer than its table");
        if (!read_indirect_desc(vq, head->addr, i, &d))
            return vq_fail(vq, error, "indirect table 0x%" G_GINT64_MODIFIER "x+0x%x is not in guest RAM",
                           head->addr, head->len);
        if (d.flags & VIRTQ_DESC_F_INDIRECT)
            return vq_fail(vq, error, "indirect descriptor inside an indirect table");
        if (!chain_add(vq, c, &d, error))
            return FALSE;
        if (!(d.flags & VIRTQ_DESC_F_NEXT))
            return TRUE;
        if (d.next >= entries)
            return vq_fail(vq, error, "indirect next index %u out of range 0..%u", d.next,
                           entries - 1);
        i = d.next;
    }
}

static gboolean walk_chain(VmmVirtqueue *vq, Chain *c, uint16_t head, GError **error)
{
    uint16_t i = head;

    for (unsigned steps = 0;; steps++) {
        VmmVirtqDesc d;
        if (steps >= vq->num)
            return vq_fail(vq, error, "descriptor chain from %u loops or is longer than the queue",
                           head);
        read_direct_desc(vq, i, &d);
        if (d.flags & VIRTQ_DESC_F_INDIRECT) {
            /* The indirect table is the whole rest of the chain. */
            return walk_indirect(vq, c, &d, error);
        }
        if (!chain_add(vq, c, &d, error))
            return FALSE;
        if (!(d.flags & VIRTQ_DESC_F_NEXT))
            return TRUE;
        if (d.next >= vq->num)
            return vq_fail(vq, error, "next index %u out of range 0..%u", d.next, vq->num - 1);
        i = d.next;
    }
}

static VmmVqElem *elem_from_chain(VmmVirtqueue *vq, const Chain *c, uint16_t head)
{
    VmmVqElem *e = g_malloc(sizeof(*e) + c->n_iov * sizeof(struct iovec));
    e->head = head;
    e->n_out = c->n_out;
    e->n_in = c->n_iov - c->n_out;
    e->out_bytes = c->out_bytes;
    e->in_bytes = c->in_bytes;
    memcpy(e->iov, vq->scratch, c->n_iov * sizeof(struct iovec));
    e->out = e->iov;
    e->in = e->iov + c->n_out;
    return e;
}

static VmmVqPopResult pop_failed(VmmVirtqueue *vq)
{
    vq->broken = true;
    return VMM_VQ_ERROR;
}

VmmVqPopResult vmm_vq_pop(VmmVirtqueue *vq, VmmVqElem **elem, GError **error)
{
    *elem = NULL;
    if (vq->broken) {
        vq_fail(vq, error, "queue is broken until the device is reset");
        return VMM_VQ_ERROR;
    }
    if (!vq->ready)
        return VMM_VQ_EMPTY;

    uint16_t avail_idx = load_avail_idx(vq);
    uint16_t pending = avail_idx - vq->last_avail_idx;
    if (pending > vq->num) {
        vq_fail(vq, error, "available index moved from %u to %u, more than the queue size %u",
                vq->last_avail_idx, avail_idx, vq->num);
        return pop_failed(vq);
    }
    if (pending == 0)
        return VMM_VQ_EMPTY;

    uint16_t head = load_u16(&vq->avail[AVAIL_RING + vq->last_avail_idx % vq->num]);
    if (head >= vq->num) {
        vq_fail(vq, error, "available ring names descriptor %u, out of range 0..%u", head,
                vq->num - 1);
        return pop_failed(vq);
    }
    Chain c = { 0 };
    if (!walk_chain(vq, &c, head, error))
        return pop_failed(vq);

    vq->last_avail_idx++;
    if (vq->event_idx)
        store_u16(&vq->used[USED_RING + 4 * vq->num], vq->last_avail_idx);
    *elem = elem_from_chain(vq, &c, head);
    return VMM_VQ_OK;
}

void vmm_vq_unpop(VmmVirtqueue *vq)
{
    vq->last_avail_idx--;
}

void vmm_vq_push(VmmVirtqueue *vq, const VmmVqElem *elem, uint32_t len)
{
    if (!vq->ready)
        return;
    VmmVirtqUsedElem u = { GUINT32_TO_LE(elem->head), GUINT32_TO_LE(len) };
    memcpy(&vq->used[USED_RING + 4 * (vq->used_idx % vq->num)], &u, sizeof(u));
    vq->used_idx++;
    /* Release: the element (and the data written into the buffers) is
     * visible before the driver sees the new index. */
    __atomic_store_n(&vq->used[USED_IDX], GUINT16_TO_LE(vq->used_idx), __ATOMIC_RELEASE);
}

/* virtio 1.x 2.7.7.2: whether NEW_IDX has passed EVENT since OLD. */
static bool vring_need_event(uint16_t event, uint16_t new_idx, uint16_t old)
{
    return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

bool vmm_vq_should_notify(VmmVirtqueue *vq)
{
    if (!vq->ready)
        return false;
    /* The used index store must be visible before we read the driver's flags. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!vq->event_idx)
        return !(load_u16(&vq->avail[AVAIL_FLAGS]) & VIRTQ_AVAIL_F_NO_INTERRUPT);

    uint16_t old = vq->signalled_used;
    bool valid = vq->signalled_used_valid;
    vq->signalled_used = vq->used_idx;
    vq->signalled_used_valid = true;
    uint16_t used_event = load_u16(&vq->avail[AVAIL_RING + vq->num]);
    return !valid || vring_need_event(used_event, vq->used_idx, old);
}

void vmm_vq_set_notification(VmmVirtqueue *vq, bool enable)
{
    if (!vq->ready)
        return;
    if (vq->event_idx) {
        if (enable)
            store_u16(&vq->used[USED_RING + 4 * vq->num], load_avail_idx(vq));
    } else {
        store_u16(&vq->used[USED_FLAGS], enable ? 0 : VIRTQ_USED_F_NO_NOTIFY);
    }
    /* The flag must be visible before we look at the available index again. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

bool vmm_vq_has_avail(VmmVirtqueue *vq)
{
    return vq->ready && !vq->broken && load_avail_idx(vq) != vq->last_avail_idx;
}

