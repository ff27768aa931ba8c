/* blockd standalone: serve one image over NBD, with qemu-nbd's options.
 *   blockd [OPTIONS] FILE
 * It exits when the last client disconnects, unless --persistent. */
#include "blockd/daemon.h"
#include "blockd/block.h"
#include "blockd/nbd-server.h"
#include "proto/nbd.h"
#include "common/error.h"
#include "common/log.h"
#include "common/opts.h"
#include "common/profiles.h"
#include "common/sandbox.h"
#include "common/sdnotify.h"

#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    int port;
    char *bind, *socket_path, *export_name, *description, *format;
    gboolean read_only, snapshot, nocache, persistent, image_opts, fork, allocation_depth;
    int shared;             /* clients at once (qemu-nbd: default 1) */
    char *cache, *aio, *discard, *detect_zeroes, *tls_creds, *tls_authz, *pid_file;
    char **objects;
    char **files;
    char *sandbox;          /* -sandbox syntax; NULL: "on" */
    gboolean version, verbose;
} NbdCli;

static const char *blockd_usage_summary =
    "Serve FILE over NBD (the options of qemu-nbd).\n"
    "It exits when the last client disconnects, unless --persistent is given.\n"
    "Started by vmmd with --control-fd it is a sandboxed helper instead.";

static gboolean parse_cli(NbdCli *c, int *argc, char ***argv, GError **error)
{
    GOptionEntry entries[] = {
        { "port", 'p', 0, G_OPTION_ARG_INT, &c->port, "TCP port to listen on (default 10809)", "PORT" },
        { "bind", 'b', 0, G_OPTION_ARG_STRING, &c->bind, "address to listen on (default 0.0.0.0)", "IFACE" },
        { "socket", 'k', 0, G_OPTION_ARG_FILENAME, &c->socket_path, "Unix socket to listen on", "PATH" },
        { "export-name", 'x', 0, G_OPTION_ARG_STRING, &c->export_name, "export name (default \"\")", "NAME" },
        { "description", 'D', 0, G_OPTION_ARG_STRING, &c->description, "export description", "TEXT" },
        { "format", 'f', 0, G_OPTION_ARG_STRING, &c->format, "image format (default: probe)", "FORMAT" },
        { "read-only", 'r', 0, G_OPTION_ARG_NONE, &c->read_only, "export read-only", NULL },
        { "snapshot", 's', 0, G_OPTION_ARG_NONE, &c->snapshot, "writes go to a temporary overlay", NULL },
        { "nocache", 'n', 0, G_OPTION_ARG_NONE, &c->nocache, "same as --cache=none", NULL },
        { "cache", 0, 0, G_OPTION_ARG_STRING, &c->cache, "none, writeback, writethrough, directsync, unsafe", "MODE" },
        { "aio", 0, 0, G_OPTION_ARG_STRING, &c->aio, "threads (default), native, io_uring", "MODE" },
        { "discard", 0, 0, G_OPTION_ARG_STRING, &c->discard, "ignore (default) or unmap", "MODE" },
        { "detect-zeroes", 0, 0, G_OPTION_ARG_STRING, &c->detect_zeroes, "off, on, unmap", "MODE" },
        { "image-opts", 0, 0, G_OPTION_ARG_NONE, &c->image_opts, "FILE is an option string", NULL },
        { "object", 0, 0, G_OPTION_ARG_STRING_ARRAY, &c->objects,
          "secret, tls-creds-x509, tls-creds-psk or authz-simple object", "TYPE,id=ID,..." },
        { "shared", 'e', 0, G_OPTION_ARG_INT, &c->shared, "clients served at once (default 1)", "NUM" },
        { "persistent", 't', 0, G_OPTION_ARG_NONE, &c->persistent, "do not exit on the last disconnect", NULL },
        { "allocation-depth", 'A', 0, G_OPTION_ARG_NONE, &c->allocation_depth,
          "offer the qemu:allocation-depth context", NULL },
        { "tls-creds", 0, 0, G_OPTION_ARG_STRING, &c->tls_creds, "id of a tls-creds object: TLS required", "ID" },
        { "tls-authz", 0, 0, G_OPTION_ARG_STRING, &c->tls_authz, "id of an authz-simple object", "ID" },
        { "fork", 0, 0, G_OPTION_ARG_NONE, &c->fork, "detach once listening", NULL },
        { "pid-file", 0, 0, G_OPTION_ARG_FILENAME, &c->pid_file, "write the pid to PATH", "PATH" },
        { "sandbox", 0, 0, G_OPTION_ARG_STRING, &c->sandbox,
          "seccomp policy once serving, as vmmd's -sandbox (default on)", "on|off[,...]" },
        { "verbose", 'v', 0, G_OPTION_ARG_NONE, &c->verbose, "log each client", NULL },
        { "version", 'V', 0, G_OPTION_ARG_NONE, &c->version, "print the version", NULL },
        { G_OPTION_REMAINING, 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &c->files, NULL, "FILE" },
        { NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("FILE");
    g_option_context_set_summary(ctx, blockd_usage_summary);
    g_option_context_add_main_entries(ctx, entries, NULL);
    return g_option_context_parse(ctx, argc, argv, error);
}

/* --object TYPE,id=ID,...: kept as parsed trees, looked up by id. */
static JsonObject *find_object(GPtrArray *objects, const char *id, const char *what, GError **error)
{
    for (guint i = 0; i < objects->len; i++) {
        JsonObject *o = objects->pdata[i];
        if (g_strcmp0(vmm_opts_get_string(o, "id", NULL), id) == 0)
            return o;
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_NOT_FOUND, "%s: no object with id '%s' (add it with --object)",
                what, id);
    return NULL;
}

static GPtrArray *parse_objects(char **specs, GError **error)
{
    static const VmmOptSpec object_spec = { "object", "qom-type", NULL };
    static const char *const known[] = { "secret", "tls-creds-x509", "tls-creds-psk", "authz-simple", NULL };
    g_autoptr(GPtrArray) objects = g_ptr_array_new_with_free_func((GDestroyNotify)json_object_unref);
    for (char **s = specs; s && *s; s++) {
        JsonObject *o = vmm_opts_parse(&object_spec, *s, error);
        if (!o)
            return NULL;
        g_ptr_array_add(objects, o);
        const char *type = vmm_opts_get_string(o, "qom-type", "");
        if (!g_strv_contains(known, type)) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                        "--object %s: blockd supports secret, tls-creds-x509, tls-creds-psk and authz-simple", type);
            return NULL;
        }
        if (!vmm_opts_has(o, "id")) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "--object %s: Parameter 'id' is missing", type);
            return NULL;
        }
    }
    return g_steal_pointer(&objects);
}

