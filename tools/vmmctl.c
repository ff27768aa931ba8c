/* vmmctl: a command-line QMP client (the role of QEMU's qmp-shell).
 *
 * It speaks standard QMP over a Unix stream socket, so it works against vmmd
 * and against QEMU alike: read the greeting, negotiate with qmp_capabilities,
 * then send commands and print their "return" values. See docs/vmmctl.md. */
#include "common/error.h"
#include "common/json-stream.h"
#include "tools/ctl-control.h"

#include <errno.h>
#include <json-glib/json-glib.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum {
    EXIT_OK = 0,
    EXIT_QMP_ERROR = 1,  /* the server answered with an error, or no such event came */
    EXIT_NO_SERVICE = 2, /* usage error, or no usable connection to the server */
};

#define DEFAULT_TIMEOUT_SEC 10.0
/* Bigger than any real reply (query-qmp-schema is a few hundred KiB), small
 * enough that a misbehaving peer cannot eat all memory. */
#define QMP_MAX_MESSAGE (64u << 20)
#define READ_CHUNK 65536

typedef struct {
    const char *socket_path;
    double timeout_sec; /* 0: wait without limit */
    gboolean raw;
    gboolean events;
    gboolean interactive;
    gboolean verbose;
    const char *wait_event;
    const char *control_path; /* --control: the control protocol, not QMP */
} Options;

typedef struct {
    int fd;
    const char *path;
    const Options *opt;
    VmmJsonStream in; /* QMP has no framing: split on JSON nesting */
    gboolean eof;
    guint next_id;
    JsonNode *awaited; /* the opt->wait_event event, once it has arrived */
} Qmp;

static gint64 deadline_after(const Options *opt)
{
    if (opt->timeout_sec <= 0)
        return G_MAXINT64;
    return g_get_monotonic_time() + (gint64)(opt->timeout_sec * G_USEC_PER_SEC);
}

/* Milliseconds left for poll(2): -1 for no limit, 0 once past. */
static int poll_timeout_ms(gint64 deadline)
{
    gint64 left;

    if (deadline == G_MAXINT64)
        return -1;
    left = deadline - g_get_monotonic_time();
    if (left <= 0)
        return 0;
    return (int)MIN((left + 999) / 1000, (gint64)G_MAXINT);
}

static void print_json(const Options *opt, JsonNode *node)
{
    g_autofree char *text = json_to_string(node, !opt->raw);
    printf("%s\n", text);
    fflush(stdout);
}

/* ---- connection ---------------------------------------------------------- */

static int connect_unix(const char *path, const Options *opt, GError **error)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    struct timeval tv = { 0 };
    int fd, r;

    if (strlen(path) >= sizeof(addr.sun_path)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "QMP socket '%s': path longer than %zu bytes", path, sizeof(addr.sun_path) - 1);
        return -1;
    }
    strcpy(addr.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        vmm_set_errno(error, errno, "QMP socket '%s': socket", path);
        return -1;
    }
    /* connect(2) on a Unix socket blocks while the listen backlog is full;
     * SO_SNDTIMEO bounds that wait and every later send. */
    if (opt->timeout_sec > 0) {
        tv.tv_sec = (time_t)opt->timeout_sec;
        tv.tv_usec = (suseconds_t)((opt->timeout_sec - (double)tv.tv_sec) * 1e6);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    do {
        r = connect(fd, (struct sockaddr *)&addr, sizeof(addr));
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        vmm_set_errno(error, errno, "cannot connect to QMP socket '%s'", path);
        close(fd);
        return -1;
    }
    return fd;
}

