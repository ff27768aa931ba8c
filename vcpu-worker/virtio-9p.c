/* virtio-9p: see virtio-9p.h.
 *
 * Threads: the I/O thread (queue_notify) takes requests off the ring, gives
 * each a wire tag and sends it; the reader thread of the current connection
 * reads replies and completes their requests; a reset comes from a vCPU
 * thread through the transport.
 *
 * Locks: SEND_LOCK serialises writes to the socket and guards the
 * connection's fd and generation; LOCK (the transport's queue lock) guards
 * the ring, the table of requests in flight and the session state. Order:
 * send_lock, then lock. The reader takes a request out of the table before
 * it reads the reply into the request's buffers; a reset waits until that
 * read is done (RECEIVING), then drops the requests in flight: their replies,
 * when they come, are read and thrown away, and their wire tags stay taken
 * until then. */
#include "vcpu-worker/virtio-9p.h"
#include "common/error.h"
#include "common/iov.h"
#include "common/helper.h"
#include "common/log.h"
#include "common/splice.h"
#include "proto/9p.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define RLERROR_SIZE 11
#define TFLUSH_SIZE 9
#define MAX_TAG_BYTES (0x100 - 2)    /* the transport's config space is 256 bytes */
/* Messages this long or longer go by vmsplice when splicing is on; shorter
 * ones cost fewer system calls as a plain send. */
#define SPLICE_MIN_SEND (64 * 1024)

typedef struct {
    VmmVqElem *elem;          /* NULL: dropped by a reset, the reply is thrown away */
    guint16 guest_tag, wire_tag;
    guint8 type;
    guint64 seq;              /* submission order */
    bool flush_has_target;
    guint16 flush_target;     /* Tflush: the wire tag it cancels */
    bool in_guest;            /* sent as Tread.vmm/Twrite.vmm: fsd moves the data itself */
    guint32 data_room;        /* Tread.vmm/Twrite.vmm: the bytes its list offers */
} Req;

/* One message to send, prepared under the lock and sent outside it. */
typedef struct {
    guint conn_gen;
    guint32 size;
    guint8 hdr[TFLUSH_SIZE];
    unsigned hdr_len;
    struct iovec *iov;        /* [0] the header, then the body in guest RAM */
    unsigned niov;
    guint8 *buf;              /* a Tread.vmm/Twrite.vmm message, made here */
} Send;

struct VmmVirtio9p {
    GMutex lock;
    GCond idle;
    unsigned idle_waiters;    /* a reset waiting on IDLE (lock) */
    GMutex send_lock;
    VmmSplicePipe *pipe;      /* large messages by reference (send_lock) */
    bool no_splice;           /* vmsplice failed other than by the connection: copies */
    char *id;
    char *tag;
    VmmVirtioMmio *transport;
    VmmVirtio9pLostFn lost;
    void *lost_opaque;

    int fd;                   /* -1: no connection */
    guint conn_gen;
    bool connected;
    bool had_session;         /* a Tversion went to a server */
    bool stale;               /* the server has none of the guest's fids */
    bool quiet;               /* the owner ends the connection: no lost hook */
    GThread *reader;

    GHashTable *pending;      /* wire tag -> Req */
    Req *receiving;           /* the reader writes into its buffers */
    guint16 next_tag;
    guint64 next_seq;

    guint8 *ram;              /* guest RAM here (lock), for Tread.vmm/Twrite.vmm */
    guint64 ram_size;
    bool server_ram;          /* the current connection's fsd maps it too */
    guint64 sent_in_guest;    /* Tread.vmm/Twrite.vmm sent (lock) */
};

static void put_le16(guint8 *b, guint16 v) { v = GUINT16_TO_LE(v); memcpy(b, &v, 2); }
static void put_le32(guint8 *b, guint32 v) { v = GUINT32_TO_LE(v); memcpy(b, &v, 4); }
static guint16 get_le16(const guint8 *b) { guint16 v; memcpy(&v, b, 2); return GUINT16_FROM_LE(v); }
static guint32 get_le32(const guint8 *b) { guint32 v; memcpy(&v, b, 4); return GUINT32_FROM_LE(v); }

static VmmVirtqueue *queue(VmmVirtio9p *p)
{
    return vmm_virtio_mmio_queue(p->transport, 0);
}

/* Called with p->lock held. A broadcast is a system call even with nobody
 * waiting, and the reader would make one per reply. */
static void wake_idle_locked(VmmVirtio9p *p)
{
    if (p->idle_waiters)
        g_cond_broadcast(&p->idle);
}

static void req_free(Req *r)
{
    g_free(r->elem);
    g_free(r);
}

/* ---- Answers the device makes itself ---------------------------------------- */

/* Puts LEN bytes of MSG at the start of ELEM's writable buffers and returns
 * ELEM to the driver (with nothing written if they do not fit). Called with
 * p->lock held; returns whether the driver wants an interrupt. */
