/* vmmd's side of running the guest: see vm.h. */
#include "vmmd/vm.h"
#include "vmmd/drive-run.h"
#include "vmmd/memory-backend.h"
#include "vmmd/rng.h"
#include "vmmd/vm-options.h"
#include "common/error.h"
#include "common/log.h"
#include "proto/control.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

static void close_fds(int *fds, guint n)
{
    for (guint i = 0; i < n; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
        fds[i] = -1;
    }
}

static int open_image(const char *path, const char *what, GError **error)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        vmm_set_errno(error, errno, "%s %s", what, path);
    return fd;
}

static void fail_guest_start(Vmmd *d, const char *why)
{
    vmm_error("cannot start the guest: %s", why);
    d->exit_code = 1;
    vmmd_request_quit(d, "host-error");
}

static void on_vm_started(VmmChannel *ch, JsonObject *result, const GError *error, int *fds,
                          guint nfds, gpointer user)
{
    Vmmd *d = user;
    if (error) {
        fail_guest_start(d, error->message);
        return;
    }
    d->status = "running";
    vmm_notice("guest started");
}

void vmm_vm_start(Vmmd *d, VmmHelperProc *hp)
{
    const VmmVmConfig *vm = d->config->vm;
    g_autoptr(GError) err = NULL;
    int fds[3] = { -1, -1, -1 };
    guint nfds = 2;

    if (!vm || !vm->kernel || d->quitting)
        return;
    if (!vmm_drives_ready(d)) {
        /* The guest's disks must be attached first; drive-run.c calls again. */
        vmm_drives_defer_vm_start(d, hp);
        return;
    }
    fds[0] = d->guest_ram ? dup(d->guest_ram->fd) : -1;
    if (fds[0] < 0)
        vmm_set_errno(&err, errno, "guest RAM: no memory backend fd to hand over");
    else
        fds[1] = open_image(vm->kernel, "-kernel", &err);
    if (fds[1] >= 0 && vm->initrd) {
        fds[2] = open_image(vm->initrd, "-initrd", &err);
        nfds = 3;
    }
    if (err) {
        close_fds(fds, 3);
        fail_guest_start(d, err->message);
        return;
    }
    if (!vmm_rng_attach_all(d, hp, &err)) {
        close_fds(fds, 3);
        fail_guest_start(d, err->message);
        return;
    }
    JsonObject *args = json_object_new();
    vmm_guest_ram_describe(d->guest_ram, args);
    json_object_set_int_member(args, "vcpus", (gint64)MAX(vm->cpus, 1));
    if (vm->append)
        json_object_set_string_member(args, "cmdline", vm->append);
    json_object_set_boolean_member(args, "irqchip", vm->machine.kernel_irqchip != VMM_IRQCHIP_OFF);
    if (!vmm_channel_call(vmm_helper_proc_channel(hp), VMM_CMD_VM_START, args, fds, nfds,
                          on_vm_started, d, &err))
        fail_guest_start(d, err->message);
    /* The channel sent duplicates; vcpu-worker holds the RAM from now on. */
    close_fds(fds, 3);
}

gboolean vmm_vm_handle_event(Vmmd *d, const char *name, JsonObject *data)
{
    const char *reason = data ? json_object_get_string_member_with_default(data, "reason", "?") : "?";
    if (g_str_equal(name, VMM_EVENT_GUEST_SHUTDOWN)) {
        gboolean failed = data && json_object_get_boolean_member_with_default(data, "error", FALSE);
        vmm_notice("the guest shut down (%s)", reason);
        if (failed)
            d->exit_code = 1;
        vmmd_request_quit(d, failed ? "host-error" : "guest-shutdown");
        return TRUE;
    }
    if (g_str_equal(name, VMM_EVENT_GUEST_RESET)) {
        /* A reset that restarts the guest comes later; its vCPU has stopped. */
        vmm_notice("the guest asked for a reset (%s); not supported yet, the guest stays stopped",
                   reason);
        JsonObject *ev = json_object_new();
        json_object_set_boolean_member(ev, "guest", TRUE);
        json_object_set_string_member(ev, "reason", "guest-reset");
        vmm_qmp_emit(d, "RESET", ev);
        return TRUE;
    }
    return FALSE;
}

void vmm_vm_cannot_start(Vmmd *d, const char *why)
{
    if (d->config->vm && d->config->vm->kernel && !d->quitting)
        fail_guest_start(d, why);
}
