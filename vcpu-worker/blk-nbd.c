/* The asynchronous NBD client behind a VM's virtio-blk: see blk-nbd.h.
 *
 * Threads: callers put requests in the table and send them themselves (the
 * virtio-blk I/O thread: one thread hop less per request); the reader thread
 * of the current connection completes them. A request submitted on a reader
 * thread (a completion that submits more: a flush after a write-through
 * write) goes on the writer thread's queue instead, so that no reader ever
 * waits for the socket: blockd may be waiting for it to read a reply.
 *
 * Locks: SEND_LOCK serialises writes to the socket and the connection
 * generation; LOCK guards the request table. Order: send_lock, then lock.
 * A request is sent on a connection at most once (its sent_gen says on which),
 * by whoever holds send_lock first: the writer, or a reconnect. Only the
 * reader thread removes requests from the table (and the final free, once
 * the threads are gone), so the pointer it looked up stays valid while it
 * reads a reply's data into the request's buffers. */
#include "vcpu-worker/blk-nbd.h"
#include "common/bytes.h"
#include "common/error.h"
#include "common/iov.h"
#include "common/helper.h"
#include "common/log.h"
#include "common/splice.h"
#include "proto/nbd.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define HANDSHAKE_TIMEOUT_MS 10000
#define MAX_IOV 1024
/* Room for a whole 1 MiB request or reply in the socket, so that neither
 * side wakes up the other several times per request; Linux caps it at
 * net.core.wmem_max/rmem_max. */
#define SOCKET_BUFFER_BYTES (4 * 1024 * 1024)
/* Writes this long or longer go to the socket by reference to guest memory
 * (vmsplice); shorter ones cost fewer system calls as a plain send. */
#define SPLICE_MIN_WRITE (32 * 1024)

typedef struct {
    VmmBlkRequest *req;
    gint remaining;            /* pieces not yet completed */
    gint ret;                  /* first error */
} Parent;

typedef struct {
    guint64 cookie;
    guint16 type, flags;
    guint64 offset;
    guint32 len;
    struct iovec *iov;         /* READ/WRITE: this piece's part of the caller's buffers */
    unsigned niov;
    Parent *parent;
    guint sent_gen;            /* the connection it was sent on; 0: not sent */
    gboolean in_guest;         /* sent with its data in guest memory: the reply has none */
} NbdReq;

struct VmmBlkNbd {
    char *name;
    GMutex send_lock;
    GMutex lock;
    GCond idle;
    int fd;                    /* -1 when not connected */
    guint gen;                 /* connection generation, from 1 */
    gboolean connected;
    gboolean closing;
    GThread *reader;
    GThread *writer;
    GAsyncQueue *to_send;      /* NbdReq* (cookie only: it may be gone), or STOP */
    GHashTable *reqs;          /* cookie -> NbdReq* */
    guint64 next_cookie;
    guint64 size;
    guint16 flags;
    guint32 max_len;
    VmmBlkNbdLostFn lost;
    gpointer lost_opaque;
    VmmBlkNbdCompleteFn complete;
    guint handshake_timeout_ms;
    VmmSplicePipe *pipe;       /* under send_lock; NULL until the first large write */
    gboolean no_splice;        /* vmsplice is not to be had: plain sends */
    guint8 *ram;               /* guest RAM here (under send_lock), NULL: none */
    guint64 ram_size;
    gboolean guest_memory;     /* blockd accepted NBD_OPT_VMM_GUEST_MEMORY on this connection */
};

int vmm_blk_nbd_errno(guint32 e)
{
    switch (e) {
    case 0: return 0;
    case NBD_EPERM: return -EPERM;
    case NBD_ENOMEM: return -ENOMEM;
    case NBD_EINVAL: return -EINVAL;
    case NBD_ENOSPC: return -ENOSPC;
    case NBD_EOVERFLOW: return -EOVERFLOW;
    case NBD_ENOTSUP: return -ENOTSUP;
    case NBD_ESHUTDOWN: return -ESHUTDOWN;
    default: return -EIO;
    }
}

static void send_locked(VmmBlkNbd *c, NbdReq *r);

/* Under send_lock: the request COOKIE if it waits to be sent on the current
 * connection. Such a request cannot complete (nothing was sent), so it stays
 * valid while send_lock is held; one already sent may complete any time. */