static bool push_reply_locked(VmmVirtio9p *p, VmmVqElem *elem, const guint8 *msg, guint32 len)
{
    VmmVirtqueue *vq = queue(p);
    if (!vq->ready) {
        g_free(elem);
        return false;
    }
    guint32 used = elem->in_bytes >= len ? len : 0;
    if (used)
        vmm_iov_from_buf(elem->in, elem->n_in, 0, msg, used);
    vmm_vq_push(vq, elem, used);
    g_free(elem);
    return vmm_vq_should_notify(vq);
}

static bool reply_error_locked(VmmVirtio9p *p, VmmVqElem *elem, guint16 tag, int err)
{
    guint8 msg[RLERROR_SIZE];
    put_le32(msg, RLERROR_SIZE);
    msg[4] = P9_RLERROR;
    put_le16(msg + 5, tag);
    put_le32(msg + 7, (guint32)err);
    return push_reply_locked(p, elem, msg, sizeof(msg));
}

/* A request the server will never answer (flushed, or aborted by a
 * Tversion): its buffers go back unused, as QEMU returns a cancelled one. */
static bool push_empty_locked(VmmVirtio9p *p, VmmVqElem *elem)
{
    return push_reply_locked(p, elem, NULL, 0);
}

/* ---- Connection loss ------------------------------------------------------------- */

/* Fails every request in flight with EIO; returns how many, *NOTIFY set
 * when the driver wants an interrupt. Called with p->lock held. */
static unsigned fail_all_locked(VmmVirtio9p *p, bool *notify)
{
    unsigned n = 0;
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, p->pending);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        Req *r = v;
        if (r->elem) {
            *notify |= reply_error_locked(p, r->elem, r->guest_tag, EIO);
            r->elem = NULL;
            n++;
        }
        g_hash_table_iter_remove(&it);
    }
    return n;
}

/* The connection of generation GEN ended: the first to notice answers what
 * was in flight and wakes the other threads. The fd is closed only after
 * this ran (end_connection), so the shutdown cannot hit a reused number; it
 * is done without send_lock, which a sender stuck on a full socket holds. */
static void connection_lost(VmmVirtio9p *p, guint gen, const char *reason)
{
    bool notify = false;
    g_mutex_lock(&p->lock);
    if (gen != p->conn_gen || !p->connected) {
        g_mutex_unlock(&p->lock);
        return;
    }
    p->connected = false;
    unsigned failed = fail_all_locked(p, &notify);
    wake_idle_locked(p);   /* a reset waiting for reads in guest memory */
    p->stale = p->had_session;
    int fd = p->fd;
    VmmVirtio9pLostFn lost = p->quiet ? NULL : p->lost;
    void *opaque = p->lost_opaque;
    g_mutex_unlock(&p->lock);
    if (fd >= 0)
        shutdown(fd, SHUT_RDWR);

    if (lost || failed)
        vmm_log(vmm_helper_stopping() ? VMM_LOG_INFO : VMM_LOG_WARNING,
                "virtio-9p '%s': the connection to the 9P server ended (%s); %u request(s) failed with EIO",
                 p->id, reason, failed);
    if (notify)
        vmm_virtio_mmio_interrupt_vring(p->transport);
    if (lost)
        lost(opaque, reason, failed);
}

/* ---- Sending ------------------------------------------------------------------------ */

static gboolean send_all(int fd, struct iovec *iov, unsigned niov, int *err)
{
    *err = vmm_send_iov_all(fd, iov, niov, 0);
    return *err == 0;
}

static void send_free(Send *s)
{
    g_free(s->buf);
    g_free(s->iov);
    g_free(s);
}

/* Under send_lock: a large message (a Twrite's data) goes by reference to
 * the guest's pages (VMM_SPLICE=1), which stay as they are until the reply
 * completes the request. FALSE with *ERR: the stream is broken. */
static gboolean send_spliced(VmmVirtio9p *p, Send *s, int *err)
{
    if (!p->pipe) {
        g_autoptr(GError) e = NULL;
        p->pipe = vmm_splice_pipe_new(&e);
        if (!p->pipe) {
            vmm_debug("virtio-9p '%s': %s", p->id, e->message);
            p->no_splice = true;
            return send_all(p->fd, s->iov, s->niov, err);
        }
    }
    if (vmm_splice_send_iov(p->pipe, p->fd, s->iov, 1, s->iov + 1, s->niov - 1))
        return TRUE;
    *err = errno;
    if (*err != EPIPE && *err != ECONNRESET && *err != ENOTCONN && *err != ESHUTDOWN)
        p->no_splice = true;   /* the next connection sends by copy */
    vmm_splice_pipe_free(p->pipe);
    p->pipe = NULL;
    return FALSE;
}

static gboolean send_message(VmmVirtio9p *p, Send *s, int *err)
{
    if (!p->no_splice && s->size >= SPLICE_MIN_SEND && s->niov > 1 && vmm_splice_enabled())
        return send_spliced(p, s, err);
    return send_all(p->fd, s->iov, s->niov, err);
}

static void send_one(VmmVirtio9p *p, Send *s)
{
    int err = 0;
    g_mutex_lock(&p->send_lock);
    gboolean current = s->conn_gen == p->conn_gen && p->fd >= 0;
    gboolean ok = !current || send_message(p, s, &err);
    g_mutex_unlock(&p->send_lock);
    if (!ok) {
        g_autofree char *why = g_strdup_printf("sending: %s", g_strerror(err));
        connection_lost(p, s->conn_gen, why);
    }
}

