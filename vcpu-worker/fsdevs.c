/* vcpu-worker's virtio-9p devices: see fsdevs.h. */
#include "vcpu-worker/fsdevs.h"
#include "vcpu-worker/virtio-9p.h"
#include "vcpu-worker/virtio-slot.h"
#include "common/error.h"
#include "common/log.h"
#include "proto/9p.h"
#include "proto/control.h"

#include <unistd.h>

#define PROBE_TIMEOUT_MS 10000
#define PROBE_MSIZE 8192

typedef struct {
    VmmFsdevs *owner;
    char *device, *fsdev, *tag;
    int fd;                    /* the socket, until the device takes it */
    bool server_ram;           /* fsd maps the guest's RAM for this socket */
    VmmGuestMem mem;
    VmmVirtio9p *dev;
    VmmVirtioSlot *slot;
} Fsdev;

typedef struct {
    char *device, *fsdev, *reason;
    unsigned failed;
} Lost;

struct VmmFsdevs {
    GPtrArray *fsdevs;         /* Fsdev*, attach order = slot order */
    gboolean plugged;
    uv_async_t *async;         /* losses travel to the loop */
    GAsyncQueue *losses;       /* Lost* */
    VmmFsdevLostFn lost;
    gpointer opaque;
};

static void lost_free(gpointer p)
{
    Lost *l = p;
    g_free(l->device);
    g_free(l->fsdev);
    g_free(l->reason);
    g_free(l);
}

static void fsdev_unplug(Fsdev *f)
{
    /* The reader thread raises interrupts through the slot: end it first. */
    if (f->dev) {
        vmm_virtio_9p_set_lost_hook(f->dev, NULL, NULL);
        vmm_virtio_9p_disconnect(f->dev);
    }
    vmm_virtio_slot_unplug(f->slot);
    f->slot = NULL;
    vmm_virtio_9p_free(f->dev);
    f->dev = NULL;
}

static void fsdev_free(gpointer p)
{
    Fsdev *f = p;
    fsdev_unplug(f);
    if (f->fd >= 0)
        close(f->fd);
    g_free(f->device);
    g_free(f->fsdev);
    g_free(f->tag);
    g_free(f);
}

static void on_losses_async(uv_async_t *a)
{
    VmmFsdevs *s = a->data;
    Lost *l;
    while ((l = g_async_queue_try_pop(s->losses))) {
        if (s->lost)
            s->lost(l->device, l->fsdev, l->reason, l->failed, s->opaque);
        lost_free(l);
    }
}

VmmFsdevs *vmm_fsdevs_new(uv_loop_t *loop, VmmFsdevLostFn lost, gpointer opaque)
{
    VmmFsdevs *s = g_new0(VmmFsdevs, 1);
    s->fsdevs = g_ptr_array_new_with_free_func(fsdev_free);
    s->losses = g_async_queue_new_full(lost_free);
    s->lost = lost;
    s->opaque = opaque;
    if (loop) {
        s->async = g_new0(uv_async_t, 1);
        uv_async_init(loop, s->async, on_losses_async);
        s->async->data = s;
        uv_unref((uv_handle_t *)s->async);
    }
    return s;
}

static void free_async(uv_handle_t *h)
{
    g_free(h);
}

void vmm_fsdevs_free(VmmFsdevs *s)
{
    if (!s)
        return;
    g_ptr_array_unref(s->fsdevs);
    g_async_queue_unref(s->losses);
    if (s->async)
        uv_close((uv_handle_t *)s->async, free_async);
    g_free(s);
}

guint vmm_fsdevs_count(VmmFsdevs *s)
{
    return s ? s->fsdevs->len : 0;
}

static Fsdev *find(VmmFsdevs *s, const char *device)
{
    for (guint i = 0; device && i < s->fsdevs->len; i++) {
        Fsdev *f = s->fsdevs->pdata[i];
        if (g_str_equal(f->device, device))
            return f;
    }
    return NULL;
}

