/* The QMP commands vmmd answers. */
#include "vmmd/qmp.h"
#include "vmmd/memory-backend.h"
#include "vmmd/drive-run.h"
#include "vmmd/machine.h"
#include "vmmd/vm.h"
#include "vmmd/vm-options.h"
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

/* ---- The VM's run state ---- */

static void on_vm_done(Vmmd *d, const GError *error, gpointer user)
{
    VmmQmpRequest *req = user;
    if (error)
        vmm_qmp_error(req, "GenericError", "%s", error->message);
    else
        vmm_qmp_return(req, NULL);
}

static void cmd_stop(Vmmd *d, VmmQmpRequest *req, JsonObject *args)
{
    vmm_vm_stop(d, "paused", on_vm_done, req);
}

static void cmd_cont(Vmmd *d, VmmQmpRequest *req, JsonObject *args)
{
    vmm_vm_cont(d, on_vm_done, req);
}

static void cmd_system_reset(Vmmd *d, VmmQmpRequest *req, JsonObject *args)
{
    vmm_vm_reset(d, "host-qmp-system-reset", FALSE, on_vm_done, req);
}

static void cmd_system_powerdown(Vmmd *d, VmmQmpRequest *req, JsonObject *args)
{
    vmm_vm_powerdown(d, on_vm_done, req);
}

/* ---- query-cpus-fast ---- */

/* QEMU's fields for an x86 CPU; TID is the vCPU thread in vcpu-worker. */
static JsonObject *cpu_info(Vmmd *d, guint index, gint64 tid)
{
    const VmmVmConfig *vm = d->config->vm;
    guint64 threads = MAX(vm->threads, 1), cores = MAX(vm->cores, 1);
    JsonObject *props = json_object_new();
    json_object_set_int_member(props, "core-id", (gint64)((index / threads) % cores));
    json_object_set_int_member(props, "thread-id", (gint64)(index % threads));
    json_object_set_int_member(props, "socket-id", (gint64)(index / (threads * cores)));
    JsonObject *o = json_object_new();
    g_autofree char *path = g_strdup_printf("/machine/unattached/device[%u]", index);
    json_object_set_int_member(o, "cpu-index", index);
    json_object_set_string_member(o, "qom-path", path);
    json_object_set_int_member(o, "thread-id", tid);
    json_object_set_object_member(o, "props", props);
    json_object_set_string_member(o, "target", "x86_64");
    return o;
}

typedef struct {
    Vmmd *d;
    VmmQmpRequest *req;
} CpusQuery;

/* RESULT (vcpu-worker's vm-query-cpus) may be NULL: thread ids are then 0. */
static void return_cpus(CpusQuery *q, JsonObject *result)
{
    JsonArray *tids = result && json_object_has_member(result, "cpus") ?
                      json_object_get_array_member(result, "cpus") : NULL;
    JsonArray *out = json_array_new();
    guint n = (guint)MAX(q->d->config->vm ? q->d->config->vm->cpus : 1, 1);
    for (guint i = 0; i < n; i++) {
        gint64 tid = 0;
        if (tids && i < json_array_get_length(tids))
            tid = json_object_get_int_member_with_default(json_array_get_object_element(tids, i),
                                                          "thread-id", 0);
        json_array_add_object_element(out, cpu_info(q->d, i, tid));
    }
    vmm_qmp_return(q->req, json_node_init_array(json_node_alloc(), out));
    json_array_unref(out);
    g_free(q);
}

static void on_query_cpus(VmmChannel *ch, JsonObject *result, const GError *error, int *fds,
                          guint nfds, gpointer user)
{
    return_cpus(user, error ? NULL : result);
}

