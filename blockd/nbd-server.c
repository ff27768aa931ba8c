/* The NBD server engine (see nbd-server.h and docs/nbd-server.md).
 *
 * One connection = one reader thread + its own worker threads:
 *  - the reader runs the fixed-newstyle negotiation, then decodes requests,
 *    validates them, reads WRITE payloads, and queues each request to the
 *    connection's worker pool (bounded: it stops reading when too many
 *    requests or bytes are in flight);
 *  - workers run the block call and write the whole reply (all chunks of a
 *    structured reply at once) under the connection's send lock, so replies
 *    of different requests never interleave and need no reordering;
 *  - a protocol violation stops the reader; requests already queued are
 *    finished and replied, then the socket is closed. Nothing a client sends
 *    affects other connections. */
#include "blockd/nbd-server.h"
#include "common/bytes.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/splice.h"
#include "common/error.h"
#include "common/iov.h"
#include "common/log.h"
#include "proto/nbd.h"

#define READ_BUFFER_SIZE (64 * 1024)
#define MAX_INFLIGHT_REQUESTS 256
#define MAX_INFLIGHT_BYTES (256 * 1024 * 1024)
/* A WRITE over NBD_MAX_PAYLOAD is read and thrown away up to this size (the
 * stream stays in sync and the client gets EINVAL); larger ones disconnect. */
#define MAX_DISCARD_PAYLOAD (2 * NBD_MAX_PAYLOAD)
#define MAX_DISCARD_OPTION (1024 * 1024)
#define MAX_READ_CHUNKS 1024           /* structured read: data/hole chunks per reply */
#define MAX_STATUS_EXTENTS 65536       /* block status descriptors per context */
#define CACHE_CHUNK (1024 * 1024)
#define DEFAULT_WORKERS 16
#define SOCKET_BUFFER_BYTES (4 * 1024 * 1024)
#define DEFAULT_HANDSHAKE_TIMEOUT 10
#define CONTEXT_ID_BASE 1
#define CONTEXT_ID_DEPTH 2
/* Reads this long or longer go out by splice when the export maps to a host
 * file; shorter ones cost fewer system calls through a buffer. */
#define SPLICE_MIN_READ (32 * 1024)

struct NbdExport {
    gint refcnt;
    char *name;
    char *description;
    VmmBlockDev *bs;
    gboolean read_only, multi_conn, rotational, allocation_depth;
    guint shared;
    guint32 min_block, preferred_block, max_block;
    GMutex lock;
    guint connections;
};

typedef struct NbdConn NbdConn;

struct NbdServer {
    GMutex lock;
    GCond cond;
    GHashTable *exports; /* name -> NbdExport* */
    NbdTlsMode tls_mode;
    NbdTlsCreds *tls_creds;
    char **tls_authz;
    guint workers;
    guint handshake_timeout;
    NbdClientDoneFunc done_fn;
    gpointer done_opaque;
    GList *conns; /* NbdConn* whose fd is still open */
    guint nconns;
    guint next_id;
};

struct NbdConn {
    NbdServer *server;
    int fd;
    char *label; /* "nbd client 3 (127.0.0.1:4711)", for messages */
    /* settings copied from the server when the connection starts */
    NbdTlsMode tls_mode;
    NbdTlsCreds *tls_creds;
    char **tls_authz;
    guint workers;
    gint64 deadline; /* monotonic µs for the negotiation; 0 = none */
    NbdTlsSession *tls;

    /* negotiated state */
    gboolean no_zeroes;
    gboolean structured;
    char *meta_export; /* export the last SET_META_CONTEXT named */
    gboolean meta_base, meta_depth;
    NbdExport *exp;    /* attached export (transmission phase) */
    gboolean attached;
    gboolean read_only;
    guint64 size;

    /* reader */
    guint8 *rbuf;
    gsize rpos, rlen;

    /* requests in flight, and the workers that run them (started on
     * demand up to conn->workers, joined when the connection ends). One
     * thread at a time reads requests (the connection's own thread first);
     * one that takes a request to run itself hands reading over to the next
     * free thread (leader/follower): a request alone on the connection
     * then runs on the thread that read it, with no switch in between. */
    GMutex lock;
    GCond cond;      /* a request finished */
    GCond work_cond; /* a request was queued, reading is to take over, stopping, read_done */
    guint inflight;
    guint64 inflight_bytes;
    GQueue queue;    /* NbdRequest* not yet picked up */
    GPtrArray *threads;
    guint idle_workers; /* threads waiting on work_cond, the connection's own included */
    gboolean reader_wanted; /* the reader handed reading over: the next free thread takes it */
    gboolean read_done;     /* the stream ended: nobody reads any more */
    gboolean stopping;

    /* writers */
    GMutex send_lock;
    gboolean send_failed;
    GPtrArray *pipes;   /* VmmSplicePipe* free for zero-copy reads and writes (under lock) */
    guint pipes_out;    /* pipes held by WRITE requests (under lock) */
    gboolean no_splice; /* splice failed once on this connection: buffers only */

    /* the guest's RAM (a VM's drive only); guest_memory once negotiated */
    NbdGuestMemory mem;
    gboolean guest_memory;
};

typedef struct {
    guint16 flags, type;
    guint64 cookie, offset;
    guint32 length;
    guint8 *payload; /* WRITE data (with pipes: the part read before them) */
    gsize payload_len;
    GPtrArray *pipes; /* WRITE data after payload, by reference (VmmSplicePipe*) */
    struct iovec *segs; /* NBD_CMD_FLAG_VMM_GUEST_MEMORY: the data, in guest memory */
    guint nsegs;
} NbdRequest;

/* ======================================================================
 * Exports
 * ====================================================================== */

static gboolean is_pow2(guint32 v)
{
    return v && !(v & (v - 1));
}

static gboolean export_check_block_sizes(const char *name, guint32 min, guint32 pref, guint32 max,
                                         GError **error)
{
    const char *why = NULL;
    if (!is_pow2(min) || min > 65536)
        why = "minimum block size must be a power of two up to 65536";
    else if (!is_pow2(pref) || pref < 512 || pref < min || pref > NBD_MAX_PAYLOAD)
        why = "preferred block size must be a power of two, at least 512 and the minimum";
    else if (max < pref || max % min != 0 || max > NBD_MAX_PAYLOAD)
        why = "maximum block size must be a multiple of the minimum, from the preferred size up to 32 MiB";
    if (!why)
        return TRUE;
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "NBD export '%s': %s (min %u, preferred %u, max %u)",
                name, why, min, pref, max);
    return FALSE;
}

NbdExport *nbd_export_new(const NbdExportConfig *cfg, GError **error)
{
    const char *name = cfg->name ? cfg->name : "";
    if (!cfg->bs) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "NBD export '%s': no block device", name);
        return NULL;
    }
    if (strlen(name) > NBD_MAX_STRING || (cfg->description && strlen(cfg->description) > NBD_MAX_STRING)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG,
                    "NBD export '%.64s': name or description longer than %d bytes", name, NBD_MAX_STRING);
        return NULL;
    }
    guint32 min = cfg->min_block ? cfg->min_block : MAX(cfg->bs->request_alignment, 1);
    guint32 pref = cfg->preferred_block ? cfg->preferred_block : MAX(NBD_DEFAULT_PREFERRED_BLOCK, min);
    guint32 max = cfg->max_block ? cfg->max_block : NBD_MAX_PAYLOAD;
    if (!export_check_block_sizes(name, min, pref, max, error))
        return NULL;

    NbdExport *exp = g_new0(NbdExport, 1);
    exp->refcnt = 1;
    exp->name = g_strdup(name);
    exp->description = g_strdup(cfg->description);
    exp->bs = vmm_block_ref(cfg->bs);
    exp->read_only = cfg->read_only || cfg->bs->read_only;
    exp->multi_conn = cfg->multi_conn;
    exp->rotational = cfg->rotational;
    exp->allocation_depth = cfg->allocation_depth;
    exp->shared = cfg->shared;
    exp->min_block = min;
    exp->preferred_block = pref;
    exp->max_block = max;
    g_mutex_init(&exp->lock);
    return exp;
}

NbdExport *nbd_export_ref(NbdExport *exp)
{
    g_atomic_int_inc(&exp->refcnt);
    return exp;
}

void nbd_export_unref(NbdExport *exp)
{
    if (!exp || !g_atomic_int_dec_and_test(&exp->refcnt))
        return;
    vmm_block_unref(exp->bs);
    g_mutex_clear(&exp->lock);
    g_free(exp->name);
    g_free(exp->description);
    g_free(exp);
}

const char *nbd_export_name(const NbdExport *exp)
{
    return exp->name;
}

VmmBlockDev *nbd_export_blockdev(const NbdExport *exp)
{
    return exp->bs;
}

guint nbd_export_connections(NbdExport *exp)
{
    g_mutex_lock(&exp->lock);
    guint n = exp->connections;
    g_mutex_unlock(&exp->lock);
    return n;
}

/* Counts a connection entering transmission; FALSE at the shared= limit. */
static gboolean export_attach(NbdExport *exp)
{
    g_mutex_lock(&exp->lock);
    gboolean ok = exp->shared == 0 || exp->connections < exp->shared;
    if (ok)
        exp->connections++;
    g_mutex_unlock(&exp->lock);
    return ok;
}

static void export_detach(NbdExport *exp)
{
    g_mutex_lock(&exp->lock);
    exp->connections--;
    g_mutex_unlock(&exp->lock);
}

static guint16 export_transmission_flags(const NbdExport *exp, gboolean structured)
{
    guint16 flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE;
    if (exp->read_only)
        flags |= NBD_FLAG_READ_ONLY;
    else
        flags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    if (exp->multi_conn)
        flags |= NBD_FLAG_CAN_MULTI_CONN;
    if (exp->rotational)
        flags |= NBD_FLAG_ROTATIONAL;
    if (structured)
        flags |= NBD_FLAG_SEND_DF;
    return flags;
}

/* ======================================================================
 * Server object
 * ====================================================================== */

NbdServer *nbd_server_new(void)
{
    NbdServer *s = g_new0(NbdServer, 1);
    g_mutex_init(&s->lock);
    g_cond_init(&s->cond);
    s->exports = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, (GDestroyNotify)nbd_export_unref);
    s->tls_mode = NBD_TLS_OFF;
    s->workers = DEFAULT_WORKERS;
    s->handshake_timeout = DEFAULT_HANDSHAKE_TIMEOUT;
    return s;
}

/* Wakes the connection's reader (and fails its writers): the thread then
 * finishes what is queued and closes. Called under server->lock, which keeps
 * the fd open. */
static void conn_kick_locked(NbdConn *conn)
{
    shutdown(conn->fd, SHUT_RDWR);
}

void nbd_server_free(NbdServer *server)
{
    if (!server)
        return;
    g_mutex_lock(&server->lock);
    for (GList *l = server->conns; l; l = l->next)
        conn_kick_locked(l->data);
    while (server->nconns > 0)
        g_cond_wait(&server->cond, &server->lock);
    g_mutex_unlock(&server->lock);
    g_hash_table_destroy(server->exports);
    nbd_tls_creds_unref(server->tls_creds);
    g_strfreev(server->tls_authz);
    g_mutex_clear(&server->lock);
    g_cond_clear(&server->cond);
    g_free(server);
}

