/* The 9P2000.L server core: connections, the fid table, the worker pool and
 * flush. Messages arrive whole from the transport; Tversion and Tflush are
 * answered at once, everything else runs on the export's worker pool, so a
 * slow fsync does not hold up a readdir and replies go out in any order;
 * quick requests of a lone connection run at once (fsd_conn_set_run_inline).
 * The operations themselves are in fsd/9p-ops.c. */
#include "fsd/9p-server.h"
#include "common/error.h"
#include "common/log.h"
#include "common/splice.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

/* ---- the export ---- */

void fsd_export_config_init(FsdExportConfig *c)
{
    memset(c, 0, sizeof(*c));
    c->model = FSD_SM_PASSTHROUGH;
    c->fmode = 0600;   /* QEMU's SM_LOCAL_MODE_BITS */
    c->dmode = 0700;   /* SM_LOCAL_DIR_MODE_BITS */
    c->max_msize = 1024 * 1024;
    c->threads = 16;
}

void fsd_export_config_clear(FsdExportConfig *c)
{
    g_free(c->path);
    g_free(c->tag);
    memset(c, 0, sizeof(*c));
}

static void worker(gpointer data, gpointer user);

FsdExport *fsd_export_new(const FsdExportConfig *c, GError **error)
{
    if (!c->path) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "export: no path given");
        return NULL;
    }
    if (!fsd_throttle_config_check(&c->throttle, error))
        return NULL;
    int fd = open(c->path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        vmm_set_errno(error, errno, "export '%s'", c->path);
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        vmm_set_errno(error, errno, "export '%s': stat", c->path);
        close(fd);
        return NULL;
    }
    FsdExport *e = g_new0(FsdExport, 1);
    e->cfg = *c;
    e->cfg.path = g_strdup(c->path);
    e->cfg.tag = g_strdup(c->tag);
    if (e->cfg.max_msize < P9_MIN_MSIZE)
        e->cfg.max_msize = P9_MIN_MSIZE;
    if (e->cfg.threads == 0)
        e->cfg.threads = 16;
    e->rootfd = fd;
    e->root_dev = st.st_dev;
    if (fsd_throttle_config_enabled(&c->throttle))
        e->throttle = fsd_throttle_new(&c->throttle);
    e->pool = g_thread_pool_new(worker, e, (gint)e->cfg.threads, FALSE, error);
    if (!e->pool) {
        fsd_export_free(e);
        return NULL;
    }
    return e;
}

void fsd_export_free(FsdExport *e)
{
    if (!e)
        return;
    if (e->pool)
        g_thread_pool_free(e->pool, FALSE, TRUE);
    fsd_throttle_free(e->throttle);
    close(e->rootfd);
    fsd_export_config_clear(&e->cfg);
    g_free(e);
}

int fsd_export_rootfd(FsdExport *e)
{
    return e->rootfd;
}

/* ---- fids ---- */

static void fid_free(Fid *f)
{
    if (f->fd >= 0)
        close(f->fd);
    fsd_node_unref(f->node);
    if (f->xattr)
        g_byte_array_unref(f->xattr);
    g_free(f->xattr_name);
    g_mutex_clear(&f->lock);
    g_free(f);
}

void fsd_fid_unref(Fid *f)
{
    if (f && g_atomic_int_dec_and_test(&f->ref))
        fid_free(f);
}

Fid *fsd_fid_new(guint32 num, guint32 uid, FsdNode *node)
{
    Fid *f = g_new0(Fid, 1);
    f->ref = 1;
    f->num = num;
    f->uid = uid;
    f->node = node;
    f->fd = -1;
    f->kind = FID_PATH;
    g_mutex_init(&f->lock);
    return f;
}

Fid *fsd_conn_fid(FsdConn *c, guint32 num)
{
    g_mutex_lock(&c->lock);
    Fid *f = g_hash_table_lookup(c->fids, GUINT_TO_POINTER(num));
    if (f)
        g_atomic_int_inc(&f->ref);
    g_mutex_unlock(&c->lock);
    return f;
}

gboolean fsd_conn_fid_exists(FsdConn *c, guint32 num)
{
    g_mutex_lock(&c->lock);
    gboolean found = g_hash_table_contains(c->fids, GUINT_TO_POINTER(num));
    g_mutex_unlock(&c->lock);
    return found;
}

int fsd_conn_fid_add(FsdConn *c, Fid *f)
{
    int rc = 0;
    g_mutex_lock(&c->lock);
    if (g_hash_table_contains(c->fids, GUINT_TO_POINTER(f->num))) {
        rc = -EEXIST;
    } else {
        g_atomic_int_inc(&f->ref);
        g_hash_table_insert(c->fids, GUINT_TO_POINTER(f->num), f);
    }
    g_mutex_unlock(&c->lock);
    return rc;
}

