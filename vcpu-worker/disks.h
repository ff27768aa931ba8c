/* vcpu-worker's drives (docs/drives.md): one virtio-blk device on a
 * virtio-mmio transport per drive vmmd attaches, backed by the NBD client of
 * blk-nbd.h on the socketpair end vmmd passed.
 *
 * "drive-attach" connects the backend (the NBD handshake gives the capacity)
 * before the guest exists; "vm-start" then plugs every attached drive in
 * attach order into virtio-mmio slot 0, 1, ... (base 0xfeb00000 + n * 0x1000,
 * GSI 16 + n, level-triggered), described in the DSDT. QueueNotify writes go
 * to an ioeventfd (KVM does not exit to user space for them) that wakes the
 * drive's I/O thread, which processes the queue; interrupts go through
 * KVM_IRQ_LINE. "drive-reconnect" gives a drive a new connection after
 * blockd restarted. */
#pragma once
#include "vcpu-worker/boot.h"
#include "vcpu-worker/vm.h"

#include <json-glib/json-glib.h>
#include <uv.h>

typedef struct VmmDisks VmmDisks;

/* A request failed and its drive's werror/rerror action was ACTION
 * ("report", "ignore", "stop", "enospc"); called on LOOP's thread. */
typedef void (*VmmDiskIoErrorFn)(const char *id, const char *action, gboolean is_read, int err,
                                 gpointer opaque);

VmmDisks *vmm_disks_new(uv_loop_t *loop, VmmDiskIoErrorFn on_error, gpointer opaque);
/* Unplugs and frees everything; LOOP must still run once (a handle closes). */
void vmm_disks_free(VmmDisks *d);

/* args {"id", "serial"?, "read-only"?, "writeback"?, "discard"?, "werror"?,
 * "rerror"?}; FD: the NBD socket (taken). Returns {"size", "read-only"}. */
JsonObject *vmm_disks_attach(VmmDisks *d, JsonObject *args, int fd, GError **error);
gboolean vmm_disks_reconnect(VmmDisks *d, const char *id, int fd, GError **error);
guint vmm_disks_count(VmmDisks *d);

/* The transports' windows and interrupts for the ACPI tables; at most MAX. */
guint vmm_disks_slots(VmmDisks *d, VmmVirtioMmioSlot *slots, guint max);
/* Creates the devices on VM (RAM mapped): MMIO windows, ioeventfds, I/O threads. */
gboolean vmm_disks_plug(VmmDisks *d, VmmVm *vm, GError **error);
/* Before VM's RAM goes: stops the I/O threads, ends every NBD connection
 * (requests still waiting fail) and frees the devices. */
void vmm_disks_unplug(VmmDisks *d);
/* The VM runs again (vm-cont): every request a stop action (werror/rerror
 * stop, or enospc on ENOSPC) kept is sent to blockd again, as QEMU's
 * virtio-blk retries them when the VM resumes. One that fails again stops
 * the VM again. */
void vmm_disks_resume(VmmDisks *d);
/* For a machine reset: resets every drive's device, waits for its requests
 * at blockd, and takes it out of the VM, keeping the device and its NBD
 * connection for the next vmm_disks_plug. */
void vmm_disks_detach(VmmDisks *d);