static NbdReq *lookup_unsent(VmmBlkNbd *c, guint64 cookie)
{
    g_mutex_lock(&c->lock);
    NbdReq *r = g_hash_table_lookup(c->reqs, &cookie);
    if (r && (!c->connected || r->sent_gen == c->gen))
        r = NULL;
    g_mutex_unlock(&c->lock);
    return r;
}

#define STOP_COOKIE 0   /* cookies start at 1 */

/* Set on reader threads: they must not wait for the socket. */
static __thread gboolean on_reader_thread;

/* Sends request COOKIE unless it completed (or failed) meanwhile, or a
 * reconnect sent it already. */
static void send_cookie(VmmBlkNbd *c, guint64 cookie)
{
    g_mutex_lock(&c->send_lock);
    NbdReq *r = lookup_unsent(c, cookie);
    if (r)
        send_locked(c, r);
    g_mutex_unlock(&c->send_lock);
}

/* Sends what reader threads queued. */
static gpointer writer_thread(gpointer data)
{
    VmmBlkNbd *c = data;
    for (;;) {
        guint64 *cookie = g_async_queue_pop(c->to_send);
        if (*cookie == STOP_COOKIE) {
            g_free(cookie);
            return NULL;
        }
        send_cookie(c, *cookie);
        g_free(cookie);
    }
}

VmmBlkNbd *vmm_blk_nbd_new(const char *name)
{
    VmmBlkNbd *c = g_new0(VmmBlkNbd, 1);
    c->name = g_strdup(name);
    g_mutex_init(&c->send_lock);
    g_mutex_init(&c->lock);
    g_cond_init(&c->idle);
    c->fd = -1;
    c->reqs = g_hash_table_new(g_int64_hash, g_int64_equal);
    c->next_cookie = 1;
    c->max_len = NBD_MAX_PAYLOAD;
    c->complete = vmm_virtio_blk_complete;
    c->handshake_timeout_ms = HANDSHAKE_TIMEOUT_MS;
    c->no_splice = !vmm_splice_enabled();
    c->to_send = g_async_queue_new_full(g_free);
    c->writer = g_thread_new("blk-nbd-tx", writer_thread, c);
    return c;
}

void vmm_blk_nbd_set_handshake_timeout(VmmBlkNbd *c, guint ms)
{
    c->handshake_timeout_ms = ms;
}

void vmm_blk_nbd_set_lost_hook(VmmBlkNbd *c, VmmBlkNbdLostFn fn, gpointer opaque)
{
    c->lost = fn;
    c->lost_opaque = opaque;
}

void vmm_blk_nbd_set_guest_memory(VmmBlkNbd *c, guint8 *base, guint64 size)
{
    g_mutex_lock(&c->send_lock);
    c->ram = base;
    c->ram_size = base ? size : 0;
    g_mutex_unlock(&c->send_lock);
}

gboolean vmm_blk_nbd_guest_memory(VmmBlkNbd *c)
{
    g_mutex_lock(&c->send_lock);
    gboolean on = c->connected && c->guest_memory && c->ram;
    g_mutex_unlock(&c->send_lock);
    return on;
}

void vmm_blk_nbd_set_complete(VmmBlkNbd *c, VmmBlkNbdCompleteFn fn)
{
    c->complete = fn;
}

guint64 vmm_blk_nbd_size(VmmBlkNbd *c) { return c->size; }
guint16 vmm_blk_nbd_flags(VmmBlkNbd *c) { return c->flags; }
gboolean vmm_blk_nbd_read_only(VmmBlkNbd *c) { return (c->flags & NBD_FLAG_READ_ONLY) != 0; }

gboolean vmm_blk_nbd_connected(VmmBlkNbd *c)
{
    g_mutex_lock(&c->send_lock);
    gboolean on = c->connected;
    g_mutex_unlock(&c->send_lock);
    return on;
}

guint vmm_blk_nbd_in_flight(VmmBlkNbd *c)
{
    g_mutex_lock(&c->lock);
    guint n = g_hash_table_size(c->reqs);
    g_mutex_unlock(&c->lock);
    return n;
}

/* ---- Socket I/O --------------------------------------------------------------- */

/* Writes all of IOV (modified). */
static gboolean write_all(int fd, struct iovec *iov, unsigned niov)
{
    int err = vmm_send_iov_all(fd, iov, niov, 0);
    errno = err;
    return err == 0;
}