/* ---- Taking requests off the ring ----------------------------------------------------- */

static Req *find_by_guest_tag_locked(VmmVirtio9p *p, guint16 tag)
{
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, p->pending);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        Req *r = v;
        if (r->elem && r->guest_tag == tag && r->type != P9_TFLUSH)
            return r;
    }
    return NULL;
}

static bool alloc_wire_tag_locked(VmmVirtio9p *p, guint16 *out)
{
    for (guint i = 0; i < 0xffff; i++) {
        guint16 t = p->next_tag++;
        if (p->next_tag == P9_NOTAG)
            p->next_tag = 0;
        if (t != P9_NOTAG && !g_hash_table_contains(p->pending, GUINT_TO_POINTER(t))) {
            *out = t;
            return true;
        }
    }
    return false;
}

/* The message as it goes on the wire: our tag in the header (and, for a
 * Tflush, the cancelled request's wire tag), the body from guest RAM. */
static Send *prepare_send(VmmVirtio9p *p, const Req *r, VmmVqElem *elem, guint32 size)
{
    Send *s = g_new0(Send, 1);
    s->conn_gen = p->conn_gen;
    s->size = size;
    s->iov = g_new(struct iovec, elem->n_out + 1);
    s->hdr_len = r->type == P9_TFLUSH ? TFLUSH_SIZE : P9_HDRSZ;
    put_le32(s->hdr, s->hdr_len == TFLUSH_SIZE ? TFLUSH_SIZE : size);
    s->hdr[4] = r->type;
    put_le16(s->hdr + 5, r->wire_tag);
    if (r->type == P9_TFLUSH)
        put_le16(s->hdr + 7, r->flush_target);
    s->iov[0] = (struct iovec){ .iov_base = s->hdr, .iov_len = s->hdr_len };
    s->niov = 1;
    if (r->type != P9_TFLUSH && size > P9_HDRSZ)
        s->niov += vmm_iov_slice(elem->out, elem->n_out, P9_HDRSZ, size - P9_HDRSZ, s->iov + 1, elem->n_out);
    return s;
}

/* ---- Data through guest memory (Tread.vmm, Twrite.vmm; proto/9p.h) ---------------------- */

#define RW_BODY 16        /* fid[4] offset[8] count[4] */
#define RREAD_HDR (P9_HDRSZ + 4)

/* Appends the guest buffers IOV (N) as segments of guest RAM to LIST
 * (adjacent ones merged); FALSE when one is not in RAM. */
static bool segments_of(VmmVirtio9p *p, const struct iovec *iov, unsigned n, GByteArray *list)
{
    g_autofree VmmRamRange *ranges = g_new(VmmRamRange, MAX(n, 1u));
    unsigned count = vmm_guest_ram_ranges(p->ram, p->ram_size, iov, n, ranges);
    for (unsigned i = 0; i < count; i++) {
        guint8 e[P9_VMM_SEGMENT_SIZE];
        guint64 le = GUINT64_TO_LE(ranges[i].offset);
        memcpy(e, &le, 8);
        put_le32(e + 8, ranges[i].len);
        g_byte_array_append(list, e, sizeof(e));
    }
    return count > 0;
}

/* A Tread or Twrite of the guest's as Tread.vmm/Twrite.vmm, when this
 * connection's fsd maps guest RAM and the data's buffers are all in it; NULL:
 * it goes as it is. Called with p->lock held. */
static Send *prepare_send_in_guest(VmmVirtio9p *p, Req *r, VmmVqElem *elem, guint32 size)
{
    if (!p->server_ram || !p->ram || (r->type != P9_TREAD && r->type != P9_TWRITE) ||
        size < P9_HDRSZ + RW_BODY)
        return NULL;
    guint8 body[RW_BODY];
    vmm_iov_to_buf(elem->out, elem->n_out, P9_HDRSZ, body, sizeof(body));
    guint32 count = get_le32(body + 12);
    guint64 data_at, data_len;
    const struct iovec *bufs;
    unsigned nbufs;
    if (r->type == P9_TWRITE) {
        if (count == 0 || size != P9_HDRSZ + RW_BODY + (guint64)count)
            return NULL;      /* fsd refuses it as it is */
        data_at = P9_HDRSZ + RW_BODY, data_len = count, bufs = elem->out, nbufs = elem->n_out;
    } else {
        if (size != P9_HDRSZ + RW_BODY || elem->in_bytes <= RREAD_HDR)
            return NULL;
        data_at = RREAD_HDR, data_len = MIN((guint64)count, elem->in_bytes - RREAD_HDR);
        if (data_len == 0)
            return NULL;
        bufs = elem->in, nbufs = elem->n_in;
    }
    g_autofree struct iovec *piece = g_new(struct iovec, nbufs);
    unsigned npiece = vmm_iov_slice(bufs, nbufs, data_at, data_len, piece, nbufs);
    g_autoptr(GByteArray) msg = g_byte_array_sized_new(P9_HDRSZ + RW_BODY + npiece * P9_VMM_SEGMENT_SIZE);
    g_byte_array_set_size(msg, P9_HDRSZ + RW_BODY);
    /* A list over the smallest msize a session can have (very fragmented
     * buffers) might not fit this one's: the message goes as it is. */
    if (!segments_of(p, piece, npiece, msg) || msg->len > P9_MIN_MSIZE)
        return NULL;
    put_le32(msg->data, msg->len);
    msg->data[4] = r->type == P9_TREAD ? P9_TREAD_VMM : P9_TWRITE_VMM;
    put_le16(msg->data + 5, r->wire_tag);
    memcpy(msg->data + P9_HDRSZ, body, 12);                /* fid, offset */
    put_le32(msg->data + P9_HDRSZ + 12, msg->len - P9_HDRSZ - RW_BODY);
    r->in_guest = true;
    r->data_room = (guint32)data_len;
    p->sent_in_guest++;
    Send *s = g_new0(Send, 1);
    s->conn_gen = p->conn_gen;
    s->size = msg->len;
    s->iov = g_new(struct iovec, 1);
    s->iov[0] = (struct iovec){ .iov_base = msg->data, .iov_len = msg->len };
    s->niov = 1;
    s->buf = g_byte_array_free(g_steal_pointer(&msg), FALSE);
    return s;
}

