/* vcpu-worker: the KVM VM, its vCPU threads and the device models. It takes
 * /dev/kvm from vmmd (setup-kvm), creates the VM, and runs the guest vmmd
 * describes in vm-start (machine.h). */
#include "common/helper.h"
#include "common/profiles.h"
#include "proto/control.h"
#include "vcpu-worker/disks.h"
#include "vcpu-worker/rngs.h"
#include "vcpu-worker/kvm.h"
#include "vcpu-worker/machine.h"

#include <unistd.h>

static VmmKvm kvm = { .kvm_fd = -1, .vm_fd = -1 };
static VmmMachine *machine;
static VmmDisks *disks;         /* the drives vmmd attached (disks.h) */
static VmmRngs *rngs;           /* the virtio-rng devices (rngs.h) */

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
            .ram_mapping = {
                .private_copy = !json_object_get_boolean_member_with_default(args, "ram-share", TRUE),
                .prealloc = json_object_get_boolean_member_with_default(args, "ram-prealloc", FALSE),
                .merge = json_object_get_boolean_member_with_default(args, "mem-merge", FALSE),
                .dump = json_object_get_boolean_member_with_default(args, "dump-guest-core", FALSE),
            },
            .disks = disks,
            .rngs = rngs,
        };
        machine = vmm_machine_start(&kvm, vmm_helper_loop(h), &spec, on_guest_end, h, &err);
        if (machine)
            vmm_channel_reply(req, NULL, NULL, 0);
        else
            vmm_channel_reply_gerror(req, err);
    }
    /* The RAM stays mapped and the images are copied: no fd is kept. */
    close_fds(fds, 3);
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
