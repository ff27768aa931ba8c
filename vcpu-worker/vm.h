/* The KVM virtual machine around a VmmKvm (kvm.h): the x86 platform pieces
 * (TSS, identity map, in-kernel irqchip and PIT), guest RAM from a memfd in
 * two memory slots split around the 32-bit MMIO hole (boot.h), the port-I/O
 * and MMIO buses (bus.h), interrupt plumbing (KVM_IRQ_LINE, irqfd,
 * ioeventfd) and the vCPUs with their run loop. docs/kvm.md has an overview. */
#pragma once
#include "vcpu-worker/boot.h"
#include "vcpu-worker/bus.h"
#include "vcpu-worker/kvm.h"

#include <glib.h>
#include <signal.h>
#include <stdbool.h>

struct kvm_cpuid2;

/* Guest physical addresses KVM's VMX code needs for real-mode emulation: three
 * pages of TSS and one identity-mapped page table page, just under the
 * IOAPIC/LAPIC area inside the MMIO hole (as QEMU places them). */
#define VMM_KVM_IDENTITY_MAP_ADDR   0xfeffc000ULL
#define VMM_KVM_TSS_ADDR            0xfeffd000ULL

typedef struct {
    /* KVM_CREATE_IRQCHIP (PIC, IOAPIC, LAPICs) and KVM_CREATE_PIT2. Without
     * it HLT exits to user space (KVM_EXIT_HLT), which tiny test guests use. */
    gboolean irqchip;
} VmmVmOptions;

typedef struct {
    VmmKvm *kvm;            /* borrowed: vm_fd is the VM */
    VmmBus *pio;            /* port I/O, 0..0xffff */
    VmmBus *mmio;           /* guest physical addresses that are not RAM */
    gboolean irqchip;
    gboolean tsc_deadline;  /* KVM_CAP_TSC_DEADLINE_TIMER */
    guint8 *ram;            /* low RAM then high RAM, MAP_SHARED from the memfd */
    guint64 ram_size;
    gboolean ram_private;   /* MAP_PRIVATE: other processes mapping the fd do not see the guest's RAM */
    int vcpu_mmap_size;     /* KVM_GET_VCPU_MMAP_SIZE */
    struct kvm_cpuid2 *supported_cpuid;     /* KVM_GET_SUPPORTED_CPUID, cached */
} VmmVm;

/* Sets up the platform on KVM->vm_fd: TSS and identity map addresses, and with
 * OPTS->irqchip the in-kernel irqchip and PIT. Errors name the ioctl. */
gboolean vmm_vm_init(VmmVm *vm, VmmKvm *kvm, const VmmVmOptions *opts, GError **error);
/* Unmaps RAM and frees the buses; the VmmKvm stays open (its owner closes it). */
void vmm_vm_cleanup(VmmVm *vm);

/* Maps RAM_SIZE bytes of FD (a memfd already that size) shared and registers
 * them as slot 0 (guest 0 up to the MMIO hole) and, above 3 GiB of RAM, slot 1
 * (from 4 GiB). The buffer layout is the one vmm_guest_ram_ptr() expects. */
/* How guest RAM is mapped: the memory backend's share= and prealloc=, and
 * -machine mem-merge= and dump-guest-core=. */
typedef struct {
    gboolean private_copy;      /* MAP_PRIVATE: the guest's writes stay out of the fd */
    gboolean prealloc;          /* fault every page in now */
    gboolean merge;             /* KSM may merge pages (MADV_MERGEABLE) */
    gboolean dump;              /* RAM goes into a core dump of the process */
} VmmRamMapping;

gboolean vmm_vm_map_ram(VmmVm *vm, int fd, guint64 ram_size, const VmmRamMapping *how,
                        GError **error);

/* ---- Interrupts and doorbells ------------------------------------------- */

/* Drives input GSI of the in-kernel irqchip to LEVEL (KVM_IRQ_LINE). For an
 * edge-triggered ISA device, a 0 -> 1 change is the edge. */
gboolean vmm_vm_set_irq_line(VmmVm *vm, guint32 gsi, gboolean level, GError **error);
/* Memory slots beyond guest RAM's (0 and 1). */
#define VMM_VM_SLOT_FIRST_DEVICE 8
/* SIZE bytes of HOST at GPA as KVM memory slot SLOT that the guest reads
 * without an exit and whose writes exit as MMIO (KVM_MEM_READONLY);
 * VMM_ERROR_UNSUPPORTED when KVM has no such slots. */
gboolean vmm_vm_map_readonly(VmmVm *vm, guint32 slot, guint64 gpa, guint8 *host, guint64 size, GError **error);
void vmm_vm_unmap_slot(VmmVm *vm, guint32 slot, guint64 gpa);

