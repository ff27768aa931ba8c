/* vmmd's side of running the guest: see vm.h. */
#include "vmmd/vm.h"
#include "vmmd/drive-run.h"
#include "vmmd/fsdev-run.h"
#include "vmmd/memory-backend.h"
#include "vmmd/rng.h"
#include "vmmd/serial.h"
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

static void autostart_vcpus(Vmmd *d);

static void on_vm_started(VmmChannel *ch, JsonObject *result, const GError *error, int *fds,
                          guint nfds, gpointer user)
{
    Vmmd *d = user;
    gboolean sent_paused = d->config->vm->start_paused;
    if (error) {
        fail_guest_start(d, error->message);
        return;
    }
    d->guest_state = VMM_GUEST_RUNNING;
    /* -S: the vCPUs exist but wait for QMP cont, in QEMU's "prelaunch". A
     * cont that came while vm-start was on its way (vm_autostart) has set
     * the status and sent RESUME already: the vCPUs only need to go. */
    if (sent_paused && d->vm_autostart) {
        autostart_vcpus(d);
        d->status = "running";
    } else
        d->status = sent_paused ? "prelaunch" : "running";
    vmm_notice("guest started%s", g_str_equal(d->status, "prelaunch") ? " paused (-S)" : "");
}

void vmm_vm_start_waiting(Vmmd *d)
{
    VmmHelperProc *hp = d->vm_start_waiting;
    d->vm_start_waiting = NULL;
    if (hp)
        vmm_vm_start(d, hp);
}

