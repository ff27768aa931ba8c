/* The KVM side of vcpu-worker against tiny hand-assembled guests: the bus
 * (no KVM needed), then real-mode port I/O ending in HLT, a protected-mode
 * MMIO write, the 16550A on COM1 through the bus, a long-mode guest on
 * boot.h's page tables and GDT, and stopping a spinning vCPU with a kick.
 * Without a usable /dev/kvm the VM cases skip. */
#include "vcpu-worker/bus.h"
#include "vcpu-worker/serial.h"
#include "vcpu-worker/vm.h"
#include "common/error.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#define GUEST_RAM (2u << 20)
#define CODE_ADDR 0x1000
#define MMIO_ADDR 0xd0000000ULL
#define RUN_TIMEOUT_US (10 * G_USEC_PER_SEC)

/* ---- A recording device ---------------------------------------------------- */

typedef struct {
    guint64 offset;
    guint8 data[8];
    guint32 len;
    gboolean write;
} Access;

typedef struct {
    GMutex lock;
    GArray *log;        /* Access */
    guint8 read_value;
} Recorder;

static void recorder_init(Recorder *r)
{
    g_mutex_init(&r->lock);
    r->log = g_array_new(FALSE, TRUE, sizeof(Access));
    r->read_value = 0xa5;
}

static void recorder_clear(Recorder *r)
{
    g_array_free(r->log, TRUE);
    g_mutex_clear(&r->lock);
}

static void recorder_read(void *opaque, guint64 offset, guint8 *data, guint32 len)
{
    Recorder *r = opaque;
    Access a = { .offset = offset, .len = len };
    memset(data, r->read_value, len);
    g_mutex_lock(&r->lock);
    g_array_append_val(r->log, a);
    g_mutex_unlock(&r->lock);
}

static void recorder_write(void *opaque, guint64 offset, const guint8 *data, guint32 len)
{
    Recorder *r = opaque;
    Access a = { .offset = offset, .len = len, .write = TRUE };
    memcpy(a.data, data, MIN(len, sizeof(a.data)));
    g_mutex_lock(&r->lock);
    g_array_append_val(r->log, a);
    g_mutex_unlock(&r->lock);
}

static const VmmBusOps recorder_ops = { recorder_read, recorder_write };

static const Access *recorded(Recorder *r, guint i)
{
    g_assert_cmpuint(i, <, r->log->len);
    return &g_array_index(r->log, Access, i);
}

/* ---- The bus alone ----------------------------------------------------------- */

static void test_bus_lookup(void)
{
    VmmBus *bus = vmm_bus_new("pio");
    Recorder a, b;
    recorder_init(&a);
    recorder_init(&b);
    b.read_value = 0x5a;
    g_autoptr(GError) error = NULL;
    g_assert_true(vmm_bus_add(bus, "a", 0x3f8, 8, &recorder_ops, &a, &error));
    g_assert_true(vmm_bus_add(bus, "b", 0x60, 1, &recorder_ops, &b, &error));

    guint8 byte = 'x';
    g_assert_true(vmm_bus_write(bus, 0x3fd, &byte, 1));
    g_assert_cmpuint(a.log->len, ==, 1);
    g_assert_cmpuint(recorded(&a, 0)->offset, ==, 5);
    g_assert_cmpuint(recorded(&a, 0)->data[0], ==, 'x');
    g_assert_true(vmm_bus_read(bus, 0x60, &byte, 1));
    g_assert_cmpuint(byte, ==, 0x5a);

    /* Outside every window, or running past the end of one: unclaimed. */
    guint8 word[2] = { 0, 0 };
    g_assert_false(vmm_bus_read(bus, 0x3f7, word, 2));
    g_assert_cmpuint(word[0], ==, 0xff);
    g_assert_cmpuint(word[1], ==, 0xff);
    g_assert_false(vmm_bus_write(bus, 0x3ff, word, 2));
    g_assert_false(vmm_bus_read(bus, 0x61, &byte, 1));
    g_assert_cmpuint(vmm_bus_unclaimed(bus), ==, 3);
    g_assert_cmpuint(a.log->len, ==, 1);

    g_assert_true(vmm_bus_remove(bus, 0x60));
    g_assert_false(vmm_bus_remove(bus, 0x60));
    g_assert_false(vmm_bus_read(bus, 0x60, &byte, 1));
    g_assert_cmpuint(b.log->len, ==, 1);

    vmm_bus_free(bus);
    recorder_clear(&a);
    recorder_clear(&b);
}