Fid *fsd_conn_fid_remove(FsdConn *c, guint32 num)
{
    g_mutex_lock(&c->lock);
    Fid *f = NULL;
    g_hash_table_steal_extended(c->fids, GUINT_TO_POINTER(num), NULL, (gpointer *)&f);
    g_mutex_unlock(&c->lock);
    return f;
}

FsdNode *fsd_fid_node(Fid *f)
{
    g_mutex_lock(&f->lock);
    FsdNode *n = fsd_node_ref(f->node);
    g_mutex_unlock(&f->lock);
    return n;
}

void fsd_fid_set_node(Fid *f, FsdNode *n)
{
    g_mutex_lock(&f->lock);
    FsdNode *old = f->node;
    f->node = n;
    g_mutex_unlock(&f->lock);
    fsd_node_unref(old);
}

void fsd_conn_fix_renamed(FsdConn *c, dev_t pdev, ino_t pino, const char *oldname,
                          FsdNode *newdir, const char *newname)
{
    g_mutex_lock(&c->lock);
    GHashTableIter it;
    gpointer value;
    g_hash_table_iter_init(&it, c->fids);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        Fid *f = value;
        g_mutex_lock(&f->lock);
        FsdNode *n = f->node;
        if (n->parent && n->parent->dev == pdev && n->parent->ino == pino && strcmp(n->name, oldname) == 0) {
            f->node = fsd_node_moved(n, newdir, newname);
            fsd_node_unref(n);
        }
        g_mutex_unlock(&f->lock);
    }
    g_mutex_unlock(&c->lock);
}

/* ---- connections ---- */

static void conn_free(FsdConn *c)
{
    g_hash_table_destroy(c->fids);
    g_hash_table_destroy(c->pending);
    g_mutex_clear(&c->lock);
    g_cond_clear(&c->idle);
    g_free(c);
}

static void conn_unref(FsdConn *c)
{
    if (g_atomic_int_dec_and_test(&c->ref))
        conn_free(c);
}

FsdConn *fsd_conn_new(FsdExport *e, FsdSendFunc send, gpointer user)
{
    FsdConn *c = g_new0(FsdConn, 1);
    c->ref = 1;
    c->e = e;
    c->send = send;
    c->user = user;
    g_mutex_init(&c->lock);
    g_cond_init(&c->idle);
    c->fids = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, (GDestroyNotify)fsd_fid_unref);
    c->pending = g_hash_table_new(g_direct_hash, g_direct_equal);
    c->msize = e->cfg.max_msize;
    return c;
}

void fsd_conn_set_guest_memory(FsdConn *c, guint8 *base, guint64 size)
{
    c->mem = base;
    c->mem_size = base ? size : 0;
}

void fsd_conn_set_run_inline(FsdConn *c, gboolean on)
{
    g_atomic_int_set(&c->run_inline, on ? 1 : 0);
}

guint32 fsd_conn_msize(FsdConn *c)
{
    g_mutex_lock(&c->lock);
    guint32 m = c->msize;
    g_mutex_unlock(&c->lock);
    return m;
}

guint fsd_conn_pending(FsdConn *c)
{
    g_mutex_lock(&c->lock);
    guint n = g_hash_table_size(c->pending);
    g_mutex_unlock(&c->lock);
    return n;
}

/* Drops every request not yet started and makes the replies of the running
 * ones go nowhere (a new session or a closed connection). Locked. */
static void conn_reset_locked(FsdConn *c)
{
    c->generation++;
    GHashTableIter it;
    gpointer value;
    g_hash_table_iter_init(&it, c->pending);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        Req *r = value;
        g_atomic_int_set(&r->cancelled, 1);
        if (r->flushes)
            g_array_set_size(r->flushes, 0);
    }
    g_hash_table_remove_all(c->pending);
    g_hash_table_remove_all(c->fids);
}

void fsd_conn_close(FsdConn *c)
{
    g_mutex_lock(&c->lock);
    c->closed = TRUE;
    conn_reset_locked(c);
    g_mutex_unlock(&c->lock);
    conn_unref(c);
}

/* Encodes and sends F, or Rlerror(EMSGSIZE) if it does not fit; F's data
 * is in PIPE when that is not NULL. Locked. */