gboolean nbd_server_add_export(NbdServer *server, NbdExport *exp, GError **error)
{
    g_mutex_lock(&server->lock);
    gboolean exists = g_hash_table_contains(server->exports, exp->name);
    if (!exists)
        g_hash_table_insert(server->exports, exp->name, nbd_export_ref(exp));
    g_mutex_unlock(&server->lock);
    if (exists)
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "NBD export '%s' already exists", exp->name);
    return !exists;
}

gboolean nbd_server_remove_export(NbdServer *server, const char *name, gboolean hard, GError **error)
{
    g_mutex_lock(&server->lock);
    NbdExport *exp = g_hash_table_lookup(server->exports, name);
    if (exp && hard) {
        for (GList *l = server->conns; l; l = l->next) {
            NbdConn *conn = l->data;
            if (conn->exp == exp)
                conn_kick_locked(conn);
        }
    }
    gboolean found = exp != NULL;
    if (found)
        g_hash_table_remove(server->exports, name);
    g_mutex_unlock(&server->lock);
    if (!found)
        g_set_error(error, VMM_ERROR, VMM_ERROR_NOT_FOUND, "NBD export '%s' not found", name);
    return found;
}

NbdExport *nbd_server_find_export(NbdServer *server, const char *name)
{
    g_mutex_lock(&server->lock);
    NbdExport *exp = g_hash_table_lookup(server->exports, name);
    if (exp)
        nbd_export_ref(exp);
    g_mutex_unlock(&server->lock);
    return exp;
}

static int compare_strings(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

char **nbd_server_list_exports(NbdServer *server)
{
    g_mutex_lock(&server->lock);
    guint n = 0;
    char **names = (char **)g_hash_table_get_keys_as_array(server->exports, &n);
    for (guint i = 0; i < n; i++)
        names[i] = g_strdup(names[i]);
    g_mutex_unlock(&server->lock);
    qsort(names, n, sizeof(char *), compare_strings);
    return names;
}

gboolean nbd_server_set_tls(NbdServer *server, NbdTlsMode mode, NbdTlsCreds *creds,
                            const char *const *authz, GError **error)
{
    if (mode != NBD_TLS_OFF && !creds) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "NBD server: TLS enabled without credentials");
        return FALSE;
    }
    if (creds && nbd_tls_creds_endpoint(creds) != NBD_TLS_SERVER) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "NBD server: TLS credentials are for a client endpoint, not a server");
        return FALSE;
    }
    g_mutex_lock(&server->lock);
    nbd_tls_creds_unref(server->tls_creds);
    server->tls_creds = mode != NBD_TLS_OFF ? nbd_tls_creds_ref(creds) : NULL;
    server->tls_mode = mode;
    g_strfreev(server->tls_authz);
    server->tls_authz = authz && authz[0] ? g_strdupv((char **)authz) : NULL;
    g_mutex_unlock(&server->lock);
    return TRUE;
}

void nbd_server_set_workers(NbdServer *server, guint workers)
{
    g_mutex_lock(&server->lock);
    server->workers = CLAMP(workers, 1, 1024);
    g_mutex_unlock(&server->lock);
}

void nbd_server_set_handshake_timeout(NbdServer *server, guint seconds)
{
    g_mutex_lock(&server->lock);
    server->handshake_timeout = seconds;
    g_mutex_unlock(&server->lock);
}

void nbd_server_set_client_done_callback(NbdServer *server, NbdClientDoneFunc fn, gpointer opaque)
{
    g_mutex_lock(&server->lock);
    server->done_fn = fn;
    server->done_opaque = opaque;
    g_mutex_unlock(&server->lock);
}

guint nbd_server_clients(NbdServer *server)
{
    g_mutex_lock(&server->lock);
    guint n = server->nconns;
    g_mutex_unlock(&server->lock);
    return n;
}

/* ======================================================================
 * Connection I/O
 * ====================================================================== */

/* Waits for input until the negotiation deadline (if any). */
static gboolean conn_wait_readable(NbdConn *conn, GError **error)
{
    if (!conn->deadline || (conn->tls && nbd_tls_session_pending(conn->tls)))
        return TRUE;
    for (;;) {
        gint64 left = conn->deadline - g_get_monotonic_time();
        if (left <= 0)
            break;
        struct pollfd pfd = { .fd = conn->fd, .events = POLLIN };
        int rc = poll(&pfd, 1, (int)MIN(left / 1000 + 1, INT_MAX));
        if (rc > 0)
            return TRUE;
        if (rc < 0 && errno != EINTR)
            return vmm_set_errno(error, errno, "%s: poll", conn->label);
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "%s: negotiation timed out", conn->label);
    return FALSE;
}

/* Reads up to LEN bytes straight from the socket or TLS session: >0, 0 at
 * end of stream, -1 with error. */
static gssize conn_recv_some(NbdConn *conn, void *buf, gsize len, GError **error)
{
    if (!conn_wait_readable(conn, error))
        return -1;
    if (conn->tls)
        return nbd_tls_session_recv(conn->tls, buf, len, error);
    for (;;) {
        ssize_t n = read(conn->fd, buf, len);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno == ECONNRESET || errno == EPIPE || errno == ENOTCONN) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_CLOSED, "%s: connection reset", conn->label);
            return -1;
        }
        vmm_set_errno(error, errno, "%s: read", conn->label);
        return -1;
    }
}

/* Reads exactly LEN bytes. Returns 1, 0 if the stream ended before the
 * first byte (a clean end between messages), -1 with error. */
static int conn_read(NbdConn *conn, void *buf, gsize len, GError **error)
{
    guint8 *p = buf;
    gsize done = 0;
    while (done < len) {
        if (conn->rpos < conn->rlen) {
            gsize n = MIN(len - done, conn->rlen - conn->rpos);
            memcpy(p + done, conn->rbuf + conn->rpos, n);
            conn->rpos += n;
            done += n;
            continue;
        }
        gssize n;
        if (len - done >= READ_BUFFER_SIZE) {
            n = conn_recv_some(conn, p + done, len - done, error);
            if (n > 0)
                done += (gsize)n;
        } else {
            n = conn_recv_some(conn, conn->rbuf, READ_BUFFER_SIZE, error);
            conn->rpos = 0;
            conn->rlen = n > 0 ? (gsize)n : 0;
        }
        if (n < 0)
            return -1;
        if (n == 0) {
            if (done == 0)
                return 0;
            g_set_error(error, VMM_ERROR, VMM_ERROR_CLOSED, "%s: connection closed in the middle of a message",
                        conn->label);
            return -1;
        }
    }
    return 1;
}

static gboolean conn_read_full(NbdConn *conn, void *buf, gsize len, GError **error)
{
    int rc = conn_read(conn, buf, len, error);
    if (rc == 0)
        g_set_error(error, VMM_ERROR, VMM_ERROR_CLOSED, "%s: connection closed", conn->label);
    return rc > 0;
}

static gboolean conn_discard(NbdConn *conn, guint64 len, GError **error)
{
    guint8 scratch[4096];
    while (len > 0) {
        gsize n = MIN(len, sizeof(scratch));
        if (!conn_read_full(conn, scratch, n, error))
            return FALSE;
        len -= n;
    }
    return TRUE;
}

static gboolean plain_send_iov(NbdConn *conn, struct iovec *iov, int niov, GError **error)
{
    int err = vmm_send_iov_all(conn->fd, iov, (unsigned)niov, 0);
    return err ? vmm_set_errno(error, err, "%s: send", conn->label) : TRUE;
}

/* Sends one whole message (IOV is consumed). Replies from different workers
 * never interleave. After a failure the connection is shut down so that the
 * reader stops too. */
static gboolean conn_send(NbdConn *conn, struct iovec *iov, int niov)
{
    g_autoptr(GError) err = NULL;
    g_mutex_lock(&conn->send_lock);
    gboolean ok = !conn->send_failed;
    if (ok) {
        ok = conn->tls ? nbd_tls_session_send_iov(conn->tls, iov, niov, &err)
                       : plain_send_iov(conn, iov, niov, &err);
        if (!ok) {
            conn->send_failed = TRUE;
            vmm_debug("%s", err->message);
            shutdown(conn->fd, SHUT_RDWR);
        }
    }
    g_mutex_unlock(&conn->send_lock);
    return ok;
}

static gboolean conn_send_buf(NbdConn *conn, const void *buf, gsize len)
{
    struct iovec iov = { (void *)buf, len };
    return conn_send(conn, &iov, 1);
}

/* ======================================================================
 * Negotiation
 * ====================================================================== */

typedef enum { NEG_CONTINUE, NEG_TRANSMISSION, NEG_CLOSE } NegResult;

static gboolean send_option_reply(NbdConn *conn, guint32 option, guint32 type, const void *data, guint32 len)
{
    guint8 hdr[20];
    put_be64(hdr, NBD_OPT_REPLY_MAGIC);
    put_be32(hdr + 8, option);
    put_be32(hdr + 12, type);
    put_be32(hdr + 16, len);
    struct iovec iov[2] = { { hdr, sizeof(hdr) }, { (void *)data, len } };
    return conn_send(conn, iov, len ? 2 : 1);
}

static gboolean send_option_error(NbdConn *conn, guint32 option, guint32 type, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);

static gboolean send_option_error(NbdConn *conn, guint32 option, guint32 type, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    vmm_debug("%s: option %u refused: %s", conn->label, option, msg);
    return send_option_reply(conn, option, type, msg, (guint32)MIN(strlen(msg), NBD_MAX_STRING));
}

static NbdExport *conn_find_export(NbdConn *conn, const char *name)
{
    return nbd_server_find_export(conn->server, name);
}

typedef enum { ATTACH_OK, ATTACH_GONE, ATTACH_FULL } AttachResult;

/* Makes EXP the connection's export before the client hears it is in
 * transmission. Under the server lock, so that an export removed meanwhile
 * is not attached (a hard removal scans conn->exp under the same lock and
 * would miss us). */
static AttachResult conn_attach_export(NbdConn *conn, NbdExport *exp)
{
    AttachResult r = ATTACH_OK;
    g_mutex_lock(&conn->server->lock);
    if (g_hash_table_lookup(conn->server->exports, exp->name) != exp)
        r = ATTACH_GONE;
    else if (!export_attach(exp))
        r = ATTACH_FULL;
    if (r == ATTACH_OK) {
        conn->exp = nbd_export_ref(exp);
        conn->attached = TRUE;
    }
    g_mutex_unlock(&conn->server->lock);
    return r;
}

/* Reads a 32-bit length-prefixed string at *POS of DATA (LEN bytes). */
static gboolean take_string(const guint8 *data, guint32 len, guint32 *pos, char **out)
{
    if (len - *pos < 4)
        return FALSE;
    guint32 n = get_be32(data + *pos);
    *pos += 4;
    if (n > len - *pos)
        return FALSE;
    *out = g_strndup((const char *)data + *pos, n);
    *pos += n;
    return TRUE;
}

static gboolean send_info_export(NbdConn *conn, guint32 option, NbdExport *exp)
{
    guint8 buf[12];
    put_be16(buf, NBD_INFO_EXPORT);
    put_be64(buf + 2, vmm_block_size(exp->bs));
    put_be16(buf + 10, export_transmission_flags(exp, conn->structured));
    return send_option_reply(conn, option, NBD_REP_INFO, buf, sizeof(buf));
}

