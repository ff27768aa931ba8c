/* Zero-copy sending to sockets (splice.h). */
#include "common/splice.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <limits.h>
#include <unistd.h>

#include "common/error.h"
#include "common/iov.h"

#define WANTED_PIPE_BYTES (1024 * 1024)

struct VmmSplicePipe {
    int rd, wr;
    gsize cap;
    gsize held;      /* bytes in the pipe */
    gboolean broken;
};

static gint splice_forced = -1;

gboolean vmm_splice_enabled(void)
{
    gint forced = g_atomic_int_get(&splice_forced);
    return forced >= 0 ? forced : g_strcmp0(g_getenv("VMM_SPLICE"), "1") == 0;
}

void vmm_splice_force(gint on)
{
    g_atomic_int_set(&splice_forced, on);
}

VmmSplicePipe *vmm_splice_pipe_new(GError **error)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0) {
        vmm_set_errno(error, errno, "pipe for zero-copy reads");
        return NULL;
    }
    VmmSplicePipe *p = g_new0(VmmSplicePipe, 1);
    p->rd = fds[0];
    p->wr = fds[1];
    /* Without CAP_SYS_RESOURCE the limit is fs.pipe-max-size: take the
     * wanted size if allowed, else keep the default (16 pages). */
    int cap = fcntl(p->wr, F_SETPIPE_SZ, WANTED_PIPE_BYTES);
    if (cap < 0)
        cap = fcntl(p->wr, F_GETPIPE_SZ);
    p->cap = cap > 0 ? (gsize)cap : 65536;
    return p;
}

void vmm_splice_pipe_free(VmmSplicePipe *p)
{
    if (!p)
        return;
    close(p->rd);
    close(p->wr);
    g_free(p);
}

gboolean vmm_splice_pipe_reusable(const VmmSplicePipe *p)
{
    return !p->broken && p->held == 0;
}

gssize vmm_splice_fill(VmmSplicePipe *p, int fd, guint64 offset, guint64 len)
{
    gsize done = 0;
    while (done < len && p->held < p->cap) {
        loff_t off = (loff_t)(offset + done);
        gsize want = MIN(len - done, p->cap - p->held);
        ssize_t n = splice(fd, &off, p->wr, NULL, want, SPLICE_F_NONBLOCK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN && done > 0)
            break;   /* the pipe ran out of slots (an unaligned start takes one more) */
        if (n < 0)
            return done > 0 ? (gssize)done : -1;
        if (n == 0)
            break;   /* end of the file */
        done += (gsize)n;
        p->held += (gsize)n;
    }
    return (gssize)done;
}

/* Blocks until SOCK is ready for EVENTS (POLLIN or POLLOUT). */
static gboolean wait_for(int sock, short events)
{
    struct pollfd pfd = { .fd = sock, .events = events };
    for (;;) {
        int r = poll(&pfd, 1, -1);
        if (r > 0)
            return TRUE;
        if (r < 0 && errno != EINTR)
            return FALSE;
    }
}

static gboolean send_iov_all(int sock, struct iovec *iov, int niov, gboolean more)
{
    int err = vmm_send_iov_all(sock, iov, (unsigned)niov, VMM_SEND_WAIT | (more ? VMM_SEND_MORE : 0));
    errno = err;
    return err == 0;
}

/* Moves what the pipe holds to the socket: all of it, waiting while the
 * socket is full (WAIT), or what the socket takes now. Returns the bytes
 * moved, -1 with errno when the connection failed. */
static gssize move_to_socket(VmmSplicePipe *p, int sock, gboolean more, gboolean wait)
{
    gsize done = 0;
    unsigned flags = (more ? SPLICE_F_MORE : 0) | (wait ? 0 : SPLICE_F_NONBLOCK);
    while (p->held > 0) {
        ssize_t n = splice(p->rd, NULL, sock, NULL, p->held, flags);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN && wait && wait_for(sock, POLLOUT))
            continue;
        if (n < 0 && errno == EAGAIN && !wait)
            break;
        if (n <= 0) {
            if (n == 0)
                errno = EPIPE;
            return -1;
        }
        p->held -= (gsize)n;
        done += (gsize)n;
    }
    return (gssize)done;
}

static gboolean drain(VmmSplicePipe *p, int sock, gboolean more)
{
    return move_to_socket(p, sock, more, TRUE) >= 0;
}

static gboolean send_zeroes(int sock, guint64 len)
{
    static const guint8 zeroes[65536];
    while (len > 0) {
        struct iovec iov = { (void *)zeroes, MIN(len, sizeof(zeroes)) };
        if (!send_iov_all(sock, &iov, 1, FALSE))
            return FALSE;
        len -= iov.iov_len;
    }
    return TRUE;
}

static gboolean splice_send(VmmSplicePipe *p, int sock, const struct iovec *hdr, int nhdr, int fd,
                            guint64 offset, guint64 len, gsize filled)
{
    struct iovec local[4];
    g_assert(nhdr <= (int)G_N_ELEMENTS(local));
    memcpy(local, hdr, sizeof(*hdr) * (size_t)nhdr);
    p->broken = TRUE;   /* until the whole reply is out */
    if (!send_iov_all(sock, local, nhdr, len > 0))
        return FALSE;
    guint64 done = filled;
    if (!drain(p, sock, done < len))
        return FALSE;
    while (done < len) {
        /* The pipe is empty here, so nothing read means the end of the file. */
        gssize n = vmm_splice_fill(p, fd, offset + done, len - done);
        if (n < 0)
            return FALSE;
        if (n == 0)
            break;
        done += (guint64)n;
        if (!drain(p, sock, done < len))
            return FALSE;
    }
    if (done < len && !send_zeroes(sock, len - done))
        return FALSE;
    p->broken = FALSE;
    return TRUE;
}

