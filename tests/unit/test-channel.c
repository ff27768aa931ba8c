/* The control channel: two VmmChannels on one uv loop over a socketpair, or a
 * channel against a "raw" peer that writes bytes into the socket by hand.
 * Every test runs under a 5 s watchdog timer that fails it. */
#include "common/channel.h"
#include "common/control-msg.h"
#include "common/error.h"
#include "common/fdpass.h"
#include "proto/control.h"

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define WATCHDOG_MS 5000
#define MANY_CALLS 64

typedef struct Fixture Fixture;

typedef struct {
    Fixture *fx;
    const char *name;
    VmmChannel *ch;
    gboolean no_request_handler;
    gboolean free_in_ready;
    guint ready_count;
    JsonObject *hello;
    guint closed_count;
    GError *closed_why;
    GPtrArray *held;        /* VmmChannelRequest* answered later */
    GPtrArray *events;      /* event names, in order */
    JsonObject *last_event_data;
    int event_fd;           /* taken from a "with-fd" event */
    int pipe_read;          /* read end of the pipe whose write end "pipe" replied with */
} Side;

typedef struct {
    gboolean done;
    JsonObject *result;
    GError *error;
    int fd;                 /* taken from the reply */
    gint64 expect_n;        /* for the out-of-order test */
    Side *free_side;        /* free this side's channel from the callback */
} Call;

struct Fixture {
    uv_loop_t loop;
    uv_timer_t watchdog;
    gboolean timed_out;
    Side a, b;
    /* The raw peer. */
    int raw;
    uv_poll_t raw_poll;
    gboolean raw_poll_on;
    GQueue raw_in;          /* JsonObject* received by the raw peer */
    gboolean raw_eof;
    uv_timer_t answer_timer;
    gboolean answer_timer_on;
};

