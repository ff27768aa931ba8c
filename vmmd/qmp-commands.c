/* The QMP commands vmmd answers. */
#include "vmmd/qmp.h"
#include "vmmd/memory-backend.h"
#include "vmmd/drive-run.h"
#include "common/log.h"
#include "proto/control.h"

static void cmd_qmp_capabilities(Vmmd *d, VmmQmpRequest *req, JsonObject *args)
{
    vmm_qmp_return(req, NULL);
}

static void cmd_query_version(Vmmd *d, VmmQmpRequest *req, JsonObject *args)
{
    JsonObject *qemu = json_object_new();
    json_object_set_int_member(qemu, "major", VMM_VERSION_MAJOR);
    json_object_set_int_member(qemu, "minor", VMM_VERSION_MINOR);
    json_object_set_int_member(qemu, "micro", VMM_VERSION_MICRO);
    JsonObject *o = json_object_new();
    json_object_set_object_member(o, "qemu", qemu);
    json_object_set_string_member(o, "package", "vmmd " VMM_VERSION_STRING);
    vmm_qmp_return_object(req, o);
}

static void cmd_query_commands(Vmmd *d, VmmQmpRequest *req, JsonObject *args)
{
    guint n;
    const VmmQmpCommand *cmds = vmm_qmp_commands(&n);
    JsonArray *arr = json_array_new();
    for (guint i = 0; i < n; i++) {
        JsonObject *o = json_object_new();
        json_object_set_string_member(o, "name", cmds[i].name);
        json_array_add_object_element(arr, o);
    }
    vmm_qmp_return(req, json_node_init_array(json_node_alloc(), arr));
    json_array_unref(arr);
}

static void cmd_query_status(Vmmd *d, VmmQmpRequest *req, JsonObject *args)
{
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "status", d->status);
    json_object_set_boolean_member(o, "singlestep", FALSE);
    json_object_set_boolean_member(o, "running", g_str_equal(d->status, "running"));
    vmm_qmp_return_object(req, o);
}

static void cmd_query_name(Vmmd *d, VmmQmpRequest *req, JsonObject *args)
{
    JsonObject *o = json_object_new();
    if (d->config->name)
        json_object_set_string_member(o, "name", d->config->name);
    vmm_qmp_return_object(req, o);
}

static void cmd_quit(Vmmd *d, VmmQmpRequest *req, JsonObject *args)
{
    vmm_qmp_return(req, NULL);
    vmmd_request_quit(d, "host-qmp-quit");
}

/* query-helpers: every helper's state, with its sandbox as it reports it. */
typedef struct {
    VmmQmpRequest *req;
    JsonArray *list;
    guint pending;
} HelpersQuery;

static void helpers_query_done(HelpersQuery *q)
{
    if (--q->pending > 0)
        return;
    vmm_qmp_return(q->req, json_node_init_array(json_node_alloc(), q->list));
    json_array_unref(q->list);
    g_free(q);
}

typedef struct {
    HelpersQuery *q;
    JsonObject *entry;
} HelperEntry;

static void on_helper_status(VmmChannel *ch, JsonObject *result, const GError *error,
                             int *fds, guint nfds, gpointer user)
{
    HelperEntry *e = user;
    if (result && json_object_has_member(result, "sandbox"))
        json_object_set_member(e->entry, "sandbox",
                               json_node_copy(json_object_get_member(result, "sandbox")));
    else if (error)
        json_object_set_string_member(e->entry, "error", error->message);
    helpers_query_done(e->q);
    g_free(e);
}

static void cmd_query_helpers(Vmmd *d, VmmQmpRequest *req, JsonObject *args)
{
    HelpersQuery *q = g_new0(HelpersQuery, 1);
    q->req = req;
    q->list = json_array_new();
    q->pending = 1;
    for (guint i = 0; i < d->helpers->len; i++) {
        VmmHelperProc *hp = d->helpers->pdata[i];
        JsonObject *o = json_object_new();
        json_object_set_string_member(o, "helper", vmm_helper_proc_role(hp));
        json_object_set_int_member(o, "pid", vmm_helper_proc_pid(hp));
        json_object_set_string_member(o, "state", vmm_helper_proc_state(hp));
        json_object_set_int_member(o, "restarts", vmm_helper_proc_restarts(hp));
        json_array_add_object_element(q->list, o);
        VmmChannel *ch = vmm_helper_proc_channel(hp);
        if (ch && vmm_channel_is_ready(ch)) {
            HelperEntry *e = g_new0(HelperEntry, 1);
            e->q = q;
            e->entry = o;
            q->pending++;
            if (!vmm_channel_call(ch, VMM_CMD_QUERY_STATUS, NULL, NULL, 0, on_helper_status, e, NULL)) {
                q->pending--;
                g_free(e);
            }
        }
    }
    helpers_query_done(q);
}

static void on_kvm_reply(VmmChannel *ch, JsonObject *result, const GError *error,
                         int *fds, guint nfds, gpointer user)
{
    VmmQmpRequest *req = user;
    if (error) {
        vmm_qmp_error(req, "GenericError", "vcpu-worker: %s", error->message);
        return;
    }
    vmm_qmp_return_object(req, json_object_ref(result));
}

static void cmd_query_kvm(Vmmd *d, VmmQmpRequest *req, JsonObject *args)
{
    VmmHelperProc *hp = vmm_supervisor_find(d, "vcpu-worker");
    VmmChannel *ch = hp ? vmm_helper_proc_channel(hp) : NULL;
    if (d->kvm_fd < 0 || !ch || !vmm_channel_is_ready(ch)) {
        JsonObject *o = json_object_new();
        json_object_set_boolean_member(o, "enabled", FALSE);
        json_object_set_boolean_member(o, "present", d->kvm_fd >= 0);
        vmm_qmp_return_object(req, o);
        return;
    }
    if (!vmm_channel_call(ch, VMM_CMD_QUERY_KVM, NULL, NULL, 0, on_kvm_reply, req, NULL))
        vmm_qmp_error(req, "GenericError", "vcpu-worker is not reachable");
}

static void cmd_query_block(Vmmd *d, VmmQmpRequest *req, JsonObject *args)
{
    JsonArray *list = vmm_drives_query_block(d);
    vmm_qmp_return(req, json_node_init_array(json_node_alloc(), list));
    json_array_unref(list);
}

/* query-memdev: the guest's RAM backend (QEMU lists "microvm.ram" for -m). */
static void cmd_query_memdev(Vmmd *d, VmmQmpRequest *req, JsonObject *args)
{
    JsonArray *list = json_array_new();
    if (d->guest_ram)
        json_array_add_object_element(list, vmm_guest_ram_memdev_info(d->guest_ram));
    vmm_qmp_return(req, json_node_init_array(json_node_alloc(), list));
    json_array_unref(list);
}

static const VmmQmpCommand commands[] = {
    { "qmp_capabilities", cmd_qmp_capabilities, (const char *const[]){ "enable", NULL } },
    { "query-version", cmd_query_version, NULL },
    { "query-commands", cmd_query_commands, NULL },
    { "query-status", cmd_query_status, NULL },
    { "query-name", cmd_query_name, NULL },
    { "query-kvm", cmd_query_kvm, NULL },
    { "query-block", cmd_query_block, NULL },
    { "query-memdev", cmd_query_memdev, NULL },
    { "query-helpers", cmd_query_helpers, NULL },
    { "quit", cmd_quit, NULL },
};

const VmmQmpCommand *vmm_qmp_commands(guint *n)
{
    *n = G_N_ELEMENTS(commands);
    return commands;
}