/* A Tread.vmm's reply (its count in C): the guest's Rread header, whose data
 * fsd put in place. FALSE: fsd claims more than the request offered. */
static bool finish_read_in_guest(Req *r, guint32 count, guint32 *size)
{
    if (r->type != P9_TREAD || count > r->data_room)
        return false;
    guint8 hdr[RREAD_HDR];
    put_le32(hdr, RREAD_HDR + count);
    hdr[4] = P9_RREAD;
    put_le16(hdr + 5, r->guest_tag);
    put_le32(hdr + 7, count);
    vmm_iov_from_buf(r->elem->in, r->elem->n_in, 0, hdr, sizeof(hdr));
    *size = RREAD_HDR + count;
    return true;
}

/* An Rread.vmm or Rwrite.vmm saying COUNT: the guest gets the Rread or Rwrite
 * it asked for (*SIZE bytes of it). FALSE: fsd's count is not possible. */
static bool finish_reply_in_guest(Req *r, guint8 type, guint32 count, guint32 *size)
{
    if (type == P9_RREAD_VMM)
        return finish_read_in_guest(r, count, size);
    if (r->type != P9_TWRITE || count > r->data_room)
        return false;
    guint8 hdr[RREAD_HDR];
    put_le32(hdr, RREAD_HDR);
    hdr[4] = P9_RWRITE;
    put_le16(hdr + 5, r->guest_tag);
    put_le32(hdr + 7, count);
    vmm_iov_from_buf(r->elem->in, r->elem->n_in, 0, hdr, sizeof(hdr));
    *size = RREAD_HDR;
    return true;
}

/* What a T-message gets without the server: an error or an Rflush. Returns
 * -1 when it goes to the server. Called with p->lock held. */
static int local_answer_locked(VmmVirtio9p *p, guint8 type, guint32 size, VmmVqElem *elem, Req **target)
{
    if (size < P9_HDRSZ || size > elem->out_bytes || (type & 1))
        return EINVAL;
    if (!p->connected || (p->stale && type != P9_TVERSION))
        return EIO;
    if (type == P9_TVERSION && g_hash_table_contains(p->pending, GUINT_TO_POINTER(P9_NOTAG)))
        return EBUSY;
    if (type == P9_TFLUSH) {
        guint8 old[2];
        if (size != TFLUSH_SIZE || vmm_iov_to_buf(elem->out, elem->n_out, P9_HDRSZ, old, 2) != 2)
            return EINVAL;
        *target = find_by_guest_tag_locked(p, get_le16(old));
        if (!*target)
            return 0;     /* nothing to cancel: Rflush at once */
    }
    return -1;
}

/* Takes one request off the ring: answers it here, or registers it and
 * appends its message to SENDS. FALSE when the ring is empty or broken
 * (*ERROR set). Called with p->lock held. */
