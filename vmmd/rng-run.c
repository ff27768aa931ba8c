/* The entropy sources of the virtio-rng devices at run time: see rng.h. */
#include "vmmd/rng.h"
#include "vmmd/vmmd.h"
#include "vmmd/vm-options.h"
#include "common/error.h"
#include "common/log.h"
#include "proto/control.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#define BUILTIN_SOURCE "/dev/urandom"

/* ---- At run time: one source fd per device ---- */

static const char *source_path(const VmmVmConfig *vm, const VmmRngDevice *r)
{
    const VmmObjectConfig *o = r->rng ? vmm_vm_config_find_object(vm, r->rng) : NULL;
    return o && o->kind == VMM_OBJECT_RNG_RANDOM ? o->filename : BUILTIN_SOURCE;
}

gboolean vmm_rng_open_sources(Vmmd *d, GError **error)
{
    const VmmVmConfig *vm = d->config->vm;
    if (!vm || !vm->rng_devices->len)
        return TRUE;
    d->rng_fds = g_array_new(FALSE, FALSE, sizeof(int));
    for (guint i = 0; i < vm->rng_devices->len; i++) {
        const char *path = source_path(vm, vm->rng_devices->pdata[i]);
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0)
            return vmm_set_errno(error, errno, "Could not open '%s'", path);
        g_array_append_val(d->rng_fds, fd);
    }
    return TRUE;
}

static void on_rng_attached(VmmChannel *ch, JsonObject *result, const GError *error, int *fds,
                            guint nfds, gpointer user)
{
    if (error)
        vmm_error("virtio-rng: vcpu-worker refused the device: %s", error->message);
}

gboolean vmm_rng_attach_all(Vmmd *d, VmmHelperProc *hp, GError **error)
{
    const VmmVmConfig *vm = d->config->vm;
    for (guint i = 0; d->rng_fds && i < d->rng_fds->len; i++) {
        const VmmRngDevice *r = vm->rng_devices->pdata[i];
        JsonObject *args = json_object_new();
        json_object_set_string_member(args, "id", r->id);
        json_object_set_int_member(args, "max-bytes", (gint64)r->max_bytes);   /* < 2^63: rng.c */
        json_object_set_int_member(args, "period", r->period_ms);
        int fd = g_array_index(d->rng_fds, int, i);
        if (!vmm_channel_call(vmm_helper_proc_channel(hp), VMM_CMD_RNG_ATTACH, args, &fd, 1,
                              on_rng_attached, d, error))
            return FALSE;
    }
    return TRUE;
}

void vmm_rng_close_sources(Vmmd *d)
{
    for (guint i = 0; d->rng_fds && i < d->rng_fds->len; i++)
        close(g_array_index(d->rng_fds, int, i));
    g_clear_pointer(&d->rng_fds, g_array_unref);
}
