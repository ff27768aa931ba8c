/* The KVM system and VM file descriptors. */
#include "vcpu-worker/kvm.h"
#include "common/error.h"

#include <errno.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

typedef struct {
    const char *name;
    int cap;
    gboolean required;
} KvmCap;

/* What the device models and vCPU threads of vcpu-worker rely on. */
static const KvmCap kvm_caps[] = {
    { "user-memory", KVM_CAP_USER_MEMORY, TRUE },
    { "irqchip", KVM_CAP_IRQCHIP, TRUE },
    { "pit2", KVM_CAP_PIT2, TRUE },
    { "ioeventfd", KVM_CAP_IOEVENTFD, TRUE },
    { "irqfd", KVM_CAP_IRQFD, TRUE },
    { "ext-cpuid", KVM_CAP_EXT_CPUID, TRUE },
    { "set-tss-addr", KVM_CAP_SET_TSS_ADDR, TRUE },
    { "immediate-exit", KVM_CAP_IMMEDIATE_EXIT, FALSE },
    { "tsc-control", KVM_CAP_TSC_CONTROL, FALSE },
    { "nr-vcpus", KVM_CAP_NR_VCPUS, FALSE },
    { "max-vcpus", KVM_CAP_MAX_VCPUS, FALSE },
};

gboolean vmm_kvm_open(VmmKvm *kvm, int kvm_fd, GError **error)
{
    kvm->kvm_fd = kvm_fd;
    kvm->vm_fd = -1;
    kvm->api_version = ioctl(kvm_fd, KVM_GET_API_VERSION, 0);
    if (kvm->api_version < 0)
        return vmm_set_errno(error, errno, "/dev/kvm: KVM_GET_API_VERSION");
    if (kvm->api_version != KVM_API_VERSION) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "/dev/kvm: API version %d, vcpu-worker needs %d", kvm->api_version,
                    KVM_API_VERSION);
        return FALSE;
    }
    for (gsize i = 0; i < G_N_ELEMENTS(kvm_caps); i++) {
        if (kvm_caps[i].required && ioctl(kvm_fd, KVM_CHECK_EXTENSION, kvm_caps[i].cap) <= 0) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                        "/dev/kvm: capability %s is missing", kvm_caps[i].name);
            return FALSE;
        }
    }
    kvm->vm_fd = ioctl(kvm_fd, KVM_CREATE_VM, 0);
    if (kvm->vm_fd < 0)
        return vmm_set_errno(error, errno, "/dev/kvm: KVM_CREATE_VM");
    return TRUE;
}

gboolean vmm_kvm_new_vm(VmmKvm *kvm, GError **error)
{
    int fd = ioctl(kvm->kvm_fd, KVM_CREATE_VM, 0);
    if (fd < 0)
        return vmm_set_errno(error, errno, "/dev/kvm: KVM_CREATE_VM");
    if (kvm->vm_fd >= 0)
        close(kvm->vm_fd);
    kvm->vm_fd = fd;
    return TRUE;
}

void vmm_kvm_close(VmmKvm *kvm)
{
    if (kvm->vm_fd >= 0)
        close(kvm->vm_fd);
    if (kvm->kvm_fd >= 0)
        close(kvm->kvm_fd);
    kvm->vm_fd = kvm->kvm_fd = -1;
}

JsonObject *vmm_kvm_describe(const VmmKvm *kvm)
{
    JsonObject *o = json_object_new();
    json_object_set_boolean_member(o, "enabled", kvm->vm_fd >= 0);
    json_object_set_boolean_member(o, "present", kvm->kvm_fd >= 0);
    if (kvm->kvm_fd < 0)
        return o;
    json_object_set_int_member(o, "api-version", kvm->api_version);
    json_object_set_boolean_member(o, "vm", kvm->vm_fd >= 0);
    JsonObject *caps = json_object_new();
    for (gsize i = 0; i < G_N_ELEMENTS(kvm_caps); i++) {
        int fd = kvm->vm_fd >= 0 ? kvm->vm_fd : kvm->kvm_fd;
        json_object_set_int_member(caps, kvm_caps[i].name,
                                   ioctl(fd, KVM_CHECK_EXTENSION, kvm_caps[i].cap));
    }
    json_object_set_object_member(o, "capabilities", caps);
    return o;
}
