/* One virtio-mmio device plugged into the running VM: see virtio-slot.h. */
#include "vcpu-worker/virtio-slot.h"
#include "vcpu-worker/boot.h"
#include "common/error.h"
#include "common/log.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

struct VmmVirtioSlot {
    VmmVirtioSlotConfig cfg;
    char *name;
    VmmVm *vm;
    VmmIrqLine irq;
    int kick_fd, stop_fd;
    gboolean ioeventfd, on_bus;
    guint8 *shadow;            /* the register page the guest reads (NULL: reads exit) */
    GThread *thread;
};

void vmm_virtio_slot_guest_mem(VmmVm *vm, VmmGuestMem *mem)
{
    guint64 low = vmm_guest_low_ram_size(vm->ram_size), high = vmm_guest_high_ram_size(vm->ram_size);
    vmm_guest_mem_init(mem, vm->ram, low);
    if (high)
        vmm_guest_mem_add_region(mem, VMM_HIGH_RAM_START, vm->ram + low, high, NULL);
}

VmmVirtioMmioSlot vmm_virtio_slot_window(guint n)
{
    return (VmmVirtioMmioSlot){ .base = VMM_VIRTIO_MMIO_BASE + n * VMM_VIRTIO_MMIO_SIZE,
                                .irq = VMM_VIRTIO_IRQ_BASE + n };
}

static guint64 window_base(const VmmVirtioSlot *s)
{
    return VMM_VIRTIO_MMIO_BASE + s->cfg.slot * VMM_VIRTIO_MMIO_SIZE;
}

static void mmio_read(void *opaque, guint64 offset, guint8 *data, guint32 len)
{
    VmmVirtioSlot *s = opaque;
    vmm_virtio_mmio_access(s->cfg.transport, offset, data, len, false);
}

static void mmio_write(void *opaque, guint64 offset, const guint8 *data, guint32 len)
{
    VmmVirtioSlot *s = opaque;
    guint8 buf[8];
    memcpy(buf, data, MIN(len, sizeof(buf)));
    vmm_virtio_mmio_access(s->cfg.transport, offset, buf, MIN(len, sizeof(buf)), true);
}

static const VmmBusOps mmio_ops = { .read = mmio_read, .write = mmio_write };

/* A QueueNotify that reached the vCPU thread (no ioeventfd): the I/O thread
 * does the work, as with one. */
