/* An address space of device windows: one bus for port I/O, one for MMIO.
 * The vCPU threads turn KVM_EXIT_IO / KVM_EXIT_MMIO into vmm_bus_read() and
 * vmm_bus_write(); each window's callbacks see the offset from its base.
 *
 * Locking: lookups take a reader lock, so vCPU threads dispatch in parallel;
 * the device's callbacks run without any bus lock held (the device does its
 * own locking) and must not add or remove windows of the same bus. */
#pragma once
#include <glib.h>

typedef struct {
    /* Fill DATA[0..LEN) from the device register at OFFSET. */
    void (*read)(void *opaque, guint64 offset, guint8 *data, guint32 len);
    /* Store DATA[0..LEN) to the device register at OFFSET. */
    void (*write)(void *opaque, guint64 offset, const guint8 *data, guint32 len);
} VmmBusOps;

typedef struct VmmBus VmmBus;

/* NAME ("pio", "mmio") appears in error messages. */
VmmBus *vmm_bus_new(const char *name);
void vmm_bus_free(VmmBus *bus);

/* Maps [BASE, BASE + SIZE) to OPS/OPAQUE. Refuses an empty window, one that
 * wraps around the address space and one that overlaps a window already
 * there; errors name both devices. OPS is borrowed and must outlive the window. */
gboolean vmm_bus_add(VmmBus *bus, const char *device, guint64 base, guint64 size,
                     const VmmBusOps *ops, void *opaque, GError **error);
/* Unmaps the window starting at BASE; FALSE if there is none. */
gboolean vmm_bus_remove(VmmBus *bus, guint64 base);

/* Dispatch an access. Returns FALSE when no window holds ADDR, or the access
 * runs past the end of the one that does: a read then returns all ones (as an
 * unclaimed ISA/PCI read does) and a write is dropped. */
gboolean vmm_bus_read(VmmBus *bus, guint64 addr, guint8 *data, guint32 len);
gboolean vmm_bus_write(VmmBus *bus, guint64 addr, const guint8 *data, guint32 len);

/* How many accesses found no window (for tests and statistics). */
guint64 vmm_bus_unclaimed(VmmBus *bus);