static gboolean qmp_send(Qmp *q, JsonNode *msg, GError **error)
{
    g_autofree char *text = json_to_string(msg, FALSE);
    g_autofree char *line = g_strconcat(text, "\n", NULL);
    size_t len = strlen(line), done = 0;

    if (q->opt->verbose)
        g_printerr("-> %s\n", text);
    while (done < len) {
        ssize_t n = send(q->fd, line + done, len - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return vmm_set_errno(error, errno, "QMP socket '%s': send", q->path);
        done += (size_t)n;
    }
    return TRUE;
}

/* Reads what is available into the input buffer; sets q->eof at the end. */
static gboolean qmp_fill(Qmp *q, GError **error)
{
    char buf[READ_CHUNK];
    ssize_t n;

    do {
        n = recv(q->fd, buf, sizeof(buf), MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return TRUE;
    if (n < 0)
        return vmm_set_errno(error, errno, "QMP socket '%s': receive", q->path);
    if (n == 0)
        q->eof = TRUE;
    vmm_json_stream_feed(&q->in, buf, (gsize)n);
    return TRUE;
}

static JsonNode *parse_object(const char *text, gssize len, const char *what, GError **error)
{
    g_autoptr(JsonParser) parser = json_parser_new_immutable();
    g_autoptr(GError) local = NULL;
    JsonNode *root;

    if (!json_parser_load_from_data(parser, text, len, &local)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: invalid JSON: %s", what,
                    local->message);
        return NULL;
    }
    root = json_parser_steal_root(parser);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: not a JSON object", what);
        g_clear_pointer(&root, json_node_unref);
        return NULL;
    }
    return root;
}

/* The next complete message already buffered, or NULL (and no error). */
static JsonNode *qmp_take(Qmp *q, GError **error)
{
    gboolean too_big;
    g_autofree char *text = vmm_json_stream_next(&q->in, &too_big);
    g_autofree char *what = NULL;
    JsonNode *msg;

    if (too_big) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG,
                    "QMP socket '%s': message longer than %u bytes", q->path, QMP_MAX_MESSAGE);
        return NULL;
    }
    if (!text)
        return NULL;
    what = g_strdup_printf("QMP socket '%s': message", q->path);
    msg = parse_object(text, -1, what, error);
    if (msg && q->opt->verbose)
        g_printerr("<- %s\n", text);
    return msg;
}

static gboolean set_closed_error(Qmp *q, GError **error)
{
    g_set_error(error, VMM_ERROR, VMM_ERROR_CLOSED, "QMP socket '%s': connection closed by the server",
                q->path);
    return FALSE;
}

/* Blocks until a message arrives, the peer closes, or DEADLINE passes
 * (then returns NULL with no error, so callers word the timeout). */
static JsonNode *qmp_read(Qmp *q, gint64 deadline, GError **error)
{
    for (;;) {
        GError *local = NULL;
        JsonNode *msg = qmp_take(q, &local);
        struct pollfd pfd = { .fd = q->fd, .events = POLLIN };
        int r;

        if (msg || local) {
            if (local)
                g_propagate_error(error, local);
            return msg;
        }
        if (q->eof) {
            set_closed_error(q, error);
            return NULL;
        }
        r = poll(&pfd, 1, poll_timeout_ms(deadline));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            vmm_set_errno(error, errno, "QMP socket '%s': poll", q->path);
            return NULL;
        }
        if (r == 0)
            return NULL;
        if (!qmp_fill(q, error))
            return NULL;
    }
}

/* ---- messages -------------------------------------------------------------- */

/* Members a peer may have filled with anything: look before taking. */
static JsonObject *member_object(JsonObject *o, const char *name)
{
    JsonNode *node = o ? json_object_get_member(o, name) : NULL;
    return node && JSON_NODE_HOLDS_OBJECT(node) ? json_node_get_object(node) : NULL;
}

static const char *member_string(JsonObject *o, const char *name, const char *fallback)
{
    JsonNode *node = o ? json_object_get_member(o, name) : NULL;
    if (!node || !JSON_NODE_HOLDS_VALUE(node) || json_node_get_value_type(node) != G_TYPE_STRING)
        return fallback;
    return json_node_get_string(node);
}

static gboolean is_event(JsonNode *msg)
{
    return json_object_has_member(json_node_get_object(msg), "event");
}

static gboolean is_reply(JsonNode *msg)
{
    JsonObject *o = json_node_get_object(msg);
    return json_object_has_member(o, "return") || json_object_has_member(o, "error");
}

/* A reply belongs to our request if it echoes our id. Replies without an id
 * are ours too: QEMU sends those for input it could not parse at all. */
static gboolean reply_matches(JsonNode *reply, JsonNode *id)
{
    JsonNode *got = json_object_get_member(json_node_get_object(reply), "id");
    return !got || !id || json_node_equal(got, id);
}


/* Prints events the user asked for and keeps the one --wait-event wants, to
 * print after the command's reply even if it came first. */