/* Reads exactly LEN bytes; with a deadline (monotonic µs, 0: none) it polls. */
static gboolean read_full(int fd, void *buf, gsize len, gint64 deadline)
{
    gsize done = 0;
    while (done < len) {
        if (deadline) {
            gint64 left = (deadline - g_get_monotonic_time()) / 1000;
            struct pollfd p = { .fd = fd, .events = POLLIN };
            if (left <= 0 || poll(&p, 1, (int)left) == 0) {
                errno = ETIMEDOUT;
                return FALSE;
            }
        }
        ssize_t n = read(fd, (char *)buf + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = ECONNRESET;
            return FALSE;
        }
        done += (gsize)n;
    }
    return TRUE;
}

/* Reads exactly what SRC describes, with as few readv calls as the socket
 * allows (a guest's 1 MiB read is ~256 pieces). SRC stays as it is: a reply
 * cut short by a lost connection is read again into it after a reconnect. */
static gboolean readv_full(int fd, const struct iovec *src, unsigned niov)
{
    struct iovec local[64];
    g_autofree struct iovec *heap = niov > G_N_ELEMENTS(local) ? g_new(struct iovec, niov) : NULL;
    struct iovec *iov = heap ? heap : local;
    memcpy(iov, src, niov * sizeof(*iov));
    while (niov > 0) {
        ssize_t n = readv(fd, iov, (int)MIN(niov, (unsigned)MAX_IOV));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = ECONNRESET;
            return FALSE;
        }
        niov = vmm_iov_consume(&iov, niov, (size_t)n);
    }
    return TRUE;
}

/* ---- Negotiation -------------------------------------------------------------- */

static gboolean hs_fail(VmmBlkNbd *c, GError **error, const char *what)
{
    return vmm_set_errno(error, errno, "drive '%s': NBD handshake with blockd: %s", c->name, what);
}

static gboolean send_go(VmmBlkNbd *c, int fd, GError **error)
{
    gsize nlen = strlen(c->name);
    gsize len = 16 + 4 + nlen + 2 + 2;
    g_autofree guint8 *buf = g_malloc(len);
    put_be64(buf, NBD_IHAVEOPT);
    put_be32(buf + 8, NBD_OPT_GO);
    put_be32(buf + 12, (guint32)(len - 16));
    put_be32(buf + 16, (guint32)nlen);
    memcpy(buf + 20, c->name, nlen);
    put_be16(buf + 20 + nlen, 1);
    put_be16(buf + 22 + nlen, NBD_INFO_BLOCK_SIZE);
    struct iovec iov = { buf, len };
    return write_all(fd, &iov, 1) || hs_fail(c, error, "sending NBD_OPT_GO");
}

static void take_info(const guint8 *data, guint32 len, guint64 *size, guint16 *flags, guint32 *max)
{
    if (len < 2)
        return;
    guint16 type = get_be16(data);
    if (type == NBD_INFO_EXPORT && len >= 12) {
        *size = get_be64(data + 2);
        *flags = get_be16(data + 10);
    } else if (type == NBD_INFO_BLOCK_SIZE && len >= 14) {
        *max = get_be32(data + 10);
    }
}

/* The replies to NBD_OPT_GO, up to NBD_REP_ACK. */
static gboolean read_go_replies(VmmBlkNbd *c, int fd, gint64 deadline, guint64 *size,
                                guint16 *flags, guint32 *max, GError **error)
{
    gboolean have_export = FALSE;
    for (;;) {
        guint8 hdr[20];
        if (!read_full(fd, hdr, sizeof(hdr), deadline))
            return hs_fail(c, error, "reading the reply to NBD_OPT_GO");
        guint32 type = get_be32(hdr + 12), len = get_be32(hdr + 16);
        if (get_be64(hdr) != NBD_OPT_REPLY_MAGIC || get_be32(hdr + 8) != NBD_OPT_GO || len > NBD_MAX_OPTION) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                        "drive '%s': NBD handshake with blockd: bad option reply", c->name);
            return FALSE;
        }
        g_autofree guint8 *data = g_malloc(len + 1);
        if (!read_full(fd, data, len, deadline))
            return hs_fail(c, error, "reading the reply to NBD_OPT_GO");
        data[len] = 0;
        if (type == NBD_REP_ACK)
            break;
        if (type & NBD_REP_FLAG_ERROR) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_IO,
                        "drive '%s': blockd refused the export (NBD error 0x%x%s%s)", c->name, type,
                        len ? ": " : "", len ? (char *)data : "");
            return FALSE;
        }
        if (type == NBD_REP_INFO) {
            take_info(data, len, size, flags, max);
            have_export |= len >= 12 && get_be16(data) == NBD_INFO_EXPORT;
        }
    }
    if (!have_export) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                    "drive '%s': NBD handshake with blockd: no NBD_INFO_EXPORT", c->name);
        return FALSE;
    }
    return TRUE;
}

