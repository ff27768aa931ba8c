/* The nbd protocol driver: a block node whose data lives on an NBD server.
 *
 * One connection per node. Callers on any thread build a request, register it
 * under a fresh cookie and write it (writers serialise on send_lock); a reader
 * thread reads replies and completes the request its cookie names, copying
 * read data straight into the caller's buffer. So many requests are in flight
 * at once and replies may come back in any order.
 *
 * When the connection drops, every request in flight is failed as "lost". With
 * reconnect-delay=N the reader thread reconnects (for up to N seconds) while
 * callers wait, and lost requests are sent again on the new connection (NBD
 * requests are idempotent); without it they fail with an I/O error naming the
 * server. */
#include "blockd/nbd-uri.h"
#include "common/bytes.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "blockd/nbd-tls.h"
#include "common/error.h"
#include "common/iov.h"
#include "common/log.h"
#include "proto/nbd.h"

#define HANDSHAKE_TIMEOUT_S 30

/* Big-endian fields at any alignment. */
#define DEFAULT_MAX_PAYLOAD NBD_MAX_PAYLOAD
#define DEFAULT_PREF_BLOCK 4096
/* Descriptors of one block status chunk we accept (REQ_ONE asks for one). */
#define MAX_STATUS_CHUNK (1024 * 1024)

/* ---- one transport connection (plain or TLS) ---- */

typedef struct {
    int fd;
    NbdTlsSession *tls;
} NbdConn;

static void conn_free(NbdConn *conn)
{
    if (!conn) {
        return;
    }
    if (conn->tls) {
        nbd_tls_session_free(conn->tls);
    }
    if (conn->fd >= 0) {
        close(conn->fd);
    }
    g_free(conn);
}

/* Reads exactly LEN bytes; EOF is VMM_ERROR_CLOSED. */
static gboolean conn_read(NbdConn *conn, void *buf, gsize len, GError **error)
{
    guint8 *p = buf;
    while (len > 0) {
        gssize n;
        if (conn->tls) {
            n = nbd_tls_session_recv(conn->tls, p, len, error);
            if (n < 0) {
                return FALSE;
            }
        } else {
            n = recv(conn->fd, p, len, 0);
            if (n < 0) {
                if (errno == EINTR) {
                    continue;
                }
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    g_set_error(error, VMM_ERROR, VMM_ERROR_IO, "timed out waiting for the server");
                    return FALSE;
                }
                return vmm_set_errno(error, errno, "read from the server");
            }
        }
        if (n == 0) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_CLOSED, "the server closed the connection");
            return FALSE;
        }
        p += n;
        len -= n;
    }
    return TRUE;
}

static gboolean conn_writev(NbdConn *conn, struct iovec *iov, int niov, GError **error)
{
    if (conn->tls) {
        return nbd_tls_session_send_iov(conn->tls, iov, niov, error);
    }
    while (niov > 0) {
        struct msghdr msg = { .msg_iov = iov, .msg_iovlen = niov };
        gssize n = sendmsg(conn->fd, &msg, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                g_set_error(error, VMM_ERROR, VMM_ERROR_IO, "timed out writing to the server");
                return FALSE;
            }
            return vmm_set_errno(error, errno, "write to the server");
        }
        niov = vmm_iov_consume(&iov, niov, (size_t)n);
    }
    return TRUE;
}

static gboolean conn_write(NbdConn *conn, const void *buf, gsize len, GError **error)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    return conn_writev(conn, &iov, 1, error);
}

static void set_socket_timeout(int fd, int seconds)
{
    struct timeval tv = { .tv_sec = seconds };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static int connect_unix(const char *path, int timeout_s, GError **error)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "socket path %s is too long", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        vmm_set_errno(error, errno, "socket");
        return -1;
    }
    set_socket_timeout(fd, timeout_s);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        vmm_set_errno(error, errno, "cannot connect to %s", path);
        close(fd);
        return -1;
    }
    return fd;
}

static int connect_tcp(const char *host, guint16 port, int timeout_s, GError **error)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    struct addrinfo *res = NULL;
    char portstr[8];
    g_snprintf(portstr, sizeof(portstr), "%u", port);
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_IO, "cannot resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1, last_errno = ECONNREFUSED;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last_errno = errno;
            continue;
        }
        set_socket_timeout(fd, timeout_s);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            break;
        }
        last_errno = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        vmm_set_errno(error, last_errno, "cannot connect to %s port %u", host, port);
    }
    return fd;
}

/* ---- client state ---- */

typedef enum {
    STATE_CONNECTED,
    STATE_RECONNECTING,
    STATE_DEAD,
} ClientState;

/* What one negotiation yielded. */
typedef struct {
    guint64 size;
    guint16 flags;
    guint32 min_block, pref_block, max_block;
    gboolean structured;
    guint32 base_ctx, depth_ctx;
    gboolean has_base, has_depth;
    gboolean used_go;
} NbdExport;

typedef struct {
    guint64 cookie;
    guint16 type, flags;
    guint64 offset;
    guint32 len;
    void *rbuf;             /* READ destination */
    const void *wbuf;       /* WRITE payload */
    guint64 generation;     /* the connection it was sent on */

    /* results, written by the reader thread */
    gboolean done, lost;
    guint32 nbd_errno;
    char *errmsg;           /* server's message or our protocol complaint */
    guint64 covered;        /* READ bytes received as data or holes */
    gboolean got_base, got_depth;
    guint32 base_len, base_flags, depth_len, depth_val;
} NbdReq;

typedef struct {
    VmmNbdTarget *target;
    char *uri;                    /* names the server and export in messages */
    NbdTlsCreds *tls_creds;
    gboolean want_write;

    GMutex lock;                  /* everything below but conn's I/O */
    GCond cond;                   /* request completion and state changes */
    ClientState state;
    gboolean closing;
    guint64 generation;           /* bumped on every (re)connect */
    gint64 reconnect_deadline;    /* monotonic us */
    char *last_error;             /* why the connection went away */
    GHashTable *inflight;         /* cookie -> NbdReq* */
    guint64 next_cookie;
    guint64 connects;
    NbdExport exp;

    GMutex send_lock;             /* serialises writers, guards conn replacement */
    NbdConn *conn;
    GThread *reader;
} NbdClient;

/* ---- handshake ---- */

static gboolean send_option(NbdConn *conn, guint32 opt, const void *data, guint32 len,
                            GError **error)
{
    guint8 hdr[16];
    put_be64(hdr, NBD_IHAVEOPT);
    put_be32((hdr + 8), opt);
    put_be32((hdr + 12), len);
    struct iovec iov[2] = { { hdr, sizeof(hdr) }, { (void *)data, len } };
    return conn_writev(conn, iov, len ? 2 : 1, error);
}

typedef struct {
    guint32 type;
    guint32 len;
    guint8 *data;
} OptReply;

static const char *option_name(guint32 opt)
{
    switch (opt) {
    case NBD_OPT_EXPORT_NAME: return "NBD_OPT_EXPORT_NAME";
    case NBD_OPT_STARTTLS: return "NBD_OPT_STARTTLS";
    case NBD_OPT_GO: return "NBD_OPT_GO";
    case NBD_OPT_STRUCTURED_REPLY: return "NBD_OPT_STRUCTURED_REPLY";
    case NBD_OPT_SET_META_CONTEXT: return "NBD_OPT_SET_META_CONTEXT";
    default: return "option";
    }
}