static void handle_event(Qmp *q, JsonNode *msg)
{
    const char *name = member_string(json_node_get_object(msg), "event", "");

    if (q->opt->events)
        print_json(q->opt, msg);
    if (q->opt->wait_event && !q->awaited && strcmp(name, q->opt->wait_event) == 0)
        q->awaited = json_node_ref(msg);
}

/* "error: CLASS: desc" on stderr, as qmp-shell shows it. */
static void print_error_reply(JsonNode *reply)
{
    JsonObject *err = member_object(json_node_get_object(reply), "error");

    fprintf(stderr, "error: %s: %s\n", member_string(err, "class", "GenericError"),
            member_string(err, "desc", "(no description)"));
    fflush(stderr);
}

static gboolean reply_is_error(JsonNode *reply)
{
    return json_object_has_member(json_node_get_object(reply), "error");
}

/* Gives REQUEST an id unless the user chose one; returns the id. */
static JsonNode *ensure_id(Qmp *q, JsonNode *request)
{
    JsonObject *o = json_node_get_object(request);

    if (!json_object_has_member(o, "id")) {
        g_autofree char *id = g_strdup_printf("vmmctl-%u", ++q->next_id);
        json_object_set_string_member(o, "id", id);
    }
    return json_object_get_member(o, "id");
}

/* Sends REQUEST and waits for its reply, passing events on meanwhile. */
static JsonNode *qmp_execute(Qmp *q, JsonNode *request, GError **error)
{
    JsonNode *id = ensure_id(q, request);
    gint64 deadline = deadline_after(q->opt);

    if (!qmp_send(q, request, error))
        return NULL;
    for (;;) {
        g_autoptr(JsonNode) msg = qmp_read(q, deadline, error);
        if (!msg) {
            if (error && !*error)
                g_set_error(error, VMM_ERROR, VMM_ERROR_CLOSED,
                            "QMP socket '%s': no reply within %g s", q->path, q->opt->timeout_sec);
            return NULL;
        }
        if (is_event(msg))
            handle_event(q, msg);
        else if (is_reply(msg) && reply_matches(msg, id))
            return g_steal_pointer(&msg);
        else if (q->opt->verbose)
            g_printerr("vmmctl: ignoring unexpected message\n");
    }
}

static JsonNode *new_command(const char *name)
{
    JsonObject *o = json_object_new();
    JsonNode *node = json_node_init_object(json_node_alloc(), o);

    json_object_set_string_member(o, "execute", name);
    json_object_unref(o);
    return node;
}

/* Greeting, then capability negotiation (no optional capabilities). */
static gboolean qmp_handshake(Qmp *q, GError **error)
{
    g_autoptr(JsonNode) greeting = qmp_read(q, deadline_after(q->opt), error);
    g_autoptr(JsonNode) request = NULL;
    g_autoptr(JsonNode) reply = NULL;

    if (!greeting) {
        if (error && !*error)
            g_set_error(error, VMM_ERROR, VMM_ERROR_CLOSED,
                        "QMP socket '%s': no greeting within %g s", q->path, q->opt->timeout_sec);
        return FALSE;
    }
    if (!json_object_has_member(json_node_get_object(greeting), "QMP")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                    "QMP socket '%s': first message is not a QMP greeting", q->path);
        return FALSE;
    }
    request = new_command("qmp_capabilities");
    reply = qmp_execute(q, request, error);
    if (!reply)
        return FALSE;
    if (reply_is_error(reply)) {
        JsonObject *err = member_object(json_node_get_object(reply), "error");
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                    "QMP socket '%s': qmp_capabilities refused: %s", q->path,
                    member_string(err, "desc", "(no description)"));
        return FALSE;
    }
    return TRUE;
}

/* ---- building requests from the command line ------------------------------ */

/* As qmp-shell: integers, true/false, JSON arrays and objects, else a string. */
static JsonNode *typed_value(const char *key, const char *text, GError **error)
{
    gint64 i;

    if (g_ascii_string_to_signed(text, 10, G_MININT64, G_MAXINT64, &i, NULL))
        return json_node_init_int(json_node_alloc(), i);
    if (strcmp(text, "true") == 0 || strcmp(text, "false") == 0)
        return json_node_init_boolean(json_node_alloc(), text[0] == 't');
    if (text[0] == '[' || text[0] == '{') {
        g_autoptr(JsonParser) parser = json_parser_new_immutable();
        g_autoptr(GError) local = NULL;
        if (!json_parser_load_from_data(parser, text, -1, &local)) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "argument '%s': invalid JSON value: %s",
                        key, local->message);
            return NULL;
        }
        return json_parser_steal_root(parser);
    }
    return json_node_init_string(json_node_alloc(), text);
}

