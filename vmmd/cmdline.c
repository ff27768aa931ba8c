/* vmmd's command line: QEMU's options and syntax, one table. */
#include "vmmd/vmmd.h"
#include "vmmd/vm-options.h"
#include "common/error.h"
#include "common/log.h"
#include "common/opts.h"
#include "common/readconfig.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char *const default_helpers[] = { "vcpu-worker", "blockd", "fsd", "netfilterd", NULL };

static void global_free(gpointer p)
{
    VmmGlobal *g = p;
    g_free(g->driver);
    g_free(g->property);
    g_free(g->value);
    g_free(g);
}

static void qmp_addr_free(gpointer p)
{
    VmmQmpAddr *a = p;
    g_free(a->path);
    g_free(a);
}

void vmm_config_init(VmmConfig *c)
{
    memset(c, 0, sizeof(*c));
    vmm_sandbox_policy_init(&c->sandbox);
    c->globals = g_ptr_array_new_with_free_func(global_free);
    c->qmp = g_ptr_array_new_with_free_func(qmp_addr_free);
    c->helpers = g_strdupv((char **)default_helpers);
    c->max_restarts = 5;
    c->backoff_ms = 100;
    c->vm = g_new0(VmmVmConfig, 1);
    vmm_vm_config_init(c->vm);
}

void vmm_config_clear(VmmConfig *c)
{
    g_free(c->name);
    g_free(c->process_name);
    g_ptr_array_unref(c->globals);
    g_ptr_array_unref(c->qmp);
    g_free(c->pidfile);
    g_free(c->helper_dir);
    g_strfreev(c->helpers);
    vmm_vm_config_clear(c->vm);
    g_free(c->vm);
}

/* Every option has one handler that takes an already-parsed object, so that
 * the command line and -readconfig sections share the same code. */
typedef gboolean (*ApplyFn)(VmmConfig *c, JsonObject *o, GError **error);

static const VmmOptKey name_keys[] = {
    { "guest", VMM_OPT_STRING, "the guest name (QMP, window titles, logs)", NULL },
    { "process", VMM_OPT_STRING, "the process name (comm) of vmmd", NULL },
    { "debug-threads", VMM_OPT_BOOL, "name threads after their role", "off" },
    { NULL },
};
static const VmmOptSpec name_spec = { "name", "guest", name_keys };

static gboolean apply_name(VmmConfig *c, JsonObject *o, GError **error)
{
    if (vmm_opts_has(o, "guest")) {
        g_free(c->name);
        c->name = g_strdup(vmm_opts_get_string(o, "guest", NULL));
    }
    if (vmm_opts_has(o, "process")) {
        g_free(c->process_name);
        c->process_name = g_strdup(vmm_opts_get_string(o, "process", NULL));
    }
    c->debug_threads = vmm_opts_get_bool(o, "debug-threads", c->debug_threads);
    return TRUE;
}

static const VmmOptKey global_keys[] = {
    { "driver", VMM_OPT_STRING, "device type", NULL },
    { "property", VMM_OPT_STRING, "property name", NULL },
    { "value", VMM_OPT_STRING, "property value", NULL },
    { NULL },
};
static const VmmOptSpec global_spec = { "global", NULL, global_keys };

static gboolean add_global(VmmConfig *c, const char *driver, const char *prop,
                           const char *value, GError **error)
{
    if (!driver || !*driver || !prop || !*prop || !value) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "-global: expected driver.property=value or driver=D,property=P,value=V");
        return FALSE;
    }
    VmmGlobal *g = g_new0(VmmGlobal, 1);
    g->driver = g_strdup(driver);
    g->property = g_strdup(prop);
    g->value = g_strdup(value);
    g_ptr_array_add(c->globals, g);
    return TRUE;
}

static gboolean apply_global(VmmConfig *c, JsonObject *o, GError **error)
{
    return add_global(c, vmm_opts_get_string(o, "driver", NULL),
                      vmm_opts_get_string(o, "property", NULL),
                      vmm_opts_get_string(o, "value", NULL), error);
}

gboolean vmm_config_add_global(VmmConfig *c, const char *value, GError **error)
{
    /* QEMU's short form: the first '=' ends "driver.property"; the first '.'
     * before it splits driver from property. */
    const char *eq = strchr(value, '=');
    const char *dot = eq ? memchr(value, '.', eq - value) : NULL;
    if (dot && !strstr(value, "driver=")) {
        g_autofree char *driver = g_strndup(value, dot - value);
        g_autofree char *prop = g_strndup(dot + 1, eq - dot - 1);
        return add_global(c, driver, prop, eq + 1, error);
    }
    g_autoptr(JsonObject) o = vmm_opts_parse(&global_spec, value, error);
    return o && apply_global(c, o, error);
}