/* A socket is only taken once a 9P2000.L server answers on it. */
static JsonObject *probe(const char *device, int fd, GError **error)
{
    guint32 msize = 0;
    if (!vmm_9p_probe(fd, PROBE_MSIZE, PROBE_TIMEOUT_MS, &msize, error)) {
        g_prefix_error(error, "virtio-9p '%s': ", device);
        return NULL;
    }
    JsonObject *r = json_object_new();
    json_object_set_int_member(r, "msize", msize);
    json_object_set_string_member(r, "version", P9_VERSION_L);
    return r;
}

JsonObject *vmm_fsdevs_attach(VmmFsdevs *s, JsonObject *args, int fd, GError **error)
{
    const char *device = json_object_get_string_member_with_default(args, "device", NULL);
    const char *tag = json_object_get_string_member_with_default(args, "mount-tag", NULL);
    if (!device || !tag || find(s, device) || s->plugged) {
        close(fd);
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "fsdev-attach: %s",
                    !device || !tag ? "'device' and 'mount-tag' are required"
                    : s->plugged ? "the guest is running: no hotplug" : "the device is attached already");
        return NULL;
    }
    JsonObject *r = probe(device, fd, error);
    if (!r) {
        close(fd);
        return NULL;
    }
    Fsdev *f = g_new0(Fsdev, 1);
    f->owner = s;
    f->device = g_strdup(device);
    f->fsdev = g_strdup(json_object_get_string_member_with_default(args, "fsdev", device));
    f->tag = g_strdup(tag);
    f->fd = fd;
    f->server_ram = json_object_get_boolean_member_with_default(args, "guest-memory", FALSE);
    g_ptr_array_add(s->fsdevs, f);
    vmm_info("virtio-9p '%s': attached (fsdev '%s', mount tag '%s'), the 9P server answered Tversion",
             device, f->fsdev, tag);
    return r;
}

gboolean vmm_fsdevs_reconnect(VmmFsdevs *s, const char *device, int fd, bool server_ram, GError **error)
{
    Fsdev *f = find(s, device);
    if (!f) {
        close(fd);
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "fsdev-reconnect: no device '%s'", device ? device : "");
        return FALSE;
    }
    g_autoptr(JsonObject) r = probe(device, fd, error);
    if (!r) {
        close(fd);
        return FALSE;
    }
    f->server_ram = server_ram;
    if (f->dev) {
        vmm_virtio_9p_connect(f->dev, fd, server_ram);
    } else {
        if (f->fd >= 0)
            close(f->fd);
        f->fd = fd;
    }
    vmm_notice("virtio-9p '%s': reconnected to fsd; the guest's session ended, a new mount works", device);
    return TRUE;
}

guint vmm_fsdevs_slots(VmmFsdevs *s, guint first, VmmVirtioMmioSlot *slots, guint max)
{
    guint n = MIN(vmm_fsdevs_count(s), max);
    for (guint i = 0; i < n; i++)
        slots[i] = vmm_virtio_slot_window(first + i);
    return n;
}

/* From the device's threads: the loop tells vmmd. */
static void on_lost(void *opaque, const char *reason, unsigned failed)
{
    Fsdev *f = opaque;
    Lost *l = g_new0(Lost, 1);
    l->device = g_strdup(f->device);
    l->fsdev = g_strdup(f->fsdev);
    l->reason = g_strdup(reason);
    l->failed = failed;
    g_async_queue_push(f->owner->losses, l);
    if (f->owner->async)
        uv_async_send(f->owner->async);
}

static bool fsdev_work(void *opaque, gint64 *wake_ms)
{
    vmm_virtio_mmio_process_queue(vmm_virtio_9p_transport(opaque), 0);
    return false;
}

