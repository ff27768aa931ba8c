/* virtio-9p (virtio 1.x section 5.9, "9P transport"): device ID 9, feature
 * VIRTIO_9P_MOUNT_TAG, config space tag_len (le16) then the tag bytes, one
 * request queue. Each request's readable buffers hold one 9P T-message, its
 * writable buffers receive the R-message.
 *
 * The device does not serve 9P itself: it forwards every T-message to a 9P
 * server (fsd) over a connected stream socket, framed as Linux's trans=fd
 * (size[4] delimits messages), and scatters each reply into the writable
 * buffers of its request, in any order. The message bodies go between guest
 * RAM and the socket with writev/readv; only the 7-byte header is rewritten,
 * because the device gives every request a tag of its own on the wire: a
 * reset or a driver reusing a tag can then never pair a reply with the wrong
 * request.
 *
 * When the connection ends (fsd killed), every request in flight is answered
 * Rlerror(EIO) and the lost hook tells the owner; requests made while there
 * is no connection get EIO at once. The fids of the guest's session lived in
 * the old fsd, so after vmm_virtio_9p_connect() gives a new connection, only
 * a Tversion (a new session: a new mount) is forwarded until one succeeds;
 * everything else gets EIO. The guest sees I/O errors, never a hang. */
#pragma once
#include <glib.h>
#include <stdbool.h>

#include "vcpu-worker/guest-mem.h"
#include "vcpu-worker/virtio-mmio.h"

#define VIRTIO_ID_9P 9
#define VIRTIO_9P_F_MOUNT_TAG 0
#define VMM_VIRTIO_9P_QUEUE_SIZE 128

typedef struct VmmVirtio9p VmmVirtio9p;

/* The connection to the server ended (REASON); FAILED requests were answered
 * EIO. Called once per connection, from the device's reader or I/O thread. */
typedef void (*VmmVirtio9pLostFn)(void *opaque, const char *reason, unsigned failed);

/* TAG: the mount tag, at most 65535 bytes (vmmd limits it to QEMU's 31). */
VmmVirtio9p *vmm_virtio_9p_new(const char *id, const char *tag, const VmmGuestMem *mem);
/* Ends the connection (joining its thread) and frees the device. */
void vmm_virtio_9p_free(VmmVirtio9p *p);
VmmVirtioMmio *vmm_virtio_9p_transport(VmmVirtio9p *p);
void vmm_virtio_9p_set_lost_hook(VmmVirtio9p *p, VmmVirtio9pLostFn fn, void *opaque);

/* Takes FD (a connected stream socket to the server), replacing the current
 * connection if any (its requests fail with EIO, without the lost hook).
 * SERVER_RAM: the server (fsd, given the guest's RAM by vmmd) takes Tread and
 * Twrite data through guest memory (Tread.vmm/Twrite.vmm, proto/9p.h). */
void vmm_virtio_9p_connect(VmmVirtio9p *p, int fd, bool server_ram);
/* Guest RAM as mapped here (BASE, SIZE bytes of the memfd fsd maps too); set
 * again after a machine reset maps it anew, NULL: none. */
void vmm_virtio_9p_set_guest_memory(VmmVirtio9p *p, guint8 *base, guint64 size);
/* How many Treads and Twrites went as Tread.vmm/Twrite.vmm so far. */
guint64 vmm_virtio_9p_sent_in_guest(VmmVirtio9p *p);
/* Ends the current connection as if the server had gone. */
void vmm_virtio_9p_disconnect(VmmVirtio9p *p);
bool vmm_virtio_9p_connected(VmmVirtio9p *p);
/* Requests sent to the server and not yet answered. */
unsigned vmm_virtio_9p_in_flight(VmmVirtio9p *p);

/* Sends a Tversion on FD and waits up to TIMEOUT_MS for the Rversion, so
 * that a socket is known to reach a 9P2000.L server before the guest runs.
 * Fills *MSIZE with the server's answer. The server's session is the guest's
 * to replace with its own Tversion. */
gboolean vmm_9p_probe(int fd, guint32 msize, int timeout_ms, guint32 *msize_out, GError **error);
