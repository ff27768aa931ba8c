/* The machine "vm-start" runs: see machine.h. Device callbacks run on the
 * vCPU thread; the guest's end travels to the helper's loop by a uv_async. */
#include "vcpu-worker/machine.h"
#include "vcpu-worker/acpi.h"
#include "vcpu-worker/chardev.h"
#include "vcpu-worker/disks.h"
#include "vcpu-worker/rngs.h"
#include "vcpu-worker/fsdevs.h"
#include "vcpu-worker/i8042.h"
#include "vcpu-worker/serial.h"
#include "vcpu-worker/vm.h"
#include "common/error.h"
#include "common/log.h"
#include "common/sandbox.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bigger than any kernel or initrd a microvm guest boots from. */
#define MAX_IMAGE_SIZE (1ULL << 30)

typedef struct {
    struct VmmMachine *m;
    VmmVcpu *vcpu;
    GThread *thread;
    gint tid;                   /* atomic: the thread's Linux id, 0 until it runs */
} VmmMachineCpu;

struct VmmMachine {
    uv_async_t ended_async;     /* first: its close callback frees the machine */
    VmmVm vm;
    gboolean vm_ready;
    guint n_vcpus;
    VmmMachineCpu *cpus;        /* n_vcpus of them; cpus[0] is the boot vCPU */
    /* Pause: vCPU threads park under run_lock while PAUSED; PARKED counts them. */
    GMutex run_lock;
    GCond run_cond;
    gboolean paused;
    guint parked;
    VmmSerial *com1;
    VmmIrqLine com1_irq;
    VmmChardev *console;        /* COM1's backend (borrowed), or NULL: stderr */
    VmmI8042 *i8042;
    gint ged_events;            /* atomic: the GED's event selector, read clears */
    struct VmmDisks *disks;     /* plugged into the VM's virtio-mmio slots */
    struct VmmRngs *rngs;       /* in the slots after the drives */
    struct VmmFsdevs *fsdevs;   /* virtio-9p, in the slots after the rngs */

    gboolean async_open;        /* closed only by vmm_machine_free */
    gint ended;                 /* atomic: 0 until the first end wins */
    VmmMachineEnd end;
    char *reason;
    VmmMachineEndFn on_end;
    gpointer user;
};

const char *vmm_machine_end_name(VmmMachineEnd end)
{
    switch (end) {
    case VMM_MACHINE_END_SHUTDOWN: return "shutdown";
    case VMM_MACHINE_END_RESET: return "reset";
    case VMM_MACHINE_END_ERROR: return "error";
    }
    return "unknown";
}

/* ---- The guest's end ------------------------------------------------------ */

static void kick_all(VmmMachine *m)
{
    for (guint i = 0; i < m->n_vcpus; i++) {
        if (m->cpus[i].vcpu)
            vmm_vcpu_kick(m->cpus[i].vcpu);
    }
}

/* From any thread; the first end counts, later ones are dropped. */
static void machine_end(VmmMachine *m, VmmMachineEnd end, const char *reason)
{
    if (!g_atomic_int_compare_and_exchange(&m->ended, 0, 1))
        return;
    m->end = end;
    m->reason = g_strdup(reason);
    kick_all(m);
    g_mutex_lock(&m->run_lock);
    g_cond_broadcast(&m->run_cond);     /* a pause waiting for this vCPU, or a parked one */
    g_mutex_unlock(&m->run_lock);
    uv_async_send(&m->ended_async);
}

static void on_ended_async(uv_async_t *a)
{
    VmmMachine *m = a->data;
    if (!g_atomic_int_get(&m->ended))
        return;
    if (m->on_end)
        m->on_end(m->end, m->reason, m->user);
}

/* ---- Devices ---------------------------------------------------------------- */

