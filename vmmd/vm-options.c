/* The VM's options: QEMU's syntax, defaults and error messages. */
#include "vmmd/vm-options.h"
#include "vmmd/rng.h"
#include "common/error.h"
#include "common/log.h"
#include "common/opts.h"

#include <stdio.h>
#include <string.h>

#define MiB (1024ULL * 1024)
#define DEFAULT_RAM_SIZE (128 * MiB)

static void serial_free(gpointer p)
{
    VmmSerialConfig *s = p;
    g_free(s->path);
    g_free(s->chardev);
    g_free(s);
}

static void chardev_free(gpointer p)
{
    VmmChardevConfig *c = p;
    g_free(c->id);
    g_free(c->backend.path);
    g_free(c);
}

static void object_free(gpointer p)
{
    VmmObjectConfig *o = p;
    g_free(o->id);
    g_free(o->mem_path);
    g_free(o->filename);
    g_free(o);
}

void vmm_vm_config_init(VmmVmConfig *vm)
{
    memset(vm, 0, sizeof(*vm));
    vmm_machine_config_init(&vm->machine);
    vm->ram_size = DEFAULT_RAM_SIZE;
    vm->cpu_model = g_strdup("host");
    vm->cpu_features = g_ptr_array_new_with_free_func(g_free);
    vm->serials = g_ptr_array_new_with_free_func(serial_free);
    vm->chardevs = g_ptr_array_new_with_free_func(chardev_free);
    vm->objects = g_ptr_array_new_with_free_func(object_free);
    vm->rng_devices = g_ptr_array_new_with_free_func(vmm_rng_device_free);
    vmm_drive_set_init(&vm->drives);
    vmm_fsdev_set_init(&vm->fsdevs);
}

void vmm_vm_config_clear(VmmVmConfig *vm)
{
    vmm_machine_config_clear(&vm->machine);
    g_free(vm->cpu_model);
    g_ptr_array_unref(vm->cpu_features);
    g_free(vm->kernel);
    g_free(vm->initrd);
    g_free(vm->append);
    g_ptr_array_unref(vm->serials);
    g_ptr_array_unref(vm->chardevs);
    g_ptr_array_unref(vm->objects);
    g_ptr_array_unref(vm->rng_devices);
    vmm_drive_set_clear(&vm->drives);
    vmm_fsdev_set_clear(&vm->fsdevs);
    memset(vm, 0, sizeof(*vm));
}

/* ---- -m ---- */

static const VmmOptKey memory_keys[] = {
    /* A string: a suffix-less size means MiB here, unlike everywhere else. */
    { "size", VMM_OPT_STRING, "initial RAM size (MiB without a suffix)", "128M" },
    { "slots", VMM_OPT_NUMBER, "hotplug slots", "0" },
    { "maxmem", VMM_OPT_SIZE, "maximum RAM size with hotplug", NULL },
    { NULL },
};
static const VmmOptSpec memory_spec = { "m", "size", memory_keys };

static gboolean parse_ram_size(const char *s, guint64 *out, GError **error)
{
    guint64 sz;
    if (!*s || !vmm_parse_size(NULL, NULL, s, &sz, NULL)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "-m %s: Parameter 'size' expects a non-negative number below 2^64 "
                    "(optional suffix k, M, G, T, P or E)", s);
        return FALSE;
    }
    if (g_ascii_isdigit(s[strlen(s) - 1])) {
        if (sz > G_MAXUINT64 / MiB) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "-m %s: too large 'size' option value", s);
            return FALSE;
        }
        sz *= MiB;
    }
    /* QEMU: "-m 0" means the default; sizes round up to 8 KiB. */
    if (sz == 0)
        sz = DEFAULT_RAM_SIZE;
    if (sz > G_MAXUINT64 - 8191) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "-m %s: too large 'size' option value", s);
        return FALSE;
    }
    *out = (sz + 8191) & ~8191ULL;
    return TRUE;
}

