/* vcpu-worker's drives: see disks.h. */
#include "vcpu-worker/disks.h"
#include "vcpu-worker/blk-nbd.h"
#include "vcpu-worker/guest-mem.h"
#include "vcpu-worker/virtio-blk.h"
#include "vcpu-worker/virtio-slot.h"
#include "common/error.h"
#include "common/log.h"
#include "proto/nbd.h"

#include <string.h>
#include <unistd.h>

/* How long a machine reset waits for a drive's requests at blockd. */
#define DETACH_TIMEOUT_MS 10000

typedef struct {
    VmmDisks *owner;
    char *id;
    char *serial;
    gboolean read_only, writeback, discard;
    VmmBlkErrorAction werror, rerror;
    VmmBlkNbd *nbd;
    /* Once plugged: */
    guint slot;
    VmmVm *vm;
    VmmGuestMem mem;
    VmmVirtioBlk *blk;
    VmmVirtioSlot *plugged;    /* window, ioeventfd, I/O thread, IRQ (virtio-slot.h) */
} Disk;

typedef struct {
    char *id;
    char *action;
    gboolean is_read;
    int err;
} IoError;

struct VmmDisks {
    GPtrArray *disks;          /* Disk*, attach order = slot order */
    gboolean plugged;
    uv_async_t *async;         /* I/O errors travel to the loop */
    GAsyncQueue *errors;       /* IoError* */
    VmmDiskIoErrorFn on_error;
    gpointer opaque;
};

static void io_error_free(gpointer p)
{
    IoError *e = p;
    g_free(e->id);
    g_free(e->action);
    g_free(e);
}

static void on_errors_async(uv_async_t *a)
{
    VmmDisks *d = a->data;
    IoError *e;
    while ((e = g_async_queue_try_pop(d->errors))) {
        if (d->on_error)
            d->on_error(e->id, e->action, e->is_read, e->err, d->opaque);
        io_error_free(e);
    }
}

VmmDisks *vmm_disks_new(uv_loop_t *loop, VmmDiskIoErrorFn on_error, gpointer opaque)
{
    VmmDisks *d = g_new0(VmmDisks, 1);
    d->disks = g_ptr_array_new();
    d->errors = g_async_queue_new_full(io_error_free);
    d->on_error = on_error;
    d->opaque = opaque;
    if (loop) {
        d->async = g_new0(uv_async_t, 1);
        uv_async_init(loop, d->async, on_errors_async);
        d->async->data = d;
        uv_unref((uv_handle_t *)d->async);
    }
    return d;
}

static Disk *find(VmmDisks *d, const char *id)
{
    for (guint i = 0; id && i < d->disks->len; i++) {
        Disk *k = d->disks->pdata[i];
        if (g_str_equal(k->id, id))
            return k;
    }
    return NULL;
}

guint vmm_disks_count(VmmDisks *d)
{
    return d ? d->disks->len : 0;
}

/* ---- Attaching ------------------------------------------------------------------ */

static gboolean parse_action(JsonObject *a, const char *key, const char *def, VmmBlkErrorAction *out,
                             GError **error)
{
    return vmm_blk_error_action_parse(json_object_get_string_member_with_default(a, key, def), out, error);
}

