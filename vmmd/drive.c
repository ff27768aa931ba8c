/* -drive, -blockdev, -device virtio-blk-device, -snapshot: see drive.h. The
 * messages are QEMU 7.2's (checked against qemu-system-x86_64 -M microvm);
 * where vmmd cannot do what QEMU does, the message says why. */
#include "vmmd/drive.h"
#include "common/error.h"
#include "common/log.h"
#include "common/opts.h"

#include <string.h>

/* ---- Scalars --------------------------------------------------------------- */

static void drive_free(gpointer p)
{
    VmmDrive *d = p;
    g_free(d->id);
    g_free(d->option);
    g_free(d->filename);
    g_free(d->format);
    g_free(d->aio);
    g_free(d->discard);
    g_free(d->detect_zeroes);
    g_free(d->serial);
    if (d->block_options)
        json_object_unref(d->block_options);
    g_free(d);
}

static void blk_device_free(gpointer p)
{
    VmmBlkDevice *b = p;
    g_free(b->id);
    g_free(b->drive);
    g_free(b->serial);
    g_free(b);
}

void vmm_drive_set_init(VmmDriveSet *set)
{
    memset(set, 0, sizeof(*set));
    set->drives = g_ptr_array_new_with_free_func(drive_free);
    set->devices = g_ptr_array_new_with_free_func(blk_device_free);
}

void vmm_drive_set_clear(VmmDriveSet *set)
{
    if (set->drives)
        g_ptr_array_unref(set->drives);
    if (set->devices)
        g_ptr_array_unref(set->devices);
    memset(set, 0, sizeof(*set));
}

VmmDrive *vmm_drive_find(const VmmDriveSet *set, const char *id)
{
    for (guint i = 0; i < set->drives->len; i++) {
        VmmDrive *d = set->drives->pdata[i];
        if (d->id && g_str_equal(d->id, id))
            return d;
    }
    return NULL;
}

const char *vmm_drive_error_action_name(VmmDriveErrorAction a)
{
    static const char *const names[] = { "report", "ignore", "stop", "enospc", "auto" };
    return (guint)a < G_N_ELEMENTS(names) ? names[a] : "report";
}

const char *vmm_drive_cache_mode(const VmmDrive *d)
{
    if (d->cache_no_flush)
        return "unsafe";
    if (d->cache_direct)
        return d->cache_writeback ? "none" : "directsync";
    return d->cache_writeback ? "writeback" : "writethrough";
}

/* A member as text, whatever JSON type it arrived as (dotted options give
 * strings, the JSON form of -blockdev gives booleans and numbers). */
static char *member_text(JsonObject *o, const char *key)
{
    JsonNode *n = json_object_get_member(o, key);
    if (!n || JSON_NODE_TYPE(n) != JSON_NODE_VALUE)
        return NULL;
    switch (json_node_get_value_type(n)) {
    case G_TYPE_STRING:
        return g_strdup(json_node_get_string(n));
    case G_TYPE_BOOLEAN:
        return g_strdup(json_node_get_boolean(n) ? "on" : "off");
    case G_TYPE_INT64:
        return g_strdup_printf("%" G_GINT64_FORMAT, json_node_get_int(n));
    default:
        return NULL;
    }
}

/* Takes KEY out of O as text; NULL if absent. A member that is an object
 * (a dotted key below KEY) counts as absent here. */
static char *take_text(JsonObject *o, const char *key)
{
    char *s = member_text(o, key);
    if (s)
        json_object_remove_member(o, key);
    return s;
}

/* QEMU: "Parameter 'read-only' expects 'on' or 'off'". */
static gboolean take_bool(JsonObject *o, const char *key, const char *param, gboolean *out,
                          GError **error)
{
    g_autofree char *s = take_text(o, key);
    if (!s)
        return TRUE;
    if (!vmm_parse_bool(NULL, NULL, s, out, NULL)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Parameter '%s' expects 'on' or 'off'",
                    param ? param : key);
        return FALSE;
    }
    return TRUE;
}

