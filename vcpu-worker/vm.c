/* The KVM VM: platform setup, guest RAM slots, interrupt plumbing, vCPUs and
 * their run loop. Reference: kvmtool (kvm.c, kvm-cpu.c, x86/kvm-cpu.c,
 * x86/cpuid.c) and the KVM API document. */
#include "vcpu-worker/vm.h"
#include "common/error.h"
#include "common/guest-ram.h"
#include "common/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---- The VM ---------------------------------------------------------------- */

gboolean vmm_vm_init(VmmVm *vm, VmmKvm *kvm, const VmmVmOptions *opts, GError **error)
{
    memset(vm, 0, sizeof(*vm));
    vm->kvm = kvm;
    vm->pio = vmm_bus_new("pio");
    vm->mmio = vmm_bus_new("mmio");
    vm->irqchip = opts->irqchip;

    vm->tsc_deadline = ioctl(kvm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_TSC_DEADLINE_TIMER) > 0;
    vm->vcpu_mmap_size = ioctl(kvm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (vm->vcpu_mmap_size < (int)sizeof(struct kvm_run))
        return vmm_set_errno(error, errno, "KVM VM: KVM_GET_VCPU_MMAP_SIZE");
    if (ioctl(kvm->vm_fd, KVM_SET_TSS_ADDR, (unsigned long)VMM_KVM_TSS_ADDR) < 0)
        return vmm_set_errno(error, errno, "KVM VM: KVM_SET_TSS_ADDR 0x%llx", VMM_KVM_TSS_ADDR);
    guint64 identity = VMM_KVM_IDENTITY_MAP_ADDR;
    if (ioctl(kvm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &identity) < 0)
        return vmm_set_errno(error, errno, "KVM VM: KVM_SET_IDENTITY_MAP_ADDR 0x%llx",
                             VMM_KVM_IDENTITY_MAP_ADDR);
    if (!opts->irqchip)
        return TRUE;
    if (ioctl(kvm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
        return vmm_set_errno(error, errno, "KVM VM: KVM_CREATE_IRQCHIP");
    /* The PIT's speaker port stays with user space (it has none): 0x61 is not
     * claimed by the kernel model. */
    struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
    if (ioctl(kvm->vm_fd, KVM_CREATE_PIT2, &pit) < 0)
        return vmm_set_errno(error, errno, "KVM VM: KVM_CREATE_PIT2");
    return TRUE;
}

void vmm_vm_cleanup(VmmVm *vm)
{
    if (vm->ram)
        munmap(vm->ram, vm->ram_size);
    vm->ram = NULL;
    vmm_bus_free(vm->pio);
    vmm_bus_free(vm->mmio);
    vm->pio = vm->mmio = NULL;
    g_free(vm->supported_cpuid);
    vm->supported_cpuid = NULL;
}

static gboolean set_memory_slot_flags(VmmVm *vm, guint32 slot, guint64 gpa, guint64 size, guint8 *host,
                                      guint32 flags, GError **error)
{
    struct kvm_userspace_memory_region region = {
        .slot = slot,
        .flags = flags,
        .guest_phys_addr = gpa,
        .memory_size = size,
        .userspace_addr = (guint64)(uintptr_t)host,
    };
    if (ioctl(vm->kvm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        return vmm_set_errno(error, errno,
                             "KVM VM: KVM_SET_USER_MEMORY_REGION slot %u at 0x%" G_GINT64_MODIFIER
                             "x, 0x%" G_GINT64_MODIFIER "x bytes", slot, gpa, size);
    return TRUE;
}

static gboolean set_memory_slot(VmmVm *vm, guint32 slot, guint64 gpa, guint64 size,
                                guint8 *host, GError **error)
{
    return set_memory_slot_flags(vm, slot, gpa, size, host, 0, error);
}

gboolean vmm_vm_map_readonly(VmmVm *vm, guint32 slot, guint64 gpa, guint8 *host, guint64 size, GError **error)
{
    if (ioctl(vm->kvm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_READONLY_MEM) <= 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED, "KVM VM: no read-only memory slots");
        return FALSE;
    }
    return set_memory_slot_flags(vm, slot, gpa, size, host, KVM_MEM_READONLY, error);
}

void vmm_vm_unmap_slot(VmmVm *vm, guint32 slot, guint64 gpa)
{
    g_autoptr(GError) err = NULL;
    if (!set_memory_slot_flags(vm, slot, gpa, 0, NULL, 0, &err))
        vmm_warn("%s", err->message);
}

gboolean vmm_vm_map_ram(VmmVm *vm, int fd, guint64 ram_size, const VmmRamMapping *how,
                        GError **error)
{
    long page = sysconf(_SC_PAGESIZE);
    if (vm->ram || ram_size == 0 || ram_size % (guint64)page != 0 || ram_size > G_MAXSIZE) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "guest RAM: %s of %" G_GUINT64_FORMAT " bytes (a whole number of pages, once)",
                    vm->ram ? "already mapped, refusing another" : "bad size", ram_size);
        return FALSE;
    }
    static const VmmRamMapping defaults = { .dump = FALSE };
    how = how ? how : &defaults;
    int flags = (how->private_copy ? MAP_PRIVATE : MAP_SHARED) | (how->prealloc ? MAP_POPULATE : 0);
    void *p = vmm_guest_ram_map(fd, ram_size, flags);
    if (p == MAP_FAILED)
        return vmm_set_errno(error, errno, "guest RAM: mmap of %" G_GUINT64_FORMAT " bytes",
                             ram_size);
    /* Advice only: a kernel without KSM refuses MERGEABLE, and the guest runs as well.
     * Huge pages (vmm_guest_ram_map): a memfd gets them only where the host allows
     * them for shmem (/sys/kernel/mm/transparent_hugepage/shmem_enabled "advise" or
     * more; docs/kvm.md). */
    if (!how->dump)
        madvise(p, ram_size, MADV_DONTDUMP);
    if (how->merge)
        madvise(p, ram_size, MADV_MERGEABLE);
    vm->ram = p;
    vm->ram_size = ram_size;
    vm->ram_private = how->private_copy;
    guint64 low = vmm_guest_low_ram_size(ram_size);
    guint64 high = vmm_guest_high_ram_size(ram_size);
    if (!set_memory_slot(vm, 0, 0, low, vm->ram, error))
        return FALSE;
    if (high && !set_memory_slot(vm, 1, VMM_HIGH_RAM_START, high, vm->ram + low, error))
        return FALSE;
    return TRUE;
}

/* ---- Interrupts and doorbells ------------------------------------------- */

gboolean vmm_vm_set_irq_line(VmmVm *vm, guint32 gsi, gboolean level, GError **error)
{
    struct kvm_irq_level irq = { .irq = gsi, .level = level ? 1 : 0 };
    if (ioctl(vm->kvm->vm_fd, KVM_IRQ_LINE, &irq) < 0)
        return vmm_set_errno(error, errno, "KVM VM: KVM_IRQ_LINE gsi %u level %d", gsi,
                             level ? 1 : 0);
    return TRUE;
}

void vmm_irq_line_set(void *irq_line, bool level)
{
    VmmIrqLine *line = irq_line;
    g_autoptr(GError) error = NULL;
    if (!vmm_vm_set_irq_line(line->vm, line->gsi, level, &error))
        g_warning("%s", error->message);
}

static gboolean irqfd(VmmVm *vm, guint32 gsi, int event_fd, int resample_fd, guint32 flags,
                      GError **error)
{
    struct kvm_irqfd req = { .fd = (guint32)event_fd, .gsi = gsi, .flags = flags };
    if (resample_fd >= 0) {
        req.flags |= KVM_IRQFD_FLAG_RESAMPLE;
        req.resamplefd = (guint32)resample_fd;
    }
    if (ioctl(vm->kvm->vm_fd, KVM_IRQFD, &req) < 0)
        return vmm_set_errno(error, errno, "KVM VM: KVM_IRQFD %s fd %d on gsi %u%s",
                             flags & KVM_IRQFD_FLAG_DEASSIGN ? "detaching" : "attaching",
                             event_fd, gsi, resample_fd >= 0 ? " (level, resample)" : "");
    return TRUE;
}

gboolean vmm_vm_irqfd_add(VmmVm *vm, guint32 gsi, int event_fd, int resample_fd, GError **error)
{
    return irqfd(vm, gsi, event_fd, resample_fd, 0, error);
}

gboolean vmm_vm_irqfd_remove(VmmVm *vm, guint32 gsi, int event_fd, GError **error)
{
    return irqfd(vm, gsi, event_fd, -1, KVM_IRQFD_FLAG_DEASSIGN, error);
}

static gboolean ioeventfd(VmmVm *vm, const VmmIoEvent *ev, int event_fd, guint32 flags,
                          GError **error)
{
    if (ev->len != 1 && ev->len != 2 && ev->len != 4 && ev->len != 8) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "KVM VM: ioeventfd at 0x%" G_GINT64_MODIFIER "x: length %u is not 1, 2, 4 or 8",
                    ev->addr, ev->len);
        return FALSE;
    }
    struct kvm_ioeventfd req = {
        .addr = ev->addr,
        .len = ev->len,
        .fd = event_fd,
        .datamatch = ev->datamatch,
        .flags = flags,
    };
    if (ev->pio)
        req.flags |= KVM_IOEVENTFD_FLAG_PIO;
    if (ev->has_datamatch)
        req.flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
    if (ioctl(vm->kvm->vm_fd, KVM_IOEVENTFD, &req) < 0)
        return vmm_set_errno(error, errno, "KVM VM: KVM_IOEVENTFD %s fd %d at %s 0x%"
                             G_GINT64_MODIFIER "x", flags & KVM_IOEVENTFD_FLAG_DEASSIGN ?
                             "detaching" : "attaching", event_fd, ev->pio ? "port" : "address",
                             ev->addr);
    return TRUE;
}