static gboolean read_option_reply(NbdConn *conn, guint32 opt, OptReply *r, GError **error)
{
    guint8 hdr[20];
    if (!conn_read(conn, hdr, sizeof(hdr), error)) {
        return FALSE;
    }
    guint64 magic = get_be64(hdr);
    guint32 ropt = get_be32((hdr + 8));
    r->type = get_be32((hdr + 12));
    r->len = get_be32((hdr + 16));
    r->data = NULL;
    if (magic != NBD_OPT_REPLY_MAGIC || ropt != opt) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                    "bad reply to %s (magic 0x%" G_GINT64_MODIFIER "x, option %u)",
                    option_name(opt), magic, ropt);
        return FALSE;
    }
    if (r->len > NBD_MAX_OPTION) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "reply to %s of %u bytes is too long",
                    option_name(opt), r->len);
        return FALSE;
    }
    r->data = g_malloc(r->len + 1);
    r->data[r->len] = 0;
    if (!conn_read(conn, r->data, r->len, error)) {
        g_clear_pointer(&r->data, g_free);
        return FALSE;
    }
    return TRUE;
}

/* The message of an error reply, for the user: the server's text if any. */
static char *option_error_text(const OptReply *r)
{
    const char *what;
    switch (r->type) {
    case NBD_REP_ERR_UNSUP: what = "not supported"; break;
    case NBD_REP_ERR_POLICY: what = "refused by the server's policy"; break;
    case NBD_REP_ERR_INVALID: what = "invalid"; break;
    case NBD_REP_ERR_PLATFORM: what = "not supported on the server's platform"; break;
    case NBD_REP_ERR_TLS_REQD: what = "the server requires TLS (use nbds:// or tls-creds)"; break;
    case NBD_REP_ERR_UNKNOWN: what = "export not available"; break;
    case NBD_REP_ERR_SHUTDOWN: what = "the server is shutting down"; break;
    case NBD_REP_ERR_BLOCK_SIZE_REQD: what = "the server requires block size negotiation"; break;
    case NBD_REP_ERR_TOO_BIG: what = "request too big"; break;
    default: what = "error"; break;
    }
    if (r->len > 0 && g_utf8_validate((const char *)r->data, r->len, NULL)) {
        return g_strdup_printf("%s: %s", what, (const char *)r->data);
    }
    return g_strdup(what);
}

static gboolean option_failed(guint32 opt, const OptReply *r, GError **error)
{
    g_autofree char *text = option_error_text(r);
    int code = r->type == NBD_REP_ERR_UNKNOWN ? VMM_ERROR_NOT_FOUND
             : r->type == NBD_REP_ERR_POLICY || r->type == NBD_REP_ERR_TLS_REQD ? VMM_ERROR_PERMISSION
             : VMM_ERROR_PROTOCOL;
    g_set_error(error, VMM_ERROR, code, "%s: %s", option_name(opt), text);
    return FALSE;
}

/* An option whose only good answer is ACK; *SUPPORTED is FALSE when the
 * server says it does not know it (UNSUP, INVALID, POLICY for optional ones). */
static gboolean simple_option(NbdConn *conn, guint32 opt, gboolean *supported, GError **error)
{
    OptReply r;
    if (!send_option(conn, opt, NULL, 0, error) || !read_option_reply(conn, opt, &r, error)) {
        return FALSE;
    }
    g_autofree guint8 *data G_GNUC_UNUSED = r.data; /* frees the payload */
    if (r.type == NBD_REP_ACK) {
        *supported = TRUE;
        return TRUE;
    }
    if (r.type == NBD_REP_ERR_UNSUP || r.type == NBD_REP_ERR_INVALID ||
        r.type == NBD_REP_ERR_POLICY || r.type == NBD_REP_ERR_PLATFORM) {
        *supported = FALSE;
        return TRUE;
    }
    return option_failed(opt, &r, error);
}

static gboolean negotiate_meta_contexts(NbdConn *conn, const VmmNbdTarget *t, NbdExport *e,
                                        GError **error)
{
    const char *names[2] = { NBD_META_BASE_ALLOCATION, NBD_META_QEMU_ALLOCATION_DEPTH };
    guint32 nq = t->allocation_depth ? 2 : 1;
    guint32 nlen = strlen(t->export_name);
    g_autoptr(GByteArray) p = g_byte_array_new();
    guint32 be = GUINT32_TO_BE(nlen);
    g_byte_array_append(p, (guint8 *)&be, 4);
    g_byte_array_append(p, (const guint8 *)t->export_name, nlen);
    be = GUINT32_TO_BE(nq);
    g_byte_array_append(p, (guint8 *)&be, 4);
    for (guint32 i = 0; i < nq; i++) {
        be = GUINT32_TO_BE(strlen(names[i]));
        g_byte_array_append(p, (guint8 *)&be, 4);
        g_byte_array_append(p, (const guint8 *)names[i], strlen(names[i]));
    }
    if (!send_option(conn, NBD_OPT_SET_META_CONTEXT, p->data, p->len, error)) {
        return FALSE;
    }
    for (;;) {
        OptReply r;
        if (!read_option_reply(conn, NBD_OPT_SET_META_CONTEXT, &r, error)) {
            return FALSE;
        }
        g_autofree guint8 *data = r.data;
        if (r.type == NBD_REP_ACK) {
            return TRUE;
        }
        if (r.type == NBD_REP_META_CONTEXT) {
            if (r.len < 4) {
                g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                            "NBD_OPT_SET_META_CONTEXT: short NBD_REP_META_CONTEXT reply");
                return FALSE;
            }
            guint32 id = get_be32(data);
            const char *name = (const char *)data + 4;
            if (strcmp(name, NBD_META_BASE_ALLOCATION) == 0) {
                e->base_ctx = id;
                e->has_base = TRUE;
            } else if (t->allocation_depth && strcmp(name, NBD_META_QEMU_ALLOCATION_DEPTH) == 0) {
                e->depth_ctx = id;
                e->has_depth = TRUE;
            }
            continue;
        }
        if (r.type & NBD_REP_FLAG_ERROR) {
            if (r.type == NBD_REP_ERR_TLS_REQD) {
                return option_failed(NBD_OPT_SET_META_CONTEXT, &r, error);
            }
            /* Block status is optional: carry on without it. */
            e->has_base = e->has_depth = FALSE;
            return TRUE;
        }
        /* Unknown reply types are ignored as the spec asks. */
    }
}

static gboolean parse_info(const OptReply *r, NbdExport *e, gboolean *got_export, GError **error)
{
    if (r->len < 2) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "NBD_OPT_GO: short NBD_REP_INFO");
        return FALSE;
    }
    guint16 type = get_be16(r->data);
    const guint8 *d = r->data + 2;
    if (type == NBD_INFO_EXPORT) {
        if (r->len != 12) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "NBD_OPT_GO: NBD_INFO_EXPORT of %u bytes",
                        r->len);
            return FALSE;
        }
        e->size = get_be64(d);
        e->flags = get_be16((d + 8));
        *got_export = TRUE;
    } else if (type == NBD_INFO_BLOCK_SIZE) {
        if (r->len != 14) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                        "NBD_OPT_GO: NBD_INFO_BLOCK_SIZE of %u bytes", r->len);
            return FALSE;
        }
        guint32 min = get_be32(d);
        guint32 pref = get_be32((d + 4));
        guint32 max = get_be32((d + 8));
        if (min == 0 || (min & (min - 1)) || min > 65536 || max < min || pref < min) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                        "NBD_OPT_GO: bad block sizes min %u preferred %u max %u", min, pref, max);
            return FALSE;
        }
        e->min_block = min;
        e->pref_block = pref;
        e->max_block = max;
    }
    return TRUE;
}

/* NBD_OPT_GO with NBD_INFO_BLOCK_SIZE. *UNSUPPORTED when the server does not
 * know GO (then EXPORT_NAME is the way in). */
