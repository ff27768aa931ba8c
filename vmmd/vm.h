/* vmmd's side of running the guest: with -kernel, once vcpu-worker holds
 * /dev/kvm, vmmd creates guest RAM (a memfd), opens the kernel and initrd
 * read-only and hands them over in "vm-start"; vcpu-worker's guest-shutdown
 * and guest-reset events come back here. */
#pragma once
#include "vmmd/vmmd.h"

/* Sends vm-start to vcpu-worker (HP) if the command line has -kernel; a
 * failure to start the guest makes vmmd quit with status 1. */
void vmm_vm_start(Vmmd *d, VmmHelperProc *hp);
/* Acts on vcpu-worker's guest events; FALSE if NAME is not one of them. */
gboolean vmm_vm_handle_event(Vmmd *d, const char *name, JsonObject *data);
/* vcpu-worker has no usable KVM VM (WHY): with -kernel, vmmd quits with
 * status 1, as the guest cannot run. */
void vmm_vm_cannot_start(Vmmd *d, const char *why);