/* QEMU's id_wellformed(): a letter, then letters, digits, '-', '.', '_'. */
static gboolean id_wellformed(const char *id)
{
    if (!g_ascii_isalpha(id[0]))
        return FALSE;
    for (const char *p = id + 1; *p; p++) {
        if (!g_ascii_isalnum(*p) && !strchr("-._", *p))
            return FALSE;
    }
    return TRUE;
}

static gboolean check_id(const char *id, GError **error)
{
    if (id_wellformed(id))
        return TRUE;
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                "Parameter 'id' expects an identifier\n"
                "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.");
    return FALSE;
}

/* AUTO_OK: a device's property, where "auto" means the drive's action. */
static gboolean parse_error_action(const char *s, gboolean is_read, gboolean auto_ok,
                                   VmmDriveErrorAction *out, GError **error)
{
    static const char *const names[] = { "report", "ignore", "stop", "enospc", "auto" };
    for (guint i = 0; i < G_N_ELEMENTS(names); i++) {
        if (g_str_equal(s, names[i]) && !(is_read && i == VMM_DRIVE_ERROR_ENOSPC) &&
            (auto_ok || i != VMM_DRIVE_ERROR_AUTO)) {
            *out = (VmmDriveErrorAction)i;
            return TRUE;
        }
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "'%s' invalid %s error action", s,
                is_read ? "read" : "write");
    return FALSE;
}

static gboolean take_error_actions(JsonObject *o, gboolean auto_ok, VmmDriveErrorAction *werror,
                                   VmmDriveErrorAction *rerror, GError **error)
{
    g_autofree char *w = take_text(o, "werror");
    g_autofree char *r = take_text(o, "rerror");
    return (!w || parse_error_action(w, FALSE, auto_ok, werror, error)) &&
           (!r || parse_error_action(r, TRUE, auto_ok, rerror, error));
}

/* ---- Block-layer keys shared by -drive and -blockdev ----------------------- */

/* QEMU's bdrv_parse_cache_mode(). */
static gboolean parse_cache_mode(VmmDrive *d, const char *mode)
{
    d->cache_writeback = TRUE;
    d->cache_direct = d->cache_no_flush = FALSE;
    if (g_str_equal(mode, "off") || g_str_equal(mode, "none"))
        d->cache_direct = TRUE;
    else if (g_str_equal(mode, "directsync"))
        d->cache_direct = TRUE, d->cache_writeback = FALSE;
    else if (g_str_equal(mode, "writethrough"))
        d->cache_writeback = FALSE;
    else if (g_str_equal(mode, "unsafe"))
        d->cache_no_flush = TRUE;
    else if (!g_str_equal(mode, "writeback"))
        return FALSE;
    return TRUE;
}

/* cache.direct / cache.no-flush as a nested object ("cache": {...}). */
static gboolean take_cache_object(VmmDrive *d, JsonObject *o, GError **error)
{
    JsonNode *n = json_object_get_member(o, "cache");
    if (!n || JSON_NODE_TYPE(n) != JSON_NODE_OBJECT)
        return TRUE;
    JsonObject *c = json_node_get_object(n);
    if (!take_bool(c, "direct", "cache.direct", &d->cache_direct, error) ||
        !take_bool(c, "no-flush", "cache.no-flush", &d->cache_no_flush, error) ||
        !take_bool(c, "writeback", "cache.writeback", &d->cache_writeback, error))
        return FALSE;
    if (json_object_get_size(c) > 0) {
        g_autoptr(GList) keys = json_object_get_members(c);
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Invalid parameter 'cache.%s'",
                    (const char *)keys->data);
        return FALSE;
    }
    json_object_remove_member(o, "cache");
    return TRUE;
}