/* Asks blockd to take data through guest memory; *ACCEPTED says whether it
 * did (a blockd without the guest's RAM answers NBD_REP_ERR_UNSUP). */
static gboolean ask_guest_memory(VmmBlkNbd *c, int fd, gint64 deadline, gboolean *accepted, GError **error)
{
    guint8 opt[16];
    put_be64(opt, NBD_IHAVEOPT);
    put_be32(opt + 8, NBD_OPT_VMM_GUEST_MEMORY);
    put_be32(opt + 12, 0);
    struct iovec iov = { opt, sizeof(opt) };
    if (!write_all(fd, &iov, 1))
        return hs_fail(c, error, "sending NBD_OPT_VMM_GUEST_MEMORY");
    guint8 hdr[20];
    if (!read_full(fd, hdr, sizeof(hdr), deadline))
        return hs_fail(c, error, "reading the reply to NBD_OPT_VMM_GUEST_MEMORY");
    guint32 type = get_be32(hdr + 12), len = get_be32(hdr + 16);
    if (get_be64(hdr) != NBD_OPT_REPLY_MAGIC || get_be32(hdr + 8) != NBD_OPT_VMM_GUEST_MEMORY ||
        len > NBD_MAX_OPTION || (type != NBD_REP_ACK && !(type & NBD_REP_FLAG_ERROR))) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                    "drive '%s': NBD handshake with blockd: bad reply to NBD_OPT_VMM_GUEST_MEMORY", c->name);
        return FALSE;
    }
    g_autofree guint8 *data = g_malloc(MAX(len, 1));
    if (!read_full(fd, data, len, deadline))
        return hs_fail(c, error, "reading the reply to NBD_OPT_VMM_GUEST_MEMORY");
    *accepted = type == NBD_REP_ACK;
    return TRUE;
}

static gboolean negotiate(VmmBlkNbd *c, int fd, guint64 *size, guint16 *flags, guint32 *max,
                          gboolean *guest_memory, GError **error)
{
    gint64 deadline = g_get_monotonic_time() + c->handshake_timeout_ms * 1000LL;
    guint8 greet[18];
    if (!read_full(fd, greet, sizeof(greet), deadline))
        return hs_fail(c, error, "reading the greeting");
    if (get_be64(greet) != NBD_MAGIC || get_be64(greet + 8) != NBD_IHAVEOPT ||
        !(get_be16(greet + 16) & NBD_FLAG_FIXED_NEWSTYLE)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                    "drive '%s': NBD handshake with blockd: not a fixed newstyle server", c->name);
        return FALSE;
    }
    guint8 cflags[4];
    put_be32(cflags, NBD_FLAG_C_FIXED_NEWSTYLE |
                     ((get_be16(greet + 16) & NBD_FLAG_NO_ZEROES) ? NBD_FLAG_C_NO_ZEROES : 0));
    struct iovec iov = { cflags, 4 };
    if (!write_all(fd, &iov, 1))
        return hs_fail(c, error, "sending the client flags");
    *max = NBD_MAX_PAYLOAD;
    return ask_guest_memory(c, fd, deadline, guest_memory, error) && send_go(c, fd, error) &&
           read_go_replies(c, fd, deadline, size, flags, max, error);
}

/* ---- Sending -------------------------------------------------------------------- */

/* Under send_lock: a large WRITE's header and guest data by reference (the
 * guest's buffers stay as they are until the reply completes the request).
 * FALSE: not sent at all, send it by copy. */