static void test_bus_overlap(void)
{
    VmmBus *bus = vmm_bus_new("mmio");
    Recorder r;
    recorder_init(&r);
    g_autoptr(GError) error = NULL;
    g_assert_true(vmm_bus_add(bus, "virtio0", 0x1000, 0x200, &recorder_ops, &r, &error));
    g_assert_true(vmm_bus_add(bus, "virtio1", 0x1200, 0x200, &recorder_ops, &r, &error));

    static const struct { guint64 base, size; } clashes[] = {
        { 0x1000, 0x200 }, { 0xf00, 0x101 }, { 0x11ff, 1 }, { 0x13ff, 0x10 }, { 0x0, 0x2000 },
    };
    for (guint i = 0; i < G_N_ELEMENTS(clashes); i++) {
        g_assert_false(vmm_bus_add(bus, "clash", clashes[i].base, clashes[i].size,
                                   &recorder_ops, &r, &error));
        g_assert_error(error, VMM_ERROR, VMM_ERROR_INVALID);
        g_assert_nonnull(strstr(error->message, "overlaps virtio"));
        g_clear_error(&error);
    }
    g_assert_false(vmm_bus_add(bus, "empty", 0x5000, 0, &recorder_ops, &r, &error));
    g_clear_error(&error);
    g_assert_false(vmm_bus_add(bus, "wrap", G_MAXUINT64 - 1, 4, &recorder_ops, &r, &error));
    g_clear_error(&error);
    /* Touching, not overlapping. */
    g_assert_true(vmm_bus_add(bus, "below", 0xf00, 0x100, &recorder_ops, &r, &error));
    g_assert_true(vmm_bus_add(bus, "above", 0x1400, 0x10, &recorder_ops, &r, &error));
    g_assert_true(vmm_bus_add(bus, "top", G_MAXUINT64, 1, &recorder_ops, &r, &error));

    vmm_bus_free(bus);
    recorder_clear(&r);
}

/* ---- A tiny VM ------------------------------------------------------------------ */

typedef struct {
    VmmKvm kvm;
    VmmVm vm;
    int ram_fd;
    VmmVcpu *vcpu;
} TinyVm;

/* FALSE (and the test skipped) when this host cannot run a VM at all. */
static gboolean tiny_vm_open(TinyVm *t, gboolean irqchip)
{
    memset(t, 0, sizeof(*t));
    t->ram_fd = -1;
    t->kvm.kvm_fd = t->kvm.vm_fd = -1;
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        g_test_skip_printf("no usable /dev/kvm: %s", g_strerror(errno));
        return FALSE;
    }
    g_autoptr(GError) error = NULL;
    if (!vmm_kvm_open(&t->kvm, fd, &error)) {
        g_test_skip_printf("KVM cannot create a VM here: %s", error->message);
        vmm_kvm_close(&t->kvm);
        return FALSE;
    }
    VmmVmOptions opts = { .irqchip = irqchip };
    g_assert_no_error((vmm_vm_init(&t->vm, &t->kvm, &opts, &error), error));

    t->ram_fd = memfd_create("guest-ram", MFD_CLOEXEC);
    g_assert_cmpint(t->ram_fd, >=, 0);
    g_assert_cmpint(ftruncate(t->ram_fd, GUEST_RAM), ==, 0);
    g_assert_no_error((vmm_vm_map_ram(&t->vm, t->ram_fd, GUEST_RAM, NULL, &error), error));
    t->vcpu = vmm_vcpu_new(&t->vm, 0, &error);
    g_assert_no_error(error);
    g_assert_nonnull(t->vcpu);
    return TRUE;
}