static gboolean take_block_keys(VmmDrive *d, JsonObject *o, GError **error)
{
    if (!take_bool(o, "read-only", NULL, &d->read_only, error) ||
        !take_bool(o, "readonly", "read-only", &d->read_only, error) ||
        !take_cache_object(d, o, error))
        return FALSE;
    d->discard = take_text(o, "discard");
    if (d->discard && !g_str_equal(d->discard, "ignore") && !g_str_equal(d->discard, "off") &&
        !g_str_equal(d->discard, "unmap") && !g_str_equal(d->discard, "on")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Invalid discard option");
        return FALSE;
    }
    d->detect_zeroes = take_text(o, "detect-zeroes");
    if (d->detect_zeroes && !g_str_equal(d->detect_zeroes, "off") &&
        !g_str_equal(d->detect_zeroes, "on") && !g_str_equal(d->detect_zeroes, "unmap")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "invalid parameter value: %s",
                    d->detect_zeroes);
        return FALSE;
    }
    return TRUE;
}

/* The keys that go to blockd's node besides what take_* removed. */
static void put_block_options(VmmDrive *d, JsonObject *rest)
{
    JsonObject *o = rest;
    JsonObject *cache = json_object_new();
    json_object_set_boolean_member(cache, "direct", d->cache_direct);
    json_object_set_boolean_member(cache, "no-flush", d->cache_no_flush);
    json_object_set_object_member(o, "cache", cache);
    if (d->discard)
        json_object_set_string_member(o, "discard", d->discard);
    if (d->detect_zeroes)
        json_object_set_string_member(o, "detect-zeroes", d->detect_zeroes);
    if (d->aio) {
        JsonNode *f = json_object_get_member(o, "file");
        if (f && JSON_NODE_TYPE(f) == JSON_NODE_OBJECT)
            json_object_set_string_member(json_node_get_object(f), "aio", d->aio);
        else
            json_object_set_string_member(o, "aio", d->aio);
    }
    d->block_options = json_object_ref(o);
}

/* "file": {"driver": "file", "filename": ...}: the only protocol vmmd can
 * open for blockd is a local file. */
static gboolean check_file_child(VmmDrive *d, JsonObject *o, const char *prefix,
                                 gboolean filename_required, GError **error)
{
    JsonNode *n = json_object_get_member(o, "file");
    if (!n)
        return TRUE;
    if (JSON_NODE_TYPE(n) != JSON_NODE_OBJECT) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%sfile: a reference to another node is not supported; give "
                    "file.driver=file,file.filename=PATH", prefix);
        return FALSE;
    }
    JsonObject *f = json_node_get_object(n);
    g_autofree char *driver = member_text(f, "driver");
    if (driver && !g_str_equal(driver, "file")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%sfile.driver=%s: vmmd opens a VM's images itself and hands them to blockd, "
                    "so the protocol must be 'file'", prefix, driver);
        return FALSE;
    }
    g_autofree char *filename = member_text(f, "filename");
    if (filename) {
        g_free(d->filename);
        d->filename = g_steal_pointer(&filename);
        json_object_remove_member(f, "filename");
    } else if (filename_required) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Parameter '%sfile.filename' is missing",
                    prefix);
        return FALSE;
    }
    return TRUE;
}

static gboolean known_format(const char *format)
{
    return g_str_equal(format, "raw") || g_str_equal(format, "qcow2");
}

/* ---- -drive ------------------------------------------------------------------ */

static gboolean parse_if(VmmDrive *d, const char *s, GError **error)
{
    static const char *const others[] = { "ide", "scsi", "floppy", "pflash", "mtd", "sd", "xen", NULL };
    if (g_str_equal(s, "none"))
        d->iface = VMM_DRIVE_IF_NONE;
    else if (g_str_equal(s, "virtio"))
        d->iface = VMM_DRIVE_IF_VIRTIO;
    else if (g_strv_contains(others, s))
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "machine type does not support if=%s,bus=0,unit=0", s);
    else
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "unsupported bus type '%s'", s);
    return error == NULL || *error == NULL;
}