static gboolean take_request_locked(VmmVirtio9p *p, GPtrArray *sends, bool *notify, GError **error)
{
    VmmVirtqueue *vq = queue(p);
    VmmVqElem *elem;
    switch (vmm_vq_pop(vq, &elem, error)) {
    case VMM_VQ_EMPTY: return FALSE;
    case VMM_VQ_ERROR: return FALSE;
    case VMM_VQ_OK: break;
    }
    guint8 hdr[P9_HDRSZ];
    if (elem->out_bytes < P9_HDRSZ || elem->in_bytes < P9_HDRSZ) {
        /* QEMU's virtio_error(): the driver broke the transport's rules. */
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "virtio-9p '%s': request %u has %" G_GUINT64_FORMAT " readable and %" G_GUINT64_FORMAT
                    " writable bytes, no room for a 9P header", p->id, elem->head, elem->out_bytes, elem->in_bytes);
        g_free(elem);
        return FALSE;
    }
    vmm_iov_to_buf(elem->out, elem->n_out, 0, hdr, sizeof(hdr));
    guint32 size = get_le32(hdr);
    guint8 type = hdr[4];
    guint16 tag = get_le16(hdr + 5);
    Req *target = NULL;
    int err = local_answer_locked(p, type, size, elem, &target);
    if (err == 0) {
        guint8 rflush[P9_HDRSZ];
        put_le32(rflush, P9_HDRSZ);
        rflush[4] = P9_RFLUSH;
        put_le16(rflush + 5, tag);
        *notify |= push_reply_locked(p, elem, rflush, sizeof(rflush));
        return TRUE;
    }
    Req *r = g_new0(Req, 1);
    r->guest_tag = tag;
    r->type = type;
    r->seq = p->next_seq++;
    if (err < 0 && type == P9_TVERSION)
        r->wire_tag = P9_NOTAG;
    else if (err < 0 && !alloc_wire_tag_locked(p, &r->wire_tag))
        err = EBUSY;
    if (err > 0) {
        g_free(r);
        *notify |= reply_error_locked(p, elem, tag, err);
        return TRUE;
    }
    if (target) {
        r->flush_has_target = true;
        r->flush_target = target->wire_tag;
    }
    if (type == P9_TVERSION) {
        /* A new session: the guest starts over with fids of its own. */
        p->had_session = true;
        p->stale = false;
    }
    Send *in_guest = prepare_send_in_guest(p, r, elem, size);
    g_ptr_array_add(sends, in_guest ? in_guest : prepare_send(p, r, elem, size));
    r->elem = elem;
    g_hash_table_insert(p->pending, GUINT_TO_POINTER(r->wire_tag), r);
    return TRUE;
}

static void p9_queue_notify(void *dev, unsigned q)
{
    VmmVirtio9p *p = dev;
    VmmVirtqueue *vq = queue(p);
    g_autoptr(GPtrArray) sends = g_ptr_array_new_with_free_func((GDestroyNotify)send_free);
    g_autoptr(GError) error = NULL;
    bool notify = false;

    g_mutex_lock(&p->lock);
    do {
        vmm_vq_set_notification(vq, false);
        while (take_request_locked(p, sends, &notify, &error))
            ;
        if (error)
            break;
        vmm_vq_set_notification(vq, true);
    } while (vmm_vq_has_avail(vq));
    g_mutex_unlock(&p->lock);

    /* Sent outside the lock: a full socket must not hold up replies. */
    for (guint i = 0; i < sends->len; i++)
        send_one(p, sends->pdata[i]);
    if (error)
        vmm_virtio_mmio_set_needs_reset(p->transport, error);
    if (notify)
        vmm_virtio_mmio_interrupt_vring(p->transport);
}

/* ---- Receiving ------------------------------------------------------------------------- */

static gboolean read_full(int fd, void *buf, size_t len, int *err)
{
    guint8 *b = buf;
    while (len > 0) {
        ssize_t n = read(fd, b, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            *err = n < 0 ? errno : 0;
            return FALSE;
        }
        b += n;
        len -= (size_t)n;
    }
    return TRUE;
}

static gboolean readv_full(int fd, struct iovec *iov, unsigned niov, int *err)
{
    while (niov > 0) {
        ssize_t n = readv(fd, iov, (int)MIN(niov, (unsigned)IOV_MAX));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            *err = n < 0 ? errno : 0;
            return FALSE;
        }
        niov = vmm_iov_consume(&iov, niov, (size_t)n);
    }
    return TRUE;
}

static gboolean discard(int fd, guint32 len, int *err)
{
    guint8 buf[4096];
    while (len > 0) {
        guint32 n = MIN(len, (guint32)sizeof(buf));
        if (!read_full(fd, buf, n, err))
            return FALSE;
        len -= n;
    }
    return TRUE;
}

/* The server answered R (whose reply of SIZE bytes now is in its buffers,
 * or which failed with ERR): return it, and act on what the reply means for
 * other requests. Called with p->lock held. */
static bool finish_locked(VmmVirtio9p *p, Req *r, guint8 type, guint32 size, int err)
{
    bool notify = false;
    if (r->elem)
        notify |= reply_error_locked(p, r->elem, r->guest_tag, err ? err : EIO);
    r->elem = NULL;
    if (type == P9_RFLUSH && r->flush_has_target) {
        /* The server answers a flushed request before its Rflush, if at all. */
        Req *t = g_hash_table_lookup(p->pending, GUINT_TO_POINTER(r->flush_target));
        if (t && t->type != P9_TFLUSH && t->seq < r->seq) {
            g_hash_table_steal(p->pending, GUINT_TO_POINTER(r->flush_target));
            if (t->elem)
                notify |= push_empty_locked(p, t->elem);
            t->elem = NULL;
            req_free(t);
        }
    } else if (type == P9_RVERSION) {
        /* A Tversion aborts what was outstanding before it. */
        GHashTableIter it;
        gpointer v;
        g_hash_table_iter_init(&it, p->pending);
        while (g_hash_table_iter_next(&it, NULL, &v)) {
            Req *t = v;
            if (t->seq < r->seq) {
                if (t->elem)
                    notify |= push_empty_locked(p, t->elem);
                t->elem = NULL;
                g_hash_table_iter_steal(&it);
                req_free(t);
            }
        }
    }
    req_free(r);
    return notify;
}