/* Sets "a.b.c" as nested objects {"a":{"b":{"c":VALUE}}}; takes VALUE. */
static gboolean set_dotted(JsonObject *obj, const char *key, JsonNode *value, GError **error)
{
    g_auto(GStrv) parts = g_strsplit(key, ".", -1);
    guint n = g_strv_length(parts);

    for (guint i = 0; i < n; i++) {
        if (parts[i][0] == '\0') {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "argument '%s': empty key", key);
            goto fail;
        }
        if (i + 1 == n)
            break;
        if (!json_object_has_member(obj, parts[i])) {
            JsonObject *child = json_object_new();
            json_object_set_object_member(obj, parts[i], child);
            obj = child;
        } else if (JSON_NODE_HOLDS_OBJECT(json_object_get_member(obj, parts[i]))) {
            obj = json_object_get_object_member(obj, parts[i]);
        } else {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "argument '%s': '%s' is already set to a non-object value", key, parts[i]);
            goto fail;
        }
    }
    if (json_object_has_member(obj, parts[n - 1])) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "argument '%s': set more than once", key);
        goto fail;
    }
    json_object_set_member(obj, parts[n - 1], value);
    return TRUE;

fail:
    json_node_unref(value);
    return FALSE;
}

static gboolean add_argument(JsonObject *args, const char *arg, GError **error)
{
    const char *eq = strchr(arg, '=');
    g_autofree char *key = NULL;
    JsonNode *value;

    if (!eq || eq == arg) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "argument '%s': expected KEY=VALUE", arg);
        return FALSE;
    }
    key = g_strndup(arg, eq - arg);
    value = typed_value(key, eq + 1, error);
    return value && set_dotted(args, key, value, error);
}

static gboolean looks_like_json(const char *text)
{
    while (g_ascii_isspace(*text))
        text++;
    return *text == '{';
}

static JsonNode *request_from_json(const char *text, GError **error)
{
    JsonNode *request = parse_object(text, -1, "command", error);
    JsonObject *o;

    if (!request)
        return NULL;
    o = json_node_get_object(request);
    if (!json_object_has_member(o, "execute") && !json_object_has_member(o, "exec-oob")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "command: JSON object has no \"execute\" member");
        json_node_unref(request);
        return NULL;
    }
    return request;
}

/* ARGV: a raw JSON request, or COMMAND KEY=VALUE... */
static JsonNode *build_request(char **argv, int argc, GError **error)
{
    g_autoptr(JsonNode) request = NULL;
    JsonObject *args;

    if (argc == 1 && looks_like_json(argv[0]))
        return request_from_json(argv[0], error);
    if (looks_like_json(argv[0])) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "a raw JSON command must be the only argument");
        return NULL;
    }
    request = new_command(argv[0]);
    if (argc == 1)
        return g_steal_pointer(&request);
    args = json_object_new();
    json_object_set_object_member(json_node_get_object(request), "arguments", args);
    for (int i = 1; i < argc; i++) {
        if (!add_argument(args, argv[i], error))
            return NULL;
    }
    return g_steal_pointer(&request);
}

/* An interactive line: raw JSON, or shell-quoted "command key=value...". */
static JsonNode *request_from_line(const char *line, GError **error)
{
    g_auto(GStrv) argv = NULL;
    int argc;
    g_autoptr(GError) local = NULL;

    if (looks_like_json(line))
        return request_from_json(line, error);
    if (!g_shell_parse_argv(line, &argc, &argv, &local)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "cannot split line: %s", local->message);
        return NULL;
    }
    return build_request(argv, argc, error);
}

/* ---- modes ---------------------------------------------------------------- */