static void com1_output(void *opaque, const uint8_t *buf, size_t len)
{
    VmmMachine *m = opaque;
    if (m->console) {
        vmm_chardev_write(m->console, buf, len);
        return;
    }
    /* Console output is best effort: a closed stderr must not stop the guest. */
    while (len > 0) {
        ssize_t n = write(STDERR_FILENO, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        buf += n;
        len -= (size_t)n;
    }
}

static void com1_rx_ready(void *opaque)
{
    VmmMachine *m = opaque;
    if (m->console)
        vmm_chardev_rx_ready(m->console);
}

static size_t com1_receive(void *opaque, const uint8_t *buf, size_t len)
{
    VmmMachine *m = opaque;
    return vmm_serial_receive(m->com1, buf, len);
}

static void com1_set_irq(void *opaque, bool level)
{
    VmmMachine *m = opaque;
    if (m->vm.irqchip)
        vmm_irq_line_set(&m->com1_irq, level);
}

static void com1_read(void *opaque, guint64 offset, guint8 *data, guint32 len)
{
    VmmMachine *m = opaque;
    for (guint32 i = 0; i < len; i++)
        data[i] = vmm_serial_read(m->com1, (unsigned)(offset + i));
}

static void com1_write(void *opaque, guint64 offset, const guint8 *data, guint32 len)
{
    VmmMachine *m = opaque;
    for (guint32 i = 0; i < len; i++)
        vmm_serial_write(m->com1, (unsigned)(offset + i), data[i]);
}

static const VmmBusOps com1_ops = { .read = com1_read, .write = com1_write };

static void i8042_reset(void *opaque)
{
    machine_end(opaque, VMM_MACHINE_END_RESET, "guest-i8042-reset");
}

static void i8042_access(VmmMachine *m, guint16 port, guint8 *rdata, const guint8 *wdata,
                         guint32 len)
{
    for (guint32 i = 0; i < len; i++) {
        if (rdata)
            rdata[i] = vmm_i8042_read(m->i8042, port);
        else
            vmm_i8042_write(m->i8042, port, wdata[i]);
    }
}

static void i8042_data_read(void *o, guint64 off, guint8 *d, guint32 len)
{
    i8042_access(o, VMM_I8042_DATA_PORT, d, NULL, len);
}

static void i8042_data_write(void *o, guint64 off, const guint8 *d, guint32 len)
{
    i8042_access(o, VMM_I8042_DATA_PORT, NULL, d, len);
}

static void i8042_cmd_read(void *o, guint64 off, guint8 *d, guint32 len)
{
    i8042_access(o, VMM_I8042_COMMAND_PORT, d, NULL, len);
}

static void i8042_cmd_write(void *o, guint64 off, const guint8 *d, guint32 len)
{
    i8042_access(o, VMM_I8042_COMMAND_PORT, NULL, d, len);
}

static const VmmBusOps i8042_data_ops = { .read = i8042_data_read, .write = i8042_data_write };
static const VmmBusOps i8042_cmd_ops = { .read = i8042_cmd_read, .write = i8042_cmd_write };

static void acpi_regs_read(void *opaque, guint64 offset, guint8 *data, guint32 len)
{
    /* Sleep status never reports a wake: the guest never sleeps. */
    memset(data, 0, len);
}

static void acpi_regs_write(void *opaque, guint64 offset, const guint8 *data, guint32 len)
{
    for (guint32 i = 0; i < len; i++) {
        switch (vmm_acpi_reg_write(VMM_ACPI_REGS_ADDR + offset + i, data[i])) {
        case VMM_ACPI_ACTION_POWEROFF:
            machine_end(opaque, VMM_MACHINE_END_SHUTDOWN, "guest-poweroff");
            return;
        case VMM_ACPI_ACTION_RESET:
            machine_end(opaque, VMM_MACHINE_END_RESET, "guest-reset");
            return;
        case VMM_ACPI_ACTION_NONE:
            break;
        }
    }
}

static const VmmBusOps acpi_regs_ops = { .read = acpi_regs_read, .write = acpi_regs_write };

/* The GED's event selector: the DSDT's _EVT reads it (32-bit) and acts on
 * every bit set; reading clears it, so an event is handled once. */
static void ged_read(void *opaque, guint64 offset, guint8 *data, guint32 len)
{
    VmmMachine *m = opaque;
    guint32 sel = offset == 0 && len == 4 ? (guint32)g_atomic_int_and(&m->ged_events, 0) : 0;
    memcpy(data, &sel, MIN(len, 4u));
    if (len > 4)
        memset(data + 4, 0, len - 4);
}

static void ged_write(void *opaque, guint64 offset, const guint8 *data, guint32 len)
{
    /* Read-only: the field is WriteAsZeros, nothing to do. */
}

static const VmmBusOps ged_ops = { .read = ged_read, .write = ged_write };

static gboolean add_ged(VmmMachine *m, GError **error)
{
    return vmm_bus_add(m->vm.mmio, "acpi ged", VMM_ACPI_GED_EVT_ADDR, 4, &ged_ops, m, error);
}

void vmm_machine_powerdown(VmmMachine *m)
{
    g_atomic_int_or(&m->ged_events, VMM_ACPI_GED_EVT_POWERDOWN);
    if (!m->vm.irqchip)
        return;
    /* Edge-triggered GSI 9: the rising edge is the event. */
    VmmIrqLine line = { .vm = &m->vm, .gsi = VMM_GED_IRQ };
    vmm_irq_line_set(&line, TRUE);
    vmm_irq_line_set(&line, FALSE);
}

static gboolean add_devices(VmmMachine *m, GError **error)
{
    VmmSerialHost com1_host = { .write = com1_output, .rx_ready = com1_rx_ready,
                                .set_irq = com1_set_irq, .opaque = m };
    m->com1_irq = (VmmIrqLine){ .vm = &m->vm, .gsi = VMM_SERIAL_COM1_IRQ };
    m->com1 = vmm_serial_new("com1", &com1_host);
    VmmI8042Host i8042_host = { .reset = i8042_reset, .opaque = m };
    m->i8042 = vmm_i8042_new(&i8042_host);
    return vmm_bus_add(m->vm.pio, "serial com1", VMM_SERIAL_COM1_BASE, VMM_SERIAL_NUM_REGS,
                       &com1_ops, m, error) &&
           vmm_bus_add(m->vm.pio, "i8042 data", VMM_I8042_DATA_PORT, 1, &i8042_data_ops, m, error) &&
           vmm_bus_add(m->vm.pio, "i8042 command", VMM_I8042_COMMAND_PORT, 1, &i8042_cmd_ops, m,
                       error) &&
           vmm_bus_add(m->vm.mmio, "acpi registers", VMM_ACPI_REGS_ADDR, VMM_ACPI_REGS_SIZE,
                       &acpi_regs_ops, m, error);
}

/* ---- Images ------------------------------------------------------------------ */

/* The whole of FD, mapped read-only: the loader copies the parts it needs
 * straight from the page cache into guest RAM (a 66 MiB vmlinux is not read
 * into a buffer first). mmap leaves the fd's offset, shared with vmmd, alone.
 * A file that shrinks while mapped would fault: vmmd opened it read-only and
 * the guest does not start without it, so that is vmmd's user's doing. */
typedef struct {
    guint8 *data;
    gsize size;
} Image;

static gboolean map_image(int fd, const char *what, Image *img, GError **error)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return vmm_set_errno(error, errno, "vm-start: %s: fstat", what);
    if (!S_ISREG(st.st_mode) || st.st_size <= 0 || (guint64)st.st_size > MAX_IMAGE_SIZE) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "vm-start: %s: not a regular file of 1 byte to 1 GiB", what);
        return FALSE;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED)
        return vmm_set_errno(error, errno, "vm-start: %s: mmap", what);
    img->data = p;
    img->size = (gsize)st.st_size;
    return TRUE;
}