/* Reads one reply's body straight into the request's writable buffers after
 * the header (with the guest's tag). */
static gboolean receive_into(VmmVirtio9p *p, int fd, Req *r, const guint8 *wire_hdr, guint32 size, int *err)
{
    VmmVqElem *e = r->elem;
    guint8 hdr[P9_HDRSZ];
    memcpy(hdr, wire_hdr, P9_HDRSZ);
    put_le16(hdr + 5, r->guest_tag);
    vmm_iov_from_buf(e->in, e->n_in, 0, hdr, P9_HDRSZ);
    if (size == P9_HDRSZ)
        return TRUE;
    g_autofree struct iovec *iov = g_new(struct iovec, e->n_in);
    unsigned n = vmm_iov_slice(e->in, e->n_in, P9_HDRSZ, size - P9_HDRSZ, iov, e->n_in);
    return readv_full(fd, iov, n, err);
}

typedef struct {
    VmmVirtio9p *p;
    int fd;
    guint gen;
} ReaderArgs;

static char *lost_reason(int err)
{
    return err ? g_strdup_printf("receiving: %s", g_strerror(err)) : g_strdup("the server closed the connection");
}

/* One reply: FALSE when the connection is over (*WHY says why). */
static gboolean reader_step(VmmVirtio9p *p, int fd, guint gen, char **why)
{
    guint8 hdr[P9_HDRSZ];
    int err = 0;
    if (!read_full(fd, hdr, sizeof(hdr), &err)) {
        *why = lost_reason(err);
        return FALSE;
    }
    guint32 size = get_le32(hdr);
    guint8 type = hdr[4];
    guint16 wire_tag = get_le16(hdr + 5);
    if (size < P9_HDRSZ) {
        *why = g_strdup_printf("the server sent a message of %u bytes", size);
        return FALSE;
    }
    g_mutex_lock(&p->lock);
    Req *r = gen == p->conn_gen ? g_hash_table_lookup(p->pending, GUINT_TO_POINTER(wire_tag)) : NULL;
    if (r)
        g_hash_table_steal(p->pending, GUINT_TO_POINTER(wire_tag));
    /* Rread.vmm/Rwrite.vmm answer only what went as Tread.vmm/Twrite.vmm. */
    bool vmm_reply = type == P9_RREAD_VMM || type == P9_RWRITE_VMM;
    gboolean fits = r && r->elem && size <= r->elem->in_bytes &&
                    (!vmm_reply || (r->in_guest && size == RREAD_HDR && r->elem->in_bytes >= RREAD_HDR));
    if (fits)
        p->receiving = r;
    g_mutex_unlock(&p->lock);

    gboolean ok;
    bool bad = false;
    guint32 used = size;
    if (fits && vmm_reply) {
        guint8 count[4];
        ok = read_full(fd, count, sizeof(count), &err);
        bad = ok && !finish_reply_in_guest(r, type, get_le32(count), &used);
    } else {
        ok = fits ? receive_into(p, fd, r, hdr, size, &err) : discard(fd, size - P9_HDRSZ, &err);
    }
    if (!r)
        vmm_debug("virtio-9p '%s': reply type %u for tag %u that nothing waits for", p->id, type, wire_tag);

    g_mutex_lock(&p->lock);
    p->receiving = NULL;
    wake_idle_locked(p);
    bool notify = false;
    if (r) {
        /* A reply bigger than the guest's buffers (msize not respected) is an I/O error. */
        int fail = !ok || bad ? EIO : r->elem && !fits ? EIO : 0;
        if (fits && ok && !bad && r->elem) {
            VmmVirtqueue *vq = queue(p);
            if (vq->ready) {
                vmm_vq_push(vq, r->elem, used);
                notify = vmm_vq_should_notify(vq);
            }
            g_free(r->elem);
            r->elem = NULL;
        }
        notify |= finish_locked(p, r, type, size, fail);
    }
    g_mutex_unlock(&p->lock);
    if (notify)
        vmm_virtio_mmio_interrupt_vring(p->transport);
    if (!ok)
        *why = lost_reason(err);
    return ok;
}

static gpointer reader_main(gpointer data)
{
    ReaderArgs *a = data;
    char *why = NULL;
    while (reader_step(a->p, a->fd, a->gen, &why))
        ;
    connection_lost(a->p, a->gen, why);
    g_free(why);
    g_free(a);
    return NULL;
}

/* ---- Connections ------------------------------------------------------------------------ */

/* Ends the current connection: its thread is joined and its fd closed.
 * HOOK: tell the owner, as when the server goes. */
static void end_connection(VmmVirtio9p *p, bool hook)
{
    g_mutex_lock(&p->lock);
    guint gen = p->conn_gen;
    GThread *reader = p->reader;
    p->reader = NULL;
    p->quiet = !hook;
    g_mutex_unlock(&p->lock);

    /* The reader notices the end and reports it (connection_lost). */
    connection_lost(p, gen, "disconnected by vcpu-worker");
    if (reader)
        g_thread_join(reader);

    g_mutex_lock(&p->send_lock);
    g_mutex_lock(&p->lock);
    if (p->fd >= 0)
        close(p->fd);
    p->fd = -1;
    p->quiet = false;
    g_mutex_unlock(&p->lock);
    g_mutex_unlock(&p->send_lock);
}