static gboolean send_info_string(NbdConn *conn, guint32 option, guint16 type, const char *s)
{
    gsize n = strlen(s);
    g_autofree guint8 *buf = g_malloc(2 + n);
    put_be16(buf, type);
    memcpy(buf + 2, s, n);
    return send_option_reply(conn, option, NBD_REP_INFO, buf, (guint32)(2 + n));
}

static gboolean send_info_block_size(NbdConn *conn, guint32 option, NbdExport *exp, gboolean requested)
{
    guint8 buf[14];
    put_be16(buf, NBD_INFO_BLOCK_SIZE);
    /* A client that did not ask may not honour a minimum; the block layer
     * copes with unaligned requests, so advertise 1 then (as qemu does). */
    put_be32(buf + 2, requested ? exp->min_block : 1);
    put_be32(buf + 6, exp->preferred_block);
    put_be32(buf + 10, exp->max_block);
    return send_option_reply(conn, option, NBD_REP_INFO, buf, sizeof(buf));
}

static NegResult handle_info_go(NbdConn *conn, guint32 option, const guint8 *data, guint32 len)
{
    guint32 pos = 0;
    g_autofree char *name = NULL;
    if (!take_string(data, len, &pos, &name) || len - pos < 2)
        return send_option_error(conn, option, NBD_REP_ERR_INVALID, "malformed %s request",
                                 option == NBD_OPT_GO ? "NBD_OPT_GO" : "NBD_OPT_INFO") ? NEG_CONTINUE : NEG_CLOSE;
    guint16 nreq = get_be16(data + pos);
    pos += 2;
    if (len - pos != 2u * nreq)
        return send_option_error(conn, option, NBD_REP_ERR_INVALID, "information request count %u does not "
                                 "match the option length", nreq) ? NEG_CONTINUE : NEG_CLOSE;
    gboolean want_name = FALSE, want_desc = FALSE, want_block = FALSE;
    for (guint i = 0; i < nreq; i++) {
        guint16 t = get_be16(data + pos + 2 * i);
        want_name |= t == NBD_INFO_NAME;
        want_desc |= t == NBD_INFO_DESCRIPTION;
        want_block |= t == NBD_INFO_BLOCK_SIZE;
    }
    if (strlen(name) > NBD_MAX_STRING)
        return send_option_error(conn, option, NBD_REP_ERR_INVALID, "export name too long")
                   ? NEG_CONTINUE : NEG_CLOSE;
    g_autoptr(NbdExport) exp = conn_find_export(conn, name);
    if (!exp)
        return send_option_error(conn, option, NBD_REP_ERR_UNKNOWN, "export '%s' not available", name)
                   ? NEG_CONTINUE : NEG_CLOSE;
    gboolean go = option == NBD_OPT_GO;
    AttachResult attach = go ? conn_attach_export(conn, exp) : ATTACH_OK;
    if (attach == ATTACH_GONE)
        return send_option_error(conn, option, NBD_REP_ERR_UNKNOWN, "export '%s' not available", name)
                   ? NEG_CONTINUE : NEG_CLOSE;
    if (attach == ATTACH_FULL)
        return send_option_error(conn, option, NBD_REP_ERR_POLICY,
                                 "export '%s': connection limit (shared=%u) reached", name, exp->shared)
                   ? NEG_CONTINUE : NEG_CLOSE;
    gboolean ok = send_info_export(conn, option, exp) &&
                  (!want_name || send_info_string(conn, option, NBD_INFO_NAME, exp->name)) &&
                  (!want_desc || !exp->description ||
                   send_info_string(conn, option, NBD_INFO_DESCRIPTION, exp->description)) &&
                  send_info_block_size(conn, option, exp, want_block) &&
                  send_option_reply(conn, option, NBD_REP_ACK, NULL, 0);
    if (!go)
        return ok ? NEG_CONTINUE : NEG_CLOSE;
    return ok ? NEG_TRANSMISSION : NEG_CLOSE;
}

static NegResult handle_export_name(NbdConn *conn, const guint8 *data, guint32 len)
{
    g_autofree char *name = g_strndup((const char *)data, len);
    g_autoptr(NbdExport) exp = conn_find_export(conn, name);
    if (!exp) {
        vmm_info("%s: export '%s' not available (NBD_OPT_EXPORT_NAME), disconnecting", conn->label, name);
        return NEG_CLOSE;
    }
    AttachResult attach = conn_attach_export(conn, exp);
    if (attach != ATTACH_OK) {
        vmm_info("%s: export '%s': %s, disconnecting", conn->label, name,
                 attach == ATTACH_GONE ? "removed" : "connection limit reached");
        return NEG_CLOSE;
    }
    guint8 buf[10 + 124] = { 0 };
    put_be64(buf, vmm_block_size(exp->bs));
    put_be16(buf + 8, export_transmission_flags(exp, conn->structured));
    return conn_send_buf(conn, buf, conn->no_zeroes ? 10 : sizeof(buf)) ? NEG_TRANSMISSION : NEG_CLOSE;
}

static NegResult handle_list(NbdConn *conn, guint32 len)
{
    if (len != 0)
        return send_option_error(conn, NBD_OPT_LIST, NBD_REP_ERR_INVALID, "NBD_OPT_LIST with data")
                   ? NEG_CONTINUE : NEG_CLOSE;
    g_auto(GStrv) names = nbd_server_list_exports(conn->server);
    for (int i = 0; names[i]; i++) {
        g_autoptr(NbdExport) exp = conn_find_export(conn, names[i]);
        if (!exp)
            continue;
        gsize nlen = strlen(exp->name), dlen = exp->description ? strlen(exp->description) : 0;
        g_autofree guint8 *buf = g_malloc(4 + nlen + dlen);
        put_be32(buf, (guint32)nlen);
        memcpy(buf + 4, exp->name, nlen);
        if (dlen)
            memcpy(buf + 4 + nlen, exp->description, dlen);
        if (!send_option_reply(conn, NBD_OPT_LIST, NBD_REP_SERVER, buf, (guint32)(4 + nlen + dlen)))
            return NEG_CLOSE;
    }
    return send_option_reply(conn, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0) ? NEG_CONTINUE : NEG_CLOSE;
}

/* Matches one query against the contexts EXP offers. LIST accepts an empty
 * leaf ("base:", "qemu:") as a wildcard for its namespace; SET does not. */
static void meta_match_query(const NbdExport *exp, const char *query, gboolean list, gboolean *base,
                             gboolean *depth)
{
    if (g_str_has_prefix(query, "base:")) {
        const char *leaf = query + 5;
        if (strcmp(leaf, "allocation") == 0 || (list && !*leaf))
            *base = TRUE;
    } else if (g_str_has_prefix(query, "qemu:") && exp->allocation_depth) {
        const char *leaf = query + 5;
        if (strcmp(leaf, "allocation-depth") == 0 || (list && !*leaf))
            *depth = TRUE;
    }
}

static gboolean send_meta_context(NbdConn *conn, guint32 option, guint32 id, const char *name)
{
    gsize n = strlen(name);
    guint8 buf[64];
    put_be32(buf, id);
    memcpy(buf + 4, name, n);
    return send_option_reply(conn, option, NBD_REP_META_CONTEXT, buf, (guint32)(4 + n));
}

static NegResult handle_meta_context(NbdConn *conn, guint32 option, const guint8 *data, guint32 len)
{
    gboolean set = option == NBD_OPT_SET_META_CONTEXT;
    if (set) {
        /* SET replaces the selection even when it fails. */
        g_clear_pointer(&conn->meta_export, g_free);
        conn->meta_base = conn->meta_depth = FALSE;
    }
    if (set && !conn->structured)
        return send_option_error(conn, option, NBD_REP_ERR_INVALID,
                                 "NBD_OPT_SET_META_CONTEXT before NBD_OPT_STRUCTURED_REPLY")
                   ? NEG_CONTINUE : NEG_CLOSE;
    guint32 pos = 0;
    g_autofree char *name = NULL;
    if (!take_string(data, len, &pos, &name) || len - pos < 4)
        return send_option_error(conn, option, NBD_REP_ERR_INVALID, "malformed meta context request")
                   ? NEG_CONTINUE : NEG_CLOSE;
    guint32 nq = get_be32(data + pos);
    pos += 4;
    gboolean base = FALSE, depth = FALSE;
    g_autoptr(NbdExport) exp = conn_find_export(conn, name);
    for (guint32 i = 0; i < nq; i++) {
        g_autofree char *query = NULL;
        if (!take_string(data, len, &pos, &query))
            return send_option_error(conn, option, NBD_REP_ERR_INVALID, "meta context query %u overruns "
                                     "the option", i) ? NEG_CONTINUE : NEG_CLOSE;
        if (exp)
            meta_match_query(exp, query, !set, &base, &depth);
    }
    if (pos != len)
        return send_option_error(conn, option, NBD_REP_ERR_INVALID, "trailing bytes after meta context queries")
                   ? NEG_CONTINUE : NEG_CLOSE;
    if (!exp)
        return send_option_error(conn, option, NBD_REP_ERR_UNKNOWN, "export '%s' not available", name)
                   ? NEG_CONTINUE : NEG_CLOSE;
    if (nq == 0 && !set) {
        base = TRUE;
        depth = exp->allocation_depth;
    }
    if ((base && !send_meta_context(conn, option, set ? CONTEXT_ID_BASE : 0, NBD_META_BASE_ALLOCATION)) ||
        (depth && !send_meta_context(conn, option, set ? CONTEXT_ID_DEPTH : 0, NBD_META_QEMU_ALLOCATION_DEPTH)))
        return NEG_CLOSE;
    if (set) {
        conn->meta_export = g_strdup(name);
        conn->meta_base = base;
        conn->meta_depth = depth;
    }
    return send_option_reply(conn, option, NBD_REP_ACK, NULL, 0) ? NEG_CONTINUE : NEG_CLOSE;
}

static NegResult handle_starttls(NbdConn *conn, guint32 len)
{
    if (len != 0)
        return send_option_error(conn, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, "NBD_OPT_STARTTLS with data")
                   ? NEG_CONTINUE : NEG_CLOSE;
    if (conn->tls_mode == NBD_TLS_OFF)
        return send_option_error(conn, NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY, "TLS not configured")
                   ? NEG_CONTINUE : NEG_CLOSE;
    if (conn->tls)
        return send_option_error(conn, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, "TLS already negotiated")
                   ? NEG_CONTINUE : NEG_CLOSE;
    if (conn->rpos < conn->rlen) {
        /* Plaintext pipelined after STARTTLS would be trusted as if it came
         * through TLS (the STARTTLS injection attack): refuse. */
        vmm_warn("%s: data sent after NBD_OPT_STARTTLS before the handshake, disconnecting", conn->label);
        return NEG_CLOSE;
    }
    if (!send_option_reply(conn, NBD_OPT_STARTTLS, NBD_REP_ACK, NULL, 0))
        return NEG_CLOSE;
    g_autoptr(GError) err = NULL;
    NbdTlsSession *tls = nbd_tls_session_new(conn->tls_creds, conn->fd, NULL, &err);
    guint timeout_ms = 0;
    if (conn->deadline)
        timeout_ms = (guint)MAX((conn->deadline - g_get_monotonic_time()) / 1000, 1);
    if (!tls || !nbd_tls_session_handshake(tls, timeout_ms, &err) ||
        !nbd_tls_session_check_authz(tls, (const char *const *)conn->tls_authz, &err)) {
        vmm_warn("%s: %s", conn->label, err->message);
        nbd_tls_session_free(tls);
        return NEG_CLOSE;
    }
    /* The send lock orders this with nothing else yet, but keep the rule:
     * conn->tls changes only under it. */
    g_mutex_lock(&conn->send_lock);
    conn->tls = tls;
    g_mutex_unlock(&conn->send_lock);
    vmm_debug("%s: TLS established%s%s", conn->label, nbd_tls_session_peer_name(tls) ? " with " : "",
             nbd_tls_session_peer_name(tls) ? nbd_tls_session_peer_name(tls) : "");
    /* No negotiation state survives STARTTLS. */
    conn->structured = FALSE;
    g_clear_pointer(&conn->meta_export, g_free);
    conn->meta_base = conn->meta_depth = FALSE;
    return NEG_CONTINUE;
}

