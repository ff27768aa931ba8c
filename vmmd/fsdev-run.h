/* The VM's 9p exports at run time (docs/fsdev.md). For each virtio-9p device
 * whose fsdev has path=, vmmd opens the export directory (O_PATH|O_DIRECTORY),
 * makes a socketpair and sends fsd "fsdev-add" with the directory and one
 * end; the other end goes to vcpu-worker in "fsdev-attach", which checks it
 * with a Tversion. With socket=PATH vmmd connects to the fsd that listens
 * there; with sock_fd=N it passes its own fd N. The guest starts (vm-start)
 * once every device is attached.
 *
 * When fsd is restarted, every device gets a fresh socketpair and vcpu-worker
 * the new end in "fsdev-reconnect". The guest's fids died with the old fsd:
 * vcpu-worker answered what was in flight with EIO and reported it
 * (fsdev-disconnected), which vmmd turns into the QMP event FSDEV_IO_ERROR. */
#pragma once
#include "vmmd/vmmd.h"

/* A helper came up (RESTARTED: not for the first time). */
void vmm_fsdevs_helper_up(Vmmd *d, VmmHelperProc *hp, gboolean restarted);
/* Every virtio-9p device attached in vcpu-worker (TRUE without devices). */
gboolean vmm_fsdevs_ready(Vmmd *d);
/* vcpu-worker's fsdev events; FALSE if NAME is not one. */
gboolean vmm_fsdevs_handle_event(Vmmd *d, const char *name, JsonObject *data);
void vmm_fsdevs_free(Vmmd *d);
/* Whether an export fsd serves for this VM uses security_model=passthrough
 * or none: fsd then keeps the file capabilities (its --passthrough). */
gboolean vmm_fsdev_needs_passthrough(Vmmd *d);
