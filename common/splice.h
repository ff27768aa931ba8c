/* Sending to a socket without copying through a buffer of ours: a host
 * file's pages (splice) or our own memory's pages (vmsplice: guest RAM) go
 * into a pipe by reference and from there into the socket, which on Linux
 * 6.1 takes them by reference as well (Unix sockets: unix_stream_sendpage).
 * So a guest's 1 MiB read or write between vcpu-worker and blockd costs the
 * one copy at the receiving end, instead of three.
 *
 * Reading a file into the pipe is done before a reply's header is sent, so a
 * read error can still be answered with an error reply. Memory handed to
 * vmm_splice_send_iov must stay unchanged until the peer has read it (the
 * pipe and the socket hold references to its pages, not copies): for a
 * request, until its reply came. */
#pragma once

#include <glib.h>
#include <sys/uio.h>

typedef struct VmmSplicePipe VmmSplicePipe;

/* Whether blockd and vcpu-worker use this path: only with VMM_SPLICE=1 in
 * their environment (vmmd's is passed on). Off by default: in the test
 * rig's L1 (Linux 6.1 under TCG with emulated nested SVM) runs with it on
 * lost L1 to kernel crashes and a hang more often than runs without, and
 * until that is understood the copying path is the one CI exercises. */
gboolean vmm_splice_enabled(void);
/* For tests in a process with threads (where setenv is unsafe): 1 or 0
 * decides instead of the environment, -1 hands back to it. */
void vmm_splice_force(gint on);

/* A pipe as large as the system lets an unprivileged process have (1 MiB
 * by default); NULL with ERROR when the system has no pipes to give. */
VmmSplicePipe *vmm_splice_pipe_new(GError **error);
void vmm_splice_pipe_free(VmmSplicePipe *p);
/* FALSE once a send failed half way: the pipe holds stale bytes. */
gboolean vmm_splice_pipe_reusable(const VmmSplicePipe *p);

/* Fills P (empty) with up to LEN bytes of FD from OFFSET: the file's first
 * piece of a reply. Returns the bytes in the pipe (less than LEN when the
 * pipe is full, 0 at the end of the file) or -1 with errno. */
gssize vmm_splice_fill(VmmSplicePipe *p, int fd, guint64 offset, guint64 len);

/* Sends HDR, then LEN bytes of FD from OFFSET to the blocking socket SOCK, of
 * which the first FILLED are in P already (vmm_splice_fill); the part past
 * the end of the file as zeroes. FALSE with errno when the connection (or,
 * after the header went out, the file) failed: the stream is broken. */
gboolean vmm_splice_send(VmmSplicePipe *p, int sock, const struct iovec *hdr, int nhdr, int fd,
                         guint64 offset, guint64 len, gsize filled);

/* Sends HDR, then the memory IOV describes, to the blocking socket SOCK, by
 * reference. FALSE with errno when the connection failed (the stream is
 * broken and P must not be used again). */
gboolean vmm_splice_send_iov(VmmSplicePipe *p, int sock, const struct iovec *hdr, int nhdr,
                             const struct iovec *iov, unsigned niov);

/* Moves what the non-blocking socket (or pipe) SOCK takes now of what P
 * holds, by reference. Returns the bytes moved, or -1 with errno when the
 * connection failed (P is then not reusable). */
gssize vmm_splice_drain_now(VmmSplicePipe *p, int sock);
/* Copies the next LEN bytes out of P (when the socket could not take them
 * by reference). FALSE if P held fewer or reading failed. */
gboolean vmm_splice_pipe_read(VmmSplicePipe *p, void *buf, gsize len);

/* ---- Receiving: socket to pipe to file ---- */

/* Bytes P holds. */
gsize vmm_splice_pipe_held(const VmmSplicePipe *p);

/* Moves up to LEN bytes from the blocking socket SOCK into P, by reference
 * where the sender's pages allow (vmm_splice_send_iov's), until P is full
 * or LEN bytes came. Returns the bytes moved (0: P was full already), or -1
 * with errno; ECONNRESET when the stream ended. */
gssize vmm_splice_recv(VmmSplicePipe *p, int sock, gsize len);

/* Writes everything P holds to FD at OFFSET (the one copy, into the page
 * cache). FALSE with errno (P still holds the rest: free it). */
gboolean vmm_splice_drain_to_file(VmmSplicePipe *p, int fd, guint64 offset);