/* Only a VM's own drive connection has the guest's RAM; for any other client
 * the option is unknown, as it is to every other server. */
static NegResult handle_guest_memory(NbdConn *conn, guint32 len)
{
    guint32 option = NBD_OPT_VMM_GUEST_MEMORY;
    if (!conn->mem.base)
        return send_option_error(conn, option, NBD_REP_ERR_UNSUP, "option %u not supported", option)
                   ? NEG_CONTINUE : NEG_CLOSE;
    if (len != 0)
        return send_option_error(conn, option, NBD_REP_ERR_INVALID, "NBD_OPT_VMM_GUEST_MEMORY with data")
                   ? NEG_CONTINUE : NEG_CLOSE;
    conn->guest_memory = TRUE;
    return send_option_reply(conn, option, NBD_REP_ACK, NULL, 0) ? NEG_CONTINUE : NEG_CLOSE;
}

static NegResult handle_option(NbdConn *conn, guint32 option, const guint8 *data, guint32 len)
{
    if (conn->tls_mode == NBD_TLS_REQUIRE && !conn->tls && option != NBD_OPT_STARTTLS &&
        option != NBD_OPT_ABORT) {
        if (option == NBD_OPT_EXPORT_NAME) {
            vmm_info("%s: NBD_OPT_EXPORT_NAME before TLS, disconnecting", conn->label);
            return NEG_CLOSE;
        }
        return send_option_error(conn, option, NBD_REP_ERR_TLS_REQD, "TLS is required first")
                   ? NEG_CONTINUE : NEG_CLOSE;
    }
    switch (option) {
    case NBD_OPT_EXPORT_NAME:
        return handle_export_name(conn, data, len);
    case NBD_OPT_ABORT:
        send_option_reply(conn, option, NBD_REP_ACK, NULL, 0);
        return NEG_CLOSE;
    case NBD_OPT_LIST:
        return handle_list(conn, len);
    case NBD_OPT_STARTTLS:
        return handle_starttls(conn, len);
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
        return handle_info_go(conn, option, data, len);
    case NBD_OPT_STRUCTURED_REPLY:
        if (len != 0)
            return send_option_error(conn, option, NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY with data")
                       ? NEG_CONTINUE : NEG_CLOSE;
        if (conn->structured)
            return send_option_error(conn, option, NBD_REP_ERR_INVALID, "structured replies already negotiated")
                       ? NEG_CONTINUE : NEG_CLOSE;
        conn->structured = TRUE;
        return send_option_reply(conn, option, NBD_REP_ACK, NULL, 0) ? NEG_CONTINUE : NEG_CLOSE;
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
        return handle_meta_context(conn, option, data, len);
    case NBD_OPT_VMM_GUEST_MEMORY:
        return handle_guest_memory(conn, len);
    default:
        return send_option_error(conn, option, NBD_REP_ERR_UNSUP, "option %u not supported", option)
                   ? NEG_CONTINUE : NEG_CLOSE;
    }
}

/* An option whose data exceeds our limit: read past it if it is not absurd
 * (the client gets NBD_REP_ERR_TOO_BIG), else give up on the client. */
static NegResult handle_oversize_option(NbdConn *conn, guint32 option, guint32 len, GError **error)
{
    if (option == NBD_OPT_EXPORT_NAME || len > MAX_DISCARD_OPTION) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG, "%s: option %u with %u bytes of data", conn->label,
                    option, len);
        return NEG_CLOSE;
    }
    if (!conn_discard(conn, len, error))
        return NEG_CLOSE;
    return send_option_error(conn, option, NBD_REP_ERR_TOO_BIG, "option data of %u bytes is too large", len)
               ? NEG_CONTINUE : NEG_CLOSE;
}

/* Runs the fixed newstyle negotiation; TRUE when the client entered
 * transmission on conn->exp. */
static gboolean conn_negotiate(NbdConn *conn, GError **error)
{
    guint8 hello[18];
    put_be64(hello, NBD_MAGIC);
    put_be64(hello + 8, NBD_IHAVEOPT);
    put_be16(hello + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    if (!conn_send_buf(conn, hello, sizeof(hello))) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_CLOSED, "%s: cannot send the greeting", conn->label);
        return FALSE;
    }
    guint8 cflags[4];
    if (!conn_read_full(conn, cflags, 4, error))
        return FALSE;
    guint32 client_flags = get_be32(cflags);
    if (!(client_flags & NBD_FLAG_C_FIXED_NEWSTYLE) ||
        (client_flags & ~(guint32)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES))) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                    "%s: client flags 0x%x: fixed newstyle negotiation is required", conn->label, client_flags);
        return FALSE;
    }
    conn->no_zeroes = (client_flags & NBD_FLAG_C_NO_ZEROES) != 0;

    for (;;) {
        guint8 hdr[16];
        if (!conn_read_full(conn, hdr, sizeof(hdr), error))
            return FALSE;
        if (get_be64(hdr) != NBD_IHAVEOPT) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "%s: bad option magic 0x%" G_GINT64_MODIFIER "x",
                        conn->label, get_be64(hdr));
            return FALSE;
        }
        guint32 option = get_be32(hdr + 8), len = get_be32(hdr + 12);
        NegResult r;
        if (len > NBD_MAX_OPTION) {
            r = handle_oversize_option(conn, option, len, error);
        } else {
            g_autofree guint8 *data = g_malloc(len + 1);
            if (!conn_read_full(conn, data, len, error))
                return FALSE;
            r = handle_option(conn, option, data, len);
        }
        if (r == NEG_TRANSMISSION)
            return TRUE;
        if (r == NEG_CLOSE) {
            if (error && !*error)
                g_set_error(error, VMM_ERROR, VMM_ERROR_CLOSED, "%s: negotiation ended", conn->label);
            return FALSE;
        }
    }
}

/* ======================================================================
 * Transmission: replies
 * ====================================================================== */

static guint32 nbd_errno_from_error(const GError *err)
{
    if (!err)
        return NBD_EIO;
    if (err->domain == VMM_ERROR) {
        switch (err->code) {
        case VMM_ERROR_PERMISSION:
            return NBD_EPERM;
        case VMM_ERROR_INVALID:
        case VMM_ERROR_TOO_BIG:
            return NBD_EINVAL;
        case VMM_ERROR_IO:
            /* IO errors carry strerror() text only; recover the ones the
             * protocol distinguishes. */
            if (strstr(err->message, g_strerror(ENOSPC)) || strstr(err->message, g_strerror(EDQUOT)) ||
                strstr(err->message, g_strerror(EFBIG)))
                return NBD_ENOSPC;
            if (strstr(err->message, g_strerror(ENOMEM)))
                return NBD_ENOMEM;
            if (strstr(err->message, g_strerror(EPERM)) || strstr(err->message, g_strerror(EROFS)))
                return NBD_EPERM;
            return NBD_EIO;
        default:
            return NBD_EIO;
        }
    }
    if (err->domain == G_IO_ERROR) {
        switch (err->code) {
        case G_IO_ERROR_NO_SPACE:
            return NBD_ENOSPC;
        case G_IO_ERROR_PERMISSION_DENIED:
        case G_IO_ERROR_READ_ONLY:
            return NBD_EPERM;
        case G_IO_ERROR_INVALID_ARGUMENT:
            return NBD_EINVAL;
        default:
            return NBD_EIO;
        }
    }
    return NBD_EIO;
}

static void put_chunk_header(guint8 *p, guint16 flags, guint16 type, guint64 cookie, guint32 len)
{
    put_be32(p, NBD_STRUCTURED_REPLY_MAGIC);
    put_be16(p + 4, flags);
    put_be16(p + 6, type);
    put_be64(p + 8, cookie);
    put_be32(p + 16, len);
}

static void send_simple_reply(NbdConn *conn, const NbdRequest *req, guint32 error, const void *data, gsize len)
{
    guint8 hdr[NBD_SIMPLE_REPLY_SIZE];
    put_be32(hdr, NBD_SIMPLE_REPLY_MAGIC);
    put_be32(hdr + 4, error);
    put_be64(hdr + 8, req->cookie);
    struct iovec iov[2] = { { hdr, sizeof(hdr) }, { (void *)data, len } };
    conn_send(conn, iov, error == 0 && len ? 2 : 1);
}

static void send_structured_error(NbdConn *conn, const NbdRequest *req, guint32 error, const char *msg)
{
    gsize mlen = msg ? MIN(strlen(msg), NBD_MAX_STRING) : 0;
    guint8 hdr[NBD_STRUCTURED_REPLY_SIZE + 6];
    put_chunk_header(hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, req->cookie, (guint32)(6 + mlen));
    put_be32(hdr + 20, error);
    put_be16(hdr + 24, (guint16)mlen);
    struct iovec iov[2] = { { hdr, sizeof(hdr) }, { (void *)msg, mlen } };
    conn_send(conn, iov, mlen ? 2 : 1);
}

/* READ and BLOCK_STATUS answer in structured form once negotiated; the
 * other commands always get simple replies (the protocol allows both). */
static gboolean reply_is_structured(NbdConn *conn, const NbdRequest *req)
{
    return conn->structured && !(req->flags & NBD_CMD_FLAG_VMM_GUEST_MEMORY) &&
           (req->type == NBD_CMD_READ || req->type == NBD_CMD_BLOCK_STATUS);
}

static void send_error(NbdConn *conn, const NbdRequest *req, guint32 error, const char *msg)
{
    if (reply_is_structured(conn, req))
        send_structured_error(conn, req, error, msg);
    else
        send_simple_reply(conn, req, error, NULL, 0);
}

static void send_gerror(NbdConn *conn, const NbdRequest *req, const GError *err, guint32 nbd_errno)
{
    vmm_debug("%s: request type %u at %" G_GUINT64_FORMAT "+%u failed: %s", conn->label, req->type,
              req->offset, req->length, err ? err->message : "?");
    send_error(conn, req, nbd_errno ? nbd_errno : nbd_errno_from_error(err), err ? err->message : NULL);
}

/* ======================================================================
 * Transmission: commands
 * ====================================================================== */

typedef struct {
    guint64 offset; /* relative to the request */
    guint64 length;
    gboolean hole;
} ReadExtent;

/* Splits [offset, offset+length) into data and hole (reads-as-zero) runs. On
 * any block status error the rest is simply data. */