static gboolean negotiate_go(NbdConn *conn, const VmmNbdTarget *t, NbdExport *e,
                             gboolean *unsupported, GError **error)
{
    guint32 nlen = strlen(t->export_name);
    g_autoptr(GByteArray) p = g_byte_array_new();
    guint32 be32 = GUINT32_TO_BE(nlen);
    guint16 be16 = GUINT16_TO_BE(1);
    g_byte_array_append(p, (guint8 *)&be32, 4);
    g_byte_array_append(p, (const guint8 *)t->export_name, nlen);
    g_byte_array_append(p, (guint8 *)&be16, 2);
    be16 = GUINT16_TO_BE(NBD_INFO_BLOCK_SIZE);
    g_byte_array_append(p, (guint8 *)&be16, 2);
    if (!send_option(conn, NBD_OPT_GO, p->data, p->len, error)) {
        return FALSE;
    }
    gboolean got_export = FALSE;
    for (;;) {
        OptReply r;
        if (!read_option_reply(conn, NBD_OPT_GO, &r, error)) {
            return FALSE;
        }
        g_autofree guint8 *data G_GNUC_UNUSED = r.data; /* frees the payload */
        if (r.type == NBD_REP_ACK) {
            if (!got_export) {
                g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                            "NBD_OPT_GO: the server sent no NBD_INFO_EXPORT");
                return FALSE;
            }
            e->used_go = TRUE;
            return TRUE;
        }
        if (r.type == NBD_REP_INFO) {
            if (!parse_info(&r, e, &got_export, error)) {
                return FALSE;
            }
            continue;
        }
        if (r.type == NBD_REP_ERR_UNSUP) {
            *unsupported = TRUE;
            return TRUE;
        }
        if (r.type & NBD_REP_FLAG_ERROR) {
            return option_failed(NBD_OPT_GO, &r, error);
        }
    }
}

static gboolean negotiate_export_name(NbdConn *conn, const VmmNbdTarget *t, gboolean no_zeroes,
                                      NbdExport *e, GError **error)
{
    GError *local = NULL;
    if (!send_option(conn, NBD_OPT_EXPORT_NAME, t->export_name, strlen(t->export_name), error)) {
        return FALSE;
    }
    guint8 buf[10 + 124];
    if (!conn_read(conn, buf, no_zeroes ? 10 : sizeof(buf), &local)) {
        if (g_error_matches(local, VMM_ERROR, VMM_ERROR_CLOSED)) {
            g_error_free(local);
            g_set_error(error, VMM_ERROR, VMM_ERROR_NOT_FOUND,
                        "NBD_OPT_EXPORT_NAME: the server closed the connection "
                        "(export not available)");
            return FALSE;
        }
        g_propagate_error(error, local);
        return FALSE;
    }
    e->size = get_be64(buf);
    e->flags = get_be16((buf + 8));
    e->used_go = FALSE;
    return TRUE;
}

static gboolean start_tls(NbdClient *c, NbdConn *conn, GError **error)
{
    gboolean ok = FALSE;
    if (!simple_option(conn, NBD_OPT_STARTTLS, &ok, error)) {
        return FALSE;
    }
    if (!ok) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "the server does not support TLS (NBD_OPT_STARTTLS refused)");
        return FALSE;
    }
    const VmmNbdTarget *t = c->target;
    const char *hostname = t->tls_hostname;
    if (!hostname && t->transport == VMM_NBD_TRANSPORT_TCP) {
        hostname = t->host;
    }
    conn->tls = nbd_tls_session_new(c->tls_creds, conn->fd, hostname, error);
    if (!conn->tls) {
        return FALSE;
    }
    return nbd_tls_session_handshake(conn->tls, HANDSHAKE_TIMEOUT_S * 1000, error);
}

/* Fixed newstyle negotiation on a connected CONN. */
static gboolean negotiate(NbdClient *c, NbdConn *conn, NbdExport *e, GError **error)
{
    const VmmNbdTarget *t = c->target;
    guint8 hello[18];
    if (!conn_read(conn, hello, sizeof(hello), error)) {
        return FALSE;
    }
    if (get_be64(hello) != NBD_MAGIC) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "not an NBD server (bad magic)");
        return FALSE;
    }
    if (get_be64((hello + 8)) != NBD_IHAVEOPT) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "the server speaks the oldstyle protocol, which is not supported");
        return FALSE;
    }
    guint16 sflags = get_be16((hello + 16));
    gboolean fixed = (sflags & NBD_FLAG_FIXED_NEWSTYLE) != 0;
    gboolean no_zeroes = (sflags & NBD_FLAG_NO_ZEROES) != 0;
    guint32 cflags = GUINT32_TO_BE((fixed ? NBD_FLAG_C_FIXED_NEWSTYLE : 0) |
                                   (no_zeroes ? NBD_FLAG_C_NO_ZEROES : 0));
    if (!conn_write(conn, &cflags, 4, error)) {
        return FALSE;
    }
    memset(e, 0, sizeof(*e));
    e->min_block = 1;
    e->pref_block = DEFAULT_PREF_BLOCK;
    e->max_block = DEFAULT_MAX_PAYLOAD;
    if (t->tls) {
        if (!fixed) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                        "TLS requested but the server does not speak fixed newstyle");
            return FALSE;
        }
        if (!start_tls(c, conn, error)) {
            return FALSE;
        }
    }
    if (fixed) {
        if (!simple_option(conn, NBD_OPT_STRUCTURED_REPLY, &e->structured, error)) {
            return FALSE;
        }
        if (e->structured && !negotiate_meta_contexts(conn, t, e, error)) {
            return FALSE;
        }
        gboolean go_unsupported = FALSE;
        if (!negotiate_go(conn, t, e, &go_unsupported, error)) {
            return FALSE;
        }
        if (!go_unsupported) {
            return TRUE;
        }
    }
    return negotiate_export_name(conn, t, no_zeroes, e, error);
}

static NbdConn *connect_and_negotiate(NbdClient *c, NbdExport *e, int timeout_s, GError **error)
{
    const VmmNbdTarget *t = c->target;
    int fd = t->transport == VMM_NBD_TRANSPORT_UNIX
           ? connect_unix(t->path, timeout_s, error)
           : connect_tcp(t->host, t->port, timeout_s, error);
    if (fd < 0) {
        return NULL;
    }
    NbdConn *conn = g_new0(NbdConn, 1);
    conn->fd = fd;
    if (!negotiate(c, conn, e, error)) {
        conn_free(conn);
        return NULL;
    }
    set_socket_timeout(fd, 0);
    return conn;
}

/* ---- replies (reader thread) ---- */

static NbdReq *find_request(NbdClient *c, guint64 cookie)
{
    g_mutex_lock(&c->lock);
    NbdReq *req = g_hash_table_lookup(c->inflight, &cookie);
    g_mutex_unlock(&c->lock);
    return req;
}

static void complete_request(NbdClient *c, NbdReq *req)
{
    g_mutex_lock(&c->lock);
    g_hash_table_remove(c->inflight, &req->cookie);
    req->done = TRUE;
    g_cond_broadcast(&c->cond);
    g_mutex_unlock(&c->lock);
}

static void set_req_error(NbdReq *req, guint32 err, char *msg)
{
    if (req->nbd_errno == 0) {
        req->nbd_errno = err ? err : NBD_EIO;
        req->errmsg = msg;
    } else {
        g_free(msg);
    }
}

static gboolean read_simple_reply(NbdClient *c, NbdConn *conn, GError **error)
{
    guint8 b[12];
    if (!conn_read(conn, b, sizeof(b), error)) {
        return FALSE;
    }
    guint32 err = get_be32(b);
    guint64 cookie = get_be64((b + 4));
    NbdReq *req = find_request(c, cookie);
    if (!req) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                    "reply for unknown cookie %" G_GUINT64_FORMAT, cookie);
        return FALSE;
    }
    if (err) {
        set_req_error(req, err, NULL);
    } else if (req->type == NBD_CMD_READ) {
        if (!conn_read(conn, req->rbuf, req->len, error)) {
            return FALSE;
        }
        req->covered = req->len;
    }
    complete_request(c, req);
    return TRUE;
}

static gboolean chunk_range_ok(NbdReq *req, guint64 off, guint64 len, GError **error)
{
    if (req->type != NBD_CMD_READ || off < req->offset || len > req->len ||
        off - req->offset > req->len - len) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                    "data chunk at %" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT
                    " outside the request", off, len);
        return FALSE;
    }
    return TRUE;
}