gboolean vmm_vm_ioeventfd_add(VmmVm *vm, const VmmIoEvent *ev, int event_fd, GError **error)
{
    return ioeventfd(vm, ev, event_fd, 0, error);
}

gboolean vmm_vm_ioeventfd_remove(VmmVm *vm, const VmmIoEvent *ev, int event_fd, GError **error)
{
    return ioeventfd(vm, ev, event_fd, KVM_IOEVENTFD_FLAG_DEASSIGN, error);
}

/* ---- CPUID ------------------------------------------------------------------ */

#define CPUID_MAX_ENTRIES 512
#define CPUID_KVM_SIGNATURE 0x40000000u
#define CPUID_KVM_FEATURES 0x40000001u
#define CPUID_1_ECX_HYPERVISOR (1u << 31)
#define CPUID_1_ECX_TSC_DEADLINE (1u << 24)

static struct kvm_cpuid2 *cpuid_alloc(guint32 nent)
{
    struct kvm_cpuid2 *c = g_malloc0(sizeof(*c) + nent * sizeof(struct kvm_cpuid_entry2));
    c->nent = nent;
    return c;
}

/* KVM_GET_SUPPORTED_CPUID answers E2BIG until the buffer is large enough. */
static gboolean supported_cpuid(VmmVm *vm, GError **error)
{
    if (vm->supported_cpuid)
        return TRUE;
    for (guint32 nent = 64; nent <= CPUID_MAX_ENTRIES; nent *= 2) {
        struct kvm_cpuid2 *c = cpuid_alloc(nent);
        if (ioctl(vm->kvm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
            vm->supported_cpuid = c;
            return TRUE;
        }
        int err = errno;
        g_free(c);
        if (err != E2BIG)
            return vmm_set_errno(error, err, "/dev/kvm: KVM_GET_SUPPORTED_CPUID");
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                "/dev/kvm: KVM_GET_SUPPORTED_CPUID has more than %d entries", CPUID_MAX_ENTRIES);
    return FALSE;
}

static struct kvm_cpuid_entry2 *cpuid_find(struct kvm_cpuid2 *c, guint32 function,
                                           guint32 index)
{
    for (guint32 i = 0; i < c->nent; i++) {
        struct kvm_cpuid_entry2 *e = &c->entries[i];
        gboolean indexed = e->flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        if (e->function == function && (!indexed || e->index == index))
            return e;
    }
    return NULL;
}

/* The entry for FUNCTION, appended (zeroed) when KVM did not list it; C has
 * room for two extra entries. */
static struct kvm_cpuid_entry2 *cpuid_get_or_add(struct kvm_cpuid2 *c, guint32 function)
{
    struct kvm_cpuid_entry2 *e = cpuid_find(c, function, 0);
    if (e)
        return e;
    e = &c->entries[c->nent++];
    memset(e, 0, sizeof(*e));
    e->function = function;
    return e;
}

/* "KVMKVMKVM\0\0\0" in EBX, ECX, EDX, as Linux's kvm_para detection reads it. */
static void cpuid_kvm_signature(struct kvm_cpuid_entry2 *e)
{
    static const char sig[12] = "KVMKVMKVM\0\0";
    e->eax = CPUID_KVM_FEATURES;
    memcpy(&e->ebx, sig, 4);
    memcpy(&e->ecx, sig + 4, 4);
    memcpy(&e->edx, sig + 8, 4);
}

/* The CPUID table for the vCPU with APIC ID APIC_ID. */
static struct kvm_cpuid2 *vcpu_cpuid(VmmVm *vm, guint32 apic_id, GError **error)
{
    if (!supported_cpuid(vm, error))
        return NULL;
    const struct kvm_cpuid2 *sup = vm->supported_cpuid;
    struct kvm_cpuid2 *c = cpuid_alloc(sup->nent + 2);
    memcpy(c->entries, sup->entries, sup->nent * sizeof(struct kvm_cpuid_entry2));
    c->nent = sup->nent;

    for (guint32 i = 0; i < c->nent; i++) {
        struct kvm_cpuid_entry2 *e = &c->entries[i];
        switch (e->function) {
        case 1:     /* initial APIC ID in EBX[31:24]; we are a guest */
            e->ebx = (e->ebx & 0x00ffffffu) | (apic_id << 24);
            e->ecx |= CPUID_1_ECX_HYPERVISOR;
            /* KVM_GET_SUPPORTED_CPUID leaves the TSC-deadline timer out: the
             * in-kernel LAPIC emulates it whenever the capability says so
             * (QEMU and firecracker set it the same way). Without it Linux
             * calibrates the LAPIC timer against the PIT, which a nested or
             * busy host makes unreliable. */
            if (vm->irqchip && vm->tsc_deadline)
                e->ecx |= CPUID_1_ECX_TSC_DEADLINE;
            break;
        case 0xb:   /* x2APIC ID in EDX for every topology level */
        case 0x1f:
            e->edx = apic_id;
            break;
        default:
            break;
        }
    }
    cpuid_kvm_signature(cpuid_get_or_add(c, CPUID_KVM_SIGNATURE));
    /* KVM lists its paravirtual features (clocksource, async PF, PV EOI...)
     * in 0x40000001 when it has any; a missing leaf means none. */
    cpuid_get_or_add(c, CPUID_KVM_FEATURES);
    return c;
}

/* ---- vCPUs ------------------------------------------------------------------ */

struct VmmVcpu {
    VmmVm *vm;
    guint index;
    int fd;
    struct kvm_run *run;
    pthread_t thread;
    gint thread_set;        /* atomic: THREAD is the one in vmm_vcpu_run() */
    gint stop;              /* atomic: a kick not yet consumed */
    GMutex thread_lock;     /* orders the kick's pthread_kill with thread exit */
    /* The last exits, oldest overwritten, for the triple-fault report. */
    struct {
        guint32 reason;
        guint32 size;
        guint64 addr;       /* port or guest physical address; 0 otherwise */
        guint64 data;
        gboolean write;
    } history[VMM_VCPU_EXIT_HISTORY];
    guint history_next;
    guint64 exits;
};

static void kick_handler(int sig)
{
    (void)sig;  /* only there to make KVM_RUN return EINTR */
}

static gpointer install_kick_handler(gpointer unused)
{
    (void)unused;
    struct sigaction sa = { .sa_handler = kick_handler };
    sigemptyset(&sa.sa_mask);
    /* No SA_RESTART: KVM_RUN must come back with EINTR. */
    sigaction(VMM_VCPU_KICK_SIGNAL, &sa, NULL);
    return NULL;
}

static gboolean vcpu_fail_errno(VmmVcpu *vcpu, GError **error, const char *what)
{
    return vmm_set_errno(error, errno, "vCPU %u: %s", vcpu->index, what);
}

static gboolean vcpu_set_cpuid(VmmVcpu *vcpu, GError **error)
{
    struct kvm_cpuid2 *c = vcpu_cpuid(vcpu->vm, vcpu->index, error);
    if (!c)
        return FALSE;
    int r = ioctl(vcpu->fd, KVM_SET_CPUID2, c);
    g_free(c);
    return r == 0 || vcpu_fail_errno(vcpu, error, "KVM_SET_CPUID2");
}

/* MSR numbers (the SDM's names). */
#define MSR_IA32_SYSENTER_CS    0x174
#define MSR_IA32_SYSENTER_ESP   0x175
#define MSR_IA32_SYSENTER_EIP   0x176
#define MSR_IA32_MISC_ENABLE    0x1a0
#define MSR_IA32_TSC            0x10
#define MSR_STAR                0xc0000081
#define MSR_LSTAR               0xc0000082
#define MSR_CSTAR               0xc0000083
#define MSR_SYSCALL_MASK        0xc0000084
#define MSR_KERNEL_GS_BASE      0xc0000102
#define MISC_ENABLE_FAST_STRING 1

/* The power-on values Linux expects to find (kvmtool and firecracker set the
 * same): syscall MSRs clear, fast strings on. */
static gboolean vcpu_set_msrs(VmmVcpu *vcpu, GError **error)
{
    static const struct { guint32 index; guint64 data; } init[] = {
        { MSR_IA32_SYSENTER_CS, 0 }, { MSR_IA32_SYSENTER_ESP, 0 }, { MSR_IA32_SYSENTER_EIP, 0 },
        { MSR_STAR, 0 }, { MSR_CSTAR, 0 }, { MSR_KERNEL_GS_BASE, 0 }, { MSR_SYSCALL_MASK, 0 },
        { MSR_LSTAR, 0 }, { MSR_IA32_TSC, 0 }, { MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING },
    };
    const guint n = G_N_ELEMENTS(init);
    g_autofree struct kvm_msrs *msrs = g_malloc0(sizeof(*msrs) + n * sizeof(struct kvm_msr_entry));
    msrs->nmsrs = n;
    for (guint i = 0; i < n; i++) {
        msrs->entries[i].index = init[i].index;
        msrs->entries[i].data = init[i].data;
    }
    int r = ioctl(vcpu->fd, KVM_SET_MSRS, msrs);
    if (r < 0)
        return vcpu_fail_errno(vcpu, error, "KVM_SET_MSRS");
    /* KVM stops at the first MSR it refuses and returns how many it set. */
    if ((guint)r != n) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "vCPU %u: KVM_SET_MSRS refused MSR 0x%x", vcpu->index, init[r].index);
        return FALSE;
    }
    return TRUE;
}