static void unmap_image(Image *img)
{
    if (img->data)
        munmap(img->data, img->size);
    img->data = NULL;
}

static gboolean load_guest(VmmMachine *m, const VmmMachineSpec *spec, VmmBootInfo *boot,
                           GError **error)
{
    static const VmmSerialPort com1 = { .port = VMM_SERIAL_COM1_BASE, .irq = VMM_SERIAL_COM1_IRQ };
    VmmVirtioMmioSlot virtio[VMM_VIRTIO_MMIO_MAX];
    guint n_disks = vmm_disks_slots(spec->disks, virtio, VMM_VIRTIO_MMIO_MAX);
    guint n_rngs = vmm_rngs_slots(spec->rngs, n_disks, virtio + n_disks, VMM_VIRTIO_MMIO_MAX - n_disks);
    guint n_9p = vmm_fsdevs_slots(spec->fsdevs, n_disks + n_rngs, virtio + n_disks + n_rngs,
                                  VMM_VIRTIO_MMIO_MAX - n_disks - n_rngs);
    VmmGuestConfig cfg = {
        .ram_size = spec->ram_size, .ncpus = MAX(spec->vcpus, 1), .serial = &com1, .n_serial = 1,
        .virtio = virtio,
        .n_virtio = n_disks + n_rngs + n_9p,
    };
    VmmAcpiTables tables;
    Image kernel = { 0 }, initrd = { 0 };
    VmmBootImages img = { .cmdline = spec->cmdline };

    vmm_debug("vm-start: guest RAM mapped");
    if (!vmm_guest_config_check(&cfg, error) ||
        !vmm_acpi_build(&cfg, m->vm.ram, m->vm.ram_size, &tables, error) ||
        !map_image(spec->kernel_fd, "kernel", &kernel, error))
        return FALSE;
    if (spec->initrd_fd >= 0 && !map_image(spec->initrd_fd, "initrd", &initrd, error)) {
        unmap_image(&kernel);
        return FALSE;
    }
    img.kernel = kernel.data;
    img.kernel_size = kernel.size;
    img.initrd = initrd.data;
    img.initrd_size = initrd.size;
    img.rsdp_addr = tables.rsdp;
    vmm_debug("vm-start: ACPI tables written, kernel and initrd mapped");
    gboolean ok = vmm_boot_load(&cfg, &img, m->vm.ram, m->vm.ram_size, boot, error);
    vmm_debug("vm-start: kernel and initrd loaded");
    unmap_image(&kernel);
    unmap_image(&initrd);
    return ok;
}