static gboolean read_data_chunk(NbdConn *conn, NbdReq *req, guint32 length, GError **error)
{
    guint64 off;
    if (length < 8 || !conn_read(conn, &off, 8, error)) {
        if (length < 8) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "short data chunk");
        }
        return FALSE;
    }
    off = GUINT64_FROM_BE(off);
    if (!chunk_range_ok(req, off, length - 8, error)) {
        return FALSE;
    }
    if (!conn_read(conn, (guint8 *)req->rbuf + (off - req->offset), length - 8, error)) {
        return FALSE;
    }
    req->covered += length - 8;
    return TRUE;
}

static gboolean read_hole_chunk(NbdConn *conn, NbdReq *req, guint32 length, GError **error)
{
    guint8 b[12];
    if (length != 12) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "hole chunk of %u bytes", length);
        return FALSE;
    }
    if (!conn_read(conn, b, 12, error)) {
        return FALSE;
    }
    guint64 off = get_be64(b);
    guint32 hlen = get_be32((b + 8));
    if (!chunk_range_ok(req, off, hlen, error)) {
        return FALSE;
    }
    memset((guint8 *)req->rbuf + (off - req->offset), 0, hlen);
    req->covered += hlen;
    return TRUE;
}

static gboolean read_status_chunk(NbdClient *c, NbdConn *conn, NbdReq *req, guint32 length,
                                  GError **error)
{
    if (req->type != NBD_CMD_BLOCK_STATUS || length < 12 || (length - 4) % 8 ||
        length > MAX_STATUS_CHUNK) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "bad block status chunk (%u bytes)",
                    length);
        return FALSE;
    }
    g_autofree guint8 *b = g_malloc(length);
    if (!conn_read(conn, b, length, error)) {
        return FALSE;
    }
    guint32 ctx = get_be32(b);
    guint32 len = get_be32((b + 4));
    guint32 flags = get_be32((b + 8));
    if (len == 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "block status extent of length 0");
        return FALSE;
    }
    if (c->exp.has_base && ctx == c->exp.base_ctx) {
        req->got_base = TRUE;
        req->base_len = len;
        req->base_flags = flags;
    } else if (c->exp.has_depth && ctx == c->exp.depth_ctx) {
        req->got_depth = TRUE;
        req->depth_len = len;
        req->depth_val = flags;
    } else {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                    "block status for context %u, which was not negotiated", ctx);
        return FALSE;
    }
    return TRUE;
}

static gboolean read_error_chunk(NbdConn *conn, NbdReq *req, guint16 type, guint32 length,
                                 GError **error)
{
    if (length < 6 || length > NBD_MAX_STRING + 16) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "error chunk of %u bytes", length);
        return FALSE;
    }
    g_autofree guint8 *b = g_malloc0(length + 1);
    if (!conn_read(conn, b, length, error)) {
        return FALSE;
    }
    guint32 err = get_be32(b);
    guint16 mlen = get_be16((b + 4));
    if (mlen > length - 6 || (type == NBD_REPLY_TYPE_ERROR_OFFSET && mlen + 8u > length - 6)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "error chunk message overruns the chunk");
        return FALSE;
    }
    char *msg = NULL;
    if (mlen > 0 && g_utf8_validate((const char *)b + 6, mlen, NULL)) {
        msg = g_strndup((const char *)b + 6, mlen);
    }
    if (err == 0) {
        g_free(msg);
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "error chunk with error 0");
        return FALSE;
    }
    set_req_error(req, err, msg);
    return TRUE;
}

static gboolean skip_bytes(NbdConn *conn, guint32 length, GError **error)
{
    guint8 buf[4096];
    while (length > 0) {
        guint32 n = MIN(length, sizeof(buf));
        if (!conn_read(conn, buf, n, error)) {
            return FALSE;
        }
        length -= n;
    }
    return TRUE;
}

static gboolean read_structured_reply(NbdClient *c, NbdConn *conn, GError **error)
{
    guint8 b[16];
    if (!conn_read(conn, b, sizeof(b), error)) {
        return FALSE;
    }
    guint16 flags = get_be16(b);
    guint16 type = get_be16((b + 2));
    guint64 cookie = get_be64((b + 4));
    guint32 length = get_be32((b + 12));
    if (!c->exp.structured) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                    "structured reply without structured replies negotiated");
        return FALSE;
    }
    NbdReq *req = find_request(c, cookie);
    if (!req) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                    "reply chunk for unknown cookie %" G_GUINT64_FORMAT, cookie);
        return FALSE;
    }
    gboolean ok;
    switch (type) {
    case NBD_REPLY_TYPE_NONE:
        ok = length == 0 && (flags & NBD_REPLY_FLAG_DONE);
        if (!ok) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "bad NBD_REPLY_TYPE_NONE chunk");
        }
        break;
    case NBD_REPLY_TYPE_OFFSET_DATA:
        ok = read_data_chunk(conn, req, length, error);
        break;
    case NBD_REPLY_TYPE_OFFSET_HOLE:
        ok = read_hole_chunk(conn, req, length, error);
        break;
    case NBD_REPLY_TYPE_BLOCK_STATUS:
        ok = read_status_chunk(c, conn, req, length, error);
        break;
    case NBD_REPLY_TYPE_ERROR:
    case NBD_REPLY_TYPE_ERROR_OFFSET:
        ok = read_error_chunk(conn, req, type, length, error);
        break;
    default:
        /* Unknown error types are errors; other unknown chunks are skipped. */
        if (length > NBD_MAX_PAYLOAD) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "unknown chunk type %u of %u bytes",
                        type, length);
            return FALSE;
        }
        ok = skip_bytes(conn, length, error);
        if (ok && (type & (1 << 15))) {
            set_req_error(req, NBD_EIO, g_strdup_printf("unknown error chunk type %u", type));
        }
        break;
    }
    if (ok && (flags & NBD_REPLY_FLAG_DONE)) {
        complete_request(c, req);
    }
    return ok;
}

static gboolean read_one_reply(NbdClient *c, NbdConn *conn, GError **error)
{
    guint32 magic;
    if (!conn_read(conn, &magic, 4, error)) {
        return FALSE;
    }
    magic = GUINT32_FROM_BE(magic);
    if (magic == NBD_SIMPLE_REPLY_MAGIC) {
        return read_simple_reply(c, conn, error);
    }
    if (magic == NBD_STRUCTURED_REPLY_MAGIC) {
        return read_structured_reply(c, conn, error);
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "bad reply magic 0x%08x", magic);
    return FALSE;
}

/* ---- connection loss and reconnection ---- */

/* Fails every request in flight as lost. Called with c->lock held. */
static void fail_inflight_locked(NbdClient *c)
{
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, c->inflight);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        NbdReq *req = v;
        req->lost = TRUE;
        req->done = TRUE;
        g_hash_table_iter_remove(&it);
    }
    g_cond_broadcast(&c->cond);
}

static void drop_connection(NbdClient *c)
{
    g_mutex_lock(&c->send_lock);
    NbdConn *old = c->conn;
    c->conn = NULL;
    g_mutex_unlock(&c->send_lock);
    conn_free(old);
}

static gboolean export_matches(NbdClient *c, const NbdExport *e, GError **error)
{
    if (e->size != c->exp.size) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "the export's size changed from %" G_GUINT64_FORMAT " to %" G_GUINT64_FORMAT,
                    c->exp.size, e->size);
        return FALSE;
    }
    if (c->want_write && (e->flags & NBD_FLAG_READ_ONLY)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PERMISSION, "the export became read-only");
        return FALSE;
    }
    return TRUE;
}

