/* The spawner: a small process forked from vmmd before vmmd loads its seccomp
 * filter. It is the only process of a VM that may fork and exec, so that
 * -sandbox spawn=deny (which applies to vmmd and every helper) does not stop vmmd
 * from restarting a crashed helper. It starts helpers with CLONE_PARENT: they
 * are vmmd's children, and vmmd reaps them and reads their exit status.
 *
 * It speaks the control protocol (proto/README.md) with blocking I/O:
 *   {"id":N,"command":"spawn","args":{"argv":[...]}} + fds -> {"id":N,"return":{"pid":P}}
 * The fds of the request become fds 3, 4, ... of the new process. */
#include "vmmd/vmmd.h"
#include "vmmd/fsdev-run.h"
#include "common/error.h"
#include "common/fdpass.h"
#include "common/log.h"
#include "common/profiles.h"
#include "common/spawn.h"
#include "proto/control.h"

#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

static void spawner_send(int sock, JsonObject *msg)
{
    g_autoptr(JsonNode) node = json_node_init_object(json_node_alloc(), msg);
    g_autofree char *text = json_to_string(node, FALSE);
    g_autoptr(GError) err = NULL;
    if (vmm_send_with_fds(sock, text, strlen(text), NULL, 0, &err) < 0)
        vmm_error("spawner: send: %s", err->message);
}

static void spawner_send_hello(int sock)
{
    JsonObject *hello = json_object_new();
    json_object_set_int_member(hello, "protocol", VMM_CONTROL_PROTOCOL);
    json_object_set_string_member(hello, "role", "spawner");
    json_object_set_int_member(hello, "pid", getpid());
    g_autoptr(JsonObject) msg = json_object_new();
    json_object_set_object_member(msg, "hello", hello);
    spawner_send(sock, msg);
}

static void spawner_reply(int sock, JsonNode *id, int pid, const GError *error)
{
    g_autoptr(JsonObject) msg = json_object_new();
    json_object_set_member(msg, "id", json_node_copy(id));
    if (error) {
        JsonObject *e = json_object_new();
        json_object_set_string_member(e, "class", VMM_ERR_GENERIC);
        json_object_set_string_member(e, "desc", error->message);
        json_object_set_object_member(msg, "error", e);
    } else {
        JsonObject *r = json_object_new();
        json_object_set_int_member(r, "pid", pid);
        json_object_set_object_member(msg, "return", r);
    }
    spawner_send(sock, msg);
}

static int spawn_from_request(JsonObject *args, const int *fds, guint nfds, GError **error)
{
    JsonArray *argv_arr = json_object_has_member(args, "argv")
                              ? json_object_get_array_member(args, "argv") : NULL;
    guint argc = argv_arr ? json_array_get_length(argv_arr) : 0;
    if (argc == 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "spawn: 'argv' must be a non-empty array");
        return -1;
    }
    g_autoptr(GPtrArray) argv = g_ptr_array_new();
    for (guint i = 0; i < argc; i++) {
        const char *s = json_array_get_string_element(argv_arr, i);
        if (!s) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "spawn: argv[%u] is not a string", i);
            return -1;
        }
        g_ptr_array_add(argv, (gpointer)s);
    }
    g_ptr_array_add(argv, NULL);
    VmmFdMap map[VMM_MAX_FDS];
    for (guint i = 0; i < nfds; i++) {
        map[i].parent_fd = fds[i];
        map[i].child_fd = 3 + (int)i;
    }
    return vmm_spawn((const char *const *)argv->pdata, NULL, map, nfds, TRUE, error);
}

static void spawner_handle(int sock, const char *buf, gssize len, int *fds, guint nfds)
{
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(GError) err = NULL;
    if (!json_parser_load_from_data(parser, buf, len, &err) ||
        !JSON_NODE_HOLDS_OBJECT(json_parser_get_root(parser))) {
        vmm_error("spawner: malformed request from vmmd");
        return;
    }
    JsonObject *msg = json_node_get_object(json_parser_get_root(parser));
    if (json_object_has_member(msg, "hello"))
        return;
    JsonNode *id = json_object_get_member(msg, "id");
    const char *cmd = json_object_get_string_member_with_default(msg, "command", "");
    if (!id || !g_str_equal(cmd, "spawn")) {
        g_autoptr(JsonNode) null_id = json_node_new(JSON_NODE_NULL);
        g_set_error(&err, VMM_ERROR, VMM_ERROR_NOT_FOUND, "spawner: unknown request '%s'", cmd);
        spawner_reply(sock, id ? id : null_id, -1, err);
        return;
    }
    JsonObject *args = json_object_get_object_member(msg, "args");
    g_autoptr(JsonObject) empty = json_object_new();
    int pid = spawn_from_request(args ? args : empty, fds, nfds, &err);
    spawner_reply(sock, id, pid, pid < 0 ? err : NULL);
}