JsonObject *vmm_disks_attach(VmmDisks *d, JsonObject *args, int fd, GError **error)
{
    const char *id = json_object_get_string_member_with_default(args, "id", NULL);
    if (!id || find(d, id) || d->plugged) {
        close(fd);
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "drive-attach: %s",
                    !id ? "'id' is required" : d->plugged ? "the guest is running: no hotplug"
                                                          : "the drive is attached already");
        return NULL;
    }
    Disk *k = g_new0(Disk, 1);
    k->owner = d;
    k->id = g_strdup(id);
    k->serial = g_strdup(json_object_get_string_member_with_default(args, "serial", NULL));
    k->read_only = json_object_get_boolean_member_with_default(args, "read-only", FALSE);
    k->writeback = json_object_get_boolean_member_with_default(args, "writeback", TRUE);
    k->discard = json_object_get_boolean_member_with_default(args, "discard", FALSE);
    if (!parse_action(args, "werror", "enospc", &k->werror, error) ||
        !parse_action(args, "rerror", "report", &k->rerror, error)) {
        close(fd);
        g_free(k->id);
        g_free(k->serial);
        g_free(k);
        return NULL;
    }
    k->nbd = vmm_blk_nbd_new(id);
    if (!vmm_blk_nbd_connect(k->nbd, fd, error)) {
        vmm_blk_nbd_free(k->nbd);
        g_free(k->id);
        g_free(k->serial);
        g_free(k);
        return NULL;
    }
    if (vmm_blk_nbd_read_only(k->nbd))
        k->read_only = TRUE;
    g_ptr_array_add(d->disks, k);
    vmm_info("drive '%s': attached, %" G_GUINT64_FORMAT " bytes%s", id, vmm_blk_nbd_size(k->nbd),
             k->read_only ? ", read-only" : "");
    JsonObject *r = json_object_new();
    json_object_set_int_member(r, "size", (gint64)vmm_blk_nbd_size(k->nbd));
    json_object_set_boolean_member(r, "read-only", k->read_only);
    return r;
}

gboolean vmm_disks_reconnect(VmmDisks *d, const char *id, int fd, GError **error)
{
    Disk *k = find(d, id);
    if (!k || !k->nbd) {
        close(fd);
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "drive-reconnect: no drive '%s'", id ? id : "");
        return FALSE;
    }
    return vmm_blk_nbd_connect(k->nbd, fd, error);
}

/* ---- Plugging -------------------------------------------------------------------- */

guint vmm_disks_slots(VmmDisks *d, VmmVirtioMmioSlot *slots, guint max)
{
    guint n = MIN(vmm_disks_count(d), max);
    for (guint i = 0; i < n; i++) {
        slots[i] = vmm_virtio_slot_window(i);
    }
    return n;
}

static void on_io_error(void *opaque, VmmVirtioBlk *blk, VmmBlkErrorAction action, bool is_read, int err)
{
    Disk *k = opaque;
    IoError *e = g_new0(IoError, 1);
    e->id = g_strdup(k->id);
    e->action = g_strdup(vmm_blk_error_action_name(action));
    e->is_read = is_read;
    e->err = err < 0 ? -err : err;
    g_async_queue_push(k->owner->errors, e);
    if (k->owner->async)
        uv_async_send(k->owner->async);
}

static bool blk_work(void *opaque, gint64 *wake_ms)
{
    Disk *k = opaque;
    vmm_virtio_mmio_process_queue(vmm_virtio_blk_transport(k->blk), 0);
    return false;
}

static gboolean plug_slot(Disk *k, VmmVm *vm, GError **error)
{
    g_autofree char *name = g_strdup_printf("virtio-blk '%s'", k->id);
    VmmVirtioSlotConfig sc = { .name = name, .slot = k->slot, .transport = vmm_virtio_blk_transport(k->blk),
                               .work = blk_work, .opaque = k, .wait_fd = -1 };
    k->plugged = vmm_virtio_slot_plug(vm, &sc, error);
    return k->plugged != NULL;
}

