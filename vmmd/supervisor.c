/* Helper supervision: each helper gets a control socketpair, is started by the
 * spawner, is reaped here, and is restarted after a crash with exponential
 * backoff, up to config->max_restarts times within a stability window. */
#include "vmmd/vmmd.h"
#include "vmmd/vm.h"
#include "vmmd/drive-run.h"
#include "vmmd/fsdev-run.h"
#include "common/error.h"
#include "common/log.h"
#include "common/spawn.h"
#include "proto/control.h"

#include <errno.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* A helper that ran this long without crashing starts its restart count anew. */
#define STABLE_RUN_US (60 * G_USEC_PER_SEC)
#define MAX_BACKOFF_MS 10000
#define SHUTDOWN_GRACE_MS 3000

typedef enum {
    HELPER_STARTING,
    HELPER_RUNNING,
    HELPER_RESTARTING,
    HELPER_FAILED,
    HELPER_STOPPING,
    HELPER_STOPPED,
} HelperState;

static const char *const state_names[] = {
    "starting", "running", "restarting", "failed", "stopping", "stopped",
};

struct VmmHelperProc {
    Vmmd *d;
    char *role;
    char *path;
    int pid;
    VmmChannel *ch;
    HelperState state;
    guint restarts;         /* within the current stability window */
    guint total_restarts;
    gint64 started_at;
    gboolean ever_up;
    /* The spawner has not told us the pid yet; the helper may already be up
     * (its channel handshake can beat the spawner's reply). */
    gboolean spawn_pending;
    uv_timer_t timer;       /* restart backoff and shutdown grace */
};


VmmChannel *vmm_helper_proc_channel(VmmHelperProc *hp) { return hp->ch; }
const char *vmm_helper_proc_role(VmmHelperProc *hp) { return hp->role; }
int vmm_helper_proc_pid(VmmHelperProc *hp) { return hp->pid; }
guint vmm_helper_proc_restarts(VmmHelperProc *hp) { return hp->total_restarts; }
const char *vmm_helper_proc_state(VmmHelperProc *hp) { return state_names[hp->state]; }

VmmHelperProc *vmm_supervisor_find(Vmmd *d, const char *role)
{
    for (guint i = 0; i < d->helpers->len; i++) {
        VmmHelperProc *hp = d->helpers->pdata[i];
        if (g_str_equal(hp->role, role))
            return hp;
    }
    return NULL;
}

static gboolean all_helpers_in(Vmmd *d, HelperState a, HelperState b)
{
    for (guint i = 0; i < d->helpers->len; i++) {
        VmmHelperProc *hp = d->helpers->pdata[i];
        if (hp->state != a && hp->state != b)
            return FALSE;
    }
    return TRUE;
}

static void start_helper(VmmHelperProc *hp);
static void check_all_stopped(Vmmd *d);

static JsonObject *helper_event_data(VmmHelperProc *hp)
{
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "helper", hp->role);
    json_object_set_int_member(o, "pid", hp->pid);
    return o;
}

static void log_sandbox_state(VmmHelperProc *hp, JsonObject *status)
{
    JsonObject *sb = json_object_has_member(status, "sandbox")
                         ? json_object_get_object_member(status, "sandbox") : NULL;
    if (!sb) {
        vmm_notice("helper %s (pid %d) up", hp->role, hp->pid);
        return;
    }
    vmm_notice("helper %s (pid %d) up: protocol %d, seccomp=%" G_GINT64_FORMAT
               " no_new_privs=%s cap_eff=%s policy=%s",
               hp->role, hp->pid, VMM_CONTROL_PROTOCOL,
               json_object_get_int_member_with_default(sb, "seccomp", -1),
               json_object_get_boolean_member_with_default(sb, "no_new_privs", FALSE) ? "1" : "0",
               json_object_get_string_member_with_default(sb, "cap_eff", "?"),
               json_object_get_string_member_with_default(sb, "policy", "?"));
}