static void send_locked(FsdConn *c, const P9Fcall *f, VmmSplicePipe *pipe)
{
    if (c->closed)
        return;
    g_autoptr(GByteArray) out = g_byte_array_new();
    g_autoptr(GError) err = NULL;
    guint32 data_len = 0;
    if (!p9_encode_head(f, c->msize, out, &data_len, &err)) {
        vmm_warn("9p: reply %s to tag %u: %s", p9_type_name(f->type), f->tag, err->message);
        P9Fcall e = { .type = P9_RLERROR, .tag = f->tag, .ecode = EMSGSIZE };
        if (!p9_encode(&e, G_MAXUINT32, out, NULL))
            return;
        pipe = NULL;
        data_len = 0;
    }
    struct iovec iov[2] = {
        { .iov_base = out->data, .iov_len = out->len },
        { .iov_base = (void *)f->data, .iov_len = data_len },
    };
    if (pipe)
        c->send(c, iov, 1, pipe, data_len, c->user);
    else
        c->send(c, iov, data_len ? 2 : 1, NULL, 0, c->user);
}

static void send_error_locked(FsdConn *c, guint16 tag, int err)
{
    P9Fcall f = { .type = P9_RLERROR, .tag = tag, .ecode = (guint32)err };
    send_locked(c, &f, NULL);
}

static void send_error(FsdConn *c, guint16 tag, int err)
{
    g_mutex_lock(&c->lock);
    send_error_locked(c, tag, err);
    g_mutex_unlock(&c->lock);
}

static void req_free(Req *r)
{
    g_free(r->segs);
    p9_fcall_clear(&r->in);
    g_free(r->buf);
    if (r->flushes)
        g_array_unref(r->flushes);
    conn_unref(r->conn);
    g_free(r);
}

/* The request is over: its reply (if any, and if anyone still listens) goes
 * out, then the Rflush of every flush that waited for it. */
static void req_finish(Req *r, P9Fcall *reply)
{
    FsdConn *c = r->conn;
    g_mutex_lock(&c->lock);
    /* A broadcast is a system call even with nobody waiting: only for a
     * Tversion that waits for the running requests. */
    if (r->started && --c->running == 0 && c->idle_waiters)
        g_cond_broadcast(&c->idle);
    if (g_hash_table_lookup(c->pending, GUINT_TO_POINTER(r->tag)) == r)
        g_hash_table_remove(c->pending, GUINT_TO_POINTER(r->tag));
    gboolean current = r->generation == c->generation;
    if (reply && current)
        send_locked(c, reply, r->pipe);
    if (current && r->flushes) {
        for (guint i = 0; i < r->flushes->len; i++) {
            P9Fcall f = { .type = P9_RFLUSH, .tag = g_array_index(r->flushes, guint16, i) };
            send_locked(c, &f, NULL);
        }
    }
    g_mutex_unlock(&c->lock);
    req_free(r);
}

static gboolean is_throttled(guint8 type)
{
    return type == P9_TREAD || type == P9_TWRITE || type == P9_TREAD_VMM || type == P9_TWRITE_VMM;
}

static gboolean is_write(guint8 type)
{
    return type == P9_TWRITE || type == P9_TWRITE_VMM;
}

/* The data bytes a request moves, for throttling. */
static guint64 data_bytes(const Req *r, guint32 msize)
{
    if (r->segs)
        return is_write(r->in.type) ? r->seg_bytes : MIN(r->seg_bytes, (guint64)msize);
    return is_write(r->in.type) ? r->in.count : MIN(r->in.count, msize);
}

static GPrivate worker_pipe_key = G_PRIVATE_INIT((GDestroyNotify)vmm_splice_pipe_free);

VmmSplicePipe *fsd_worker_pipe(void)
{
    if (!vmm_splice_enabled())
        return NULL;
    VmmSplicePipe *p = g_private_get(&worker_pipe_key);
    if (!p) {
        p = vmm_splice_pipe_new(NULL);
        g_private_set(&worker_pipe_key, p);
    }
    return p;
}

/* A reply that did not go out (its connection closed) or a send that
 * failed half way leaves bytes in the pipe: the next read gets a new one. */
static void worker_pipe_check(VmmSplicePipe *used)
{
    if (used && !vmm_splice_pipe_reusable(used))
        g_private_replace(&worker_pipe_key, NULL);
}