/* ---- The vCPU thread -------------------------------------------------------- */

/* Parks the calling vCPU thread while the machine is paused. */
static void wait_while_paused(VmmMachine *m)
{
    g_mutex_lock(&m->run_lock);
    if (m->paused && !g_atomic_int_get(&m->ended)) {
        m->parked++;
        g_cond_broadcast(&m->run_cond);
        while (m->paused && !g_atomic_int_get(&m->ended))
            g_cond_wait(&m->run_cond, &m->run_lock);
        m->parked--;
    }
    g_mutex_unlock(&m->run_lock);
}

static gpointer vcpu_thread(gpointer data)
{
    VmmMachineCpu *cpu = data;
    VmmMachine *m = cpu->m;
    g_atomic_int_set(&cpu->tid, (gint)gettid());
    /* A console whose reader went away must give EPIPE, not kill us. */
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);
    g_autoptr(GError) restrict_err = NULL;
    if (!vmm_sandbox_restrict_thread("vcpu-worker vCPU thread", vmm_vcpu_thread_denied(), &restrict_err)) {
        machine_end(m, VMM_MACHINE_END_ERROR, restrict_err->message);
        return NULL;
    }
    for (;;) {
        wait_while_paused(m);
        if (g_atomic_int_get(&m->ended))
            break;
        g_autoptr(GError) err = NULL;
        VmmVcpuExit exit = vmm_vcpu_run(cpu->vcpu, &err);
        switch (exit) {
        case VMM_VCPU_EXIT_HLT:
            /* Only without the irqchip: no interrupt can wake it. */
            machine_end(m, VMM_MACHINE_END_SHUTDOWN, "guest-hlt");
            break;
        case VMM_VCPU_EXIT_POWEROFF:
            machine_end(m, VMM_MACHINE_END_SHUTDOWN, "guest-poweroff");
            break;
        case VMM_VCPU_EXIT_CRASH:
            machine_end(m, VMM_MACHINE_END_SHUTDOWN, "guest-panic");
            break;
        case VMM_VCPU_EXIT_SHUTDOWN: {
            /* A triple fault says nothing by itself: leave the state behind. */
            g_autofree char *state = vmm_vcpu_describe(cpu->vcpu);
            vmm_warn("guest triple fault: %s", state);
            machine_end(m, VMM_MACHINE_END_RESET, "guest-triple-fault");
            break;
        }
        case VMM_VCPU_EXIT_RESET:
            machine_end(m, VMM_MACHINE_END_RESET, "guest-reset");
            break;
        case VMM_VCPU_EXIT_STOPPED:
            break;      /* a kick: the loop condition decides */
        case VMM_VCPU_EXIT_ERROR:
            machine_end(m, VMM_MACHINE_END_ERROR, err ? err->message : "a vCPU failed");
            break;
        }
    }
    return NULL;
}