static gboolean send_write_spliced(VmmBlkNbd *c, NbdReq *r, const struct iovec *hdr)
{
    if (c->no_splice || r->len < SPLICE_MIN_WRITE)
        return FALSE;
    if (!c->pipe) {
        g_autoptr(GError) err = NULL;
        c->pipe = vmm_splice_pipe_new(&err);
        if (!c->pipe) {
            vmm_debug("drive '%s': %s", c->name, err->message);
            return FALSE;
        }
    }
    if (vmm_splice_send_iov(c->pipe, c->fd, hdr, 1, r->iov, r->niov))
        return TRUE;
    int err = errno;
    vmm_debug("drive '%s': zero-copy write: %s", c->name, g_strerror(err));
    /* Not the connection's fault: the request goes again by copy after the
     * reconnect, rather than failing the same way for ever. */
    if (err != EPIPE && err != ECONNRESET && err != ENOTCONN && err != ESHUTDOWN)
        c->no_splice = TRUE;
    vmm_splice_pipe_free(c->pipe);
    c->pipe = NULL;
    shutdown(c->fd, SHUT_RDWR);
    return TRUE;
}

/* Under send_lock: R with its data in guest memory, if this connection does
 * that and R's buffers are all in guest RAM; FALSE: nothing was sent. */
static gboolean send_in_guest(VmmBlkNbd *c, NbdReq *r, guint8 *hdr)
{
    if (!c->guest_memory || !c->ram || r->niov == 0 || r->niov > NBD_VMM_MAX_SEGMENTS ||
        (r->type != NBD_CMD_READ && r->type != NBD_CMD_WRITE))
        return FALSE;
    /* Where the data is in guest RAM, then that as the segment list of
     * proto/nbd.h. */
    VmmRamRange local[64];
    g_autofree VmmRamRange *heap = r->niov > G_N_ELEMENTS(local) ? g_new(VmmRamRange, r->niov) : NULL;
    VmmRamRange *ranges = heap ? heap : local;
    unsigned count = vmm_guest_ram_ranges(c->ram, c->ram_size, r->iov, r->niov, ranges);
    if (!count)
        return FALSE;
    guint8 local_list[NBD_VMM_SEGMENT_LIST_HEADER + 64 * NBD_VMM_SEGMENT_SIZE];
    gsize list_len = NBD_VMM_SEGMENT_LIST_HEADER + (gsize)count * NBD_VMM_SEGMENT_SIZE;
    g_autofree guint8 *heap_list = list_len > sizeof(local_list) ? g_malloc(list_len) : NULL;
    guint8 *list = heap_list ? heap_list : local_list;
    put_be32(list, count);
    put_be32(list + 4, 0);
    for (unsigned i = 0; i < count; i++) {
        guint8 *e = list + NBD_VMM_SEGMENT_LIST_HEADER + (gsize)i * NBD_VMM_SEGMENT_SIZE;
        put_be64(e, ranges[i].offset);
        put_be32(e + 8, ranges[i].len);
        put_be32(e + 12, 0);
    }
    r->in_guest = TRUE;
    put_be16(hdr + 4, r->flags | NBD_CMD_FLAG_VMM_GUEST_MEMORY);
    struct iovec iov[2] = { { hdr, NBD_REQUEST_SIZE }, { list, list_len } };
    if (!write_all(c->fd, iov, 2))
        shutdown(c->fd, SHUT_RDWR);
    return TRUE;
}

/* Under send_lock: sends R on the current connection unless it was already. */
static void send_locked(VmmBlkNbd *c, NbdReq *r)
{
    if (!c->connected || r->sent_gen == c->gen)
        return;
    r->sent_gen = c->gen;
    r->in_guest = FALSE;
    guint8 hdr[NBD_REQUEST_SIZE];
    put_be32(hdr, NBD_REQUEST_MAGIC);
    put_be16(hdr + 4, r->flags);
    put_be16(hdr + 6, r->type);
    put_be64(hdr + 8, r->cookie);
    put_be64(hdr + 16, r->offset);
    put_be32(hdr + 24, r->len);
    if (send_in_guest(c, r, hdr))
        return;
    struct iovec iov[1 + MAX_IOV];
    unsigned n = 0;
    iov[n++] = (struct iovec){ hdr, sizeof(hdr) };
    if (r->type == NBD_CMD_WRITE) {
        for (unsigned i = 0; i < r->niov; i++)
            iov[n++] = r->iov[i];
    }
    /* A failed send means the connection is going: the reader sees it and
     * the request is sent again on the next one. */
    if (!(r->type == NBD_CMD_WRITE && send_write_spliced(c, r, iov)) && !write_all(c->fd, iov, n))
        shutdown(c->fd, SHUT_RDWR);
}

