/* -device virtio-rng-device[,rng=ID][,id=][,max-bytes=][,period=] and the
 * entropy sources behind it: an rng-random object's file (default
 * /dev/urandom) or rng-builtin (the kernel's generator, read through
 * /dev/urandom: the same source as QEMU's getrandom()). A device without
 * rng= gets a built-in source, as in QEMU 7.2. vmmd opens the sources at
 * startup (a bad filename is a startup error, as QEMU's) and hands each
 * device's fd to vcpu-worker with "rng-attach" before "vm-start". */
#pragma once
#include <glib.h>

struct VmmVmConfig;
struct Vmmd;
struct VmmHelperProc;

typedef struct {
    char *id;                  /* -device id=, or "rng0", "rng1", ... */
    char *rng;                 /* rng= object id, or NULL: built in */
    guint64 max_bytes;         /* per period; QEMU's default INT64_MAX */
    guint32 period_ms;         /* QEMU's default 65536 */
} VmmRngDevice;

void vmm_rng_device_free(gpointer p);
gboolean vmm_rng_device_is_rng(const char *driver);
/* Parses one -device virtio-rng-device,... into VM's rng_devices. */
gboolean vmm_rng_device_parse(struct VmmVmConfig *vm, const char *value, GError **error);
/* Checks rng= against the -object list (objects may follow -device). */
gboolean vmm_rng_devices_finish(struct VmmVmConfig *vm, GError **error);

/* Opens every device's source; errors name the file, as QEMU's. */
gboolean vmm_rng_open_sources(struct Vmmd *d, GError **error);
/* Sends rng-attach for every device to vcpu-worker (before vm-start, on the
 * same channel, so that it is handled first); FALSE if one could not be sent. */
gboolean vmm_rng_attach_all(struct Vmmd *d, struct VmmHelperProc *hp, GError **error);
void vmm_rng_close_sources(struct Vmmd *d);
