/* The socket side of fsd: listeners and connections on a libuv loop. Each
 * connection reassembles messages from the stream and hands them to its
 * FsdConn: once a message's size is known the rest of it is read straight
 * into a buffer of its own, which the FsdConn takes (a Twrite's data is
 * copied out of the socket once, then written). A worker writes its reply to the socket itself when nothing is
 * waiting to go out before it (no hop to the loop, no copy); the rest of a
 * reply that did not fit goes through a queue and an uv_async and is
 * written on the loop, and so is every reply after it until the queue and
 * the loop's writes are done. A message larger than msize is
 * answered Rlerror(EMSGSIZE) and skipped, so the stream stays in step. */
#include "fsd/9p-transport.h"
#include "common/error.h"
#include "common/iov.h"
#include "common/log.h"
#include "common/splice.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* Stop reading from a client that does not read its replies. */
#define WRITE_QUEUE_HIGH (16u << 20)
/* Reads of what may hold several small messages. */
#define STAGE_SIZE 16384

typedef union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_pipe_t pipe;
    uv_tcp_t tcp;
} Stream;

typedef struct Listener {
    Stream s;
    FsdServer *server;
} Listener;

typedef struct Client {
    Stream s;
    uv_async_t wake;
    FsdServer *server;
    FsdConn *conn;
    GByteArray *in;            /* bytes read that do not yet make a message */
    guint8 stage[STAGE_SIZE];
    guint8 *msg;               /* a message being read into its own buffer */
    guint32 msg_size, msg_have;
    guint32 discard;           /* bytes of an oversize message still to skip */
    GMutex out_lock;
    GQueue out;                /* GBytes replies from the workers */
    guint loop_writes;         /* uv_writes not completed (under out_lock) */
    int fd;                    /* the stream's fd, for direct sends; -1 once closing */
    gboolean broken;           /* a reply was lost half way: close (under out_lock) */
    gboolean reading, closing;
    int handles_open;
} Client;

struct FsdServer {
    uv_loop_t *loop;
    FsdExport *e;
    GList *listeners;
    GList *clients;
    int port;
    gboolean shutting_down;
    void (*on_disconnect)(FsdServer *, gpointer);
    gpointer on_disconnect_user;
};

typedef struct {
    uv_write_t req;
    GBytes *bytes;
    Client *client;
} WriteReq;

FsdServer *fsd_server_new(uv_loop_t *loop, FsdExport *e)
{
    FsdServer *s = g_new0(FsdServer, 1);
    s->loop = loop;
    s->e = e;
    return s;
}

int fsd_server_port(FsdServer *s)
{
    return s->port;
}

guint fsd_server_connections(FsdServer *s)
{
    return g_list_length(s->clients);
}

void fsd_server_set_on_disconnect(FsdServer *s, void (*cb)(FsdServer *, gpointer), gpointer user)
{
    s->on_disconnect = cb;
    s->on_disconnect_user = user;
}

static gboolean uv_fail(GError **error, int rc, const char *what, const char *name)
{
    g_set_error(error, VMM_ERROR, VMM_ERROR_IO, "9p %s '%s': %s", what, name, uv_strerror(rc));
    return FALSE;
}

/* ---- a connection ---- */

/* A lone client's quick requests run on the loop (fsd_conn_set_run_inline);
 * with several, a slow call for one must not hold up the others' reads. */
static void update_run_inline(FsdServer *s)
{
    guint open = 0;
    for (GList *l = s->clients; l; l = l->next)
        open += ((Client *)l->data)->conn ? 1 : 0;
    for (GList *l = s->clients; l; l = l->next) {
        Client *cl = l->data;
        if (cl->conn)
            fsd_conn_set_run_inline(cl->conn, open == 1);
    }
}

static void maybe_free_server(FsdServer *s)
{
    if (s->shutting_down && !s->clients && !s->listeners)
        g_free(s);
}

static void client_handle_closed(uv_handle_t *h)
{
    Client *cl = h->data;
    if (--cl->handles_open > 0)
        return;
    FsdServer *s = cl->server;
    s->clients = g_list_remove(s->clients, cl);
    g_byte_array_unref(cl->in);
    g_free(cl->msg);
    g_queue_clear_full(&cl->out, (GDestroyNotify)g_bytes_unref);
    g_mutex_clear(&cl->out_lock);
    g_free(cl);
    if (s->on_disconnect && !s->shutting_down)
        s->on_disconnect(s, s->on_disconnect_user);
    maybe_free_server(s);
}