/* The deprecated keys of the reference: serial= is forwarded to the device
 * with a warning; addr= and the geometry have no meaning on this machine. */
static gboolean take_legacy_keys(VmmDrive *d, JsonObject *o, GError **error)
{
    d->serial = take_text(o, "serial");
    if (d->serial)
        vmm_warn_deprecated("-drive serial=...", "-device virtio-blk-device,serial=...");
    g_autofree char *addr = take_text(o, "addr");
    if (addr) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "addr=%s: addr= places a virtio-blk PCI function, and the microvm machine has "
                    "no PCI bus (its virtio-blk-device sits on virtio-mmio and has no address); "
                    "drop addr=", addr);
        return FALSE;
    }
    static const char *const geometry[] = { "cyls", "heads", "secs", "trans" };
    for (guint i = 0; i < G_N_ELEMENTS(geometry); i++) {
        g_autofree char *v = take_text(o, geometry[i]);
        if (v) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                        "%s=%s: virtio-blk has no disk geometry (cyls=, heads=, secs= and trans= "
                        "are for IDE disks, which the microvm machine does not have); drop them",
                        geometry[i], v);
            return FALSE;
        }
    }
    static const char *const unsupported[] = { "copy-on-read", "bps", "bps_rd", "bps_wr", "iops",
                                               "iops_rd", "iops_wr", "throttling", "boot" };
    for (guint i = 0; i < G_N_ELEMENTS(unsupported); i++) {
        if (json_object_has_member(o, unsupported[i])) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                        "'%s' is not supported by vmmd's drives", unsupported[i]);
            return FALSE;
        }
    }
    return TRUE;
}

static gboolean take_drive_cache(VmmDrive *d, JsonObject *o, GError **error)
{
    d->cache_writeback = TRUE;
    g_autofree char *cache = take_text(o, "cache");
    if (cache && !parse_cache_mode(d, cache)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "invalid cache option");
        return FALSE;
    }
    d->aio = take_text(o, "aio");
    if (d->aio && !g_str_equal(d->aio, "threads") && !g_str_equal(d->aio, "native") &&
        !g_str_equal(d->aio, "io_uring")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "invalid aio option");
        return FALSE;
    }
    return TRUE;
}

static gboolean take_media(VmmDrive *d, JsonObject *o, GError **error)
{
    g_autofree char *media = take_text(o, "media");
    if (!media || g_str_equal(media, "disk"))
        return TRUE;
    if (g_str_equal(media, "cdrom")) {
        /* QEMU: a CD-ROM is read-only; on virtio-blk it is a read-only disk. */
        d->media_cdrom = TRUE;
        d->read_only = TRUE;
        return TRUE;
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "'%s' invalid media", media);
    return FALSE;
}

static gboolean take_format(VmmDrive *d, JsonObject *o, GError **error)
{
    g_autofree char *format = take_text(o, "format");
    g_autofree char *driver = take_text(o, "driver");
    if (format && driver) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Cannot specify both 'driver' and 'format'");
        return FALSE;
    }
    if (!format)
        format = g_steal_pointer(&driver);
    if (format && g_str_equal(format, "help")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Supported formats: qcow2 raw");
        return FALSE;
    }
    if (format && !known_format(format)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Unknown driver '%s'", format);
        return FALSE;
    }
    d->format = g_steal_pointer(&format);
    return TRUE;
}

/* QEMU's default id: if=none drives are "none<bus><unit>" with one unit per
 * bus, virtio drives "virtio<index>". */
static char *default_drive_id(VmmDriveSet *set, VmmDrive *d, const char *index)
{
    guint64 n = set->if_count[d->iface];
    if (index)
        vmm_parse_number(NULL, NULL, index, &n, NULL);
    set->if_count[d->iface] = (guint)n + 1;
    return d->iface == VMM_DRIVE_IF_NONE ? g_strdup_printf("none%" G_GUINT64_FORMAT "0", n)
                                         : g_strdup_printf("virtio%" G_GUINT64_FORMAT, n);
}

