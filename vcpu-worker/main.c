/* vcpu-worker: the KVM VM, its vCPU threads and the device models. It takes
 * /dev/kvm from vmmd (setup-kvm), creates the VM, and runs the guest vmmd
 * describes in vm-start (machine.h). */
#include "common/helper.h"
#include "common/profiles.h"
#include "proto/control.h"
#include "vcpu-worker/chardev.h"
#include "vcpu-worker/disks.h"
#include "vcpu-worker/rngs.h"
#include "vcpu-worker/fsdevs.h"
#include "vcpu-worker/kvm.h"
#include "vcpu-worker/machine.h"

#include <unistd.h>

static VmmKvm kvm = { .kvm_fd = -1, .vm_fd = -1 };
static VmmMachine *machine;
static VmmDisks *disks;         /* the drives vmmd attached (disks.h) */
static VmmRngs *rngs;           /* the virtio-rng devices (rngs.h) */
static VmmFsdevs *fsdevs;       /* the virtio-9p devices (fsdevs.h) */
static VmmChardev *console;     /* COM1's backend (chardev.h); NULL: our stderr */
/* What vm-start was given, kept for vm-reset: the fds and the command line
 * are owned here. */
static VmmMachineSpec boot_spec = { .ram_fd = -1, .kernel_fd = -1, .initrd_fd = -1 };

static void setup_kvm(VmmChannelRequest *req)
{
    g_autoptr(GError) err = NULL;
    int fd = vmm_channel_request_take_fd(req, 0);
    if (fd < 0) {
        vmm_channel_reply_error(req, VMM_ERR_GENERIC, "setup-kvm: no /dev/kvm fd was passed");
        return;
    }
    if (machine) {
        close(fd);
        vmm_channel_reply_error(req, VMM_ERR_GENERIC, "setup-kvm: a guest is running on the VM");
        return;
    }
    vmm_kvm_close(&kvm);
    if (!vmm_kvm_open(&kvm, fd, &err)) {
        vmm_channel_reply_gerror(req, err);
        return;
    }
    vmm_channel_reply(req, vmm_kvm_describe(&kvm), NULL, 0);
}

static void on_guest_end(VmmMachineEnd end, const char *reason, gpointer user)
{
    VmmHelper *h = user;
    JsonObject *data = json_object_new();
    json_object_set_string_member(data, "reason", reason);
    const char *event = end == VMM_MACHINE_END_RESET ? VMM_EVENT_GUEST_RESET : VMM_EVENT_GUEST_SHUTDOWN;
    if (end == VMM_MACHINE_END_ERROR)
        json_object_set_boolean_member(data, "error", TRUE);
    vmm_channel_emit(vmm_helper_channel(h), event, data, NULL, 0, NULL);
}

static void close_fds(int *fds, guint n)
{
    for (guint i = 0; i < n; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
    }
}

static void keep_boot_spec(const VmmMachineSpec *spec)
{
    g_free((char *)boot_spec.cmdline);
    int old[3] = { boot_spec.ram_fd, boot_spec.kernel_fd, boot_spec.initrd_fd };
    close_fds(old, 3);
    boot_spec = *spec;
    boot_spec.cmdline = g_strdup(spec->cmdline);
}

/* args {"ram-size","vcpus","cmdline"?,"irqchip"?,"ram-share"?,"ram-prealloc"?,"mem-merge"?,
 * "dump-guest-core"?}, fds [RAM memfd, kernel, initrd?] */
static void vm_start(VmmHelper *h, VmmChannelRequest *req)
{
    g_autoptr(GError) err = NULL;
    JsonObject *args = vmm_channel_request_args(req);
    int fds[3] = { -1, -1, -1 };
    for (guint i = 0; i < MIN(vmm_channel_request_nfds(req), 3u); i++)
        fds[i] = vmm_channel_request_take_fd(req, i);
    gint64 ram_size = json_object_get_int_member_with_default(args, "ram-size", 0);
    gint64 vcpus = json_object_get_int_member_with_default(args, "vcpus", 1);

    if (machine)
        vmm_channel_reply_error(req, VMM_ERR_GENERIC, "vm-start: the guest is already running");
    else if (fds[0] < 0 || fds[1] < 0)
        vmm_channel_reply_error(req, VMM_ERR_GENERIC, "vm-start: needs the RAM and kernel fds");
    else if (ram_size <= 0 || vcpus <= 0 || vcpus > G_MAXUINT32)
        vmm_channel_reply_error(req, VMM_ERR_GENERIC, "vm-start: bad ram-size or vcpus");
    else {
        VmmMachineSpec spec = {
            .ram_size = (guint64)ram_size, .vcpus = (guint32)vcpus,
            .cmdline = json_object_get_string_member_with_default(args, "cmdline", NULL),
            .ram_fd = fds[0], .kernel_fd = fds[1], .initrd_fd = fds[2],
            .irqchip = json_object_get_boolean_member_with_default(args, "irqchip", TRUE),
            .start_paused = json_object_get_boolean_member_with_default(args, "paused", FALSE),
            .ram_mapping = {
                .private_copy = !json_object_get_boolean_member_with_default(args, "ram-share", TRUE),
                .prealloc = json_object_get_boolean_member_with_default(args, "ram-prealloc", FALSE),
                .merge = json_object_get_boolean_member_with_default(args, "mem-merge", FALSE),
                .dump = json_object_get_boolean_member_with_default(args, "dump-guest-core", FALSE),
            },
            .disks = disks,
            .rngs = rngs,
            .fsdevs = fsdevs,
            .console = console,
        };
        machine = vmm_machine_start(&kvm, vmm_helper_loop(h), &spec, on_guest_end, h, &err);
        if (machine) {
            keep_boot_spec(&spec);
            fds[0] = fds[1] = fds[2] = -1;
            vmm_channel_reply(req, NULL, NULL, 0);
        } else
            vmm_channel_reply_gerror(req, err);
    }
    close_fds(fds, 3);
}

