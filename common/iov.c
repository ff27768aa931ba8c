/* struct iovec helpers: see iov.h. */
#include "common/iov.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

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

size_t vmm_iov_size(const struct iovec *iov, unsigned n)
{
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += iov[i].iov_len;
    return total;
}

/* The one copy loop of both directions (TO_IOV: from BUF into the pieces). */
static size_t iov_copy(const struct iovec *iov, unsigned n, size_t offset, uint8_t *buf, size_t len,
                       gboolean to_iov)
{
    size_t done = 0;
    for (unsigned i = 0; i < n && done < len; i++) {
        if (offset >= iov[i].iov_len) {
            offset -= iov[i].iov_len;
            continue;
        }
        size_t chunk = MIN(iov[i].iov_len - offset, len - done);
        uint8_t *piece = (uint8_t *)iov[i].iov_base + offset;
        if (to_iov)
            memcpy(piece, buf + done, chunk);
        else
            memcpy(buf + done, piece, chunk);
        done += chunk;
        offset = 0;
    }
    return done;
}

size_t vmm_iov_to_buf(const struct iovec *iov, unsigned n, size_t offset, void *buf, size_t len)
{
    return iov_copy(iov, n, offset, buf, len, FALSE);
}

size_t vmm_iov_from_buf(const struct iovec *iov, unsigned n, size_t offset, const void *buf,
                        size_t len)
{
    return iov_copy(iov, n, offset, (uint8_t *)buf, len, TRUE);
}

unsigned vmm_iov_slice(const struct iovec *iov, unsigned n, size_t offset, size_t len,
                       struct iovec *out, unsigned max_out)
{
    unsigned count = 0;
    for (unsigned i = 0; i < n && len > 0 && count < max_out; i++) {
        if (offset >= iov[i].iov_len) {
            offset -= iov[i].iov_len;
            continue;
        }
        size_t chunk = MIN(iov[i].iov_len - offset, len);
        out[count++] = (struct iovec){ (uint8_t *)iov[i].iov_base + offset, chunk };
        len -= chunk;
        offset = 0;
    }
    return count;
}

int vmm_iov_pio(int fd, guint64 offset, const struct iovec *iov, unsigned niov, gboolean write, guint64 *done)
{
    g_autofree struct iovec *copy = g_memdup2(iov, MAX(niov, 1u) * sizeof(*iov));
    struct iovec *cur = copy;
    *done = 0;
    while (niov > 0) {
        int n_now = (int)MIN(niov, (unsigned)IOV_MAX);
        ssize_t n = write ? pwritev(fd, cur, n_now, (off_t)(offset + *done))
                          : preadv(fd, cur, n_now, (off_t)(offset + *done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno;
        if (n == 0)
            break;
        *done += (guint64)n;
        niov = vmm_iov_consume(&cur, niov, (size_t)n);
    }
    return 0;
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