static gboolean fill_drive(VmmDriveSet *set, VmmDrive *d, JsonObject *o, GError **error)
{
    g_autofree char *iface = take_text(o, "if");
    g_autofree char *id = take_text(o, "id");
    g_autofree char *index = take_text(o, "index");
    g_free(take_text(o, "bus"));
    g_free(take_text(o, "unit"));
    d->werror = VMM_DRIVE_ERROR_ENOSPC;
    d->rerror = VMM_DRIVE_ERROR_REPORT;
    d->iface = VMM_DRIVE_IF_NONE; /* microvm's default, as QEMU's */

    if ((iface && !parse_if(d, iface, error)) || (id && !check_id(id, error)) ||
        !take_format(d, o, error) || !take_legacy_keys(d, o, error) ||
        !take_drive_cache(d, o, error) || !take_block_keys(d, o, error) ||
        !take_media(d, o, error) || !take_bool(o, "snapshot", NULL, &d->snapshot, error) ||
        !take_error_actions(o, FALSE, &d->werror, &d->rerror, error) ||
        !check_file_child(d, o, "", FALSE, error))
        return FALSE;
    if (id && vmm_drive_find(set, id)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Duplicate ID '%s' for drive", id);
        return FALSE;
    }
    if (d->aio && g_str_equal(d->aio, "native") && !d->cache_direct) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "aio=native was specified, but it requires cache.direct=on, which was not "
                    "specified.");
        return FALSE;
    }
    if (!d->filename && d->iface != VMM_DRIVE_IF_NONE) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "A block device must be specified for \"file\"");
        return FALSE;
    }
    d->id = id ? g_steal_pointer(&id) : default_drive_id(set, d, index);
    put_block_options(d, o);
    return TRUE;
}

static const VmmOptSpec drive_spec = { "drive", "file", NULL };

/* QemuOpts' splitting: "a=b,,c,flag,k=v" -> a="b,c", flag (bare), k="v". */
static void split_pairs(const char *value, GPtrArray *keys, GPtrArray *values)
{
    GString *cur = g_string_new(NULL);
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
        if (eq) {
            g_ptr_array_add(keys, g_strndup(cur->str, eq - cur->str));
            g_ptr_array_add(values, g_strdup(eq + 1));
        } else if (cur->len || *p) {
            g_ptr_array_add(keys, g_strdup(cur->str));
            g_ptr_array_add(values, NULL);
        }
        g_string_truncate(cur, 0);
        if (!*p)
            break;
    }
    g_string_free(cur, TRUE);
}

/* -drive's "file" is a filename that may sit beside "file.*" keys (QEMU moves
 * it to file.filename), which a tree of dotted keys cannot hold as such. */
static JsonObject *parse_drive_value(const char *value, GError **error)
{
    if (g_str_has_prefix(value, "json:"))
        return vmm_opts_parse(&drive_spec, value, error);
    g_autoptr(GPtrArray) keys = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GPtrArray) values = g_ptr_array_new_with_free_func(g_free);
    split_pairs(value, keys, values);
    if (keys->len > 0 && !values->pdata[0] && !strchr(keys->pdata[0], '.')) {
        /* A leading bare word is the implied file= (QEMU's -drive PATH). */
        values->pdata[0] = keys->pdata[0];
        keys->pdata[0] = g_strdup("file");
    }
    for (guint i = 0; i < keys->len; i++) {
        if (g_str_equal(keys->pdata[i], "file") && values->pdata[i]) {
            g_free(keys->pdata[i]);
            keys->pdata[i] = g_strdup("file.filename");
        }
    }
    return vmm_opts_from_pairs(&drive_spec, (const char *const *)keys->pdata,
                               (const char *const *)values->pdata, keys->len, error);
}