/* vm-reset: a new KVM VM and a new machine from the kept vm-start (the same
 * RAM, kernel and initrd fds): KVM cannot put an irqchip, a PIT and vCPUs
 * back to their power-on state, a fresh VM has it. A paused guest stays
 * paused. The virtio devices are reset as their drivers would do it and
 * plugged into the new VM with their backends (blockd and fsd connections,
 * entropy sources) kept. */
static void vm_reset(VmmHelper *h, VmmChannelRequest *req)
{
    g_autoptr(GError) err = NULL;
    if (!machine || boot_spec.ram_fd < 0) {
        vmm_channel_reply_error(req, VMM_ERR_GENERIC, "vm-reset: no guest was started");
        return;
    }
    boot_spec.start_paused = vmm_machine_paused(machine);
    vmm_machine_free_for_reset(machine);
    machine = NULL;
    if (vmm_kvm_new_vm(&kvm, &err))
        machine = vmm_machine_start(&kvm, vmm_helper_loop(h), &boot_spec, on_guest_end, h, &err);
    if (machine)
        vmm_channel_reply(req, NULL, NULL, 0);
    else
        vmm_channel_reply_gerror(req, err);
}

/* serial-attach {"input": bool, "output": bool, "socket": bool}: COM1's
 * backend, fds [input?, output?], or for a socket [connected socket] used
 * both ways. Replaces what was attached (a new socket client); nothing
 * attached at all means output on our stderr. */
static void serial_attach(VmmHelper *h, VmmChannelRequest *req)
{
    JsonObject *args = vmm_channel_request_args(req);
    gboolean socket = json_object_get_boolean_member_with_default(args, "socket", FALSE);
    gboolean in = socket || json_object_get_boolean_member_with_default(args, "input", FALSE);
    gboolean out = socket || json_object_get_boolean_member_with_default(args, "output", FALSE);
    guint next = 0;
    int in_fd = in ? vmm_channel_request_take_fd(req, next++) : -1;
    int out_fd = socket ? in_fd : out ? vmm_channel_request_take_fd(req, next++) : -1;
    if ((in && in_fd < 0) || (out && out_fd < 0)) {
        int fds[2] = { in_fd, socket ? -1 : out_fd };
        close_fds(fds, 2);
        vmm_channel_reply_error(req, VMM_ERR_GENERIC, "serial-attach: the fds it names were not passed");
        return;
    }
    if (!console)
        console = vmm_chardev_new("serial0", vmm_helper_loop(h));
    vmm_chardev_set_fds(console, in_fd, out_fd);
    vmm_channel_reply(req, NULL, NULL, 0);
}

static void vm_query_cpus(VmmChannelRequest *req)
{
    JsonArray *cpus = json_array_new();
    for (guint i = 0; machine && i < vmm_machine_n_vcpus(machine); i++) {
        JsonObject *o = json_object_new();
        json_object_set_int_member(o, "cpu-index", i);
        json_object_set_int_member(o, "thread-id", vmm_machine_vcpu_tid(machine, i));
        json_array_add_object_element(cpus, o);
    }
    JsonObject *r = json_object_new();
    json_object_set_array_member(r, "cpus", cpus);
    vmm_channel_reply(req, r, NULL, 0);
}

/* A failed guest request and its werror/rerror action: vmmd makes QMP's
 * BLOCK_IO_ERROR of it. */
static void on_disk_io_error(const char *id, const char *action, gboolean is_read, int err,
                             gpointer user)
{
    VmmHelper *h = user;
    JsonObject *data = json_object_new();
    json_object_set_string_member(data, "id", id);
    json_object_set_string_member(data, "operation", is_read ? "read" : "write");
    json_object_set_string_member(data, "action", action);
    json_object_set_int_member(data, "errno", err);
    json_object_set_string_member(data, "reason", g_strerror(err));
    vmm_channel_emit(vmm_helper_channel(h), VMM_EVENT_DRIVE_IO_ERROR, data, NULL, 0, NULL);
}

/* drive-attach {id, serial?, read-only?, writeback?, discard?, werror?, rerror?}
 * and drive-reconnect {id}, each with the NBD socket as fd 0. */
