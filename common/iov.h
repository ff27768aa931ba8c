/* Small helpers for struct iovec arrays shared by every process that moves
 * data through sockets (blockd's NBD server and client, vcpu-worker's NBD
 * client and virtio-9p). */
#pragma once
#include <stddef.h>
#include <sys/uio.h>

/* After a short readv/writev/sendmsg of N bytes: drops the buffers N covered
 * from the front of *IOV and trims the first one left. Returns how many are
 * left of NIOV. The array is modified. */
unsigned vmm_iov_consume(struct iovec **iov, unsigned niov, size_t n);

/* Best effort, on a Unix socket only (TCP tunes its own buffers unless told a
 * size): SO_SNDBUF and SO_RCVBUF of BYTES each, so that a large reply does
 * not wake its reader several times. Linux caps them at wmem_max/rmem_max. */
void vmm_unix_socket_set_buffers(int fd, int bytes);