static const VmmOptKey qmp_keys[] = {
    { "path", VMM_OPT_STRING, "unix:PATH of the socket", NULL },
    { "server", VMM_OPT_BOOL, "listen (vmmd only listens)", "on" },
    { "wait", VMM_OPT_BOOL, "wait for a client before starting helpers", "on" },
    { "nowait", VMM_OPT_BOOL, "old spelling of wait=off", NULL },
    { NULL },
};
static const VmmOptSpec qmp_spec = { "qmp", "path", qmp_keys };

static gboolean add_qmp(VmmConfig *c, const char *value, GError **error)
{
    g_autoptr(JsonObject) o = vmm_opts_parse(&qmp_spec, value, error);
    if (!o)
        return FALSE;
    const char *path = vmm_opts_get_string(o, "path", "");
    if (!g_str_has_prefix(path, "unix:")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "-qmp %s: only unix:PATH sockets are supported", path);
        return FALSE;
    }
    if (!vmm_opts_get_bool(o, "server", FALSE)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "-qmp %s: vmmd only serves QMP (add server=on)", path);
        return FALSE;
    }
    if (vmm_opts_has(o, "nowait"))
        vmm_warn_deprecated("-qmp ...,nowait", "wait=off");
    VmmQmpAddr *a = g_new0(VmmQmpAddr, 1);
    a->path = g_strdup(path + strlen("unix:"));
    a->wait = vmm_opts_get_bool(o, "wait", TRUE) && !vmm_opts_get_bool(o, "nowait", FALSE);
    if (!*a->path) {
        qmp_addr_free(a);
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "-qmp: unix: needs a path");
        return FALSE;
    }
    g_ptr_array_add(c->qmp, a);
    return TRUE;
}

static const VmmOptKey supervise_keys[] = {
    { "max-restarts", VMM_OPT_NUMBER, "restarts of a crashed helper before giving up", "5" },
    { "backoff-ms", VMM_OPT_NUMBER, "delay before the first restart, doubled each time", "100" },
    { NULL },
};
static const VmmOptSpec supervise_spec = { "supervise", NULL, supervise_keys };

static gboolean apply_supervise(VmmConfig *c, JsonObject *o, GError **error)
{
    c->max_restarts = vmm_opts_get_uint(o, "max-restarts", c->max_restarts);
    c->backoff_ms = vmm_opts_get_uint(o, "backoff-ms", c->backoff_ms);
    return TRUE;
}

static gboolean apply_sandbox_string(VmmConfig *c, const char *value, GError **error)
{
    return vmm_sandbox_policy_parse(value, &c->sandbox, error);
}

static gboolean set_helpers(VmmConfig *c, const char *value, GError **error)
{
    g_auto(GStrv) list = g_strsplit(value, ",", -1);
    for (char **h = list; *h; h++) {
        if (!g_strv_contains(default_helpers, *h)) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "-helpers: unknown helper '%s' (known: vcpu-worker, blockd, fsd, netfilterd)", *h);
            return FALSE;
        }
    }
    g_strfreev(c->helpers);
    c->helpers = g_steal_pointer(&list);
    c->helpers_given = TRUE;
    return TRUE;
}

static gboolean needs_own_fsd(const VmmVmConfig *vm)
{
    for (guint i = 0; i < vm->fsdevs.fsdevs->len; i++) {
        if (!vmm_fsdev_is_external(vm->fsdevs.fsdevs->pdata[i]))
            return TRUE;
    }
    return FALSE;
}

/* A VM starts the helpers its devices need and no others (each one costs a
 * process start and a sandbox before the guest can run); without -kernel
 * vmmd runs all of them, as the foundation did. -helpers decides otherwise. */
static void choose_vm_helpers(VmmConfig *c)
{
    if (c->helpers_given || !c->vm->kernel)
        return;
    GPtrArray *list = g_ptr_array_new();
    g_ptr_array_add(list, g_strdup("vcpu-worker"));
    if (c->vm->drives.drives->len > 0)
        g_ptr_array_add(list, g_strdup("blockd"));
    if (needs_own_fsd(c->vm))
        g_ptr_array_add(list, g_strdup("fsd"));
    g_ptr_array_add(list, NULL);
    g_strfreev(c->helpers);
    c->helpers = (char **)g_ptr_array_free(list, FALSE);
}