/* Tries to reconnect until the deadline. TRUE when connected again. */
static gboolean reconnect(NbdClient *c)
{
    guint attempt = 0;
    for (;;) {
        g_mutex_lock(&c->lock);
        gint64 now = g_get_monotonic_time();
        gboolean give_up = c->closing || now >= c->reconnect_deadline;
        gint64 left_s = (c->reconnect_deadline - now) / G_USEC_PER_SEC;
        g_mutex_unlock(&c->lock);
        if (give_up) {
            return FALSE;
        }
        NbdExport e;
        GError *err = NULL;
        NbdConn *conn = connect_and_negotiate(c, &e, CLAMP(left_s, 1, HANDSHAKE_TIMEOUT_S), &err);
        if (conn && !export_matches(c, &e, &err)) {
            conn_free(conn);
            conn = NULL;
        }
        if (conn) {
            g_mutex_lock(&c->send_lock);
            c->conn = conn;
            g_mutex_unlock(&c->send_lock);
            g_mutex_lock(&c->lock);
            c->exp = e;
            c->generation++;
            c->connects++;
            c->state = STATE_CONNECTED;
            g_cond_broadcast(&c->cond);
            g_mutex_unlock(&c->lock);
            vmm_notice("%s: reconnected", c->uri);
            return TRUE;
        }
        g_mutex_lock(&c->lock);
        g_free(c->last_error);
        c->last_error = g_strdup_printf("reconnect failed: %s", err->message);
        g_clear_error(&err);
        /* Retry quickly at first, then every second; wake early on close. */
        gint64 wait_us = MIN(G_USEC_PER_SEC, (gint64)100000 << MIN(attempt, 4u));
        attempt++;
        g_cond_wait_until(&c->cond, &c->lock,
                          MIN(g_get_monotonic_time() + wait_us, c->reconnect_deadline));
        g_mutex_unlock(&c->lock);
    }
}

/* The connection went away with ERR: fail what is in flight, then reconnect
 * if allowed. TRUE when there is a new connection to read from. */
static gboolean handle_connection_loss(NbdClient *c, GError *err)
{
    g_mutex_lock(&c->lock);
    gboolean closing = c->closing;
    if (!closing) {
        g_free(c->last_error);
        c->last_error = g_strdup(err->message);
    }
    fail_inflight_locked(c);
    gboolean retry = !closing && c->target->reconnect_delay > 0;
    if (retry) {
        c->state = STATE_RECONNECTING;
        c->reconnect_deadline = g_get_monotonic_time() +
                                (gint64)c->target->reconnect_delay * G_USEC_PER_SEC;
    } else {
        c->state = STATE_DEAD;
    }
    g_cond_broadcast(&c->cond);
    g_mutex_unlock(&c->lock);
    if (!closing) {
        vmm_warn("%s: connection lost: %s%s", c->uri, err->message,
                 retry ? "; reconnecting" : "");
    }

    g_mutex_lock(&c->send_lock);
    if (c->conn) {
        shutdown(c->conn->fd, SHUT_RDWR);
    }
    g_mutex_unlock(&c->send_lock);
    drop_connection(c);
    if (!retry) {
        return FALSE;
    }
    if (reconnect(c)) {
        return TRUE;
    }
    g_mutex_lock(&c->lock);
    c->state = STATE_DEAD;
    g_cond_broadcast(&c->cond);
    g_mutex_unlock(&c->lock);
    return FALSE;
}

static gpointer reader_main(gpointer data)
{
    NbdClient *c = data;
    for (;;) {
        /* Only this thread replaces c->conn, so reading it unlocked is safe. */
        NbdConn *conn = c->conn;
        GError *err = NULL;
        while (read_one_reply(c, conn, &err)) {
        }
        gboolean again = handle_connection_loss(c, err);
        g_error_free(err);
        if (!again) {
            return NULL;
        }
    }
}

/* ---- requests (caller threads) ---- */

/* Writes REQ on the current connection if it still belongs to it. A failed
 * write shuts the socket down so that the reader notices and fails REQ. */
static void send_request(NbdClient *c, NbdReq *req)
{
    g_mutex_lock(&c->send_lock);
    g_mutex_lock(&c->lock);
    gboolean current = !req->done && req->generation == c->generation &&
                       c->state == STATE_CONNECTED && c->conn;
    g_mutex_unlock(&c->lock);
    if (current) {
        guint8 h[NBD_REQUEST_SIZE];
        put_be32(h, NBD_REQUEST_MAGIC);
        put_be16((h + 4), req->flags);
        put_be16((h + 6), req->type);
        put_be64((h + 8), req->cookie);
        put_be64((h + 16), req->offset);
        put_be32((h + 24), req->len);
        struct iovec iov[2] = { { h, sizeof(h) }, { (void *)req->wbuf, req->len } };
        int niov = req->type == NBD_CMD_WRITE ? 2 : 1;
        GError *err = NULL;
        if (!conn_writev(c->conn, iov, niov, &err)) {
            vmm_debug("%s: sending a request failed: %s", c->uri, err->message);
            g_error_free(err);
            shutdown(c->conn->fd, SHUT_RDWR);
        }
    }
    g_mutex_unlock(&c->send_lock);
}

/* Waits (with c->lock held) while a reconnect is under way. */
static void wait_while_reconnecting(NbdClient *c)
{
    while (c->state == STATE_RECONNECTING && !c->closing) {
        /* The reader gives up at the deadline; the slack only bounds us if
         * it is stuck in a connect. */
        gint64 limit = c->reconnect_deadline + (HANDSHAKE_TIMEOUT_S + 5) * G_USEC_PER_SEC;
        if (!g_cond_wait_until(&c->cond, &c->lock, limit)) {
            break;
        }
    }
}

static const char *command_name(guint16 type)
{
    switch (type) {
    case NBD_CMD_READ: return "read";
    case NBD_CMD_WRITE: return "write";
    case NBD_CMD_FLUSH: return "flush";
    case NBD_CMD_TRIM: return "trim";
    case NBD_CMD_CACHE: return "cache";
    case NBD_CMD_WRITE_ZEROES: return "write zeroes";
    case NBD_CMD_BLOCK_STATUS: return "block status";
    default: return "request";
    }
}

static int error_code_for(guint32 nbd_errno)
{
    switch (nbd_errno) {
    case NBD_EPERM: return VMM_ERROR_PERMISSION;
    case NBD_EINVAL: return VMM_ERROR_INVALID;
    case NBD_ENOTSUP: return VMM_ERROR_UNSUPPORTED;
    case NBD_EOVERFLOW: return VMM_ERROR_TOO_BIG;
    default: return VMM_ERROR_IO;
    }
}

static gboolean request_failed(NbdClient *c, const NbdReq *req, GError **error)
{
    /* Wire errno values are Linux's, which is what strerror knows here. */
    g_set_error(error, VMM_ERROR, error_code_for(req->nbd_errno),
                "%s: %s of %u bytes at offset %" G_GUINT64_FORMAT " failed: %s%s%s", c->uri,
                command_name(req->type), req->len, req->offset, g_strerror(req->nbd_errno),
                req->errmsg ? ": " : "", req->errmsg ? req->errmsg : "");
    return FALSE;
}

/* A server that answers ESHUTDOWN is about to close the connection: with
 * reconnect-delay the request is retried once the reader has noticed (and
 * reconnected), within the delay. FALSE when that time is up. */
static gboolean server_going_away(NbdClient *c, gint64 *deadline)
{
    gint64 now = g_get_monotonic_time();
    if (*deadline == 0) {
        *deadline = now + (gint64)c->target->reconnect_delay * G_USEC_PER_SEC;
    }
    if (now >= *deadline) {
        return FALSE;
    }
    g_mutex_lock(&c->lock);
    guint64 gen = c->generation;
    gint64 until = MIN(now + 100 * 1000, *deadline);
    while (c->generation == gen && c->state == STATE_CONNECTED && !c->closing &&
           g_cond_wait_until(&c->cond, &c->lock, until)) {
    }
    g_mutex_unlock(&c->lock);
    return TRUE;
}