static void on_kvm_setup(VmmChannel *ch, JsonObject *result, const GError *error,
                         int *fds, guint nfds, gpointer user)
{
    VmmHelperProc *hp = user;
    if (error) {
        vmm_error("vcpu-worker: KVM setup failed: %s", error->message);
        vmm_vm_cannot_start(hp->d, error->message);
        return;
    }
    vmm_info("vcpu-worker (pid %d) holds /dev/kvm: API version %" G_GINT64_FORMAT, hp->pid,
             json_object_get_int_member_with_default(result, "api-version", -1));
    vmm_vm_start(hp->d, hp);
}

static void on_first_status(VmmChannel *ch, JsonObject *result, const GError *error,
                            int *fds, guint nfds, gpointer user)
{
    VmmHelperProc *hp = user;
    if (error) {
        vmm_error("helper %s (pid %d): query-status failed: %s", hp->role, hp->pid, error->message);
        return;
    }
    if (hp->state != HELPER_STARTING)
        return;
    log_sandbox_state(hp, result);
    gboolean restarted = hp->ever_up;
    hp->state = HELPER_RUNNING;
    hp->ever_up = TRUE;
    vmm_drives_helper_up(hp->d, hp, restarted);
    vmm_fsdevs_helper_up(hp->d, hp, restarted);
    if (g_str_equal(hp->role, "vcpu-worker") && hp->d->kvm_fd >= 0)
        vmm_channel_call(ch, "setup-kvm", NULL, &hp->d->kvm_fd, 1, on_kvm_setup, hp, NULL);
    else if (g_str_equal(hp->role, "vcpu-worker"))
        vmm_vm_cannot_start(hp->d, "/dev/kvm is not available");
    if (restarted) {
        JsonObject *data = helper_event_data(hp);
        json_object_set_int_member(data, "restarts", hp->total_restarts);
        vmm_qmp_emit(hp->d, "HELPER_RESTARTED", data);
    } else if (all_helpers_in(hp->d, HELPER_RUNNING, HELPER_RUNNING) && hp->d->on_helpers_up) {
        hp->d->on_helpers_up(hp->d);
    }
}

static void on_helper_ready(VmmChannel *ch, JsonObject *hello, gpointer user)
{
    VmmHelperProc *hp = user;
    vmm_debug("helper %s (pid %d): handshake done", hp->role, hp->pid);
    vmm_channel_call(ch, VMM_CMD_QUERY_STATUS, NULL, NULL, 0, on_first_status, hp, NULL);
}

static void on_helper_event(VmmChannel *ch, const char *name, JsonObject *data, int *fds,
                            guint nfds, gpointer user)
{
    VmmHelperProc *hp = user;
    vmm_debug("helper %s: event %s", hp->role, name);
    if (g_str_equal(hp->role, "vcpu-worker") && !vmm_drives_handle_event(hp->d, name, data) &&
        !vmm_fsdevs_handle_event(hp->d, name, data))
        vmm_vm_handle_event(hp->d, name, data);
}

static void on_kill_timer(uv_timer_t *t)
{
    VmmHelperProc *hp = t->data;
    if (hp->pid > 0) {
        vmm_warn("helper %s (pid %d) did not exit; killing it", hp->role, hp->pid);
        kill(hp->pid, SIGKILL);
    }
}

static void on_helper_closed(VmmChannel *ch, const GError *why, gpointer user)
{
    VmmHelperProc *hp = user;
    /* The exit status decides what happens next; a helper that closed its
     * channel but lives on gets a grace period, then SIGKILL. */
    if (hp->pid > 0)
        uv_timer_start(&hp->timer, on_kill_timer, SHUTDOWN_GRACE_MS, 0);
}

static const VmmChannelOps helper_ops = {
    .on_ready = on_helper_ready,
    .on_event = on_helper_event,
    .on_closed = on_helper_closed,
};