static gboolean apply_memory(VmmVmConfig *vm, const char *value, GError **error)
{
    g_autoptr(JsonObject) o = vmm_opts_parse(&memory_spec, value, error);
    if (!o)
        return FALSE;
    guint64 size = vm->ram_size;
    if (vmm_opts_has(o, "size") && !parse_ram_size(vmm_opts_get_string(o, "size", ""), &size, error))
        return FALSE;
    guint64 slots = vmm_opts_get_uint(o, "slots", 0);
    guint64 maxmem = vmm_opts_get_uint(o, "maxmem", size);
    if (slots && !vmm_opts_has(o, "maxmem")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "-m %s: slots specified but no max-size", value);
        return FALSE;
    }
    if (maxmem < size) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "invalid value of maxmem: maximum memory size (0x%" G_GINT64_MODIFIER "x) must "
                    "be at least the initial memory size (0x%" G_GINT64_MODIFIER "x)", maxmem, size);
        return FALSE;
    }
    vm->ram_size = size;
    vm->ram_size_set = vm->ram_size_set || vmm_opts_has(o, "size");
    vm->maxmem = maxmem;
    vm->mem_slots = slots;
    return TRUE;
}

/* ---- -smp ---- */

static const VmmOptKey smp_keys[] = {
    { "cpus", VMM_OPT_NUMBER, "number of vCPUs at start", "1" },
    { "sockets", VMM_OPT_NUMBER, "sockets", NULL },
    { "dies", VMM_OPT_NUMBER, "dies per socket", "1" },
    { "cores", VMM_OPT_NUMBER, "cores per die", NULL },
    { "threads", VMM_OPT_NUMBER, "threads per core", NULL },
    { "maxcpus", VMM_OPT_NUMBER, "maximum vCPUs with hotplug", NULL },
    { NULL },
};
static const VmmOptSpec smp_spec = { "smp", "cpus", smp_keys };

static gboolean apply_smp(VmmVmConfig *vm, const char *value, GError **error)
{
    g_autoptr(JsonObject) o = vmm_opts_parse(&smp_spec, value, error);
    if (!o)
        return FALSE;
    static const char *const names[] = { "cpus", "sockets", "dies", "cores", "threads", "maxcpus" };
    guint64 *fields[] = { &vm->cpus, &vm->sockets, &vm->dies, &vm->cores, &vm->threads, &vm->max_cpus };
    for (guint i = 0; i < G_N_ELEMENTS(names); i++) {
        if (!vmm_opts_has(o, names[i]))
            continue;
        guint64 v = vmm_opts_get_uint(o, names[i], 0);
        /* QEMU 7.2 only warns (deprecated); vmmd makes it the error it will become. */
        if (v == 0 || v > G_MAXUINT32) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "-smp %s: Invalid CPU topology: CPU topology parameters must be greater "
                        "than zero (and fit in 32 bits): %s=%" G_GUINT64_FORMAT, value, names[i], v);
            return FALSE;
        }
        *fields[i] = v;
    }
    return TRUE;
}

/* QEMU 7.2's hw/core/machine-smp.c: missing values are computed preferring
 * cores over sockets; the product must equal maxcpus and cover cpus. */