static GArray *read_extents(NbdConn *conn, guint64 offset, guint64 length)
{
    GArray *ext = g_array_new(FALSE, FALSE, sizeof(ReadExtent));
    guint64 done = 0;
    while (done < length) {
        guint64 rem = length - done, pnum = 0;
        gboolean hole = FALSE;
        if (ext->len < MAX_READ_CHUNKS - 1) {
            int ret = vmm_block_status_above(conn->exp->bs, NULL, offset + done, rem, &pnum, NULL, NULL, NULL,
                                             NULL);
            if (ret < 0 || pnum == 0)
                pnum = rem;
            else
                hole = (ret & VMM_BLOCK_ZERO) != 0;
        } else {
            pnum = rem;
        }
        pnum = MIN(pnum, rem);
        ReadExtent *last = ext->len ? &g_array_index(ext, ReadExtent, ext->len - 1) : NULL;
        if (last && last->hole == hole) {
            last->length += pnum;
        } else {
            ReadExtent e = { done, pnum, hole };
            g_array_append_val(ext, e);
        }
        done += pnum;
    }
    return ext;
}

static VmmSplicePipe *conn_take_pipe(NbdConn *conn)
{
    VmmSplicePipe *p = NULL;
    g_mutex_lock(&conn->lock);
    if (conn->pipes && conn->pipes->len)
        p = g_ptr_array_steal_index_fast(conn->pipes, conn->pipes->len - 1);
    g_mutex_unlock(&conn->lock);
    if (!p) {
        g_autoptr(GError) err = NULL;
        p = vmm_splice_pipe_new(&err);
        if (!p)
            vmm_debug("%s: %s", conn->label, err->message);
    }
    return p;
}

static void conn_put_pipe(NbdConn *conn, VmmSplicePipe *p)
{
    if (!vmm_splice_pipe_reusable(p)) {
        vmm_splice_pipe_free(p);
        return;
    }
    g_mutex_lock(&conn->lock);
    if (!conn->pipes)
        conn->pipes = g_ptr_array_new_with_free_func((GDestroyNotify)vmm_splice_pipe_free);
    g_ptr_array_add(conn->pipes, p);
    g_mutex_unlock(&conn->lock);
}

static void send_read_error(NbdConn *conn, NbdRequest *req, int err)
{
    g_autoptr(GError) gerr = NULL;
    vmm_set_errno(&gerr, err, "%s: read of %u bytes at offset %" G_GUINT64_FORMAT, conn->exp->bs->filename,
                  req->length, req->offset);
    send_gerror(conn, req, gerr, 0);
}

/* Answers READ REQ with HDR (its reply header, HDR_LEN bytes) and the data
 * straight from the image's host file, without a copy in between, if the
 * export maps there (raw on a file, without O_DIRECT) and the connection is
 * a plain socket; a read error of the file gets the error reply. FALSE:
 * nothing was sent, answer through a buffer. */
static gboolean reply_spliced(NbdConn *conn, NbdRequest *req, void *hdr, gsize hdr_len)
{
    int fd;
    guint64 host, pnum;
    if (conn->tls || conn->no_splice || req->length < SPLICE_MIN_READ ||
        !vmm_block_map_host(conn->exp->bs, req->offset, req->length, FALSE, &fd, &host, &pnum) ||
        pnum < req->length)
        return FALSE;
    VmmSplicePipe *p = conn_take_pipe(conn);
    if (!p)
        return FALSE;
    gssize filled = vmm_splice_fill(p, fd, host, req->length);
    if (filled < 0) {
        int err = errno;
        conn_put_pipe(conn, p);
        if (err == EINVAL || err == ENOSYS || err == EOPNOTSUPP) {
            conn->no_splice = TRUE;
            return FALSE;
        }
        send_read_error(conn, req, err);
        return TRUE;
    }
    struct iovec hiov = { hdr, hdr_len };
    g_mutex_lock(&conn->send_lock);
    if (!conn->send_failed && !vmm_splice_send(p, conn->fd, &hiov, 1, fd, host, req->length, (gsize)filled)) {
        conn->send_failed = TRUE;
        vmm_debug("%s: zero-copy read reply: %s", conn->label, g_strerror(errno));
        shutdown(conn->fd, SHUT_RDWR);
    }
    g_mutex_unlock(&conn->send_lock);
    conn_put_pipe(conn, p);
    return TRUE;
}

static void do_read_simple(NbdConn *conn, NbdRequest *req)
{
    g_autoptr(GError) err = NULL;
    guint8 hdr[NBD_SIMPLE_REPLY_SIZE];
    put_be32(hdr, NBD_SIMPLE_REPLY_MAGIC);
    put_be32(hdr + 4, 0);
    put_be64(hdr + 8, req->cookie);
    if (reply_spliced(conn, req, hdr, sizeof(hdr)))
        return;
    g_autofree guint8 *buf = g_try_malloc(MAX(req->length, 1));
    if (!buf)
        return send_error(conn, req, NBD_ENOMEM, "out of memory");
    if (req->length && !vmm_block_pread(conn->exp->bs, req->offset, req->length, buf, &err))
        return send_gerror(conn, req, err, 0);
    send_simple_reply(conn, req, 0, buf, req->length);
}

static void do_read_structured(NbdConn *conn, NbdRequest *req)
{
    g_autoptr(GError) err = NULL;
    if (req->length == 0) {
        guint8 hdr[NBD_STRUCTURED_REPLY_SIZE];
        put_chunk_header(hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, req->cookie, 0);
        conn_send_buf(conn, hdr, sizeof(hdr));
        return;
    }
    g_autoptr(GArray) ext = NULL;
    if (req->flags & NBD_CMD_FLAG_DF) {
        ext = g_array_new(FALSE, FALSE, sizeof(ReadExtent));
        ReadExtent all = { 0, req->length, FALSE };
        g_array_append_val(ext, all);
    } else {
        ext = read_extents(conn, req->offset, req->length);
    }
    if (ext->len == 1 && !g_array_index(ext, ReadExtent, 0).hole) {
        guint8 h[28];
        put_chunk_header(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, req->cookie, 8 + req->length);
        put_be64(h + 20, req->offset);
        if (reply_spliced(conn, req, h, sizeof(h)))
            return;
    }
    g_autofree guint8 *buf = g_try_malloc(req->length);
    if (!buf)
        return send_error(conn, req, NBD_ENOMEM, "out of memory");
    /* Read everything first so that an error can still be a single clean
     * error chunk instead of a half-sent reply. */
    for (guint i = 0; i < ext->len; i++) {
        ReadExtent *e = &g_array_index(ext, ReadExtent, i);
        if (!e->hole && !vmm_block_pread(conn->exp->bs, req->offset + e->offset, e->length, buf + e->offset, &err))
            return send_gerror(conn, req, err, 0);
    }
    g_autofree guint8 *hdrs = g_malloc((gsize)ext->len * 32);
    g_autofree struct iovec *iov = g_new(struct iovec, 2 * ext->len);
    int niov = 0;
    for (guint i = 0; i < ext->len; i++) {
        ReadExtent *e = &g_array_index(ext, ReadExtent, i);
        guint8 *h = hdrs + (gsize)i * 32;
        guint16 flags = i + 1 == ext->len ? NBD_REPLY_FLAG_DONE : 0;
        if (e->hole) {
            put_chunk_header(h, flags, NBD_REPLY_TYPE_OFFSET_HOLE, req->cookie, 12);
            put_be64(h + 20, req->offset + e->offset);
            put_be32(h + 28, (guint32)e->length);
            iov[niov++] = (struct iovec){ h, 32 };
        } else {
            put_chunk_header(h, flags, NBD_REPLY_TYPE_OFFSET_DATA, req->cookie, (guint32)(8 + e->length));
            put_be64(h + 20, req->offset + e->offset);
            iov[niov++] = (struct iovec){ h, 28 };
            iov[niov++] = (struct iovec){ buf + e->offset, e->length };
        }
    }
    conn_send(conn, iov, niov);
}

/* Gives a WRITE's pipes back (emptied) to the connection's pool. */
static void conn_put_request_pipes(NbdConn *conn, NbdRequest *req)
{
    if (!req->pipes)
        return;
    g_mutex_lock(&conn->lock);
    conn->pipes_out -= req->pipes->len;
    g_mutex_unlock(&conn->lock);
    for (guint i = 0; i < req->pipes->len; i++)
        conn_put_pipe(conn, req->pipes->pdata[i]);
    g_ptr_array_set_free_func(req->pipes, NULL);
    g_ptr_array_free(req->pipes, TRUE);
    req->pipes = NULL;
}

static void do_write(NbdConn *conn, NbdRequest *req)
{
    g_autoptr(GError) err = NULL;
    int flags = (req->flags & NBD_CMD_FLAG_FUA) ? VMM_BDRV_REQ_FUA : 0;
    gboolean ok;
    if (req->pipes) {
        ok = vmm_block_pwrite_spliced(conn->exp->bs, req->offset, req->length, req->payload, req->payload_len,
                                      (VmmSplicePipe *const *)req->pipes->pdata, req->pipes->len, flags, &err);
        conn_put_request_pipes(conn, req);
    } else {
        ok = !req->length || vmm_block_pwrite(conn->exp->bs, req->offset, req->length, req->payload, flags, &err);
    }
    if (!ok)
        return send_gerror(conn, req, err, 0);
    send_simple_reply(conn, req, 0, NULL, 0);
}

/* FUA on commands that do not pass it to the driver: flush afterwards. */
static gboolean fua_flush(NbdConn *conn, const NbdRequest *req, GError **err)
{
    return !(req->flags & NBD_CMD_FLAG_FUA) || vmm_block_flush(conn->exp->bs, err);
}

static void do_write_zeroes(NbdConn *conn, NbdRequest *req)
{
    g_autoptr(GError) err = NULL;
    int flags = 0;
    if (!(req->flags & NBD_CMD_FLAG_NO_HOLE))
        flags |= VMM_BDRV_REQ_MAY_UNMAP;
    if (req->flags & NBD_CMD_FLAG_FAST_ZERO)
        flags |= VMM_BDRV_REQ_NO_FALLBACK;
    if (req->flags & NBD_CMD_FLAG_FUA)
        flags |= VMM_BDRV_REQ_FUA;
    if (req->length && !vmm_block_pwrite_zeroes(conn->exp->bs, req->offset, req->length, flags, &err)) {
        gboolean slow = (req->flags & NBD_CMD_FLAG_FAST_ZERO) && err->domain == VMM_ERROR &&
                        err->code == VMM_ERROR_UNSUPPORTED;
        return send_gerror(conn, req, err, slow ? NBD_ENOTSUP : 0);
    }
    if (!fua_flush(conn, req, &err))
        return send_gerror(conn, req, err, 0);
    send_simple_reply(conn, req, 0, NULL, 0);
}

static void do_trim(NbdConn *conn, NbdRequest *req)
{
    g_autoptr(GError) err = NULL;
    if (req->length && !vmm_block_pdiscard(conn->exp->bs, req->offset, req->length, &err)) {
        /* Trim is advisory: a node that cannot discard has done its part. */
        if (!(err->domain == VMM_ERROR && err->code == VMM_ERROR_UNSUPPORTED))
            return send_gerror(conn, req, err, 0);
        g_clear_error(&err);
    }
    if (!fua_flush(conn, req, &err))
        return send_gerror(conn, req, err, 0);
    send_simple_reply(conn, req, 0, NULL, 0);
}

static void do_flush(NbdConn *conn, NbdRequest *req)
{
    g_autoptr(GError) err = NULL;
    if (!vmm_block_flush(conn->exp->bs, &err))
        return send_gerror(conn, req, err, 0);
    send_simple_reply(conn, req, 0, NULL, 0);
}