/* Prints the reply; returns the exit status it stands for. */
static int show_reply(Qmp *q, JsonNode *reply)
{
    if (reply_is_error(reply)) {
        print_error_reply(reply);
        return EXIT_QMP_ERROR;
    }
    print_json(q->opt, json_object_get_member(json_node_get_object(reply), "return"));
    return EXIT_OK;
}

static int wait_for_event(Qmp *q)
{
    gint64 deadline = deadline_after(q->opt);
    g_autoptr(GError) error = NULL;

    while (!q->awaited) {
        g_autoptr(JsonNode) msg = qmp_read(q, deadline, &error);
        if (error) {
            g_printerr("vmmctl: %s\n", error->message);
            return EXIT_NO_SERVICE;
        }
        if (!msg) {
            g_printerr("vmmctl: QMP socket '%s': no %s event within %g s\n", q->path,
                       q->opt->wait_event, q->opt->timeout_sec);
            return EXIT_QMP_ERROR;
        }
        if (is_event(msg))
            handle_event(q, msg);
    }
    if (!q->opt->events)
        print_json(q->opt, q->awaited);
    return EXIT_OK;
}

static int run_once(Qmp *q, char **argv, int argc)
{
    g_autoptr(GError) error = NULL;
    g_autoptr(JsonNode) request = NULL;
    g_autoptr(JsonNode) reply = NULL;
    int status;

    if (argc > 0) {
        request = build_request(argv, argc, &error);
        if (!request) {
            g_printerr("vmmctl: %s\n", error->message);
            return EXIT_NO_SERVICE;
        }
        reply = qmp_execute(q, request, &error);
        if (!reply) {
            g_printerr("vmmctl: %s\n", error->message);
            return EXIT_NO_SERVICE;
        }
        status = show_reply(q, reply);
        if (status != EXIT_OK)
            return status;
    }
    return q->opt->wait_event ? wait_for_event(q) : EXIT_OK;
}

/* Interactive state: one request in flight at a time, so replies print in
 * the order of the lines that asked for them. */
typedef struct {
    Qmp *q;
    GString *input;
    gboolean input_eof;
    JsonNode *pending_id; /* owned copy of the id we wait for, or NULL */
    gint64 pending_deadline;
    gboolean prompt;
    gboolean prompted;
    int status;
} Shell;

/* The next whole line of input; at end of input also a last unterminated one. */
static char *shell_take_line(Shell *sh)
{
    char *nl = memchr(sh->input->str, '\n', sh->input->len);
    char *line;

    if (nl) {
        line = g_strndup(sh->input->str, nl - sh->input->str);
        g_string_erase(sh->input, 0, nl - sh->input->str + 1);
        return line;
    }
    if (sh->input_eof && sh->input->len > 0) {
        line = g_strdup(sh->input->str);
        g_string_truncate(sh->input, 0);
        return line;
    }
    return NULL;
}

static gboolean shell_send_line(Shell *sh, const char *line, GError **error)
{
    g_autofree char *text = g_strstrip(g_strdup(line));
    g_autoptr(JsonNode) request = NULL;
    g_autoptr(GError) local = NULL;

    sh->prompted = FALSE;
    if (text[0] == '\0' || text[0] == '#')
        return TRUE;
    request = request_from_line(text, &local);
    if (!request) {
        g_printerr("vmmctl: %s\n", local->message);
        sh->status = EXIT_QMP_ERROR;
        return TRUE;
    }
    sh->pending_id = json_node_copy(ensure_id(sh->q, request));
    sh->pending_deadline = deadline_after(sh->q->opt);
    return qmp_send(sh->q, request, error);
}

static void shell_handle_message(Shell *sh, JsonNode *msg)
{
    if (is_event(msg)) {
        print_json(sh->q->opt, msg);
    } else if (sh->pending_id && is_reply(msg) && reply_matches(msg, sh->pending_id)) {
        if (show_reply(sh->q, msg) != EXIT_OK)
            sh->status = EXIT_QMP_ERROR;
        g_clear_pointer(&sh->pending_id, json_node_unref);
    }
}

