/* struct iovec helpers: see iov.h. */
#include "common/iov.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <sys/socket.h>

unsigned vmm_iov_consume(struct iovec **iov, unsigned niov, size_t n)
{
    struct iovec *v = *iov;
    while (niov > 0 && n >= v->iov_len) {
        n -= v->iov_len;
        v++;
        niov--;
    }
    if (niov > 0) {
        v->iov_base = (char *)v->iov_base + n;
        v->iov_len -= n;
    }
    *iov = v;
    return niov;
}

/* One sendmsg (writev for a pipe) of at most IOV_MAX buffers. */
static ssize_t send_some(int fd, struct iovec *iov, unsigned niov, int flags)
{
    unsigned n = niov < IOV_MAX ? niov : IOV_MAX;
    struct msghdr msg = { .msg_iov = iov, .msg_iovlen = n };
    ssize_t r = sendmsg(fd, &msg, MSG_NOSIGNAL | flags);
    if (r < 0 && errno == ENOTSOCK)
        r = writev(fd, iov, (int)n);
    return r;
}

static int wait_writable(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLOUT };
    while (poll(&p, 1, -1) < 0) {
        if (errno != EINTR)
            return errno;
    }
    return 0;
}

int vmm_send_iov_all(int fd, struct iovec *iov, unsigned niov, unsigned flags)
{
    while (niov > 0) {
        ssize_t n = send_some(fd, iov, niov, (flags & VMM_SEND_MORE) ? MSG_MORE : 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN && (flags & VMM_SEND_WAIT)) {
            int err = wait_writable(fd);
            if (err)
                return err;
            continue;
        }
        if (n < 0)
            return errno;
        if (n == 0)
            return EPIPE;
        niov = vmm_iov_consume(&iov, niov, (size_t)n);
    }
    return 0;
}

unsigned vmm_send_iov_now(int fd, struct iovec **iov, unsigned niov)
{
    while (niov > 0) {
        ssize_t n = send_some(fd, *iov, niov, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        niov = vmm_iov_consume(iov, niov, (size_t)n);
    }
    return niov;
}

void vmm_unix_socket_set_buffers(int fd, int bytes)
{
    int domain = 0;
    socklen_t len = sizeof(domain);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0 || domain != AF_UNIX)
        return;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
}