static gboolean resolve_smp(VmmVmConfig *vm, GError **error)
{
    guint64 cpus = vm->cpus, sockets = vm->sockets, cores = vm->cores, threads = vm->threads;
    guint64 maxcpus = vm->max_cpus, dies = vm->dies ? vm->dies : 1;
    if (cpus == 0 && maxcpus == 0) {
        sockets = sockets ? sockets : 1;
        cores = cores ? cores : 1;
        threads = threads ? threads : 1;
    } else {
        maxcpus = maxcpus ? maxcpus : cpus;
        sockets = sockets ? sockets : 1;
        threads = threads ? threads : 1;
        cores = cores ? cores : maxcpus / (sockets * dies * threads);
    }
    guint64 total = sockets * dies * cores * threads;
    maxcpus = maxcpus ? maxcpus : total;
    cpus = cpus ? cpus : maxcpus;
    g_autofree char *topo = g_strdup_printf(
        "sockets (%" G_GUINT64_FORMAT ") * dies (%" G_GUINT64_FORMAT ") * cores (%" G_GUINT64_FORMAT
        ") * threads (%" G_GUINT64_FORMAT ")", sockets, dies, cores, threads);
    if (total != maxcpus) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "Invalid CPU topology: product of the hierarchy must match maxcpus: %s != "
                    "maxcpus (%" G_GUINT64_FORMAT ")", topo, maxcpus);
        return FALSE;
    }
    if (maxcpus < cpus) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "Invalid CPU topology: maxcpus must be equal to or greater than smp: %s == "
                    "maxcpus (%" G_GUINT64_FORMAT ") < smp_cpus (%" G_GUINT64_FORMAT ")",
                    topo, maxcpus, cpus);
        return FALSE;
    }
    if (maxcpus > vm->machine.type->max_cpus) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "Invalid SMP CPUs %" G_GUINT64_FORMAT ". The max CPUs supported by machine "
                    "'%s' is %u", maxcpus, vm->machine.type->name, vm->machine.type->max_cpus);
        return FALSE;
    }
    vm->cpus = cpus;
    vm->sockets = sockets;
    vm->dies = dies;
    vm->cores = cores;
    vm->threads = threads;
    vm->max_cpus = maxcpus;
    return TRUE;
}

/* ---- -cpu ---- */

static gboolean apply_cpu(VmmVmConfig *vm, const char *value, GError **error)
{
    g_auto(GStrv) parts = g_strsplit(value, ",", -1);
    if (!parts[0] || !g_str_equal(parts[0], "host")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "unable to find CPU model '%s' (vmmd supports only -cpu host)",
                    parts[0] ? parts[0] : "");
        return FALSE;
    }
    g_ptr_array_set_size(vm->cpu_features, 0);
    for (char **p = parts + 1; *p; p++) {
        const char *eq = strchr(*p, '=');
        gboolean on;
        if ((**p == '+' || **p == '-') && (*p)[1] && !eq) {
            g_ptr_array_add(vm->cpu_features, g_strdup(*p));
        } else if (eq && eq > *p && vmm_parse_bool(NULL, NULL, eq + 1, &on, NULL)) {
            g_ptr_array_add(vm->cpu_features,
                            g_strdup_printf("%c%.*s", on ? '+' : '-', (int)(eq - *p), *p));
        } else {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "-cpu %s: '%s': expected +FEATURE, -FEATURE or FEATURE=on|off", value, *p);
            return FALSE;
        }
    }
    return TRUE;
}

/* ---- -serial ---- */

static const VmmOptKey serial_unix_keys[] = {
    { "path", VMM_OPT_STRING, "socket path", NULL },
    { "server", VMM_OPT_BOOL, "listen instead of connecting", "off" },
    { "wait", VMM_OPT_BOOL, "wait for a client before starting the guest", "on" },
    { "nowait", VMM_OPT_BOOL, "old spelling of wait=off", NULL },
    { NULL },
};
static const VmmOptSpec serial_unix_spec = { "serial", "path", serial_unix_keys };

/* ---- -chardev ---- */

static const VmmOptKey chardev_keys[] = {
    { "backend", VMM_OPT_STRING, "socket, stdio, file or null", NULL },
    { "id", VMM_OPT_STRING, "the name -serial chardev:ID uses", NULL },
    { "path", VMM_OPT_STRING, "socket or file path", NULL },
    { "server", VMM_OPT_BOOL, "listen instead of connecting (socket)", "off" },
    { "wait", VMM_OPT_BOOL, "wait for a client before starting the guest (socket)", "on" },
    { "nowait", VMM_OPT_BOOL, "old spelling of wait=off", NULL },
    { "append", VMM_OPT_BOOL, "append to the file instead of truncating it", "off" },
    { "signal", VMM_OPT_BOOL, "Ctrl-C in the terminal ends vmmd (stdio)", "on" },
    /* Known, to be refused by name: vmmd's sockets are Unix sockets. */
    { "host", VMM_OPT_STRING, "TCP socket host (not supported)", NULL },
    { "port", VMM_OPT_STRING, "TCP socket port (not supported)", NULL },
    { NULL },
};
static const VmmOptSpec chardev_spec = { "chardev", "backend", chardev_keys };

