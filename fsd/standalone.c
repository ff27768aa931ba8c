/* fsd standalone: serve one directory over 9P2000.L on Unix or TCP sockets,
 * the role of diod. With systemd socket activation (LISTEN_FDS) it serves
 * the inherited sockets; it sends READY=1 once it listens.
 *
 *   fsd --export PATH --listen unix:PATH|tcp:HOST:PORT [--security-model M]
 *       [--readonly] [--writeout immediate] [--fmode MODE] [--dmode MODE]
 *       [--tag NAME] [--throttling.KEY=N ...] [--sandbox SPEC] */
#include "fsd/fsd-standalone.h"
#include "fsd/fsd-internal.h"
#include "fsd/fsd-sandbox.h"
#include "fsd/9p-transport.h"
#include "common/error.h"
#include "common/log.h"
#include "common/opts.h"
#include "common/sdnotify.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    char *export_path, *model, *writeout, *fmode, *dmode, *tag, *sandbox, *pid_file, *port_file;
    char **listen;
    gboolean readonly, version, once;
    int threads;
    char *max_msize;
    FsdThrottleConfig throttle;
    GError *throttle_error;
} Cli;

static Cli *current_cli;

static gboolean on_throttle_option(const char *name, const char *value, gpointer data, GError **error)
{
    Cli *c = current_cli;
    guint64 n;
    const char *key = name + 2;   /* "--throttling.bps-total" */
    if (!vmm_parse_size("fsd", key, value, &n, error))
        return FALSE;
    return fsd_throttle_config_set(&c->throttle, key, n, error);
}

#define THROTTLE_ENTRY(key) \
    { "throttling." key, 0, 0, G_OPTION_ARG_CALLBACK, (gpointer)on_throttle_option, "throttle limit", "N" }

static gboolean parse_cli(Cli *c, int *argc, char ***argv, GError **error)
{
    GOptionEntry entries[] = {
        { "export", 0, 0, G_OPTION_ARG_FILENAME, &c->export_path, "directory to serve", "PATH" },
        { "listen", 0, 0, G_OPTION_ARG_STRING_ARRAY, &c->listen, "unix:PATH or tcp:HOST:PORT (repeatable)", "ADDR" },
        { "security-model", 0, 0, G_OPTION_ARG_STRING, &c->model,
          "passthrough (default), mapped-xattr, mapped-file, none", "MODEL" },
        { "readonly", 0, 0, G_OPTION_ARG_NONE, &c->readonly, "refuse every change (EROFS)", NULL },
        { "writeout", 0, 0, G_OPTION_ARG_STRING, &c->writeout, "immediate: sync data before answering a write", "MODE" },
        { "fmode", 0, 0, G_OPTION_ARG_STRING, &c->fmode, "host mode of new files, mapped models (0600)", "MODE" },
        { "dmode", 0, 0, G_OPTION_ARG_STRING, &c->dmode, "host mode of new directories, mapped models (0700)", "MODE" },
        { "tag", 0, 0, G_OPTION_ARG_STRING, &c->tag, "mount tag, accepted as attach name", "NAME" },
        { "sandbox", 0, 0, G_OPTION_ARG_STRING, &c->sandbox, "as -sandbox (default on)", "SPEC" },
        { "threads", 0, 0, G_OPTION_ARG_INT, &c->threads, "worker threads (default 16)", "N" },
        { "max-msize", 0, 0, G_OPTION_ARG_STRING, &c->max_msize, "largest msize offered (default 1M)", "SIZE" },
        { "pid-file", 0, 0, G_OPTION_ARG_FILENAME, &c->pid_file, "write the pid to PATH", "PATH" },
        { "port-file", 0, 0, G_OPTION_ARG_FILENAME, &c->port_file, "write the TCP port to PATH once listening", "PATH" },
        { "once", 0, 0, G_OPTION_ARG_NONE, &c->once, "exit when the last client disconnects", NULL },
        { "version", 'V', 0, G_OPTION_ARG_NONE, &c->version, "print the version", NULL },
        THROTTLE_ENTRY("bps-total"), THROTTLE_ENTRY("bps-read"), THROTTLE_ENTRY("bps-write"),
        THROTTLE_ENTRY("iops-total"), THROTTLE_ENTRY("iops-read"), THROTTLE_ENTRY("iops-write"),
        THROTTLE_ENTRY("bps-total-max"), THROTTLE_ENTRY("bps-read-max"), THROTTLE_ENTRY("bps-write-max"),
        THROTTLE_ENTRY("iops-total-max"), THROTTLE_ENTRY("iops-read-max"), THROTTLE_ENTRY("iops-write-max"),
        THROTTLE_ENTRY("iops-size"),
        { NULL },
    };
    current_cli = c;
    g_autoptr(GOptionContext) ctx = g_option_context_new(NULL);
    g_option_context_set_summary(ctx, "Serve a directory over 9P2000.L (the Linux v9fs client's dialect).\n"
                                      "Started by vmmd with --control-fd it is a sandboxed helper instead.");
    g_option_context_add_main_entries(ctx, entries, NULL);
    return g_option_context_parse(ctx, argc, argv, error);
}

