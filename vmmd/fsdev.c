/* -fsdev, -virtfs, -device virtio-9p-device: see fsdev.h. The messages are
 * QEMU 7.2's (checked against qemu-system-x86_64 -M microvm); where vmmd
 * differs (socket=/sock_fd= with the local driver reach a running fsd; modes
 * above 07777; writeout values other than immediate), the message says why. */
#include "vmmd/fsdev.h"
#include "common/error.h"
#include "common/log.h"
#include "common/opts.h"

#include <string.h>

/* QEMU's THROTTLE_VALUE_MAX. */
#define THROTTLE_VALUE_MAX 1000000000000000ULL

static const char *const throttle_names[VMM_FSDEV_THR_N] = {
    "bps-total", "bps-read", "bps-write", "iops-total", "iops-read", "iops-write",
    "bps-total-max", "bps-read-max", "bps-write-max", "iops-total-max", "iops-read-max",
    "iops-write-max", "iops-size",
};

const char *vmm_fsdev_throttle_key_name(VmmFsdevThrottleKey k)
{
    return (guint)k < VMM_FSDEV_THR_N ? throttle_names[k] : "?";
}

/* ---- The set ------------------------------------------------------------------ */

static void fsdev_free(gpointer p)
{
    VmmFsdev *f = p;
    g_free(f->id);
    g_free(f->option);
    g_free(f->driver);
    g_free(f->path);
    g_free(f->security_model);
    g_free(f->multidevs);
    g_free(f->socket);
    g_free(f);
}

static void device_free(gpointer p)
{
    VmmFsDevice *d = p;
    g_free(d->id);
    g_free(d->option);
    g_free(d->fsdev);
    g_free(d->mount_tag);
    g_free(d);
}

void vmm_fsdev_set_init(VmmFsdevSet *set)
{
    set->fsdevs = g_ptr_array_new_with_free_func(fsdev_free);
    set->devices = g_ptr_array_new_with_free_func(device_free);
}

void vmm_fsdev_set_clear(VmmFsdevSet *set)
{
    if (set->fsdevs)
        g_ptr_array_unref(set->fsdevs);
    if (set->devices)
        g_ptr_array_unref(set->devices);
    set->fsdevs = set->devices = NULL;
}

VmmFsdev *vmm_fsdev_find(const VmmFsdevSet *set, const char *id)
{
    for (guint i = 0; id && i < set->fsdevs->len; i++) {
        VmmFsdev *f = set->fsdevs->pdata[i];
        if (g_str_equal(f->id, id))
            return f;
    }
    return NULL;
}

gboolean vmm_fsdev_is_external(const VmmFsdev *f)
{
    return f->socket || f->sock_fd >= 0;
}

/* ---- QemuOpts-like splitting ------------------------------------------------------ */

typedef enum { KEY_STRING, KEY_BOOL, KEY_NUMBER } KeyType;

/* Which option accepts a key. */
enum { IN_FSDEV = 1, IN_VIRTFS = 2, IN_BOTH = 3 };

typedef struct {
    const char *name;
    KeyType type;
    unsigned in;
} Key;

static const Key fsdev_keys[] = {
    { "fsdriver", KEY_STRING, IN_BOTH },
    { "id", KEY_STRING, IN_BOTH },
    { "path", KEY_STRING, IN_BOTH },
    { "security_model", KEY_STRING, IN_BOTH },
    { "writeout", KEY_STRING, IN_BOTH },
    { "readonly", KEY_BOOL, IN_BOTH },
    { "socket", KEY_STRING, IN_BOTH },
    { "sock_fd", KEY_NUMBER, IN_BOTH },
    { "fmode", KEY_NUMBER, IN_BOTH },
    { "dmode", KEY_NUMBER, IN_BOTH },
    { "multidevs", KEY_STRING, IN_BOTH },
    { "mount_tag", KEY_STRING, IN_VIRTFS },
};

static const Key *find_key(const char *name, unsigned in)
{
    static const Key throttle_key = { "throttling.*", KEY_NUMBER, IN_FSDEV };
    for (guint i = 0; i < G_N_ELEMENTS(fsdev_keys); i++) {
        if (g_str_equal(fsdev_keys[i].name, name) && (fsdev_keys[i].in & in))
            return &fsdev_keys[i];
    }
    if ((in & IN_FSDEV) && g_str_has_prefix(name, "throttling."))
        return &throttle_key;
    return NULL;
}

