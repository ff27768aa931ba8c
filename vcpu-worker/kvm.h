#pragma once
#include <glib.h>
#include <json-glib/json-glib.h>

typedef struct {
    int kvm_fd;   /* /dev/kvm, as vmmd passed it */
    int vm_fd;    /* from KVM_CREATE_VM */
    int api_version;
} VmmKvm;

/* Takes KVM_FD, checks the API version and the capabilities vcpu-worker needs,
 * and creates the VM. Errors name the missing capability. */
gboolean vmm_kvm_open(VmmKvm *kvm, int kvm_fd, GError **error);
void vmm_kvm_close(VmmKvm *kvm);
/* Replaces the VM with a fresh one (system reset rebuilds the machine on it:
 * KVM has no way to put a VM's irqchip, PIT and vCPUs back to power-on). The
 * old VM goes once nothing else holds its fd. */
gboolean vmm_kvm_new_vm(VmmKvm *kvm, GError **error);
/* {"enabled","present","api-version","vm","capabilities":{name:value}} */
JsonObject *vmm_kvm_describe(const VmmKvm *kvm);