void vmm_vm_start(Vmmd *d, VmmHelperProc *hp)
{
    vmm_debug("vm-start: vcpu-worker is ready");
    const VmmVmConfig *vm = d->config->vm;
    g_autoptr(GError) err = NULL;
    int fds[3] = { -1, -1, -1 };
    guint nfds = 2;

    if (!vm || !vm->kernel || d->quitting)
        return;
    if (!vmm_drives_ready(d) || !vmm_fsdevs_ready(d)) {
        /* The guest's disks and 9p devices are attached first: their
         * runtimes call vmm_vm_start_waiting() as each becomes ready. */
        d->vm_start_waiting = hp;
        return;
    }
    if (!vmm_serial_backend_open(d, &err)) {
        fail_guest_start(d, err->message);
        return;
    }
    /* -serial unix:...,server=on,wait=on: serial.c calls again on a client. */
    if (!vmm_serial_backend_ready(d, hp))
        return;
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
    if (!vmm_serial_backend_attach(d, hp, &err) || !vmm_rng_attach_all(d, hp, &err)) {
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
    if (vm->start_paused)
        json_object_set_boolean_member(args, "paused", TRUE);
    vmm_debug("vm-start: sending to vcpu-worker");
    if (!vmm_channel_call(vmm_helper_proc_channel(hp), VMM_CMD_VM_START, args, fds, nfds,
                          on_vm_started, d, &err))
        fail_guest_start(d, err->message);
    /* The channel sent duplicates; vcpu-worker holds the RAM from now on. */
    close_fds(fds, 3);
}

static void emit_event(Vmmd *d, const char *name, const char *reason, gboolean guest)
{
    JsonObject *ev = json_object_new();
    if (reason) {
        json_object_set_boolean_member(ev, "guest", guest);
        json_object_set_string_member(ev, "reason", reason);
    }
    vmm_qmp_emit(d, name, ev);
}

/* -no-shutdown: the guest is gone but vmmd stays, stopped in "shutdown"
 * (QEMU sends SHUTDOWN, then STOP), until quit. */
static void guest_ended_stay(Vmmd *d, const char *reason)
{
    d->guest_state = VMM_GUEST_ENDED;
    d->status = "shutdown";
    emit_event(d, "SHUTDOWN", reason, TRUE);
    emit_event(d, "STOP", NULL, FALSE);
}

static void guest_shutdown(Vmmd *d, JsonObject *data, const char *reason)
{
    gboolean failed = data && json_object_get_boolean_member_with_default(data, "error", FALSE);
    /* QEMU's SHUTDOWN reasons: a panic is its own, any other end of the guest
     * (ACPI S5, HLT with interrupts off) is guest-shutdown. */
    const char *why = failed ? "host-error" :
                      g_str_equal(reason, "guest-panic") ? "guest-panic" : "guest-shutdown";
    vmm_notice("the guest shut down (%s)", reason);
    if (failed)
        d->exit_code = 1;
    if (!failed && d->config->vm->no_shutdown)
        guest_ended_stay(d, why);
    else {
        d->guest_state = VMM_GUEST_ENDED;
        vmmd_request_quit(d, why);
    }
}

/* A guest that cannot be rebooted would sit there stopped: end it instead. */
static void on_guest_reset_done(Vmmd *d, const GError *error, gpointer user)
{
    if (!error)
        return;
    if (d->quitting) {
        /* vmmd began to quit (a signal, quit) while the reset was on its way:
         * vcpu-worker going away is expected then, not a failure. */
        vmm_info("guest reset not done: vmmd is shutting down (%s)", error->message);
        return;
    }
    vmm_error("cannot reset the guest: %s", error->message);
    d->guest_state = VMM_GUEST_ENDED;
    d->exit_code = 1;
    vmmd_request_quit(d, "host-error");
}

/* A guest reboot (ACPI reset register, i8042, triple fault): QEMU's reason
 * is guest-reset for all of them. -no-reboot turns it into a shutdown. */
static void guest_reset(Vmmd *d, const char *reason)
{
    vmm_notice("the guest asked for a reset (%s)", reason);
    if (d->quitting) {
        vmm_info("guest reset ignored: vmmd is shutting down");
        return;
    }
    if (d->config->vm->no_reboot) {
        d->guest_state = VMM_GUEST_ENDED;
        vmmd_request_quit(d, "guest-reset");
        return;
    }
    vmm_vm_reset(d, "guest-reset", TRUE, on_guest_reset_done, NULL);
}

gboolean vmm_vm_handle_event(Vmmd *d, const char *name, JsonObject *data)
{
    const char *reason = data ? json_object_get_string_member_with_default(data, "reason", "?") : "?";
    if (g_str_equal(name, VMM_EVENT_GUEST_SHUTDOWN)) {
        guest_shutdown(d, data, reason);
        return TRUE;
    }
    if (g_str_equal(name, VMM_EVENT_GUEST_RESET)) {
        guest_reset(d, reason);
        return TRUE;
    }
    return FALSE;
}

/* ---- Run control: stop, cont, powerdown, reset --------------------------- */

static VmmChannel *worker_channel(Vmmd *d)
{
    VmmHelperProc *hp = vmm_supervisor_find(d, "vcpu-worker");
    VmmChannel *ch = hp ? vmm_helper_proc_channel(hp) : NULL;
    return ch && vmm_channel_is_ready(ch) ? ch : NULL;
}

typedef struct {
    Vmmd *d;
    const char *status;         /* the QMP status once it worked, or NULL */
    const char *event;          /* QMP event once it worked, or NULL */
    const char *reason;         /* the event's reason, or NULL */
    gboolean guest;
    VmmVmDoneFn done;
    gpointer user;
} VmCall;

/* The run state once every stop, cont and reset sent to vcpu-worker is done:
 * a command that comes meanwhile acts on that, as QEMU's cont does on a
 * pending io-error stop (the VM stops, then runs again: STOP, RESUME), and a
 * vmmd's own io-error stop on a cont in flight (it runs, then stops). The
 * channel keeps the calls in the order they were sent. */
static const char *status_soon(Vmmd *d)
{
    return d->status_calls ? d->status_soon : d->status;
}

static void on_vm_call(VmmChannel *ch, JsonObject *result, const GError *error, int *fds,
                       guint nfds, gpointer user)
{
    VmCall *c = user;
    if (c->status && --c->d->status_calls == 0)
        c->d->status_soon = NULL;
    if (!error) {
        if (c->status)
            c->d->status = c->status;
        if (c->event)
            emit_event(c->d, c->event, c->reason, c->guest);
    }
    if (c->done)
        c->done(c->d, error, c->user);
    else if (error)
        vmm_warn("vcpu-worker: %s", error->message);
    g_free(c);
}

static void vm_call(Vmmd *d, const char *cmd, VmCall *tmpl)
{
    g_autoptr(GError) err = NULL;
    VmCall *c = g_memdup2(tmpl, sizeof(*c));
    c->d = d;
    VmmChannel *ch = worker_channel(d);
    if (!ch)
        g_set_error(&err, VMM_ERROR, VMM_ERROR_FAILED, "vcpu-worker is not running");
    else if (vmm_channel_call(ch, cmd, NULL, NULL, 0, on_vm_call, c, &err)) {
        if (c->status) {
            d->status_calls++;
            d->status_soon = c->status;
        }
        return;
    }
    if (c->done)
        c->done(d, err, c->user);
    else
        vmm_warn("%s", err->message);
    g_free(c);
}

static void autostart_vcpus(Vmmd *d)
{
    vm_call(d, VMM_CMD_VM_CONT, &(VmCall){ .status = NULL });
}

static gboolean guest_can_run(Vmmd *d, GError **error)
{
    if (d->guest_state == VMM_GUEST_RUNNING)
        return TRUE;
    g_set_error(error, VMM_ERROR, VMM_ERROR_FAILED, "%s",
                d->guest_state == VMM_GUEST_ENDED ?
                "Resetting the Virtual Machine is required" : "the guest has not been started");
    return FALSE;
}

void vmm_vm_stop(Vmmd *d, const char *status, VmmVmDoneFn done, gpointer user)
{
    g_autoptr(GError) err = NULL;
    if (!guest_can_run(d, &err) || !g_str_equal(status_soon(d), "running")) {
        /* Stopping a stopped guest succeeds and changes nothing, as in QEMU. */
        if (done)
            done(d, NULL, user);
        return;
    }
    vm_call(d, VMM_CMD_VM_STOP, &(VmCall){ .status = status, .event = "STOP", .done = done,
                                           .user = user });
}

void vmm_vm_cont(Vmmd *d, VmmVmDoneFn done, gpointer user)
{
    g_autoptr(GError) err = NULL;
    if (d->guest_state == VMM_GUEST_NONE && g_str_equal(d->status, "prelaunch") && !d->quitting &&
        d->config->vm && d->config->vm->kernel) {
        /* -S and the guest is still being built: it runs as soon as it is. */
        d->vm_autostart = TRUE;
        d->status = "running";
        emit_event(d, "RESUME", NULL, FALSE);
        if (done)
            done(d, NULL, user);
        return;
    }
    if (!guest_can_run(d, &err)) {
        if (done)
            done(d, err, user);
        return;
    }
    /* As QEMU's cont: the drives' I/O status is reset; vm-cont retries the requests an io-error stop kept. */
    vmm_drives_cont(d);
    if (g_str_equal(status_soon(d), "running")) {
        if (done)
            done(d, NULL, user);
        return;
    }
    vm_call(d, VMM_CMD_VM_CONT, &(VmCall){ .status = "running", .event = "RESUME", .done = done,
                                           .user = user });
}

void vmm_vm_powerdown(Vmmd *d, VmmVmDoneFn done, gpointer user)
{
    g_autoptr(GError) err = NULL;
    if (!guest_can_run(d, &err)) {
        if (done)
            done(d, err, user);
        return;
    }
    /* QEMU reports POWERDOWN when it pressed the button, not when the guest acted. */
    vm_call(d, VMM_CMD_VM_POWERDOWN, &(VmCall){ .event = "POWERDOWN", .done = done, .user = user });
}

void vmm_vm_reset(Vmmd *d, const char *reason, gboolean guest, VmmVmDoneFn done, gpointer user)
{
    if (d->guest_state == VMM_GUEST_NONE) {
        g_autoptr(GError) err = g_error_new_literal(VMM_ERROR, VMM_ERROR_FAILED,
                                                    "the guest has not been started");
        if (done)
            done(d, err, user);
        return;
    }
    /* vcpu-worker rebuilds the machine on the same RAM and boots the kernel
     * again; a paused guest stays paused, an ended one (-no-shutdown) runs. */
    const char *status = g_str_equal(status_soon(d), "running") || d->guest_state == VMM_GUEST_ENDED ?
                         "running" : status_soon(d);
    d->guest_state = VMM_GUEST_RUNNING;
    vm_call(d, VMM_CMD_VM_RESET, &(VmCall){ .status = status, .event = "RESET", .reason = reason,
                                            .guest = guest, .done = done, .user = user });
}

void vmm_vm_cannot_start(Vmmd *d, const char *why)
{
    if (d->config->vm && d->config->vm->kernel && !d->quitting)
        fail_guest_start(d, why);
}