/* An option's keys: values by name (NULL for a bare word), and the names in
 * command-line order, for QEMU's choice of which bad key to name. */
typedef struct {
    GHashTable *h;
    GPtrArray *order;
} Opts;

static Opts *opts_new(void)
{
    Opts *o = g_new0(Opts, 1);
    o->h = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    o->order = g_ptr_array_new_with_free_func(g_free);
    return o;
}

static void opts_free(Opts *o)
{
    g_hash_table_unref(o->h);
    g_ptr_array_unref(o->order);
    g_free(o);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Opts, opts_free)

/* Later keys replace earlier ones, as in QemuOpts; the first place stays. */
static void opts_set(Opts *o, const char *key, const char *value)
{
    if (!g_hash_table_contains(o->h, key))
        g_ptr_array_add(o->order, g_strdup(key));
    g_hash_table_insert(o->h, g_strdup(key), g_strdup(value));
}

static const char *opts_get(Opts *o, const char *key)
{
    return g_hash_table_lookup(o->h, key);
}

static gboolean opts_has(Opts *o, const char *key)
{
    return g_hash_table_contains(o->h, key);
}

/* "a=b,,c,flag,k=v" -> a="b,c", flag (NULL: bare), k="v"; a leading bare
 * word belongs to IMPLIED. Later keys replace earlier ones, as in QemuOpts. */
static Opts *split_opts(const char *value, const char *implied)
{
    Opts *o = opts_new();
    GString *cur = g_string_new(NULL);
    gboolean first = TRUE;
    for (const char *p = value;; p++) {
        if (*p == ',' && p[1] == ',') {
            g_string_append_c(cur, ',');
            p++;
            continue;
        }
        if (*p && *p != ',') {
            g_string_append_c(cur, *p);
            continue;
        }
        char *eq = strchr(cur->str, '=');
        g_autofree char *key = eq ? g_strndup(cur->str, eq - cur->str)
                                  : first && implied ? g_strdup(implied) : g_strdup(cur->str);
        if (cur->len)
            opts_set(o, key, eq ? eq + 1 : first && implied ? cur->str : NULL);
        first = FALSE;
        g_string_truncate(cur, 0);
        if (!*p)
            break;
    }
    g_string_free(cur, TRUE);
    return o;
}

/* QEMU's fsdev_id_wellformed(): a letter, then letters, digits, '-', '.', '_'. */
static gboolean fsdev_id_wellformed(const char *id)
{
    if (!g_ascii_isalpha(id[0]))
        return FALSE;
    for (const char *p = id + 1; *p; p++) {
        if (!g_ascii_isalnum(*p) && !strchr("-._", *p))
            return FALSE;
    }
    return TRUE;
}

static gboolean fsdev_check_id(const char *id, GError **error)
{
    if (fsdev_id_wellformed(id))
        return TRUE;
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                "Parameter 'id' expects an identifier\n"
                "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.");
    return FALSE;
}

/* What QemuOpts checks while parsing: known keys and their types. A bare
 * boolean is "on", with QEMU's deprecation warning. */
static gboolean check_keys(Opts *o, unsigned in, const char *option, const char *value,
                           GError **error)
{
    GPtrArray *order = o->order;
    for (guint i = 0; order && i < order->len; i++) {
        const char *name = order->pdata[i];
        const char *v = opts_get(o, name);
        const Key *k = find_key(name, in);
        if (!k) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Invalid parameter '%s'", name);
            return FALSE;
        }
        if (!v && k->type == KEY_BOOL) {
            vmm_warn("-%s %s: short-form boolean option '%s' deprecated\nPlease use %s=on instead",
                     option, value, name, name);
            opts_set(o, name, "on");
            continue;
        }
        gboolean b;
        guint64 n;
        if (k->type == KEY_BOOL && !vmm_parse_bool(NULL, NULL, v, &b, NULL)) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Parameter '%s' expects 'on' or 'off'", name);
            return FALSE;
        }
        if (k->type == KEY_NUMBER && (!v || !vmm_parse_number(NULL, NULL, v, &n, NULL))) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Parameter '%s' expects a number", name);
            return FALSE;
        }
        if (k->type == KEY_STRING && !v) {
            /* QemuOpts: a bare word is NAME=on, which a string takes as is. */
            opts_set(o, name, "on");
        }
    }
    const char *id = opts_get(o, "id");
    return !id || fsdev_check_id(id, error);
}