/* Sends one request and waits for its reply, resending it after a reconnect. */
static gboolean run_request(NbdClient *c, NbdReq *req, GError **error)
{
    gint64 shutdown_deadline = 0;
    for (;;) {
        g_mutex_lock(&c->lock);
        wait_while_reconnecting(c);
        if (c->state != STATE_CONNECTED || c->closing) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_IO,
                        "%s: %s of %u bytes at offset %" G_GUINT64_FORMAT
                        " failed: not connected to the server (%s)",
                        c->uri, command_name(req->type), req->len, req->offset,
                        c->last_error ? c->last_error : "closed");
            g_mutex_unlock(&c->lock);
            return FALSE;
        }
        req->cookie = c->next_cookie++;
        req->generation = c->generation;
        req->done = req->lost = FALSE;
        req->nbd_errno = 0;
        g_clear_pointer(&req->errmsg, g_free);
        req->covered = 0;
        req->got_base = req->got_depth = FALSE;
        g_hash_table_insert(c->inflight, &req->cookie, req);
        g_mutex_unlock(&c->lock);

        send_request(c, req);

        g_mutex_lock(&c->lock);
        while (!req->done) {
            g_cond_wait(&c->cond, &c->lock);
        }
        gboolean lost = req->lost;
        gboolean again = lost && c->target->reconnect_delay > 0 && !c->closing;
        g_mutex_unlock(&c->lock);
        if (again) {
            continue;
        }
        if (lost) {
            g_mutex_lock(&c->lock);
            g_set_error(error, VMM_ERROR, VMM_ERROR_IO,
                        "%s: %s of %u bytes at offset %" G_GUINT64_FORMAT
                        " failed: connection to the server lost (%s)",
                        c->uri, command_name(req->type), req->len, req->offset,
                        c->last_error ? c->last_error : "closed");
            g_mutex_unlock(&c->lock);
            return FALSE;
        }
        if (req->nbd_errno == NBD_ESHUTDOWN && c->target->reconnect_delay > 0 &&
            server_going_away(c, &shutdown_deadline)) {
            continue;
        }
        if (req->nbd_errno) {
            gboolean r = request_failed(c, req, error);
            g_clear_pointer(&req->errmsg, g_free);
            return r;
        }
        if (req->type == NBD_CMD_READ && req->covered < req->len) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                        "%s: read of %u bytes at offset %" G_GUINT64_FORMAT
                        ": the server's reply covered only %" G_GUINT64_FORMAT " bytes",
                        c->uri, req->len, req->offset, req->covered);
            return FALSE;
        }
        return TRUE;
    }
}

static gboolean simple_command(NbdClient *c, guint16 type, guint16 flags, guint64 offset,
                               guint32 len, void *rbuf, const void *wbuf, GError **error)
{
    NbdReq req = { .type = type, .flags = flags, .offset = offset, .len = len,
                   .rbuf = rbuf, .wbuf = wbuf };
    return run_request(c, &req, error);
}

/* The largest request of a payload-carrying command. */
static guint32 max_payload(NbdClient *c)
{
    guint32 m = MIN(c->exp.max_block, (guint32)NBD_MAX_PAYLOAD);
    return MAX(m - m % c->exp.min_block, c->exp.min_block);
}

/* The largest TRIM/WRITE_ZEROES/BLOCK_STATUS length (as QEMU limits them). */
static guint32 max_nopayload(NbdClient *c)
{
    guint32 m = G_MAXINT32;
    return m - m % c->exp.min_block;
}

static NbdClient *client_of(VmmBlockDev *bs)
{
    return bs->opaque;
}

static gboolean nbd_pread(VmmBlockDev *bs, guint64 offset, guint64 bytes, void *buf, int flags,
                          GError **error)
{
    NbdClient *c = client_of(bs);
    guint32 chunk = max_payload(c);
    while (bytes > 0) {
        guint32 n = MIN(bytes, chunk);
        if (!simple_command(c, NBD_CMD_READ, 0, offset, n, buf, NULL, error)) {
            return FALSE;
        }
        offset += n;
        bytes -= n;
        buf = (guint8 *)buf + n;
    }
    return TRUE;
}

static gboolean check_writable(NbdClient *c, GError **error)
{
    if (c->exp.flags & NBD_FLAG_READ_ONLY) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PERMISSION, "%s: the export is read-only", c->uri);
        return FALSE;
    }
    return TRUE;
}

static gboolean nbd_flush(VmmBlockDev *bs, GError **error)
{
    NbdClient *c = client_of(bs);
    if (!(c->exp.flags & NBD_FLAG_SEND_FLUSH)) {
        return TRUE;
    }
    return simple_command(c, NBD_CMD_FLUSH, 0, 0, 0, NULL, NULL, error);
}

/* FUA on the wire when the server offers it, else a flush afterwards. */
static guint16 fua_flag(NbdClient *c, int flags)
{
    return (flags & VMM_BDRV_REQ_FUA) && (c->exp.flags & NBD_FLAG_SEND_FUA) ? NBD_CMD_FLAG_FUA : 0;
}

static gboolean finish_fua(VmmBlockDev *bs, int flags, GError **error)
{
    NbdClient *c = client_of(bs);
    if ((flags & VMM_BDRV_REQ_FUA) && !(c->exp.flags & NBD_FLAG_SEND_FUA)) {
        return nbd_flush(bs, error);
    }
    return TRUE;
}

static gboolean nbd_pwrite(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf,
                           int flags, GError **error)
{
    NbdClient *c = client_of(bs);
    if (!check_writable(c, error)) {
        return FALSE;
    }
    guint32 chunk = max_payload(c);
    while (bytes > 0) {
        guint32 n = MIN(bytes, chunk);
        if (!simple_command(c, NBD_CMD_WRITE, fua_flag(c, flags), offset, n, NULL, buf, error)) {
            return FALSE;
        }
        offset += n;
        bytes -= n;
        buf = (const guint8 *)buf + n;
    }
    return finish_fua(bs, flags, error);
}

/* Zeroes written as data, for servers without WRITE_ZEROES. */
static gboolean write_zero_buffers(VmmBlockDev *bs, guint64 offset, guint64 bytes, int flags,
                                   GError **error)
{
    NbdClient *c = client_of(bs);
    guint32 chunk = MIN(max_payload(c), 1024 * 1024);
    g_autofree void *zeroes = g_malloc0(chunk);
    while (bytes > 0) {
        guint32 n = MIN(bytes, chunk);
        if (!simple_command(c, NBD_CMD_WRITE, fua_flag(c, flags), offset, n, NULL, zeroes, error)) {
            return FALSE;
        }
        offset += n;
        bytes -= n;
    }
    return finish_fua(bs, flags, error);
}

static gboolean nbd_pwrite_zeroes(VmmBlockDev *bs, guint64 offset, guint64 bytes, int flags,
                                  GError **error)
{
    NbdClient *c = client_of(bs);
    if (!check_writable(c, error)) {
        return FALSE;
    }
    gboolean fast = (flags & VMM_BDRV_REQ_NO_FALLBACK) != 0;
    if (!(c->exp.flags & NBD_FLAG_SEND_WRITE_ZEROES) ||
        (fast && !(c->exp.flags & NBD_FLAG_SEND_FAST_ZERO))) {
        if (fast) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                        "%s: the server offers no fast zeroing", c->uri);
            return FALSE;
        }
        return write_zero_buffers(bs, offset, bytes, flags, error);
    }
    guint16 wflags = fua_flag(c, flags);
    if (!(flags & VMM_BDRV_REQ_MAY_UNMAP)) {
        wflags |= NBD_CMD_FLAG_NO_HOLE;
    }
    if (fast) {
        wflags |= NBD_CMD_FLAG_FAST_ZERO;
    }
    /* WRITE_ZEROES is bounded like a payload, as QEMU does (max_pwrite_zeroes). */
    guint32 chunk = max_payload(c);
    while (bytes > 0) {
        guint32 n = MIN(bytes, chunk);
        if (!simple_command(c, NBD_CMD_WRITE_ZEROES, wflags, offset, n, NULL, NULL, error)) {
            return FALSE;
        }
        offset += n;
        bytes -= n;
    }
    return finish_fua(bs, flags, error);
}

