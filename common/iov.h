/* Small helpers for struct iovec arrays shared by every process that moves
 * data through sockets (blockd's NBD server and client, vcpu-worker's NBD
 * client and virtio-9p). */
#pragma once
#include <glib.h>
#include <stddef.h>
#include <sys/uio.h>

/* After a short readv/writev/sendmsg of N bytes: drops the buffers N covered
 * from the front of *IOV and trims the first one left. Returns how many are
 * left of NIOV. The array is modified. */
unsigned vmm_iov_consume(struct iovec **iov, unsigned niov, size_t n);

/* Copies between a flat buffer and pieces, starting OFFSET bytes in; return
 * how many bytes were copied (less than LEN when the pieces end). */
size_t vmm_iov_to_buf(const struct iovec *iov, unsigned n, size_t offset, void *buf, size_t len);
size_t vmm_iov_from_buf(const struct iovec *iov, unsigned n, size_t offset, const void *buf,
                        size_t len);
/* Describes LEN bytes of IOV starting OFFSET bytes in as pieces in OUT (at
 * most MAX_OUT); returns how many pieces, covering at most LEN bytes. */
unsigned vmm_iov_slice(const struct iovec *iov, unsigned n, size_t offset, size_t len,
                       struct iovec *out, unsigned max_out);
/* Total bytes of IOV. */
size_t vmm_iov_size(const struct iovec *iov, unsigned n);

/* preadv (WRITE: pwritev) of IOV at OFFSET of FD, in calls of at most IOV_MAX
 * buffers, until IOV is done or a call moves nothing (the end of the file
 * for a read). *DONE gets the bytes moved; returns 0, or the errno value of
 * a call that failed (EINTR is retried). IOV is not changed. */
int vmm_iov_pio(int fd, guint64 offset, const struct iovec *iov, unsigned niov, gboolean write, guint64 *done);

/* vmm_send_iov_all flags. */
#define VMM_SEND_WAIT 1u   /* FD is non-blocking: wait while it is full */
#define VMM_SEND_MORE 2u   /* more follows (MSG_MORE) */

/* Sends all of IOV (NIOV buffers; the array is consumed) to FD: sendmsg
 * without SIGPIPE, or writev when FD is not a socket (a pipe). EINTR is
 * retried. Returns 0, or an errno value (EPIPE when nothing more could be
 * sent, EAGAIN when FD is full and VMM_SEND_WAIT was not given). */
int vmm_send_iov_all(int fd, struct iovec *iov, unsigned niov, unsigned flags);
/* As much of *IOV as FD takes now without blocking (*IOV is consumed):
 * returns how many buffers are left; a failure is for the next send to
 * find. */
unsigned vmm_send_iov_now(int fd, struct iovec **iov, unsigned niov);

/* Best effort, on a Unix socket only (TCP tunes its own buffers unless told a
 * size): SO_SNDBUF and SO_RCVBUF of BYTES each, so that a large reply does
 * not wake its reader several times. Linux caps them at wmem_max/rmem_max. */
void vmm_unix_socket_set_buffers(int fd, int bytes);
