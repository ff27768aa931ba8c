#include "common/helper.h"
#include "common/error.h"
#include "common/log.h"
#include "proto/control.h"

#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>

struct VmmHelper {
    const VmmHelperDesc *desc;
    uv_loop_t loop;
    VmmChannel *channel;
    VmmSandboxPolicy policy;
    gboolean sandboxed;
    int exit_code;
    int proc_status_fd; /* /proc/self/status, opened before the sandbox */
    gpointer data;
};

uv_loop_t *vmm_helper_loop(VmmHelper *h) { return &h->loop; }
VmmChannel *vmm_helper_channel(VmmHelper *h) { return h->channel; }
const VmmSandboxPolicy *vmm_helper_policy(VmmHelper *h) { return &h->policy; }
void vmm_helper_set_data(VmmHelper *h, gpointer data) { h->data = data; }
gpointer vmm_helper_get_data(VmmHelper *h) { return h->data; }

static gint helper_stopping;

gboolean vmm_helper_stopping(void)
{
    return g_atomic_int_get(&helper_stopping) != 0;
}

/* Profiles without fs-read cannot open /proc/self/status once sandboxed, so
 * the file is opened before and re-read from the start each time. */
static JsonObject *read_sandbox_state(VmmHelper *h)
{
    char buf[8192];
    ssize_t n = h->proc_status_fd >= 0 ? pread(h->proc_status_fd, buf, sizeof(buf) - 1, 0) : -1;
    if (n <= 0)
        return json_object_new();
    buf[n] = '\0';
    JsonObject *o = vmm_sandbox_state_parse(buf);
    return o ? o : json_object_new();
}

static JsonObject *sandbox_report(VmmHelper *h)
{
    JsonObject *o = read_sandbox_state(h);
    g_autofree char *spec = vmm_sandbox_policy_to_string(&h->policy);
    json_object_set_string_member(o, "policy", spec);
    return o;
}

static void reply_query_sandbox(VmmHelper *h, VmmChannelRequest *req)
{
    JsonObject *o = sandbox_report(h);
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) list = vmm_sandbox_allowlist(h->desc->profile, &h->policy, &err);
    if (!list) {
        json_object_unref(o);
        vmm_channel_reply_gerror(req, err);
        return;
    }
    JsonArray *arr = json_array_new();
    for (guint i = 0; i < list->len; i++)
        json_array_add_string_element(arr, g_ptr_array_index(list, i));
    json_object_set_array_member(o, "allowlist", arr);
    vmm_channel_reply(req, o, NULL, 0);
}

static void on_request(VmmChannel *ch, VmmChannelRequest *req, gpointer user)
{
    VmmHelper *h = user;
    const char *cmd = vmm_channel_request_command(req);

    if (g_str_equal(cmd, VMM_CMD_QUERY_STATUS)) {
        JsonObject *o = json_object_new();
        json_object_set_string_member(o, "role", h->desc->role);
        json_object_set_int_member(o, "pid", getpid());
        json_object_set_string_member(o, "status", "running");
        json_object_set_object_member(o, "sandbox", sandbox_report(h));
        vmm_channel_reply(req, o, NULL, 0);
    } else if (g_str_equal(cmd, VMM_CMD_QUERY_SANDBOX)) {
        reply_query_sandbox(h, req);
    } else if (g_str_equal(cmd, VMM_CMD_SHUTDOWN)) {
        vmm_channel_reply(req, NULL, NULL, 0);
        g_atomic_int_set(&helper_stopping, 1);
        vmm_info("shutdown requested");
        uv_stop(&h->loop);
    } else if (!h->desc->handle_request || !h->desc->handle_request(h, req)) {
        vmm_channel_reply_error(req, VMM_ERR_COMMAND_NOT_FOUND,
                                "%s: the command '%s' was not found", h->desc->role, cmd);
    }
}

static void on_closed(VmmChannel *ch, const GError *why, gpointer user)
{
    VmmHelper *h = user;
    /* Without its supervisor a helper has nothing left to do. */
    if (why && why->code != VMM_ERROR_CLOSED) {
        vmm_error("control channel failed: %s", why->message);
        h->exit_code = 1;
    }
    uv_stop(&h->loop);
}