/* Prefetch: read the range so that it is in the caches below. */
static void do_cache(NbdConn *conn, NbdRequest *req)
{
    g_autoptr(GError) err = NULL;
    guint64 chunk = MIN((guint64)req->length, CACHE_CHUNK);
    g_autofree guint8 *buf = g_malloc(MAX(chunk, 1));
    for (guint64 done = 0; done < req->length; done += chunk) {
        guint64 n = MIN(chunk, req->length - done);
        if (!vmm_block_pread(conn->exp->bs, req->offset + done, n, buf, &err))
            return send_gerror(conn, req, err, 0);
    }
    send_simple_reply(conn, req, 0, NULL, 0);
}

/* Descriptors of one context over the request's range, merged where the
 * status repeats. DEPTH selects qemu:allocation-depth. */
static gboolean status_extents(NbdConn *conn, const NbdRequest *req, gboolean depth, GArray *out, GError **err)
{
    guint max = (req->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : MAX_STATUS_EXTENTS;
    guint64 done = 0;
    while (done < req->length) {
        guint64 rem = req->length - done, pnum = 0;
        int d = 0;
        int ret = vmm_block_status_above(conn->exp->bs, NULL, req->offset + done, rem, &pnum, NULL, NULL,
                                         depth ? &d : NULL, err);
        if (ret < 0)
            return FALSE;
        if (pnum == 0 || pnum > rem)
            pnum = rem;
        guint32 flags;
        if (depth)
            flags = (guint32)MAX(d, 0);
        else
            flags = ((ret & VMM_BLOCK_DATA) ? 0 : NBD_STATE_HOLE) | ((ret & VMM_BLOCK_ZERO) ? NBD_STATE_ZERO : 0);
        guint32 *last = out->len ? &g_array_index(out, guint32, out->len - 2) : NULL;
        if (last && last[1] == flags) {
            last[0] += (guint32)pnum;
        } else {
            if (out->len / 2 >= max)
                break;
            guint32 pair[2] = { (guint32)pnum, flags };
            g_array_append_vals(out, pair, 2);
        }
        done += pnum;
    }
    return TRUE;
}

static void do_block_status(NbdConn *conn, NbdRequest *req)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GArray) base = g_array_new(FALSE, FALSE, sizeof(guint32));
    g_autoptr(GArray) depth = g_array_new(FALSE, FALSE, sizeof(guint32));
    if ((conn->meta_base && !status_extents(conn, req, FALSE, base, &err)) ||
        (conn->meta_depth && !status_extents(conn, req, TRUE, depth, &err)))
        return send_gerror(conn, req, err, 0);
    struct { GArray *ext; guint32 id; gboolean on; } ctx[2] = {
        { base, CONTEXT_ID_BASE, conn->meta_base },
        { depth, CONTEXT_ID_DEPTH, conn->meta_depth },
    };
    guint8 hdrs[2][24];
    struct iovec iov[4];
    int niov = 0;
    int nctx = (conn->meta_base ? 1 : 0) + (conn->meta_depth ? 1 : 0);
    for (int i = 0, sent = 0; i < 2; i++) {
        if (!ctx[i].on)
            continue;
        GArray *e = ctx[i].ext;
        for (guint k = 0; k < e->len; k++)
            put_be32((guint8 *)&g_array_index(e, guint32, k), g_array_index(e, guint32, k));
        sent++;
        put_chunk_header(hdrs[i], sent == nctx ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_BLOCK_STATUS,
                         req->cookie, 4 + e->len * 4);
        put_be32(hdrs[i] + 20, ctx[i].id);
        iov[niov++] = (struct iovec){ hdrs[i], 24 };
        iov[niov++] = (struct iovec){ e->data, e->len * 4 };
    }
    conn_send(conn, iov, niov);
}

/* A READ or WRITE whose data is in guest memory: the reply carries no data. */
static void do_guest_memory_io(NbdConn *conn, NbdRequest *req)
{
    g_autoptr(GError) err = NULL;
    /* The client is gone (vcpu-worker died): nobody takes the reply, and the
     * guest's RAM may already belong to a VM started anew. */
    g_mutex_lock(&conn->lock);
    gboolean gone = conn->read_done;
    g_mutex_unlock(&conn->lock);
    if (gone) {
        vmm_debug("%s: client gone, guest-memory request at %" G_GUINT64_FORMAT " dropped", conn->label,
                  req->offset);
        return;
    }
    int flags = (req->flags & NBD_CMD_FLAG_FUA) ? VMM_BDRV_REQ_FUA : 0;
    gboolean ok = req->type == NBD_CMD_READ
                      ? vmm_block_preadv(conn->exp->bs, req->offset, req->length, req->segs, req->nsegs, &err)
                      : vmm_block_pwritev(conn->exp->bs, req->offset, req->length, req->segs, req->nsegs, flags,
                                          &err);
    if (!ok)
        return send_gerror(conn, req, err, 0);
    send_simple_reply(conn, req, 0, NULL, 0);
}

static void request_execute(NbdConn *conn, NbdRequest *req)
{
    if (req->segs)
        return do_guest_memory_io(conn, req);
    switch (req->type) {
    case NBD_CMD_READ:
        if (conn->structured)
            do_read_structured(conn, req);
        else
            do_read_simple(conn, req);
        break;
    case NBD_CMD_WRITE:
        do_write(conn, req);
        break;
    case NBD_CMD_WRITE_ZEROES:
        do_write_zeroes(conn, req);
        break;
    case NBD_CMD_TRIM:
        do_trim(conn, req);
        break;
    case NBD_CMD_FLUSH:
        do_flush(conn, req);
        break;
    case NBD_CMD_CACHE:
        do_cache(conn, req);
        break;
    case NBD_CMD_BLOCK_STATUS:
        do_block_status(conn, req);
        break;
    default:
        send_error(conn, req, NBD_EINVAL, "unknown command");
        break;
    }
}

static void request_free(NbdRequest *req)
{
    g_free(req->segs);
    if (req->pipes)
        g_ptr_array_free(req->pipes, TRUE);
    g_free(req->payload);
    g_free(req);
}

static guint64 request_cost(const NbdRequest *req)
{
    return req->type == NBD_CMD_READ || req->type == NBD_CMD_WRITE ? req->length : 0;
}

static void request_run(NbdConn *conn, NbdRequest *req)
{
    request_execute(conn, req);
    g_mutex_lock(&conn->lock);
    conn->inflight--;
    conn->inflight_bytes -= request_cost(req);
    g_cond_broadcast(&conn->cond);
    g_mutex_unlock(&conn->lock);
    request_free(req);
}

static NbdRequest *conn_read_requests(NbdConn *conn);

/* A turn as the reader, then the request it kept for itself, if any. */
static void conn_take_reading(NbdConn *conn)
{
    NbdRequest *req = conn_read_requests(conn);
    if (req)
        request_run(conn, req);
}

/* Runs queued requests and takes over reading when asked, until stopping,
 * or (UNTIL_READ_DONE: the connection's own thread) until the stream ended
 * and nothing is queued. */
static void conn_serve(NbdConn *conn, gboolean until_read_done)
{
    g_mutex_lock(&conn->lock);
    for (;;) {
        if (conn->reader_wanted) {
            conn->reader_wanted = FALSE;
            g_mutex_unlock(&conn->lock);
            conn_take_reading(conn);
            g_mutex_lock(&conn->lock);
            continue;
        }
        NbdRequest *req = g_queue_pop_head(&conn->queue);
        if (req) {
            g_mutex_unlock(&conn->lock);
            request_run(conn, req);
            g_mutex_lock(&conn->lock);
            continue;
        }
        if (conn->stopping || (until_read_done && conn->read_done))
            break;
        conn->idle_workers++;
        g_cond_wait(&conn->work_cond, &conn->lock);
        conn->idle_workers--;
    }
    g_mutex_unlock(&conn->lock);
}

static gpointer conn_worker(gpointer data)
{
    conn_serve(data, FALSE);
    return NULL;
}

/* Whether the reader may run the request it just read itself: it is the
 * only one in flight and no other waits behind it (in the read buffer or
 * the socket), as with a guest's synchronous I/O. Requests that come in
 * bunches are queued for the workers as they are read. Not with TLS, whose
 * session may hold records. */
static gboolean conn_request_alone(NbdConn *conn)
{
    if (conn->tls || conn->rpos < conn->rlen)
        return FALSE;
    g_mutex_lock(&conn->lock);
    gboolean alone = conn->inflight == 1;
    g_mutex_unlock(&conn->lock);
    struct pollfd pfd = { .fd = conn->fd, .events = POLLIN };
    return alone && poll(&pfd, 1, 0) == 0;
}

/* The idle threads that some queued request or the hand-over of reading
 * will not take: a thread woken for one still counts as idle until it runs,
 * so idle_workers alone promises one thread to several requests (a request
 * queued behind one that blocks then waited for it). Called with conn->lock
 * held. */
static guint conn_unclaimed_idle(NbdConn *conn)
{
    guint claimed = g_queue_get_length(&conn->queue) + (conn->reader_wanted ? 1 : 0);
    return conn->idle_workers > claimed ? conn->idle_workers - claimed : 0;
}

/* Asks an idle thread, or a new one while under the limit, to take over
 * reading. FALSE if there is none: the reader keeps reading. */
static gboolean conn_hand_over_reading(NbdConn *conn)
{
    g_mutex_lock(&conn->lock);
    gboolean handed = conn_unclaimed_idle(conn) > 0;
    if (!handed && conn->threads->len < conn->workers) {
        GThread *t = g_thread_try_new("nbd-worker", conn_worker, conn, NULL);
        if (t)
            g_ptr_array_add(conn->threads, t);
        handed = t != NULL;
    }
    if (handed) {
        conn->reader_wanted = TRUE;
        g_cond_signal(&conn->work_cond);
    }
    g_mutex_unlock(&conn->lock);
    return handed;
}

/* Hands REQ to an idle worker, or a new one while under the limit. */
static void conn_queue_request(NbdConn *conn, NbdRequest *req)
{
    g_mutex_lock(&conn->lock);
    gboolean idle_one = conn_unclaimed_idle(conn) > 0;
    g_queue_push_tail(&conn->queue, req);
    if (idle_one || conn->threads->len >= conn->workers) {
        g_cond_signal(&conn->work_cond);
        g_mutex_unlock(&conn->lock);
        return;
    }
    GThread *t = g_thread_try_new("nbd-worker", conn_worker, conn, NULL);
    if (t)
        g_ptr_array_add(conn->threads, t);
    gboolean no_workers = conn->threads->len == 0;
    if (no_workers)
        g_queue_remove(&conn->queue, req);
    g_mutex_unlock(&conn->lock);
    if (no_workers)
        request_run(conn, req); /* out of threads: serve it here rather than never */
}

static void conn_stop_workers(NbdConn *conn)
{
    g_mutex_lock(&conn->lock);
    conn->stopping = TRUE;
    g_cond_broadcast(&conn->work_cond);
    g_mutex_unlock(&conn->lock);
    for (guint i = 0; conn->threads && i < conn->threads->len; i++)
        g_thread_join(conn->threads->pdata[i]);
    if (conn->threads)
        g_ptr_array_set_size(conn->threads, 0);
}

/* ======================================================================
 * Transmission: the reader
 * ====================================================================== */

