/* vmmd: parse the command line, fork the spawner, open what the helpers will
 * need, enter the sandbox, start the helpers and serve QMP until told to quit. */
#include "vmmd/vmmd.h"
#include "vmmd/memory-backend.h"
#include "vmmd/rng.h"
#include "vmmd/serial.h"
#include "common/error.h"
#include "common/log.h"
#include "common/profiles.h"
#include "common/sdnotify.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static int daemon_ready_fd = -1;

/* -daemonize: the parent stays until the child says it is up (or failed), so
 * that the exit status of "vmmd -daemonize" means something, as with QEMU. */
static gboolean daemonize(GError **error)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return vmm_set_errno(error, errno, "-daemonize: pipe");
    pid_t pid = fork();
    if (pid < 0)
        return vmm_set_errno(error, errno, "-daemonize: fork");
    if (pid > 0) {
        close(p[1]);
        char status = 1;
        ssize_t n;
        do {
            n = read(p[0], &status, 1);
        } while (n < 0 && errno == EINTR);
        _exit(n == 1 && status == 0 ? 0 : 1);
    }
    close(p[0]);
    setsid();
    daemon_ready_fd = p[1];
    return TRUE;
}

static void daemon_report(char status)
{
    if (daemon_ready_fd < 0)
        return;
    if (status == 0) {
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
            close(null);
        }
    }
    (void)!write(daemon_ready_fd, &status, 1);
    close(daemon_ready_fd);
    daemon_ready_fd = -1;
}

static int pidfile_fd = -1;

static gboolean write_pidfile(const char *path, GError **error)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return vmm_set_errno(error, errno, "Cannot open pid file %s", path);
    if (lockf(fd, F_TLOCK, 0) < 0) {
        int e = errno;
        close(fd);
        return vmm_set_errno(error, e, "Cannot lock pid file %s (is another vmmd using it?)", path);
    }
    g_autofree char *text = g_strdup_printf("%d\n", getpid());
    if (ftruncate(fd, 0) < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
        int e = errno;
        close(fd);
        return vmm_set_errno(error, e, "Cannot write pid file %s", path);
    }
    pidfile_fd = fd;
    return TRUE;
}

static void on_helpers_up(Vmmd *d)
{
    /* With a guest, vm.c owns the status (prelaunch until it runs). */
    if (!d->config->vm || !d->config->vm->kernel)
        d->status = "running";
    vmm_notice("all helpers up (%u); serving QMP", d->helpers->len);
    g_autofree char *state = g_strdup_printf("READY=1\nSTATUS=running, %u helpers", d->helpers->len);
    vmm_sd_notify(state, NULL);
    daemon_report(0);
}

static void start_helpers(Vmmd *d)
{
    if (d->helpers_started)
        return;
    d->helpers_started = TRUE;
    g_autoptr(GError) err = NULL;
    if (!vmm_supervisor_start(d, &err)) {
        vmm_error("%s", err->message);
        d->exit_code = 1;
        vmmd_request_quit(d, "host-error");
    }
}

void vmm_qmp_first_client(Vmmd *d)
{
    start_helpers(d);
}

