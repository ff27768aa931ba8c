/* The control channel on libuv: one uv_poll_t on a SOCK_SEQPACKET socket.
 *
 * Readable is always watched; writable only while the outgoing queue holds
 * something. Nothing is sent synchronously from an API call: calls, replies and
 * events are encoded, their fds duplicated, and queued, so a send error can
 * never re-enter the caller through on_closed. The queue is flushed when the
 * socket is writable, and a send that would block simply stays queued.
 *
 * Lifetime: "broken" means the I/O failed or the peer left (on_closed was
 * called, nothing more is read or sent); "freed" means vmm_channel_free ran and
 * no callback but a pending call's may run any more. The memory goes in the
 * poll handle's close callback, so that code that called back into the user
 * can still look at the flags when the user freed the channel meanwhile. */
#include "common/channel.h"
#include "common/control-msg.h"
#include "common/error.h"
#include "common/fdpass.h"
#include "proto/control.h"

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <unistd.h>

/* How many messages one readable wakeup handles before the loop gets a turn. */
#define MAX_MSGS_PER_WAKEUP 64

typedef struct {
    GBytes *data;
    int fds[VMM_MAX_FDS];
    guint nfds;
} OutMsg;

typedef struct {
    char *command;
    VmmChannelReplyFn cb;
    gpointer user;
    /* The key in VmmChannel.pending. Not the first member: a key equal to its
     * value puts GHashTable in set mode, where g_hash_table_steal_extended
     * (GLib 2.74) hands back a NULL value. */
    gint64 id;
} PendingCall;

struct VmmChannelRequest {
    VmmChannel *ch; /* NULL once the channel was freed */
    gint64 id;
    char *command;
    JsonObject *args;
    int fds[VMM_MAX_FDS];
    guint nfds;
};

struct VmmChannel {
    uv_loop_t *loop;
    uv_poll_t poll;
    int fd;
    VmmChannelOps ops;
    gpointer user;
    char *role;
    gboolean ready;
    gboolean broken;
    gboolean freed;
    int poll_events;
    GQueue out;           /* OutMsg*, sent in order when writable */
    GQueue held;          /* OutMsg*, calls and events made before the peer's hello */
    GHashTable *pending;  /* gint64* id -> PendingCall* */
    GHashTable *requests; /* set of unanswered VmmChannelRequest* */
    gint64 next_id;
    char *peer_role;
    int peer_pid;
    guint8 *rbuf;             /* VMM_CONTROL_MAX_MSG + 1 bytes */
    guint64 ignored_replies;  /* replies matching no call; kept for debugging */
};

static void channel_fail(VmmChannel *ch, const GError *why);
static void on_poll(uv_poll_t *handle, int status, int events);

/* ---- outgoing messages ---- */

static void out_msg_free(OutMsg *m)
{
    g_bytes_unref(m->data);
    vmm_close_fds(m->fds, m->nfds);
    g_free(m);
}

static void clear_out_queue(GQueue *q)
{
    OutMsg *m;
    while ((m = g_queue_pop_head(q)))
        out_msg_free(m);
}

static OutMsg *out_msg_new(GBytes *data, const int *fds, guint nfds, GError **error)
{
    if (nfds > VMM_MAX_FDS) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG,
                    "control message: %u fds, at most %d fit in one message", nfds,
                    VMM_MAX_FDS);
        return NULL;
    }
    OutMsg *m = g_new0(OutMsg, 1);
    m->data = g_bytes_ref(data);
    for (guint i = 0; i < nfds; i++) {
        m->fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
        if (m->fds[i] < 0) {
            vmm_set_errno(error, errno, "control message: cannot duplicate fd %d", fds[i]);
            m->nfds = i;
            out_msg_free(m);
            return NULL;
        }
    }
    m->nfds = nfds;
    return m;
}

static void update_poll(VmmChannel *ch)
{
    if (ch->broken || ch->freed)
        return;
    int events = UV_READABLE | (g_queue_is_empty(&ch->out) ? 0 : UV_WRITABLE);
    if (events == ch->poll_events)
        return;
    ch->poll_events = events;
    uv_poll_start(&ch->poll, events, on_poll);
}

/* Encodes MSG and queues it. Calls and events made before the peer's hello
 * wait in the held queue; our hello and the error telling a peer why its hello
 * was refused go straight out. */