static guint64 get_number(Opts *o, const char *key)
{
    guint64 n = 0;
    const char *v = opts_get(o, key);
    if (v)
        vmm_parse_number(NULL, NULL, v, &n, NULL);
    return n;
}

/* ---- -fsdev ------------------------------------------------------------------------ */

static const char *const security_models[] = { "passthrough", "mapped-xattr", "mapped-file", "none", NULL };

static gboolean set_security_model(VmmFsdev *f, const char *sm, GError **error)
{
    static const char hint[] = "Valid options are: security_model=[passthrough|mapped-xattr|mapped-file|none]";
    if (!sm) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "security_model property not set\n%s", hint);
        return FALSE;
    }
    /* "mapped" is QEMU's old name of mapped-xattr. */
    if (g_str_equal(sm, "mapped"))
        sm = "mapped-xattr";
    if (!g_strv_contains(security_models, sm)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "invalid security_model property '%s'\n%s", sm, hint);
        return FALSE;
    }
    f->security_model = g_strdup(sm);
    return TRUE;
}

static gboolean set_multidevs(VmmFsdev *f, const char *m, GError **error)
{
    if (!m)
        return TRUE;
    if (!g_str_equal(m, "remap") && !g_str_equal(m, "forbid") && !g_str_equal(m, "warn")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "invalid multidevs property '%s'\nValid options are: multidevs=[remap|forbid|warn]", m);
        return FALSE;
    }
    f->multidevs = g_strdup(m);
    return TRUE;
}

static gboolean take_throttle(VmmFsdev *f, Opts *o, GError **error)
{
    for (guint n = 0; n < o->order->len; n++) {
        const char *name = o->order->pdata[n];
        if (!g_str_has_prefix(name, "throttling."))
            continue;
        const char *key = name + strlen("throttling.");
        guint i;
        for (i = 0; i < VMM_FSDEV_THR_N && !g_str_equal(throttle_names[i], key); i++)
            ;
        if (i == VMM_FSDEV_THR_N) {
            if (g_str_has_suffix(key, "-max-length"))
                g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                            "'%s' is not supported: fsd's burst lasts one second (QEMU's default)", name);
            else
                g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Invalid parameter '%s'", name);
            return FALSE;
        }
        f->throttle[i] = get_number(o, name);
    }
    return TRUE;
}

/* QEMU's throttle_is_valid(), for the buckets fsd has (burst length 1 s). */
static gboolean check_throttle(const guint64 *t, GError **error)
{
    const char *why = NULL;
    gboolean bps = t[VMM_FSDEV_THR_BPS_TOTAL] && (t[VMM_FSDEV_THR_BPS_READ] || t[VMM_FSDEV_THR_BPS_WRITE]);
    gboolean ops = t[VMM_FSDEV_THR_IOPS_TOTAL] && (t[VMM_FSDEV_THR_IOPS_READ] || t[VMM_FSDEV_THR_IOPS_WRITE]);
    gboolean bps_max = t[VMM_FSDEV_THR_BPS_TOTAL_MAX] &&
                       (t[VMM_FSDEV_THR_BPS_READ_MAX] || t[VMM_FSDEV_THR_BPS_WRITE_MAX]);
    gboolean ops_max = t[VMM_FSDEV_THR_IOPS_TOTAL_MAX] &&
                       (t[VMM_FSDEV_THR_IOPS_READ_MAX] || t[VMM_FSDEV_THR_IOPS_WRITE_MAX]);
    if (bps || ops || bps_max || ops_max)
        why = "bps/iops/max total values and read/write values cannot be used at the same time";
    else if (t[VMM_FSDEV_THR_IOPS_SIZE] && !t[VMM_FSDEV_THR_IOPS_TOTAL] && !t[VMM_FSDEV_THR_IOPS_READ] &&
             !t[VMM_FSDEV_THR_IOPS_WRITE])
        why = "iops size requires an iops value to be set";
    for (guint i = 0; !why && i < 6; i++) {
        guint64 avg = t[i], max = t[i + 6];
        if (avg > THROTTLE_VALUE_MAX || max > THROTTLE_VALUE_MAX)
            why = "bps/iops/max values must be within [0, 1000000000000000]";
        else if (max && !avg)
            why = "bps_max/iops_max require corresponding bps/iops values";
        else if (max && max < avg)
            why = "bps_max/iops_max cannot be lower than bps/iops";
    }
    if (!why)
        return TRUE;
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "invalid throttle configuration: %s", why);
    return FALSE;
}