static void tiny_vm_close(TinyVm *t)
{
    vmm_vcpu_free(t->vcpu);
    vmm_vm_cleanup(&t->vm);
    if (t->ram_fd >= 0)
        close(t->ram_fd);
    vmm_kvm_close(&t->kvm);
}

static void load_code(TinyVm *t, const guint8 *code, gsize len)
{
    memcpy(t->vm.ram + CODE_ADDR, code, len);
}

/* Real mode, CS:IP = 0000:1000, every data segment at 0. */
static VmmBootCpuState real_mode_state(void)
{
    VmmSegment code = { .limit = 0xffff, .type = 0xb, .present = 1, .s = 1 };
    VmmSegment data = { .limit = 0xffff, .type = 0x3, .present = 1, .s = 1 };
    VmmBootCpuState st = {
        .rip = CODE_ADDR, .rsp = 0x8000, .rflags = 0x2, .cr0 = VMM_CR0_ET,
        .cs = code, .ds = data, .es = data, .fs = data, .gs = data, .ss = data,
        .tr = { .limit = 0xffff, .type = 0xb, .present = 1 },
        .ldt = { .limit = 0xffff, .type = 0x2, .present = 1 },
        .idt_limit = 0x3ff, .gdt_limit = 0xffff,
    };
    return st;
}

/* boot.h's GDT written to guest RAM, and flat segments from it for CODE_SEL. */
static VmmBootCpuState flat_state(TinyVm *t, guint16 code_sel)
{
    guint64 gdt[VMM_GDT_ENTRIES] = {
        0,
        vmm_gdt_entry(0xc09b, 0, 0xfffff),
        vmm_gdt_entry(0xa09b, 0, 0xfffff),
        vmm_gdt_entry(0xc093, 0, 0xfffff),
        vmm_gdt_entry(0x008b, 0, 0x67),
    };
    for (guint i = 0; i < VMM_GDT_ENTRIES; i++)
        vmm_put_le64(t->vm.ram + VMM_GDT_ADDR + 8 * i, gdt[i]);
    VmmBootCpuState st = {
        .rip = CODE_ADDR, .rsp = VMM_BOOT_STACK_TOP, .rflags = 0x2,
        .cr0 = VMM_CR0_PE | VMM_CR0_ET,
        .cs = vmm_segment_from_gdt(gdt[code_sel / 8], code_sel),
        .ds = vmm_segment_from_gdt(gdt[VMM_SEL_DATA / 8], VMM_SEL_DATA),
        .tr = vmm_segment_from_gdt(gdt[VMM_SEL_TSS / 8], VMM_SEL_TSS),
        .ldt = { .type = 2, .unusable = 1 },
        .gdt_base = VMM_GDT_ADDR, .gdt_limit = VMM_GDT_ENTRIES * 8 - 1,
        .idt_base = VMM_IDT_ADDR, .idt_limit = 7,
    };
    st.es = st.fs = st.gs = st.ss = st.ds;
    return st;
}

/* The page tables boot.h describes (PML4, PDPT, PDs of 2 MiB pages identity
 * mapping 0..4 GiB), and long mode on the 64-bit code segment. */
static VmmBootCpuState long_mode_state(TinyVm *t)
{
    guint8 *ram = t->vm.ram;
    vmm_put_le64(ram + VMM_PML4_ADDR, VMM_PDPT_ADDR | 0x3);
    for (guint i = 0; i < VMM_PD_COUNT; i++) {
        guint64 pd = VMM_PD_ADDR + i * 0x1000;
        vmm_put_le64(ram + VMM_PDPT_ADDR + 8 * i, pd | 0x3);
        for (guint j = 0; j < 512; j++)
            vmm_put_le64(ram + pd + 8 * j, (((guint64)i * 512 + j) << 21) | 0x83);
    }
    VmmBootCpuState st = flat_state(t, VMM_SEL_CODE64);
    st.cr0 |= VMM_CR0_PG;
    st.cr3 = VMM_PML4_ADDR;
    st.cr4 = VMM_CR4_PAE;
    st.efer = VMM_EFER_LME | VMM_EFER_LMA;
    return st;
}