static void worker(gpointer data, gpointer user)
{
    Req *r = data;
    FsdExport *e = user;
    FsdConn *c = r->conn;
    if (e->throttle && is_throttled(r->in.type)) {
        guint64 bytes = data_bytes(r, c->msize);
        if (!fsd_throttle_wait(e->throttle, is_write(r->in.type), bytes, &r->cancelled)) {
            req_finish(r, NULL);
            return;
        }
    }
    g_mutex_lock(&c->lock);
    gboolean go = !g_atomic_int_get(&r->cancelled) && r->generation == c->generation;
    r->started = go;
    c->running += go ? 1 : 0;
    g_mutex_unlock(&c->lock);
    if (!go) {
        req_finish(r, NULL);
        return;
    }
    P9Fcall out = { .tag = r->tag };
    int rc = fsd_ops_dispatch(c, r, &out);
    if (rc < 0) {
        p9_fcall_clear(&out);
        out = (P9Fcall){ .type = P9_RLERROR, .tag = r->tag, .ecode = (guint32)-rc };
    } else {
        out.type = r->in.type + 1;
        out.tag = r->tag;
    }
    /* Reply data (read, readdir) is a buffer the operation made. */
    guint8 *data_buf = (guint8 *)out.data;
    VmmSplicePipe *pipe = r->pipe;
    req_finish(r, &out);
    worker_pipe_check(pipe);
    g_free(data_buf);
    out.data = NULL;
    p9_fcall_clear(&out);
}

/* Data requests up to this size are quick (a few pages of page cache). */
#define QUICK_IO_MAX (64u * 1024)

/* Requests that cannot wait for anything but the disk and are bounded in
 * size: names and attributes, locks (fsd never waits for one: F_OFD_SETLK),
 * xattrs (64 KiB at most), opens without O_TRUNC (a fifo's is non-blocking)
 * and small reads and writes; a big read or write too when it is the only
 * request in flight (ALONE), so that sequential I/O costs no handoff while
 * a request that comes during it waits at most for that one. Not quick:
 * fsync, readdir (up to msize of entries), a truncate, a big read or write
 * beside others, and any I/O that throttling or writeout=immediate may make
 * wait. */
static gboolean is_quick(FsdConn *c, const Req *r, gboolean alone)
{
    const P9Fcall *in = &r->in;
    switch (in->type) {
    case P9_TWALK: case P9_TGETATTR: case P9_TCLUNK: case P9_TSTATFS: case P9_TREADLINK:
    case P9_TLCREATE: case P9_TMKDIR: case P9_TMKNOD: case P9_TSYMLINK: case P9_TLINK:
    case P9_TRENAME: case P9_TRENAMEAT: case P9_TUNLINKAT: case P9_TREMOVE:
    case P9_TLOCK: case P9_TGETLOCK: case P9_TXATTRWALK: case P9_TXATTRCREATE:
        return TRUE;
    case P9_TLOPEN:
        return !(in->flags & P9_DOTL_TRUNC);
    case P9_TSETATTR:
        return !(in->setattr.valid & P9_ATTR_SIZE);
    case P9_TREAD: case P9_TWRITE: case P9_TREAD_VMM: case P9_TWRITE_VMM:
        return !c->e->throttle && !c->e->cfg.writeout_immediate &&
               (alone || data_bytes(r, c->msize) <= QUICK_IO_MAX);
    default:
        return FALSE;
    }
}

static void handle_version(FsdConn *c, const P9Fcall *in)
{
    P9Fcall out = { .type = P9_RVERSION, .tag = in->tag };
    g_mutex_lock(&c->lock);
    if (in->msize < P9_MIN_MSIZE) {
        send_error_locked(c, in->tag, EMSGSIZE);
        g_mutex_unlock(&c->lock);
        return;
    }
    /* Requests already running finish first: their replies are dropped, but
     * a Tread.vmm may still be writing into guest RAM, whose buffers the
     * client takes back when the Rversion comes (QEMU drains likewise). */
    c->idle_waiters++;
    while (c->running > 0)
        g_cond_wait(&c->idle, &c->lock);
    c->idle_waiters--;
    /* A new session: what the old one had is gone (9P's version rule). */
    conn_reset_locked(c);
    c->msize = MIN(in->msize, c->e->cfg.max_msize);
    out.msize = c->msize;
    out.version = (char *)(g_str_has_prefix(in->version, P9_VERSION_L) ? P9_VERSION_L : P9_VERSION_UNKNOWN);
    send_locked(c, &out, NULL);
    g_mutex_unlock(&c->lock);
}