static void cmd_query_cpus_fast(Vmmd *d, VmmQmpRequest *req, JsonObject *args)
{
    CpusQuery *q = g_new0(CpusQuery, 1);
    q->d = d;
    q->req = req;
    VmmHelperProc *hp = vmm_supervisor_find(d, "vcpu-worker");
    VmmChannel *ch = hp ? vmm_helper_proc_channel(hp) : NULL;
    if (d->guest_state != VMM_GUEST_RUNNING || !ch || !vmm_channel_is_ready(ch) ||
        !vmm_channel_call(ch, VMM_CMD_VM_QUERY_CPUS, NULL, NULL, 0, on_query_cpus, q, NULL))
        return_cpus(q, NULL);
}

/* ---- query-machines ---- */

static void cmd_query_machines(Vmmd *d, VmmQmpRequest *req, JsonObject *args)
{
    JsonArray *list = json_array_new();
    for (const VmmMachineType *const *t = vmm_machine_registry(); *t; t++) {
        JsonObject *o = json_object_new();
        json_object_set_string_member(o, "name", (*t)->name);
        if ((*t)->alias)
            json_object_set_string_member(o, "alias", (*t)->alias);
        if ((*t)->is_default)
            json_object_set_boolean_member(o, "is-default", TRUE);
        json_object_set_int_member(o, "cpu-max", (*t)->max_cpus);
        json_object_set_boolean_member(o, "hotpluggable-cpus", FALSE);
        json_object_set_boolean_member(o, "numa-mem-supported", FALSE);
        json_object_set_boolean_member(o, "deprecated", FALSE);
        json_object_set_string_member(o, "default-cpu-type", "host-x86_64-cpu");
        json_object_set_string_member(o, "default-ram-id", "microvm.ram");
        json_array_add_object_element(list, o);
    }
    vmm_qmp_return(req, json_node_init_array(json_node_alloc(), list));
    json_array_unref(list);
}

/* ---- human-monitor-command ---- */

/* HMP "info status", as QEMU prints it: the state in parentheses unless it
 * is plain running or paused. */
static char *hmp_info_status(Vmmd *d)
{
    gboolean running = g_str_equal(d->status, "running");
    gboolean plain = running || g_str_equal(d->status, "paused");
    return g_strdup_printf("VM status: %s%s%s%s\r\n", running ? "running" : "paused",
                           plain ? "" : " (", plain ? "" : d->status, plain ? "" : ")");
}

static void cmd_human_monitor_command(Vmmd *d, VmmQmpRequest *req, JsonObject *args)
{
    const char *line = json_object_get_string_member_with_default(args, "command-line", NULL);
    if (!line) {
        vmm_qmp_error(req, "GenericError", "Parameter 'command-line' is missing");
        return;
    }
    /* Words separated by any run of blanks, as HMP's parser reads them. */
    g_auto(GStrv) words = g_strsplit_set(line, " \t", -1);
    g_autoptr(GString) norm = g_string_new(NULL);
    for (guint i = 0; words[i]; i++) {
        if (*words[i])
            g_string_append_printf(norm, "%s%s", norm->len ? " " : "", words[i]);
    }
    const char *cmdline = norm->str;
    g_autofree char *out = NULL;
    if (g_str_equal(cmdline, "info status"))
        out = hmp_info_status(d);
    else
        out = g_strdup_printf("unknown command: '%s'\r\n", cmdline);
    vmm_qmp_return(req, json_node_init_string(json_node_alloc(), out));
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
    { "stop", cmd_stop, NULL },
    { "cont", cmd_cont, NULL },
    { "system_reset", cmd_system_reset, NULL },
    { "system_powerdown", cmd_system_powerdown, NULL },
    { "query-cpus-fast", cmd_query_cpus_fast, NULL },
    { "query-machines", cmd_query_machines, (const char *const[]){ "compat-props", NULL } },
    { "human-monitor-command", cmd_human_monitor_command,
      (const char *const[]){ "command-line", "cpu-index", NULL } },
};

const VmmQmpCommand *vmm_qmp_commands(guint *n)
{
    *n = G_N_ELEMENTS(commands);
    return commands;
}