static gboolean nbd_pdiscard(VmmBlockDev *bs, guint64 offset, guint64 bytes, GError **error)
{
    NbdClient *c = client_of(bs);
    if (!check_writable(c, error)) {
        return FALSE;
    }
    if (!(c->exp.flags & NBD_FLAG_SEND_TRIM)) {
        return TRUE; /* discard is advisory */
    }
    guint32 chunk = max_nopayload(c);
    while (bytes > 0) {
        guint32 n = MIN(bytes, chunk);
        if (!simple_command(c, NBD_CMD_TRIM, 0, offset, n, NULL, NULL, error)) {
            return FALSE;
        }
        offset += n;
        bytes -= n;
    }
    return TRUE;
}

/* One BLOCK_STATUS request (REQ_ONE) over [OFFSET, OFFSET+BYTES). */
static gboolean query_status(NbdClient *c, guint64 offset, guint64 bytes, NbdReq *req,
                             GError **error)
{
    *req = (NbdReq){ .type = NBD_CMD_BLOCK_STATUS, .flags = NBD_CMD_FLAG_REQ_ONE,
                     .offset = offset, .len = MIN(bytes, max_nopayload(c)) };
    return run_request(c, req, error);
}

static int nbd_block_status(VmmBlockDev *bs, guint64 offset, guint64 bytes, guint64 *pnum,
                            guint64 *map, VmmBlockDev **file, GError **error)
{
    NbdClient *c = client_of(bs);
    if (map) {
        *map = offset;
    }
    if (file) {
        *file = bs;
    }
    if (!c->exp.has_base) {
        *pnum = bytes;
        return VMM_BLOCK_DATA | VMM_BLOCK_ALLOCATED | VMM_BLOCK_OFFSET_VALID;
    }
    NbdReq req;
    if (!query_status(c, offset, bytes, &req, error)) {
        return -1;
    }
    if (!req.got_base) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                    "%s: block status at offset %" G_GUINT64_FORMAT
                    ": the server sent no base:allocation extent", c->uri, offset);
        return -1;
    }
    *pnum = MIN((guint64)req.base_len, bytes);
    int ret = VMM_BLOCK_OFFSET_VALID;
    if (!(req.base_flags & NBD_STATE_HOLE)) {
        ret |= VMM_BLOCK_DATA;
    }
    if (req.base_flags & NBD_STATE_ZERO) {
        ret |= VMM_BLOCK_ZERO;
    }
    if (ret & (VMM_BLOCK_DATA | VMM_BLOCK_ZERO)) {
        ret |= VMM_BLOCK_ALLOCATED;
    }
    return ret;
}

gboolean vmm_nbd_allocation_depth(VmmBlockDev *bs, guint64 offset, guint64 bytes, guint64 *pnum,
                                  guint32 *depth, GError **error)
{
    if (!bs || bs->drv != &vmm_nbd_driver) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: not an nbd node",
                    bs && bs->filename ? bs->filename : "(null)");
        return FALSE;
    }
    NbdClient *c = client_of(bs);
    if (!c->exp.has_depth) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%s: qemu:allocation-depth was not negotiated%s", c->uri,
                    c->target->allocation_depth ? " (the server does not offer it)"
                                                : " (open with allocation-depth=on)");
        return FALSE;
    }
    NbdReq req;
    if (!query_status(c, offset, bytes, &req, error)) {
        return FALSE;
    }
    if (!req.got_depth) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                    "%s: block status at offset %" G_GUINT64_FORMAT
                    ": the server sent no qemu:allocation-depth extent", c->uri, offset);
        return FALSE;
    }
    *pnum = MIN((guint64)req.depth_len, bytes);
    *depth = req.depth_val;
    return TRUE;
}

gboolean vmm_nbd_cache(VmmBlockDev *bs, guint64 offset, guint64 bytes, GError **error)
{
    if (!bs || bs->drv != &vmm_nbd_driver) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: not an nbd node",
                    bs && bs->filename ? bs->filename : "(null)");
        return FALSE;
    }
    NbdClient *c = client_of(bs);
    if (!(c->exp.flags & NBD_FLAG_SEND_CACHE)) {
        return TRUE;
    }
    guint32 chunk = max_payload(c);
    while (bytes > 0) {
        guint32 n = MIN(bytes, chunk);
        if (!simple_command(c, NBD_CMD_CACHE, 0, offset, n, NULL, NULL, error)) {
            return FALSE;
        }
        offset += n;
        bytes -= n;
    }
    return TRUE;
}

gboolean vmm_nbd_get_info(VmmBlockDev *bs, VmmNbdInfo *info)
{
    if (!bs || bs->drv != &vmm_nbd_driver || !bs->opaque) {
        return FALSE;
    }
    NbdClient *c = client_of(bs);
    g_mutex_lock(&c->lock);
    *info = (VmmNbdInfo){
        .export_flags = c->exp.flags,
        .min_block = c->exp.min_block,
        .pref_block = c->exp.pref_block,
        .max_block = c->exp.max_block,
        .structured_replies = c->exp.structured,
        .base_allocation = c->exp.has_base,
        .allocation_depth = c->exp.has_depth,
        .used_go = c->exp.used_go,
        .tls = c->target->tls,
        .connects = c->connects,
    };
    g_mutex_unlock(&c->lock);
    return TRUE;
}

/* ---- open / close ---- */

static gboolean load_tls_creds(NbdClient *c, GError **error)
{
    const VmmNbdTarget *t = c->target;
    VmmNbdTlsKind kind = VMM_NBD_TLS_X509;
    g_autofree char *dir = NULL, *user = NULL;
    if (t->tls_creds) {
        if (!vmm_nbd_tls_creds_lookup(t->tls_creds, &kind, &dir, &user)) {
            if (!g_file_test(t->tls_creds, G_FILE_TEST_IS_DIR)) {
                g_set_error(error, VMM_ERROR, VMM_ERROR_NOT_FOUND,
                            "%s: tls-creds '%s' is neither defined credentials nor a directory",
                            c->uri, t->tls_creds);
                return FALSE;
            }
            dir = g_strdup(t->tls_creds);
            g_autofree char *keys = g_build_filename(dir, "keys.psk", NULL);
            g_autofree char *ca = g_build_filename(dir, "ca-cert.pem", NULL);
            if (g_file_test(keys, G_FILE_TEST_EXISTS) && !g_file_test(ca, G_FILE_TEST_EXISTS)) {
                kind = VMM_NBD_TLS_PSK;
            }
        }
    } else if (t->tls_psk_file) {
        kind = VMM_NBD_TLS_PSK;
        dir = g_strdup(t->tls_psk_file);
    } else if (t->tls_certificates) {
        dir = g_strdup(t->tls_certificates);
    } else {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: TLS needs credentials (tls-creds, or ?tls-certificates=DIR or "
                    "?tls-psk-file=FILE in the URI)", c->uri);
        return FALSE;
    }
    const char *username = t->tls_username ? t->tls_username : user ? user : "qemu";
    GError *local = NULL;
    c->tls_creds = kind == VMM_NBD_TLS_PSK
                 ? nbd_tls_creds_new_psk(dir, NBD_TLS_CLIENT, username, &local)
                 : nbd_tls_creds_new_x509(dir, NBD_TLS_CLIENT, TRUE, &local);
    if (!c->tls_creds) {
        g_set_error(error, VMM_ERROR, local->code, "%s: %s", c->uri, local->message);
        g_error_free(local);
        return FALSE;
    }
    return TRUE;
}

static guint cookie_hash(gconstpointer p)
{
    return g_int64_hash(p);
}

static gboolean cookie_equal(gconstpointer a, gconstpointer b)
{
    return g_int64_equal(a, b);
}

