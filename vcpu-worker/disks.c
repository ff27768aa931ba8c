/* vcpu-worker's drives: see disks.h. */
#include "vcpu-worker/disks.h"
#include "vcpu-worker/blk-nbd.h"
#include "vcpu-worker/guest-mem.h"
#include "vcpu-worker/virtio-blk.h"
#include "common/error.h"
#include "common/log.h"
#include "proto/nbd.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

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
    VmmIrqLine irq;
    int kick_fd;               /* ioeventfd of QueueNotify, or written by the notify hook */
    int stop_fd;
    gboolean ioeventfd;
    GThread *io_thread;
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
    k->kick_fd = k->stop_fd = -1;
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
        slots[i].base = VMM_VIRTIO_MMIO_BASE + i * VMM_VIRTIO_MMIO_SIZE;
        slots[i].irq = VMM_VIRTIO_IRQ_BASE + i;
    }
    return n;
}

static void mmio_read(void *opaque, guint64 offset, guint8 *data, guint32 len)
{
    Disk *k = opaque;
    vmm_virtio_mmio_access(vmm_virtio_blk_transport(k->blk), offset, data, len, false);
}

static void mmio_write(void *opaque, guint64 offset, const guint8 *data, guint32 len)
{
    Disk *k = opaque;
    guint8 buf[8];
    memcpy(buf, data, MIN(len, sizeof(buf)));
    vmm_virtio_mmio_access(vmm_virtio_blk_transport(k->blk), offset, buf, MIN(len, sizeof(buf)), true);
}

static const VmmBusOps mmio_ops = { .read = mmio_read, .write = mmio_write };

/* A QueueNotify that reached us (no ioeventfd): wake the I/O thread. */
static void on_notify(void *opaque, unsigned queue)
{
    Disk *k = opaque;
    guint64 one = 1;
    if (write(k->kick_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        vmm_warn("drive '%s': kick: %s", k->id, g_strerror(errno));
}

static void on_set_irq(void *opaque, bool level)
{
    Disk *k = opaque;
    if (k->vm->irqchip)
        vmm_irq_line_set(&k->irq, level);
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

static gpointer io_thread(gpointer data)
{
    Disk *k = data;
    struct pollfd p[2] = { { .fd = k->kick_fd, .events = POLLIN }, { .fd = k->stop_fd, .events = POLLIN } };
    for (;;) {
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            break;
        if (p[1].revents)
            break;
        guint64 n;
        if (p[0].revents && read(k->kick_fd, &n, sizeof(n)) == sizeof(n))
            vmm_virtio_mmio_process_queue(vmm_virtio_blk_transport(k->blk), 0);
    }
    return NULL;
}

static void guest_mem_of(VmmVm *vm, VmmGuestMem *mem)
{
    guint64 low = vmm_guest_low_ram_size(vm->ram_size), high = vmm_guest_high_ram_size(vm->ram_size);
    vmm_guest_mem_init(mem, vm->ram, low);
    if (high)
        vmm_guest_mem_add_region(mem, VMM_HIGH_RAM_START, vm->ram + low, high, NULL);
}

static VmmIoEvent notify_event(Disk *k)
{
    return (VmmIoEvent){ .addr = VMM_VIRTIO_MMIO_BASE + k->slot * VMM_VIRTIO_MMIO_SIZE + VIRTIO_MMIO_QUEUE_NOTIFY,
                         .len = 4, .has_datamatch = TRUE, .datamatch = 0 };
}

static gboolean plug_one(Disk *k, VmmVm *vm, guint slot, GError **error)
{
    k->vm = vm;
    k->slot = slot;
    guest_mem_of(vm, &k->mem);
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
    k->irq = (VmmIrqLine){ .vm = vm, .gsi = VMM_VIRTIO_IRQ_BASE + slot };
    k->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    k->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (k->kick_fd < 0 || k->stop_fd < 0)
        return vmm_set_errno(error, errno, "drive '%s': eventfd", k->id);
    VmmIoEvent ev = notify_event(k);
    g_autoptr(GError) local = NULL;
    k->ioeventfd = vmm_vm_ioeventfd_add(vm, &ev, k->kick_fd, &local);
    if (!k->ioeventfd)
        vmm_info("drive '%s': no ioeventfd (%s); kicks exit to the vCPU thread", k->id, local->message);
    VmmVirtioMmioHost host = { .notify = on_notify, .set_irq = on_set_irq, .opaque = k };
    vmm_virtio_mmio_set_host(vmm_virtio_blk_transport(k->blk), &host);
    g_autofree char *name = g_strdup_printf("virtio-blk '%s'", k->id);
    if (!vmm_bus_add(vm->mmio, name, VMM_VIRTIO_MMIO_BASE + slot * VMM_VIRTIO_MMIO_SIZE,
                     VMM_VIRTIO_MMIO_SIZE, &mmio_ops, k, error))
        return FALSE;
    k->io_thread = g_thread_new("blk-io", io_thread, k);
    return TRUE;
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
    if (k->io_thread) {
        guint64 one = 1;
        if (write(k->stop_fd, &one, sizeof(one)) < 0)
            vmm_warn("drive '%s': stopping the I/O thread: %s", k->id, g_strerror(errno));
        g_thread_join(k->io_thread);
        k->io_thread = NULL;
    }
    if (k->ioeventfd) {
        VmmIoEvent ev = notify_event(k);
        vmm_vm_ioeventfd_remove(k->vm, &ev, k->kick_fd, NULL);
        k->ioeventfd = FALSE;
    }
    if (k->blk)
        vmm_bus_remove(k->vm->mmio, VMM_VIRTIO_MMIO_BASE + k->slot * VMM_VIRTIO_MMIO_SIZE);
    /* Requests still at the backend complete (with -EIO) into guest RAM
     * that is still mapped, then the device goes. */
    vmm_blk_nbd_free(k->nbd);
    k->nbd = NULL;
    vmm_virtio_blk_free(k->blk);
    k->blk = NULL;
    if (k->kick_fd >= 0)
        close(k->kick_fd);
    if (k->stop_fd >= 0)
        close(k->stop_fd);
    k->kick_fd = k->stop_fd = -1;
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