static gboolean send_msg(VmmChannel *ch, const VmmControlMsg *msg, const int *fds, guint nfds,
                         GError **error)
{
    g_autoptr(GBytes) data = vmm_control_msg_encode(msg, error);
    if (!data)
        return FALSE;
    OutMsg *m = out_msg_new(data, fds, nfds, error);
    if (!m)
        return FALSE;
    gboolean may_wait = msg->kind == VMM_CONTROL_REQUEST || msg->kind == VMM_CONTROL_EVENT;
    if (ch->ready || !may_wait) {
        g_queue_push_tail(&ch->out, m);
        update_poll(ch);
    } else {
        g_queue_push_tail(&ch->held, m);
    }
    return TRUE;
}

/* Sends what it can without blocking. Returns FALSE with ERROR on a real
 * failure; a full socket is not one. */
static gboolean flush_out(VmmChannel *ch, GError **error)
{
    OutMsg *m;
    while ((m = g_queue_peek_head(&ch->out))) {
        gsize len;
        const void *data = g_bytes_get_data(m->data, &len);
        g_autoptr(GError) local = NULL;
        if (vmm_send_with_fds(ch->fd, data, len, m->fds, m->nfds, &local) < 0) {
            if (g_error_matches(local, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
                return TRUE;
            g_propagate_error(error, g_steal_pointer(&local));
            return FALSE;
        }
        out_msg_free(g_queue_pop_head(&ch->out));
    }
    return TRUE;
}

static void send_error_reply(VmmChannel *ch, gboolean has_id, gint64 id, const char *klass,
                             const char *desc)
{
    /* Descriptions come from printf of anything (paths...): keep them UTF-8. */
    g_autofree char *valid_desc = g_utf8_make_valid(desc, -1);
    g_autofree char *valid_class = g_utf8_make_valid(klass, -1);
    VmmControlMsg msg = {
        .kind = VMM_CONTROL_REPLY_ERROR,
        .has_id = has_id,
        .id = id,
        .name = valid_class,
        .desc = valid_desc,
    };
    g_autoptr(GError) error = NULL;
    if (!send_msg(ch, &msg, NULL, 0, &error)) {
        /* Too large (or an empty class): the peer still gets an answer. */
        msg.name = (char *)VMM_ERR_GENERIC;
        msg.desc = error->message;
        if (!send_msg(ch, &msg, NULL, 0, NULL)) {
            msg.desc = (char *)"error reply could not be encoded";
            send_msg(ch, &msg, NULL, 0, NULL);
        }
    }
}

/* ---- failing and freeing ---- */

static void pending_call_free(PendingCall *call)
{
    g_free(call->command);
    g_free(call);
}

static gint compare_call_ids(gconstpointer a, gconstpointer b)
{
    const PendingCall *x = *(PendingCall *const *)a, *y = *(PendingCall *const *)b;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Every pending call gets its callback with VMM_ERROR_CLOSED, oldest first.
 * The table is emptied first: a callback may call or free the channel. */
static void fail_pending_calls(VmmChannel *ch, const char *why)
{
    g_autoptr(GPtrArray) calls = g_ptr_array_new();
    GHashTableIter iter;
    gpointer value;
    g_hash_table_iter_init(&iter, ch->pending);
    while (g_hash_table_iter_next(&iter, NULL, &value)) {
        g_ptr_array_add(calls, value);
        g_hash_table_iter_steal(&iter);
    }
    g_ptr_array_sort(calls, compare_call_ids);
    for (guint i = 0; i < calls->len; i++) {
        PendingCall *call = calls->pdata[i];
        g_autoptr(GError) error = g_error_new(VMM_ERROR, VMM_ERROR_CLOSED,
                                              "%s: control channel closed before the reply "
                                              "came: %s",
                                              call->command, why);
        if (call->cb)
            call->cb(ch, NULL, error, NULL, 0, call->user);
        pending_call_free(call);
    }
}

static void channel_fail(VmmChannel *ch, const GError *why)
{
    if (ch->broken || ch->freed)
        return;
    ch->broken = TRUE;
    uv_poll_stop(&ch->poll);
    /* The peer sees EOF now rather than when the owner gets round to freeing. */
    shutdown(ch->fd, SHUT_RDWR);
    clear_out_queue(&ch->out);
    clear_out_queue(&ch->held);
    fail_pending_calls(ch, why->message);
    if (!ch->freed && ch->ops.on_closed)
        ch->ops.on_closed(ch, why, ch->user);
}

static void channel_fail_with(VmmChannel *ch, int code, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

static void channel_fail_with(VmmChannel *ch, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *text = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_autoptr(GError) why = g_error_new(VMM_ERROR, code, "control channel to %s: %s",
                                        ch->peer_role ? ch->peer_role : "peer", text);
    channel_fail(ch, why);
}

static void request_free(VmmChannelRequest *req)
{
    if (req->ch)
        g_hash_table_remove(req->ch->requests, req);
    vmm_close_fds(req->fds, req->nfds);
    g_free(req->command);
    if (req->args)
        json_object_unref(req->args);
    g_free(req);
}

static void detach_requests(VmmChannel *ch)
{
    GHashTableIter iter;
    gpointer req;
    g_hash_table_iter_init(&iter, ch->requests);
    while (g_hash_table_iter_next(&iter, &req, NULL))
        ((VmmChannelRequest *)req)->ch = NULL;
    g_hash_table_remove_all(ch->requests);
}

static void on_poll_closed(uv_handle_t *handle)
{
    VmmChannel *ch = handle->data;
    close(ch->fd);
    g_hash_table_destroy(ch->pending);
    g_hash_table_destroy(ch->requests);
    g_free(ch->role);
    g_free(ch->peer_role);
    g_free(ch->rbuf);
    g_free(ch);
}

void vmm_channel_free(VmmChannel *ch)
{
    if (!ch || ch->freed)
        return;
    ch->freed = TRUE;
    /* What is already queued (say the reply to "shutdown") goes out if the
     * socket takes it now; nothing waits for it. */
    if (!ch->broken)
        flush_out(ch, NULL);
    clear_out_queue(&ch->out);
    clear_out_queue(&ch->held);
    detach_requests(ch);
    fail_pending_calls(ch, "the channel was freed");
    uv_close((uv_handle_t *)&ch->poll, on_poll_closed);
}

/* ---- incoming messages ---- */

static int error_code_for_class(const char *klass)
{
    if (g_strcmp0(klass, VMM_ERR_COMMAND_NOT_FOUND) == 0)
        return VMM_ERROR_NOT_FOUND;
    return VMM_ERROR_FAILED;
}

static void dispatch_reply(VmmChannel *ch, VmmControlMsg *msg, int *fds, guint nfds)
{
    gpointer key = NULL, value = NULL;
    if (!msg->has_id ||
        !g_hash_table_steal_extended(ch->pending, &msg->id, &key, &value)) {
        /* A stale or foreign id, or an error about a message of ours whose id
         * the peer could not read: there is no call to give it to. */
        ch->ignored_replies++;
        return;
    }
    PendingCall *call = value;
    if (call->cb) {
        if (msg->kind == VMM_CONTROL_REPLY_OK) {
            call->cb(ch, msg->payload, NULL, fds, nfds, call->user);
        } else {
            g_autoptr(GError) error = g_error_new(VMM_ERROR, error_code_for_class(msg->name),
                                                  "%s: %s (%s)", call->command, msg->desc,
                                                  msg->name);
            call->cb(ch, NULL, error, fds, nfds, call->user);
        }
    }
    pending_call_free(call);
}

static void dispatch_request(VmmChannel *ch, VmmControlMsg *msg, int *fds, guint nfds)
{
    VmmChannelRequest *req = g_new0(VmmChannelRequest, 1);
    req->ch = ch;
    req->id = msg->id;
    req->command = g_steal_pointer(&msg->name);
    req->args = g_steal_pointer(&msg->payload);
    memcpy(req->fds, fds, sizeof(int) * nfds);
    req->nfds = nfds;
    for (guint i = 0; i < nfds; i++)
        fds[i] = -1;
    g_hash_table_add(ch->requests, req);

    if (ch->ops.on_request)
        ch->ops.on_request(ch, req, ch->user);
    else
        vmm_channel_reply_error(req, VMM_ERR_COMMAND_NOT_FOUND, "command '%s' not found",
                                req->command);
}

static void accept_hello(VmmChannel *ch, VmmControlMsg *msg)
{
    JsonNode *protocol = json_object_get_member(msg->payload, "protocol");
    JsonNode *role = json_object_get_member(msg->payload, "role");
    JsonNode *pid = json_object_get_member(msg->payload, "pid");
    if (role && JSON_NODE_HOLDS_VALUE(role) && json_node_get_value_type(role) == G_TYPE_STRING)
        ch->peer_role = g_strdup(json_node_get_string(role));
    if (!protocol || !JSON_NODE_HOLDS_VALUE(protocol) ||
        json_node_get_value_type(protocol) != G_TYPE_INT64) {
        channel_fail_with(ch, VMM_ERROR_PROTOCOL, "hello without a protocol version");
        return;
    }
    gint64 version = json_node_get_int(protocol);
    if (version != VMM_CONTROL_PROTOCOL) {
        g_autofree char *desc = g_strdup_printf(
            "protocol version mismatch: peer speaks version %" G_GINT64_FORMAT
            ", we speak version %d", version, VMM_CONTROL_PROTOCOL);
        /* Tell the peer why before hanging up, if the socket takes it now. */
        send_error_reply(ch, FALSE, 0, VMM_ERR_GENERIC, desc);
        flush_out(ch, NULL);
        channel_fail_with(ch, VMM_ERROR_PROTOCOL, "%s", desc);
        return;
    }
    if (pid && JSON_NODE_HOLDS_VALUE(pid) && json_node_get_value_type(pid) == G_TYPE_INT64) {
        gint64 value = json_node_get_int(pid);
        ch->peer_pid = value > 0 && value <= G_MAXINT ? (int)value : 0;
    }
    ch->ready = TRUE;
    OutMsg *m;
    while ((m = g_queue_pop_head(&ch->held)))
        g_queue_push_tail(&ch->out, m);
    update_poll(ch);
    if (ch->ops.on_ready)
        ch->ops.on_ready(ch, msg->payload, ch->user);
}

static void handle_first_message(VmmChannel *ch, VmmControlMsg *msg)
{
    if (msg->kind == VMM_CONTROL_HELLO)
        accept_hello(ch, msg);
    else if (msg->kind == VMM_CONTROL_REPLY_ERROR)
        channel_fail_with(ch, VMM_ERROR_PROTOCOL, "refused our hello: %s", msg->desc);
    else
        channel_fail_with(ch, VMM_ERROR_PROTOCOL, "sent a %s before its hello",
                          vmm_control_kind_name(msg->kind));
}

static char *too_large_desc(void)
{
    return g_strdup_printf("message too large (limit %d bytes)", VMM_CONTROL_MAX_MSG);
}

/* A message that could not be used: before the hello that ends the channel,
 * after it the peer gets an error reply and the channel goes on. */
static void refuse_message(VmmChannel *ch, gboolean has_id, gint64 id, const GError *error)
{
    if (!ch->ready) {
        channel_fail_with(ch, VMM_ERROR_PROTOCOL, "first message is not a valid hello: %s",
                          error->message);
        return;
    }
    g_autofree char *desc = g_error_matches(error, VMM_ERROR, VMM_ERROR_TOO_BIG)
                                ? too_large_desc()
                                : g_strdup(error->message);
    send_error_reply(ch, has_id, id, VMM_ERR_GENERIC, desc);
}

static void handle_message(VmmChannel *ch, const guint8 *data, gsize len, int *fds, guint nfds)
{
    VmmControlMsg msg;
    g_autoptr(GError) error = NULL;
    if (!vmm_control_msg_decode(data, len, &msg, &error)) {
        refuse_message(ch, msg.has_id, msg.id, error);
        return;
    }
    if (!ch->ready) {
        handle_first_message(ch, &msg);
    } else {
        switch (msg.kind) {
        case VMM_CONTROL_HELLO:
            send_error_reply(ch, FALSE, 0, VMM_ERR_GENERIC, "hello already received");
            break;
        case VMM_CONTROL_REQUEST:
            dispatch_request(ch, &msg, fds, nfds);
            break;
        case VMM_CONTROL_REPLY_OK:
        case VMM_CONTROL_REPLY_ERROR:
            dispatch_reply(ch, &msg, fds, nfds);
            break;
        case VMM_CONTROL_EVENT:
            if (ch->ops.on_event)
                ch->ops.on_event(ch, msg.name, msg.payload, fds, nfds, ch->user);
            break;
        }
    }
    vmm_control_msg_clear(&msg);
}

/* Returns FALSE when reading must stop for this wakeup. */
static gboolean read_one_message(VmmChannel *ch)
{
    int fds[VMM_MAX_FDS];
    guint nfds = 0;
    g_autoptr(GError) error = NULL;
    gssize n = vmm_recv_with_fds(ch->fd, ch->rbuf, VMM_CONTROL_MAX_MSG + 1, fds, VMM_MAX_FDS,
                                 &nfds, &error);
    if (n < 0) {
        if (g_error_matches(error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
            return FALSE;
        if (g_error_matches(error, VMM_ERROR, VMM_ERROR_TOO_BIG) ||
            g_error_matches(error, VMM_ERROR, VMM_ERROR_PROTOCOL))
            refuse_message(ch, FALSE, 0, error);
        else
            channel_fail(ch, error);
        return !ch->broken && !ch->freed;
    }
    if (n == 0) {
        channel_fail_with(ch, VMM_ERROR_CLOSED, "the peer closed the connection");
        return FALSE;
    }
    handle_message(ch, ch->rbuf, n, fds, nfds);
    vmm_close_fds(fds, nfds);
    return !ch->broken && !ch->freed;
}

static void on_poll(uv_poll_t *handle, int status, int events)
{
    VmmChannel *ch = handle->data;
    if (status < 0) {
        /* libuv reports POLLERR as UV_EBADF and stops the handle. On a Unix
         * socket POLLERR means the peer closed while our messages were still
         * unread by it; recvmsg then says ECONNRESET (VMM_ERROR_CLOSED). */
        ch->poll_events = 0;
        for (int i = 0; i < MAX_MSGS_PER_WAKEUP; i++) {
            if (!read_one_message(ch))
                break;
        }
        channel_fail_with(ch, VMM_ERROR_IO, "poll failed: %s", uv_strerror(status));
        return;
    }
    if (events & UV_WRITABLE) {
        g_autoptr(GError) error = NULL;
        if (!flush_out(ch, &error)) {
            channel_fail(ch, error);
            return;
        }
        update_poll(ch);
    }
    if (events & UV_READABLE) {
        for (int i = 0; i < MAX_MSGS_PER_WAKEUP; i++) {
            if (!read_one_message(ch))
                break;
        }
    }
}

/* ---- creating ---- */

static gboolean check_socket(int fd, GError **error)
{
    int type = 0;
    socklen_t len = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
        return vmm_set_errno(error, errno, "control channel: fd %d is not a socket", fd);
    if (type != SOCK_SEQPACKET) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "control channel: fd %d is not a SOCK_SEQPACKET socket", fd);
        return FALSE;
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return vmm_set_errno(error, errno, "control channel: cannot make fd %d non-blocking", fd);
    /* A message must fit in the send buffer whole; the default may be smaller
     * than VMM_CONTROL_MAX_MSG. The kernel doubles the value and caps it at
     * wmem_max; failing here only limits the size of what we can send. */
    int sndbuf = VMM_CONTROL_MAX_MSG + 64 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    return TRUE;
}

static JsonObject *build_hello(const char *role, JsonObject *extra)
{
    JsonObject *hello = json_object_new();
    json_object_set_int_member(hello, "protocol", VMM_CONTROL_PROTOCOL);
    json_object_set_string_member(hello, "role", role);
    json_object_set_int_member(hello, "pid", getpid());
    if (extra) {
        JsonObjectIter iter;
        const char *name;
        JsonNode *value;
        json_object_iter_init(&iter, extra);
        while (json_object_iter_next(&iter, &name, &value)) {
            if (!json_object_has_member(hello, name))
                json_object_set_member(hello, name, json_node_copy(value));
        }
    }
    return hello;
}

VmmChannel *vmm_channel_new(uv_loop_t *loop, int fd, const char *role,
                            JsonObject *extra_hello, const VmmChannelOps *ops,
                            gpointer user, GError **error)
{
    if (!check_socket(fd, error)) {
        close(fd);
        return NULL;
    }
    VmmChannel *ch = g_new0(VmmChannel, 1);
    ch->loop = loop;
    ch->fd = fd;
    ch->ops = *ops;
    ch->user = user;
    ch->role = g_strdup(role);
    ch->next_id = 1;
    g_queue_init(&ch->out);
    g_queue_init(&ch->held);
    ch->pending = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL,
                                        (GDestroyNotify)pending_call_free);
    ch->requests = g_hash_table_new(g_direct_hash, g_direct_equal);
    ch->rbuf = g_malloc(VMM_CONTROL_MAX_MSG + 1);

    int rc = uv_poll_init(loop, &ch->poll, fd);
    if (rc < 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_IO, "control channel: cannot watch fd %d: %s",
                    fd, uv_strerror(rc));
        ch->poll.data = ch;
        on_poll_closed((uv_handle_t *)&ch->poll);
        return NULL;
    }
    ch->poll.data = ch;

    VmmControlMsg hello = { .kind = VMM_CONTROL_HELLO, .payload = build_hello(role, extra_hello) };
    gboolean ok = send_msg(ch, &hello, NULL, 0, error);
    json_object_unref(hello.payload);
    if (!ok) {
        g_prefix_error(error, "control channel hello: ");
        ch->freed = TRUE;
        uv_close((uv_handle_t *)&ch->poll, on_poll_closed);
        return NULL;
    }
    return ch;
}

/* ---- public API ---- */

const char *vmm_channel_peer_role(VmmChannel *ch)
{
    return ch->ready ? ch->peer_role : NULL;
}

int vmm_channel_peer_pid(VmmChannel *ch)
{
    return ch->ready ? ch->peer_pid : 0;
}

gboolean vmm_channel_is_ready(VmmChannel *ch)
{
    return ch->ready && !ch->broken && !ch->freed;
}

static gboolean check_open(VmmChannel *ch, const char *what, GError **error)
{
    if (!ch->broken && !ch->freed)
        return TRUE;
    g_set_error(error, VMM_ERROR, VMM_ERROR_CLOSED, "%s: control channel to %s is closed", what,
                ch->peer_role ? ch->peer_role : "peer");
    return FALSE;
}

gboolean vmm_channel_call(VmmChannel *ch, const char *command, JsonObject *args,
                          const int *fds, guint nfds, VmmChannelReplyFn cb,
                          gpointer user, GError **error)
{
    VmmControlMsg msg = {
        .kind = VMM_CONTROL_REQUEST,
        .has_id = TRUE,
        .id = ch->next_id,
        .name = (char *)command,
        .payload = args,
    };
    gboolean ok = check_open(ch, command, error) && send_msg(ch, &msg, fds, nfds, error);
    if (args)
        json_object_unref(args);
    if (!ok)
        return FALSE;
    ch->next_id++;
    PendingCall *call = g_new0(PendingCall, 1);
    call->command = g_strdup(command);
    call->cb = cb;
    call->user = user;
    call->id = msg.id;
    g_hash_table_insert(ch->pending, &call->id, call);
    return TRUE;
}

gboolean vmm_channel_emit(VmmChannel *ch, const char *event, JsonObject *data,
                          const int *fds, guint nfds, GError **error)
{
    VmmControlMsg msg = {
        .kind = VMM_CONTROL_EVENT,
        .name = (char *)event,
        .payload = data,
    };
    gboolean ok = check_open(ch, event, error) && send_msg(ch, &msg, fds, nfds, error);
    if (data)
        json_object_unref(data);
    return ok;
}

const char *vmm_channel_request_command(VmmChannelRequest *req)
{
    return req->command;
}

JsonObject *vmm_channel_request_args(VmmChannelRequest *req)
{
    return req->args;
}

guint vmm_channel_request_nfds(VmmChannelRequest *req)
{
    return req->nfds;
}

int vmm_channel_request_take_fd(VmmChannelRequest *req, guint i)
{
    if (i >= req->nfds)
        return -1;
    int fd = req->fds[i];
    req->fds[i] = -1;
    return fd;
}

VmmChannel *vmm_channel_request_channel(VmmChannelRequest *req)
{
    return req->ch;
}

static gboolean request_can_answer(VmmChannelRequest *req)
{
    return req->ch && !req->ch->broken && !req->ch->freed;
}

static void answer_error(VmmChannelRequest *req, const char *klass, const char *desc)
{
    if (request_can_answer(req))
        send_error_reply(req->ch, TRUE, req->id, klass, desc);
    request_free(req);
}

void vmm_channel_reply(VmmChannelRequest *req, JsonObject *result, const int *fds, guint nfds)
{
    VmmControlMsg msg = {
        .kind = VMM_CONTROL_REPLY_OK,
        .has_id = TRUE,
        .id = req->id,
        .payload = result,
    };
    g_autoptr(GError) error = NULL;
    gboolean sent = !request_can_answer(req) || send_msg(req->ch, &msg, fds, nfds, &error);
    if (result)
        json_object_unref(result);
    if (!sent) {
        /* Too large or out of fds: the caller still gets an answer. */
        answer_error(req, VMM_ERR_GENERIC, error->message);
        return;
    }
    request_free(req);
}

void vmm_channel_reply_error(VmmChannelRequest *req, const char *klass, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *desc = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    answer_error(req, klass, desc);
}

void vmm_channel_reply_gerror(VmmChannelRequest *req, const GError *error)
{
    answer_error(req, VMM_ERR_GENERIC, error->message);
}
