/* virtio-rng (virtio 1.x section 5.4): fills the guest's buffers with bytes
 * read from an entropy fd (the rng-random object's file, or a pipe from
 * rng-builtin). A non-blocking fd that runs dry leaves the request queued:
 * the owner polls the fd and calls vmm_virtio_rng_process() again. */
#pragma once
#include <glib.h>
#include <stdbool.h>

#include "vcpu-worker/guest-mem.h"
#include "vcpu-worker/virtio-mmio.h"

/* The most bytes one request gets per read. */
#define VMM_VIRTIO_RNG_MAX_CHUNK 65536
/* QEMU's defaults: max-bytes INT64_MAX (no limit), period 2^16 ms. */
#define VMM_VIRTIO_RNG_DEFAULT_PERIOD_MS 65536u

typedef struct VmmVirtioRng VmmVirtioRng;

/* FD stays the caller's (it is not closed by vmm_virtio_rng_free()). */
VmmVirtioRng *vmm_virtio_rng_new(const char *id, const VmmGuestMem *mem, int fd);
void vmm_virtio_rng_free(VmmVirtioRng *rng);
VmmVirtioMmio *vmm_virtio_rng_transport(VmmVirtioRng *rng);
/* At most MAX_BYTES per PERIOD_MS reach the guest (-device
 * virtio-rng-device,max-bytes=,period=); G_MAXINT64 or more: no limit. */
void vmm_virtio_rng_set_limit(VmmVirtioRng *rng, guint64 max_bytes, guint32 period_ms);
/* Serves waiting requests; returns TRUE when requests are left waiting for
 * the fd to become readable. *WAKE_MS: the time (vmm_virtio_rng_now_ms())
 * at which requests held back by the rate limit can go on, -1 if none are. */
bool vmm_virtio_rng_process(VmmVirtioRng *rng, gint64 *wake_ms);
/* The same at NOW_MS, for tests that move the clock. */
bool vmm_virtio_rng_process_at(VmmVirtioRng *rng, gint64 now_ms, gint64 *wake_ms);
/* The monotonic clock of the rate limit, in ms. */
gint64 vmm_virtio_rng_now_ms(void);