/* ---- Life cycle ----------------------------------------------------------- */

/* vCPU 0 starts at the kernel's entry; the others are application processors
 * that the in-kernel LAPIC keeps waiting (KVM's mp_state for a vCPU that is
 * not the BSP) until the guest sends them INIT and SIPI. */
static gboolean create_vcpus(VmmMachine *m, const VmmBootInfo *boot, GError **error)
{
    for (guint i = 0; i < m->n_vcpus; i++) {
        m->cpus[i].m = m;
        m->cpus[i].vcpu = vmm_vcpu_new(&m->vm, i, error);
        if (!m->cpus[i].vcpu)
            return FALSE;
    }
    return vmm_vcpu_load_boot_state(m->cpus[0].vcpu, &boot->cpu, error);
}

static void start_vcpu_threads(VmmMachine *m)
{
    for (guint i = 0; i < m->n_vcpus; i++) {
        g_autofree char *name = g_strdup_printf("vcpu%u", i);
        m->cpus[i].thread = g_thread_new(name, vcpu_thread, &m->cpus[i]);
    }
}

void vmm_machine_pause(VmmMachine *m)
{
    g_mutex_lock(&m->run_lock);
    m->paused = TRUE;
    g_mutex_unlock(&m->run_lock);
    kick_all(m);
    /* Back only when every vCPU is out of KVM_RUN: the caller may then read
     * or change guest state. A thread that ends is as good as parked. */
    g_mutex_lock(&m->run_lock);
    while (m->parked < m->n_vcpus && !g_atomic_int_get(&m->ended))
        g_cond_wait(&m->run_cond, &m->run_lock);
    g_mutex_unlock(&m->run_lock);
}

void vmm_machine_resume(VmmMachine *m)
{
    g_mutex_lock(&m->run_lock);
    m->paused = FALSE;
    g_cond_broadcast(&m->run_cond);
    g_mutex_unlock(&m->run_lock);
}

guint vmm_machine_n_vcpus(VmmMachine *m)
{
    return m->n_vcpus;
}

int vmm_machine_vcpu_tid(VmmMachine *m, guint index)
{
    return index < m->n_vcpus ? g_atomic_int_get(&m->cpus[index].tid) : 0;
}

gboolean vmm_machine_paused(VmmMachine *m)
{
    g_mutex_lock(&m->run_lock);
    gboolean paused = m->paused;
    g_mutex_unlock(&m->run_lock);
    return paused;
}

VmmMachine *vmm_machine_start(VmmKvm *kvm, uv_loop_t *loop, const VmmMachineSpec *spec,
                              VmmMachineEndFn on_end, gpointer user, GError **error)
{
    VmmMachine *m = g_new0(VmmMachine, 1);
    VmmVmOptions opts = { .irqchip = spec->irqchip };
    VmmBootInfo boot;

    m->on_end = on_end;
    m->user = user;
    m->n_vcpus = MAX(spec->vcpus, 1);
    m->cpus = g_new0(VmmMachineCpu, m->n_vcpus);
    g_mutex_init(&m->run_lock);
    g_cond_init(&m->run_cond);
    uv_async_init(loop, &m->ended_async, on_ended_async);
    m->ended_async.data = m;
    m->async_open = TRUE;
    /* A running guest does not keep the helper's loop alive. */
    uv_unref((uv_handle_t *)&m->ended_async);
    if (kvm->vm_fd < 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "vm-start: no KVM VM (setup-kvm first)");
        goto fail;
    }
    if (!vmm_vm_init(&m->vm, kvm, &opts, error))
        goto fail;
    m->vm_ready = TRUE;
    vmm_debug("vm-start: KVM VM set up");
    if (!vmm_vm_map_ram(&m->vm, spec->ram_fd, spec->ram_size, &spec->ram_mapping, error) ||
        !load_guest(m, spec, &boot, error) || !add_devices(m, error) || !add_ged(m, error))
        goto fail;
    m->console = spec->console;
    if (m->console)
        vmm_chardev_set_receiver(m->console, com1_receive, m);
    m->disks = spec->disks;
    if (!vmm_disks_plug(m->disks, &m->vm, error))
        goto fail;
    guint n_virtio = vmm_disks_count(m->disks) + vmm_rngs_count(spec->rngs) + vmm_fsdevs_count(spec->fsdevs);
    if (n_virtio > VMM_VIRTIO_MMIO_MAX) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%u virtio devices: the machine has %d "
                    "virtio-mmio slots", n_virtio, VMM_VIRTIO_MMIO_MAX);
        goto fail;
    }
    m->rngs = spec->rngs;
    if (!vmm_rngs_plug(m->rngs, &m->vm, vmm_disks_count(m->disks), error))
        goto fail;
    m->fsdevs = spec->fsdevs;
    if (!vmm_fsdevs_plug(m->fsdevs, &m->vm, vmm_disks_count(m->disks) + vmm_rngs_count(m->rngs), error))
        goto fail;
    vmm_debug("vm-start: devices plugged");
    if (!create_vcpus(m, &boot, error))
        goto fail;
    vmm_debug("vm-start: vCPUs created");
    m->paused = spec->start_paused;
    start_vcpu_threads(m);
    vmm_info("vm-start: %s kernel, entry 0x%" G_GINT64_MODIFIER "x, %" G_GUINT64_FORMAT " MiB RAM, "
             "%u vCPU%s%s", boot.kind == VMM_BOOT_PVH ? "PVH" : "bzImage", boot.entry,
             spec->ram_size >> 20, m->n_vcpus, m->n_vcpus == 1 ? "" : "s",
             m->paused ? ", paused" : "");
    return m;