/* Once R is in the table it may complete and be freed at any time: only its
 * cookie is used after that. */
static void submit(VmmBlkNbd *c, NbdReq *r)
{
    g_mutex_lock(&c->lock);
    guint64 cookie = r->cookie = c->next_cookie++;
    g_hash_table_insert(c->reqs, &r->cookie, r);
    g_mutex_unlock(&c->lock);
    if (!on_reader_thread) {
        send_cookie(c, cookie);
        return;
    }
    g_async_queue_push(c->to_send, g_memdup2(&cookie, sizeof(cookie)));
}

static NbdReq *req_new(Parent *p, guint16 type, guint16 flags, guint64 offset, guint32 len)
{
    NbdReq *r = g_new0(NbdReq, 1);
    r->parent = p;
    r->type = type;
    r->flags = flags;
    r->offset = offset;
    r->len = len;
    return r;
}

static void req_free(NbdReq *r)
{
    g_free(r->iov);
    g_free(r);
}

static void finish_parent(VmmBlkNbd *c, Parent *p, int ret)
{
    if (ret < 0)
        g_atomic_int_compare_and_exchange(&p->ret, 0, ret);
    if (!g_atomic_int_dec_and_test(&p->remaining))
        return;
    int r = g_atomic_int_get(&p->ret);
    VmmBlkRequest *req = p->req;
    g_free(p);
    c->complete(req, r);
}

/* READ or WRITE of the caller's buffers, split at the server's limit. */
static void submit_rw(VmmBlkNbd *c, guint16 type, guint64 offset, const struct iovec *iov,
                      unsigned niov, VmmBlkRequest *req)
{
    guint64 total = 0;
    for (unsigned i = 0; i < niov; i++)
        total += iov[i].iov_len;
    guint64 max = MAX(c->max_len, 4096u);
    guint pieces = total ? (guint)((total + max - 1) / max) : 1;
    Parent *p = g_new0(Parent, 1);
    p->req = req;
    p->remaining = (gint)pieces;
    g_autoptr(GPtrArray) reqs = g_ptr_array_new();
    for (guint i = 0; i < pieces; i++) {
        guint64 start = (guint64)i * max, len = MIN(max, total - start);
        NbdReq *r = req_new(p, type, 0, offset + start, (guint32)len);
        r->iov = g_new(struct iovec, niov);
        r->niov = vmm_iov_slice(iov, niov, start, len, r->iov, niov);
        g_ptr_array_add(reqs, r);
    }
    /* All pieces exist before the first can complete and free the parent. */
    for (guint i = 0; i < reqs->len; i++)
        submit(c, reqs->pdata[i]);
}

static void submit_one(VmmBlkNbd *c, guint16 type, guint16 flags, guint64 offset, guint64 len,
                       VmmBlkRequest *req)
{
    Parent *p = g_new0(Parent, 1);
    p->req = req;
    p->remaining = 1;
    submit(c, req_new(p, type, flags, offset, (guint32)len));
}

static void nbd_read(void *backend, uint64_t offset, const struct iovec *iov, unsigned niov,
                     VmmBlkRequest *req)
{
    submit_rw(backend, NBD_CMD_READ, offset, iov, niov, req);
}

static void nbd_write(void *backend, uint64_t offset, const struct iovec *iov, unsigned niov,
                      VmmBlkRequest *req)
{
    VmmBlkNbd *c = backend;
    if (c->flags & NBD_FLAG_READ_ONLY) {
        c->complete(req, -EPERM);
        return;
    }
    submit_rw(c, NBD_CMD_WRITE, offset, iov, niov, req);
}

static void nbd_flush(void *backend, VmmBlkRequest *req)
{
    VmmBlkNbd *c = backend;
    if (!(c->flags & NBD_FLAG_SEND_FLUSH)) {
        c->complete(req, 0);    /* nothing cached on the way */
        return;
    }
    submit_one(c, NBD_CMD_FLUSH, 0, 0, 0, req);
}

static void nbd_discard(void *backend, uint64_t offset, uint64_t len, VmmBlkRequest *req)
{
    VmmBlkNbd *c = backend;
    if (!(c->flags & NBD_FLAG_SEND_TRIM) || len > G_MAXUINT32) {
        c->complete(req, -ENOTSUP);
        return;
    }
    submit_one(c, NBD_CMD_TRIM, 0, offset, len, req);
}