static gboolean chardev_fail(GError **error, const char *value, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static gboolean chardev_fail(GError **error, const char *value, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "-chardev %s: %s", value, msg);
    return FALSE;
}

static gboolean chardev_backend(JsonObject *o, const char *value, VmmSerialConfig *b,
                                GError **error)
{
    const char *backend = vmm_opts_get_string(o, "backend", "");
    const char *path = vmm_opts_get_string(o, "path", NULL);
    if (g_str_equal(backend, "stdio")) {
        b->kind = VMM_SERIAL_STDIO;
        if (!vmm_opts_get_bool(o, "signal", TRUE))
            return chardev_fail(error, value, "signal=off is not supported by vmmd");
    } else if (g_str_equal(backend, "null")) {
        b->kind = VMM_SERIAL_NULL;
    } else if (g_str_equal(backend, "file")) {
        if (!path)
            return chardev_fail(error, value, "Parameter 'path' is missing");
        b->kind = VMM_SERIAL_FILE;
        b->append = vmm_opts_get_bool(o, "append", FALSE);
    } else if (g_str_equal(backend, "socket")) {
        if (!path || vmm_opts_has(o, "host") || vmm_opts_has(o, "port"))
            return chardev_fail(error, value, "vmmd's socket chardev needs path= (a Unix "
                                "socket; host=/port= are not supported)");
        if (vmm_opts_has(o, "nowait"))
            vmm_warn_deprecated("-chardev socket,...,nowait", "wait=off");
        b->kind = VMM_SERIAL_UNIX;
        b->server = vmm_opts_get_bool(o, "server", FALSE);
        b->wait = vmm_opts_get_bool(o, "wait", TRUE) && !vmm_opts_get_bool(o, "nowait", FALSE);
    } else {
        return chardev_fail(error, value, "'%s' is not a valid char driver name (vmmd has socket, "
                            "stdio, file and null)", backend);
    }
    b->path = g_strdup(path);
    return TRUE;
}

static gboolean apply_chardev(VmmVmConfig *vm, const char *value, GError **error)
{
    g_autoptr(GError) local = NULL;
    g_autoptr(JsonObject) o = vmm_opts_parse(&chardev_spec, value, &local);
    if (!o)
        return chardev_fail(error, value, "%s", local->message);
    const char *id = vmm_opts_get_string(o, "id", NULL);
    if (!id || !*id)
        return chardev_fail(error, value, "Parameter 'id' is missing");
    for (guint i = 0; i < vm->chardevs->len; i++) {
        if (g_str_equal(((VmmChardevConfig *)vm->chardevs->pdata[i])->id, id))
            return chardev_fail(error, value, "attempt to add duplicate property '%s' to object "
                                "(type 'container')", id);
    }
    VmmChardevConfig *c = g_new0(VmmChardevConfig, 1);
    c->id = g_strdup(id);
    if (!chardev_backend(o, value, &c->backend, error)) {
        chardev_free(c);
        return FALSE;
    }
    g_ptr_array_add(vm->chardevs, c);
    return TRUE;
}

/* -serial chardev:ID takes the named backend (a copy). */
static gboolean resolve_serial_chardevs(VmmVmConfig *vm, GError **error)
{
    for (guint i = 0; i < vm->serials->len; i++) {
        VmmSerialConfig *s = vm->serials->pdata[i];
        if (!s->chardev)
            continue;
        const VmmChardevConfig *c = NULL;
        for (guint j = 0; j < vm->chardevs->len && !c; j++) {
            if (g_str_equal(((VmmChardevConfig *)vm->chardevs->pdata[j])->id, s->chardev))
                c = vm->chardevs->pdata[j];
        }
        if (!c) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "-serial chardev:%s: chardev '%s' not found", s->chardev, s->chardev);
            return FALSE;
        }
        g_free(s->path);
        s->kind = c->backend.kind;
        s->path = g_strdup(c->backend.path);
        s->server = c->backend.server;
        s->wait = c->backend.wait;
        s->append = c->backend.append;
    }
    return TRUE;
}