static void on_spawned(Vmmd *d, int pid, const GError *error, gpointer user)
{
    VmmHelperProc *hp = user;
    hp->spawn_pending = FALSE;
    if (pid < 0 && hp->state == HELPER_STOPPING) {
        hp->state = HELPER_STOPPED;
        check_all_stopped(d);
        return;
    }
    if (pid < 0) {
        vmm_error("helper %s: %s", hp->role, error ? error->message : "spawn failed");
        hp->state = HELPER_FAILED;
        JsonObject *data = helper_event_data(hp);
        json_object_set_string_member(data, "reason", error ? error->message : "spawn failed");
        vmm_qmp_emit(d, "HELPER_FAILED", data);
        return;
    }
    hp->pid = pid;
    hp->started_at = g_get_monotonic_time();
    if (hp->state == HELPER_STOPPING) {
        /* vmmd began to quit while this helper was being spawned. */
        kill(pid, SIGTERM);
        uv_timer_start(&hp->timer, on_kill_timer, SHUTDOWN_GRACE_MS, 0);
    }
    gpointer early;
    if (d->early_exits && g_hash_table_lookup_extended(d->early_exits, GINT_TO_POINTER(pid), NULL, &early)) {
        g_hash_table_remove(d->early_exits, GINT_TO_POINTER(pid));
        vmm_supervisor_child_exited(d, pid, GPOINTER_TO_INT(early));
    }
}

static void start_helper(VmmHelperProc *hp)
{
    Vmmd *d = hp->d;
    int sv[2];
    g_autoptr(GError) err = NULL;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        vmm_set_errno(&err, errno, "helper %s: socketpair", hp->role);
        on_spawned(d, -1, err, hp);
        return;
    }
    hp->state = HELPER_STARTING;
    hp->pid = 0;
    hp->ch = vmm_channel_new(d->loop, sv[0], "vmmd", NULL, &helper_ops, hp, &err);
    if (!hp->ch) {
        close(sv[1]);
        on_spawned(d, -1, err, hp);
        return;
    }
    g_autofree char *policy = vmm_sandbox_policy_to_string(&d->config->sandbox);
    const char *argv[] = { hp->path, "--control-fd", "3", "--sandbox", policy, NULL, NULL };
    if (g_str_equal(hp->role, "fsd") && vmm_fsdev_needs_passthrough(d))
        argv[5] = "--passthrough";
    hp->spawn_pending = TRUE;
    vmm_spawner_spawn(d, argv, &sv[1], 1, on_spawned, hp);
    close(sv[1]);
}

static void on_restart_timer(uv_timer_t *t)
{
    VmmHelperProc *hp = t->data;
    if (hp->state == HELPER_RESTARTING && !hp->d->quitting)
        start_helper(hp);
}

static void schedule_restart_or_give_up(VmmHelperProc *hp, const char *reason)
{
    Vmmd *d = hp->d;
    if (hp->started_at && g_get_monotonic_time() - hp->started_at > STABLE_RUN_US)
        hp->restarts = 0;
    if (hp->restarts >= d->config->max_restarts) {
        hp->state = HELPER_FAILED;
        vmm_error("helper %s crashed %u times; giving up", hp->role, hp->restarts + 1);
        JsonObject *data = helper_event_data(hp);
        json_object_set_int_member(data, "restarts", hp->total_restarts);
        json_object_set_string_member(data, "reason", reason);
        vmm_qmp_emit(d, "HELPER_FAILED", data);
        return;
    }
    guint64 delay = (guint64)d->config->backoff_ms << MIN(hp->restarts, 16u);
    delay = MIN(delay, MAX_BACKOFF_MS);
    hp->restarts++;
    hp->total_restarts++;
    hp->state = HELPER_RESTARTING;
    vmm_notice("restarting helper %s in %" G_GUINT64_FORMAT " ms (restart %u of %u)", hp->role,
               delay, hp->restarts, d->config->max_restarts);
    uv_timer_start(&hp->timer, on_restart_timer, delay, 0);
}

static VmmHelperProc *find_by_pid(Vmmd *d, int pid)
{
    for (guint i = 0; i < d->helpers->len; i++) {
        VmmHelperProc *hp = d->helpers->pdata[i];
        if (hp->pid == pid)
            return hp;
    }
    return NULL;
}

static void check_all_stopped(Vmmd *d)
{
    if (d->on_all_stopped && all_helpers_in(d, HELPER_STOPPED, HELPER_FAILED)) {
        void (*cb)(Vmmd *) = d->on_all_stopped;
        d->on_all_stopped = NULL;
        cb(d);
    }
}