/* splice has no MSG_NOSIGNAL: a peer gone mid-reply would raise SIGPIPE.
 * It is blocked on this thread for the call, and one it raised is taken
 * back, so the process's disposition stays what its owner chose. */
typedef struct {
    sigset_t set, old;
    gboolean was_pending;
} PipeSignalGuard;

static void guard_begin(PipeSignalGuard *g)
{
    sigset_t pending;
    sigemptyset(&g->set);
    sigaddset(&g->set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &g->set, &g->old);
    sigpending(&pending);
    g->was_pending = sigismember(&pending, SIGPIPE);
}

static gboolean guard_end(PipeSignalGuard *g, gboolean ok)
{
    int saved = errno;
    if (!ok && !g->was_pending) {
        struct timespec zero = { 0, 0 };
        sigtimedwait(&g->set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
    errno = saved;
    return ok;
}

gboolean vmm_splice_send(VmmSplicePipe *p, int sock, const struct iovec *hdr, int nhdr, int fd,
                         guint64 offset, guint64 len, gsize filled)
{
    PipeSignalGuard g;
    guard_begin(&g);
    return guard_end(&g, splice_send(p, sock, hdr, nhdr, fd, offset, len, filled));
}

static gboolean splice_send_iov(VmmSplicePipe *p, int sock, const struct iovec *hdr, int nhdr,
                                const struct iovec *src, unsigned niov)
{
    struct iovec local[4];
    g_assert(nhdr <= (int)G_N_ELEMENTS(local));
    memcpy(local, hdr, sizeof(*hdr) * (size_t)nhdr);
    if (!send_iov_all(sock, local, nhdr, niov > 0))
        return FALSE;
    struct iovec stack[64];
    g_autofree struct iovec *heap = niov > G_N_ELEMENTS(stack) ? g_new(struct iovec, niov) : NULL;
    struct iovec *iov = heap ? heap : stack;
    memcpy(iov, src, sizeof(*iov) * niov);
    while (niov > 0) {
        ssize_t n = vmsplice(p->wr, iov, MIN(niov, (unsigned)IOV_MAX), SPLICE_F_NONBLOCK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN && p->held > 0) {
            if (!drain(p, sock, TRUE))
                return FALSE;
            continue;
        }
        if (n <= 0)
            return FALSE;
        p->held += (gsize)n;
        niov = vmm_iov_consume(&iov, niov, (size_t)n);
        if (!drain(p, sock, niov > 0))
            return FALSE;
    }
    return TRUE;
}

gboolean vmm_splice_send_iov(VmmSplicePipe *p, int sock, const struct iovec *hdr, int nhdr,
                             const struct iovec *iov, unsigned niov)
{
    PipeSignalGuard g;
    guard_begin(&g);
    p->broken = TRUE;
    gboolean ok = splice_send_iov(p, sock, hdr, nhdr, iov, niov);
    p->broken = !ok;
    return guard_end(&g, ok);
}


gssize vmm_splice_drain_now(VmmSplicePipe *p, int sock)
{
    PipeSignalGuard g;
    guard_begin(&g);
    gssize n = move_to_socket(p, sock, FALSE, FALSE);
    if (n < 0)
        p->broken = TRUE;
    guard_end(&g, n >= 0);
    return n;
}

gboolean vmm_splice_pipe_read(VmmSplicePipe *p, void *buf, gsize len)
{
    guint8 *b = buf;
    while (len > 0 && p->held > 0) {
        ssize_t n = read(p->rd, b, MIN(len, p->held));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            p->broken = TRUE;
            return FALSE;
        }
        b += n;
        len -= (gsize)n;
        p->held -= (gsize)n;
    }
    return len == 0;
}

gsize vmm_splice_pipe_held(const VmmSplicePipe *p)
{
    return p->held;
}

static gboolean socket_readable_now(int sock)
{
    struct pollfd pfd = { .fd = sock, .events = POLLIN };
    return poll(&pfd, 1, 0) > 0;
}

gssize vmm_splice_recv(VmmSplicePipe *p, int sock, gsize len)
{
    gsize done = 0;
    while (done < len) {
        /* Non-blocking: a full pipe must not block us, its only reader. It
         * makes the socket side non-blocking too, hence the poll. */
        ssize_t n = splice(sock, NULL, p->wr, NULL, len - done, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            if (socket_readable_now(sock)) {
                if (p->held > 0)
                    break;   /* data waits, so the pipe is what is full */
                continue;    /* it came just now */
            }
            if (!wait_for(sock, POLLIN))
                return done > 0 ? (gssize)done : -1;
            continue;
        }
        if (n == 0) {
            if (done > 0)
                break;
            errno = ECONNRESET;
            return -1;
        }
        if (n < 0)
            return done > 0 ? (gssize)done : -1;
        done += (gsize)n;
        p->held += (gsize)n;
    }
    return (gssize)done;
}

gboolean vmm_splice_drain_to_file(VmmSplicePipe *p, int fd, guint64 offset)
{
    while (p->held > 0) {
        loff_t off = (loff_t)offset;
        ssize_t n = splice(p->rd, NULL, fd, &off, p->held, SPLICE_F_MOVE);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = ENOSPC;
            p->broken = TRUE;
            return FALSE;
        }
        p->held -= (gsize)n;
        offset += (guint64)n;
    }
    return TRUE;
}