static void client_close(Client *cl)
{
    if (cl->closing)
        return;
    cl->closing = TRUE;
    /* After this no worker sends to the client any more. */
    fsd_conn_close(cl->conn);
    g_mutex_lock(&cl->out_lock);
    cl->fd = -1;
    g_mutex_unlock(&cl->out_lock);
    cl->conn = NULL;
    update_run_inline(cl->server);
    uv_close(&cl->s.handle, client_handle_closed);
    uv_close((uv_handle_t *)&cl->wake, client_handle_closed);
}

static void on_write_done(uv_write_t *req, int status);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

static void client_resume_reading(Client *cl)
{
    if (!cl->reading && !cl->closing && uv_stream_get_write_queue_size(&cl->s.stream) < WRITE_QUEUE_HIGH / 2) {
        if (uv_read_start(&cl->s.stream, on_alloc, on_read) == 0)
            cl->reading = TRUE;
    }
}

static void on_write_done(uv_write_t *req, int status)
{
    WriteReq *w = (WriteReq *)req;
    Client *cl = w->client;
    g_bytes_unref(w->bytes);
    g_free(w);
    g_mutex_lock(&cl->out_lock);
    cl->loop_writes--;
    g_mutex_unlock(&cl->out_lock);
    if (status < 0) {
        client_close(cl);
        return;
    }
    client_resume_reading(cl);
}

/* On the loop: write what the workers queued. */
static void on_wake(uv_async_t *a)
{
    Client *cl = a->data;
    g_mutex_lock(&cl->out_lock);
    gboolean broken = cl->broken;
    g_mutex_unlock(&cl->out_lock);
    if (broken) {
        client_close(cl);
        return;
    }
    for (;;) {
        g_mutex_lock(&cl->out_lock);
        GBytes *b = g_queue_pop_head(&cl->out);
        /* Counted before the lock is let go, so that no worker sends
         * directly ahead of it. */
        if (b && !cl->closing)
            cl->loop_writes++;
        g_mutex_unlock(&cl->out_lock);
        if (!b)
            break;
        if (cl->closing) {
            g_bytes_unref(b);
            continue;
        }
        WriteReq *w = g_new0(WriteReq, 1);
        w->bytes = b;
        w->client = cl;
        gsize len;
        const void *data = g_bytes_get_data(b, &len);
        uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
        if (uv_write(&w->req, &cl->s.stream, &buf, 1, on_write_done) < 0) {
            g_bytes_unref(b);
            g_free(w);
            g_mutex_lock(&cl->out_lock);
            cl->loop_writes--;
            g_mutex_unlock(&cl->out_lock);
            client_close(cl);
        }
    }
}


/* What is left of a reply, for the loop to write: IOV, then what PIPE still
 * holds, read out of it. NULL if the pipe would not give it back. */
static GBytes *rest_to_bytes(const struct iovec *iov, unsigned niov, VmmSplicePipe *pipe)
{
    GByteArray *b = g_byte_array_new();
    for (unsigned i = 0; i < niov; i++)
        g_byte_array_append(b, iov[i].iov_base, (guint)iov[i].iov_len);
    gsize held = pipe ? vmm_splice_pipe_held(pipe) : 0;
    if (held) {
        guint at = b->len;
        g_byte_array_set_size(b, at + (guint)held);
        if (!vmm_splice_pipe_read(pipe, b->data + at, held)) {
            g_byte_array_unref(b);
            return NULL;
        }
    }
    return g_byte_array_free_to_bytes(b);
}

/* From any thread (FsdSendFunc), under the connection's lock, which
 * fsd_conn_close takes too: once the client closes, nothing comes here, so
 * the fd is still ours. */