static gboolean plug_one(Disk *k, VmmVm *vm, guint slot, GError **error)
{
    k->vm = vm;
    k->slot = slot;
    /* The device sees guest RAM through k->mem: after a machine reset it
     * points at the new VM's mapping, and the kept device goes on. */
    vmm_virtio_slot_guest_mem(vm, &k->mem);
    if (k->nbd && !vm->ram_private)
        vmm_blk_nbd_set_guest_memory(k->nbd, vm->ram, vm->ram_size);
    vmm_info("drive '%s': data %s", k->id,
              k->nbd && vmm_blk_nbd_guest_memory(k->nbd) ? "through guest memory" : "through the socket");
    if (k->blk)
        return plug_slot(k, vm, error);
    if (!k->nbd) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "drive '%s' lost its connection to blockd in a reset", k->id);
        return FALSE;
    }
    VmmVirtioBlkConfig cfg;
    vmm_virtio_blk_config_init(&cfg);
    guint16 flags = vmm_blk_nbd_flags(k->nbd);
    cfg.id = k->id;
    cfg.capacity = vmm_blk_nbd_size(k->nbd) / VIRTIO_BLK_SECTOR_SIZE;
    cfg.read_only = k->read_only;
    cfg.discard = !k->read_only && (flags & NBD_FLAG_SEND_TRIM);
    cfg.write_zeroes = !k->read_only && (flags & NBD_FLAG_SEND_WRITE_ZEROES);
    cfg.write_zeroes_may_unmap = k->discard;
    cfg.config_wce = TRUE;      /* QEMU's default: the guest may switch the cache mode */
    cfg.writethrough = !k->writeback;
    cfg.serial = k->serial;
    cfg.werror = k->werror;
    cfg.rerror = k->rerror;
    k->blk = vmm_virtio_blk_new(&cfg, &k->mem, &vmm_blk_nbd_ops, k->nbd, error);
    if (!k->blk)
        return FALSE;
    vmm_virtio_blk_set_io_error_hook(k->blk, on_io_error, k);
    return plug_slot(k, vm, error);
}

gboolean vmm_disks_plug(VmmDisks *d, VmmVm *vm, GError **error)
{
    if (!d)
        return TRUE;
    if (d->disks->len > VMM_VIRTIO_MMIO_MAX) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%u drives: the machine has %d virtio-mmio slots",
                    d->disks->len, VMM_VIRTIO_MMIO_MAX);
        return FALSE;
    }
    d->plugged = TRUE;
    for (guint i = 0; i < d->disks->len; i++) {
        if (!plug_one(d->disks->pdata[i], vm, i, error))
            return FALSE;
    }
    return TRUE;
}

static void unplug_one(Disk *k)
{
    vmm_virtio_slot_unplug(k->plugged);
    k->plugged = NULL;
    /* Requests still at the backend complete (with -EIO) into guest RAM
     * that is still mapped, then the device goes. */
    vmm_blk_nbd_free(k->nbd);
    k->nbd = NULL;
    vmm_virtio_blk_free(k->blk);
    k->blk = NULL;
}

void vmm_disks_resume(VmmDisks *d)
{
    for (guint i = 0; d && i < d->disks->len; i++) {
        Disk *k = d->disks->pdata[i];
        if (!k->blk)
            continue;
        unsigned n = vmm_virtio_blk_stopped(k->blk);
        if (n == 0)
            continue;
        vmm_info("drive '%s': retrying %u request(s) a stop action kept", k->id, n);
        vmm_virtio_blk_resume(k->blk);
    }
}

static unsigned blk_busy(void *opaque)
{
    return vmm_virtio_blk_in_flight(opaque);
}

void vmm_disks_detach(VmmDisks *d)
{
    for (guint i = 0; d && i < d->disks->len; i++) {
        Disk *k = d->disks->pdata[i];
        if (!k->plugged)
            continue;
        gboolean idle = vmm_virtio_slot_reset_unplug(k->plugged, blk_busy, k->blk, DETACH_TIMEOUT_MS);
        k->plugged = NULL;
        if (!idle) {
            /* Its completions would write into RAM that is about to go. */
            vmm_warn("drive '%s': requests still at blockd after %u ms; the drive is dropped",
                     k->id, DETACH_TIMEOUT_MS);
            unplug_one(k);
        }
    }
}

void vmm_disks_unplug(VmmDisks *d)
{
    if (!d)
        return;
    for (guint i = 0; i < d->disks->len; i++)
        unplug_one(d->disks->pdata[i]);
}

static void free_async(uv_handle_t *h)
{
    g_free(h);
}

void vmm_disks_free(VmmDisks *d)
{
    if (!d)
        return;
    vmm_disks_unplug(d);
    for (guint i = 0; i < d->disks->len; i++) {
        Disk *k = d->disks->pdata[i];
        g_free(k->id);
        g_free(k->serial);
        g_free(k);
    }
    g_ptr_array_unref(d->disks);
    g_async_queue_unref(d->errors);
    if (d->async)
        uv_close((uv_handle_t *)d->async, free_async);
    g_free(d);
}