/* A (VM, GSI) pair whose vmm_irq_line_set() matches the set_irq callbacks of
 * the device models (e.g. VmmSerialHost.set_irq): errors are logged. */
typedef struct {
    VmmVm *vm;
    guint32 gsi;
} VmmIrqLine;
void vmm_irq_line_set(void *irq_line, bool level);

/* KVM_IRQFD: a write to EVENT_FD raises GSI. With RESAMPLE_FD >= 0 the line is
 * level-triggered: KVM holds it until the guest's EOI, then signals
 * RESAMPLE_FD so the device re-asserts if it still has work.
 * vmm_vm_irqfd_remove() detaches EVENT_FD from GSI. */
gboolean vmm_vm_irqfd_add(VmmVm *vm, guint32 gsi, int event_fd, int resample_fd, GError **error);
gboolean vmm_vm_irqfd_remove(VmmVm *vm, guint32 gsi, int event_fd, GError **error);

/* KVM_IOEVENTFD: a guest write of LEN bytes (1, 2, 4 or 8) to ADDR (a port if
 * PIO) signals EVENT_FD instead of exiting; with DATAMATCH only a write of
 * that value (e.g. a virtqueue index to QueueNotify) does. */
typedef struct {
    guint64 addr;
    guint32 len;
    gboolean pio;
    gboolean has_datamatch;
    guint64 datamatch;
} VmmIoEvent;
gboolean vmm_vm_ioeventfd_add(VmmVm *vm, const VmmIoEvent *ev, int event_fd, GError **error);
gboolean vmm_vm_ioeventfd_remove(VmmVm *vm, const VmmIoEvent *ev, int event_fd, GError **error);

/* ---- vCPUs ---------------------------------------------------------------- */

typedef enum {
    VMM_VCPU_EXIT_HLT,          /* KVM_EXIT_HLT (only without the in-kernel irqchip) */
    VMM_VCPU_EXIT_SHUTDOWN,     /* triple fault: the guest reset itself */
    VMM_VCPU_EXIT_RESET,        /* KVM_SYSTEM_EVENT_RESET */
    VMM_VCPU_EXIT_POWEROFF,     /* KVM_SYSTEM_EVENT_SHUTDOWN */
    VMM_VCPU_EXIT_CRASH,        /* KVM_SYSTEM_EVENT_CRASH */
    VMM_VCPU_EXIT_STOPPED,      /* vmm_vcpu_kick() */
    VMM_VCPU_EXIT_ERROR,        /* *error says why: internal error, failed entry, ... */
} VmmVcpuExit;

const char *vmm_vcpu_exit_name(VmmVcpuExit exit);

typedef struct VmmVcpu VmmVcpu;

/* How many of its last exits a vCPU remembers for vmm_vcpu_describe(). */
#define VMM_VCPU_EXIT_HISTORY 16

/* KVM_CREATE_VCPU number INDEX with APIC ID INDEX, mmaps its kvm_run, and
 * sets CPUID (supported CPUID, hypervisor bit, the KVM leaves 0x40000000 and
 * 0x40000001, the APIC ID in leaves 1, 0xb and 0x1f), the initial MSRs and
 * the FPU's power-on state. */
VmmVcpu *vmm_vcpu_new(VmmVm *vm, guint index, GError **error);
void vmm_vcpu_free(VmmVcpu *vcpu);
int vmm_vcpu_fd(const VmmVcpu *vcpu);

/* Loads STATE (from the boot loaders, or hand-made for tests) into the
 * special and general registers; the rest of the GPRs become zero. */
gboolean vmm_vcpu_load_boot_state(VmmVcpu *vcpu, const VmmBootCpuState *state, GError **error);

/* Runs the vCPU on the calling thread until an exit the bus cannot handle:
 * port I/O and MMIO go to the VM's buses, anything else returns. Call it
 * from the vCPU's own thread; it can run again after any return but ERROR. */
VmmVcpuExit vmm_vcpu_run(VmmVcpu *vcpu, GError **error);

/* A multi-line report of the stopped vCPU for a crash message: general and
 * special registers, pending events and the last exits. Call it on the vCPU's
 * thread (or while it is not running); g_free() the result. */
char *vmm_vcpu_describe(VmmVcpu *vcpu);

/* Makes vmm_vcpu_run() return VMM_VCPU_EXIT_STOPPED soon, from any thread:
 * sets kvm_run.immediate_exit and signals the vCPU thread with
 * VMM_VCPU_KICK_SIGNAL (whose handler vmm_vcpu_new() installs) to interrupt
 * KVM_RUN. A kick before vmm_vcpu_run() starts is kept for it. */
void vmm_vcpu_kick(VmmVcpu *vcpu);
#define VMM_VCPU_KICK_SIGNAL (SIGRTMIN + 1)