/* fmode=/dmode=: QEMU's number syntax (0644 octal, 0x1a4 hex, 420 decimal);
 * vmmd refuses what is not a mode instead of masking it. */
static gboolean take_mode(Opts *o, const char *key, gboolean *set, mode_t *out, GError **error)
{
    if (!opts_has(o, key))
        return TRUE;
    guint64 n = get_number(o, key);
    if (n > 07777) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s=%s: a file mode is at most 07777 (write it in octal with a leading 0, e.g. 0644)",
                    key, (const char *)opts_get(o, key));
        return FALSE;
    }
    *set = TRUE;
    *out = (mode_t)n;
    return TRUE;
}

/* QEMU's validate_opts(): keys the driver does not have. */
static gboolean check_driver_keys(VmmFsdev *f, Opts *o, GError **error)
{
    static const char *const proxy_invalid[] = { "path", "security_model", "fmode", "dmode", "multidevs", NULL };
    if (!g_str_equal(f->driver, "proxy"))
        return TRUE;
    for (const char *const *k = proxy_invalid; *k; k++) {
        if (opts_has(o, *k)) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "'%s' is invalid for fsdriver 'proxy'", *k);
            return FALSE;
        }
    }
    for (guint i = 0; i < o->order->len; i++) {
        const char *k = o->order->pdata[i];
        if (g_str_has_prefix(k, "throttling.")) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "'%s' is invalid for fsdriver 'proxy'", k);
            return FALSE;
        }
    }
    return TRUE;
}

static gboolean take_socket(VmmFsdev *f, Opts *o, GError **error)
{
    const char *socket = opts_get(o, "socket");
    gboolean has_fd = opts_has(o, "sock_fd");
    if (socket && has_fd) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "both socket and sock_fd properties are set");
        return FALSE;
    }
    if (!socket && !has_fd && g_str_equal(f->driver, "proxy")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "both socket and sock_fd properties are missing");
        return FALSE;
    }
    if (has_fd) {
        guint64 n = get_number(o, "sock_fd");
        if (n > G_MAXINT) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "sock_fd=%" G_GUINT64_FORMAT ": not a file descriptor", n);
            return FALSE;
        }
        f->sock_fd = (int)n;
    }
    f->socket = g_strdup(socket);
    return TRUE;
}

/* The local driver's own checks, in QEMU's order (local_parse_opts). */
static gboolean take_local_export(VmmFsdev *f, Opts *o, GError **error)
{
    const char *sm = opts_get(o, "security_model");
    gboolean external = vmm_fsdev_is_external(f);
    if ((sm || !external) && !set_security_model(f, sm, error))
        return FALSE;
    if (!set_multidevs(f, opts_get(o, "multidevs"), error))
        return FALSE;
    f->path = g_strdup(opts_get(o, "path"));
    if (!f->path && !external) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "path property not set");
        return FALSE;
    }
    if (!take_throttle(f, o, error) || !check_throttle(f->throttle, error))
        return FALSE;
    gboolean mapped = f->security_model && g_str_has_prefix(f->security_model, "mapped");
    static const char *const mode_keys[] = { "fmode", "dmode" };
    for (guint i = 0; i < 2; i++) {
        if (!mapped && f->security_model && opts_has(o, mode_keys[i])) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s is only valid for mapped security modes",
                        mode_keys[i]);
            return FALSE;
        }
    }
    return take_mode(o, "fmode", &f->fmode_set, &f->fmode, error) &&
           take_mode(o, "dmode", &f->dmode_set, &f->dmode, error);
}

static gboolean take_writeout(VmmFsdev *f, Opts *o, GError **error)
{
    const char *w = opts_get(o, "writeout");
    if (!w)
        return TRUE;
    /* QEMU ignores other values silently; an unknown mode is a typo here. */
    if (!g_str_equal(w, "immediate")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "writeout=%s: the only valid value is 'immediate'", w);
        return FALSE;
    }
    f->writeout_immediate = TRUE;
    return TRUE;
}

/* An fsd that runs already serves its own export: what describes an export
 * here would be silently ignored, so say so once. */
