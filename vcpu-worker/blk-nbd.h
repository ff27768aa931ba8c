/* The virtio-blk backend of a VM's drive: an asynchronous NBD client speaking
 * to blockd over the socketpair end vmmd hands over (docs/drives.md).
 *
 * Every backend call becomes one NBD command (READ and WRITE split at the
 * server's maximum block size) sent at once from the calling thread; a reader
 * thread per connection matches simple replies to requests by cookie and
 * completes them, in any order, so many requests are in flight. Negotiation
 * is fixed newstyle with NBD_OPT_GO (structured replies are not asked for),
 * after NBD_OPT_VMM_GUEST_MEMORY (see vmm_blk_nbd_set_guest_memory).
 *
 * When the connection drops (blockd died), requests in flight and new ones
 * wait; vmm_blk_nbd_connect() with a new socket negotiates again and sends
 * every one of them anew (NBD requests are idempotent, and blockd acknowledges
 * a write only once it is written), so the guest sees no error. */
#pragma once
#include "vcpu-worker/virtio-blk.h"

#include <glib.h>

typedef struct VmmBlkNbd VmmBlkNbd;

/* NAME is the export (the drive id). */
VmmBlkNbd *vmm_blk_nbd_new(const char *name);
/* Sends NBD_CMD_DISC, closes the socket and joins the reader. Requests still
 * waiting are completed with -EIO. */
void vmm_blk_nbd_free(VmmBlkNbd *c);

/* Negotiates on FD (a connected stream socket; taken), bounded by a 10 s
 * timeout, then serves requests on it. A second call replaces a dropped (or
 * live) connection: the export must have the same size. */
gboolean vmm_blk_nbd_connect(VmmBlkNbd *c, int fd, GError **error);
/* Guest RAM as mapped here (BASE, SIZE bytes of the memfd blockd maps too):
 * READ and WRITE whose buffers lie in it then send blockd where the data is
 * instead of the data, where blockd agreed to it (NBD_OPT_VMM_GUEST_MEMORY,
 * proto/nbd.h). Set again after a machine reset maps RAM anew; BASE NULL
 * turns it off. */
void vmm_blk_nbd_set_guest_memory(VmmBlkNbd *c, guint8 *base, guint64 size);
/* Whether the current connection moves data through guest memory. */
gboolean vmm_blk_nbd_guest_memory(VmmBlkNbd *c);
/* The negotiation's bound (10 s by default; the fuzz target's is short). */
void vmm_blk_nbd_set_handshake_timeout(VmmBlkNbd *c, guint ms);
gboolean vmm_blk_nbd_connected(VmmBlkNbd *c);
guint64 vmm_blk_nbd_size(VmmBlkNbd *c);
gboolean vmm_blk_nbd_read_only(VmmBlkNbd *c);
guint16 vmm_blk_nbd_flags(VmmBlkNbd *c);      /* transmission flags */
guint vmm_blk_nbd_in_flight(VmmBlkNbd *c);    /* requests not yet completed */

/* Called (from the reader thread) when a connection drops: WHY says how. */
typedef void (*VmmBlkNbdLostFn)(VmmBlkNbd *c, const char *why, gpointer opaque);
void vmm_blk_nbd_set_lost_hook(VmmBlkNbd *c, VmmBlkNbdLostFn fn, gpointer opaque);

/* The completion of a backend call: vmm_virtio_blk_complete by default
 * (tests put their own). */
typedef void (*VmmBlkNbdCompleteFn)(VmmBlkRequest *req, int ret);
void vmm_blk_nbd_set_complete(VmmBlkNbd *c, VmmBlkNbdCompleteFn fn);

/* The backend operations; the backend pointer is the VmmBlkNbd. */
extern const VmmBlkBackendOps vmm_blk_nbd_ops;

/* NBD error values to -errno. */
int vmm_blk_nbd_errno(guint32 nbd_error);