gboolean vmm_drive_parse(VmmDriveSet *set, const char *value, GError **error)
{
    g_autoptr(JsonObject) o = parse_drive_value(value, error);
    VmmDrive *d = g_new0(VmmDrive, 1);
    d->option = g_strdup_printf("-drive %s", value);
    if (!o || !fill_drive(set, d, o, error)) {
        g_prefix_error(error, "-drive %s: ", value);
        drive_free(d);
        return FALSE;
    }
    g_ptr_array_add(set->drives, d);
    if (d->iface == VMM_DRIVE_IF_VIRTIO) {
        /* The device an if=virtio drive implies, at its place in the order. */
        VmmBlkDevice *b = g_new0(VmmBlkDevice, 1);
        b->drive = g_strdup(d->id);
        b->werror = b->rerror = VMM_DRIVE_ERROR_AUTO;
        b->index = set->devices->len;
        g_ptr_array_add(set->devices, b);
        d->in_use = TRUE;
    }
    return TRUE;
}

/* ---- -blockdev ---------------------------------------------------------------- */

static JsonObject *parse_blockdev_value(const char *value, GError **error)
{
    if (value[0] != '{') {
        static const VmmOptSpec spec = { "blockdev", NULL, NULL };
        return vmm_opts_parse(&spec, value, error);
    }
    g_autoptr(JsonParser) parser = json_parser_new();
    if (!json_parser_load_from_data(parser, value, -1, error))
        return NULL;
    JsonNode *root = json_parser_get_root(parser);
    if (!root || JSON_NODE_TYPE(root) != JSON_NODE_OBJECT) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "JSON value is not an object");
        return NULL;
    }
    return json_object_ref(json_node_get_object(root));
}

static gboolean fill_blockdev(VmmDriveSet *set, VmmDrive *d, JsonObject *o, GError **error)
{
    g_autofree char *driver = take_text(o, "driver");
    g_autofree char *node_name = take_text(o, "node-name");
    d->from_blockdev = TRUE;
    d->cache_writeback = TRUE;
    d->werror = VMM_DRIVE_ERROR_ENOSPC;
    d->rerror = VMM_DRIVE_ERROR_REPORT;
    if (!driver) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Parameter 'driver' is missing");
        return FALSE;
    }
    if (!known_format(driver) && !g_str_equal(driver, "file")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "Parameter 'driver' does not accept value '%s'", driver);
        return FALSE;
    }
    if (!node_name) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "'node-name' must be specified for the root node");
        return FALSE;
    }
    if (!check_id(node_name, error))
        return FALSE;
    if (vmm_drive_find(set, node_name)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Duplicate nodes with node-name='%s'", node_name);
        return FALSE;
    }
    if (!take_block_keys(d, o, error))
        return FALSE;
    if (g_str_equal(driver, "file")) {
        /* The protocol node itself is the device's drive: raw data. */
        d->filename = take_text(o, "filename");
        g_free(take_text(o, "aio"));
        if (!d->filename) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Parameter 'filename' is missing");
            return FALSE;
        }
        d->format = g_strdup("raw");
    } else {
        JsonNode *f = json_object_get_member(o, "file");
        if (!f) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Parameter 'file' is missing");
            return FALSE;
        }
        if (JSON_NODE_TYPE(f) == JSON_NODE_OBJECT &&
            !json_object_has_member(json_node_get_object(f), "driver")) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Parameter 'file.driver' is missing");
            return FALSE;
        }
        if (!check_file_child(d, o, "", TRUE, error))
            return FALSE;
        d->format = g_strdup(driver);
    }
    d->id = g_steal_pointer(&node_name);
    put_block_options(d, o);
    return TRUE;
}