static gboolean apply_serial(VmmVmConfig *vm, const char *value, GError **error)
{
    g_autoptr(GError) local = NULL;
    VmmSerialConfig *s = g_new0(VmmSerialConfig, 1);
    if (g_str_equal(value, "none")) {
        g_free(s); /* no UART backend for this slot: QEMU's -serial none */
        return TRUE;
    } else if (g_str_equal(value, "stdio")) {
        s->kind = VMM_SERIAL_STDIO;
    } else if (g_str_equal(value, "null")) {
        s->kind = VMM_SERIAL_NULL;
    } else if (g_str_has_prefix(value, "file:") && value[5]) {
        s->kind = VMM_SERIAL_FILE;
        s->path = g_strdup(value + 5);
    } else if (g_str_has_prefix(value, "chardev:") && value[8]) {
        s->chardev = g_strdup(value + 8);   /* resolved once every -chardev is known */
    } else if (g_str_has_prefix(value, "unix:") && value[5]) {
        g_autoptr(JsonObject) o = vmm_opts_parse(&serial_unix_spec, value + 5, &local);
        if (!o) {
            serial_free(s);
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "-serial %s: %s", value, local->message);
            return FALSE;
        }
        if (vmm_opts_has(o, "nowait"))
            vmm_warn_deprecated("-serial unix:...,nowait", "wait=off");
        s->kind = VMM_SERIAL_UNIX;
        s->path = g_strdup(vmm_opts_get_string(o, "path", ""));
        s->server = vmm_opts_get_bool(o, "server", FALSE);
        s->wait = vmm_opts_get_bool(o, "wait", TRUE) && !vmm_opts_get_bool(o, "nowait", FALSE);
    } else {
        serial_free(s);
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "-serial %s: '%s' is not a valid char driver "
                    "(vmmd has stdio, null, none, file:PATH, unix:PATH[,server=on][,wait=off], "
                    "chardev:ID)",
                    value, value);
        return FALSE;
    }
    g_ptr_array_add(vm->serials, s);
    return TRUE;
}

/* ---- -object ---- */

typedef struct {
    const char *type;
    VmmObjectKind kind;
    const char *const *keys;     /* accepted besides qom-type and id */
    const char *const *required;
} ObjectType;

static const char *const memfd_keys[] = { "size", "share", "prealloc", NULL };
static const char *const memfile_keys[] = { "size", "mem-path", "share", "discard-data", "prealloc", NULL };
static const char *const rng_random_keys[] = { "filename", NULL };
static const char *const no_keys[] = { NULL };
static const char *const size_required[] = { "size", NULL };
static const char *const file_required[] = { "size", "mem-path", NULL };

static const ObjectType object_types[] = {
    { "memory-backend-memfd", VMM_OBJECT_MEMORY_MEMFD, memfd_keys, size_required },
    { "memory-backend-file", VMM_OBJECT_MEMORY_FILE, memfile_keys, file_required },
    { "rng-random", VMM_OBJECT_RNG_RANDOM, rng_random_keys, no_keys },
    { "rng-builtin", VMM_OBJECT_RNG_BUILTIN, no_keys, no_keys },
};

static const VmmOptSpec object_spec = { "object", "qom-type", NULL };

static const ObjectType *find_object_type(const char *name)
{
    for (guint i = 0; i < G_N_ELEMENTS(object_types); i++) {
        if (g_str_equal(object_types[i].type, name))
            return &object_types[i];
    }
    return NULL;
}

