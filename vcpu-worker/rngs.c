/* vcpu-worker's virtio-rng devices: see rngs.h. */
#include "vcpu-worker/rngs.h"
#include "vcpu-worker/virtio-rng.h"
#include "vcpu-worker/virtio-slot.h"
#include "common/error.h"

#include <fcntl.h>
#include <unistd.h>

typedef struct {
    char *id;
    int fd;
    guint64 max_bytes;         /* -device virtio-rng-device,max-bytes=,period= */
    guint32 period_ms;
    VmmGuestMem mem;
    VmmVirtioRng *rng;
    VmmVirtioSlot *slot;
} Rng;

struct VmmRngs {
    GPtrArray *rngs;           /* Rng*, attach order = slot order */
    gboolean plugged;
};

static void rng_free(gpointer p)
{
    Rng *g = p;
    vmm_virtio_slot_unplug(g->slot);
    vmm_virtio_rng_free(g->rng);
    if (g->fd >= 0)
        close(g->fd);
    g_free(g->id);
    g_free(g);
}

VmmRngs *vmm_rngs_new(void)
{
    VmmRngs *r = g_new0(VmmRngs, 1);
    r->rngs = g_ptr_array_new_with_free_func(rng_free);
    return r;
}

void vmm_rngs_free(VmmRngs *r)
{
    if (!r)
        return;
    g_ptr_array_unref(r->rngs);
    g_free(r);
}

guint vmm_rngs_count(VmmRngs *r)
{
    return r ? r->rngs->len : 0;
}

gboolean vmm_rngs_attach(VmmRngs *r, JsonObject *args, int fd, GError **error)
{
    const char *id = json_object_get_string_member_with_default(args, "id", NULL);
    if (!id || r->plugged) {
        close(fd);
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "rng-attach: %s",
                    !id ? "'id' is required" : "the guest is running: no hotplug");
        return FALSE;
    }
    /* The I/O thread waits for a dry source with poll(), never in read(). */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    Rng *g = g_new0(Rng, 1);
    g->id = g_strdup(id);
    g->fd = fd;
    gint64 max_bytes = json_object_get_int_member_with_default(args, "max-bytes", G_MAXINT64);
    gint64 period = json_object_get_int_member_with_default(args, "period", VMM_VIRTIO_RNG_DEFAULT_PERIOD_MS);
    g->max_bytes = (guint64)MAX(max_bytes, 0);
    g->period_ms = (guint32)CLAMP(period, 1, G_MAXUINT32);
    g_ptr_array_add(r->rngs, g);
    return TRUE;
}

guint vmm_rngs_slots(VmmRngs *r, guint first, VmmVirtioMmioSlot *slots, guint max)
{
    guint n = MIN(vmm_rngs_count(r), max);
    for (guint i = 0; i < n; i++)
        slots[i] = vmm_virtio_slot_window(first + i);
    return n;
}

static bool rng_work(void *opaque, gint64 *wake_ms)
{
    return vmm_virtio_rng_process(opaque, wake_ms);
}

gboolean vmm_rngs_plug(VmmRngs *r, VmmVm *vm, guint first, GError **error)
{
    if (!r)
        return TRUE;
    r->plugged = TRUE;
    for (guint i = 0; i < r->rngs->len; i++) {
        Rng *g = r->rngs->pdata[i];
        vmm_virtio_slot_guest_mem(vm, &g->mem);
        g->rng = vmm_virtio_rng_new(g->id, &g->mem, g->fd);
        vmm_virtio_rng_set_limit(g->rng, g->max_bytes, g->period_ms);
        g_autofree char *name = g_strdup_printf("virtio-rng '%s'", g->id);
        VmmVirtioSlotConfig cfg = { .name = name, .slot = first + i,
                                    .transport = vmm_virtio_rng_transport(g->rng),
                                    .work = rng_work, .opaque = g->rng, .wait_fd = g->fd };
        g->slot = vmm_virtio_slot_plug(vm, &cfg, error);
        if (!g->slot)
            return FALSE;
    }
    return TRUE;
}

void vmm_rngs_unplug(VmmRngs *r)
{
    for (guint i = 0; r && i < r->rngs->len; i++) {
        Rng *g = r->rngs->pdata[i];
        vmm_virtio_slot_unplug(g->slot);
        g->slot = NULL;
        vmm_virtio_rng_free(g->rng);
        g->rng = NULL;
    }
}