static void client_send(FsdConn *c, const struct iovec *msg, unsigned niov, VmmSplicePipe *pipe, gsize piped,
                        gpointer user)
{
    Client *cl = user;
    struct iovec *iov = g_newa(struct iovec, niov);
    memcpy(iov, msg, niov * sizeof(*iov));
    g_mutex_lock(&cl->out_lock);
    unsigned left = niov;
    if (cl->fd >= 0 && cl->loop_writes == 0 && g_queue_is_empty(&cl->out)) {
        left = vmm_send_iov_now(cl->fd, &iov, niov);
        if (!left && pipe)
            vmm_splice_drain_now(pipe, cl->fd);   /* a failure is the loop's to find */
    }
    gboolean queued = !cl->broken && (left || (pipe && vmm_splice_pipe_held(pipe)));
    if (queued) {
        GBytes *rest = rest_to_bytes(iov, left, pipe);
        if (rest) {
            g_queue_push_tail(&cl->out, rest);
        } else {
            /* Half a reply cannot be taken back: the stream is lost. */
            vmm_warn("9p: a spliced reply could not be read back from its pipe; closing the connection");
            cl->broken = TRUE;
        }
    }
    g_mutex_unlock(&cl->out_lock);
    if (queued)
        uv_async_send(&cl->wake);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    Client *cl = h->data;
    if (cl->msg)
        *buf = uv_buf_init((char *)cl->msg + cl->msg_have, cl->msg_size - cl->msg_have);
    else
        *buf = uv_buf_init((char *)cl->stage, sizeof(cl->stage));
}

static guint32 peek_le32(const guint8 *p)
{
    return (guint32)p[0] | (guint32)p[1] << 8 | (guint32)p[2] << 16 | (guint32)p[3] << 24;
}

/* Hands every complete message in the input buffer to the connection.
 * FALSE when the stream cannot be followed any more. */
static gboolean client_consume(Client *cl)
{
    GByteArray *in = cl->in;
    gsize pos = 0;
    gboolean ok = TRUE;
    while (TRUE) {
        if (cl->discard) {
            guint32 n = (guint32)MIN((gsize)cl->discard, in->len - pos);
            pos += n;
            cl->discard -= n;
            if (cl->discard)
                break;
        }
        if (in->len - pos < 4)
            break;
        guint32 size = peek_le32(in->data + pos);
        if (size < 4) {
            vmm_info("9p: message size %u cannot be framed; closing the connection", size);
            ok = FALSE;
            break;
        }
        guint32 msize = fsd_conn_msize(cl->conn);
        if (size > msize) {
            if (in->len - pos < P9_HDRSZ)
                break;
            fsd_conn_refuse_oversize(cl->conn, in->data[pos + 4], (guint16)(in->data[pos + 5] | in->data[pos + 6] << 8),
                                     size);
            cl->discard = size;
            continue;
        }
        if (in->len - pos < size) {
            /* The rest is read into the message's own buffer (on_alloc). */
            cl->msg = g_malloc(size);
            cl->msg_size = size;
            cl->msg_have = in->len - (guint)pos;
            memcpy(cl->msg, in->data + pos, cl->msg_have);
            pos = in->len;
            break;
        }
        fsd_conn_receive(cl->conn, in->data + pos, size);
        pos += size;
    }
    g_byte_array_remove_range(in, 0, (guint)pos);
    return ok;
}

/* NREAD more bytes of the message in cl->msg. */
static void message_filled(Client *cl, gsize nread)
{
    cl->msg_have += (guint32)nread;
    if (cl->msg_have < cl->msg_size)
        return;
    guint8 *m = cl->msg;
    cl->msg = NULL;
    fsd_conn_receive_take(cl->conn, m, cl->msg_size);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    Client *cl = stream->data;
    gboolean direct = buf->base != (char *)cl->stage;
    if (nread > 0 && direct)
        message_filled(cl, (gsize)nread);
    else if (nread > 0)
        g_byte_array_append(cl->in, (const guint8 *)buf->base, (guint)nread);
    if (nread < 0) {
        if (nread != UV_EOF)
            vmm_debug("9p: connection read: %s", uv_strerror((int)nread));
        client_close(cl);
        return;
    }
    if (!direct && !client_consume(cl)) {
        client_close(cl);
        return;
    }
    if (uv_stream_get_write_queue_size(stream) > WRITE_QUEUE_HIGH) {
        uv_read_stop(stream);
        cl->reading = FALSE;
    }
}