static NbdTlsCreds *tls_creds_from_object(JsonObject *o, GError **error)
{
    const char *type = vmm_opts_get_string(o, "qom-type", "");
    const char *dir = vmm_opts_get_string(o, "dir", NULL);
    if (!dir) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "--object %s: 'dir' is required", type);
        return NULL;
    }
    if (g_strcmp0(vmm_opts_get_string(o, "endpoint", "server"), "server") != 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "--object %s: blockd needs endpoint=server credentials", type);
        return NULL;
    }
    if (g_str_equal(type, "tls-creds-x509")) {
        /* As QEMU, a server verifies client certificates unless told not to. */
        gboolean verify = TRUE;
        const char *v = vmm_opts_get_string(o, "verify-peer", NULL);
        if (v && !vmm_parse_bool("object", "verify-peer", v, &verify, error))
            return NULL;
        return nbd_tls_creds_new_x509(dir, NBD_TLS_SERVER, verify, error);
    }
    if (g_str_equal(type, "tls-creds-psk")) {
        g_autofree char *keys = g_build_filename(dir, "keys.psk", NULL);
        return nbd_tls_creds_new_psk(keys, NBD_TLS_SERVER, NULL, error);
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "--tls-creds: object is a %s, not TLS credentials", type);
    return NULL;
}

static gboolean setup_tls(NbdServer *server, NbdCli *c, GPtrArray *objects, GError **error)
{
    if (!c->tls_creds) {
        if (c->tls_authz) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "--tls-authz is not permitted without --tls-creds");
            return FALSE;
        }
        return nbd_server_set_tls(server, NBD_TLS_OFF, NULL, NULL, error);
    }
    JsonObject *co = find_object(objects, c->tls_creds, "--tls-creds", error);
    if (!co)
        return FALSE;
    NbdTlsCreds *creds = tls_creds_from_object(co, error);
    if (!creds)
        return FALSE;
    g_autoptr(GPtrArray) authz = g_ptr_array_new();
    if (c->tls_authz) {
        JsonObject *ao = find_object(objects, c->tls_authz, "--tls-authz", error);
        if (!ao) {
            nbd_tls_creds_unref(creds);
            return FALSE;
        }
        const char *identity = vmm_opts_get_string(ao, "identity", NULL);
        if (identity)
            g_ptr_array_add(authz, (gpointer)identity);
    }
    g_ptr_array_add(authz, NULL);
    gboolean ok = nbd_server_set_tls(server, NBD_TLS_REQUIRE, creds,
                                     c->tls_authz ? (const char *const *)authz->pdata : NULL, error);
    nbd_tls_creds_unref(creds);
    return ok;
}