static gboolean check_object_keys(const ObjectType *t, JsonObject *o, GError **error)
{
    g_autoptr(GList) keys = json_object_get_members(o);
    for (GList *k = keys; k; k = k->next) {
        const char *key = k->data;
        if (g_str_equal(key, "qom-type") || g_str_equal(key, "id"))
            continue;
        if (!g_strv_contains(t->keys, key) ||
            JSON_NODE_TYPE(json_object_get_member(o, key)) != JSON_NODE_VALUE) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Invalid parameter '%s'", key);
            return FALSE;
        }
    }
    static const char *const id_required[] = { "id", NULL };
    for (const char *const *lists[] = { id_required, t->required }, *const *const *l = lists;
         l < lists + 2; l++) {
        for (const char *const *r = *l; *r; r++) {
            if (!json_object_has_member(o, *r)) {
                g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Parameter '%s' is missing", *r);
                return FALSE;
            }
        }
    }
    return TRUE;
}

static gboolean object_bool(JsonObject *o, const char *key, gboolean def, gboolean *out,
                            GError **error)
{
    *out = def;
    return !json_object_has_member(o, key) ||
           vmm_parse_bool(NULL, key, vmm_opts_get_string(o, key, ""), out, error);
}

static gboolean fill_object(VmmObjectConfig *obj, JsonObject *o, GError **error)
{
    if (json_object_has_member(o, "size") &&
        !vmm_parse_size(NULL, "size", vmm_opts_get_string(o, "size", ""), &obj->size, error))
        return FALSE;
    if ((obj->kind == VMM_OBJECT_MEMORY_MEMFD || obj->kind == VMM_OBJECT_MEMORY_FILE) && !obj->size) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "can't create backend with size 0");
        return FALSE;
    }
    obj->mem_path = g_strdup(vmm_opts_get_string(o, "mem-path", NULL));
    if (obj->kind == VMM_OBJECT_RNG_RANDOM)
        obj->filename = g_strdup(vmm_opts_get_string(o, "filename", "/dev/urandom"));
    /* QEMU: a memfd is always shared; a file is private unless share=on. */
    return object_bool(o, "share", obj->kind == VMM_OBJECT_MEMORY_MEMFD, &obj->share, error) &&
           object_bool(o, "discard-data", FALSE, &obj->discard_data, error) &&
           object_bool(o, "prealloc", FALSE, &obj->prealloc, error);
}

static gboolean parse_object(VmmVmConfig *vm, const char *value, GError **error)
{
    g_autoptr(JsonObject) o = vmm_opts_parse(&object_spec, value, error);
    if (!o)
        return FALSE;
    const char *type_name = vmm_opts_get_string(o, "qom-type", "");
    const ObjectType *t = find_object_type(type_name);
    if (!t) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "Parameter 'qom-type' does not accept value '%s'", type_name);
        return FALSE;
    }
    if (!check_object_keys(t, o, error))
        return FALSE;
    const char *id = vmm_opts_get_string(o, "id", "");
    if (vmm_vm_config_find_object(vm, id)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Duplicate ID '%s' for object", id);
        return FALSE;
    }
    VmmObjectConfig *obj = g_new0(VmmObjectConfig, 1);
    obj->kind = t->kind;
    obj->id = g_strdup(id);
    if (!fill_object(obj, o, error)) {
        object_free(obj);
        return FALSE;
    }
    g_ptr_array_add(vm->objects, obj);
    return TRUE;
}

static gboolean apply_object(VmmVmConfig *vm, const char *value, GError **error)
{
    if (!parse_object(vm, value, error)) {
        g_prefix_error(error, "-object %s: ", value);
        return FALSE;
    }
    return TRUE;
}

const VmmObjectConfig *vmm_vm_config_find_object(const VmmVmConfig *vm, const char *id)
{
    for (guint i = 0; i < vm->objects->len; i++) {
        const VmmObjectConfig *o = vm->objects->pdata[i];
        if (g_str_equal(o->id, id))
            return o;
    }
    return NULL;
}

/* ---- -accel ---- */

