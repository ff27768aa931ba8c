/* The QMP server: a Unix stream socket per -qmp, the greeting, capabilities
 * negotiation, command dispatch, and events to every negotiated client. */
#include "vmmd/qmp.h"
#include "common/error.h"
#include "common/json-stream.h"
#include "common/log.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

/* A QMP command larger than this is refused (QEMU's limit is 64 MiB of tokens;
 * no command of ours comes close to 1 MiB). */
#define QMP_MAX_INPUT (1024 * 1024)

struct VmmQmpServer {
    Vmmd *d;
    uv_pipe_t listener;
    char *path;
    gboolean first_client_seen;
};

struct VmmQmpClient {
    Vmmd *d;
    uv_pipe_t pipe;
    VmmJsonStream stream;
    gboolean negotiated;
    gboolean closed;
    gboolean busy;           /* a command of this client has not answered yet */
    gboolean draining;       /* client_drain() is on the stack */
    gboolean reading;
    int refs;
};

struct VmmQmpRequest {
    VmmQmpClient *client;
    JsonNode *id;
};

static GPtrArray *clients; /* every connected client, for events */

static void client_unref(VmmQmpClient *c)
{
    if (--c->refs == 0) {
        vmm_json_stream_clear(&c->stream);
        g_free(c);
    }
}

static void on_client_closed(uv_handle_t *h)
{
    client_unref(h->data);
}

static void client_close(VmmQmpClient *c)
{
    if (c->closed)
        return;
    c->closed = TRUE;
    g_ptr_array_remove(clients, c);
    uv_close((uv_handle_t *)&c->pipe, on_client_closed);
}

static void on_written(uv_write_t *w, int status)
{
    g_free(w->data);
    g_free(w);
}

static void client_send_node(VmmQmpClient *c, JsonNode *node)
{
    if (c->closed)
        return;
    char *text = json_to_string(node, FALSE);
    char *line = g_strconcat(text, "\r\n", NULL);
    g_free(text);
    uv_write_t *w = g_new0(uv_write_t, 1);
    w->data = line;
    uv_buf_t buf = uv_buf_init(line, strlen(line));
    if (uv_write(w, (uv_stream_t *)&c->pipe, &buf, 1, on_written) < 0) {
        on_written(w, -1);
        client_close(c);
    }
}

static void client_send_object(VmmQmpClient *c, JsonObject *o)
{
    g_autoptr(JsonNode) node = json_node_init_object(json_node_alloc(), o);
    client_send_node(c, node);
}

static void client_drain(VmmQmpClient *c);

static void request_finish(VmmQmpRequest *req, JsonObject *reply)
{
    VmmQmpClient *c = req->client;
    if (req->id)
        json_object_set_member(reply, "id", req->id);
    client_send_object(c, reply);
    json_object_unref(reply);
    g_free(req);
    c->busy = FALSE;
    if (!c->draining && !c->closed)
        client_drain(c);    /* the commands that came while this one ran */
    client_unref(c);
}

void vmm_qmp_return(VmmQmpRequest *req, JsonNode *ret)
{
    JsonObject *reply = json_object_new();
    json_object_set_member(reply, "return", ret ? ret : json_node_init_object(json_node_alloc(), json_object_new()));
    request_finish(req, reply);
}

void vmm_qmp_return_object(VmmQmpRequest *req, JsonObject *ret)
{
    JsonNode *n = json_node_init_object(json_node_alloc(), ret ? ret : json_object_new());
    if (ret)
        json_object_unref(ret);
    vmm_qmp_return(req, n);
}

void vmm_qmp_error(VmmQmpRequest *req, const char *klass, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *desc = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    JsonObject *e = json_object_new();
    json_object_set_string_member(e, "class", klass);
    json_object_set_string_member(e, "desc", desc);
    JsonObject *reply = json_object_new();
    json_object_set_object_member(reply, "error", e);
    request_finish(req, reply);
}

static VmmQmpRequest *request_new(VmmQmpClient *c, JsonNode *id)
{
    VmmQmpRequest *req = g_new0(VmmQmpRequest, 1);
    req->client = c;
    req->id = id ? json_node_copy(id) : NULL;
    c->refs++;
    c->busy = TRUE;
    return req;
}

static const VmmQmpCommand *find_command(const char *name)
{
    guint n;
    const VmmQmpCommand *cmds = vmm_qmp_commands(&n);
    for (guint i = 0; i < n; i++) {
        if (g_str_equal(cmds[i].name, name))
            return &cmds[i];
    }
    return NULL;
}

