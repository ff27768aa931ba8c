/* struct iovec helpers: see iov.h. */
#include "common/iov.h"

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

void vmm_unix_socket_set_buffers(int fd, int bytes)
{
    int domain = 0;
    socklen_t len = sizeof(domain);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0 || domain != AF_UNIX)
        return;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
}