static guint16 valid_command_flags(NbdConn *conn, guint16 type)
{
    guint16 valid = NBD_CMD_FLAG_FUA;
    if (type == NBD_CMD_READ && conn->structured)
        valid |= NBD_CMD_FLAG_DF;
    if (type == NBD_CMD_WRITE_ZEROES)
        valid |= NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
    if (type == NBD_CMD_BLOCK_STATUS)
        valid |= NBD_CMD_FLAG_REQ_ONE;
    if ((type == NBD_CMD_READ || type == NBD_CMD_WRITE) && conn->guest_memory)
        valid |= NBD_CMD_FLAG_VMM_GUEST_MEMORY;
    return valid;
}

static gboolean command_has_range(guint16 type)
{
    return type == NBD_CMD_READ || type == NBD_CMD_WRITE || type == NBD_CMD_TRIM || type == NBD_CMD_CACHE ||
           type == NBD_CMD_WRITE_ZEROES || type == NBD_CMD_BLOCK_STATUS;
}

static gboolean command_writes(guint16 type)
{
    return type == NBD_CMD_WRITE || type == NBD_CMD_TRIM || type == NBD_CMD_WRITE_ZEROES;
}

/* The NBD errno this request fails with before reaching the disk, or 0. */
static guint32 request_check(NbdConn *conn, const NbdRequest *req, const char **why)
{
    if (req->type > NBD_CMD_BLOCK_STATUS || req->type == NBD_CMD_DISC) {
        *why = "unknown command";
        return NBD_EINVAL;
    }
    if (req->flags & ~valid_command_flags(conn, req->type)) {
        *why = "flags not valid for the command";
        return NBD_EINVAL;
    }
    if (command_writes(req->type) && conn->read_only) {
        *why = "export is read-only";
        return NBD_EPERM;
    }
    if (command_has_range(req->type) && (req->offset > conn->size || req->length > conn->size - req->offset)) {
        *why = "request past the end of the export";
        return command_writes(req->type) && req->type != NBD_CMD_TRIM ? NBD_ENOSPC : NBD_EINVAL;
    }
    if ((req->flags & NBD_CMD_FLAG_VMM_GUEST_MEMORY) && req->length > NBD_MAX_PAYLOAD) {
        *why = "request longer than the maximum payload";
        return NBD_EINVAL;
    }
    if (req->type == NBD_CMD_READ && req->length > NBD_MAX_PAYLOAD) {
        *why = "read longer than the maximum payload";
        return conn->structured ? NBD_EOVERFLOW : NBD_EINVAL;
    }
    if (req->type == NBD_CMD_BLOCK_STATUS) {
        if (!conn->meta_base && !conn->meta_depth) {
            *why = "no metadata context negotiated";
            return NBD_EINVAL;
        }
        if (req->length == 0) {
            *why = "block status of zero length";
            return NBD_EINVAL;
        }
    }
    return 0;
}

/* Waits until there is room for one more request of COST bytes. */
static void conn_wait_capacity(NbdConn *conn, guint64 cost)
{
    g_mutex_lock(&conn->lock);
    while (conn->inflight >= MAX_INFLIGHT_REQUESTS ||
           (conn->inflight > 0 && conn->inflight_bytes + cost > MAX_INFLIGHT_BYTES))
        g_cond_wait(&conn->cond, &conn->lock);
    conn->inflight++;
    conn->inflight_bytes += cost;
    g_mutex_unlock(&conn->lock);
}

typedef enum { SPLICE_NOT_DONE, SPLICE_DONE, SPLICE_FAILED } SpliceResult;

/* At most this many pipes per connection hold WRITE data at once (each is
 * two fds and up to 1 MiB of pages); past it, payloads go to buffers. */
#define MAX_WRITE_PIPES 64

/* Reads a large WRITE's payload into pipes, by reference, where it can go to
 * the host file by splice (vmm_block_pwrite_spliced): what the read buffer
 * holds already becomes the payload's head. SPLICE_DONE: read;
 * SPLICE_NOT_DONE: nothing read, use a buffer; SPLICE_FAILED: the
 * connection failed (*ERROR). */
static SpliceResult read_write_payload_spliced(NbdConn *conn, NbdRequest *req, GError **error)
{
    int fd;
    guint64 host, pnum;
    if (conn->tls || conn->no_splice || req->length < SPLICE_MIN_READ ||
        !vmm_block_map_host(conn->exp->bs, req->offset, req->length, TRUE, &fd, &host, &pnum) ||
        pnum < req->length)
        return SPLICE_NOT_DONE;
    g_mutex_lock(&conn->lock);
    gboolean room = conn->pipes_out + 4 <= MAX_WRITE_PIPES;
    g_mutex_unlock(&conn->lock);
    if (!room)
        return SPLICE_NOT_DONE;
    gsize head = MIN(conn->rlen - conn->rpos, (gsize)req->length);
    req->payload = g_memdup2(conn->rbuf + conn->rpos, MAX(head, 1));
    req->payload_len = head;
    conn->rpos += head;
    req->pipes = g_ptr_array_new_with_free_func((GDestroyNotify)vmm_splice_pipe_free);
    gsize rest = req->length - head;
    while (rest > 0) {
        VmmSplicePipe *p = conn_take_pipe(conn);
        if (!p) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_FAILED, "%s: no pipe for a write's data", conn->label);
            return SPLICE_FAILED;
        }
        g_ptr_array_add(req->pipes, p);
        g_mutex_lock(&conn->lock);
        conn->pipes_out++;
        g_mutex_unlock(&conn->lock);
        gssize n = vmm_splice_recv(p, conn->fd, rest);
        if (n < 0) {
            vmm_set_errno(error, errno, "%s: receiving a write's data", conn->label);
            return SPLICE_FAILED;
        }
        rest -= (gsize)n;
    }
    return SPLICE_DONE;
}

/* Reads a WRITE's payload, or for one over the limit reads past it. Returns
 * FALSE when the client must be disconnected. */
static gboolean read_write_payload(NbdConn *conn, NbdRequest *req, guint32 *nbd_errno, const char **why,
                                   GError **error)
{
    if (req->length > NBD_MAX_PAYLOAD) {
        if (req->length > MAX_DISCARD_PAYLOAD) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG, "%s: write of %u bytes is over the %u-byte limit",
                        conn->label, req->length, NBD_MAX_PAYLOAD);
            return FALSE;
        }
        *nbd_errno = NBD_EINVAL;
        *why = "write longer than the maximum payload";
        return conn_discard(conn, req->length, error);
    }
    if (*nbd_errno)
        return conn_discard(conn, req->length, error);
    switch (read_write_payload_spliced(conn, req, error)) {
    case SPLICE_DONE: return TRUE;
    case SPLICE_FAILED: return FALSE;
    case SPLICE_NOT_DONE: break;
    }
    req->payload = g_try_malloc(MAX(req->length, 1));
    if (!req->payload) {
        *nbd_errno = NBD_ENOMEM;
        *why = "out of memory";
        return conn_discard(conn, req->length, error);
    }
    return conn_read_full(conn, req->payload, req->length, error);
}

/* The segment list of a request whose data is in guest memory, as iovecs
 * into our mapping of it. A list that does not describe the request's length
 * inside guest memory gets EINVAL (*NBD_ERRNO, *WHY); FALSE when the client
 * must be disconnected (a count over the limit, or the stream failed). */
static gboolean read_guest_segments(NbdConn *conn, NbdRequest *req, guint32 *nbd_errno, const char **why,
                                    GError **error)
{
    guint8 head[NBD_VMM_SEGMENT_LIST_HEADER];
    if (!conn_read_full(conn, head, sizeof(head), error))
        return FALSE;
    guint32 count = get_be32(head);
    if (count > NBD_VMM_MAX_SEGMENTS) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG, "%s: guest memory segment list of %u entries, over the limit of %u; disconnecting",
                    conn->label, count, NBD_VMM_MAX_SEGMENTS);
        return FALSE;
    }
    g_autofree guint8 *raw = g_malloc(MAX((gsize)count * NBD_VMM_SEGMENT_SIZE, 1));
    if (!conn_read_full(conn, raw, (gsize)count * NBD_VMM_SEGMENT_SIZE, error))
        return FALSE;
    if (*nbd_errno)
        return TRUE;
    struct iovec *segs = g_new(struct iovec, MAX(count, 1));
    guint64 total = 0;
    for (guint32 i = 0; i < count; i++) {
        guint64 at = get_be64(raw + i * NBD_VMM_SEGMENT_SIZE);
        guint32 len = get_be32(raw + i * NBD_VMM_SEGMENT_SIZE + 8);
        if (len == 0 || at > conn->mem.size || len > conn->mem.size - at) {
            *why = len == 0 ? "empty guest memory segment" : "guest memory segment outside the guest's RAM";
            break;
        }
        segs[i] = (struct iovec){ conn->mem.base + at, len };
        total += len;
    }
    if (!*why && total != req->length)
        *why = "guest memory segments do not add up to the request's length";
    if (*why) {
        *nbd_errno = NBD_EINVAL;
        g_free(segs);
        return TRUE;
    }
    req->segs = segs;
    req->nsegs = count;
    return TRUE;
}

/* Decodes requests until DISC, the end of the stream or a violation, or
 * until it hands reading over and keeps a request (*KEEP) to run itself. */
static void conn_read_until_done(NbdConn *conn, NbdRequest **keep)
{
    g_autoptr(GError) err = NULL;
    for (;;) {
        guint8 hdr[NBD_REQUEST_SIZE];
        int rc = conn_read(conn, hdr, sizeof(hdr), &err);
        if (rc <= 0) {
            if (rc < 0 && !conn->send_failed && !g_error_matches(err, VMM_ERROR, VMM_ERROR_CLOSED))
                vmm_info("%s", err->message);
            return;
        }
        if (get_be32(hdr) != NBD_REQUEST_MAGIC) {
            vmm_warn("%s: bad request magic 0x%08x, disconnecting", conn->label, get_be32(hdr));
            return;
        }
        NbdRequest *req = g_new0(NbdRequest, 1);
        req->flags = get_be16(hdr + 4);
        req->type = get_be16(hdr + 6);
        req->cookie = get_be64(hdr + 8);
        req->offset = get_be64(hdr + 16);
        req->length = get_be32(hdr + 24);
        if (req->type == NBD_CMD_DISC) {
            request_free(req);
            vmm_debug("%s: disconnect requested", conn->label);
            return;
        }
        const char *why = NULL;
        guint32 nbd_errno = request_check(conn, req, &why);
        gboolean in_guest = conn->guest_memory && (req->flags & NBD_CMD_FLAG_VMM_GUEST_MEMORY) &&
                            (req->type == NBD_CMD_READ || req->type == NBD_CMD_WRITE);
        if (in_guest && !read_guest_segments(conn, req, &nbd_errno, &why, &err)) {
            vmm_warn("%s", err->message);
            request_free(req);
            return;
        }
        if (!in_guest && req->type == NBD_CMD_WRITE && !read_write_payload(conn, req, &nbd_errno, &why, &err)) {
            vmm_warn("%s", err->message);
            request_free(req);
            return;
        }
        if (nbd_errno) {
            vmm_debug("%s: request type %u at %" G_GUINT64_FORMAT "+%u refused: %s", conn->label, req->type,
                      req->offset, req->length, why);
            send_error(conn, req, nbd_errno, why);
            request_free(req);
            continue;
        }
        conn_wait_capacity(conn, request_cost(req));
        if (conn_request_alone(conn) && conn_hand_over_reading(conn)) {
            *keep = req;
            return;
        }
        conn_queue_request(conn, req);
    }
}

