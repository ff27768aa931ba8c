/* Messages with file descriptors over Unix sockets (SCM_RIGHTS). Received fds
 * are close-on-exec (MSG_CMSG_CLOEXEC). A truncated message or control part
 * (MSG_TRUNC / MSG_CTRUNC) is an error, and any fd that did arrive is closed:
 * nothing leaks. */
#pragma once
#include <glib.h>
#include <sys/types.h>

#define VMM_MAX_FDS 16

/* Sends one message. Returns bytes sent, or -1 with error (EAGAIN is reported
 * as G_IO_ERROR_WOULD_BLOCK in domain G_IO_ERROR so callers can queue). */
gssize vmm_send_with_fds(int sock, const void *buf, gsize len, const int *fds,
                         guint nfds, GError **error);

/* Receives one message of at most LEN bytes and at most MAX_FDS fds into FDS.
 * *NFDS is set to the number received. Returns bytes (0 at EOF), or -1 with
 * error; on error no fd is left open. EAGAIN as G_IO_ERROR_WOULD_BLOCK. */
gssize vmm_recv_with_fds(int sock, void *buf, gsize len, int *fds, guint max_fds,
                         guint *nfds, GError **error);

/* Closes N fds of an array and sets them to -1. */
void vmm_close_fds(int *fds, guint n);
