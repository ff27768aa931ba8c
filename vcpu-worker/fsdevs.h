/* vcpu-worker's virtio-9p devices (-device virtio-9p-device, -virtfs): each
 * forwards the guest's 9P messages to fsd over the socket vmmd passed
 * (virtio-9p.h). "fsdev-attach" checks the socket with a Tversion and
 * registers the device before the guest exists; vm-start plugs the devices
 * into the virtio-mmio slots after the drives and the rngs; "fsdev-reconnect"
 * gives a device a new socket after fsd was restarted. */
#pragma once
#include "vcpu-worker/boot.h"
#include "vcpu-worker/vm.h"

#include "common/helper.h"

#include <json-glib/json-glib.h>
#include <uv.h>

typedef struct VmmFsdevs VmmFsdevs;

/* Device DEVICE (of fsdev FSDEV) lost its connection to fsd (REASON);
 * FAILED requests were answered EIO. Called on LOOP's thread. */
typedef void (*VmmFsdevLostFn)(const char *device, const char *fsdev, const char *reason,
                               unsigned failed, gpointer opaque);

VmmFsdevs *vmm_fsdevs_new(uv_loop_t *loop, VmmFsdevLostFn lost, gpointer opaque);
/* Unplugs (if needed) and frees; LOOP must still run once (a handle closes). */
void vmm_fsdevs_free(VmmFsdevs *f);
/* args {"device", "fsdev"?, "mount-tag"}; FD: a socket to fsd (taken, also
 * on failure). Returns {"msize", "version"} from the probe. */
JsonObject *vmm_fsdevs_attach(VmmFsdevs *f, JsonObject *args, int fd, GError **error);
gboolean vmm_fsdevs_reconnect(VmmFsdevs *f, const char *device, int fd, bool server_ram, GError **error);
guint vmm_fsdevs_count(VmmFsdevs *f);
/* The windows of slots FIRST, FIRST + 1, ... for the ACPI tables; at most MAX. */
guint vmm_fsdevs_slots(VmmFsdevs *f, guint first, VmmVirtioMmioSlot *slots, guint max);
/* Creates the devices on VM (RAM mapped) in slots FIRST, FIRST + 1, ... */
gboolean vmm_fsdevs_plug(VmmFsdevs *f, VmmVm *vm, guint first, GError **error);
void vmm_fsdevs_unplug(VmmFsdevs *f);
/* For a machine reset: resets every device and takes it out of the VM,
 * keeping it and its connection to fsd for the next vmm_fsdevs_plug. */
void vmm_fsdevs_detach(VmmFsdevs *f);

/* vcpu-worker's commands fsdev-attach and fsdev-reconnect (fd 0: the
 * socket); *FSDEVS is made on first use, and a lost connection becomes the
 * fsdev-disconnected event on H's channel. */
void vmm_fsdevs_command(VmmFsdevs **fsdevs, VmmHelper *h, VmmChannelRequest *req);