static const char *unexpected_argument(const VmmQmpCommand *cmd, JsonObject *args)
{
    g_autoptr(GList) members = json_object_get_members(args);
    for (GList *l = members; l; l = l->next) {
        if (!cmd->args || !g_strv_contains(cmd->args, l->data))
            return l->data;
    }
    return NULL;
}

static void dispatch(VmmQmpClient *c, JsonObject *msg)
{
    VmmQmpRequest *req = request_new(c, json_object_get_member(msg, "id"));
    JsonNode *exec = json_object_get_member(msg, "execute");
    if (!exec) {
        vmm_qmp_error(req, "GenericError", "QMP input lacks member 'execute'");
        return;
    }
    if (json_node_get_value_type(exec) != G_TYPE_STRING) {
        vmm_qmp_error(req, "GenericError", "QMP input member 'execute' must be a string");
        return;
    }
    const char *name = json_node_get_string(exec);
    JsonNode *args_node = json_object_get_member(msg, "arguments");
    if (args_node && !JSON_NODE_HOLDS_OBJECT(args_node)) {
        vmm_qmp_error(req, "GenericError", "QMP input member 'arguments' must be an object");
        return;
    }
    g_autoptr(GList) members = json_object_get_members(msg);
    for (GList *l = members; l; l = l->next) {
        const char *m = l->data;
        if (!g_str_equal(m, "execute") && !g_str_equal(m, "arguments") && !g_str_equal(m, "id")) {
            vmm_qmp_error(req, "GenericError", "QMP input member '%s' is unexpected", m);
            return;
        }
    }
    gboolean is_caps = g_str_equal(name, "qmp_capabilities");
    if (!c->negotiated && !is_caps) {
        vmm_qmp_error(req, "CommandNotFound",
                      "Expecting capabilities negotiation with 'qmp_capabilities'");
        return;
    }
    if (c->negotiated && is_caps) {
        vmm_qmp_error(req, "CommandNotFound",
                      "Capabilities negotiation is already complete, command ignored");
        return;
    }
    const VmmQmpCommand *cmd = find_command(name);
    if (!cmd) {
        vmm_qmp_error(req, "CommandNotFound", "The command %s has not been found", name);
        return;
    }
    g_autoptr(JsonObject) args = args_node ? json_object_ref(json_node_get_object(args_node))
                                           : json_object_new();
    const char *bad = unexpected_argument(cmd, args);
    if (bad) {
        vmm_qmp_error(req, "GenericError", "Parameter '%s' is unexpected", bad);
        return;
    }
    if (is_caps)
        c->negotiated = TRUE;
    cmd->fn(c->d, req, args);
}

static void handle_text(VmmQmpClient *c, const char *text)
{
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(GError) err = NULL;
    if (!json_parser_load_from_data(parser, text, -1, &err)) {
        VmmQmpRequest *req = request_new(c, NULL);
        vmm_qmp_error(req, "GenericError", "JSON parse error, %s", err->message);
        return;
    }
    JsonNode *root = json_parser_get_root(parser);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        VmmQmpRequest *req = request_new(c, NULL);
        vmm_qmp_error(req, "GenericError", "QMP input must be a JSON object");
        return;
    }
    dispatch(c, json_node_get_object(root));
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    buf->base = g_malloc(65536);
    buf->len = 65536;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

/* As QEMU's monitor, one command at a time per client, in the order sent:
 * a command waits for the one before it to answer (stop, then cont, then
 * query-status see each other's effect and answer in order). Reading stops
 * while a command runs, so a client cannot queue without bound. */
static void client_drain(VmmQmpClient *c)
{
    c->refs++; /* a command may close the client (quit) while we loop */
    c->draining = TRUE;
    while (!c->busy && !c->closed) {
        gboolean too_big = FALSE;
        g_autofree char *text = vmm_json_stream_next(&c->stream, &too_big);
        if (too_big) {
            VmmQmpRequest *req = request_new(c, NULL);
            vmm_qmp_error(req, "GenericError", "JSON parse error, input exceeds %d bytes",
                          QMP_MAX_INPUT);
            continue;
        }
        if (!text)
            break;
        handle_text(c, text);
    }
    c->draining = FALSE;
    if (!c->closed && c->busy == c->reading) {
        if (c->busy)
            uv_read_stop((uv_stream_t *)&c->pipe);
        else
            uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
        c->reading = !c->busy;
    }
    client_unref(c);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    VmmQmpClient *c = s->data;
    if (n < 0) {
        g_free(buf->base);
        client_close(c);
        return;
    }
    vmm_json_stream_feed(&c->stream, buf->base, n);
    g_free(buf->base);
    client_drain(c);
}