gboolean vmm_blockdev_parse(VmmDriveSet *set, const char *value, GError **error)
{
    g_autoptr(JsonObject) o = parse_blockdev_value(value, error);
    VmmDrive *d = g_new0(VmmDrive, 1);
    d->option = g_strdup_printf("-blockdev %s", value);
    if (!o || !fill_blockdev(set, d, o, error)) {
        g_prefix_error(error, "-blockdev %s: ", value);
        drive_free(d);
        return FALSE;
    }
    g_ptr_array_add(set->drives, d);
    return TRUE;
}

/* ---- -device virtio-blk-device -------------------------------------------------- */

gboolean vmm_drive_device_is_block(const char *driver)
{
    return g_str_equal(driver, "virtio-blk-device");
}

static gboolean fill_blk_device(VmmDriveSet *set, VmmBlkDevice *b, JsonObject *o, GError **error)
{
    g_free(take_text(o, "driver"));
    b->id = take_text(o, "id");
    b->drive = take_text(o, "drive");
    b->serial = take_text(o, "serial");
    b->werror = VMM_DRIVE_ERROR_AUTO;
    b->rerror = VMM_DRIVE_ERROR_AUTO;
    if ((b->id && !check_id(b->id, error)) ||
        !take_bool(o, "share-rw", NULL, &b->share_rw, error) ||
        !take_error_actions(o, TRUE, &b->werror, &b->rerror, error))
        return FALSE;
    g_autoptr(GList) rest = json_object_get_members(o);
    if (rest) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Property 'virtio-blk-device.%s' not found",
                    (const char *)rest->data);
        return FALSE;
    }
    if (!b->drive) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "drive property not set");
        return FALSE;
    }
    VmmDrive *d = vmm_drive_find(set, b->drive);
    if (!d) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "Property 'virtio-blk-device.drive' can't find value '%s'", b->drive);
        return FALSE;
    }
    if (d->in_use) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Drive '%s' is already in use by another device",
                    b->drive);
        return FALSE;
    }
    d->in_use = TRUE;
    return TRUE;
}

gboolean vmm_blk_device_parse(VmmDriveSet *set, const char *value, GError **error)
{
    static const VmmOptSpec spec = { "device", "driver", NULL };
    g_autoptr(JsonObject) o = vmm_opts_parse(&spec, value, error);
    VmmBlkDevice *b = g_new0(VmmBlkDevice, 1);
    if (!o || !fill_blk_device(set, b, o, error)) {
        g_prefix_error(error, "-device %s: ", value);
        blk_device_free(b);
        return FALSE;
    }
    b->index = set->devices->len;
    g_ptr_array_add(set->devices, b);
    return TRUE;
}

/* ---- The whole command line ------------------------------------------------------ */

static void complete_device(VmmBlkDevice *b, const VmmDrive *d)
{
    if (!b->serial && d->serial)
        b->serial = g_strdup(d->serial);
    if (b->werror == VMM_DRIVE_ERROR_AUTO)
        b->werror = d->werror;
    if (b->rerror == VMM_DRIVE_ERROR_AUTO)
        b->rerror = d->rerror;
    b->read_only = d->read_only;
    b->writeback = d->cache_writeback;
}

gboolean vmm_drives_finish(VmmDriveSet *set, GError **error)
{
    for (guint i = 0; i < set->drives->len; i++) {
        VmmDrive *d = set->drives->pdata[i];
        /* -snapshot covers -drive, not -blockdev (as QEMU). */
        if (set->snapshot && !d->from_blockdev)
            d->snapshot = TRUE;
    }
    for (guint i = 0; i < set->devices->len; i++) {
        VmmBlkDevice *b = set->devices->pdata[i];
        VmmDrive *d = vmm_drive_find(set, b->drive);
        if (!d->filename) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: Device needs media, but drive is empty", d->option);
            return FALSE;
        }
        if (d->serial && b->serial && !g_str_equal(d->serial, b->serial))
            vmm_warn("%s: serial=%s is overridden by the device's serial=%s", d->option, d->serial,
                     b->serial);
        complete_device(b, d);
    }
    return TRUE;
}