static gboolean parse_mode(const char *what, const char *s, mode_t *out, GError **error)
{
    guint64 v;
    /* As QEMU's number options: 0644 is octal, 0x1a4 hex, 420 decimal;
     * only the permission bits are kept. */
    if (!vmm_parse_number("fsd", what, s, &v, error))
        return FALSE;
    *out = (mode_t)(v & 0777);
    return TRUE;
}

static gboolean build_config(Cli *c, FsdExportConfig *cfg, GError **error)
{
    fsd_export_config_init(cfg);
    if (!c->export_path) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "fsd: --export PATH is required");
        return FALSE;
    }
    cfg->path = g_strdup(c->export_path);
    cfg->tag = g_strdup(c->tag);
    if (c->model && !fsd_model_parse(c->model, &cfg->model, error))
        return FALSE;
    cfg->readonly = c->readonly;
    if (c->writeout) {
        if (strcmp(c->writeout, "immediate") != 0) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "fsd: writeout=%s: the only valid value is immediate", c->writeout);
            return FALSE;
        }
        cfg->writeout_immediate = TRUE;
    }
    if ((c->fmode || c->dmode) && !fsd_model_is_mapped(cfg->model)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "fsd: %s is only valid for mapped security modes",
                    c->fmode ? "fmode" : "dmode");
        return FALSE;
    }
    if (c->fmode && !parse_mode("fmode", c->fmode, &cfg->fmode, error))
        return FALSE;
    if (c->dmode && !parse_mode("dmode", c->dmode, &cfg->dmode, error))
        return FALSE;
    if (c->threads < 0 || c->threads > 256) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "fsd: --threads %d: 1 to 256", c->threads);
        return FALSE;
    }
    if (c->threads)
        cfg->threads = (guint)c->threads;
    if (c->max_msize) {
        guint64 m;
        if (!vmm_parse_size("fsd", "max-msize", c->max_msize, &m, error))
            return FALSE;
        if (m < P9_MIN_MSIZE || m > 16 * 1024 * 1024) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "fsd: --max-msize: 4096 to 16M");
            return FALSE;
        }
        cfg->max_msize = (guint32)m;
    }
    cfg->throttle = c->throttle;
    return fsd_throttle_config_check(&cfg->throttle, error);
}

typedef struct {
    uv_loop_t loop;
    uv_signal_t sigs[3];
    FsdServer *server;
    gboolean once;
} Run;

static void on_signal(uv_signal_t *h, int signum)
{
    uv_stop(h->loop);
}

static void on_disconnect(FsdServer *s, gpointer user)
{
    Run *run = user;
    if (run->once && fsd_server_connections(s) == 0)
        uv_stop(&run->loop);
}

static gboolean start_listening(Cli *c, FsdServer *server, GError **error)
{
    int n = vmm_sd_listen_fds(TRUE, NULL);
    if (n < 0)
        return vmm_set_errno(error, -n, "fsd: socket activation");
    for (int i = 0; i < n; i++) {
        if (!fsd_server_listen_fd(server, VMM_SD_LISTEN_FDS_START + i, error))
            return FALSE;
    }
    for (char **a = c->listen; a && *a; a++) {
        if (!fsd_server_listen(server, *a, error))
            return FALSE;
    }
    if (n == 0 && !(c->listen && c->listen[0])) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "fsd: --listen ADDR is required (or socket activation)");
        return FALSE;
    }
    return TRUE;
}