static gboolean shell_read_input(Shell *sh, GError **error)
{
    char buf[4096];
    ssize_t n;

    do {
        n = read(STDIN_FILENO, buf, sizeof(buf));
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return vmm_set_errno(error, errno, "standard input");
    if (n == 0)
        sh->input_eof = TRUE;
    g_string_append_len(sh->input, buf, n);
    return TRUE;
}

static gboolean shell_drain_socket(Shell *sh, GError **error)
{
    JsonNode *msg;

    if (!qmp_fill(sh->q, error))
        return FALSE;
    while ((msg = qmp_take(sh->q, error)) != NULL) {
        shell_handle_message(sh, msg);
        json_node_unref(msg);
    }
    return !(error && *error);
}

/* One round: send the next line if nothing is in flight, else wait for the
 * socket (and for stdin while idle). FALSE when the session is over. */
static gboolean shell_step(Shell *sh, GError **error)
{
    struct pollfd pfd[2] = {
        { .fd = sh->q->fd, .events = POLLIN },
        { .fd = STDIN_FILENO, .events = POLLIN },
    };
    nfds_t nfds;
    int r;

    if (!sh->pending_id) {
        g_autofree char *line = shell_take_line(sh);
        if (line)
            return shell_send_line(sh, line, error);
        if (sh->input_eof)
            return FALSE;
        if (sh->prompt && !sh->prompted) {
            printf("(QMP) ");
            fflush(stdout);
            sh->prompted = TRUE;
        }
    }
    if (sh->q->eof) {
        if (sh->pending_id)
            return set_closed_error(sh->q, error);
        g_printerr("vmmctl: QMP socket '%s': connection closed by the server\n", sh->q->path);
        return FALSE;
    }
    nfds = sh->pending_id ? 1 : 2;
    r = poll(pfd, nfds, sh->pending_id ? poll_timeout_ms(sh->pending_deadline) : -1);
    if (r < 0 && errno == EINTR)
        return TRUE;
    if (r < 0)
        return vmm_set_errno(error, errno, "poll");
    if (r == 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_CLOSED, "QMP socket '%s': no reply within %g s",
                    sh->q->path, sh->q->opt->timeout_sec);
        return FALSE;
    }
    if (pfd[0].revents && !shell_drain_socket(sh, error))
        return FALSE;
    if (nfds == 2 && pfd[1].revents)
        return shell_read_input(sh, error);
    return TRUE;
}

static int run_interactive(Qmp *q)
{
    g_autoptr(GError) error = NULL;
    Shell sh = { .q = q, .input = g_string_new(NULL), .prompt = isatty(STDIN_FILENO) };

    while (shell_step(&sh, &error))
        ;
    if (sh.prompt)
        printf("\n");
    g_string_free(sh.input, TRUE);
    g_clear_pointer(&sh.pending_id, json_node_unref);
    if (error) {
        g_printerr("vmmctl: %s\n", error->message);
        return EXIT_NO_SERVICE;
    }
    return sh.status;
}

/* ---- main ------------------------------------------------------------------- */