static void nbd_write_zeroes(void *backend, uint64_t offset, uint64_t len, bool may_unmap,
                             VmmBlkRequest *req)
{
    VmmBlkNbd *c = backend;
    if (!(c->flags & NBD_FLAG_SEND_WRITE_ZEROES) || len > G_MAXUINT32) {
        c->complete(req, -ENOTSUP);
        return;
    }
    submit_one(c, NBD_CMD_WRITE_ZEROES, may_unmap ? 0 : NBD_CMD_FLAG_NO_HOLE, offset, len, req);
}

const VmmBlkBackendOps vmm_blk_nbd_ops = {
    .read = nbd_read,
    .write = nbd_write,
    .flush = nbd_flush,
    .discard = nbd_discard,
    .write_zeroes = nbd_write_zeroes,
};

/* ---- Receiving ------------------------------------------------------------------ */

static NbdReq *lookup(VmmBlkNbd *c, guint64 cookie)
{
    g_mutex_lock(&c->lock);
    NbdReq *r = g_hash_table_lookup(c->reqs, &cookie);
    g_mutex_unlock(&c->lock);
    return r;
}

static void remove_req(VmmBlkNbd *c, NbdReq *r)
{
    g_mutex_lock(&c->lock);
    g_hash_table_remove(c->reqs, &r->cookie);
    if (g_hash_table_size(c->reqs) == 0)
        g_cond_broadcast(&c->idle);
    g_mutex_unlock(&c->lock);
}

/* One reply; FALSE (with WHY) when the connection is unusable. */
static gboolean read_reply(VmmBlkNbd *c, int fd, const char **why)
{
    guint8 hdr[NBD_SIMPLE_REPLY_SIZE];
    if (!read_full(fd, hdr, sizeof(hdr), 0)) {
        *why = errno == ECONNRESET ? "blockd closed the connection" : g_strerror(errno);
        return FALSE;
    }
    if (get_be32(hdr) != NBD_SIMPLE_REPLY_MAGIC) {
        *why = "bad reply magic";
        return FALSE;
    }
    NbdReq *r = lookup(c, get_be64(hdr + 8));
    if (!r) {
        *why = "a reply to no request";
        return FALSE;
    }
    int ret = vmm_blk_nbd_errno(get_be32(hdr + 4));
    if (r->type == NBD_CMD_READ && ret == 0 && !r->in_guest && !readv_full(fd, r->iov, r->niov)) {
        *why = g_strerror(errno);
        return FALSE;   /* still in the table: read again after a reconnect */
    }
    if (ret == -ESHUTDOWN)
        return TRUE;    /* blockd is going away: the request waits for the next one */
    remove_req(c, r);
    Parent *p = r->parent;
    req_free(r);
    finish_parent(c, p, ret);
    return TRUE;
}

typedef struct {
    VmmBlkNbd *c;
    int fd;
    guint gen;
} ReaderArgs;

static gpointer reader_thread(gpointer data)
{
    ReaderArgs *a = data;
    VmmBlkNbd *c = a->c;
    const char *why = NULL;
    on_reader_thread = TRUE;
    while (read_reply(c, a->fd, &why))
        ;
    g_mutex_lock(&c->send_lock);
    gboolean current = c->gen == a->gen && c->connected;
    if (current) {
        c->connected = FALSE;
        shutdown(a->fd, SHUT_RDWR);
    }
    gboolean closing = c->closing;
    g_mutex_unlock(&c->send_lock);
    if (current && !closing) {
        vmm_log(vmm_helper_stopping() ? VMM_LOG_INFO : VMM_LOG_WARNING,
                "drive '%s': connection to blockd lost (%s); %u request(s) wait for it to come back",
                c->name, why, vmm_blk_nbd_in_flight(c));
        if (c->lost)
            c->lost(c, why, c->lost_opaque);
    }
    g_free(a);
    return NULL;
}

/* ---- Connecting ------------------------------------------------------------------- */