static VmmBlockDev *open_image(NbdCli *c, GError **error)
{
    g_autoptr(JsonObject) opts = NULL;
    const char *filename = c->files[0];
    if (c->image_opts) {
        static const VmmOptSpec image_spec = { "image-opts", NULL, NULL };
        opts = vmm_opts_parse(&image_spec, filename, error);
        if (!opts)
            return NULL;
        filename = NULL;
    } else {
        opts = json_object_new();
    }
    if (c->nocache && !c->cache)
        json_object_set_string_member(opts, "cache", "none");
    if (c->cache)
        json_object_set_string_member(opts, "cache", c->cache);
    if (c->aio)
        json_object_set_string_member(opts, "aio", c->aio);
    if (c->discard)
        json_object_set_string_member(opts, "discard", c->discard);
    if (c->detect_zeroes)
        json_object_set_string_member(opts, "detect-zeroes", c->detect_zeroes);
    int flags = (c->read_only ? 0 : VMM_BDRV_O_RDWR) | (c->snapshot ? VMM_BDRV_O_SNAPSHOT : 0);
    if (c->snapshot)
        flags |= VMM_BDRV_O_RDWR;
    return vmm_block_open(filename, c->image_opts ? NULL : c->format, opts, flags, error);
}

static char *listen_address(NbdCli *c)
{
    if (c->socket_path)
        return g_strdup_printf("unix:%s", c->socket_path);
    const char *host = c->bind ? c->bind : "0.0.0.0";
    gboolean v6 = strchr(host, ':') && host[0] != '[';
    return g_strdup_printf(v6 ? "[%s]:%d" : "%s:%d", host, c->port ? c->port : NBD_DEFAULT_PORT);
}

typedef struct {
    GMainLoop *loop;
    gboolean persistent;
} RunState;

static gboolean quit_loop(gpointer data)
{
    g_main_loop_quit(((RunState *)data)->loop);
    return G_SOURCE_REMOVE;
}

static void on_client_done(NbdServer *server, guint clients, gpointer opaque)
{
    RunState *rs = opaque;
    if (clients == 0 && !rs->persistent)
        g_idle_add(quit_loop, rs);
}

/* --fork: the parent returns only once the child listens (or failed). */
static int fork_ready_fd = -1;
static int fork_null_fd = -1;   /* opened now: the sandbox allows no open later */

static gboolean fork_now(GError **error)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return vmm_set_errno(error, errno, "--fork: pipe");
    pid_t pid = fork();
    if (pid < 0)
        return vmm_set_errno(error, errno, "--fork");
    if (pid > 0) {
        close(p[1]);
        char ok = 1;
        _exit(read(p[0], &ok, 1) == 1 && ok == 0 ? 0 : 1);
    }
    close(p[0]);
    setsid();
    fork_ready_fd = p[1];
    fork_null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    return TRUE;
}

static void fork_report(char status)
{
    if (fork_ready_fd < 0)
        return;
    if (status == 0 && fork_null_fd >= 0) {
        dup2(fork_null_fd, 0);
        dup2(fork_null_fd, 1);
        dup2(fork_null_fd, 2);
    }
    if (fork_null_fd >= 0)
        close(fork_null_fd);
    fork_null_fd = -1;
    (void)!write(fork_ready_fd, &status, 1);
    close(fork_ready_fd);
    fork_ready_fd = -1;
}

/* Everything blockd opens by name (the image chain, the credentials, the
 * socket, the pid file) is open by now: from here on it only does I/O on what
 * it holds, so a compromised connection reaches no other file. */
static gboolean enter_sandbox(NbdCli *c, GError **error)
{
    VmmSandboxPolicy policy;
    vmm_sandbox_policy_init(&policy);
    if (!vmm_sandbox_policy_parse(c->sandbox ? c->sandbox : "on", &policy, error)) {
        g_prefix_error(error, "--sandbox: ");
        return FALSE;
    }
    return vmm_sandbox_enter(vmm_profile_for("blockd-standalone"), &policy, error);
}