static const VmmChannelOps helper_channel_ops = {
    .on_request = on_request,
    .on_closed = on_closed,
};

static int dump_seccomp(const VmmHelperDesc *desc, const VmmSandboxPolicy *policy)
{
    g_autofree char *text = vmm_sandbox_dump(desc->profile, policy);
    fputs(text, stdout);
    return 0;
}

static void print_usage(const char *role)
{
    printf("Usage: %s --control-fd N [--sandbox SPEC] [--log SPEC]\n"
           "       %s --dump-seccomp [--sandbox SPEC]\n"
           "A helper of vmmd: it is started by vmmd, not by hand.\n", role, role);
}

static gboolean parse_args(VmmHelper *h, int argc, char **argv, int *control_fd,
                           gboolean *dump, GError **error)
{
    g_autofree char *sandbox = NULL, *log = NULL;
    gboolean help = FALSE;
    GOptionEntry entries[] = {
        { "control-fd", 0, 0, G_OPTION_ARG_INT, control_fd, "Control socket fd", "N" },
        { "sandbox", 0, 0, G_OPTION_ARG_STRING, &sandbox, "Sandbox policy (as -sandbox)", "SPEC" },
        { "log", 0, 0, G_OPTION_ARG_STRING, &log, "Log levels (as VMM_LOG)", "SPEC" },
        { "dump-seccomp", 0, 0, G_OPTION_ARG_NONE, dump, "Print the effective allowlist", NULL },
        { "usage", 0, 0, G_OPTION_ARG_NONE, &help, "Show usage", NULL },
        { NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new(NULL);
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, error))
        return FALSE;
    if (help) {
        print_usage(h->desc->role);
        exit(0);
    }
    if (argc > 1) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "unexpected argument '%s'", argv[1]);
        return FALSE;
    }
    if (log && !vmm_log_set_spec(log, error))
        return FALSE;
    if (sandbox && !vmm_sandbox_policy_parse(sandbox, &h->policy, error))
        return FALSE;
    return TRUE;
}

int vmm_helper_main(int argc, char **argv, const VmmHelperDesc *desc)
{
    VmmHelper h = { .desc = desc, .proc_status_fd = -1 };
    int control_fd = -1;
    gboolean dump = FALSE;
    g_autoptr(GError) err = NULL;

    vmm_log_init(desc->role);
    vmm_sandbox_policy_init(&h.policy);
    if (!parse_args(&h, argc, argv, &control_fd, &dump, &err)) {
        fprintf(stderr, "%s: %s\n", desc->role, err->message);
        return 2;
    }
    if (dump)
        return dump_seccomp(desc, &h.policy);
    if (control_fd < 0) {
        fprintf(stderr, "%s: --control-fd is required (this helper is started by vmmd)\n",
                desc->role);
        return 2;
    }
    uv_loop_init(&h.loop);
    h.channel = vmm_channel_new(&h.loop, control_fd, desc->role, NULL, &helper_channel_ops, &h, &err);
    if (!h.channel) {
        vmm_error("control channel: %s", err->message);
        return 1;
    }
    h.proc_status_fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (desc->prepare && !desc->prepare(&h, &err)) {
        vmm_error("%s", err->message);
        return 1;
    }
    if (desc->enter_sandbox ? !desc->enter_sandbox(&h, &h.policy, &err)
                            : !vmm_sandbox_enter(desc->profile, &h.policy, &err)) {
        vmm_error("sandbox: %s", err->message);
        return 1;
    }
    vmm_debug("sandboxed; serving the control channel");
    uv_run(&h.loop, UV_RUN_DEFAULT);
    if (desc->cleanup)
        desc->cleanup(&h);
    vmm_channel_free(h.channel);
    /* Let the channel's handles close before the loop goes. */
    uv_run(&h.loop, UV_RUN_NOWAIT);
    uv_loop_close(&h.loop);
    return h.exit_code;
}