static void warn_external_keys(VmmFsdev *f, Opts *o)
{
    static const char *const export_keys[] = { "path", "security_model", "writeout", "readonly", "fmode",
                                               "dmode", NULL };
    g_autoptr(GString) given = g_string_new(NULL);
    for (const char *const *k = export_keys; *k; k++) {
        if (opts_has(o, *k))
            g_string_append_printf(given, "%s%s", given->len ? ", " : "", *k);
    }
    for (guint i = 0; i < VMM_FSDEV_THR_N; i++) {
        if (f->throttle[i])
            g_string_append_printf(given, "%sthrottling.%s", given->len ? ", " : "", throttle_names[i]);
    }
    if (given->len)
        vmm_warn("%s: %s: the fsd already running serves its own export; %s %s not applied "
                 "(they are fsd's options)", f->option, f->socket ? "socket=" : "sock_fd=", given->str,
                 strchr(given->str, ',') ? "are" : "is");
}

static gboolean fill_fsdev(VmmFsdevSet *set, VmmFsdev *f, Opts *o, GError **error)
{
    f->id = g_strdup(opts_get(o, "id"));
    f->driver = g_strdup(opts_get(o, "fsdriver"));
    f->sock_fd = -1;
    f->fmode = 0600;
    f->dmode = 0700;
    if (f->id && vmm_fsdev_find(set, f->id)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Duplicate ID '%s' for fsdev", f->id);
        return FALSE;
    }
    if (!f->id) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "fsdev: No id specified");
        return FALSE;
    }
    if (!f->driver) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "fsdev: No fsdriver specified");
        return FALSE;
    }
    if (!g_str_equal(f->driver, "local") && !g_str_equal(f->driver, "proxy")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "fsdev: fsdriver %s not found", f->driver);
        return FALSE;
    }
    gboolean ro = FALSE;
    const char *rov = opts_get(o, "readonly");
    if (rov)
        vmm_parse_bool(NULL, NULL, rov, &ro, NULL);
    f->readonly = ro;
    if (!check_driver_keys(f, o, error) || !take_socket(f, o, error) || !take_writeout(f, o, error))
        return FALSE;
    if (g_str_equal(f->driver, "local") && !take_local_export(f, o, error))
        return FALSE;
    if (vmm_fsdev_is_external(f))
        warn_external_keys(f, o);
    return TRUE;
}

/* Parses -OPTION VALUE into an fsdev (H: its keys) and adds it to SET. */
static VmmFsdev *add_fsdev(VmmFsdevSet *set, const char *option, const char *value, Opts *o,
                           GError **error)
{
    VmmFsdev *f = g_new0(VmmFsdev, 1);
    f->option = g_strdup_printf("-%s %s", option, value);
    if (!fill_fsdev(set, f, o, error)) {
        fsdev_free(f);
        return NULL;
    }
    g_ptr_array_add(set->fsdevs, f);
    return f;
}

gboolean vmm_fsdev_parse(VmmFsdevSet *set, const char *value, GError **error)
{
    g_autoptr(Opts) o = split_opts(value, "fsdriver");
    if (!check_keys(o, IN_FSDEV, "fsdev", value, error) || !add_fsdev(set, "fsdev", value, o, error)) {
        g_prefix_error(error, "-fsdev %s: ", value);
        return FALSE;
    }
    return TRUE;
}

/* ---- -device virtio-9p-device ---------------------------------------------------- */

gboolean vmm_fsdev_device_is_9p(const char *driver)
{
    return g_str_equal(driver, "virtio-9p-device");
}

static VmmFsDevice *find_device(const VmmFsdevSet *set, const char *id)
{
    for (guint i = 0; id && i < set->devices->len; i++) {
        VmmFsDevice *d = set->devices->pdata[i];
        if (d->id && g_str_equal(d->id, id))
            return d;
    }
    return NULL;
}

static void add_device(VmmFsdevSet *set, VmmFsDevice *d)
{
    d->index = set->devices->len;
    g_ptr_array_add(set->devices, d);
}