static void client_free(NbdClient *c)
{
    if (!c) {
        return;
    }
    conn_free(c->conn);
    if (c->tls_creds) {
        nbd_tls_creds_unref(c->tls_creds);
    }
    if (c->inflight) {
        g_hash_table_unref(c->inflight);
    }
    vmm_nbd_target_free(c->target);
    g_free(c->uri);
    g_free(c->last_error);
    g_mutex_clear(&c->lock);
    g_mutex_clear(&c->send_lock);
    g_cond_clear(&c->cond);
    g_free(c);
}

static NbdClient *client_new(VmmNbdTarget *target, gboolean want_write)
{
    NbdClient *c = g_new0(NbdClient, 1);
    c->target = target;
    c->uri = vmm_nbd_target_to_uri(target);
    c->want_write = want_write;
    g_mutex_init(&c->lock);
    g_mutex_init(&c->send_lock);
    g_cond_init(&c->cond);
    c->inflight = g_hash_table_new(cookie_hash, cookie_equal);
    c->next_cookie = 1;
    return c;
}

/* Connects C the first time (no reconnect: a wrong address fails at once). */
static gboolean client_connect(NbdClient *c, GError **error)
{
    if (c->target->tls && !load_tls_creds(c, error)) {
        return FALSE;
    }
    GError *local = NULL;
    c->conn = connect_and_negotiate(c, &c->exp, HANDSHAKE_TIMEOUT_S, &local);
    if (!c->conn) {
        g_set_error(error, VMM_ERROR, local->code, "%s: %s", c->uri, local->message);
        g_error_free(local);
        return FALSE;
    }
    if (c->want_write && (c->exp.flags & NBD_FLAG_READ_ONLY)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PERMISSION,
                    "%s: the export is read-only; cannot open it read-write", c->uri);
        return FALSE;
    }
    c->state = STATE_CONNECTED;
    c->generation = 1;
    c->connects = 1;
    c->reader = g_thread_new("nbd-reader", reader_main, c);
    return TRUE;
}

static void client_close(NbdClient *c)
{
    g_mutex_lock(&c->lock);
    c->closing = TRUE;
    g_cond_broadcast(&c->cond);
    g_mutex_unlock(&c->lock);
    g_mutex_lock(&c->send_lock);
    if (c->conn) {
        guint8 h[NBD_REQUEST_SIZE] = { 0 };
        put_be32(h, NBD_REQUEST_MAGIC);
        put_be16((h + 6), NBD_CMD_DISC);
        if (conn_write(c->conn, h, sizeof(h), NULL) && c->conn->tls) {
            nbd_tls_session_bye(c->conn->tls);
        }
        shutdown(c->conn->fd, SHUT_RDWR);
    }
    g_mutex_unlock(&c->send_lock);
    if (c->reader) {
        g_thread_join(c->reader);
        c->reader = NULL;
    }
}

static gboolean nbd_open(VmmBlockDev *bs, JsonObject *options, int flags, GError **error)
{
    VmmNbdTarget *t = vmm_nbd_target_from_options(options, bs->filename, error);
    if (!t) {
        return FALSE;
    }
    NbdClient *c = client_new(t, (flags & VMM_BDRV_O_RDWR) != 0);
    if (!client_connect(c, error)) {
        client_free(c);
        return FALSE;
    }
    bs->opaque = c;
    bs->size = c->exp.size;
    bs->read_only = !(flags & VMM_BDRV_O_RDWR) || (c->exp.flags & NBD_FLAG_READ_ONLY);
    bs->request_alignment = c->exp.min_block;
    if (!bs->filename || !*bs->filename || g_str_has_prefix(bs->filename, "json:")) {
        g_free(bs->filename);
        bs->filename = g_strdup(c->uri);
    }
    return TRUE;
}

static void nbd_close(VmmBlockDev *bs)
{
    NbdClient *c = client_of(bs);
    if (!c) {
        return;
    }
    client_close(c);
    client_free(c);
    bs->opaque = NULL;
}

static gboolean nbd_truncate(VmmBlockDev *bs, guint64 size, gboolean exact, VmmPrealloc prealloc,
                             gboolean shrink_allowed, GError **error)
{
    NbdClient *c = client_of(bs);
    if (size == c->exp.size || (!exact && size < c->exp.size)) {
        return TRUE;
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED, "%s: cannot %s an NBD export", c->uri,
                size > c->exp.size ? "grow" : "resize");
    return FALSE;
}

static gint64 nbd_allocated_file_size(VmmBlockDev *bs)
{
    return -1;
}

static gboolean nbd_has_zero_init(VmmBlockDev *bs)
{
    return FALSE;
}

/* "Creating" an NBD image, as QEMU's create_opts_simple: the export must
 * exist, be writable and be at least as large as asked. */
static gboolean nbd_create(const char *filename, VmmBlockDev *file, JsonObject *opts,
                           GError **error)
{
    guint64 size = vmm_opts_get_uint(opts, "size", 0);
    const char *prealloc = vmm_opts_get_string(opts, "preallocation", "off");
    if (strcmp(prealloc, "off") != 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%s: unsupported preallocation mode '%s'", filename, prealloc);
        return FALSE;
    }
    VmmNbdTarget *t = vmm_nbd_target_parse_filename(filename, error);
    if (!t) {
        return FALSE;
    }
    NbdClient *c = client_new(t, TRUE);
    gboolean ok = client_connect(c, error);
    if (ok && size > c->exp.size) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%s: cannot grow an NBD export (it has %" G_GUINT64_FORMAT " bytes, %"
                    G_GUINT64_FORMAT " were asked for)", c->uri, c->exp.size, size);
        ok = FALSE;
    }
    client_close(c);
    client_free(c);
    return ok;
}

static const VmmOptKey nbd_open_opts[] = {
    { "server.type", VMM_OPT_STRING, "inet or unix", "inet" },
    { "server.host", VMM_OPT_STRING, "server host name or address (inet)", NULL },
    { "server.port", VMM_OPT_STRING, "server port (inet)", "10809" },
    { "server.path", VMM_OPT_STRING, "server socket path (unix)", NULL },
    { "host", VMM_OPT_STRING, "legacy: server host (use server.host)", NULL },
    { "port", VMM_OPT_STRING, "legacy: server port (use server.port)", NULL },
    { "path", VMM_OPT_STRING, "legacy: server socket path (use server.path)", NULL },
    { "export", VMM_OPT_STRING, "name of the export", "" },
    { "tls-creds", VMM_OPT_STRING, "id of TLS credentials (or a credentials directory)", NULL },
    { "tls-hostname", VMM_OPT_STRING, "name to check the server's certificate against", NULL },
    { "reconnect-delay", VMM_OPT_NUMBER,
      "seconds to reconnect for before failing requests when the connection drops", "0" },
    { "allocation-depth", VMM_OPT_BOOL, "also negotiate qemu:allocation-depth", "off" },
    { NULL },
};

static const VmmOptKey nbd_create_opts[] = {
    { "size", VMM_OPT_SIZE, "Virtual disk size", NULL },
    { "preallocation", VMM_OPT_STRING, "Preallocation mode (allowed values: off)", "off" },
    { NULL },
};

const VmmBlockDriver vmm_nbd_driver = {
    .format_name = "nbd",
    .is_protocol = TRUE,
    .create_opts = nbd_create_opts,
    .open_opts = nbd_open_opts,
    .open = nbd_open,
    .close = nbd_close,
    .create = nbd_create,
    .pread = nbd_pread,
    .pwrite = nbd_pwrite,
    .pwrite_zeroes = nbd_pwrite_zeroes,
    .pdiscard = nbd_pdiscard,
    .flush = nbd_flush,
    .block_status = nbd_block_status,
    .truncate = nbd_truncate,
    .allocated_file_size = nbd_allocated_file_size,
    .has_zero_init = nbd_has_zero_init,
};