void vmm_virtio_9p_set_guest_memory(VmmVirtio9p *p, guint8 *base, guint64 size)
{
    g_mutex_lock(&p->lock);
    p->ram = base;
    p->ram_size = base ? size : 0;
    g_mutex_unlock(&p->lock);
}

void vmm_virtio_9p_connect(VmmVirtio9p *p, int fd, bool server_ram)
{
    end_connection(p, false);
    g_mutex_lock(&p->send_lock);
    g_mutex_lock(&p->lock);
    p->fd = fd;
    p->server_ram = server_ram;
    p->conn_gen++;
    p->connected = true;
    p->stale = p->had_session;
    ReaderArgs *a = g_new0(ReaderArgs, 1);
    *a = (ReaderArgs){ .p = p, .fd = fd, .gen = p->conn_gen };
    g_autofree char *name = g_strdup_printf("9p-rx %s", p->id);
    p->reader = g_thread_new(name, reader_main, a);
    g_mutex_unlock(&p->lock);
    g_mutex_unlock(&p->send_lock);
}

void vmm_virtio_9p_disconnect(VmmVirtio9p *p)
{
    end_connection(p, true);
}

guint64 vmm_virtio_9p_sent_in_guest(VmmVirtio9p *p)
{
    g_mutex_lock(&p->lock);
    guint64 n = p->sent_in_guest;
    g_mutex_unlock(&p->lock);
    return n;
}

bool vmm_virtio_9p_connected(VmmVirtio9p *p)
{
    g_mutex_lock(&p->lock);
    bool c = p->connected;
    g_mutex_unlock(&p->lock);
    return c;
}

unsigned vmm_virtio_9p_in_flight(VmmVirtio9p *p)
{
    unsigned n = 0;
    g_mutex_lock(&p->lock);
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, p->pending);
    while (g_hash_table_iter_next(&it, NULL, &v))
        n += ((Req *)v)->elem != NULL;
    g_mutex_unlock(&p->lock);
    return n;
}

/* ---- The device --------------------------------------------------------------------------- */

static void p9_get_config(void *dev, uint8_t *cfg)
{
    VmmVirtio9p *p = dev;
    size_t len = strlen(p->tag);
    put_le16(cfg, (guint16)len);
    memcpy(cfg + 2, p->tag, len);
}

/* Tread.vmm/Twrite.vmm requests in flight: fsd may still write into or read
 * from their buffers. Called with p->lock held. */
static bool in_guest_pending_locked(VmmVirtio9p *p)
{
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, p->pending);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        if (((Req *)v)->in_guest)
            return true;
    }
    return false;
}

#define RESET_WAIT_US (10 * G_USEC_PER_SEC)

/* Before a reset (no transport lock held, so the reader can complete
 * requests and raise their interrupts): a reset driver may reuse its
 * buffers at once, so what fsd reads or writes straight in guest RAM
 * finishes first, as QEMU drains its requests. Bounded: an fsd that does not
 * answer loses its connection. */
static void p9_quiesce(void *dev)
{
    VmmVirtio9p *p = dev;
    gint64 deadline = g_get_monotonic_time() + RESET_WAIT_US;
    g_mutex_lock(&p->lock);
    p->idle_waiters++;
    while (in_guest_pending_locked(p) && p->connected) {
        if (!g_cond_wait_until(&p->idle, &p->lock, deadline)) {
            vmm_warn("virtio-9p '%s': reset: fsd did not finish its I/O in guest memory in %d s; "
                     "disconnecting", p->id, (int)(RESET_WAIT_US / G_USEC_PER_SEC));
            if (p->fd >= 0)
                shutdown(p->fd, SHUT_RDWR);
            break;
        }
    }
    p->idle_waiters--;
    g_mutex_unlock(&p->lock);
}

/* Called with p->lock held, by the transport. */
static void p9_reset(void *dev)
{
    VmmVirtio9p *p = dev;
    p->idle_waiters++;
    while (p->receiving)
        g_cond_wait(&p->idle, &p->lock);
    p->idle_waiters--;
    /* The driver forgot its requests; their wire tags stay taken until the
     * server's replies come and are thrown away. */
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, p->pending);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        Req *r = v;
        g_clear_pointer(&r->elem, g_free);
    }
}

static const VmmVirtioDeviceOps p9_device_ops = {
    .device_id = VIRTIO_ID_9P,
    .get_config = p9_get_config,
    .queue_notify = p9_queue_notify,
    .reset = p9_reset,
    .quiesce = p9_quiesce,
};