static gboolean fill_device(VmmFsdevSet *set, VmmFsDevice *d, Opts *o, GError **error)
{
    static const char *const props[] = { "driver", "id", "fsdev", "mount_tag", NULL };
    GPtrArray *order = o->order;
    for (guint i = 0; order && i < order->len; i++) {
        if (!g_strv_contains(props, order->pdata[i])) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Property 'virtio-9p-device.%s' not found",
                        (const char *)order->pdata[i]);
            return FALSE;
        }
    }
    d->id = g_strdup(opts_get(o, "id"));
    d->fsdev = g_strdup(opts_get(o, "fsdev"));
    d->mount_tag = g_strdup(opts_get(o, "mount_tag"));
    if (d->id && !fsdev_check_id(d->id, error))
        return FALSE;
    if (d->id && find_device(set, d->id)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Duplicate ID '%s' for device", d->id);
        return FALSE;
    }
    return TRUE;
}

gboolean vmm_9p_device_parse(VmmFsdevSet *set, const char *value, GError **error)
{
    g_autoptr(Opts) o = split_opts(value, "driver");
    VmmFsDevice *d = g_new0(VmmFsDevice, 1);
    d->option = g_strdup_printf("-device %s", value);
    if (!fill_device(set, d, o, error)) {
        g_prefix_error(error, "-device %s: ", value);
        device_free(d);
        return FALSE;
    }
    add_device(set, d);
    return TRUE;
}

/* ---- -virtfs ------------------------------------------------------------------------ */

/* vl.c: an fsdev named after id= (else the mount tag) plus a device. */
static gboolean parse_virtfs(VmmFsdevSet *set, const char *value, Opts *o, GError **error)
{
    if (!check_keys(o, IN_VIRTFS, "virtfs", value, error))
        return FALSE;
    const char *tag = opts_get(o, "mount_tag");
    if (!opts_get(o, "fsdriver") || !tag) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Usage: -virtfs fsdriver,mount_tag=tag");
        return FALSE;
    }
    const char *id = opts_get(o, "id");
    if (!id)
        id = tag;
    if (!fsdev_id_wellformed(id) || vmm_fsdev_find(set, id)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "duplicate or invalid fsdev id: %s", tag);
        return FALSE;
    }
    g_autoptr(Opts) fh = opts_new();
    for (guint i = 0; i < o->order->len; i++) {
        const char *k = o->order->pdata[i];
        if (!g_str_equal(k, "mount_tag"))
            opts_set(fh, k, opts_get(o, k));
    }
    opts_set(fh, "id", id);
    VmmFsdev *f = add_fsdev(set, "virtfs", value, fh, error);
    if (!f)
        return FALSE;
    VmmFsDevice *d = g_new0(VmmFsDevice, 1);
    d->option = g_strdup(f->option);
    d->fsdev = g_strdup(id);
    d->mount_tag = g_strdup(tag);
    add_device(set, d);
    return TRUE;
}

gboolean vmm_virtfs_parse(VmmFsdevSet *set, const char *value, GError **error)
{
    g_autoptr(Opts) o = split_opts(value, "fsdriver");
    if (!parse_virtfs(set, value, o, error)) {
        g_prefix_error(error, "-virtfs %s: ", value);
        return FALSE;
    }
    return TRUE;
}

/* ---- The whole command line ------------------------------------------------------- */

/* QEMU's v9fs_device_realize_common(): the fsdev, then the tag. Devices are
 * realized after every -fsdev is known, so the order on the line is free. */
static gboolean realize_device(VmmFsdevSet *set, VmmFsDevice *d, GError **error)
{
    VmmFsdev *f = vmm_fsdev_find(set, d->fsdev);
    if (!f) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: 9pfs device couldn't find fsdev with the id = %s",
                    d->option, d->fsdev ? d->fsdev : "NULL");
        return FALSE;
    }
    if (!d->mount_tag) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: fsdev with id %s needs mount_tag arguments",
                    d->option, d->fsdev);
        return FALSE;
    }
    gsize len = strlen(d->mount_tag);
    if (len > VMM_9P_MAX_TAG_LEN) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: mount tag '%s' (%zu bytes) is longer than maximum (%d bytes)", d->option,
                    d->mount_tag, len, VMM_9P_MAX_TAG_LEN);
        return FALSE;
    }
    f->in_use = TRUE;
    return TRUE;
}

gboolean vmm_fsdevs_finish(VmmFsdevSet *set, GError **error)
{
    for (guint i = 0; i < set->devices->len; i++) {
        if (!realize_device(set, set->devices->pdata[i], error))
            return FALSE;
    }
    return TRUE;
}