static gboolean write_pid_file(const char *path, GError **error)
{
    g_autofree char *text = g_strdup_printf("%d\n", getpid());
    return g_file_set_contents(path, text, -1, error);
}

static int serve(NbdCli *c, GPtrArray *objects)
{
    g_autoptr(GError) err = NULL;
    RunState rs = { .loop = g_main_loop_new(NULL, FALSE), .persistent = c->persistent };
    NbdServer *server = nbd_server_new();
    NbdListener *listener = NULL;
    NbdExport *exp = NULL;
    g_autofree char *address = listen_address(c);
    VmmBlockDev *bs = open_image(c, &err);
    int rc = 1;
    if (!bs)
        goto out;
    NbdExportConfig cfg = {
        .name = c->export_name ? c->export_name : "",
        .description = c->description,
        .bs = bs,
        .read_only = c->read_only,
        /* A client that sees multi-conn opens several connections: only
         * advertise it when --shared lets them in. */
        .multi_conn = c->shared != 1,
        .shared = (guint)c->shared,
        .allocation_depth = c->allocation_depth,
    };
    exp = nbd_export_new(&cfg, &err);
    if (!exp || !nbd_server_add_export(server, exp, &err) || !setup_tls(server, c, objects, &err))
        goto out;
    nbd_server_set_client_done_callback(server, on_client_done, &rs);
    int n = vmm_sd_listen_fds(TRUE, NULL);
    if (n > 1) {
        g_set_error(&err, VMM_ERROR, VMM_ERROR_INVALID, "socket activation: expected one socket, got %d", n);
        goto out;
    }
    listener = n == 1 ? nbd_listener_new_fd(server, VMM_SD_LISTEN_FDS_START, &err)
                      : nbd_listener_new(server, address, &err);
    if (!listener)
        goto out;
    if (c->pid_file && !write_pid_file(c->pid_file, &err))
        goto out;
    if (!enter_sandbox(c, &err))
        goto out;
    if (c->verbose)
        vmm_notice("serving %s on %s", c->files[0], n == 1 ? "an activated socket" : address);
    vmm_sd_notify("READY=1", NULL);
    fork_report(0);
    g_unix_signal_add(SIGTERM, quit_loop, &rs);
    g_unix_signal_add(SIGINT, quit_loop, &rs);
    g_unix_signal_add(SIGHUP, quit_loop, &rs);
    g_main_loop_run(rs.loop);
    vmm_sd_notify("STOPPING=1", NULL);
    rc = 0;
out:
    if (err)
        fprintf(stderr, "blockd: %s\n", err->message);
    fork_report(1);
    if (listener)
        nbd_listener_free(listener);
    if (exp)
        nbd_export_unref(exp);
    nbd_server_free(server);
    if (bs)
        vmm_block_unref(bs);
    if (c->pid_file && rc == 0)
        unlink(c->pid_file);
    g_main_loop_unref(rs.loop);
    return rc;
}

int blockd_standalone_main(int argc, char **argv)
{
    NbdCli c = { .shared = 1 };
    g_autoptr(GError) err = NULL;
    vmm_log_init("blockd");
    if (!parse_cli(&c, &argc, &argv, &err)) {
        fprintf(stderr, "blockd: %s\n", err->message);
        return 1;
    }
    if (c.version) {
        printf("blockd (vmmd) %s\n", VMM_VERSION_STRING);
        return 0;
    }
    if (!c.files || !c.files[0] || c.files[1]) {
        fprintf(stderr, "blockd: expected exactly one FILE (try --help)\n");
        return 1;
    }
    if (c.socket_path && (c.port || c.bind)) {
        fprintf(stderr, "blockd: --socket cannot be used with --port or --bind\n");
        return 1;
    }
    if (c.shared < 1) {
        fprintf(stderr, "blockd: Invalid shared device number '%d'\n", c.shared);
        return 1;
    }
    g_autoptr(GPtrArray) objects = parse_objects(c.objects, &err);
    if (!objects) {
        fprintf(stderr, "blockd: %s\n", err->message);
        return 1;
    }
    /* Threads start with the listener: detach before. */
    if (c.fork && !fork_now(&err)) {
        fprintf(stderr, "blockd: %s\n", err->message);
        return 1;
    }
    return serve(&c, objects);
}