/* ---- Running the vCPU on a thread, bounded ---------------------------------------- */

typedef struct {
    VmmVcpu *vcpu;
    GMutex lock;
    GCond cond;
    gboolean done;
    VmmVcpuExit exit;
    GError *error;
} Runner;

static gpointer runner_thread(gpointer opaque)
{
    Runner *r = opaque;
    GError *error = NULL;
    VmmVcpuExit exit = vmm_vcpu_run(r->vcpu, &error);
    g_mutex_lock(&r->lock);
    r->exit = exit;
    r->error = error;
    r->done = TRUE;
    g_cond_signal(&r->cond);
    g_mutex_unlock(&r->lock);
    return NULL;
}

static gboolean runner_wait(Runner *r, gint64 timeout_us)
{
    gint64 deadline = g_get_monotonic_time() + timeout_us;
    g_mutex_lock(&r->lock);
    while (!r->done && g_cond_wait_until(&r->cond, &r->lock, deadline))
        ;
    gboolean done = r->done;
    g_mutex_unlock(&r->lock);
    return done;
}

/* Runs the vCPU until it returns; a guest still running after the timeout
 * is kicked, which fails the test unless KICK_AFTER_US asked for it. */
static VmmVcpuExit run_vcpu(TinyVm *t, gint64 kick_after_us, gboolean (*ready)(gpointer),
                            gpointer ready_data, GError **error)
{
    Runner r = { .vcpu = t->vcpu };
    g_mutex_init(&r.lock);
    g_cond_init(&r.cond);
    GThread *th = g_thread_new("vcpu0", runner_thread, &r);
    gboolean finished = FALSE;
    if (kick_after_us > 0) {
        /* Wait for the guest to show progress, then stop it. */
        gint64 deadline = g_get_monotonic_time() + RUN_TIMEOUT_US;
        while (ready && !ready(ready_data) && g_get_monotonic_time() < deadline)
            g_usleep(1000);
        g_usleep(kick_after_us);
    } else {
        finished = runner_wait(&r, RUN_TIMEOUT_US);
    }
    if (!finished)
        vmm_vcpu_kick(t->vcpu);
    g_assert_true(runner_wait(&r, RUN_TIMEOUT_US));
    g_thread_join(th);
    g_mutex_clear(&r.lock);
    g_cond_clear(&r.cond);
    if (kick_after_us <= 0)
        g_assert_true(finished);
    if (r.error)
        g_propagate_error(error, r.error);
    return r.exit;
}

static void assert_exit(VmmVcpuExit got, VmmVcpuExit want, GError *error)
{
    g_assert_no_error(error);
    if (got != want)
        g_error("vCPU exit %s, expected %s", vmm_vcpu_exit_name(got), vmm_vcpu_exit_name(want));
}

/* ---- The guests ----------------------------------------------------------------------- */

/* mov dx,0x3f8; mov al,'O'; out dx,al; mov al,'K'; out dx,al; hlt */
static const guint8 real_mode_ok[] = {
    0xba, 0xf8, 0x03, 0xb0, 'O', 0xee, 0xb0, 'K', 0xee, 0xf4,
};

static void test_real_mode_pio(void)
{
    TinyVm t;
    if (!tiny_vm_open(&t, FALSE))
        return;
    Recorder rec;
    recorder_init(&rec);
    g_autoptr(GError) error = NULL;
    g_assert_true(vmm_bus_add(t.vm.pio, "recorder", 0x3f8, 8, &recorder_ops, &rec, &error));
    load_code(&t, real_mode_ok, sizeof(real_mode_ok));
    VmmBootCpuState st = real_mode_state();
    g_assert_no_error((vmm_vcpu_load_boot_state(t.vcpu, &st, &error), error));

    assert_exit(run_vcpu(&t, 0, NULL, NULL, &error), VMM_VCPU_EXIT_HLT, error);
    g_assert_cmpuint(rec.log->len, ==, 2);
    for (guint i = 0; i < 2; i++) {
        g_assert_true(recorded(&rec, i)->write);
        g_assert_cmpuint(recorded(&rec, i)->offset, ==, 0);
        g_assert_cmpuint(recorded(&rec, i)->len, ==, 1);
    }
    g_assert_cmpuint(recorded(&rec, 0)->data[0], ==, 'O');
    g_assert_cmpuint(recorded(&rec, 1)->data[0], ==, 'K');
    recorder_clear(&rec);
    tiny_vm_close(&t);
}