fail:
    vmm_machine_free(m);
    return NULL;
}

void vmm_machine_stop(VmmMachine *m)
{
    if (!m)
        return;
    /* The end this records reaches nobody: the owner is going away. */
    m->on_end = NULL;
    g_atomic_int_set(&m->ended, 1);
    g_mutex_lock(&m->run_lock);
    g_cond_broadcast(&m->run_cond);     /* parked threads see the end */
    g_mutex_unlock(&m->run_lock);
    kick_all(m);
    for (guint i = 0; i < m->n_vcpus; i++) {
        if (m->cpus[i].thread)
            g_thread_join(m->cpus[i].thread);
        m->cpus[i].thread = NULL;
    }
}

static void free_machine_memory(uv_handle_t *h)
{
    g_free(h);      /* the machine itself: ended_async is its first member */
}

static void machine_free(VmmMachine *m, gboolean keep_devices);

void vmm_machine_free(VmmMachine *m)
{
    machine_free(m, FALSE);
}

void vmm_machine_free_for_reset(VmmMachine *m)
{
    machine_free(m, TRUE);
}

static void machine_free(VmmMachine *m, gboolean keep_devices)
{
    if (!m)
        return;
    vmm_machine_stop(m);
    for (guint i = 0; i < m->n_vcpus; i++) {
        vmm_vcpu_free(m->cpus[i].vcpu);
        m->cpus[i].vcpu = NULL;
    }
    if (m->console)
        vmm_chardev_set_receiver(m->console, NULL, NULL);
    m->console = NULL;
    vmm_serial_free(m->com1);
    m->com1 = NULL;
    vmm_i8042_free(m->i8042);
    m->i8042 = NULL;
    if (keep_devices) {
        vmm_disks_detach(m->disks);
        vmm_fsdevs_detach(m->fsdevs);
    } else {
        vmm_disks_unplug(m->disks);
        vmm_fsdevs_unplug(m->fsdevs);
    }
    m->disks = NULL;
    m->fsdevs = NULL;
    vmm_rngs_unplug(m->rngs);   /* keeps the sources; plugging makes new devices */
    m->rngs = NULL;
    if (m->vm_ready)
        vmm_vm_cleanup(&m->vm);
    m->vm_ready = FALSE;
    g_clear_pointer(&m->reason, g_free);
    g_clear_pointer(&m->cpus, g_free);
    m->n_vcpus = 0;
    g_mutex_clear(&m->run_lock);
    g_cond_clear(&m->run_cond);
    if (m->async_open)
        uv_close((uv_handle_t *)&m->ended_async, free_machine_memory);
    else
        g_free(m);
}