static void drive_command(VmmHelper *h, VmmChannelRequest *req, gboolean reconnect)
{
    g_autoptr(GError) err = NULL;
    JsonObject *args = vmm_channel_request_args(req);
    int fd = vmm_channel_request_take_fd(req, 0);
    if (fd < 0) {
        vmm_channel_reply_error(req, VMM_ERR_GENERIC, "%s: no NBD socket was passed",
                                vmm_channel_request_command(req));
        return;
    }
    if (!disks)
        disks = vmm_disks_new(vmm_helper_loop(h), on_disk_io_error, h);
    if (reconnect) {
        if (vmm_disks_reconnect(disks, json_object_get_string_member_with_default(args, "id", NULL), fd, &err))
            vmm_channel_reply(req, NULL, NULL, 0);
        else
            vmm_channel_reply_gerror(req, err);
        return;
    }
    JsonObject *r = vmm_disks_attach(disks, args, fd, &err);
    if (r)
        vmm_channel_reply(req, r, NULL, 0);
    else
        vmm_channel_reply_gerror(req, err);
}

/* rng-attach {id} with the entropy source as fd 0. */
static void rng_attach(VmmChannelRequest *req)
{
    g_autoptr(GError) err = NULL;
    int fd = vmm_channel_request_take_fd(req, 0);
    if (fd < 0) {
        vmm_channel_reply_error(req, VMM_ERR_GENERIC, "rng-attach: no entropy fd was passed");
        return;
    }
    if (!rngs)
        rngs = vmm_rngs_new();
    if (vmm_rngs_attach(rngs, vmm_channel_request_args(req), fd, &err))
        vmm_channel_reply(req, NULL, NULL, 0);
    else
        vmm_channel_reply_gerror(req, err);
}

/* vm-stop, vm-cont, vm-powerdown: the running guest's controls. vm-stop
 * answers once every vCPU is out of KVM_RUN. */
static void vm_control(VmmChannelRequest *req, const char *cmd)
{
    if (!machine) {
        vmm_channel_reply_error(req, VMM_ERR_GENERIC, "%s: no guest is running", cmd);
        return;
    }
    if (g_str_equal(cmd, VMM_CMD_VM_STOP))
        vmm_machine_pause(machine);
    else if (g_str_equal(cmd, VMM_CMD_VM_CONT)) {
        /* QEMU retries the requests a werror/rerror stop kept whenever the VM runs again. */
        vmm_disks_resume(disks);
        vmm_machine_resume(machine);
    }
    else
        vmm_machine_powerdown(machine);
    vmm_channel_reply(req, NULL, NULL, 0);
}

static gboolean handle_request(VmmHelper *h, VmmChannelRequest *req)
{
    const char *cmd = vmm_channel_request_command(req);
    if (g_str_equal(cmd, VMM_CMD_SETUP_KVM))
        setup_kvm(req);
    else if (g_str_equal(cmd, VMM_CMD_QUERY_KVM))
        vmm_channel_reply(req, vmm_kvm_describe(&kvm), NULL, 0);
    else if (g_str_equal(cmd, VMM_CMD_VM_START))
        vm_start(h, req);
    else if (g_str_equal(cmd, VMM_CMD_DRIVE_ATTACH))
        drive_command(h, req, FALSE);
    else if (g_str_equal(cmd, VMM_CMD_DRIVE_RECONNECT))
        drive_command(h, req, TRUE);
    else if (g_str_equal(cmd, VMM_CMD_RNG_ATTACH))
        rng_attach(req);
    else if (g_str_equal(cmd, VMM_CMD_FSDEV_ATTACH) || g_str_equal(cmd, VMM_CMD_FSDEV_RECONNECT))
        vmm_fsdevs_command(&fsdevs, h, req);
    else if (g_str_equal(cmd, VMM_CMD_SERIAL_ATTACH))
        serial_attach(h, req);
    else if (g_str_equal(cmd, VMM_CMD_VM_RESET))
        vm_reset(h, req);
    else if (g_str_equal(cmd, VMM_CMD_VM_QUERY_CPUS))
        vm_query_cpus(req);
    else if (g_str_equal(cmd, VMM_CMD_VM_STOP) || g_str_equal(cmd, VMM_CMD_VM_CONT) ||
             g_str_equal(cmd, VMM_CMD_VM_POWERDOWN))
        vm_control(req, cmd);
    else
        return FALSE;
    return TRUE;
}

/* The vCPU thread posts to the loop: stop and free it while the loop exists. */
static void cleanup(VmmHelper *h)
{
    vmm_machine_free(machine);
    machine = NULL;
    vmm_disks_free(disks);
    disks = NULL;
    vmm_rngs_free(rngs);
    rngs = NULL;
    vmm_fsdevs_free(fsdevs);
    fsdevs = NULL;
    vmm_chardev_free(console);
    console = NULL;
}

int main(int argc, char **argv)
{
    static const VmmHelperDesc desc = {
        .role = "vcpu-worker",
        .handle_request = handle_request,
        .cleanup = cleanup,
    };
    VmmHelperDesc d = desc;
    d.profile = vmm_profile_for("vcpu-worker");
    int rc = vmm_helper_main(argc, argv, &d);
    vmm_kvm_close(&kvm);
    return rc;
}
