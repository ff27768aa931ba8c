/* The VM's disks at run time (docs/drives.md). For each virtio-blk device
 * vmmd opens the drive's images (drive-files.h), makes a socketpair, and
 * sends blockd "drive-add" with the image fds and one end; the other end goes
 * to vcpu-worker in "drive-attach", whose NBD client does the handshake. The
 * guest starts (vm-start) once every device is attached.
 *
 * When blockd is restarted, every drive is added again with fresh fds and a
 * fresh socketpair, and vcpu-worker gets the new end in "drive-reconnect": its
 * NBD client resubmits what was in flight and the guest sees no error. */
#pragma once
#include "vmmd/vmmd.h"

/* A helper came up (RESTARTED: not for the first time). */
void vmm_drives_helper_up(Vmmd *d, VmmHelperProc *hp, gboolean restarted);
/* Every device attached in vcpu-worker (TRUE without devices). */
gboolean vmm_drives_ready(Vmmd *d);
/* vcpu-worker's drive events: BLOCK_IO_ERROR, and for action "stop" the VM
 * stops in run state "io-error" (STOP); FALSE if NAME is not one. */
gboolean vmm_drives_handle_event(Vmmd *d, const char *name, JsonObject *data);
/* QMP cont: every drive's I/O status is "ok" again (QEMU resets it in cont;
 * vcpu-worker retries the kept requests on vm-cont). */
void vmm_drives_cont(Vmmd *d);
/* QMP query-block's list, QEMU's shape. */
JsonArray *vmm_drives_query_block(Vmmd *d);
void vmm_drives_free(Vmmd *d);