static void close_any_handle(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void finish(Vmmd *d)
{
    vmm_serial_backend_close(d);
    for (guint i = 0; i < d->qmp_servers->len; i++)
        vmm_qmp_stop(d->qmp_servers->pdata[i]);
    g_ptr_array_set_size(d->qmp_servers, 0);
    uv_stop(d->loop);
}

static void on_helpers_stopped(Vmmd *d)
{
    /* The spawner exits when its channel closes; its exit finishes the quit. */
    if (d->spawner) {
        vmm_channel_free(d->spawner);
        d->spawner = NULL;
    }
    if (d->spawner_pid <= 0)
        finish(d);
}

void vmmd_request_quit(Vmmd *d, const char *reason)
{
    if (d->quitting)
        return;
    d->quitting = TRUE;
    d->status = "shutdown";
    vmm_notice("shutting down (%s)", reason);
    vmm_sd_notify("STOPPING=1", NULL);
    JsonObject *data = json_object_new();
    json_object_set_boolean_member(data, "guest", g_str_has_prefix(reason, "guest-"));
    json_object_set_string_member(data, "reason", reason);
    vmm_qmp_emit(d, "SHUTDOWN", data);
    vmm_supervisor_stop_all(d, on_helpers_stopped);
}

static void on_sigchld(uv_signal_t *s, int signum)
{
    Vmmd *d = s->data;
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid == d->spawner_pid) {
            d->spawner_pid = 0;
            if (d->quitting && !d->spawner)
                finish(d);
            else if (!d->quitting) {
                vmm_error("the spawner (pid %d) died; stopping", pid);
                d->exit_code = 1;
                vmmd_request_quit(d, "host-error");
            }
            continue;
        }
        vmm_supervisor_child_exited(d, pid, status);
    }
}

static void on_term_signal(uv_signal_t *s, int signum)
{
    vmmd_request_quit(s->data, "host-signal");
}

static void watch_signal(Vmmd *d, uv_signal_t *s, int signum, uv_signal_cb cb)
{
    uv_signal_init(d->loop, s);
    s->data = d;
    uv_signal_start(s, cb, signum);
}

/* Sockets passed by systemd (LISTEN_FDS) are QMP listeners, whatever their
 * names: a unit's .socket file is how an operator asks for a QMP socket. */
static gboolean serve_activated_sockets(Vmmd *d, GError **error)
{
    g_auto(GStrv) names = NULL;
    int n = vmm_sd_listen_fds(TRUE, &names);
    if (n < 0)
        return vmm_set_errno(error, -n, "socket activation (LISTEN_FDS)");
    for (int i = 0; i < n; i++) {
        VmmQmpServer *s = vmm_qmp_start_fd(d, VMM_SD_LISTEN_FDS_START + i, error);
        if (!s)
            return FALSE;
        vmm_info("serving QMP on activated socket %s (fd %d)", names && names[i] ? names[i] : "?",
                 VMM_SD_LISTEN_FDS_START + i);
        g_ptr_array_add(d->qmp_servers, s);
    }
    return TRUE;
}

static void on_watchdog(uv_timer_t *t)
{
    vmm_sd_notify("WATCHDOG=1", NULL);
}

static void start_watchdog(Vmmd *d)
{
    guint64 usec = vmm_sd_watchdog_usec();
    uv_timer_init(d->loop, &d->watchdog);
    if (usec)
        uv_timer_start(&d->watchdog, on_watchdog, 0, MAX(usec / 2000, 1));
}

static gboolean open_host_resources(Vmmd *d, GError **error)
{
    if (!serve_activated_sockets(d, error))
        return FALSE;
    d->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (d->kvm_fd < 0)
        vmm_info("/dev/kvm: %s; KVM is not available", g_strerror(errno));
    d->kmsg_fd = vmm_seccomp_log_open();
    /* Before the sandbox, so a bad mem-path is a startup error, as in QEMU. */
    if (d->config->vm) {
        d->guest_ram = g_new0(VmmGuestRam, 1);
        if (!vmm_guest_ram_open(d->config->vm, d->guest_ram, error) || !vmm_rng_open_sources(d, error))
            return FALSE;
    }
    for (guint i = 0; i < d->config->qmp->len; i++) {
        VmmQmpServer *s = vmm_qmp_start(d, d->config->qmp->pdata[i], error);
        if (!s)
            return FALSE;
        g_ptr_array_add(d->qmp_servers, s);
    }
    return TRUE;
}

static gboolean qmp_waits_for_client(VmmConfig *c)
{
    for (guint i = 0; i < c->qmp->len; i++) {
        if (((VmmQmpAddr *)c->qmp->pdata[i])->wait)
            return TRUE;
    }
    return FALSE;
}