/* This thread's turn as the reader: decodes requests and queues them until
 * it keeps one to run itself, having handed reading over (returned), or the
 * stream ends (NULL; read_done is set). */
static NbdRequest *conn_read_requests(NbdConn *conn)
{
    NbdRequest *keep = NULL;
    conn_read_until_done(conn, &keep);
    if (keep)
        return keep;
    g_mutex_lock(&conn->lock);
    conn->read_done = TRUE;
    g_cond_broadcast(&conn->work_cond);
    g_mutex_unlock(&conn->lock);
    return NULL;
}

static void conn_wait_idle(NbdConn *conn)
{
    g_mutex_lock(&conn->lock);
    while (conn->inflight > 0)
        g_cond_wait(&conn->cond, &conn->lock);
    g_mutex_unlock(&conn->lock);
}

/* ======================================================================
 * Connection lifetime
 * ====================================================================== */

static char *peer_description(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0)
        return g_strdup("fd");
    if (ss.ss_family == AF_UNIX)
        return g_strdup("unix");
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    if (getnameinfo((struct sockaddr *)&ss, len, host, sizeof(host), serv, sizeof(serv),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0)
        return g_strdup("?");
    return ss.ss_family == AF_INET6 ? g_strdup_printf("[%s]:%s", host, serv) : g_strdup_printf("%s:%s", host, serv);
}

static void conn_free(NbdConn *conn)
{
    conn_stop_workers(conn);
    if (conn->threads)
        g_ptr_array_free(conn->threads, TRUE);
    if (conn->attached)
        export_detach(conn->exp);
    nbd_export_unref(conn->exp);
    nbd_tls_session_free(conn->tls);
    nbd_tls_creds_unref(conn->tls_creds);
    g_strfreev(conn->tls_authz);
    g_free(conn->meta_export);
    g_free(conn->rbuf);
    g_free(conn->label);
    if (conn->pipes)
        g_ptr_array_free(conn->pipes, TRUE);
    g_mutex_clear(&conn->lock);
    g_cond_clear(&conn->cond);
    g_cond_clear(&conn->work_cond);
    g_mutex_clear(&conn->send_lock);
    g_free(conn);
}

static void conn_enter_transmission(NbdConn *conn)
{
    conn->deadline = 0;
    conn->read_only = conn->exp->read_only;
    conn->size = vmm_block_size(conn->exp->bs);
    /* Contexts count only if the last SET named the export in use. */
    if (!conn->meta_export || strcmp(conn->meta_export, conn->exp->name) != 0)
        conn->meta_base = conn->meta_depth = FALSE;
    conn->threads = g_ptr_array_new();
}

static gpointer conn_thread(gpointer data)
{
    NbdConn *conn = data;
    NbdServer *server = conn->server;
    g_autoptr(GError) err = NULL;
    vmm_debug("%s: connected", conn->label);
    if (conn_negotiate(conn, &err)) {
        vmm_debug("%s: export '%s' (%s)", conn->label, conn->exp->name,
                 conn->structured ? "structured replies" : "simple replies");
        conn_enter_transmission(conn);
        conn_take_reading(conn);
        conn_serve(conn, TRUE);
        conn_wait_idle(conn);
        conn_stop_workers(conn);
    } else if (err && !g_error_matches(err, VMM_ERROR, VMM_ERROR_CLOSED)) {
        vmm_info("%s", err->message);
    }
    g_mutex_lock(&conn->send_lock);
    if (conn->tls && !conn->send_failed)
        nbd_tls_session_bye(conn->tls);
    g_mutex_unlock(&conn->send_lock);

    g_mutex_lock(&server->lock);
    server->conns = g_list_remove(server->conns, conn);
    close(conn->fd);
    guint remaining = server->nconns - 1;
    NbdClientDoneFunc fn = server->done_fn;
    gpointer opaque = server->done_opaque;
    g_mutex_unlock(&server->lock);
    vmm_debug("%s: closed", conn->label);
    conn_free(conn);
    if (fn)
        fn(server, remaining, opaque);

    /* Last touch of the server: nbd_server_free may proceed after this. */
    g_mutex_lock(&server->lock);
    server->nconns--;
    g_cond_broadcast(&server->cond);
    g_mutex_unlock(&server->lock);
    return NULL;
}

gboolean nbd_server_serve_fd(NbdServer *server, int fd, GError **error)
{
    return nbd_server_serve_fd_guest(server, fd, NULL, error);
}

gboolean nbd_server_serve_fd_guest(NbdServer *server, int fd, const NbdGuestMemory *mem, GError **error)
{
    vmm_unix_socket_set_buffers(fd, SOCKET_BUFFER_BYTES);
    NbdConn *conn = g_new0(NbdConn, 1);
    if (mem && mem->base && mem->size)
        conn->mem = *mem;
    conn->server = server;
    conn->fd = fd;
    conn->rbuf = g_malloc(READ_BUFFER_SIZE);
    g_mutex_init(&conn->lock);
    g_cond_init(&conn->cond);
    g_cond_init(&conn->work_cond);
    g_queue_init(&conn->queue);
    g_mutex_init(&conn->send_lock);
    g_autofree char *peer = peer_description(fd);

    g_mutex_lock(&server->lock);
    conn->label = g_strdup_printf("nbd client %u (%s)", ++server->next_id, peer);
    conn->tls_mode = server->tls_mode;
    conn->tls_creds = server->tls_creds ? nbd_tls_creds_ref(server->tls_creds) : NULL;
    conn->tls_authz = g_strdupv(server->tls_authz);
    conn->workers = server->workers;
    conn->no_splice = !vmm_splice_enabled();
    if (server->handshake_timeout)
        conn->deadline = g_get_monotonic_time() + (gint64)server->handshake_timeout * G_USEC_PER_SEC;
    server->conns = g_list_prepend(server->conns, conn);
    server->nconns++;
    g_mutex_unlock(&server->lock);

    GThread *thread = g_thread_try_new("nbd-conn", conn_thread, conn, error);
    if (thread) {
        g_thread_unref(thread);
        return TRUE;
    }
    g_prefix_error(error, "%s: ", conn->label);
    g_mutex_lock(&server->lock);
    server->conns = g_list_remove(server->conns, conn);
    server->nconns--;
    g_cond_broadcast(&server->cond);
    g_mutex_unlock(&server->lock);
    close(fd);
    conn_free(conn);
    return FALSE;
}

/* ======================================================================
 * Listening
 * ====================================================================== */

struct NbdListener {
    NbdServer *server;
    int fd;
    int wake[2]; /* a byte on wake[1] stops the accept thread */
    GThread *thread;
    char *unix_path;
    char *label;
    int port;
};

static int listen_unix(const char *path, GError **error)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sun.sun_path)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "NBD socket '%s': path too long", path);
        return -1;
    }
    strcpy(sun.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        vmm_set_errno(error, errno, "NBD socket '%s': socket", path);
        return -1;
    }
    /* A stale socket file from a previous run would make bind fail. */
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
    if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || listen(fd, 128) < 0) {
        vmm_set_errno(error, errno, "NBD socket '%s'", path);
        close(fd);
        return -1;
    }
    return fd;
}

static gboolean split_host_port(const char *address, char **host, char **port, GError **error)
{
    const char *colon;
    if (address[0] == '[') {
        const char *end = strchr(address, ']');
        if (!end || end[1] != ':')
            goto bad;
        *host = g_strndup(address + 1, end - address - 1);
        colon = end + 1;
    } else {
        colon = strrchr(address, ':');
        if (!colon)
            goto bad;
        *host = colon == address ? NULL : g_strndup(address, colon - address);
    }
    *port = g_strdup(colon + 1);
    if (!**port) {
        g_clear_pointer(host, g_free);
        g_clear_pointer(port, g_free);
        goto bad;
    }
    return TRUE;
bad:
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                "NBD listen address '%s': expected unix:PATH, HOST:PORT, [V6ADDR]:PORT or :PORT", address);
    return FALSE;
}

static int listen_tcp(const char *address, GError **error)
{
    g_autofree char *host = NULL, *port = NULL;
    if (!split_host_port(address, &host, &port, error))
        return -1;
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "NBD listen address '%s': %s", address, gai_strerror(rc));
        return -1;
    }
    int fd = -1, last_errno = 0;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last_errno = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
            last_errno = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        vmm_set_errno(error, last_errno, "NBD listen address '%s'", address);
    return fd;
}

static gpointer accept_thread(gpointer data)
{
    NbdListener *l = data;
    for (;;) {
        struct pollfd pfd[2] = { { .fd = l->fd, .events = POLLIN }, { .fd = l->wake[0], .events = POLLIN } };
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            vmm_error("%s: poll: %s", l->label, g_strerror(errno));
            return NULL;
        }
        if (pfd[1].revents)
            return NULL;
        if (!pfd[0].revents)
            continue;
        int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED)
                continue;
            /* EMFILE and friends: back off instead of spinning. */
            vmm_warn("%s: accept: %s", l->label, g_strerror(errno));
            g_usleep(100 * 1000);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* fails harmlessly on Unix sockets */
        g_autoptr(GError) err = NULL;
        if (!nbd_server_serve_fd(l->server, fd, &err))
            vmm_warn("%s: %s", l->label, err->message);
    }
}

static NbdListener *listener_start(NbdServer *server, int fd, const char *label, GError **error)
{
    NbdListener *l = g_new0(NbdListener, 1);
    l->server = server;
    l->fd = fd;
    l->label = g_strdup_printf("NBD listener %s", label);
    l->wake[0] = l->wake[1] = -1;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET)
            l->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else if (ss.ss_family == AF_INET6)
            l->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    if (pipe2(l->wake, O_CLOEXEC) < 0) {
        vmm_set_errno(error, errno, "%s: pipe", l->label);
        goto fail;
    }
    l->thread = g_thread_try_new("nbd-accept", accept_thread, l, error);
    if (!l->thread)
        goto fail;
    return l;
fail:
    nbd_listener_free(l);
    return NULL;
}

NbdListener *nbd_listener_new(NbdServer *server, const char *address, GError **error)
{
    gboolean is_unix = g_str_has_prefix(address, "unix:");
    int fd = is_unix ? listen_unix(address + 5, error) : listen_tcp(address, error);
    if (fd < 0)
        return NULL;
    NbdListener *l = listener_start(server, fd, address, error);
    if (l && is_unix)
        l->unix_path = g_strdup(address + 5);
    else if (!l && is_unix)
        unlink(address + 5);
    return l;
}

NbdListener *nbd_listener_new_fd(NbdServer *server, int fd, GError **error)
{
    g_autofree char *label = g_strdup_printf("fd %d", fd);
    return listener_start(server, fd, label, error);
}

int nbd_listener_port(NbdListener *listener)
{
    return listener->port;
}

void nbd_listener_free(NbdListener *l)
{
    if (!l)
        return;
    if (l->thread) {
        char c = 0;
        while (write(l->wake[1], &c, 1) < 0 && errno == EINTR)
            ;
        g_thread_join(l->thread);
    }
    if (l->fd >= 0)
        close(l->fd);
    for (int i = 0; i < 2; i++)
        if (l->wake[i] >= 0)
            close(l->wake[i]);
    if (l->unix_path)
        unlink(l->unix_path);
    g_free(l->unix_path);
    g_free(l->label);
    g_free(l);
}