VmmSandboxPolicy vmm_spawner_policy(const VmmSandboxPolicy *vm_policy)
{
    /* Spawning is this process's whole job: spawn=deny binds the helpers it
     * starts (they load their own filters), not the spawner. */
    VmmSandboxPolicy own = *vm_policy;
    own.spawn = VMM_SANDBOX_ALLOW;
    return own;
}

/* KEEP_FILE_CAPS: an fsd it starts serves security_model=passthrough, for
 * which it needs the file capabilities; they can only come from here (a
 * root exec under no_new_privs gets no more than its parent permits), so
 * the spawner keeps them permitted, not effective. Other helpers drop them
 * on entering their sandbox. */
static G_NORETURN void spawner_main(int sock, const VmmSandboxPolicy *policy, gboolean keep_file_caps)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    prctl(PR_SET_NAME, "vmmd-spawner");
    vmm_log_init("vmmd-spawner");
    VmmSandboxPolicy own = vmm_spawner_policy(policy);
    g_autoptr(GError) err = NULL;
    gsize ncaps = keep_file_caps ? VMM_N_FILE_CAPS : 0;
    if (own.enabled &&
        !vmm_sandbox_enter_keeping(vmm_profile_spawner(), &own, vmm_file_caps, ncaps, FALSE, &err)) {
        vmm_error("sandbox: %s", err->message);
        _exit(1);
    }
    spawner_send_hello(sock);
    char *buf = g_malloc(VMM_CONTROL_MAX_MSG + 1);
    for (;;) {
        int fds[VMM_MAX_FDS];
        guint nfds = 0;
        g_clear_error(&err);
        gssize n = vmm_recv_with_fds(sock, buf, VMM_CONTROL_MAX_MSG + 1, fds, VMM_MAX_FDS, &nfds, &err);
        if (n == 0)
            _exit(0);
        if (n < 0) {
            vmm_error("spawner: %s", err->message);
            continue;
        }
        spawner_handle(sock, buf, n, fds, nfds);
        vmm_close_fds(fds, nfds);
    }
}

/* Requests in flight: id -> callback. */
typedef struct {
    Vmmd *d;
    VmmSpawnDoneFn done;
    gpointer user;
} SpawnCall;

static void on_spawn_reply(VmmChannel *ch, JsonObject *result, const GError *error,
                           int *fds, guint nfds, gpointer user)
{
    SpawnCall *c = user;
    int pid = result ? (int)json_object_get_int_member_with_default(result, "pid", -1) : -1;
    c->done(c->d, pid, error, c->user);
    g_free(c);
}

void vmm_spawner_spawn(Vmmd *d, const char *const *argv, const int *fds, guint nfds,
                       VmmSpawnDoneFn done, gpointer user)
{
    JsonObject *args = json_object_new();
    JsonArray *arr = json_array_new();
    for (const char *const *a = argv; *a; a++)
        json_array_add_string_element(arr, *a);
    json_object_set_array_member(args, "argv", arr);
    SpawnCall *c = g_new0(SpawnCall, 1);
    c->d = d;
    c->done = done;
    c->user = user;
    g_autoptr(GError) err = NULL;
    if (!vmm_channel_call(d->spawner, "spawn", args, fds, nfds, on_spawn_reply, c, &err)) {
        done(d, -1, err, user);
        g_free(c);
    }
}

static void on_spawner_closed(VmmChannel *ch, const GError *why, gpointer user)
{
    Vmmd *d = user;
    if (!d->quitting) {
        vmm_error("the spawner is gone (%s): helpers can no longer be restarted; stopping",
                  why ? why->message : "closed");
        d->exit_code = 1;
        vmmd_request_quit(d, "host-error");
    }
}

static const VmmChannelOps spawner_ops = {
    .on_closed = on_spawner_closed,
};

gboolean vmm_spawner_start(Vmmd *d, GError **error)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return vmm_set_errno(error, errno, "spawner: socketpair");
    pid_t pid = fork();
    if (pid < 0) {
        close(sv[0]);
        close(sv[1]);
        return vmm_set_errno(error, errno, "spawner: fork");
    }
    if (pid == 0) {
        close(sv[0]);
        spawner_main(sv[1], &d->config->sandbox, vmm_fsdev_needs_passthrough(d));
    }
    close(sv[1]);
    d->spawner_pid = pid;
    d->spawner = vmm_channel_new(d->loop, sv[0], "vmmd", NULL, &spawner_ops, d, error);
    return d->spawner != NULL;
}