static gboolean stream_open_fd(uv_loop_t *loop, Stream *st, int fd, GError **error)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int rc;
    /* Initialised whatever happens, so that the caller can close it. */
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
        int err = errno;
        uv_pipe_init(loop, &st->pipe, 0);
        return vmm_set_errno(error, err, "9p socket fd %d", fd);
    }
    if (ss.ss_family == AF_UNIX) {
        uv_pipe_init(loop, &st->pipe, 0);
        rc = uv_pipe_open(&st->pipe, fd);
    } else {
        uv_tcp_init(loop, &st->tcp);
        rc = uv_tcp_open(&st->tcp, fd);
        if (rc == 0)
            uv_tcp_nodelay(&st->tcp, 1);
    }
    if (rc < 0) {
        /* The handle is initialised: the caller closes it. */
        g_autofree char *name = g_strdup_printf("%d", fd);
        return uv_fail(error, rc, "socket fd", name);
    }
    return TRUE;
}

static Client *client_new(FsdServer *s)
{
    Client *cl = g_new0(Client, 1);
    cl->server = s;
    cl->fd = -1;
    cl->in = g_byte_array_new();
    g_mutex_init(&cl->out_lock);
    g_queue_init(&cl->out);
    return cl;
}

static gboolean client_start(FsdServer *s, Client *cl, guint8 *mem, guint64 mem_size, GError **error)
{
    cl->s.handle.data = cl;
    uv_async_init(s->loop, &cl->wake, on_wake);
    cl->wake.data = cl;
    cl->handles_open = 2;
    uv_os_fd_t fd;
    cl->fd = uv_fileno(&cl->s.handle, &fd) == 0 ? fd : -1;
    cl->conn = fsd_conn_new(s->e, client_send, cl);
    fsd_conn_set_guest_memory(cl->conn, mem, mem_size);
    s->clients = g_list_prepend(s->clients, cl);
    update_run_inline(s);
    int rc = uv_read_start(&cl->s.stream, on_alloc, on_read);
    if (rc < 0) {
        client_close(cl);
        return uv_fail(error, rc, "connection", "read");
    }
    cl->reading = TRUE;
    return TRUE;
}

gboolean fsd_server_serve_fd(FsdServer *s, int fd, GError **error)
{
    return fsd_server_serve_fd_guest(s, fd, NULL, 0, error);
}

gboolean fsd_server_serve_fd_guest(FsdServer *s, int fd, guint8 *mem, guint64 mem_size, GError **error)
{
    Client *cl = client_new(s);
    cl->s.handle.data = cl;
    if (!stream_open_fd(s->loop, &cl->s, fd, error)) {
        cl->s.handle.data = cl;
        cl->handles_open = 1;
        cl->closing = TRUE;
        s->clients = g_list_prepend(s->clients, cl);
        uv_close(&cl->s.handle, client_handle_closed);
        return FALSE;
    }
    return client_start(s, cl, mem, mem_size, error);
}

/* ---- listeners ---- */

static void on_connection(uv_stream_t *server, int status)
{
    Listener *l = server->data;
    FsdServer *s = l->server;
    if (status < 0) {
        vmm_warn("9p: accept: %s", uv_strerror(status));
        return;
    }
    Client *cl = client_new(s);
    if (server->type == UV_NAMED_PIPE)
        uv_pipe_init(s->loop, &cl->s.pipe, 0);
    else
        uv_tcp_init(s->loop, &cl->s.tcp);
    cl->s.handle.data = cl;
    if (uv_accept(server, &cl->s.stream) < 0) {
        cl->handles_open = 1;
        cl->closing = TRUE;
        cl->conn = NULL;
        s->clients = g_list_prepend(s->clients, cl);
        uv_close(&cl->s.handle, client_handle_closed);
        return;
    }
    if (server->type == UV_TCP)
        uv_tcp_nodelay(&cl->s.tcp, 1);
    g_autoptr(GError) err = NULL;
    if (!client_start(s, cl, NULL, 0, &err))
        vmm_warn("%s", err->message);
}

static void listener_closed(uv_handle_t *h)
{
    Listener *l = h->data;
    FsdServer *s = l->server;
    s->listeners = g_list_remove(s->listeners, l);
    g_free(l);
    maybe_free_server(s);
}