static void handle_flush(FsdConn *c, const P9Fcall *in)
{
    g_mutex_lock(&c->lock);
    Req *old = g_hash_table_lookup(c->pending, GUINT_TO_POINTER(in->oldtag));
    if (!old || in->oldtag == in->tag) {
        P9Fcall f = { .type = P9_RFLUSH, .tag = in->tag };
        send_locked(c, &f, NULL);
    } else {
        /* Not started yet: it never will be, and its reply is dropped. A
         * running request finishes and answers first (the spec's rule: a
         * reply before the Rflush must be honoured). */
        if (!old->started)
            g_atomic_int_set(&old->cancelled, 1);
        if (!old->flushes)
            old->flushes = g_array_new(FALSE, FALSE, sizeof(guint16));
        g_array_append_val(old->flushes, in->tag);
    }
    g_mutex_unlock(&c->lock);
}

void fsd_conn_refuse_oversize(FsdConn *c, guint8 type, guint16 tag, guint32 size)
{
    vmm_debug("9p: message type %u tag %u of %u bytes exceeds msize", type, tag, size);
    send_error(c, tag, EMSGSIZE);
}

void fsd_conn_receive(FsdConn *c, const guint8 *msg, gsize len)
{
    fsd_conn_receive_take(c, g_memdup2(msg, len ? len : 1), len);
}

/* Tread.vmm/Twrite.vmm: R's segment list as iovecs into guest RAM. 0, or
 * the errno its Rlerror carries: EOPNOTSUPP without guest RAM (any
 * connection but a VM's own), EINVAL for a list that is not whole segments
 * inside RAM. */
static int take_segments(FsdConn *c, Req *r)
{
    if (!c->mem)
        return EOPNOTSUPP;
    guint32 n = r->in.count / P9_VMM_SEGMENT_SIZE;
    if (r->in.count % P9_VMM_SEGMENT_SIZE || n == 0)
        return EINVAL;
    r->segs = g_new(struct iovec, n);
    r->nsegs = n;
    for (guint32 i = 0; i < n; i++) {
        const guint8 *e = r->in.data + (gsize)i * P9_VMM_SEGMENT_SIZE;
        guint64 at;
        guint32 len;
        memcpy(&at, e, 8);
        memcpy(&len, e + 8, 4);
        at = GUINT64_FROM_LE(at);
        len = GUINT32_FROM_LE(len);
        if (len == 0 || at > c->mem_size || len > c->mem_size - at)
            return EINVAL;
        r->segs[i] = (struct iovec){ c->mem + at, len };
        r->seg_bytes += len;
    }
    return 0;
}

void fsd_conn_receive_take(FsdConn *c, guint8 *msg, gsize len)
{
    Req *r = g_new0(Req, 1);
    r->buf = msg;
    r->len = len;
    g_autoptr(GError) err = NULL;
    if (!p9_decode(r->buf, len, &r->in, &err)) {
        guint16 tag = len >= P9_HDRSZ ? r->in.tag : P9_NOTAG;
        vmm_debug("9p: refused: %s", err->message);
        send_error(c, tag, g_error_matches(err, VMM_ERROR, VMM_ERROR_UNSUPPORTED) ? EOPNOTSUPP : EINVAL);
        p9_fcall_clear(&r->in);
        g_free(r->buf);
        g_free(r);
        return;
    }
    r->tag = r->in.tag;
    int seg_err = r->in.type == P9_TREAD_VMM || r->in.type == P9_TWRITE_VMM ? take_segments(c, r) : 0;
    if (r->in.type & 1) {
        /* An R-message sent to a server */
        send_error(c, r->tag, EINVAL);
    } else if (seg_err) {
        send_error(c, r->tag, seg_err);
    } else if (r->in.type == P9_TVERSION) {
        handle_version(c, &r->in);
    } else if (r->in.type == P9_TFLUSH) {
        handle_flush(c, &r->in);
    } else {
        g_mutex_lock(&c->lock);
        if (c->closed) {
            g_mutex_unlock(&c->lock);
        } else if (g_hash_table_contains(c->pending, GUINT_TO_POINTER(r->tag))) {
            /* A tag already in flight: refusing it keeps the first. */
            send_error_locked(c, r->tag, EBUSY);
            g_mutex_unlock(&c->lock);
        } else {
            g_hash_table_insert(c->pending, GUINT_TO_POINTER(r->tag), r);
            gboolean alone = g_hash_table_size(c->pending) == 1;
            r->generation = c->generation;
            g_atomic_int_inc(&c->ref);
            r->conn = c;
            g_mutex_unlock(&c->lock);
            if (g_atomic_int_get(&c->run_inline) && is_quick(c, r, alone))
                worker(r, c->e);
            else
                g_thread_pool_push(c->e->pool, r, NULL);
            return;
        }
    }
    g_free(r->segs);
    p9_fcall_clear(&r->in);
    g_free(r->buf);
    g_free(r);
}