/* x87 control word and MXCSR as after FNINIT / reset. */
static gboolean vcpu_set_fpu(VmmVcpu *vcpu, GError **error)
{
    struct kvm_fpu fpu = { .fcw = 0x37f, .mxcsr = 0x1f80 };
    return ioctl(vcpu->fd, KVM_SET_FPU, &fpu) == 0 || vcpu_fail_errno(vcpu, error, "KVM_SET_FPU");
}

VmmVcpu *vmm_vcpu_new(VmmVm *vm, guint index, GError **error)
{
    static GOnce handler_once = G_ONCE_INIT;
    g_once(&handler_once, install_kick_handler, NULL);

    VmmVcpu *vcpu = g_new0(VmmVcpu, 1);
    vcpu->vm = vm;
    vcpu->index = index;
    vcpu->run = MAP_FAILED;
    g_mutex_init(&vcpu->thread_lock);
    vcpu->fd = ioctl(vm->kvm->vm_fd, KVM_CREATE_VCPU, (unsigned long)index);
    if (vcpu->fd < 0) {
        vcpu_fail_errno(vcpu, error, "KVM_CREATE_VCPU");
        goto fail;
    }
    vcpu->run = mmap(NULL, vm->vcpu_mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu->fd, 0);
    if (vcpu->run == MAP_FAILED) {
        vcpu_fail_errno(vcpu, error, "mmap of kvm_run");
        goto fail;
    }
    if (!vcpu_set_cpuid(vcpu, error) || !vcpu_set_msrs(vcpu, error) || !vcpu_set_fpu(vcpu, error))
        goto fail;
    return vcpu;
fail:
    vmm_vcpu_free(vcpu);
    return NULL;
}

