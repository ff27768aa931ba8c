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

typedef struct VmmVirtioRng VmmVirtioRng;

/* FD stays the caller's (it is not closed by vmm_virtio_rng_free()). */
VmmVirtioRng *vmm_virtio_rng_new(const char *id, const VmmGuestMem *mem, int fd);
void vmm_virtio_rng_free(VmmVirtioRng *rng);
VmmVirtioMmio *vmm_virtio_rng_transport(VmmVirtioRng *rng);
/* Serves waiting requests; returns TRUE when requests are left waiting for
 * the fd to become readable. */
bool vmm_virtio_rng_process(VmmVirtioRng *rng);