/* -readconfig groups map onto the option of the same name. */
static gboolean apply_section(VmmConfig *c, VmmConfigSection *s, const char *file, GError **error)
{
    const VmmOptSpec *spec = NULL;
    ApplyFn apply = NULL;
    if (g_str_equal(s->group, "name")) {
        spec = &name_spec;
        apply = apply_name;
    } else if (g_str_equal(s->group, "global")) {
        spec = &global_spec;
        apply = apply_global;
    } else if (g_str_equal(s->group, "supervise")) {
        spec = &supervise_spec;
        apply = apply_supervise;
    } else if (g_str_equal(s->group, "sandbox")) {
        /* The sandbox keys are few and unescaped: rebuild the option string. */
        g_autoptr(GString) v = g_string_new(NULL);
        for (guint i = 0; i < s->keys->len; i++)
            g_string_append_printf(v, "%s%s=%s", i ? "," : "", (char *)s->keys->pdata[i],
                                   (char *)s->values->pdata[i]);
        if (!apply_sandbox_string(c, v->str, error)) {
            g_prefix_error(error, "%s:%d: ", file, s->line);
            return FALSE;
        }
        return TRUE;
    } else {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%s:%d: group '%s' is not an option vmmd has", file, s->line, s->group);
        return FALSE;
    }
    g_autoptr(JsonObject) o = vmm_opts_from_pairs(spec, (const char *const *)s->keys->pdata,
                                                  (const char *const *)s->values->pdata,
                                                  s->keys->len, error);
    if (!o || !apply(c, o, error)) {
        g_prefix_error(error, "%s:%d: ", file, s->line);
        return FALSE;
    }
    return TRUE;
}

static gboolean read_config_file(VmmConfig *c, const char *path, GError **error)
{
    g_autoptr(GPtrArray) sections = vmm_readconfig_load(path, error);
    if (!sections)
        return FALSE;
    for (guint i = 0; i < sections->len; i++) {
        if (!apply_section(c, sections->pdata[i], path, error))
            return FALSE;
    }
    return TRUE;
}

static void print_help(void)
{
    printf("Usage: vmmd [options]\n\n"
           "QEMU-compatible options:\n"
           "-name [guest=]NAME[,process=NAME][,debug-threads=on|off]\n"
           "-sandbox on|off[,obsolete=allow|deny][,elevateprivileges=allow|deny|children]\n"
           "        [,spawn=allow|deny][,resourcecontrol=allow|deny]\n"
           "-global DRIVER.PROP=VALUE | -global driver=D,property=P,value=V\n"
           "-readconfig FILE   read options from a QEMU config file\n"
           "-qmp unix:PATH,server=on[,wait=on|off]\n"
           "-pidfile FILE      write the pid to FILE\n"
           "-daemonize         detach once started\n"
           "-machine TYPE[,accel=kvm][,kernel-irqchip=on|off|split][,dump-guest-core=on|off]\n"
           "        [,mem-merge=on|off][,memory-backend=ID]   (-machine help lists types)\n"
           "-accel kvm, -enable-kvm\n"
           "-m [size=]SIZE[,slots=N,maxmem=SIZE]   RAM (default 128M)\n"
           "-smp [cpus=]N[,sockets=S][,dies=D][,cores=C][,threads=T][,maxcpus=M]\n"
           "-cpu host[,+FEATURE][,-FEATURE]\n"
           "-kernel FILE, -initrd FILE, -append CMDLINE\n"
           "-nographic, -serial stdio|null|none|file:PATH|unix:PATH[,server=on][,wait=off]\n"
           "-object memory-backend-memfd,id=ID,size=SIZE[,share=on|off][,prealloc=on|off]\n"
           "-object memory-backend-file,id=ID,size=SIZE,mem-path=PATH[,share=..][,discard-data=..][,prealloc=..]\n"
           "-object rng-random,id=ID[,filename=/dev/urandom], -object rng-builtin,id=ID\n"
           "-no-reboot, -no-shutdown, -S\n"
           "        (the VM options are checked but not acted on yet: docs/machine.md)\n"
           "-version, -h\n\n"
           "vmmd options:\n"
           "-helpers LIST      helpers to run (default vcpu-worker,blockd,fsd,netfilterd; with\n"
           "                   -kernel only those the VM's devices need)\n"
           "-helper-dir DIR    where the helper binaries are (default: beside vmmd)\n"
           "-dump-seccomp      print the seccomp allowlists of vmmd and its spawner for\n"
           "                   the -sandbox given, and exit (each helper: HELPER --dump-seccomp)\n"
           "-supervise max-restarts=N,backoff-ms=MS\n"
           "                   restart a crashed helper N times (default 5), first after MS\n"
           "                   milliseconds (default 100), doubling each time\n"
           "Option values take 'help' to list their keys.\n");
}