void vmm_vcpu_free(VmmVcpu *vcpu)
{
    if (!vcpu)
        return;
    if (vcpu->run != MAP_FAILED)
        munmap(vcpu->run, vcpu->vm->vcpu_mmap_size);
    if (vcpu->fd >= 0)
        close(vcpu->fd);
    g_mutex_clear(&vcpu->thread_lock);
    g_free(vcpu);
}

int vmm_vcpu_fd(const VmmVcpu *vcpu)
{
    return vcpu->fd;
}

static void segment_to_kvm(const VmmSegment *s, struct kvm_segment *k)
{
    *k = (struct kvm_segment){
        .base = s->base, .limit = s->limit, .selector = s->selector, .type = s->type,
        .present = s->present, .dpl = s->dpl, .db = s->db, .s = s->s, .l = s->l, .g = s->g,
        .avl = s->avl, .unusable = s->unusable,
    };
}

gboolean vmm_vcpu_load_boot_state(VmmVcpu *vcpu, const VmmBootCpuState *st, GError **error)
{
    /* Start from KVM's reset state so the APIC base and the pending
     * interrupt bitmap stay as KVM set them. */
    struct kvm_sregs sregs;
    if (ioctl(vcpu->fd, KVM_GET_SREGS, &sregs) < 0)
        return vcpu_fail_errno(vcpu, error, "KVM_GET_SREGS");
    segment_to_kvm(&st->cs, &sregs.cs);
    segment_to_kvm(&st->ds, &sregs.ds);
    segment_to_kvm(&st->es, &sregs.es);
    segment_to_kvm(&st->fs, &sregs.fs);
    segment_to_kvm(&st->gs, &sregs.gs);
    segment_to_kvm(&st->ss, &sregs.ss);
    segment_to_kvm(&st->tr, &sregs.tr);
    segment_to_kvm(&st->ldt, &sregs.ldt);
    sregs.gdt = (struct kvm_dtable){ .base = st->gdt_base, .limit = st->gdt_limit };
    sregs.idt = (struct kvm_dtable){ .base = st->idt_base, .limit = st->idt_limit };
    sregs.cr0 = st->cr0;
    sregs.cr3 = st->cr3;
    sregs.cr4 = st->cr4;
    sregs.efer = st->efer;
    if (ioctl(vcpu->fd, KVM_SET_SREGS, &sregs) < 0)
        return vcpu_fail_errno(vcpu, error, "KVM_SET_SREGS");

    struct kvm_regs regs = {
        .rip = st->rip, .rsp = st->rsp, .rbp = st->rbp, .rsi = st->rsi, .rbx = st->rbx,
        .rflags = st->rflags | 0x2,     /* bit 1 is reserved, always one */
    };
    if (ioctl(vcpu->fd, KVM_SET_REGS, &regs) < 0)
        return vcpu_fail_errno(vcpu, error, "KVM_SET_REGS");
    return TRUE;
}

