/* blockd --daemon --control PATH: exports added and removed at run time by
 * requests on a control socket (the role of qemu-storage-daemon). Every
 * connection to PATH speaks the control protocol (proto/README.md); try
 * `vmmctl --control PATH query-nbd-exports`. */
#include "blockd/daemon.h"
#include "common/profiles.h"
#include "common/sandbox.h"
#include "common/error.h"
#include "common/log.h"
#include "common/sdnotify.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

typedef struct {
    uv_loop_t loop;
    uv_poll_t accept_poll;
    uv_signal_t sigterm, sigint;
    int listen_fd;
    BlockdExports *exports;
    GPtrArray *channels; /* open control connections */
} Daemon;

static void on_request(VmmChannel *ch, VmmChannelRequest *req, gpointer user)
{
    Daemon *d = user;
    if (!blockd_exports_handle(d->exports, req))
        vmm_channel_reply_error(req, "CommandNotFound", "blockd: the command '%s' was not found",
                                vmm_channel_request_command(req));
}

static void on_closed(VmmChannel *ch, const GError *why, gpointer user)
{
    Daemon *d = user;
    g_ptr_array_remove(d->channels, ch);
    vmm_channel_free(ch);
}

static const VmmChannelOps control_ops = {
    .on_request = on_request,
    .on_closed = on_closed,
};

static void on_accept(uv_poll_t *p, int status, int events)
{
    Daemon *d = p->data;
    int fd = accept4(d->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    g_autoptr(GError) err = NULL;
    VmmChannel *ch = vmm_channel_new(&d->loop, fd, "blockd", NULL, &control_ops, d, &err);
    if (ch)
        g_ptr_array_add(d->channels, ch);
    else
        vmm_warn("control connection: %s", err->message);
}

static int listen_seqpacket(const char *path, GError **error)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "--control %s: path too long", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 16) < 0) {
        vmm_set_errno(error, errno, "--control %s", path);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static void on_signal(uv_signal_t *s, int signum)
{
    uv_stop(s->loop);
}

static void close_handle(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* The daemon opens images by name whenever an export is added, so unlike
 * standalone blockd it keeps the filesystem groups; the filter still takes
 * away everything else (no exec, no ptrace, no mount, ...). */
static gboolean enter_sandbox(const char *spec, GError **error)
{
    VmmSandboxPolicy policy;
    vmm_sandbox_policy_init(&policy);
    if (!vmm_sandbox_policy_parse(spec ? spec : "on", &policy, error)) {
        g_prefix_error(error, "--sandbox: ");
        return FALSE;
    }
    return vmm_sandbox_enter(vmm_profile_for("blockd-daemon"), &policy, error);
}

int blockd_daemon_main(int argc, char **argv)
{
    g_autofree char *control = NULL;
    g_auto(GStrv) listen = NULL;
    gboolean daemon_flag = FALSE;
    g_autofree char *sandbox = NULL;
    GOptionEntry entries[] = {
        { "daemon", 0, 0, G_OPTION_ARG_NONE, &daemon_flag, "run as a daemon managed over --control", NULL },
        { "control", 0, 0, G_OPTION_ARG_FILENAME, &control, "control socket (SOCK_SEQPACKET)", "PATH" },
        { "listen", 0, 0, G_OPTION_ARG_STRING_ARRAY, &listen, "NBD address to serve (repeatable)",
          "unix:PATH|HOST:PORT" },
        { "sandbox", 0, 0, G_OPTION_ARG_STRING, &sandbox,
          "seccomp policy once listening, as vmmd's -sandbox (default on)", "on|off[,...]" },
        { NULL },
    };
    g_autoptr(GError) err = NULL;
    g_autoptr(GOptionContext) ctx = g_option_context_new("- blockd managed over a control socket");
    g_option_context_add_main_entries(ctx, entries, NULL);
    vmm_log_init("blockd");
    if (!g_option_context_parse(ctx, &argc, &argv, &err) || !control) {
        fprintf(stderr, "blockd: %s\n", err ? err->message : "--daemon needs --control PATH");
        return 1;
    }
    Daemon d = { .exports = blockd_exports_new(), .channels = g_ptr_array_new(), .listen_fd = -1 };
    int rc = 1;
    d.listen_fd = listen_seqpacket(control, &err);
    if (d.listen_fd < 0)
        goto out;
    for (char **l = listen; l && *l; l++) {
        if (!blockd_exports_listen(d.exports, *l, NULL, &err))
            goto out;
    }
    uv_loop_init(&d.loop);
    uv_poll_init(&d.loop, &d.accept_poll, d.listen_fd);
    d.accept_poll.data = &d;
    uv_poll_start(&d.accept_poll, UV_READABLE, on_accept);
    uv_signal_init(&d.loop, &d.sigterm);
    uv_signal_start(&d.sigterm, on_signal, SIGTERM);
    uv_signal_init(&d.loop, &d.sigint);
    uv_signal_start(&d.sigint, on_signal, SIGINT);
    signal(SIGPIPE, SIG_IGN);
    if (!enter_sandbox(sandbox, &err))
        goto out;
    vmm_sd_notify("READY=1", NULL);
    uv_run(&d.loop, UV_RUN_DEFAULT);
    vmm_sd_notify("STOPPING=1", NULL);
    while (d.channels->len)
        vmm_channel_free(g_ptr_array_steal_index(d.channels, d.channels->len - 1));
    uv_walk(&d.loop, close_handle, NULL);
    uv_run(&d.loop, UV_RUN_DEFAULT);
    uv_loop_close(&d.loop);
    rc = 0;
out:
    if (err)
        fprintf(stderr, "blockd: %s\n", err->message);
    if (d.listen_fd >= 0) {
        close(d.listen_fd);
        unlink(control);
    }
    blockd_exports_free(d.exports);
    g_ptr_array_unref(d.channels);
    return rc;
}