static gboolean listener_start(FsdServer *s, Listener *l, const char *name, GError **error)
{
    l->server = s;
    l->s.handle.data = l;
    int rc = uv_listen(&l->s.stream, 128, on_connection);
    s->listeners = g_list_prepend(s->listeners, l);
    if (rc < 0) {
        uv_close(&l->s.handle, listener_closed);
        return uv_fail(error, rc, "listen", name);
    }
    return TRUE;
}

static gboolean listen_unix(FsdServer *s, const char *path, GError **error)
{
    struct stat st;
    /* A socket left by an earlier run; anything else stays. */
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
    Listener *l = g_new0(Listener, 1);
    uv_pipe_init(s->loop, &l->s.pipe, 0);
    l->server = s;
    l->s.handle.data = l;
    int rc = uv_pipe_bind(&l->s.pipe, path);
    if (rc < 0) {
        s->listeners = g_list_prepend(s->listeners, l);
        uv_close(&l->s.handle, listener_closed);
        return uv_fail(error, rc, "bind", path);
    }
    return listener_start(s, l, path, error);
}

static gboolean parse_host_port(const char *hp, char **host, int *port, GError **error)
{
    const char *colon = strrchr(hp, ':');
    if (!colon) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "9p listen address 'tcp:%s': expected HOST:PORT", hp);
        return FALSE;
    }
    g_autofree char *h = g_strndup(hp, (gsize)(colon - hp));
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535 || end == colon + 1) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "9p listen address 'tcp:%s': bad port", hp);
        return FALSE;
    }
    gsize n = strlen(h);
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']')
        *host = g_strndup(h + 1, n - 2);
    else
        *host = g_strdup(*h ? h : "0.0.0.0");
    *port = (int)p;
    return TRUE;
}

static gboolean listen_tcp(FsdServer *s, const char *hp, GError **error)
{
    g_autofree char *host = NULL;
    int port;
    if (!parse_host_port(hp, &host, &port, error))
        return FALSE;
    struct sockaddr_storage addr;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "9p listen address 'tcp:%s': bad host", hp);
        return FALSE;
    }
    Listener *l = g_new0(Listener, 1);
    uv_tcp_init(s->loop, &l->s.tcp);
    l->server = s;
    l->s.handle.data = l;
    int rc = uv_tcp_bind(&l->s.tcp, (struct sockaddr *)&addr, 0);
    if (rc == 0 && !listener_start(s, l, hp, error))
        return FALSE;
    if (rc < 0) {
        s->listeners = g_list_prepend(s->listeners, l);
        uv_close(&l->s.handle, listener_closed);
        return uv_fail(error, rc, "bind", hp);
    }
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    if (uv_tcp_getsockname(&l->s.tcp, (struct sockaddr *)&bound, &len) == 0)
        s->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    return TRUE;
}

gboolean fsd_server_listen(FsdServer *s, const char *address, GError **error)
{
    if (g_str_has_prefix(address, "unix:"))
        return listen_unix(s, address + 5, error);
    if (g_str_has_prefix(address, "tcp:"))
        return listen_tcp(s, address + 4, error);
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                "9p listen address '%s': expected unix:PATH or tcp:HOST:PORT", address);
    return FALSE;
}

gboolean fsd_server_listen_fd(FsdServer *s, int fd, GError **error)
{
    Listener *l = g_new0(Listener, 1);
    l->server = s;
    if (!stream_open_fd(s->loop, &l->s, fd, error)) {
        l->s.handle.data = l;
        s->listeners = g_list_prepend(s->listeners, l);
        uv_close(&l->s.handle, listener_closed);
        return FALSE;
    }
    g_autofree char *name = g_strdup_printf("fd %d", fd);
    return listener_start(s, l, name, error);
}

void fsd_server_shutdown(FsdServer *s)
{
    s->shutting_down = TRUE;
    for (GList *l = s->listeners; l; l = l->next) {
        Listener *li = l->data;
        if (!uv_is_closing(&li->s.handle))
            uv_close(&li->s.handle, listener_closed);
    }
    for (GList *l = s->clients; l; l = l->next)
        client_close(l->data);
    maybe_free_server(s);
}