static gboolean parse_options(int *argc, char ***argv, Options *opt, GError **error)
{
    g_autofree char *socket_path = NULL;
    g_autofree char *wait_event = NULL;
    g_autofree char *control_path = NULL;
    gboolean version = FALSE;
    GOptionEntry entries[] = {
        { "socket", 's', 0, G_OPTION_ARG_FILENAME, &socket_path,
          "QMP Unix socket (default: $VMMCTL_SOCKET)", "PATH" },
        { "timeout", 't', 0, G_OPTION_ARG_DOUBLE, &opt->timeout_sec,
          "Seconds to wait for the greeting, each reply and --wait-event (0: no limit; default 10)",
          "SEC" },
        { "raw", 'r', 0, G_OPTION_ARG_NONE, &opt->raw, "Print compact JSON", NULL },
        { "events", 'e', 0, G_OPTION_ARG_NONE, &opt->events,
          "Also print events that arrive before the reply", NULL },
        { "interactive", 'i', 0, G_OPTION_ARG_NONE, &opt->interactive,
          "Read commands from standard input", NULL },
        { "wait-event", 'w', 0, G_OPTION_ARG_STRING, &wait_event,
          "Wait for the event NAME (after COMMAND, if any) and print it", "NAME" },
        { "verbose", 'v', 0, G_OPTION_ARG_NONE, &opt->verbose,
          "Show every message sent and received on stderr", NULL },
        { "control", 'c', 0, G_OPTION_ARG_FILENAME, &control_path,
          "Send COMMAND over vmm's control protocol socket PATH (blockd --daemon) instead of QMP",
          "PATH" },
        { "version", 'V', 0, G_OPTION_ARG_NONE, &version, "Print the version and exit", NULL },
        { NULL },
    };
    g_autoptr(GOptionContext) ctx =
        g_option_context_new("[COMMAND [KEY=VALUE...] | '{\"execute\": ...}'] - QMP client");

    g_option_context_add_main_entries(ctx, entries, NULL);
    g_option_context_set_description(
        ctx, "Values are typed: integers, true/false, JSON arrays/objects, else strings;\n"
             "a.b=1 sets nested objects. Without COMMAND (or with -i), commands are read\n"
             "from standard input, one per line. Exit status: 0 success, 1 the server\n"
             "returned an error (or --wait-event timed out), 2 usage or connection failure.\n");
    if (!g_option_context_parse(ctx, argc, argv, error))
        return FALSE;
    if (version) {
        printf("vmmctl %s\n", VMM_VERSION_STRING);
        exit(EXIT_OK);
    }
    if (opt->timeout_sec < 0 || opt->timeout_sec > 1e6) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "--timeout %g: out of range 0..1000000",
                    opt->timeout_sec);
        return FALSE;
    }
    opt->control_path = g_steal_pointer(&control_path);
    if (opt->control_path) {
        if (*argc < 2 || opt->interactive || opt->wait_event) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "--control takes one COMMAND, and neither -i nor --wait-event");
            return FALSE;
        }
        return TRUE;
    }
    opt->socket_path = socket_path ? g_steal_pointer(&socket_path) : g_strdup(g_getenv("VMMCTL_SOCKET"));
    opt->wait_event = g_steal_pointer(&wait_event);
    if (!opt->socket_path || !*opt->socket_path) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "no QMP socket: use --socket PATH or set VMMCTL_SOCKET");
        return FALSE;
    }
    if (opt->interactive && (*argc > 1 || opt->wait_event)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "--interactive takes neither a command nor --wait-event");
        return FALSE;
    }
    return TRUE;
}

/* --control: the same COMMAND KEY=VALUE... form, sent as a control request. */
static int run_control(Options *opt, char **argv, int argc)
{
    g_autoptr(GError) error = NULL;
    g_autoptr(JsonNode) request = build_request(argv, argc, &error);
    if (!request) {
        g_printerr("vmmctl: %s\n", error->message);
        return EXIT_NO_SERVICE;
    }
    JsonObject *r = json_node_get_object(request);
    const char *command = json_object_get_string_member(r, "execute");
    g_autoptr(JsonObject) args = json_object_has_member(r, "arguments")
                                     ? json_object_ref(json_object_get_object_member(r, "arguments"))
                                     : json_object_new();
    int status = vmmctl_control_call(opt->control_path, opt->timeout_sec, command, args, opt->raw);
    g_free((char *)opt->control_path);
    return status;
}

int main(int argc, char **argv)
{
    Options opt = { .timeout_sec = DEFAULT_TIMEOUT_SEC };
    g_autoptr(GError) error = NULL;
    Qmp q = { 0 };
    int status;

    if (!parse_options(&argc, &argv, &opt, &error)) {
        g_printerr("vmmctl: %s\nTry 'vmmctl --help'.\n", error->message);
        return EXIT_NO_SERVICE;
    }
    if (opt.control_path)
        return run_control(&opt, argv + 1, argc - 1);
    if (argc == 1 && !opt.wait_event)
        opt.interactive = TRUE;

    q.opt = &opt;
    q.path = opt.socket_path;
    vmm_json_stream_init(&q.in, QMP_MAX_MESSAGE);
    q.fd = connect_unix(opt.socket_path, &opt, &error);
    if (q.fd < 0 || !qmp_handshake(&q, &error)) {
        g_printerr("vmmctl: %s\n", error->message);
        status = EXIT_NO_SERVICE;
    } else if (opt.interactive) {
        status = run_interactive(&q);
    } else {
        status = run_once(&q, argv + 1, argc - 1);
    }

    if (q.fd >= 0)
        close(q.fd);
    vmm_json_stream_clear(&q.in);
    g_clear_pointer(&q.awaited, json_node_unref);
    g_free((char *)opt.socket_path);
    g_free((char *)opt.wait_event);
    return status;
}