static void drop_connection(VmmBlkNbd *c)
{
    g_mutex_lock(&c->send_lock);
    if (c->fd >= 0)
        shutdown(c->fd, SHUT_RDWR);
    c->connected = FALSE;
    GThread *reader = c->reader;
    c->reader = NULL;
    g_mutex_unlock(&c->send_lock);
    if (reader)
        g_thread_join(reader);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

/* Every request waiting, oldest first. */
static GPtrArray *waiting_requests(VmmBlkNbd *c)
{
    g_mutex_lock(&c->lock);
    GPtrArray *list = g_ptr_array_new();
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, c->reqs);
    while (g_hash_table_iter_next(&it, NULL, &v))
        g_ptr_array_add(list, v);
    g_mutex_unlock(&c->lock);
    return list;
}

static gint by_cookie(gconstpointer a, gconstpointer b)
{
    const NbdReq *x = *(NbdReq *const *)a, *y = *(NbdReq *const *)b;
    return x->cookie < y->cookie ? -1 : x->cookie > y->cookie;
}


gboolean vmm_blk_nbd_connect(VmmBlkNbd *c, int fd, GError **error)
{
    guint64 size = 0;
    guint16 flags = 0;
    guint32 max = NBD_MAX_PAYLOAD;
    gboolean guest_memory = FALSE;
    if (!negotiate(c, fd, &size, &flags, &max, &guest_memory, error)) {
        close(fd);
        return FALSE;
    }
    gboolean again = c->gen > 0;
    if (again && size != c->size) {
        close(fd);
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "drive '%s': blockd's export is %" G_GUINT64_FORMAT " bytes now, it was %" G_GUINT64_FORMAT,
                    c->name, size, c->size);
        return FALSE;
    }
    drop_connection(c);
    vmm_unix_socket_set_buffers(fd, SOCKET_BUFFER_BYTES);
    c->size = size;
    c->flags = flags;
    c->max_len = max ? MIN(max, (guint32)NBD_MAX_PAYLOAD) : NBD_MAX_PAYLOAD;
    /* Resend what waits before the reader runs, under send_lock so that no
     * submitter sends the same request twice. */
    g_mutex_lock(&c->send_lock);
    c->fd = fd;
    c->gen++;
    c->connected = TRUE;
    c->guest_memory = guest_memory;
    ReaderArgs *a = g_new0(ReaderArgs, 1);
    a->c = c;
    a->fd = fd;
    a->gen = c->gen;
    /* The reader runs before the resends, so that replies keep flowing
     * while a long backlog goes out. */
    c->reader = g_thread_new("blk-nbd-rx", reader_thread, a);
    g_autoptr(GPtrArray) waiting = waiting_requests(c);
    g_ptr_array_sort(waiting, by_cookie);
    guint resent = 0;
    for (guint i = 0; i < waiting->len; i++) {
        /* Nothing of the list was sent on this connection yet, so none of it
         * can complete before we send it; the lookup is for form's sake. */
        NbdReq *r = lookup_unsent(c, ((NbdReq *)waiting->pdata[i])->cookie);
        if (r) {
            send_locked(c, r);
            resent++;
        }
    }
    g_mutex_unlock(&c->send_lock);
    if (again)
        vmm_notice("drive '%s': reconnected to blockd; %u request(s) sent again", c->name, resent);
    return TRUE;
}

void vmm_blk_nbd_free(VmmBlkNbd *c)
{
    if (!c)
        return;
    g_mutex_lock(&c->send_lock);
    c->closing = TRUE;
    if (c->connected) {
        guint8 hdr[NBD_REQUEST_SIZE] = { 0 };
        put_be32(hdr, NBD_REQUEST_MAGIC);
        put_be16(hdr + 6, NBD_CMD_DISC);
        struct iovec iov = { hdr, sizeof(hdr) };
        write_all(c->fd, &iov, 1);
    }
    g_mutex_unlock(&c->send_lock);
    drop_connection(c);
    guint64 *stop = g_new0(guint64, 1);
    g_async_queue_push(c->to_send, stop);
    g_thread_join(c->writer);
    g_async_queue_unref(c->to_send);
    g_autoptr(GPtrArray) left = waiting_requests(c);
    for (guint i = 0; i < left->len; i++) {
        NbdReq *r = left->pdata[i];
        remove_req(c, r);
        Parent *p = r->parent;
        req_free(r);
        finish_parent(c, p, -EIO);
    }
    g_hash_table_unref(c->reqs);
    vmm_splice_pipe_free(c->pipe);
    g_mutex_clear(&c->send_lock);
    g_mutex_clear(&c->lock);
    g_cond_clear(&c->idle);
    g_free(c->name);
    g_free(c);
}