static const VmmOptKey accel_keys[] = {
    { "accel", VMM_OPT_STRING, "accelerator (kvm)", "kvm" },
    { "kernel-irqchip", VMM_OPT_STRING, "on|off|split", "on" },
    { NULL },
};
static const VmmOptSpec accel_spec = { "accel", "accel", accel_keys };

static gboolean apply_accel(VmmVmConfig *vm, const char *value, GError **error)
{
    g_autoptr(JsonObject) o = vmm_opts_parse(&accel_spec, value, error);
    if (!o)
        return FALSE;
    if (!vmm_machine_set_accel(&vm->machine, vmm_opts_get_string(o, "accel", ""), error)) {
        g_prefix_error(error, "-accel %s: ", value);
        return FALSE;
    }
    if (vmm_opts_has(o, "kernel-irqchip")) {
        g_autofree char *prop = g_strdup_printf("kernel-irqchip=%s",
                                                vmm_opts_get_string(o, "kernel-irqchip", ""));
        return vmm_machine_config_parse(&vm->machine, NULL, prop, error);
    }
    return TRUE;
}

/* ---- -device ---- */

/* The device models vmmd has; each driver's properties are parsed by its
 * owner (virtio-blk-device: drive.c). */
static gboolean apply_device(VmmVmConfig *vm, const char *value, gboolean *exit_now, GError **error)
{
    g_autofree char *driver = g_strndup(value, strcspn(value, ","));
    if (vmm_opts_wants_help(value) && !strchr(value, ',')) {
        printf("Block devices:\nname \"virtio-blk-device\", bus virtio-bus\n\n"
               "Storage devices:\nname \"virtio-9p-device\", bus virtio-bus\n\n"
               "Misc devices:\nname \"virtio-rng-device\", bus virtio-bus\n");
        *exit_now = TRUE;
        return TRUE;
    }
    if (g_str_has_prefix(driver, "driver="))
        memmove(driver, driver + 7, strlen(driver + 7) + 1);
    if (vmm_drive_device_is_block(driver))
        return vmm_blk_device_parse(&vm->drives, value, error);
    if (vmm_fsdev_device_is_9p(driver))
        return vmm_9p_device_parse(&vm->fsdevs, value, error);
    if (vmm_rng_device_is_rng(driver))
        return vmm_rng_device_parse(vm, value, error);
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "-device %s: '%s' is not a valid device model name",
                value, driver);
    return FALSE;
}

/* ---- dispatch ---- */

static const char *const options_with_arg[] = {
    "machine", "M", "m", "smp", "cpu", "kernel", "initrd", "append", "serial", "chardev", "object",
    "accel", "drive", "blockdev", "device", "fsdev", "virtfs", NULL,
};
static const char *const flags[] = {
    "nographic", "no-reboot", "no-shutdown", "S", "enable-kvm", "snapshot", NULL,
};

gboolean vmm_vm_option_takes_arg(const char *opt)
{
    return g_strv_contains(options_with_arg, opt);
}

gboolean vmm_vm_option_known(const char *opt)
{
    return vmm_vm_option_takes_arg(opt) || g_strv_contains(flags, opt);
}

static gboolean print_help_for(const VmmOptSpec *spec, const char *value, gboolean *exit_now)
{
    if (!vmm_opts_wants_help(value))
        return FALSE;
    g_autofree char *text = vmm_opts_help(spec);
    fputs(text, stdout);
    *exit_now = TRUE;
    return TRUE;
}

static void set_string(char **field, const char *value)
{
    g_free(*field);
    *field = g_strdup(value);
}

static gboolean apply_flag(VmmVmConfig *vm, const char *opt, GError **error)
{
    if (g_str_equal(opt, "nographic"))
        vm->nographic = TRUE;
    else if (g_str_equal(opt, "no-reboot"))
        vm->no_reboot = TRUE;
    else if (g_str_equal(opt, "no-shutdown"))
        vm->no_shutdown = TRUE;
    else if (g_str_equal(opt, "S"))
        vm->start_paused = TRUE;
    else if (g_str_equal(opt, "enable-kvm"))
        return vmm_machine_set_accel(&vm->machine, "kvm", error);
    else if (g_str_equal(opt, "snapshot"))
        vm->drives.snapshot = TRUE;
    return TRUE;
}