/* 32-bit flat: mov dword [0xd0000010], 0x12345678; mov al, [0xd0000020];
 * mov [0x2000], al; hlt */
static const guint8 protected_mode_mmio[] = {
    0xc7, 0x05, 0x10, 0x00, 0x00, 0xd0, 0x78, 0x56, 0x34, 0x12,
    0xa0, 0x20, 0x00, 0x00, 0xd0,
    0xa2, 0x00, 0x20, 0x00, 0x00,
    0xf4,
};

static void test_protected_mode_mmio(void)
{
    TinyVm t;
    if (!tiny_vm_open(&t, FALSE))
        return;
    Recorder rec;
    recorder_init(&rec);
    g_autoptr(GError) error = NULL;
    g_assert_true(vmm_bus_add(t.vm.mmio, "recorder", MMIO_ADDR, 0x1000, &recorder_ops, &rec,
                              &error));
    load_code(&t, protected_mode_mmio, sizeof(protected_mode_mmio));
    VmmBootCpuState st = flat_state(&t, VMM_SEL_CODE32);
    g_assert_no_error((vmm_vcpu_load_boot_state(t.vcpu, &st, &error), error));

    assert_exit(run_vcpu(&t, 0, NULL, NULL, &error), VMM_VCPU_EXIT_HLT, error);
    g_assert_cmpuint(rec.log->len, ==, 2);
    const Access *w = recorded(&rec, 0);
    g_assert_true(w->write);
    g_assert_cmpuint(w->offset, ==, 0x10);
    g_assert_cmpuint(w->len, ==, 4);
    g_assert_cmpuint(vmm_get_le32(w->data), ==, 0x12345678);
    const Access *r = recorded(&rec, 1);
    g_assert_false(r->write);
    g_assert_cmpuint(r->offset, ==, 0x20);
    g_assert_cmpuint(r->len, ==, 1);
    /* The value the device returned reached the guest. */
    g_assert_cmpuint(t.vm.ram[0x2000], ==, rec.read_value);
    recorder_clear(&rec);
    tiny_vm_close(&t);
}

/* 64-bit: mov rax, 0xd0000000; mov dword [rax], 0xcafef00d;
 * mov dx, 0x3f8; mov al, 'L'; out dx, al; hlt */
static const guint8 long_mode_guest[] = {
    0x48, 0xb8, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x00, 0x00, 0x00,
    0xc7, 0x00, 0x0d, 0xf0, 0xfe, 0xca,
    0x66, 0xba, 0xf8, 0x03, 0xb0, 'L', 0xee,
    0xf4,
};

static void test_long_mode(void)
{
    TinyVm t;
    if (!tiny_vm_open(&t, FALSE))
        return;
    Recorder mmio, pio;
    recorder_init(&mmio);
    recorder_init(&pio);
    g_autoptr(GError) error = NULL;
    g_assert_true(vmm_bus_add(t.vm.mmio, "recorder", MMIO_ADDR, 0x1000, &recorder_ops, &mmio,
                              &error));
    g_assert_true(vmm_bus_add(t.vm.pio, "recorder", 0x3f8, 8, &recorder_ops, &pio, &error));
    load_code(&t, long_mode_guest, sizeof(long_mode_guest));
    VmmBootCpuState st = long_mode_state(&t);
    g_assert_no_error((vmm_vcpu_load_boot_state(t.vcpu, &st, &error), error));

    assert_exit(run_vcpu(&t, 0, NULL, NULL, &error), VMM_VCPU_EXIT_HLT, error);
    g_assert_cmpuint(mmio.log->len, ==, 1);
    g_assert_cmpuint(recorded(&mmio, 0)->offset, ==, 0);
    g_assert_cmpuint(vmm_get_le32(recorded(&mmio, 0)->data), ==, 0xcafef00d);
    g_assert_cmpuint(pio.log->len, ==, 1);
    g_assert_cmpuint(recorded(&pio, 0)->data[0], ==, 'L');
    recorder_clear(&mmio);
    recorder_clear(&pio);
    tiny_vm_close(&t);
}