const char *vmm_vcpu_exit_name(VmmVcpuExit exit)
{
    switch (exit) {
    case VMM_VCPU_EXIT_HLT: return "hlt";
    case VMM_VCPU_EXIT_SHUTDOWN: return "shutdown";
    case VMM_VCPU_EXIT_RESET: return "reset";
    case VMM_VCPU_EXIT_POWEROFF: return "poweroff";
    case VMM_VCPU_EXIT_CRASH: return "crash";
    case VMM_VCPU_EXIT_STOPPED: return "stopped";
    case VMM_VCPU_EXIT_ERROR: return "error";
    }
    return "unknown";
}

/* ---- The run loop ------------------------------------------------------------ */

/* String I/O (INS/OUTS with REP) arrives as COUNT items of SIZE bytes. */
static void handle_io(VmmVcpu *vcpu)
{
    struct kvm_run *run = vcpu->run;
    guint8 *data = (guint8 *)run + run->io.data_offset;
    for (guint32 i = 0; i < run->io.count; i++, data += run->io.size) {
        if (run->io.direction == KVM_EXIT_IO_OUT)
            vmm_bus_write(vcpu->vm->pio, run->io.port, data, run->io.size);
        else
            vmm_bus_read(vcpu->vm->pio, run->io.port, data, run->io.size);
    }
}