#define RUN_UNTIL(fx, cond)                                              \
    do {                                                                 \
        while (!(cond) && !(fx)->timed_out)                              \
            uv_run(&(fx)->loop, UV_RUN_ONCE);                            \
        if ((fx)->timed_out)                                             \
            g_error("timed out after %d ms waiting for: %s", WATCHDOG_MS, #cond); \
    } while (0)

/* ---- side callbacks ---- */

static void side_on_ready(VmmChannel *ch, JsonObject *hello, gpointer user)
{
    Side *s = user;
    s->ready_count++;
    s->hello = json_object_ref(hello);
    if (s->free_in_ready) {
        vmm_channel_free(ch);
        s->ch = NULL;
    }
}

static void answer_pipe(Side *s, VmmChannelRequest *req)
{
    g_assert_cmpuint(vmm_channel_request_nfds(req), ==, 1);
    int fd = vmm_channel_request_take_fd(req, 0);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(vmm_channel_request_take_fd(req, 0), ==, -1);
    g_assert_cmpint(vmm_channel_request_take_fd(req, 5), ==, -1);
    g_assert_cmpint(write(fd, "ping", 4), ==, 4);
    close(fd);

    int p[2];
    g_assert_cmpint(pipe2(p, O_CLOEXEC), ==, 0);
    s->pipe_read = p[0];
    JsonObject *result = json_object_new();
    json_object_set_string_member(result, "sent", "ping");
    vmm_channel_reply(req, result, &p[1], 1);
    close(p[1]); /* the channel sends a duplicate */
}

static void side_on_request(VmmChannel *ch, VmmChannelRequest *req, gpointer user)
{
    Side *s = user;
    const char *cmd = vmm_channel_request_command(req);
    g_assert_true(vmm_channel_request_channel(req) == ch);
    g_assert_nonnull(vmm_channel_request_args(req));
    if (g_str_equal(cmd, "echo")) {
        JsonNode *copy = json_node_init_object(json_node_alloc(), vmm_channel_request_args(req));
        JsonNode *dup = json_node_copy(copy);
        vmm_channel_reply(req, json_node_dup_object(dup), NULL, 0);
        json_node_unref(dup);
        json_node_unref(copy);
    } else if (g_str_equal(cmd, "pipe")) {
        answer_pipe(s, req);
    } else if (g_str_equal(cmd, "hold")) {
        g_ptr_array_add(s->held, req);
    } else if (g_str_equal(cmd, "free-me")) {
        vmm_channel_free(ch);
        s->ch = NULL;
        g_assert_null(vmm_channel_request_channel(req));
        /* Answering a request of a freed channel only frees the request. */
        vmm_channel_reply_error(req, VMM_ERR_GENERIC, "too late");
    } else if (g_str_equal(cmd, "big-reply")) {
        g_autofree char *pad = g_malloc(VMM_CONTROL_MAX_MSG + 1);
        memset(pad, 'x', VMM_CONTROL_MAX_MSG);
        pad[VMM_CONTROL_MAX_MSG] = '\0';
        JsonObject *result = json_object_new();
        json_object_set_string_member(result, "pad", pad);
        vmm_channel_reply(req, result, NULL, 0);
    } else if (g_str_equal(cmd, "fail")) {
        g_autoptr(GError) error = g_error_new(VMM_ERROR, VMM_ERROR_INVALID, "bad %s", "thing");
        vmm_channel_reply_gerror(req, error);
    } else {
        vmm_channel_reply_error(req, VMM_ERR_GENERIC, "test side has no '%s'", cmd);
    }
}

static void side_on_event(VmmChannel *ch, const char *name, JsonObject *data, int *fds,
                          guint nfds, gpointer user)
{
    Side *s = user;
    g_ptr_array_add(s->events, g_strdup(name));
    g_clear_pointer(&s->last_event_data, json_object_unref);
    s->last_event_data = json_object_ref(data);
    if (g_str_equal(name, "with-fd")) {
        g_assert_cmpuint(nfds, ==, 1);
        s->event_fd = fds[0];
        fds[0] = -1;
    }
}

static void side_on_closed(VmmChannel *ch, const GError *why, gpointer user)
{
    Side *s = user;
    g_assert_nonnull(why);
    s->closed_count++;
    g_clear_error(&s->closed_why);
    s->closed_why = g_error_copy(why);
}

static void side_open(Fixture *fx, Side *s, const char *name, int fd)
{
    static const VmmChannelOps ops = {
        .on_ready = side_on_ready,
        .on_request = side_on_request,
        .on_event = side_on_event,
        .on_closed = side_on_closed,
    };
    VmmChannelOps my_ops = ops;
    if (s->no_request_handler)
        my_ops.on_request = NULL;
    g_autoptr(JsonObject) extra = json_object_new();
    json_object_set_string_member(extra, "side", name);
    json_object_set_int_member(extra, "protocol", 12345); /* must not override ours */
    g_autoptr(GError) error = NULL;
    s->fx = fx;
    s->name = name;
    s->ch = vmm_channel_new(&fx->loop, fd, name, extra, &my_ops, s, &error);
    g_assert_no_error(error);
    g_assert_nonnull(s->ch);
    g_assert_false(vmm_channel_is_ready(s->ch));
    g_assert_null(vmm_channel_peer_role(s->ch));
    g_assert_cmpint(vmm_channel_peer_pid(s->ch), ==, 0);
}

static void side_clear(Side *s)
{
    if (s->ch)
        vmm_channel_free(s->ch);
    s->ch = NULL;
    g_clear_pointer(&s->hello, json_object_unref);
    g_clear_pointer(&s->last_event_data, json_object_unref);
    g_clear_error(&s->closed_why);
    g_clear_pointer(&s->events, g_ptr_array_unref);
    if (s->held) {
        /* Requests of a freed channel still have to be answered to be freed. */
        for (guint i = 0; i < s->held->len; i++)
            vmm_channel_reply(s->held->pdata[i], NULL, NULL, 0);
        g_ptr_array_unref(s->held);
        s->held = NULL;
    }
    if (s->event_fd >= 0)
        close(s->event_fd);
    if (s->pipe_read >= 0)
        close(s->pipe_read);
}

static void side_init(Side *s)
{
    memset(s, 0, sizeof(*s));
    s->held = g_ptr_array_new();
    s->events = g_ptr_array_new_with_free_func(g_free);
    s->event_fd = -1;
    s->pipe_read = -1;
}

/* ---- calls ---- */

static void call_done(VmmChannel *ch, JsonObject *result, const GError *error, int *fds,
                      guint nfds, gpointer user)
{
    Call *c = user;
    g_assert_false(c->done);
    g_assert_true((result == NULL) != (error == NULL));
    c->done = TRUE;
    if (result)
        c->result = json_object_ref(result);
    if (error)
        c->error = g_error_copy(error);
    if (nfds > 0) {
        c->fd = fds[0];
        fds[0] = -1;
    }
    if (c->free_side) {
        vmm_channel_free(ch);
        c->free_side->ch = NULL;
    }
}

static void call_init(Call *c)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

static void call_clear(Call *c)
{
    g_clear_pointer(&c->result, json_object_unref);
    g_clear_error(&c->error);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static void do_call(Side *s, const char *command, JsonObject *args, const int *fds, guint nfds,
                    Call *c)
{
    g_autoptr(GError) error = NULL;
    gboolean ok = vmm_channel_call(s->ch, command, args, fds, nfds, call_done, c, &error);
    g_assert_no_error(error);
    g_assert_true(ok);
}

/* ---- fixture ---- */

static void on_watchdog(uv_timer_t *t)
{
    Fixture *fx = t->data;
    fx->timed_out = TRUE;
}

static void fx_setup(Fixture *fx, gconstpointer data)
{
    memset(fx, 0, sizeof(*fx));
    g_assert_cmpint(uv_loop_init(&fx->loop), ==, 0);
    uv_timer_init(&fx->loop, &fx->watchdog);
    fx->watchdog.data = fx;
    uv_timer_start(&fx->watchdog, on_watchdog, WATCHDOG_MS, 0);
    side_init(&fx->a);
    side_init(&fx->b);
    fx->raw = -1;
    g_queue_init(&fx->raw_in);
}

static void fx_teardown(Fixture *fx, gconstpointer data)
{
    side_clear(&fx->a);
    side_clear(&fx->b);
    if (fx->raw_poll_on)
        uv_close((uv_handle_t *)&fx->raw_poll, NULL);
    if (fx->answer_timer_on)
        uv_close((uv_handle_t *)&fx->answer_timer, NULL);
    uv_close((uv_handle_t *)&fx->watchdog, NULL);
    /* Every handle is closing: this returns once their close callbacks ran. */
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    g_assert_cmpint(uv_loop_close(&fx->loop), ==, 0);
    if (fx->raw >= 0)
        close(fx->raw);
    g_queue_clear_full(&fx->raw_in, (GDestroyNotify)json_object_unref);
}

static void make_pair(int sv[2])
{
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), ==, 0);
}

static void open_both(Fixture *fx)
{
    int sv[2];
    make_pair(sv);
    side_open(fx, &fx->a, "a", sv[0]);
    side_open(fx, &fx->b, "b", sv[1]);
}

/* ---- the raw peer ---- */

