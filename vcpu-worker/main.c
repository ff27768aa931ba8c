/* vcpu-worker: the KVM VM, its vCPU threads and the device models. For now it
 * takes /dev/kvm from vmmd, creates the VM and reports on it. */
#include "common/helper.h"
#include "common/profiles.h"
#include "proto/control.h"
#include "vcpu-worker/kvm.h"

static VmmKvm kvm = { .kvm_fd = -1, .vm_fd = -1 };

static void setup_kvm(VmmChannelRequest *req)
{
    g_autoptr(GError) err = NULL;
    int fd = vmm_channel_request_take_fd(req, 0);
    if (fd < 0) {
        vmm_channel_reply_error(req, VMM_ERR_GENERIC, "setup-kvm: no /dev/kvm fd was passed");
        return;
    }
    vmm_kvm_close(&kvm);
    if (!vmm_kvm_open(&kvm, fd, &err)) {
        vmm_channel_reply_gerror(req, err);
        return;
    }
    vmm_channel_reply(req, vmm_kvm_describe(&kvm), NULL, 0);
}

static gboolean handle_request(VmmHelper *h, VmmChannelRequest *req)
{
    const char *cmd = vmm_channel_request_command(req);
    if (g_str_equal(cmd, VMM_CMD_SETUP_KVM))
        setup_kvm(req);
    else if (g_str_equal(cmd, VMM_CMD_QUERY_KVM))
        vmm_channel_reply(req, vmm_kvm_describe(&kvm), NULL, 0);
    else
        return FALSE;
    return TRUE;
}

int main(int argc, char **argv)
{
    static const VmmHelperDesc desc = {
        .role = "vcpu-worker",
        .handle_request = handle_request,
    };
    VmmHelperDesc d = desc;
    d.profile = vmm_profile_for("vcpu-worker");
    int rc = vmm_helper_main(argc, argv, &d);
    vmm_kvm_close(&kvm);
    return rc;
}