static void send_greeting(VmmQmpClient *c)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "QMP");
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "version");
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "qemu");
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "major");
    json_builder_add_int_value(b, VMM_VERSION_MAJOR);
    json_builder_set_member_name(b, "minor");
    json_builder_add_int_value(b, VMM_VERSION_MINOR);
    json_builder_set_member_name(b, "micro");
    json_builder_add_int_value(b, VMM_VERSION_MICRO);
    json_builder_end_object(b);
    json_builder_set_member_name(b, "package");
    json_builder_add_string_value(b, "vmmd " VMM_VERSION_STRING);
    json_builder_end_object(b);
    json_builder_set_member_name(b, "capabilities");
    json_builder_begin_array(b);
    json_builder_end_array(b);
    json_builder_end_object(b);
    json_builder_end_object(b);
    g_autoptr(JsonNode) root = json_builder_get_root(b);
    client_send_node(c, root);
}

static void on_connection(uv_stream_t *listener, int status)
{
    VmmQmpServer *s = listener->data;
    if (status < 0)
        return;
    VmmQmpClient *c = g_new0(VmmQmpClient, 1);
    c->d = s->d;
    c->refs = 1;
    vmm_json_stream_init(&c->stream, QMP_MAX_INPUT);
    uv_pipe_init(s->d->loop, &c->pipe, 0);
    c->pipe.data = c;
    if (uv_accept(listener, (uv_stream_t *)&c->pipe) < 0) {
        c->closed = TRUE;
        uv_close((uv_handle_t *)&c->pipe, on_client_closed);
        return;
    }
    g_ptr_array_add(clients, c);
    send_greeting(c);
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
    c->reading = TRUE;
    if (!s->first_client_seen) {
        s->first_client_seen = TRUE;
        vmm_qmp_first_client(s->d);
    }
}

static void on_listener_closed(uv_handle_t *h)
{
    VmmQmpServer *s = h->data;
    g_free(s->path);
    g_free(s);
}

VmmQmpServer *vmm_qmp_start(Vmmd *d, const VmmQmpAddr *addr, GError **error)
{
    if (!clients)
        clients = g_ptr_array_new();
    VmmQmpServer *s = g_new0(VmmQmpServer, 1);
    s->d = d;
    s->path = g_strdup(addr->path);
    uv_pipe_init(d->loop, &s->listener, 0);
    s->listener.data = s;
    /* As QEMU does, a socket file already at PATH is replaced. */
    unlink(addr->path);
    int r = uv_pipe_bind(&s->listener, addr->path);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&s->listener, 16, on_connection);
    if (r < 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_IO, "-qmp unix:%s: %s", addr->path, uv_strerror(r));
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        return NULL;
    }
    return s;
}

VmmQmpServer *vmm_qmp_start_fd(Vmmd *d, int fd, GError **error)
{
    if (!clients)
        clients = g_ptr_array_new();
    VmmQmpServer *s = g_new0(VmmQmpServer, 1);
    s->d = d;
    uv_pipe_init(d->loop, &s->listener, 0);
    s->listener.data = s;
    int r = uv_pipe_open(&s->listener, fd);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&s->listener, 16, on_connection);
    if (r < 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_IO, "QMP socket fd %d (socket activation): %s",
                    fd, uv_strerror(r));
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        return NULL;
    }
    return s;
}

void vmm_qmp_stop(VmmQmpServer *s)
{
    /* A socket that systemd passed us (no path) is systemd's to remove. */
    if (s->path)
        unlink(s->path);
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
    while (clients && clients->len)
        client_close(clients->pdata[0]);
}

void vmm_qmp_emit(Vmmd *d, const char *name, JsonObject *data)
{
    gint64 now = g_get_real_time();
    JsonObject *ts = json_object_new();
    json_object_set_int_member(ts, "seconds", now / G_USEC_PER_SEC);
    json_object_set_int_member(ts, "microseconds", now % G_USEC_PER_SEC);
    JsonObject *ev = json_object_new();
    json_object_set_string_member(ev, "event", name);
    if (data)
        json_object_set_object_member(ev, "data", data);
    json_object_set_object_member(ev, "timestamp", ts);
    for (guint i = 0; clients && i < clients->len; i++) {
        VmmQmpClient *c = clients->pdata[i];
        if (c->negotiated)
            client_send_object(c, ev);
    }
    json_object_unref(ev);
}