static gboolean print_opt_help(const VmmOptSpec *spec, const char *value, gboolean *exit_now)
{
    if (!vmm_opts_wants_help(value))
        return FALSE;
    g_autofree char *text = vmm_opts_help(spec);
    fputs(text, stdout);
    *exit_now = TRUE;
    return TRUE;
}

static gboolean parse_json_opt(VmmConfig *c, const VmmOptSpec *spec, ApplyFn apply,
                               const char *value, gboolean *exit_now, GError **error)
{
    if (print_opt_help(spec, value, exit_now))
        return TRUE;
    g_autoptr(JsonObject) o = vmm_opts_parse(spec, value, error);
    return o && apply(c, o, error);
}

static gboolean takes_arg(const char *opt)
{
    static const char *const with_arg[] = {
        "name", "sandbox", "global", "readconfig", "qmp", "pidfile", "helpers",
        "helper-dir", "supervise", NULL,
    };
    return g_strv_contains(with_arg, opt) || vmm_vm_option_takes_arg(opt);
}

static gboolean apply_option(VmmConfig *c, const char *opt, const char *value,
                             gboolean *exit_now, GError **error)
{
    if (g_str_equal(opt, "name"))
        return parse_json_opt(c, &name_spec, apply_name, value, exit_now, error);
    if (g_str_equal(opt, "sandbox")) {
        if (vmm_opts_wants_help(value)) {
            printf("sandbox options:\n  enable=<bool> (on/off, default off)\n"
                   "  obsolete=allow|deny (default deny)\n"
                   "  elevateprivileges=allow|deny|children (default allow)\n"
                   "  spawn=allow|deny (default allow)\n"
                   "  resourcecontrol=allow|deny (default allow)\n");
            *exit_now = TRUE;
            return TRUE;
        }
        return apply_sandbox_string(c, value, error);
    }
    if (g_str_equal(opt, "global")) {
        if (print_opt_help(&global_spec, value, exit_now))
            return TRUE;
        return vmm_config_add_global(c, value, error);
    }
    if (g_str_equal(opt, "readconfig"))
        return read_config_file(c, value, error);
    if (g_str_equal(opt, "qmp")) {
        if (print_opt_help(&qmp_spec, value, exit_now))
            return TRUE;
        return add_qmp(c, value, error);
    }
    if (g_str_equal(opt, "pidfile")) {
        g_free(c->pidfile);
        c->pidfile = g_strdup(value);
        return TRUE;
    }
    if (g_str_equal(opt, "dump-seccomp")) {
        c->dump_seccomp = TRUE;
        return TRUE;
    }
    if (g_str_equal(opt, "daemonize")) {
        c->daemonize = TRUE;
        return TRUE;
    }
    if (g_str_equal(opt, "helpers"))
        return set_helpers(c, value, error);
    if (g_str_equal(opt, "helper-dir")) {
        g_free(c->helper_dir);
        c->helper_dir = g_strdup(value);
        return TRUE;
    }
    if (g_str_equal(opt, "supervise"))
        return parse_json_opt(c, &supervise_spec, apply_supervise, value, exit_now, error);
    if (vmm_vm_option_known(opt))
        return vmm_vm_config_apply(c->vm, opt, value, exit_now, error);
    if (g_str_equal(opt, "h") || g_str_equal(opt, "help")) {
        print_help();
        *exit_now = TRUE;
        return TRUE;
    }
    if (g_str_equal(opt, "version")) {
        printf("vmmd version %s\n", VMM_VERSION_STRING);
        *exit_now = TRUE;
        return TRUE;
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "-%s: invalid option", opt);
    return FALSE;
}

gboolean vmm_config_parse_argv(VmmConfig *c, int argc, char **argv, gboolean *exit_now,
                               GError **error)
{
    *exit_now = FALSE;
    for (int i = 1; i < argc && !*exit_now; i++) {
        const char *arg = argv[i];
        if (arg[0] != '-' || !arg[1]) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: vmmd takes no positional arguments yet", arg);
            return FALSE;
        }
        /* QEMU accepts --opt as well as -opt. */
        const char *opt = arg + 1 + (arg[1] == '-');
        const char *value = NULL;
        if (takes_arg(opt)) {
            if (i + 1 >= argc) {
                g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "-%s: requires an argument", opt);
                return FALSE;
            }
            value = argv[++i];
        }
        if (!apply_option(c, opt, value, exit_now, error))
            return FALSE;
    }
    /* Checks across options (SMP against the machine type, backend ids). */
    if (*exit_now)
        return TRUE;
    if (!vmm_vm_config_finish(c->vm, error))
        return FALSE;
    choose_vm_helpers(c);
    return TRUE;
}
