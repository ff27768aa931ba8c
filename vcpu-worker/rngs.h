/* vcpu-worker's virtio-rng devices (-device virtio-rng-device): each reads
 * the entropy fd vmmd opened for its rng object (rng-random's file, or
 * /dev/urandom for rng-builtin). "rng-attach" registers one before the guest
 * exists; vm-start plugs them into the virtio-mmio slots after the drives. */
#pragma once
#include "vcpu-worker/boot.h"
#include "vcpu-worker/vm.h"

#include <json-glib/json-glib.h>

typedef struct VmmRngs VmmRngs;

VmmRngs *vmm_rngs_new(void);
/* Unplugs (if needed) and frees; the fds are closed. */
void vmm_rngs_free(VmmRngs *r);
/* args {"id"}; FD: the entropy source (taken, also on failure). */
gboolean vmm_rngs_attach(VmmRngs *r, JsonObject *args, int fd, GError **error);
guint vmm_rngs_count(VmmRngs *r);
/* The windows of slots FIRST, FIRST + 1, ... for the ACPI tables; at most MAX. */
guint vmm_rngs_slots(VmmRngs *r, guint first, VmmVirtioMmioSlot *slots, guint max);
/* Creates the devices on VM (RAM mapped) in slots FIRST, FIRST + 1, ... */
gboolean vmm_rngs_plug(VmmRngs *r, VmmVm *vm, guint first, GError **error);
void vmm_rngs_unplug(VmmRngs *r);