VmmVirtio9p *vmm_virtio_9p_new(const char *id, const char *tag, const VmmGuestMem *mem)
{
    VmmVirtio9p *p = g_new0(VmmVirtio9p, 1);
    g_mutex_init(&p->lock);
    g_mutex_init(&p->send_lock);
    g_cond_init(&p->idle);
    p->id = g_strdup(id ? id : "virtio-9p");
    p->tag = g_strndup(tag ? tag : "", MAX_TAG_BYTES);
    p->fd = -1;
    p->pending = g_hash_table_new_full(NULL, NULL, NULL, (GDestroyNotify)req_free);

    g_autofree char *name = g_strdup_printf("virtio-9p '%s'", p->id);
    VmmVirtioMmioConfig tc = {
        .name = name,
        .mem = mem,
        .ops = &p9_device_ops,
        .dev = p,
        .queue_lock = &p->lock,
        .num_queues = 1,
        .queue_num_max = VMM_VIRTIO_9P_QUEUE_SIZE,
        .device_features = 1ULL << VIRTIO_9P_F_MOUNT_TAG,
        .config_size = 2 + (uint32_t)strlen(p->tag),
    };
    p->transport = vmm_virtio_mmio_new(&tc);
    return p;
}

void vmm_virtio_9p_free(VmmVirtio9p *p)
{
    if (!p)
        return;
    end_connection(p, false);
    vmm_virtio_mmio_free(p->transport);
    g_hash_table_unref(p->pending);
    g_free(p->id);
    g_free(p->tag);
    g_cond_clear(&p->idle);
    g_mutex_clear(&p->lock);
    g_mutex_clear(&p->send_lock);
    vmm_splice_pipe_free(p->pipe);
    g_free(p);
}

VmmVirtioMmio *vmm_virtio_9p_transport(VmmVirtio9p *p)
{
    return p->transport;
}

void vmm_virtio_9p_set_lost_hook(VmmVirtio9p *p, VmmVirtio9pLostFn fn, void *opaque)
{
    g_mutex_lock(&p->lock);
    p->lost = fn;
    p->lost_opaque = opaque;
    g_mutex_unlock(&p->lock);
}

/* ---- Probing a server --------------------------------------------------------------------- */

static gboolean wait_fd(int fd, short events, gint64 deadline, GError **error)
{
    for (;;) {
        gint64 left = (deadline - g_get_monotonic_time()) / 1000;
        if (left <= 0) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_FAILED, "the 9P server did not answer Tversion in time");
            return FALSE;
        }
        struct pollfd pfd = { .fd = fd, .events = events };
        int n = poll(&pfd, 1, (int)MIN(left, G_MAXINT));
        if (n > 0)
            return TRUE;
        if (n < 0 && errno != EINTR)
            return vmm_set_errno(error, errno, "9P probe: poll");
    }
}

static gboolean probe_read(int fd, guint8 *buf, size_t len, gint64 deadline, GError **error)
{
    while (len > 0) {
        if (!wait_fd(fd, POLLIN, deadline, error))
            return FALSE;
        ssize_t n = recv(fd, buf, len, MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < 0)
            return vmm_set_errno(error, errno, "9P probe: receiving");
        if (n == 0) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_FAILED, "the 9P server closed the connection");
            return FALSE;
        }
        buf += n;
        len -= (size_t)n;
    }
    return TRUE;
}

gboolean vmm_9p_probe(int fd, guint32 msize, int timeout_ms, guint32 *msize_out, GError **error)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    const size_t vlen = strlen(P9_VERSION_L);
    guint8 msg[64];
    guint32 size = (guint32)(P9_HDRSZ + 4 + 2 + vlen);
    put_le32(msg, size);
    msg[4] = P9_TVERSION;
    put_le16(msg + 5, P9_NOTAG);
    put_le32(msg + 7, msize);
    put_le16(msg + 11, (guint16)vlen);
    memcpy(msg + 13, P9_VERSION_L, vlen);
    if (!wait_fd(fd, POLLOUT, deadline, error))
        return FALSE;
    if (send(fd, msg, size, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)size)
        return vmm_set_errno(error, errno, "9P probe: sending Tversion");
    guint8 hdr[P9_HDRSZ];
    if (!probe_read(fd, hdr, sizeof(hdr), deadline, error))
        return FALSE;
    guint32 rsize = get_le32(hdr);
    if (rsize < P9_HDRSZ + 4 || rsize > sizeof(msg) || get_le16(hdr + 5) != P9_NOTAG ||
        (hdr[4] != P9_RVERSION && hdr[4] != P9_RLERROR)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_FAILED,
                    "the peer is not a 9P2000.L server (reply type %u, %u bytes)", hdr[4], rsize);
        return FALSE;
    }
    if (!probe_read(fd, msg, rsize - P9_HDRSZ, deadline, error))
        return FALSE;
    if (hdr[4] == P9_RLERROR)
        return vmm_set_errno(error, (int)get_le32(msg), "the 9P server refused Tversion");
    guint16 slen = rsize >= P9_HDRSZ + 6 ? get_le16(msg + 4) : 0;
    if (rsize != (guint32)(P9_HDRSZ + 6 + slen) || slen != vlen || memcmp(msg + 6, P9_VERSION_L, vlen) != 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_FAILED, "the 9P server does not speak %s", P9_VERSION_L);
        return FALSE;
    }
    *msize_out = get_le32(msg);
    return TRUE;
}