static int run(VmmConfig *config)
{
    g_autoptr(GError) err = NULL;
    uv_loop_t loop;
    Vmmd d = {
        .loop = &loop, .config = config, .kvm_fd = -1, .kmsg_fd = -1, .status = "prelaunch",
        .on_helpers_up = on_helpers_up,
    };
    d.helpers = g_ptr_array_new();
    d.qmp_servers = g_ptr_array_new();
    uv_loop_init(&loop);
    signal(SIGPIPE, SIG_IGN);
    watch_signal(&d, &d.sigchld, SIGCHLD, on_sigchld);
    watch_signal(&d, &d.sigterm, SIGTERM, on_term_signal);
    watch_signal(&d, &d.sigint, SIGINT, on_term_signal);
    watch_signal(&d, &d.sighup, SIGHUP, on_term_signal);
    start_watchdog(&d);

    /* The spawner is forked first, before vmmd holds anything a helper must
     * not inherit and before vmmd's own filter. */
    if (!vmm_spawner_start(&d, &err) || !open_host_resources(&d, &err) ||
        !vmm_sandbox_enter(vmm_profile_for("vmmd"), &config->sandbox, &err)) {
        vmm_error("%s", err->message);
        daemon_report(1);
        d.exit_code = 1;
        d.quitting = TRUE;
        on_helpers_stopped(&d);
    } else if (!qmp_waits_for_client(config)) {
        start_helpers(&d);
    } else {
        vmm_notice("waiting for a QMP client before starting the helpers");
    }
    uv_run(&loop, UV_RUN_DEFAULT);

    uv_walk(&loop, close_any_handle, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    g_clear_pointer(&d.early_exits, g_hash_table_unref);
    if (d.spawner_pid > 0) {
        kill(d.spawner_pid, SIGKILL);
        waitpid(d.spawner_pid, NULL, 0);
    }
    if (d.kvm_fd >= 0)
        close(d.kvm_fd);
    vmm_rng_close_sources(&d);
    if (d.guest_ram) {
        vmm_guest_ram_release(d.guest_ram, d.exit_code == 0);
        g_free(d.guest_ram);
    }
    if (d.kmsg_fd >= 0)
        close(d.kmsg_fd);
    daemon_report(d.exit_code ? 1 : 0);
    return d.exit_code;
}

int main(int argc, char **argv)
{
    VmmConfig config;
    g_autoptr(GError) err = NULL;
    gboolean exit_now = FALSE;

    vmm_log_init("vmmd");
    vmm_config_init(&config);
    if (!vmm_config_parse_argv(&config, argc, argv, &exit_now, &err)) {
        fprintf(stderr, "vmmd: %s\n", err->message);
        vmm_config_clear(&config);
        return 1;
    }
    if (exit_now) {
        vmm_config_clear(&config);
        return 0;
    }
    if (config.dump_seccomp) {
        g_autofree char *own = vmm_sandbox_dump(vmm_profile_for("vmmd"), &config.sandbox);
        VmmSandboxPolicy spawner_policy = vmm_spawner_policy(&config.sandbox);
        g_autofree char *spawner = vmm_sandbox_dump(vmm_profile_spawner(), &spawner_policy);
        printf("%s\n%s", own, spawner);
        vmm_config_clear(&config);
        return 0;
    }
    if (config.process_name)
        prctl(PR_SET_NAME, config.process_name);
    if ((config.daemonize && !daemonize(&err)) ||
        (config.pidfile && !write_pidfile(config.pidfile, &err))) {
        fprintf(stderr, "vmmd: %s\n", err->message);
        daemon_report(1);
        vmm_config_clear(&config);
        return 1;
    }
    int rc = run(&config);
    if (config.pidfile && pidfile_fd >= 0) {
        unlink(config.pidfile);
        close(pidfile_fd);
    }
    vmm_config_clear(&config);
    return rc;
}