gboolean vmm_vm_config_apply(VmmVmConfig *vm, const char *opt, const char *value,
                             gboolean *exit_now, GError **error)
{
    if (g_str_equal(opt, "machine") || g_str_equal(opt, "M")) {
        if (vmm_opts_wants_help(value)) {
            g_autofree char *text = vmm_machine_help(NULL);
            fputs(text, stdout);
            *exit_now = TRUE;
            return TRUE;
        }
        return vmm_machine_config_parse(&vm->machine, NULL, value, error);
    }
    if (g_str_equal(opt, "m"))
        return print_help_for(&memory_spec, value, exit_now) || apply_memory(vm, value, error);
    if (g_str_equal(opt, "smp"))
        return print_help_for(&smp_spec, value, exit_now) || apply_smp(vm, value, error);
    if (g_str_equal(opt, "cpu")) {
        if (vmm_opts_wants_help(value)) {
            printf("Available CPUs:\n  host  KVM processor with all supported host features\n");
            *exit_now = TRUE;
            return TRUE;
        }
        return apply_cpu(vm, value, error);
    }
    if (g_str_equal(opt, "kernel"))
        set_string(&vm->kernel, value);
    else if (g_str_equal(opt, "initrd"))
        set_string(&vm->initrd, value);
    else if (g_str_equal(opt, "append"))
        set_string(&vm->append, value);
    else if (g_str_equal(opt, "chardev"))
        return apply_chardev(vm, value, error);
    else if (g_str_equal(opt, "serial"))
        return apply_serial(vm, value, error);
    else if (g_str_equal(opt, "object"))
        return apply_object(vm, value, error);
    else if (g_str_equal(opt, "accel"))
        return print_help_for(&accel_spec, value, exit_now) || apply_accel(vm, value, error);
    else if (g_str_equal(opt, "drive"))
        return vmm_drive_parse(&vm->drives, value, error);
    else if (g_str_equal(opt, "blockdev"))
        return vmm_blockdev_parse(&vm->drives, value, error);
    else if (g_str_equal(opt, "device"))
        return apply_device(vm, value, exit_now, error);
    else if (g_str_equal(opt, "fsdev"))
        return vmm_fsdev_parse(&vm->fsdevs, value, error);
    else if (g_str_equal(opt, "virtfs"))
        return vmm_virtfs_parse(&vm->fsdevs, value, error);
    else
        return apply_flag(vm, opt, error);
    return TRUE;
}

gboolean vmm_vm_config_finish(VmmVmConfig *vm, GError **error)
{
    if (!vmm_drives_finish(&vm->drives, error) || !vmm_rng_devices_finish(vm, error) ||
        !vmm_fsdevs_finish(&vm->fsdevs, error))
        return FALSE;
    if (!vm->maxmem)
        vm->maxmem = vm->ram_size;
    if (!resolve_serial_chardevs(vm, error) || !resolve_smp(vm, error))
        return FALSE;
    const char *backend = vm->machine.memory_backend;
    if (backend) {
        const VmmObjectConfig *o = vmm_vm_config_find_object(vm, backend);
        if (!o || (o->kind != VMM_OBJECT_MEMORY_MEMFD && o->kind != VMM_OBJECT_MEMORY_FILE)) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Memory backend '%s' not found", backend);
            return FALSE;
        }
        /* The backend is the RAM: -m may only repeat its size. */
        if (vm->ram_size_set && vm->ram_size != o->size) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "Machine memory size does not match the size of the memory backend");
            return FALSE;
        }
        vm->ram_size = o->size;
        if (vm->maxmem < vm->ram_size)
            vm->maxmem = vm->ram_size;
    }
    return TRUE;
}