static void on_raw_readable(uv_poll_t *h, int status, int events)
{
    Fixture *fx = h->data;
    static char buf[VMM_CONTROL_MAX_MSG + 1];
    int fds[VMM_MAX_FDS];
    guint nfds;
    g_autoptr(GError) error = NULL;
    gssize n = vmm_recv_with_fds(fx->raw, buf, sizeof(buf), fds, VMM_MAX_FDS, &nfds, &error);
    if (n < 0 && g_error_matches(error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
        return;
    g_assert_no_error(error);
    vmm_close_fds(fds, nfds);
    if (n == 0) {
        fx->raw_eof = TRUE;
        uv_poll_stop(h);
        return;
    }
    g_autoptr(JsonParser) parser = json_parser_new();
    g_assert_true(json_parser_load_from_data(parser, buf, n, NULL));
    g_queue_push_tail(&fx->raw_in, json_object_ref(json_node_get_object(json_parser_get_root(parser))));
}

/* Channel A on one end, the raw peer on the other. */
static void open_raw(Fixture *fx)
{
    int sv[2];
    make_pair(sv);
    side_open(fx, &fx->a, "a", sv[0]);
    fx->raw = sv[1];
    g_assert_cmpint(fcntl(fx->raw, F_SETFL, O_NONBLOCK), ==, 0);
    int sndbuf = VMM_CONTROL_MAX_MSG * 2;
    setsockopt(fx->raw, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    uv_poll_init(&fx->loop, &fx->raw_poll, fx->raw);
    fx->raw_poll.data = fx;
    uv_poll_start(&fx->raw_poll, UV_READABLE, on_raw_readable);
    fx->raw_poll_on = TRUE;
}

static void raw_send_len(Fixture *fx, const char *data, gsize len)
{
    g_autoptr(GError) error = NULL;
    gssize n = vmm_send_with_fds(fx->raw, data, len, NULL, 0, &error);
    g_assert_no_error(error);
    g_assert_cmpint(n, ==, len);
}

static void raw_send(Fixture *fx, const char *json)
{
    raw_send_len(fx, json, strlen(json));
}

static JsonObject *raw_expect(Fixture *fx)
{
    RUN_UNTIL(fx, !g_queue_is_empty(&fx->raw_in));
    return g_queue_pop_head(&fx->raw_in);
}

static void raw_hello(Fixture *fx, int protocol)
{
    g_autofree char *hello = g_strdup_printf(
        "{\"hello\":{\"protocol\":%d,\"role\":\"raw\",\"pid\":4242}}", protocol);
    raw_send(fx, hello);
    g_autoptr(JsonObject) theirs = raw_expect(fx);
    JsonObject *h = json_object_get_object_member(theirs, "hello");
    g_assert_nonnull(h);
    g_assert_cmpint(json_object_get_int_member(h, "protocol"), ==, VMM_CONTROL_PROTOCOL);
    g_assert_cmpstr(json_object_get_string_member(h, "role"), ==, "a");
}

/* Checks an error reply: its id (-1 for null), class and a piece of desc. */
static void assert_error_reply(JsonObject *reply, gint64 id, const char *klass,
                               const char *desc_part)
{
    g_assert_true(json_object_has_member(reply, "id"));
    if (id < 0)
        g_assert_true(json_object_get_null_member(reply, "id"));
    else
        g_assert_cmpint(json_object_get_int_member(reply, "id"), ==, id);
    JsonObject *err = json_object_get_object_member(reply, "error");
    g_assert_nonnull(err);
    g_assert_cmpstr(json_object_get_string_member(err, "class"), ==, klass);
    const char *desc = json_object_get_string_member(err, "desc");
    if (!strstr(desc, desc_part))
        g_error("error desc '%s' lacks '%s'", desc, desc_part);
}

static void assert_echo_works(Fixture *fx, gint64 id)
{
    g_autofree char *req = g_strdup_printf(
        "{\"id\":%" G_GINT64_FORMAT ",\"command\":\"echo\",\"args\":{\"k\":\"v\"}}", id);
    raw_send(fx, req);
    g_autoptr(JsonObject) reply = raw_expect(fx);
    g_assert_cmpint(json_object_get_int_member(reply, "id"), ==, id);
    JsonObject *ret = json_object_get_object_member(reply, "return");
    g_assert_nonnull(ret);
    g_assert_cmpstr(json_object_get_string_member(ret, "k"), ==, "v");
}

/* ---- tests: two channels ---- */

static void test_hello(Fixture *fx, gconstpointer data)
{
    open_both(fx);
    RUN_UNTIL(fx, fx->a.ready_count && fx->b.ready_count);
    g_assert_cmpuint(fx->a.ready_count, ==, 1);
    g_assert_cmpuint(fx->b.ready_count, ==, 1);
    g_assert_true(vmm_channel_is_ready(fx->a.ch));
    g_assert_true(vmm_channel_is_ready(fx->b.ch));
    g_assert_cmpstr(vmm_channel_peer_role(fx->a.ch), ==, "b");
    g_assert_cmpstr(vmm_channel_peer_role(fx->b.ch), ==, "a");
    g_assert_cmpint(vmm_channel_peer_pid(fx->a.ch), ==, getpid());
    g_assert_cmpstr(json_object_get_string_member(fx->a.hello, "side"), ==, "b");
    g_assert_cmpint(json_object_get_int_member(fx->a.hello, "protocol"), ==,
                    VMM_CONTROL_PROTOCOL);
    g_assert_cmpuint(fx->a.closed_count + fx->b.closed_count, ==, 0);
}

static void test_call_with_fds(Fixture *fx, gconstpointer data)
{
    open_both(fx);
    int p1[2];
    g_assert_cmpint(pipe2(p1, O_CLOEXEC), ==, 0);
    Call c;
    call_init(&c);
    /* Made before either hello went out: queued until ready. */
    do_call(&fx->a, "pipe", NULL, &p1[1], 1, &c);
    close(p1[1]); /* the channel holds a duplicate */
    RUN_UNTIL(fx, c.done);
    g_assert_no_error(c.error);
    g_assert_cmpstr(json_object_get_string_member(c.result, "sent"), ==, "ping");
    g_assert_cmpint(c.fd, >=, 0);
    g_assert_cmpint(fcntl(c.fd, F_GETFD) & FD_CLOEXEC, ==, FD_CLOEXEC);

    char buf[8] = { 0 };
    g_assert_cmpint(read(p1[0], buf, sizeof(buf)), ==, 4);
    g_assert_cmpstr(buf, ==, "ping");
    g_assert_cmpint(write(c.fd, "pong", 4), ==, 4);
    memset(buf, 0, sizeof(buf));
    g_assert_cmpint(read(fx->b.pipe_read, buf, sizeof(buf)), ==, 4);
    g_assert_cmpstr(buf, ==, "pong");
    close(p1[0]);
    call_clear(&c);
}

static void test_echo_and_gerror(Fixture *fx, gconstpointer data)
{
    open_both(fx);
    Call echo, fail;
    call_init(&echo);
    call_init(&fail);
    JsonObject *args = json_object_new();
    json_object_set_int_member(args, "n", 42);
    do_call(&fx->a, "echo", args, NULL, 0, &echo);
    do_call(&fx->a, "fail", NULL, NULL, 0, &fail);
    RUN_UNTIL(fx, echo.done && fail.done);
    g_assert_no_error(echo.error);
    g_assert_cmpint(json_object_get_int_member(echo.result, "n"), ==, 42);
    g_assert_error(fail.error, VMM_ERROR, VMM_ERROR_FAILED);
    g_assert_nonnull(strstr(fail.error->message, "bad thing"));
    g_assert_nonnull(strstr(fail.error->message, "fail"));
    call_clear(&echo);
    call_clear(&fail);
}

static void test_events(Fixture *fx, gconstpointer data)
{
    open_both(fx);
    int p[2], q[2];
    g_assert_cmpint(pipe2(p, O_CLOEXEC), ==, 0);
    g_assert_cmpint(pipe2(q, O_CLOEXEC | O_NONBLOCK), ==, 0);
    g_autoptr(GError) error = NULL;
    JsonObject *status = json_object_new();
    json_object_set_string_member(status, "status", "running");
    g_assert_true(vmm_channel_emit(fx->b.ch, VMM_EVENT_STATUS, status, NULL, 0, &error));
    g_assert_true(vmm_channel_emit(fx->b.ch, "with-fd", NULL, &p[1], 1, &error));
    /* Nobody takes this one: the receiver must close it. */
    g_assert_true(vmm_channel_emit(fx->b.ch, "ignored-fd", NULL, &q[1], 1, &error));
    g_assert_no_error(error);
    close(p[1]);
    close(q[1]);
    RUN_UNTIL(fx, fx->a.events->len == 3);
    g_assert_cmpstr(fx->a.events->pdata[0], ==, "status");
    g_assert_cmpstr(fx->a.events->pdata[1], ==, "with-fd");
    g_assert_cmpstr(fx->a.events->pdata[2], ==, "ignored-fd");
    g_assert_cmpuint(json_object_get_size(fx->a.last_event_data), ==, 0);

    g_assert_cmpint(write(fx->a.event_fd, "e", 1), ==, 1);
    char c = 0;
    g_assert_cmpint(read(p[0], &c, 1), ==, 1);
    g_assert_cmpint(c, ==, 'e');
    /* EOF: every copy of q's write end is closed, the received one too. */
    g_assert_cmpint(read(q[0], &c, 1), ==, 0);
    close(p[0]);
    close(q[0]);
}

static void on_answer_timer(uv_timer_t *t)
{
    Side *s = t->data;
    /* Answer in a scrambled order: 37 is coprime with MANY_CALLS. */
    g_assert_cmpuint(s->held->len, ==, MANY_CALLS);
    for (guint i = 0; i < MANY_CALLS; i++) {
        VmmChannelRequest *req = s->held->pdata[(i * 37 + 11) % MANY_CALLS];
        JsonObject *result = json_object_new();
        json_object_set_int_member(result, "n",
                                   json_object_get_int_member(vmm_channel_request_args(req), "n"));
        vmm_channel_reply(req, result, NULL, 0);
    }
    g_ptr_array_set_size(s->held, 0);
}

static gboolean all_done(const Call *calls, guint n)
{
    for (guint i = 0; i < n; i++) {
        if (!calls[i].done)
            return FALSE;
    }
    return TRUE;
}

static void test_many_out_of_order(Fixture *fx, gconstpointer data)
{
    open_both(fx);
    Call calls[MANY_CALLS];
    for (guint i = 0; i < MANY_CALLS; i++) {
        call_init(&calls[i]);
        calls[i].expect_n = 1000 + i;
        JsonObject *args = json_object_new();
        json_object_set_int_member(args, "n", 1000 + i);
        do_call(&fx->a, "hold", args, NULL, 0, &calls[i]);
    }
    RUN_UNTIL(fx, fx->b.held->len == MANY_CALLS);
    uv_timer_init(&fx->loop, &fx->answer_timer);
    fx->answer_timer_on = TRUE;
    fx->answer_timer.data = &fx->b;
    uv_timer_start(&fx->answer_timer, on_answer_timer, 10, 0);

    RUN_UNTIL(fx, all_done(calls, MANY_CALLS));
    for (guint i = 0; i < MANY_CALLS; i++) {
        g_assert_no_error(calls[i].error);
        g_assert_cmpint(json_object_get_int_member(calls[i].result, "n"), ==, calls[i].expect_n);
        call_clear(&calls[i]);
    }
}

static void test_unknown_command(Fixture *fx, gconstpointer data)
{
    fx->b.no_request_handler = TRUE;
    open_both(fx);
    Call c;
    call_init(&c);
    do_call(&fx->a, "nope", NULL, NULL, 0, &c);
    RUN_UNTIL(fx, c.done);
    g_assert_error(c.error, VMM_ERROR, VMM_ERROR_NOT_FOUND);
    g_assert_nonnull(strstr(c.error->message, "nope"));
    g_assert_nonnull(strstr(c.error->message, VMM_ERR_COMMAND_NOT_FOUND));
    call_clear(&c);
}

/* B frees itself inside on_request: A's pending calls fail with
 * VMM_ERROR_CLOSED and A hears of the close. */
static void test_peer_frees_in_request(Fixture *fx, gconstpointer data)
{
    open_both(fx);
    Call first, second;
    call_init(&first);
    call_init(&second);
    do_call(&fx->a, "free-me", NULL, NULL, 0, &first);
    do_call(&fx->a, "echo", NULL, NULL, 0, &second);
    RUN_UNTIL(fx, first.done && second.done && fx->a.closed_count);
    g_assert_null(fx->b.ch);
    g_assert_cmpuint(fx->b.closed_count, ==, 0); /* freed: no callback */
    g_assert_error(first.error, VMM_ERROR, VMM_ERROR_CLOSED);
    g_assert_error(second.error, VMM_ERROR, VMM_ERROR_CLOSED);
    g_assert_nonnull(strstr(first.error->message, "free-me"));
    g_assert_error(fx->a.closed_why, VMM_ERROR, VMM_ERROR_CLOSED);
    g_assert_cmpuint(fx->a.closed_count, ==, 1);
    g_assert_false(vmm_channel_is_ready(fx->a.ch));

    /* A closed channel refuses new work. */
    g_autoptr(GError) error = NULL;
    g_assert_false(vmm_channel_call(fx->a.ch, "echo", json_object_new(), NULL, 0, NULL, NULL,
                                    &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_CLOSED);
    g_clear_error(&error);
    g_assert_false(vmm_channel_emit(fx->a.ch, "x", NULL, NULL, 0, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_CLOSED);
    call_clear(&first);
    call_clear(&second);
}

/* A frees itself in a reply callback; the other pending call is failed from
 * inside that free, and B sees the close. */
static void test_free_in_reply(Fixture *fx, gconstpointer data)
{
    open_both(fx);
    Call first, second;
    call_init(&first);
    call_init(&second);
    first.free_side = &fx->a;
    do_call(&fx->a, "echo", NULL, NULL, 0, &first);
    do_call(&fx->a, "hold", NULL, NULL, 0, &second);
    RUN_UNTIL(fx, first.done && fx->b.closed_count);
    g_assert_no_error(first.error);
    g_assert_true(second.done);
    g_assert_error(second.error, VMM_ERROR, VMM_ERROR_CLOSED);
    g_assert_null(fx->a.ch);
    g_assert_error(fx->b.closed_why, VMM_ERROR, VMM_ERROR_CLOSED);
    g_assert_cmpuint(fx->a.closed_count, ==, 0);
    call_clear(&first);
    call_clear(&second);
}

static void test_free_in_ready(Fixture *fx, gconstpointer data)
{
    fx->a.free_in_ready = TRUE;
    open_both(fx);
    RUN_UNTIL(fx, fx->b.closed_count);
    g_assert_cmpuint(fx->a.ready_count, ==, 1);
    g_assert_null(fx->a.ch);
    g_assert_error(fx->b.closed_why, VMM_ERROR, VMM_ERROR_CLOSED);
}

static void free_in_closed(VmmChannel *ch, const GError *why, gpointer user)
{
    Side *s = user;
    side_on_closed(ch, why, user);
    vmm_channel_free(ch);
    s->ch = NULL;
}

static void test_free_in_closed(Fixture *fx, gconstpointer data)
{
    int sv[2];
    make_pair(sv);
    static const VmmChannelOps ops = { .on_closed = free_in_closed };
    g_autoptr(GError) error = NULL;
    fx->a.ch = vmm_channel_new(&fx->loop, sv[0], "a", NULL, &ops, &fx->a, &error);
    g_assert_no_error(error);
    Call c;
    call_init(&c);
    do_call(&fx->a, "never", NULL, NULL, 0, &c);
    close(sv[1]);
    RUN_UNTIL(fx, fx->a.closed_count);
    g_assert_null(fx->a.ch);
    g_assert_error(fx->a.closed_why, VMM_ERROR, VMM_ERROR_CLOSED);
    g_assert_error(c.error, VMM_ERROR, VMM_ERROR_CLOSED);
    call_clear(&c);
}

static void test_free_with_pending(Fixture *fx, gconstpointer data)
{
    open_both(fx);
    Call c;
    call_init(&c);
    do_call(&fx->a, "hold", NULL, NULL, 0, &c);
    RUN_UNTIL(fx, fx->b.held->len == 1);
    vmm_channel_free(fx->a.ch);
    fx->a.ch = NULL;
    /* The callback ran inside the free. */
    g_assert_true(c.done);
    g_assert_error(c.error, VMM_ERROR, VMM_ERROR_CLOSED);
    RUN_UNTIL(fx, fx->b.closed_count);
    call_clear(&c);
}

static void test_not_a_seqpacket(Fixture *fx, gconstpointer data)
{
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
    static const VmmChannelOps ops = { 0 };
    g_autoptr(GError) error = NULL;
    g_assert_null(vmm_channel_new(&fx->loop, sv[0], "a", NULL, &ops, NULL, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_INVALID);
    close(sv[1]);
}

/* ---- tests: against the raw peer ---- */

static void test_raw_malformed(Fixture *fx, gconstpointer data)
{
    open_raw(fx);
    raw_hello(fx, VMM_CONTROL_PROTOCOL);
    RUN_UNTIL(fx, fx->a.ready_count);
    g_assert_cmpstr(vmm_channel_peer_role(fx->a.ch), ==, "raw");
    g_assert_cmpint(vmm_channel_peer_pid(fx->a.ch), ==, 4242);

    static const struct {
        const char *text;
        gint64 id;
        const char *desc;
    } cases[] = {
        { "{not json", -1, "not JSON" },
        { "[1,2]", -1, "not a JSON object" },
        { "\xff\xfe{}", -1, "UTF-8" },
        { "{\"id\":7,\"command\":\"echo\",\"args\":5}", 7, "\"args\" is not an object" },
        { "{\"id\":\"x\",\"command\":\"echo\"}", -1, "\"id\" is not an integer" },
        { "{\"id\":8,\"command\":\"echo\",\"event\":\"e\"}", 8, "both" },
        { "{\"id\":9}", 9, "none of" },
        { "{\"command\":\"echo\"}", -1, "without an \"id\"" },
        { "{\"hello\":{\"protocol\":1}}", -1, "hello already received" },
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        raw_send(fx, cases[i].text);
        g_autoptr(JsonObject) reply = raw_expect(fx);
        assert_error_reply(reply, cases[i].id, VMM_ERR_GENERIC, cases[i].desc);
    }
    assert_echo_works(fx, 10);
    g_assert_cmpuint(fx->a.closed_count, ==, 0);
}

static void test_raw_oversized(Fixture *fx, gconstpointer data)
{
    open_raw(fx);
    int sndbuf = 0;
    socklen_t len = sizeof(sndbuf);
    getsockopt(fx->raw, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len);
    if (sndbuf < VMM_CONTROL_MAX_MSG + 4096) {
        g_test_skip("cannot raise SO_SNDBUF enough for an oversized message");
        return;
    }
    raw_hello(fx, VMM_CONTROL_PROTOCOL);
    g_autofree char *expect = g_strdup_printf("message too large (limit %d bytes)",
                                              VMM_CONTROL_MAX_MSG);
    /* Over the receive buffer (MSG_TRUNC), and one byte over the limit (the
     * decoder's check). Both are valid JSON apart from their size. */
    static const gsize sizes[] = { VMM_CONTROL_MAX_MSG + 10, VMM_CONTROL_MAX_MSG + 1 };
    for (guint i = 0; i < G_N_ELEMENTS(sizes); i++) {
        gsize size = sizes[i];
        g_autofree char *big = g_malloc(size);
        const char *head = "{\"id\":1,\"command\":\"echo\",\"args\":{\"pad\":\"";
        memset(big, 'x', size);
        memcpy(big, head, strlen(head));
        memcpy(big + size - 3, "\"}}", 3);
        raw_send_len(fx, big, size);
        g_autoptr(JsonObject) reply = raw_expect(fx);
        assert_error_reply(reply, -1, VMM_ERR_GENERIC, expect);
    }
    assert_echo_works(fx, 2);
    g_assert_cmpuint(fx->a.closed_count, ==, 0);
}

static void test_raw_unknown_reply(Fixture *fx, gconstpointer data)
{
    open_raw(fx);
    raw_hello(fx, VMM_CONTROL_PROTOCOL);
    raw_send(fx, "{\"id\":999,\"return\":{}}");
    raw_send(fx, "{\"id\":null,\"error\":{\"class\":\"GenericError\",\"desc\":\"x\"}}");
    assert_echo_works(fx, 3);
    g_assert_cmpuint(fx->a.closed_count, ==, 0);
}

static void test_raw_version_mismatch(Fixture *fx, gconstpointer data)
{
    open_raw(fx);
    raw_hello(fx, 99);
    RUN_UNTIL(fx, fx->a.closed_count);
    g_assert_error(fx->a.closed_why, VMM_ERROR, VMM_ERROR_PROTOCOL);
    g_autofree char *ours = g_strdup_printf("version %d", VMM_CONTROL_PROTOCOL);
    g_assert_nonnull(strstr(fx->a.closed_why->message, "version 99"));
    g_assert_nonnull(strstr(fx->a.closed_why->message, ours));
    g_assert_cmpuint(fx->a.ready_count, ==, 0);
    /* The peer is told why, then sees EOF. */
    g_autoptr(JsonObject) reply = raw_expect(fx);
    assert_error_reply(reply, -1, VMM_ERR_GENERIC, "version 99");
    RUN_UNTIL(fx, fx->raw_eof);
}

static void test_raw_request_before_hello(Fixture *fx, gconstpointer data)
{
    open_raw(fx);
    raw_send(fx, "{\"id\":1,\"command\":\"echo\"}");
    RUN_UNTIL(fx, fx->a.closed_count);
    g_assert_error(fx->a.closed_why, VMM_ERROR, VMM_ERROR_PROTOCOL);
    g_assert_nonnull(strstr(fx->a.closed_why->message, "before its hello"));
    g_assert_cmpuint(fx->a.ready_count, ==, 0);
}

static void test_raw_peer_close(Fixture *fx, gconstpointer data)
{
    open_raw(fx);
    raw_hello(fx, VMM_CONTROL_PROTOCOL);
    Call c;
    call_init(&c);
    do_call(&fx->a, "slow", NULL, NULL, 0, &c);
    g_autoptr(JsonObject) req = raw_expect(fx);
    g_assert_cmpstr(json_object_get_string_member(req, "command"), ==, "slow");
    uv_close((uv_handle_t *)&fx->raw_poll, NULL);
    fx->raw_poll_on = FALSE;
    close(fx->raw);
    fx->raw = -1;
    RUN_UNTIL(fx, c.done && fx->a.closed_count);
    g_assert_error(c.error, VMM_ERROR, VMM_ERROR_CLOSED);
    g_assert_error(fx->a.closed_why, VMM_ERROR, VMM_ERROR_CLOSED);
    call_clear(&c);
}

/* ---- the decoder and encoder on their own ---- */

static void test_msg_decode_errors(void)
{
    static const struct {
        const char *text;
        int code;
        gint64 id; /* -1: none readable */
        const char *part;
    } cases[] = {
        { "", VMM_ERROR_INVALID, -1, "not a JSON object" },
        { "\"str\"", VMM_ERROR_INVALID, -1, "not a JSON object" },
        { "{\"id\":1.5,\"command\":\"x\"}", VMM_ERROR_INVALID, -1, "\"id\" is not an integer" },
        { "{\"id\":true,\"return\":{}}", VMM_ERROR_INVALID, -1, "\"id\" is not an integer" },
        { "{\"id\":3,\"command\":\"\"}", VMM_ERROR_INVALID, 3, "non-empty string" },
        { "{\"id\":3,\"command\":7}", VMM_ERROR_INVALID, 3, "non-empty string" },
        { "{\"id\":4,\"return\":[]}", VMM_ERROR_INVALID, 4, "\"return\" is not an object" },
        { "{\"id\":5,\"error\":{\"desc\":\"d\"}}", VMM_ERROR_INVALID, 5, "\"class\"" },
        { "{\"id\":5,\"error\":{\"class\":\"C\"}}", VMM_ERROR_INVALID, 5, "\"desc\"" },
        { "{\"hello\":{},\"event\":\"e\"}", VMM_ERROR_INVALID, -1, "both" },
        { "{\"id\":6,\"event\":\"e\"}", VMM_ERROR_INVALID, 6, "event with an \"id\"" },
        { "{\"hello\":5}", VMM_ERROR_INVALID, -1, "\"hello\" is not an object" },
        { "{\"event\":\"e\",\"data\":null}", VMM_ERROR_INVALID, -1, "\"data\" is not an object" },
        { "{\"event\":\"e\"}{\"event\":\"f\"}", VMM_ERROR_INVALID, -1, "data after" },
        { "{\"event\":\"e\",\"data\":{\"x\":99999999999999999999}}", VMM_ERROR_INVALID, -1,
          "out of range" },
        { "{\"event\":\"e\",\"data\":{\"x\":1e999}}", VMM_ERROR_INVALID, -1, "out of range" },
        { "{\"event\":\"e\",\"data\":{\"x\":\"a\\u0000b\"}}", VMM_ERROR_INVALID, -1, "\\u0000" },
        { "{\"event\":\"e\\ud800\"}", VMM_ERROR_INVALID, -1, "not JSON" },
        { "{\"event\":\"e\\333\"}", VMM_ERROR_INVALID, -1, "invalid escape" },
        { "{\"event\":\"e\tf\"}", VMM_ERROR_INVALID, -1, "control character" },
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        VmmControlMsg msg;
        g_autoptr(GError) error = NULL;
        if (vmm_control_msg_decode(cases[i].text, strlen(cases[i].text), &msg, &error))
            g_error("decoded invalid message %s", cases[i].text);
        g_assert_error(error, VMM_ERROR, cases[i].code);
        if (!strstr(error->message, cases[i].part))
            g_error("'%s': error '%s' lacks '%s'", cases[i].text, error->message, cases[i].part);
        g_assert_true(g_utf8_validate(error->message, -1, NULL));
        g_assert_cmpint(msg.has_id ? msg.id : -1, ==, cases[i].id);
        g_assert_null(msg.name);
        g_assert_null(msg.payload);
    }

    /* Deep nesting is refused before the recursive parser sees it. */
    GString *deep = g_string_new("{\"event\":\"e\",\"data\":{\"x\":");
    for (int i = 0; i < 100000; i++)
        g_string_append_c(deep, '[');
    VmmControlMsg msg;
    g_autoptr(GError) error = NULL;
    g_assert_false(vmm_control_msg_decode(deep->str, deep->len, &msg, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_INVALID);
    g_assert_nonnull(strstr(error->message, "nested deeper"));
    g_string_free(deep, TRUE);

    g_clear_error(&error);
    gsize big = VMM_CONTROL_MAX_MSG + 1;
    g_autofree char *text = g_malloc0(big);
    g_assert_false(vmm_control_msg_decode(text, big, &msg, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG);
}

static void test_msg_round_trip(void)
{
    static const char *texts[] = {
        "{\"hello\":{\"protocol\":1,\"role\":\"vmmd\",\"pid\":7}}",
        "{\"id\":1,\"command\":\"query-status\",\"args\":{\"a\":[1,2.5,null,\"s\"]}}",
        "{\"id\":-2,\"return\":{}}",
        "{\"id\":null,\"error\":{\"class\":\"GenericError\",\"desc\":\"d\"}}",
        "{\"id\":3,\"error\":{\"class\":\"CommandNotFound\",\"desc\":\"\xc3\xa9\"}}",
        "{\"event\":\"status\",\"data\":{\"status\":\"running\"}}",
    };
    static const VmmControlKind kinds[] = {
        VMM_CONTROL_HELLO, VMM_CONTROL_REQUEST, VMM_CONTROL_REPLY_OK,
        VMM_CONTROL_REPLY_ERROR, VMM_CONTROL_REPLY_ERROR, VMM_CONTROL_EVENT,
    };
    for (guint i = 0; i < G_N_ELEMENTS(texts); i++) {
        VmmControlMsg msg, again;
        g_autoptr(GError) error = NULL;
        g_assert_true(vmm_control_msg_decode(texts[i], strlen(texts[i]), &msg, &error));
        g_assert_no_error(error);
        g_assert_cmpint(msg.kind, ==, kinds[i]);
        g_autoptr(GBytes) bytes = vmm_control_msg_encode(&msg, &error);
        g_assert_no_error(error);
        /* Our encoding of these canonical texts is the text itself. */
        g_assert_cmpmem(g_bytes_get_data(bytes, NULL), g_bytes_get_size(bytes), texts[i],
                        strlen(texts[i]));
        g_assert_true(vmm_control_msg_decode(g_bytes_get_data(bytes, NULL),
                                             g_bytes_get_size(bytes), &again, &error));
        g_assert_true(vmm_control_msg_equal(&msg, &again));
        vmm_control_msg_clear(&msg);
        vmm_control_msg_clear(&again);
    }
}

static void test_msg_encode_errors(void)
{
    g_autoptr(GError) error = NULL;
    VmmControlMsg no_id = { .kind = VMM_CONTROL_REQUEST, .name = (char *)"x" };
    g_assert_null(vmm_control_msg_encode(&no_id, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_INVALID);
    g_clear_error(&error);

    VmmControlMsg bad_utf8 = { .kind = VMM_CONTROL_EVENT, .name = (char *)"e\xff" };
    g_assert_null(vmm_control_msg_encode(&bad_utf8, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_INVALID);
    g_clear_error(&error);

    g_autofree char *pad = g_malloc(VMM_CONTROL_MAX_MSG + 1);
    memset(pad, 'x', VMM_CONTROL_MAX_MSG);
    pad[VMM_CONTROL_MAX_MSG] = '\0';
    VmmControlMsg big = { .kind = VMM_CONTROL_EVENT, .name = (char *)"big",
                          .payload = json_object_new() };
    json_object_set_string_member(big.payload, "pad", pad);
    g_assert_null(vmm_control_msg_encode(&big, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG);
    json_object_unref(big.payload);
}

/* A reply too large to encode still answers the call, with an error. */
static void test_reply_too_large(Fixture *fx, gconstpointer data)
{
    open_both(fx);
    Call c;
    call_init(&c);
    JsonObject *args = json_object_new();
    g_autofree char *pad = g_malloc(VMM_CONTROL_MAX_MSG + 1);
    memset(pad, 'x', VMM_CONTROL_MAX_MSG);
    pad[VMM_CONTROL_MAX_MSG] = '\0';
    /* The call itself is too large: refused at once. */
    json_object_set_string_member(args, "pad", pad);
    g_autoptr(GError) error = NULL;
    g_assert_false(vmm_channel_call(fx->a.ch, "echo", args, NULL, 0, call_done, &c, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG);
    g_assert_false(c.done);
    do_call(&fx->a, "big-reply", NULL, NULL, 0, &c);
    RUN_UNTIL(fx, c.done);
    g_assert_error(c.error, VMM_ERROR, VMM_ERROR_FAILED);
    g_assert_nonnull(strstr(c.error->message, "exceed the limit"));
    call_clear(&c);
    /* And the channel goes on. */
    call_init(&c);
    do_call(&fx->a, "echo", NULL, NULL, 0, &c);
    RUN_UNTIL(fx, c.done);
    g_assert_no_error(c.error);
    call_clear(&c);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/control-msg/decode-errors", test_msg_decode_errors);
    g_test_add_func("/control-msg/round-trip", test_msg_round_trip);
    g_test_add_func("/control-msg/encode-errors", test_msg_encode_errors);
#define ADD(path, fn) g_test_add("/channel/" path, Fixture, NULL, fx_setup, fn, fx_teardown)
    ADD("hello", test_hello);
    ADD("call-with-fds", test_call_with_fds);
    ADD("echo-and-gerror", test_echo_and_gerror);
    ADD("events", test_events);
    ADD("many-out-of-order", test_many_out_of_order);
    ADD("unknown-command", test_unknown_command);
    ADD("peer-frees-in-request", test_peer_frees_in_request);
    ADD("free-in-reply", test_free_in_reply);
    ADD("free-in-ready", test_free_in_ready);
    ADD("free-in-closed", test_free_in_closed);
    ADD("free-with-pending", test_free_with_pending);
    ADD("not-a-seqpacket", test_not_a_seqpacket);
    ADD("reply-too-large", test_reply_too_large);
    ADD("raw/malformed", test_raw_malformed);
    ADD("raw/oversized", test_raw_oversized);
    ADD("raw/unknown-reply", test_raw_unknown_reply);
    ADD("raw/version-mismatch", test_raw_version_mismatch);
    ADD("raw/request-before-hello", test_raw_request_before_hello);
    ADD("raw/peer-close", test_raw_peer_close);
#undef ADD
    return g_test_run();
}
