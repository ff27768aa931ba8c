/* The running machine inside vcpu-worker: what "vm-start" builds on the VM
 * that "setup-kvm" created. Guest RAM from vmmd's memfd, the kernel (bzImage
 * or PVH ELF) and initrd read from the fds vmmd opened, the ACPI tables, the
 * COM1 16550A (output to vcpu-worker's stderr, which is vmmd's), the i8042 and
 * the ACPI sleep/reset registers, and vCPU 0 on its own thread.
 *
 * One thread per vCPU: vCPU 0 starts at the kernel's entry, the others wait
 * in the in-kernel LAPIC for the guest's INIT/SIPI.
 *
 * The guest's end is reported on the helper's libuv loop: ACPI S5 (or, with
 * the in-kernel irqchip off, HLT) is "shutdown"; the ACPI reset register, the
 * i8042's 0xfe pulse or a triple fault is "reset"; a failed KVM_RUN is
 * "error". The vCPU thread then stops; a reset does not restart it (yet). */
#pragma once
#include "vcpu-worker/kvm.h"
#include "vcpu-worker/vm.h"

#include <glib.h>
#include <uv.h>

typedef enum {
    VMM_MACHINE_END_SHUTDOWN,
    VMM_MACHINE_END_RESET,
    VMM_MACHINE_END_ERROR,
} VmmMachineEnd;

typedef struct {
    guint64 ram_size;
    guint32 vcpus;
    const char *cmdline;        /* may be NULL */
    int ram_fd;                 /* memfd already ram_size bytes; borrowed */
    VmmRamMapping ram_mapping;  /* share, prealloc, merge, dump (vm.h) */
    int kernel_fd;              /* borrowed, read from offset 0 */
    int initrd_fd;              /* -1: none; borrowed */
    gboolean irqchip;           /* in-kernel irqchip and PIT */
    gboolean start_paused;      /* -S: the vCPUs wait for vmm_machine_resume() */
    struct VmmChardev *console; /* COM1's backend (chardev.h), borrowed; NULL: stderr */
    struct VmmDisks *disks;     /* the attached drives (disks.h), or NULL; borrowed */
    struct VmmRngs *rngs;       /* the virtio-rng devices (rngs.h), or NULL; borrowed */
    struct VmmFsdevs *fsdevs;   /* the virtio-9p devices (fsdevs.h), or NULL; borrowed */
} VmmMachineSpec;

/* Called on LOOP's thread once, when the guest ends. REASON names the cause
 * ("guest-poweroff", "guest-hlt", "guest-reset", "guest-i8042-reset",
 * "guest-triple-fault", or the vCPU error's message). */
typedef void (*VmmMachineEndFn)(VmmMachineEnd end, const char *reason, gpointer user);

typedef struct VmmMachine VmmMachine;

/* Builds the machine on KVM's VM and starts vCPU 0. Errors name the step. */
VmmMachine *vmm_machine_start(VmmKvm *kvm, uv_loop_t *loop, const VmmMachineSpec *spec,
                              VmmMachineEndFn on_end, gpointer user, GError **error);
/* Pause: every vCPU thread leaves KVM_RUN and waits; returns once they all
 * do (or the guest ended). Resume lets them run again. Loop thread only. */
void vmm_machine_pause(VmmMachine *m);
void vmm_machine_resume(VmmMachine *m);
gboolean vmm_machine_paused(VmmMachine *m);
guint vmm_machine_n_vcpus(VmmMachine *m);
/* The Linux thread id of vCPU INDEX's thread (QMP query-cpus-fast), 0 if unknown. */
int vmm_machine_vcpu_tid(VmmMachine *m, guint index);
/* The ACPI power button (QMP system_powerdown): the GED's event bit and a
 * pulse on its interrupt; the guest's ACPI code does the rest. Any thread. */
void vmm_machine_powerdown(VmmMachine *m);
/* Stops the vCPU threads (a kick) and joins them; touches nothing of the loop,
 * so it is what a helper calls once its loop is gone (the rest is left to
 * process exit). */
void vmm_machine_stop(VmmMachine *m);
/* Stops and frees everything; closes the loop handle, so LOOP must still be
 * alive and run once more (the machine's memory goes in the close callback). */
void vmm_machine_free(VmmMachine *m);
/* The same, for a system reset: the virtio devices are reset and taken out
 * of the VM but kept, with their backends, for the next vmm_machine_start. */
void vmm_machine_free_for_reset(VmmMachine *m);

const char *vmm_machine_end_name(VmmMachineEnd end);
