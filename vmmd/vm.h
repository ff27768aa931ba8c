/* vmmd's side of running the guest: with -kernel, once vcpu-worker holds
 * /dev/kvm, vmmd creates guest RAM (a memfd), opens the kernel and initrd
 * read-only and hands them over in "vm-start"; vcpu-worker's guest-shutdown
 * and guest-reset events come back here. */
#pragma once
#include "vmmd/vmmd.h"

/* Sends vm-start to vcpu-worker (HP) if the command line has -kernel; a
 * failure to start the guest makes vmmd quit with status 1. */
void vmm_vm_start(Vmmd *d, VmmHelperProc *hp);
/* A device runtime (drive-run.c, fsdev-run.c) has one more device ready: a
 * start that waited for devices is tried again. */
void vmm_vm_start_waiting(Vmmd *d);
/* Acts on vcpu-worker's guest events; FALSE if NAME is not one of them. */
gboolean vmm_vm_handle_event(Vmmd *d, const char *name, JsonObject *data);
/* Run control (QMP stop, cont, system_powerdown, system_reset); DONE (may be
 * NULL) gets the error, if any. Stop sets the QMP status to STATUS ("paused",
 * "io-error", ...) and sends STOP; cont sends RESUME; powerdown presses the
 * ACPI power button (POWERDOWN); reset reboots the guest (RESET with REASON
 * and GUEST). Stopping a stopped guest or continuing a running one is a
 * no-op that succeeds, as in QEMU. */
typedef void (*VmmVmDoneFn)(Vmmd *d, const GError *error, gpointer user);
void vmm_vm_stop(Vmmd *d, const char *status, VmmVmDoneFn done, gpointer user);
void vmm_vm_cont(Vmmd *d, VmmVmDoneFn done, gpointer user);
void vmm_vm_powerdown(Vmmd *d, VmmVmDoneFn done, gpointer user);
void vmm_vm_reset(Vmmd *d, const char *reason, gboolean guest, VmmVmDoneFn done, gpointer user);
/* vcpu-worker has no usable KVM VM (WHY): with -kernel, vmmd quits with
 * status 1, as the guest cannot run. */
void vmm_vm_cannot_start(Vmmd *d, const char *why);