static gboolean write_number_file(const char *path, long v, GError **error)
{
    g_autofree char *text = g_strdup_printf("%ld\n", v);
    return g_file_set_contents(path, text, -1, error);
}

static int serve(Cli *c, FsdExportConfig *cfg)
{
    g_autoptr(GError) err = NULL;
    VmmSandboxPolicy policy;
    vmm_sandbox_policy_init(&policy);
    if (!vmm_sandbox_policy_parse(c->sandbox ? c->sandbox : "on", &policy, &err)) {
        fprintf(stderr, "fsd: --sandbox: %s\n", err->message);
        return 1;
    }
    FsdExport *e = fsd_export_new(cfg, &err);
    if (!e) {
        fprintf(stderr, "fsd: %s\n", err->message);
        return 1;
    }
    Run run = { .once = c->once };
    uv_loop_init(&run.loop);
    run.server = fsd_server_new(&run.loop, e);
    fsd_server_set_on_disconnect(run.server, on_disconnect, &run);
    int rc = 1;
    if (!start_listening(c, run.server, &err))
        goto out;
    if (c->port_file && !write_number_file(c->port_file, fsd_server_port(run.server), &err))
        goto out;
    if (c->pid_file && !write_number_file(c->pid_file, getpid(), &err))
        goto out;
    if (!fsd_sandbox_enter(cfg->model, &policy, &err))
        goto out;
    static const int signums[] = { SIGTERM, SIGINT, SIGHUP };
    for (int i = 0; i < 3; i++) {
        uv_signal_init(&run.loop, &run.sigs[i]);
        uv_signal_start(&run.sigs[i], on_signal, signums[i]);
        uv_unref((uv_handle_t *)&run.sigs[i]);
    }
    vmm_info("serving %s (%s%s) on %d socket(s)", cfg->path, fsd_model_name(cfg->model),
             cfg->readonly ? ", readonly" : "", (int)g_strv_length(c->listen));
    vmm_sd_notifyf(NULL, "READY=1\nSTATUS=serving %s", cfg->path);
    uv_run(&run.loop, UV_RUN_DEFAULT);
    vmm_sd_notify("STOPPING=1", NULL);
    rc = 0;
out:
    if (err)
        fprintf(stderr, "fsd: %s\n", err->message);
    fsd_server_shutdown(run.server);
    for (int i = 0; i < 3; i++) {
        if (run.sigs[i].loop)
            uv_close((uv_handle_t *)&run.sigs[i], NULL);
    }
    uv_run(&run.loop, UV_RUN_DEFAULT);
    /* Workers finish what they hold before the export goes. */
    fsd_export_free(e);
    uv_loop_close(&run.loop);
    if (c->pid_file && rc == 0)
        unlink(c->pid_file);
    return rc;
}

static void cli_clear(Cli *c)
{
    g_free(c->export_path);
    g_free(c->model);
    g_free(c->writeout);
    g_free(c->fmode);
    g_free(c->dmode);
    g_free(c->tag);
    g_free(c->sandbox);
    g_free(c->pid_file);
    g_free(c->port_file);
    g_free(c->max_msize);
    g_strfreev(c->listen);
}

int fsd_standalone_main(int argc, char **argv)
{
    Cli c = { 0 };
    g_autoptr(GError) err = NULL;
    vmm_log_init("fsd");
    int rc = 1;
    FsdExportConfig cfg = { 0 };
    if (!parse_cli(&c, &argc, &argv, &err)) {
        fprintf(stderr, "fsd: %s\n", err->message);
    } else if (c.version) {
        printf("fsd (vmmd) %s\n", VMM_VERSION_STRING);
        rc = 0;
    } else if (argc > 1) {
        fprintf(stderr, "fsd: unexpected argument '%s' (try --help)\n", argv[1]);
    } else if (!build_config(&c, &cfg, &err)) {
        fprintf(stderr, "%s\n", err->message);
    } else {
        rc = serve(&c, &cfg);
    }
    fsd_export_config_clear(&cfg);
    cli_clear(&c);
    return rc;
}