void vmm_supervisor_child_exited(Vmmd *d, int pid, int status)
{
    VmmHelperProc *hp = find_by_pid(d, pid);
    if (!hp) {
        if (!d->early_exits)
            d->early_exits = g_hash_table_new(NULL, NULL);
        g_hash_table_insert(d->early_exits, GINT_TO_POINTER(pid), GINT_TO_POINTER(status));
        return;
    }
    uv_timer_stop(&hp->timer);
    g_autofree char *how = vmm_describe_wait_status(status);
    g_autofree char *syscall_name = NULL;
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS)
        syscall_name = vmm_seccomp_log_lookup(d->kmsg_fd, pid);
    hp->pid = 0;
    if (hp->ch) {
        vmm_channel_free(hp->ch);
        hp->ch = NULL;
    }
    gboolean expected = hp->state == HELPER_STOPPING || d->quitting;
    JsonObject *data = helper_event_data(hp);
    json_object_set_int_member(data, "pid", pid);
    json_object_set_string_member(data, "reason", how);
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS) {
        json_object_set_string_member(data, "syscall", syscall_name ? syscall_name : "unknown");
        vmm_error("helper %s (pid %d) was killed by seccomp: forbidden system call %s", hp->role,
                  pid, syscall_name ? syscall_name : "(not in the kernel log)");
    } else if (!expected || !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
        vmm_log(expected ? VMM_LOG_INFO : VMM_LOG_ERR, "helper %s (pid %d) %s", hp->role, pid, how);
    }
    json_object_set_boolean_member(data, "restart", !expected);
    vmm_qmp_emit(d, "HELPER_EXITED", data);
    if (expected) {
        hp->state = HELPER_STOPPED;
        check_all_stopped(d);
        return;
    }
    schedule_restart_or_give_up(hp, how);
}

static char *helper_path(Vmmd *d, const char *role)
{
    if (d->config->helper_dir)
        return g_build_filename(d->config->helper_dir, role, NULL);
    g_autofree char *self = g_file_read_link("/proc/self/exe", NULL);
    g_autofree char *dir = self ? g_path_get_dirname(self) : g_strdup(".");
    return g_build_filename(dir, role, NULL);
}

gboolean vmm_supervisor_start(Vmmd *d, GError **error)
{
    for (char **r = d->config->helpers; *r; r++) {
        VmmHelperProc *hp = g_new0(VmmHelperProc, 1);
        hp->d = d;
        hp->role = g_strdup(*r);
        hp->path = helper_path(d, *r);
        uv_timer_init(d->loop, &hp->timer);
        hp->timer.data = hp;
        g_ptr_array_add(d->helpers, hp);
        if (access(hp->path, X_OK) < 0)
            return vmm_set_errno(error, errno, "helper %s: %s", hp->role, hp->path);
    }
    for (guint i = 0; i < d->helpers->len; i++)
        start_helper(d->helpers->pdata[i]);
    if (d->helpers->len == 0 && d->on_helpers_up)
        d->on_helpers_up(d);
    return TRUE;
}

static void on_shutdown_reply(VmmChannel *ch, JsonObject *result, const GError *error,
                              int *fds, guint nfds, gpointer user)
{
    /* Nothing to do: the exit status arrives through the reaper. */
}

void vmm_supervisor_stop_all(Vmmd *d, void (*done)(Vmmd *d))
{
    d->on_all_stopped = done;
    for (guint i = 0; i < d->helpers->len; i++) {
        VmmHelperProc *hp = d->helpers->pdata[i];
        uv_timer_stop(&hp->timer);
        if (hp->pid > 0) {
            hp->state = HELPER_STOPPING;
            if (hp->ch)
                vmm_channel_call(hp->ch, VMM_CMD_SHUTDOWN, NULL, NULL, 0, on_shutdown_reply, hp, NULL);
            uv_timer_start(&hp->timer, on_kill_timer, SHUTDOWN_GRACE_MS, 0);
        } else if (hp->spawn_pending) {
            /* The spawn reply will find HELPER_STOPPING and end it by pid. */
            hp->state = HELPER_STOPPING;
        } else {
            hp->state = HELPER_STOPPED;
        }
    }
    check_all_stopped(d);
}