gboolean vmm_fsdevs_plug(VmmFsdevs *s, VmmVm *vm, guint first, GError **error)
{
    if (!s)
        return TRUE;
    s->plugged = TRUE;
    for (guint i = 0; i < s->fsdevs->len; i++) {
        Fsdev *f = s->fsdevs->pdata[i];
        /* A device kept over a machine reset sees the new RAM through f->mem. */
        vmm_virtio_slot_guest_mem(vm, &f->mem);
        if (!f->dev) {
            f->dev = vmm_virtio_9p_new(f->device, f->tag, &f->mem);
            vmm_virtio_9p_set_lost_hook(f->dev, on_lost, f);
            if (f->fd >= 0)
                vmm_virtio_9p_connect(f->dev, f->fd, f->server_ram);
            f->fd = -1;
        }
        vmm_virtio_9p_set_guest_memory(f->dev, vm->ram_private ? NULL : vm->ram, vm->ram_size);
        vmm_info("virtio-9p '%s': data %s", f->device,
                  f->server_ram && !vm->ram_private ? "through guest memory" : "through the socket");
        g_autofree char *name = g_strdup_printf("virtio-9p '%s'", f->device);
        VmmVirtioSlotConfig cfg = { .name = name, .slot = first + i,
                                    .transport = vmm_virtio_9p_transport(f->dev),
                                    .work = fsdev_work, .opaque = f->dev, .wait_fd = -1 };
        f->slot = vmm_virtio_slot_plug(vm, &cfg, error);
        if (!f->slot)
            return FALSE;
    }
    return TRUE;
}

static unsigned p9_busy(void *opaque)
{
    return vmm_virtio_9p_in_flight(opaque);
}

void vmm_fsdevs_detach(VmmFsdevs *s)
{
    for (guint i = 0; s && i < s->fsdevs->len; i++) {
        Fsdev *f = s->fsdevs->pdata[i];
        /* The reset drops every request's buffers (replies from fsd are then
         * read and thrown away) and waits for a reply being received: after
         * it nothing touches guest RAM. The connection to fsd stays. */
        vmm_virtio_slot_reset_unplug(f->slot, p9_busy, f->dev, 1000);
        f->slot = NULL;
    }
}

void vmm_fsdevs_unplug(VmmFsdevs *s)
{
    for (guint i = 0; s && i < s->fsdevs->len; i++)
        fsdev_unplug(s->fsdevs->pdata[i]);
}

/* ---- The control commands ---------------------------------------------------------- */

static void emit_lost(const char *device, const char *fsdev, const char *reason, unsigned failed,
                      gpointer opaque)
{
    VmmHelper *h = opaque;
    JsonObject *data = json_object_new();
    json_object_set_string_member(data, "device", device);
    json_object_set_string_member(data, "fsdev", fsdev);
    json_object_set_string_member(data, "reason", reason);
    json_object_set_int_member(data, "failed", failed);
    vmm_channel_emit(vmm_helper_channel(h), VMM_EVENT_FSDEV_DISCONNECTED, data, NULL, 0, NULL);
}

void vmm_fsdevs_command(VmmFsdevs **fsdevs, VmmHelper *h, VmmChannelRequest *req)
{
    g_autoptr(GError) err = NULL;
    const char *cmd = vmm_channel_request_command(req);
    JsonObject *args = vmm_channel_request_args(req);
    int fd = vmm_channel_request_take_fd(req, 0);
    if (fd < 0) {
        vmm_channel_reply_error(req, VMM_ERR_GENERIC, "%s: no socket to fsd was passed", cmd);
        return;
    }
    if (!*fsdevs)
        *fsdevs = vmm_fsdevs_new(vmm_helper_loop(h), emit_lost, h);
    JsonObject *r = NULL;
    if (g_str_equal(cmd, VMM_CMD_FSDEV_RECONNECT)) {
        const char *device = json_object_get_string_member_with_default(args, "device", NULL);
        if (vmm_fsdevs_reconnect(*fsdevs, device, fd,
                                 json_object_get_boolean_member_with_default(args, "guest-memory", FALSE), &err))
            r = json_object_new();
    } else {
        r = vmm_fsdevs_attach(*fsdevs, args, fd, &err);
    }
    if (r)
        vmm_channel_reply(req, r, NULL, 0);
    else
        vmm_channel_reply_gerror(req, err);
}