/* ud2 in 32-bit mode with boot.h's empty IDT: #UD, no gate, triple fault. */
static void test_triple_fault(void)
{
    TinyVm t;
    if (!tiny_vm_open(&t, FALSE))
        return;
    static const guint8 ud2[] = { 0x0f, 0x0b };
    load_code(&t, ud2, sizeof(ud2));
    g_autoptr(GError) error = NULL;
    VmmBootCpuState st = flat_state(&t, VMM_SEL_CODE32);
    g_assert_no_error((vmm_vcpu_load_boot_state(t.vcpu, &st, &error), error));
    assert_exit(run_vcpu(&t, 0, NULL, NULL, &error), VMM_VCPU_EXIT_SHUTDOWN, error);
    tiny_vm_close(&t);
}

/* A kick before the vCPU runs stops the next run, once. */
static void test_kick_before_run(void)
{
    TinyVm t;
    if (!tiny_vm_open(&t, FALSE))
        return;
    load_code(&t, real_mode_ok, sizeof(real_mode_ok));
    g_autoptr(GError) error = NULL;
    VmmBootCpuState st = real_mode_state();
    g_assert_no_error((vmm_vcpu_load_boot_state(t.vcpu, &st, &error), error));
    vmm_vcpu_kick(t.vcpu);
    assert_exit(vmm_vcpu_run(t.vcpu, &error), VMM_VCPU_EXIT_STOPPED, error);
    assert_exit(run_vcpu(&t, 0, NULL, NULL, &error), VMM_VCPU_EXIT_HLT, error);
    /* No window on 0x3f8: both writes went unclaimed. */
    g_assert_cmpuint(vmm_bus_unclaimed(t.vm.pio), ==, 2);
    tiny_vm_close(&t);
}

/* ---- Doorbells and interrupt wiring ----------------------------------------------------- */

/* mov dx,0x510; mov al,7; out dx,al; mov al,8; out dx,al; hlt */
static const guint8 doorbell_guest[] = {
    0xba, 0x10, 0x05, 0xb0, 0x07, 0xee, 0xb0, 0x08, 0xee, 0xf4,
};

