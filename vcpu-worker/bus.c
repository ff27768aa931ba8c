/* Device windows on the port-I/O and MMIO address spaces. A sorted array with
 * binary search: a VM has a few dozen windows at most, and lookups happen on
 * every exit while changes happen at setup and hotplug. */
#include "vcpu-worker/bus.h"
#include "common/error.h"

#include <string.h>

typedef struct {
    guint64 base;
    guint64 size;
    const VmmBusOps *ops;
    void *opaque;
    char *device;
} BusWindow;

struct VmmBus {
    char *name;
    GRWLock lock;
    GArray *windows;        /* BusWindow, sorted by base, never overlapping */
    guint64 unclaimed;      /* __atomic */
};

VmmBus *vmm_bus_new(const char *name)
{
    VmmBus *bus = g_new0(VmmBus, 1);
    bus->name = g_strdup(name);
    g_rw_lock_init(&bus->lock);
    bus->windows = g_array_new(FALSE, FALSE, sizeof(BusWindow));
    return bus;
}

void vmm_bus_free(VmmBus *bus)
{
    if (!bus)
        return;
    for (guint i = 0; i < bus->windows->len; i++)
        g_free(g_array_index(bus->windows, BusWindow, i).device);
    g_array_free(bus->windows, TRUE);
    g_rw_lock_clear(&bus->lock);
    g_free(bus->name);
    g_free(bus);
}

/* Index of the first window whose base is above ADDR. */
static guint first_above(const GArray *windows, guint64 addr)
{
    guint lo = 0, hi = windows->len;
    while (lo < hi) {
        guint mid = lo + (hi - lo) / 2;
        if (g_array_index(windows, BusWindow, mid).base <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static gboolean window_contains(const BusWindow *w, guint64 addr)
{
    return addr >= w->base && addr - w->base < w->size;
}

static const BusWindow *find_window(const VmmBus *bus, guint64 addr)
{
    guint i = first_above(bus->windows, addr);
    if (i == 0)
        return NULL;
    const BusWindow *w = &g_array_index(bus->windows, BusWindow, i - 1);
    return window_contains(w, addr) ? w : NULL;
}

gboolean vmm_bus_add(VmmBus *bus, const char *device, guint64 base, guint64 size,
                     const VmmBusOps *ops, void *opaque, GError **error)
{
    if (size == 0 || base + size - 1 < base) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s bus: window of %s at 0x%" G_GINT64_MODIFIER "x size 0x%"
                    G_GINT64_MODIFIER "x is empty or wraps around", bus->name, device, base, size);
        return FALSE;
    }
    g_rw_lock_writer_lock(&bus->lock);
    guint i = first_above(bus->windows, base);
    const BusWindow *prev = i > 0 ? &g_array_index(bus->windows, BusWindow, i - 1) : NULL;
    const BusWindow *next = i < bus->windows->len ? &g_array_index(bus->windows, BusWindow, i) : NULL;
    const BusWindow *clash = NULL;
    if (prev && base - prev->base < prev->size)
        clash = prev;
    else if (next && next->base - base < size)
        clash = next;
    if (clash) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s bus: %s at 0x%" G_GINT64_MODIFIER "x..0x%" G_GINT64_MODIFIER
                    "x overlaps %s at 0x%" G_GINT64_MODIFIER "x..0x%" G_GINT64_MODIFIER "x",
                    bus->name, device, base, base + size - 1, clash->device, clash->base,
                    clash->base + clash->size - 1);
        g_rw_lock_writer_unlock(&bus->lock);
        return FALSE;
    }
    BusWindow w = { base, size, ops, opaque, g_strdup(device) };
    g_array_insert_val(bus->windows, i, w);
    g_rw_lock_writer_unlock(&bus->lock);
    return TRUE;
}

gboolean vmm_bus_remove(VmmBus *bus, guint64 base)
{
    gboolean found = FALSE;
    g_rw_lock_writer_lock(&bus->lock);
    guint i = first_above(bus->windows, base);
    if (i > 0 && g_array_index(bus->windows, BusWindow, i - 1).base == base) {
        g_free(g_array_index(bus->windows, BusWindow, i - 1).device);
        g_array_remove_index(bus->windows, i - 1);
        found = TRUE;
    }
    g_rw_lock_writer_unlock(&bus->lock);
    return found;
}

/* Copies the window's callbacks out under the lock, so the device runs
 * without it. */
static gboolean lookup(VmmBus *bus, guint64 addr, guint32 len, BusWindow *out)
{
    gboolean ok = FALSE;
    g_rw_lock_reader_lock(&bus->lock);
    const BusWindow *w = find_window(bus, addr);
    if (w && len <= w->size - (addr - w->base)) {
        *out = *w;
        ok = TRUE;
    }
    g_rw_lock_reader_unlock(&bus->lock);
    if (!ok)
        __atomic_fetch_add(&bus->unclaimed, 1, __ATOMIC_RELAXED);
    return ok;
}

gboolean vmm_bus_read(VmmBus *bus, guint64 addr, guint8 *data, guint32 len)
{
    BusWindow w;
    if (!lookup(bus, addr, len, &w) || !w.ops->read) {
        memset(data, 0xff, len);
        return FALSE;
    }
    w.ops->read(w.opaque, addr - w.base, data, len);
    return TRUE;
}

gboolean vmm_bus_write(VmmBus *bus, guint64 addr, const guint8 *data, guint32 len)
{
    BusWindow w;
    if (!lookup(bus, addr, len, &w) || !w.ops->write)
        return FALSE;
    w.ops->write(w.opaque, addr - w.base, data, len);
    return TRUE;
}

guint64 vmm_bus_unclaimed(VmmBus *bus)
{
    return __atomic_load_n(&bus->unclaimed, __ATOMIC_RELAXED);
}
