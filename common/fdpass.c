/* Messages with file descriptors over Unix sockets (SCM_RIGHTS).
 *
 * Whether a call blocks is the socket's business (O_NONBLOCK), not ours: we
 * pass no MSG_DONTWAIT. EINTR is retried; EAGAIN becomes G_IO_ERROR_WOULD_BLOCK
 * so callers can queue; ECONNRESET and EPIPE become VMM_ERROR_CLOSED because
 * for every caller they mean the same thing as EOF: the peer went away. */
#include "common/fdpass.h"
#include "common/error.h"

#include <errno.h>
#include <gio/gio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Room for the largest control part we ever send or accept. */
typedef union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * VMM_MAX_FDS)];
} FdControlBuf;

void vmm_close_fds(int *fds, guint n)
{
    for (guint i = 0; i < n; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
    }
}

static void set_socket_errno(GError **error, int sock, const char *what, int errnum)
{
    if (errnum == EAGAIN || errnum == EWOULDBLOCK) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK, "socket %d: %s would block",
                    sock, what);
    } else if (errnum == ECONNRESET || errnum == EPIPE) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_CLOSED, "socket %d: peer closed the connection (%s)",
                    sock, g_strerror(errnum));
    } else {
        vmm_set_errno(error, errnum, "socket %d: %s", sock, what);
    }
}

static void put_fds_in_control(struct msghdr *msg, FdControlBuf *control, const int *fds,
                               guint nfds)
{
    memset(control, 0, sizeof(*control));
    msg->msg_control = control->buf;
    msg->msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * nfds);
}

gssize vmm_send_with_fds(int sock, const void *buf, gsize len, const int *fds,
                         guint nfds, GError **error)
{
    if (nfds > VMM_MAX_FDS) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG,
                    "socket %d: cannot send %u fds in one message (at most %d)", sock, nfds,
                    VMM_MAX_FDS);
        return -1;
    }
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    FdControlBuf control;
    if (nfds > 0)
        put_fds_in_control(&msg, &control, fds, nfds);

    ssize_t n;
    do {
        n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        set_socket_errno(error, sock, "sendmsg", errno);
        return -1;
    }
    return n;
}

/* Collects every SCM_RIGHTS fd of MSG into FDS (room for CAP). Returns how
 * many there were, which may exceed CAP: the extra ones are closed at once. */
static guint take_received_fds(struct msghdr *msg, int *fds, guint cap)
{
    guint count = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        guint n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *data = CMSG_DATA(c);
        for (guint i = 0; i < n; i++, count++) {
            int fd;
            memcpy(&fd, data + i * sizeof(int), sizeof(int));
            if (count < cap)
                fds[count] = fd;
            else
                close(fd);
        }
    }
    return count;
}

gssize vmm_recv_with_fds(int sock, void *buf, gsize len, int *fds, guint max_fds,
                         guint *nfds, GError **error)
{
    guint cap = MIN(max_fds, VMM_MAX_FDS);
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    FdControlBuf control;
    /* Always offer the full control buffer: a sender that passes more fds
     * than CAP is then seen (and refused) here rather than silently cut by
     * the kernel to what happens to fit CMSG_SPACE's padding. */
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof(control.buf);
    *nfds = 0;

    ssize_t n;
    do {
        /* MSG_TRUNC in flags makes recvmsg return the real length, for the
         * error message. */
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_TRUNC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        set_socket_errno(error, sock, "recvmsg", errno);
        return -1;
    }

    int got[VMM_MAX_FDS];
    guint count = take_received_fds(&msg, got, VMM_MAX_FDS);
    guint kept = MIN(count, VMM_MAX_FDS);

    if (msg.msg_flags & MSG_TRUNC) {
        vmm_close_fds(got, kept);
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG,
                    "socket %d: message of %zd bytes exceeded %zu bytes", sock, n, len);
        return -1;
    }
    if ((msg.msg_flags & MSG_CTRUNC) || count > cap) {
        vmm_close_fds(got, kept);
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                    "socket %d: message carried more file descriptors than the %u accepted",
                    sock, cap);
        return -1;
    }
    memcpy(fds, got, sizeof(int) * count);
    *nfds = count;
    return n;
}