static void handle_mmio(VmmVcpu *vcpu)
{
    struct kvm_run *run = vcpu->run;
    guint32 len = MIN(run->mmio.len, sizeof(run->mmio.data));
    if (run->mmio.is_write)
        vmm_bus_write(vcpu->vm->mmio, run->mmio.phys_addr, run->mmio.data, len);
    else
        vmm_bus_read(vcpu->vm->mmio, run->mmio.phys_addr, run->mmio.data, len);
}

static VmmVcpuExit vcpu_error(VmmVcpu *vcpu, GError **error, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static VmmVcpuExit vcpu_error(VmmVcpu *vcpu, GError **error, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(error, VMM_ERROR, VMM_ERROR_FAILED, "vCPU %u: %s", vcpu->index, msg);
    return VMM_VCPU_EXIT_ERROR;
}

static VmmVcpuExit system_event(VmmVcpu *vcpu, GError **error)
{
    switch (vcpu->run->system_event.type) {
    case KVM_SYSTEM_EVENT_SHUTDOWN: return VMM_VCPU_EXIT_POWEROFF;
    case KVM_SYSTEM_EVENT_RESET: return VMM_VCPU_EXIT_RESET;
    case KVM_SYSTEM_EVENT_CRASH: return VMM_VCPU_EXIT_CRASH;
    default:
        return vcpu_error(vcpu, error, "unknown KVM system event %u",
                          vcpu->run->system_event.type);
    }
}

static VmmVcpuExit internal_error(VmmVcpu *vcpu, GError **error)
{
    static const char *const names[] = {
        [KVM_INTERNAL_ERROR_EMULATION] = "instruction emulation failed",
        [KVM_INTERNAL_ERROR_SIMUL_EX] = "exception while delivering an exception",
        [KVM_INTERNAL_ERROR_DELIVERY_EV] = "exit while delivering an event",
    };
    guint32 sub = vcpu->run->internal.suberror;
    const char *name = sub < G_N_ELEMENTS(names) && names[sub] ? names[sub] : "unknown suberror";
    struct kvm_regs regs;
    guint64 rip = ioctl(vcpu->fd, KVM_GET_REGS, &regs) == 0 ? regs.rip : G_MAXUINT64;
    return vcpu_error(vcpu, error, "KVM internal error %u (%s) at rip 0x%" G_GINT64_MODIFIER "x",
                      sub, name, rip);
}

static void record_exit(VmmVcpu *vcpu)
{
    struct kvm_run *run = vcpu->run;
    __typeof__(vcpu->history[0]) *h = &vcpu->history[vcpu->history_next];
    vcpu->history_next = (vcpu->history_next + 1) % VMM_VCPU_EXIT_HISTORY;
    vcpu->exits++;
    memset(h, 0, sizeof(*h));
    h->reason = run->exit_reason;
    if (run->exit_reason == KVM_EXIT_IO) {
        h->addr = run->io.port;
        h->size = run->io.size;
        h->write = run->io.direction == KVM_EXIT_IO_OUT;
        if (h->write)
            memcpy(&h->data, (guint8 *)run + run->io.data_offset, MIN(run->io.size, 8u));
    } else if (run->exit_reason == KVM_EXIT_MMIO) {
        h->addr = run->mmio.phys_addr;
        h->size = run->mmio.len;
        h->write = run->mmio.is_write;
        if (h->write)
            memcpy(&h->data, run->mmio.data, MIN(run->mmio.len, 8u));
    }
}

static void describe_segment(GString *s, const char *name, const struct kvm_segment *seg)
{
    g_string_append_printf(s, " %s=%04x/%llx/%x/t%x/p%u/l%u/db%u", name, seg->selector,
                           (unsigned long long)seg->base, seg->limit, seg->type, seg->present,
                           seg->l, seg->db);
}

char *vmm_vcpu_describe(VmmVcpu *vcpu)
{
    GString *s = g_string_new(NULL);
    struct kvm_regs r;
    struct kvm_sregs sr;
    struct kvm_vcpu_events ev;
    g_string_append_printf(s, "vCPU %u after %" G_GUINT64_FORMAT " exits:", vcpu->index,
                           vcpu->exits);
    if (ioctl(vcpu->fd, KVM_GET_REGS, &r) == 0)
        g_string_append_printf(s, "\n  rip=%llx rsp=%llx rbp=%llx rflags=%llx rax=%llx rbx=%llx "
                               "rcx=%llx rdx=%llx rsi=%llx rdi=%llx r8=%llx r9=%llx",
                               r.rip, r.rsp, r.rbp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi,
                               r.rdi, r.r8, r.r9);
    if (ioctl(vcpu->fd, KVM_GET_SREGS, &sr) == 0) {
        g_string_append_printf(s, "\n  cr0=%llx cr2=%llx cr3=%llx cr4=%llx cr8=%llx efer=%llx "
                               "apic_base=%llx gdt=%llx/%x idt=%llx/%x\n ",
                               sr.cr0, sr.cr2, sr.cr3, sr.cr4, sr.cr8, sr.efer, sr.apic_base,
                               sr.gdt.base, sr.gdt.limit, sr.idt.base, sr.idt.limit);
        describe_segment(s, "cs", &sr.cs);
        describe_segment(s, "ss", &sr.ss);
        describe_segment(s, "ds", &sr.ds);
        describe_segment(s, "tr", &sr.tr);
    }
    if (ioctl(vcpu->fd, KVM_GET_VCPU_EVENTS, &ev) == 0)
        g_string_append_printf(s, "\n  exception injected=%u pending=%u nr=%u error=%x; "
                               "interrupt injected=%u nr=%u; nmi injected=%u pending=%u",
                               ev.exception.injected, ev.exception.pending, ev.exception.nr,
                               ev.exception.error_code, ev.interrupt.injected, ev.interrupt.nr,
                               ev.nmi.injected, ev.nmi.pending);
    g_string_append(s, "\n  last exits (oldest first):");
    guint n = (guint)MIN(vcpu->exits, (guint64)VMM_VCPU_EXIT_HISTORY);
    for (guint i = 0; i < n; i++) {
        guint k = (vcpu->history_next + VMM_VCPU_EXIT_HISTORY - n + i) % VMM_VCPU_EXIT_HISTORY;
        const __typeof__(vcpu->history[0]) *h = &vcpu->history[k];
        g_string_append_printf(s, "\n    reason %u", h->reason);
        if (h->reason == KVM_EXIT_IO || h->reason == KVM_EXIT_MMIO)
            g_string_append_printf(s, " %s %s 0x%" G_GINT64_MODIFIER "x size %u%s",
                                   h->reason == KVM_EXIT_IO ? "port" : "mmio",
                                   h->write ? "write" : "read", h->addr, h->size, "");
        if (h->write)
            g_string_append_printf(s, " data 0x%" G_GINT64_MODIFIER "x", h->data);
    }
    return g_string_free(s, FALSE);
}

/* Returns TRUE to keep running, FALSE with *EXIT set to return. */
static gboolean handle_exit(VmmVcpu *vcpu, VmmVcpuExit *exit, GError **error)
{
    struct kvm_run *run = vcpu->run;
    record_exit(vcpu);
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
        handle_io(vcpu);
        return TRUE;
    case KVM_EXIT_MMIO:
        handle_mmio(vcpu);
        return TRUE;
    case KVM_EXIT_INTR:
        return TRUE;    /* a signal; the loop checks for a kick */
    case KVM_EXIT_HLT:
        *exit = VMM_VCPU_EXIT_HLT;
        return FALSE;
    case KVM_EXIT_SHUTDOWN:
        *exit = VMM_VCPU_EXIT_SHUTDOWN;
        return FALSE;
    case KVM_EXIT_SYSTEM_EVENT:
        *exit = system_event(vcpu, error);
        return FALSE;
    case KVM_EXIT_INTERNAL_ERROR:
        *exit = internal_error(vcpu, error);
        return FALSE;
    case KVM_EXIT_FAIL_ENTRY:
        *exit = vcpu_error(vcpu, error,
                           "VM entry failed: hardware reason 0x%llx on cpu %u (bad register state?)",
                           (unsigned long long)run->fail_entry.hardware_entry_failure_reason,
                           run->fail_entry.cpu);
        return FALSE;
    default:
        *exit = vcpu_error(vcpu, error, "unhandled KVM exit reason %u", run->exit_reason);
        return FALSE;
    }
}