static void on_notify(void *opaque, unsigned queue)
{
    VmmVirtioSlot *s = opaque;
    guint64 one = 1;
    if (write(s->kick_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        vmm_warn("%s: kick: %s", s->name, g_strerror(errno));
}

static void on_set_irq(void *opaque, bool level)
{
    VmmVirtioSlot *s = opaque;
    if (s->vm->irqchip)
        vmm_irq_line_set(&s->irq, level);
}

/* poll()'s timeout until WAKE_MS (-1: none). */
static int poll_timeout(gint64 wake_ms)
{
    if (wake_ms < 0)
        return -1;
    gint64 left = wake_ms - g_get_monotonic_time() / 1000;
    return (int)CLAMP(left, 0, G_MAXINT);
}

static gpointer io_thread(gpointer data)
{
    VmmVirtioSlot *s = data;
    bool waiting = false;
    gint64 wake_ms = -1;
    for (;;) {
        struct pollfd p[3] = {
            { .fd = s->kick_fd, .events = POLLIN },
            { .fd = s->stop_fd, .events = POLLIN },
            { .fd = waiting ? s->cfg.wait_fd : -1, .events = POLLIN },
        };
        int r = poll(p, 3, poll_timeout(wake_ms));
        if (r < 0 && errno != EINTR)
            break;
        if (p[1].revents)
            break;
        guint64 n;
        gboolean kicked = p[0].revents && read(s->kick_fd, &n, sizeof(n)) == sizeof(n);
        gboolean woken = wake_ms >= 0 && g_get_monotonic_time() / 1000 >= wake_ms;
        if (kicked || p[2].revents || woken) {
            wake_ms = -1;
            waiting = s->cfg.work(s->cfg.opaque, &wake_ms) && s->cfg.wait_fd >= 0;
        }
    }
    return NULL;
}

/* The window's registers as a read-only memory slot kept up to date by the
 * transport: a driver's register reads (the interrupt status in every
 * interrupt handler, the config space) cost no exit, which under nested
 * virtualisation is most of what an interrupt costs. Writes still exit.
 * Without read-only slots every access exits as before. Opt-in
 * (VMM_REGPAGE=1 in the environment, which vmmd passes on): with it on,
 * rig/vmmd-disk once ran for 630 s with L1 busy where it takes 80 s, and
 * until that is understood the exiting path is the one CI exercises
 * (docs/devices.md). */
static gboolean register_page_wanted(void)
{
    return g_strcmp0(g_getenv("VMM_REGPAGE"), "1") == 0;
}

static void map_shadow(VmmVirtioSlot *s)
{
    if (!register_page_wanted())
        return;
    void *page = mmap(NULL, VMM_VIRTIO_MMIO_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) {
        vmm_info("%s: no register page (%s); register reads exit", s->name, g_strerror(errno));
        return;
    }
    vmm_virtio_mmio_set_shadow(s->cfg.transport, page);
    g_autoptr(GError) err = NULL;
    if (!vmm_vm_map_readonly(s->vm, VMM_VM_SLOT_FIRST_DEVICE + s->cfg.slot, window_base(s), page,
                             VMM_VIRTIO_MMIO_SIZE, &err)) {
        vmm_info("%s: %s; register reads exit", s->name, err->message);
        vmm_virtio_mmio_set_shadow(s->cfg.transport, NULL);
        munmap(page, VMM_VIRTIO_MMIO_SIZE);
        return;
    }
    s->shadow = page;
}

static void unmap_shadow(VmmVirtioSlot *s)
{
    if (!s->shadow)
        return;
    vmm_vm_unmap_slot(s->vm, VMM_VM_SLOT_FIRST_DEVICE + s->cfg.slot, window_base(s));
    vmm_virtio_mmio_set_shadow(s->cfg.transport, NULL);
    munmap(s->shadow, VMM_VIRTIO_MMIO_SIZE);
    s->shadow = NULL;
}

static VmmIoEvent notify_event(const VmmVirtioSlot *s)
{
    return (VmmIoEvent){ .addr = window_base(s) + VIRTIO_MMIO_QUEUE_NOTIFY, .len = 4,
                         .has_datamatch = FALSE };
}

VmmVirtioSlot *vmm_virtio_slot_plug(VmmVm *vm, const VmmVirtioSlotConfig *config, GError **error)
{
    VmmVirtioSlot *s = g_new0(VmmVirtioSlot, 1);
    s->cfg = *config;
    s->name = g_strdup(config->name);
    s->cfg.name = s->name;
    s->vm = vm;
    s->irq = (VmmIrqLine){ .vm = vm, .gsi = VMM_VIRTIO_IRQ_BASE + config->slot };
    s->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    s->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->kick_fd < 0 || s->stop_fd < 0) {
        vmm_set_errno(error, errno, "%s: eventfd", s->name);
        vmm_virtio_slot_unplug(s);
        return NULL;
    }
    VmmIoEvent ev = notify_event(s);
    g_autoptr(GError) local = NULL;
    s->ioeventfd = vmm_vm_ioeventfd_add(vm, &ev, s->kick_fd, &local);
    if (!s->ioeventfd)
        vmm_info("%s: no ioeventfd (%s); kicks exit to the vCPU thread", s->name, local->message);
    VmmVirtioMmioHost host = { .notify = on_notify, .set_irq = on_set_irq, .opaque = s };
    vmm_virtio_mmio_set_host(s->cfg.transport, &host);
    if (!vmm_bus_add(vm->mmio, s->name, window_base(s), VMM_VIRTIO_MMIO_SIZE, &mmio_ops, s, error)) {
        vmm_virtio_slot_unplug(s);
        return NULL;
    }
    s->on_bus = TRUE;
    map_shadow(s);
    s->thread = g_thread_new("virtio-io", io_thread, s);
    return s;
}

bool vmm_virtio_slot_reset_unplug(VmmVirtioSlot *s, unsigned (*busy)(void *opaque), void *opaque,
                                  unsigned timeout_ms)
{
    if (!s)
        return true;
    VmmVirtioMmio *t = s->cfg.transport;
    vmm_virtio_mmio_write32(t, VIRTIO_MMIO_STATUS, 0);
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    bool idle;
    while (!(idle = busy(opaque) == 0) && g_get_monotonic_time() < deadline)
        g_usleep(2000);
    vmm_virtio_slot_unplug(s);
    /* Late completions find no slot to interrupt through. */
    VmmVirtioMmioHost none = { 0 };
    vmm_virtio_mmio_set_host(t, &none);
    return idle;
}

void vmm_virtio_slot_unplug(VmmVirtioSlot *s)
{
    if (!s)
        return;
    if (s->thread) {
        guint64 one = 1;
        if (write(s->stop_fd, &one, sizeof(one)) < 0)
            vmm_warn("%s: stopping the I/O thread: %s", s->name, g_strerror(errno));
        g_thread_join(s->thread);
    }
    if (s->ioeventfd) {
        VmmIoEvent ev = notify_event(s);
        vmm_vm_ioeventfd_remove(s->vm, &ev, s->kick_fd, NULL);
    }
    unmap_shadow(s);
    if (s->on_bus)
        vmm_bus_remove(s->vm->mmio, window_base(s));
    if (s->kick_fd >= 0)
        close(s->kick_fd);
    if (s->stop_fd >= 0)
        close(s->stop_fd);
    g_free(s->name);
    g_free(s);
}