static void test_ioeventfd(void)
{
    TinyVm t;
    if (!tiny_vm_open(&t, FALSE))
        return;
    Recorder rec;
    recorder_init(&rec);
    g_autoptr(GError) error = NULL;
    g_assert_true(vmm_bus_add(t.vm.pio, "doorbell", 0x510, 1, &recorder_ops, &rec, &error));
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    g_assert_cmpint(efd, >=, 0);
    VmmIoEvent ev = { .addr = 0x510, .len = 1, .pio = TRUE, .has_datamatch = TRUE, .datamatch = 7 };
    g_assert_no_error((vmm_vm_ioeventfd_add(&t.vm, &ev, efd, &error), error));
    VmmIoEvent bad = { .addr = 0x520, .len = 3, .pio = TRUE };
    g_assert_false(vmm_vm_ioeventfd_add(&t.vm, &bad, efd, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_INVALID);
    g_clear_error(&error);

    load_code(&t, doorbell_guest, sizeof(doorbell_guest));
    VmmBootCpuState st = real_mode_state();
    g_assert_no_error((vmm_vcpu_load_boot_state(t.vcpu, &st, &error), error));
    assert_exit(run_vcpu(&t, 0, NULL, NULL, &error), VMM_VCPU_EXIT_HLT, error);

    /* The matching write rang the eventfd; the other one exited to the bus. */
    guint64 count = 0;
    g_assert_cmpint(read(efd, &count, sizeof(count)), ==, sizeof(count));
    g_assert_cmpuint(count, ==, 1);
    g_assert_cmpuint(rec.log->len, ==, 1);
    g_assert_cmpuint(recorded(&rec, 0)->data[0], ==, 8);
    g_assert_no_error((vmm_vm_ioeventfd_remove(&t.vm, &ev, efd, &error), error));
    g_assert_false(vmm_vm_ioeventfd_remove(&t.vm, &ev, efd, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_IO);
    g_clear_error(&error);
    close(efd);
    recorder_clear(&rec);
    tiny_vm_close(&t);
}

static void test_irqfd(void)
{
    TinyVm t;
    if (!tiny_vm_open(&t, TRUE))
        return;
    g_autoptr(GError) error = NULL;
    int edge = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int level = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int resample = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    g_assert_cmpint(MIN(edge, MIN(level, resample)), >=, 0);
    g_assert_no_error((vmm_vm_irqfd_add(&t.vm, VMM_GED_IRQ, edge, -1, &error), error));
    g_assert_no_error((vmm_vm_irqfd_add(&t.vm, VMM_VIRTIO_IRQ_BASE, level, resample, &error), error));
    /* One eventfd drives one GSI at a time. */
    g_assert_false(vmm_vm_irqfd_add(&t.vm, 5, edge, -1, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_IO);
    g_assert_nonnull(strstr(error->message, "KVM_IRQFD"));
    g_clear_error(&error);
    guint64 one = 1;
    g_assert_cmpint(write(edge, &one, sizeof(one)), ==, sizeof(one));
    g_assert_no_error((vmm_vm_irqfd_remove(&t.vm, VMM_GED_IRQ, edge, &error), error));
    g_assert_no_error((vmm_vm_irqfd_remove(&t.vm, VMM_VIRTIO_IRQ_BASE, level, &error), error));
    g_assert_no_error((vmm_vm_set_irq_line(&t.vm, VMM_SERIAL_COM1_IRQ, TRUE, &error), error));
    g_assert_no_error((vmm_vm_set_irq_line(&t.vm, VMM_SERIAL_COM1_IRQ, FALSE, &error), error));
    close(edge);
    close(level);
    close(resample);
    tiny_vm_close(&t);
}

static void test_no_irqchip_refuses_irq_line(void)
{
    TinyVm t;
    if (!tiny_vm_open(&t, FALSE))
        return;
    g_autoptr(GError) error = NULL;
    g_assert_false(vmm_vm_set_irq_line(&t.vm, 4, TRUE, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_IO);
    g_assert_nonnull(strstr(error->message, "KVM_IRQ_LINE gsi 4"));
    tiny_vm_close(&t);
}

/* ---- The 16550A on COM1 -------------------------------------------------------------------- */

typedef struct {
    GMutex lock;
    GString *out;
    VmmIrqLine irq;     /* COM1's ISA line */
} Sink;

/* The UART has one opaque pointer for the sink and its interrupt line. */
static void sink_set_irq(void *opaque, bool level)
{
    Sink *s = opaque;
    vmm_irq_line_set(&s->irq, level);
}

static void sink_write(void *opaque, const uint8_t *buf, size_t len)
{
    Sink *s = opaque;
    g_mutex_lock(&s->lock);
    g_string_append_len(s->out, (const char *)buf, len);
    g_mutex_unlock(&s->lock);
}

static gboolean sink_has_ok(gpointer opaque)
{
    Sink *s = opaque;
    g_mutex_lock(&s->lock);
    gboolean ok = s->out->len >= 2;
    g_mutex_unlock(&s->lock);
    return ok;
}

/* The port window → register adapter the lead wires in vcpu-worker. */
static void serial_bus_read(void *opaque, guint64 offset, guint8 *data, guint32 len)
{
    for (guint32 i = 0; i < len; i++)
        data[i] = vmm_serial_read(opaque, (unsigned)(offset + i) % VMM_SERIAL_NUM_REGS);
}

static void serial_bus_write(void *opaque, guint64 offset, const guint8 *data, guint32 len)
{
    for (guint32 i = 0; i < len; i++)
        vmm_serial_write(opaque, (unsigned)(offset + i) % VMM_SERIAL_NUM_REGS, data[i]);
}

static const VmmBusOps serial_bus_ops = { serial_bus_read, serial_bus_write };

/* With IRQCHIP the in-kernel LAPIC handles HLT, so the guest spins at the
 * end instead (jmp $) and the test stops it with a kick. */
static void run_serial_guest(gboolean irqchip)
{
    TinyVm t;
    if (!tiny_vm_open(&t, irqchip))
        return;
    Sink sink = { .out = g_string_new(NULL), .irq = { &t.vm, VMM_SERIAL_COM1_IRQ } };
    g_mutex_init(&sink.lock);
    VmmSerialHost host = { .write = sink_write, .opaque = &sink };
    if (irqchip)
        host.set_irq = sink_set_irq;
    VmmSerial *uart = vmm_serial_new("com1", &host);
    g_autoptr(GError) error = NULL;
    g_assert_true(vmm_bus_add(t.vm.pio, "com1", VMM_SERIAL_COM1_BASE, VMM_SERIAL_NUM_REGS,
                              &serial_bus_ops, uart, &error));
    guint8 code[sizeof(real_mode_ok)];
    memcpy(code, real_mode_ok, sizeof(code));
    if (irqchip) {
        code[sizeof(code) - 1] = 0xeb;     /* jmp $ */
        load_code(&t, code, sizeof(code));
        t.vm.ram[CODE_ADDR + sizeof(code)] = 0xfe;
    } else {
        load_code(&t, code, sizeof(code));
    }
    VmmBootCpuState st = real_mode_state();
    g_assert_no_error((vmm_vcpu_load_boot_state(t.vcpu, &st, &error), error));
    if (irqchip) {
        /* A raised then lowered ISA line reaches the in-kernel PIC. */
        g_assert_no_error((vmm_vm_set_irq_line(&t.vm, VMM_SERIAL_COM1_IRQ, TRUE, &error), error));
        g_assert_no_error((vmm_vm_set_irq_line(&t.vm, VMM_SERIAL_COM1_IRQ, FALSE, &error), error));
        assert_exit(run_vcpu(&t, 20000, sink_has_ok, &sink, &error), VMM_VCPU_EXIT_STOPPED, error);
    } else {
        assert_exit(run_vcpu(&t, 0, NULL, NULL, &error), VMM_VCPU_EXIT_HLT, error);
    }
    g_assert_cmpstr(sink.out->str, ==, "OK");
    vmm_serial_free(uart);
    g_string_free(sink.out, TRUE);
    g_mutex_clear(&sink.lock);
    tiny_vm_close(&t);
}

static void test_serial_hlt(void)
{
    run_serial_guest(FALSE);
}

static void test_serial_irqchip_kick(void)
{
    run_serial_guest(TRUE);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/bus/lookup", test_bus_lookup);
    g_test_add_func("/bus/overlap", test_bus_overlap);
    g_test_add_func("/vm/real-mode-pio", test_real_mode_pio);
    g_test_add_func("/vm/protected-mode-mmio", test_protected_mode_mmio);
    g_test_add_func("/vm/long-mode", test_long_mode);
    g_test_add_func("/vm/triple-fault", test_triple_fault);
    g_test_add_func("/vm/kick-before-run", test_kick_before_run);
    g_test_add_func("/vm/ioeventfd", test_ioeventfd);
    g_test_add_func("/vm/irqfd", test_irqfd);
    g_test_add_func("/vm/irq-line-without-irqchip", test_no_irqchip_refuses_irq_line);
    g_test_add_func("/vm/serial-hlt", test_serial_hlt);
    g_test_add_func("/vm/serial-irqchip-kick", test_serial_irqchip_kick);
    return g_test_run();
}