/* A kick consumed: the next vmm_vcpu_run() enters the guest again. */
static gboolean take_kick(VmmVcpu *vcpu)
{
    if (!g_atomic_int_compare_and_exchange(&vcpu->stop, 1, 0))
        return FALSE;
    vcpu->run->immediate_exit = 0;
    return TRUE;
}

static void set_running_thread(VmmVcpu *vcpu, gboolean running)
{
    g_mutex_lock(&vcpu->thread_lock);
    vcpu->thread = pthread_self();
    g_atomic_int_set(&vcpu->thread_set, running);
    g_mutex_unlock(&vcpu->thread_lock);
}

VmmVcpuExit vmm_vcpu_run(VmmVcpu *vcpu, GError **error)
{
    VmmVcpuExit exit = VMM_VCPU_EXIT_STOPPED;
    set_running_thread(vcpu, TRUE);
    for (;;) {
        if (take_kick(vcpu)) {
            exit = VMM_VCPU_EXIT_STOPPED;
            break;
        }
        if (ioctl(vcpu->fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                /* A late kick may leave immediate_exit set after its stop was
                 * taken; clear it here, and let the check above see any kick
                 * still pending. */
                vcpu->run->immediate_exit = 0;
                continue;
            }
            exit = VMM_VCPU_EXIT_ERROR;
            vcpu_fail_errno(vcpu, error, "KVM_RUN");
            break;
        }
        if (!handle_exit(vcpu, &exit, error))
            break;
    }
    set_running_thread(vcpu, FALSE);
    return exit;
}

void vmm_vcpu_kick(VmmVcpu *vcpu)
{
    g_atomic_int_set(&vcpu->stop, 1);
    /* Without KVM_CAP_IMMEDIATE_EXIT the field is ignored and a kick landing
     * between the loop's check and KVM_RUN waits for the guest's next exit. */
    vcpu->run->immediate_exit = 1;
    g_mutex_lock(&vcpu->thread_lock);
    if (g_atomic_int_get(&vcpu->thread_set))
        pthread_kill(vcpu->thread, VMM_VCPU_KICK_SIGNAL);
    g_mutex_unlock(&vcpu->thread_lock);
}
