/* One virtio-mmio device plugged into the running VM: what every device of
 * vcpu-worker needs around its transport. The register window on the MMIO bus
 * (slot n: base 0xfeb00000 + n * 0x1000, GSI 16 + n, as the DSDT describes
 * it), QueueNotify on an ioeventfd (KVM does not exit to user space for a
 * kick; a kick that does reach the vCPU thread is forwarded to the same fd),
 * an I/O thread that runs the device's queue work when kicked, and the
 * interrupt through KVM_IRQ_LINE. */
#pragma once
#include "vcpu-worker/guest-mem.h"
#include "vcpu-worker/virtio-mmio.h"
#include "vcpu-worker/vm.h"

#include <stdbool.h>

/* The device's queue work, on the slot's I/O thread. TRUE: requests wait
 * for WAIT_FD to become readable (an entropy source that ran dry), and the
 * thread calls again when it is. *WAKE_MS (preset to -1): a time on
 * g_get_monotonic_time() / 1000 at which the thread calls again even
 * without a kick (a rate limit's next period). */
typedef bool (*VmmVirtioSlotWorkFn)(void *opaque, gint64 *wake_ms);

typedef struct {
    const char *name;              /* for the bus and messages: "virtio-rng 'rng0'" */
    guint slot;
    VmmVirtioMmio *transport;      /* the device's; borrowed */
    VmmVirtioSlotWorkFn work;
    void *opaque;
    int wait_fd;                   /* -1: the work never waits on an fd */
} VmmVirtioSlotConfig;

typedef struct VmmVirtioSlot VmmVirtioSlot;

/* Guest RAM of VM as devices see it (low RAM, then the part above 4 GiB). */
void vmm_virtio_slot_guest_mem(VmmVm *vm, VmmGuestMem *mem);
/* The ACPI description of slot N. */
VmmVirtioMmioSlot vmm_virtio_slot_window(guint n);
VmmVirtioSlot *vmm_virtio_slot_plug(VmmVm *vm, const VmmVirtioSlotConfig *config, GError **error);
/* Stops the I/O thread, takes the window off the bus; NULL is fine. */
void vmm_virtio_slot_unplug(VmmVirtioSlot *s);
/* For a machine reset that keeps the device: resets it as its driver would
 * (status 0: requests in flight are forgotten), waits up to TIMEOUT_MS for
 * BUSY(OPAQUE) to say nothing is in flight any more (completions may still
 * write into the old guest RAM until then), then unplugs the slot and leaves
 * the transport without a host. FALSE if the device stayed busy. */
bool vmm_virtio_slot_reset_unplug(VmmVirtioSlot *s, unsigned (*busy)(void *opaque), void *opaque,
                                  unsigned timeout_ms);
