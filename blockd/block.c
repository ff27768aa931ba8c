/* The generic block layer: the driver registry, opening a node graph from a
 * filename and options (format probing, protocol child, backing chain,
 * snapshot overlay), creating images, and the request functions that every
 * caller goes through (bounds, read-only, O_DIRECT alignment, detect-zeroes,
 * FUA and writethrough). QEMU 7.2's block.c and block/io.c are the model. */
#include "blockd/block.h"
#include "blockd/nbd-uri.h"
#include "common/error.h"
#include "common/iov.h"
#include "common/splice.h"
#include "common/log.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define PROBE_BUF_SIZE 512          /* QEMU's BLOCK_PROBE_BUF_SIZE */
#define MAX_BACKING_DEPTH 256       /* a loop in the chain ends here */
#define BOUNCE_CHUNK (1024 * 1024)  /* bounce buffers for unaligned O_DIRECT I/O */
#define NODE_NAME_MAX 31

extern const VmmBlockDriver vmm_file_driver;
extern const VmmBlockDriver vmm_raw_driver;
extern const VmmBlockDriver vmm_preallocate_driver;
extern const VmmBlockDriver vmm_nbd_driver;
extern const VmmBlockDriver vmm_qcow2_driver;

/* ---------------------------------------------------------------------------
 * Nodes: the public VmmBlockDev plus what only this file uses
 * ------------------------------------------------------------------------- */

typedef struct {
    guint64 start, end;
    gboolean serialising; /* a read-modify-write: nothing may overlap it */
} TrackedReq;

typedef struct {
    VmmBlockDev pub; /* first: a VmmBlockDev * is a BlockNode * */
    guint perm, shared;
    gboolean probed;       /* raw chosen by probing: sector 0 is guarded */
    gboolean writethrough; /* flush after every write (the user's node only) */
    /* Writes in flight on nodes that need alignment, so that a
     * read-modify-write never races another write to the same blocks. */
    GMutex req_lock;
    GCond req_cond;
    GPtrArray *reqs;
} BlockNode;

static BlockNode *node_of(VmmBlockDev *bs)
{
    return (BlockNode *)bs;
}

/* ---------------------------------------------------------------------------
 * Driver registry
 * ------------------------------------------------------------------------- */

#define MAX_DRIVERS 64
static const VmmBlockDriver *drivers[MAX_DRIVERS + 1];
static guint n_drivers;
static GMutex drivers_lock;

void vmm_block_register(const VmmBlockDriver *drv)
{
    g_mutex_lock(&drivers_lock);
    gboolean known = FALSE;
    for (guint i = 0; i < n_drivers; i++)
        known |= drivers[i] == drv || !strcmp(drivers[i]->format_name, drv->format_name);
    if (!known && n_drivers < MAX_DRIVERS)
        drivers[n_drivers++] = drv;
    g_mutex_unlock(&drivers_lock);
}

const VmmBlockDriver *vmm_block_find_driver(const char *format_name)
{
    const VmmBlockDriver *found = NULL;

    vmm_block_init();
    if (!format_name)
        return NULL;
    g_mutex_lock(&drivers_lock);
    for (guint i = 0; i < n_drivers && !found; i++)
        if (!strcmp(drivers[i]->format_name, format_name))
            found = drivers[i];
    g_mutex_unlock(&drivers_lock);
    return found;
}

const VmmBlockDriver *const *vmm_block_drivers(void)
{
    vmm_block_init();
    return drivers;
}

void vmm_block_init(void)
{
    static gsize done;

    if (g_once_init_enter(&done)) {
        vmm_block_register(&vmm_file_driver);
        vmm_block_register(&vmm_raw_driver);
        vmm_block_register(&vmm_preallocate_driver);
        vmm_block_register(&vmm_nbd_driver);
        vmm_block_register(&vmm_qcow2_driver);
        g_once_init_leave(&done, 1);
    }
}

/* ---------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------- */

gboolean vmm_buffer_is_zero(const void *buf, gsize len)
{
    const guint8 *p = buf;

    /* Once the first 16 bytes are zero, buf[i] == buf[i + 16] for every i
     * means all of it is zero; memcmp is the fastest loop libc has. */
    if (len <= 16) {
        for (gsize i = 0; i < len; i++)
            if (p[i])
                return FALSE;
        return TRUE;
    }
    for (gsize i = 0; i < 16; i++)
        if (p[i])
            return FALSE;
    return memcmp(p, p + 16, len - 16) == 0;
}

static const char *const prealloc_names[] = {
    [VMM_PREALLOC_OFF] = "off",
    [VMM_PREALLOC_METADATA] = "metadata",
    [VMM_PREALLOC_FALLOC] = "falloc",
    [VMM_PREALLOC_FULL] = "full",
};

gboolean vmm_parse_prealloc(const char *s, VmmPrealloc *out, GError **error)
{
    for (guint i = 0; i < G_N_ELEMENTS(prealloc_names); i++) {
        if (s && !strcmp(s, prealloc_names[i])) {
            *out = (VmmPrealloc)i;
            return TRUE;
        }
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                "preallocation: invalid value '%s' (off, metadata, falloc or full)", s ? s : "");
    return FALSE;
}

const char *vmm_prealloc_name(VmmPrealloc p)
{
    return (guint)p < G_N_ELEMENTS(prealloc_names) ? prealloc_names[p] : "?";
}

/* QEMU's path_has_protocol: "nbd:..." or "nbd+unix://..." but not "./a:b". */
static gboolean path_has_protocol(const char *path)
{
    const char *p = path + strcspn(path, ":/");
    return *p == ':';
}

char *vmm_block_resolve_backing(const char *image_filename, const char *backing)
{
    if (!backing)
        return NULL;
    if (!image_filename || backing[0] == '/' || path_has_protocol(backing) ||
        g_str_has_prefix(image_filename, "json:"))
        return g_strdup(backing);
    const char *slash = strrchr(image_filename, '/');
    if (!slash)
        return g_strdup(backing);
    return g_strdup_printf("%.*s%s", (int)(slash - image_filename + 1), image_filename, backing);
}

const char *vmm_block_perm_name(guint perm_bit)
{
    switch (perm_bit) {
    case VMM_BLK_PERM_CONSISTENT_READ:
        return "consistent read";
    case VMM_BLK_PERM_WRITE:
        return "write";
    case VMM_BLK_PERM_WRITE_UNCHANGED:
        return "write unchanged";
    case VMM_BLK_PERM_RESIZE:
        return "resize";
    default:
        return "unknown";
    }
}

void vmm_block_get_perm(VmmBlockDev *bs, guint *perm, guint *shared)
{
    if (perm)
        *perm = node_of(bs)->perm;
    if (shared)
        *shared = node_of(bs)->shared;
}

gboolean vmm_block_is_protocol(VmmBlockDev *bs)
{
    return bs->drv->is_protocol;
}

const char *vmm_block_format_name(VmmBlockDev *bs)
{
    return bs && bs->drv ? bs->drv->format_name : NULL;
}

static gboolean is_passthrough_format(const VmmBlockDriver *drv)
{
    return drv->is_filter || !strcmp(drv->format_name, "raw");
}

/* Protocol and filter nodes may grow by writes past their end (a format
 * driver allocating clusters); format nodes may not. */
static gboolean node_is_growable(VmmBlockDev *bs)
{
    return bs->drv->is_protocol || bs->drv->is_filter;
}

guint64 vmm_block_size(VmmBlockDev *bs)
{
    return __atomic_load_n(&bs->size, __ATOMIC_ACQUIRE);
}

/* ---------------------------------------------------------------------------
 * Option values
 * ------------------------------------------------------------------------- */

/* A boolean option that may be a JSON boolean or "on"/"off" text. */
static gboolean opt_bool(JsonObject *opts, const char *key, gboolean def, gboolean *out,
                         GError **error)
{
    *out = def;
    if (!vmm_opts_has(opts, key))
        return TRUE;
    const char *s = vmm_opts_get_string(opts, key, NULL);
    gboolean v = 2;
    if (s) {
        if (vmm_parse_bool(NULL, NULL, s, out, NULL))
            return TRUE;
    } else {
        v = vmm_opts_get_bool(opts, key, 2);
    }
    if (v != TRUE && v != FALSE) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Parameter '%s' expects 'on' or 'off'", key);
        return FALSE;
    }
    *out = v;
    return TRUE;
}

gboolean vmm_block_opt_bool(JsonObject *opts, const char *key, gboolean def, gboolean *out, GError **error)
{
    return opt_bool(opts, key, def, out, error);
}

gboolean vmm_block_opt_size(JsonObject *opts, const char *key, guint64 def, guint64 *out, GError **error)
{
    *out = def;
    if (!vmm_opts_has(opts, key))
        return TRUE;
    const char *s = vmm_opts_get_string(opts, key, NULL);
    if (s)
        return vmm_parse_size(NULL, key, s, out, error);
    JsonNode *n = NULL;
    g_auto(GStrv) parts = g_strsplit(key, ".", 2);
    n = parts[1] ? NULL : json_object_get_member(opts, key);
    if (parts[1]) {
        guint64 v = vmm_opts_get_uint(opts, key, G_MAXUINT64);
        if (v != G_MAXUINT64) {
            *out = v;
            return TRUE;
        }
    } else if (n && JSON_NODE_HOLDS_VALUE(n) && json_node_get_value_type(n) == G_TYPE_INT64 &&
               json_node_get_int(n) >= 0) {
        *out = (guint64)json_node_get_int(n);
        return TRUE;
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Parameter '%s' expects a size", key);
    return FALSE;
}

/* A string option; numbers and booleans are refused. */
static gboolean opt_string(JsonObject *opts, const char *key, const char **out, GError **error)
{
    *out = NULL;
    if (!vmm_opts_has(opts, key))
        return TRUE;
    *out = vmm_opts_get_string(opts, key, NULL);
    if (!*out) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Parameter '%s' expects a string", key);
        return FALSE;
    }
    return TRUE;
}

static JsonObject *deep_copy(JsonObject *obj)
{
    if (!obj)
        return json_object_new();
    JsonNode *n = json_node_new(JSON_NODE_OBJECT);
    json_node_set_object(n, obj);
    JsonNode *c = json_node_copy(n);
    /* json_node_copy shares objects by reference: rebuild via serialization
     * so that changes to the copy never reach the caller's object. */
    g_autofree char *text = json_to_string(c, FALSE);
    json_node_unref(c);
    json_node_unref(n);
    JsonNode *parsed = json_from_string(text, NULL);
    JsonObject *out = json_object_ref(json_node_get_object(parsed));
    json_node_unref(parsed);
    return out;
}

/* Copies every member of SRC into DST, recursively for objects; SRC wins. */
static void merge_into(JsonObject *dst, JsonObject *src)
{
    g_autoptr(GList) names = json_object_get_members(src);
    for (GList *l = names; l; l = l->next) {
        JsonNode *sv = json_object_get_member(src, l->data);
        JsonNode *dv = json_object_get_member(dst, l->data);
        if (JSON_NODE_HOLDS_OBJECT(sv) && dv && JSON_NODE_HOLDS_OBJECT(dv))
            merge_into(json_node_get_object(dv), json_node_get_object(sv));
        else
            json_object_set_member(dst, l->data, json_node_copy(sv));
    }
}

/* JSON null (e.g. "backing": null) is not an option value for the shared
 * parser; it becomes "" which the block layer reads as "none". */
static void nulls_to_empty(JsonNode *node)
{
    if (JSON_NODE_HOLDS_OBJECT(node)) {
        JsonObject *o = json_node_get_object(node);
        g_autoptr(GList) names = json_object_get_members(o);
        for (GList *l = names; l; l = l->next) {
            JsonNode *m = json_object_get_member(o, l->data);
            if (JSON_NODE_HOLDS_NULL(m))
                json_object_set_string_member(o, l->data, "");
            else
                nulls_to_empty(m);
        }
    } else if (JSON_NODE_HOLDS_ARRAY(node)) {
        JsonArray *a = json_node_get_array(node);
        for (guint i = 0; i < json_array_get_length(a); i++)
            nulls_to_empty(json_array_get_element(a, i));
    }
}

static JsonObject *parse_json_filename(const char *filename, GError **error)
{
    static const VmmOptSpec spec = {.option = "json", .implied = NULL, .keys = NULL};
    g_autoptr(GError) local = NULL;
    JsonNode *root = json_from_string(filename + strlen("json:"), &local);

    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Could not parse the JSON options of '%s': %s",
                    filename, local ? local->message : "not an object");
        if (root)
            json_node_unref(root);
        return NULL;
    }
    nulls_to_empty(root);
    g_autofree char *text = json_to_string(root, FALSE);
    json_node_unref(root);
    g_autofree char *again = g_strconcat("json:", text, NULL);
    JsonObject *opts = vmm_opts_parse(&spec, again, error);
    if (!opts)
        g_prefix_error(error, "%s: ", filename);
    return opts;
}

/* ---------------------------------------------------------------------------
 * Node-name registry
 * ------------------------------------------------------------------------- */

static GHashTable *node_names; /* name -> VmmBlockDev* */
static GMutex node_names_lock;

static gboolean node_name_wellformed(const char *name)
{
    if (!g_ascii_isalpha(name[0]))
        return FALSE;
    for (const char *p = name; *p; p++)
        if (!g_ascii_isalnum(*p) && *p != '-' && *p != '.' && *p != '_')
            return FALSE;
    return TRUE;
}

static gboolean node_name_claim(VmmBlockDev *bs, const char *name, GError **error)
{
    if (!node_name_wellformed(name)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Invalid node-name: '%s'", name);
        return FALSE;
    }
    if (strlen(name) > NODE_NAME_MAX) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Node name too long: '%s'", name);
        return FALSE;
    }
    g_mutex_lock(&node_names_lock);
    if (!node_names)
        node_names = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    gboolean taken = g_hash_table_contains(node_names, name);
    if (!taken) {
        g_hash_table_insert(node_names, g_strdup(name), bs);
        bs->node_name = g_strdup(name);
    }
    g_mutex_unlock(&node_names_lock);
    if (taken)
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Duplicate nodes with node-name='%s'", name);
    return !taken;
}

static void node_name_release(VmmBlockDev *bs)
{
    if (!bs->node_name)
        return;
    g_mutex_lock(&node_names_lock);
    if (node_names && g_hash_table_lookup(node_names, bs->node_name) == bs)
        g_hash_table_remove(node_names, bs->node_name);
    g_mutex_unlock(&node_names_lock);
}

/* ---------------------------------------------------------------------------
 * Opening
 * ------------------------------------------------------------------------- */

/* What a parent passes to the node it opens. */
typedef struct {
    int flags;
    guint perm, shared;
    gboolean force_share;
    gboolean discard_unmap;
    gboolean auto_read_only;
    int depth;
} NodeParams;

/* Keys every node understands, whatever its driver. */
static const char *const generic_keys[] = {
    "driver", "node-name", "file", "backing", "cache", "detect-zeroes", "discard",
    "read-only", "auto-read-only", "force-share", "share-rw", "filename", "format",
    "snapshot", NULL,
};

static gboolean key_in(const char *const *list, const char *key)
{
    for (guint i = 0; list[i]; i++)
        if (!strcmp(list[i], key))
            return TRUE;
    return FALSE;
}

static gboolean key_in_spec(const VmmOptKey *keys, const char *key)
{
    for (guint i = 0; keys && keys[i].name; i++) {
        const char *n = keys[i].name;
        if (!strcmp(n, key))
            return TRUE;
        /* dotted keys ("encrypt.format") nest under their first part */
        if (strchr(n, '.') && !strncmp(n, key, strcspn(n, ".")) && key[strcspn(n, ".")] == '\0')
            return TRUE;
    }
    return FALSE;
}

/* Options of the file driver given on a format node go to its file child. */
static gboolean is_protocol_key(const char *key)
{
    const VmmBlockDriver *file = &vmm_file_driver;
    return !strcmp(key, "filename") || !strcmp(key, "locking") || key_in_spec(file->open_opts, key);
}

static gboolean check_node_keys(const VmmBlockDriver *drv, JsonObject *opts, GError **error)
{
    g_autoptr(GList) names = json_object_get_members(opts);

    if (!drv->open_opts && !drv->is_protocol && !is_passthrough_format(drv))
        return TRUE; /* a driver that lists no runtime options checks its own */
    for (GList *l = names; l; l = l->next) {
        const char *key = l->data;
        if (key_in(generic_keys, key) || key_in_spec(drv->open_opts, key))
            continue;
        if (!drv->is_protocol && is_protocol_key(key))
            continue;
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Block %s '%s' does not support the option '%s'",
                    drv->is_protocol ? "protocol" : "format", drv->format_name, key);
        return FALSE;
    }
    return TRUE;
}

typedef struct {
    gboolean read_only, auto_read_only, force_share, share_rw;
    int cache_set, cache_clear; /* VMM_BDRV_O_* bits the options turn on/off */
    gboolean writethrough_set, writethrough;
    gboolean discard_set, discard_unmap;
    VmmDetectZeroes detect_zeroes;
    const char *node_name;
} GenericOpts;

static gboolean parse_cache_mode(const char *mode, GenericOpts *g, GError **error)
{
    static const struct {
        const char *name;
        gboolean direct, no_flush, writeback;
    } modes[] = {
        {"writeback", FALSE, FALSE, TRUE}, {"none", TRUE, FALSE, TRUE}, {"off", TRUE, FALSE, TRUE},
        {"writethrough", FALSE, FALSE, FALSE}, {"directsync", TRUE, FALSE, FALSE},
        {"unsafe", FALSE, TRUE, TRUE},
    };
    for (guint i = 0; i < G_N_ELEMENTS(modes); i++) {
        if (strcmp(mode, modes[i].name))
            continue;
        g->cache_set |= (modes[i].direct ? VMM_BDRV_O_NOCACHE : 0) |
                        (modes[i].no_flush ? VMM_BDRV_O_NO_FLUSH : 0);
        g->cache_clear |= (!modes[i].direct ? VMM_BDRV_O_NOCACHE : 0) |
                          (!modes[i].no_flush ? VMM_BDRV_O_NO_FLUSH : 0);
        g->writethrough_set = TRUE;
        g->writethrough = !modes[i].writeback;
        return TRUE;
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "invalid cache option: '%s'", mode);
    return FALSE;
}

static gboolean parse_cache_bit(JsonObject *opts, const char *key, int bit, GenericOpts *g,
                                GError **error)
{
    gboolean v;
    if (!vmm_opts_has(opts, key))
        return TRUE;
    if (!opt_bool(opts, key, FALSE, &v, error))
        return FALSE;
    if (v)
        g->cache_set |= bit;
    else
        g->cache_clear |= bit;
    return TRUE;
}

static gboolean parse_generic_opts(JsonObject *opts, GenericOpts *g, GError **error)
{
    const char *s;

    memset(g, 0, sizeof(*g));
    if (!opt_bool(opts, "read-only", FALSE, &g->read_only, error) ||
        !opt_bool(opts, "auto-read-only", FALSE, &g->auto_read_only, error) ||
        !opt_bool(opts, "force-share", FALSE, &g->force_share, error) ||
        !opt_bool(opts, "share-rw", FALSE, &g->share_rw, error))
        return FALSE;

    JsonNode *cache = json_object_get_member(opts, "cache");
    if (cache && JSON_NODE_HOLDS_VALUE(cache)) {
        if (!opt_string(opts, "cache", &s, error) || !parse_cache_mode(s, g, error))
            return FALSE;
    } else if (cache) {
        gboolean wb;
        if (!parse_cache_bit(opts, "cache.direct", VMM_BDRV_O_NOCACHE, g, error) ||
            !parse_cache_bit(opts, "cache.no-flush", VMM_BDRV_O_NO_FLUSH, g, error))
            return FALSE;
        if (vmm_opts_has(opts, "cache.writeback")) {
            if (!opt_bool(opts, "cache.writeback", TRUE, &wb, error))
                return FALSE;
            g->writethrough_set = TRUE;
            g->writethrough = !wb;
        }
    }

    if (!opt_string(opts, "discard", &s, error))
        return FALSE;
    if (s) {
        g->discard_set = TRUE;
        if (!strcmp(s, "ignore") || !strcmp(s, "off")) {
            g->discard_unmap = FALSE;
        } else if (!strcmp(s, "unmap") || !strcmp(s, "on")) {
            g->discard_unmap = TRUE;
        } else {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Invalid discard option");
            return FALSE;
        }
    }

    if (!opt_string(opts, "detect-zeroes", &s, error))
        return FALSE;
    if (s) {
        if (!strcmp(s, "off"))
            g->detect_zeroes = VMM_DETECT_ZEROES_OFF;
        else if (!strcmp(s, "on"))
            g->detect_zeroes = VMM_DETECT_ZEROES_ON;
        else if (!strcmp(s, "unmap"))
            g->detect_zeroes = VMM_DETECT_ZEROES_UNMAP;
        else {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "Parameter 'detect-zeroes' does not accept value '%s'", s);
            return FALSE;
        }
    }
    return opt_string(opts, "node-name", &g->node_name, error);
}

static BlockNode *node_new(const VmmBlockDriver *drv, const char *filename, const NodeParams *p)
{
    BlockNode *n = g_new0(BlockNode, 1);
    n->pub.drv = drv;
    n->pub.filename = g_strdup(filename ? filename : "");
    n->pub.open_flags = p->flags;
    n->pub.read_only = !(p->flags & VMM_BDRV_O_RDWR);
    n->pub.request_alignment = 1;
    n->pub.discard_unmap = p->discard_unmap;
    n->pub.refcnt = 1;
    n->perm = p->perm;
    n->shared = p->shared;
    g_mutex_init(&n->req_lock);
    g_cond_init(&n->req_cond);
    n->reqs = g_ptr_array_new();
    return n;
}

static void node_free(BlockNode *n)
{
    node_name_release(&n->pub);
    g_free(n->pub.filename);
    g_free(n->pub.node_name);
    g_free(n->pub.backing_file);
    g_free(n->pub.backing_format);
    g_ptr_array_free(n->reqs, TRUE);
    g_mutex_clear(&n->req_lock);
    g_cond_clear(&n->req_cond);
    g_free(n);
}

/* The protocol driver for a filename: "nbd://..." picks a registered "nbd"
 * protocol driver; anything else is a path for the file driver. */
static const VmmBlockDriver *protocol_for(const char *filename)
{
    /* nbds:, nbd+unix:, nbd:unix: ... are all the nbd driver's. */
    if (filename && vmm_nbd_is_filename(filename))
        return &vmm_nbd_driver;
    if (filename && path_has_protocol(filename)) {
        g_autofree char *name = g_strndup(filename, strcspn(filename, ":+"));
        const VmmBlockDriver *drv = vmm_block_find_driver(name);
        if (drv && drv->is_protocol)
            return drv;
    }
    return &vmm_file_driver;
}

/* The permissions a format or filter node asks of its file child, after
 * QEMU's bdrv_default_perms_for_storage and preallocate_child_perm. */
static void child_perms(const VmmBlockDriver *drv, const NodeParams *p, guint *perm, guint *shared)
{
    gboolean writable = (p->flags & VMM_BDRV_O_RDWR) != 0;

    *perm = p->perm;
    *shared = p->shared;
    if (!is_passthrough_format(drv)) {
        /* Metadata: always read consistently; nobody else may write or
         * resize under a format driver. */
        if (writable)
            *perm |= VMM_BLK_PERM_WRITE | VMM_BLK_PERM_RESIZE;
        *perm |= VMM_BLK_PERM_CONSISTENT_READ;
        *shared &= ~(guint)(VMM_BLK_PERM_WRITE | VMM_BLK_PERM_RESIZE);
    } else if (!strcmp(drv->format_name, "preallocate") &&
               (p->perm & (VMM_BLK_PERM_WRITE | VMM_BLK_PERM_RESIZE)) ==
                   (VMM_BLK_PERM_WRITE | VMM_BLK_PERM_RESIZE)) {
        *shared &= ~(guint)(VMM_BLK_PERM_WRITE | VMM_BLK_PERM_RESIZE);
    }
    if (p->flags & VMM_BDRV_O_INACTIVE)
        *shared |= VMM_BLK_PERM_WRITE | VMM_BLK_PERM_RESIZE;
    if (p->force_share)
        *shared = VMM_BLK_PERM_ALL;
}

/* Changes the permissions of an open node (its locks follow). */
static gboolean node_update_perm(VmmBlockDev *bs, guint perm, guint shared, GError **error)
{
    BlockNode *n = node_of(bs);
    guint old_perm = n->perm, old_shared = n->shared;

    if (perm == old_perm && shared == old_shared)
        return TRUE;
    n->perm = perm;
    n->shared = shared;
    if (bs->drv->set_perm &&
        !bs->drv->set_perm(bs, (perm & VMM_BLK_PERM_WRITE) != 0, (shared & VMM_BLK_PERM_WRITE) != 0,
                           error)) {
        n->perm = old_perm;
        n->shared = old_shared;
        return FALSE;
    }
    return TRUE;
}

static const VmmBlockDriver *probe_format(VmmBlockDev *file, const char *filename, GError **error)
{
    guint8 buf[PROBE_BUF_SIZE] = {0};
    guint64 size = vmm_block_size(file);
    guint64 len = MIN(size, (guint64)PROBE_BUF_SIZE);
    const VmmBlockDriver *best = NULL;
    int best_score = 0;

    if (len && !vmm_block_pread(file, 0, len, buf, error))
        return NULL;
    for (const VmmBlockDriver *const *d = vmm_block_drivers(); *d; d++) {
        if ((*d)->is_protocol || (*d)->is_filter || !(*d)->probe)
            continue;
        int score = (*d)->probe(buf, len, filename);
        if (score > best_score) {
            best_score = score;
            best = *d;
        }
    }
    return best ? best : &vmm_raw_driver;
}

static VmmBlockDev *open_node(const char *filename, const char *format, JsonObject *opts,
                              const NodeParams *params, GError **error);

static gboolean open_file_child(BlockNode *n, const char *filename, JsonObject *opts,
                                const NodeParams *p, const VmmBlockDriver **drv, GError **error)
{
    g_autoptr(JsonObject) child_opts = NULL;
    JsonNode *file_node = json_object_get_member(opts, "file");
    const char *child_filename = filename;

    if (file_node && JSON_NODE_HOLDS_OBJECT(file_node)) {
        child_opts = deep_copy(json_node_get_object(file_node));
    } else {
        child_opts = json_object_new();
        if (file_node && JSON_NODE_HOLDS_VALUE(file_node) &&
            json_node_get_value_type(file_node) == G_TYPE_STRING)
            child_filename = json_node_get_string(file_node);
    }
    /* -drive style: protocol options written on the format node */
    g_autoptr(GList) names = json_object_get_members(opts);
    for (GList *l = names; l; l = l->next) {
        if (is_protocol_key(l->data) && !json_object_has_member(child_opts, l->data))
            json_object_set_member(child_opts, l->data,
                                   json_node_copy(json_object_get_member(opts, l->data)));
    }
    const char *explicit_name = vmm_opts_get_string(child_opts, "filename", NULL);
    if (explicit_name)
        child_filename = explicit_name;

    NodeParams cp = *p;
    cp.flags &= ~(VMM_BDRV_O_SNAPSHOT | VMM_BDRV_O_WRITETHROUGH);
    cp.depth = p->depth + 1;
    if (*drv)
        child_perms(*drv, p, &cp.perm, &cp.shared);
    /* else probing: open as a pass-through child, then tighten below */

    const char *child_drv_name = vmm_opts_get_string(child_opts, "driver", NULL);
    const char *child_fmt = child_drv_name ? NULL : protocol_for(child_filename)->format_name;
    VmmBlockDev *file = open_node(child_filename, child_fmt, child_opts, &cp, error);
    if (!file)
        return FALSE;
    n->pub.file = file;

    if (!*drv) {
        *drv = probe_format(file, child_filename, error);
        if (!*drv)
            return FALSE;
        n->pub.drv = *drv;
        n->probed = !strcmp((*drv)->format_name, "raw");
        guint perm, shared;
        child_perms(*drv, p, &perm, &shared);
        if (!node_update_perm(file, perm, shared, error))
            return FALSE;
    }
    return TRUE;
}

static gboolean open_backing(BlockNode *n, JsonObject *opts, const NodeParams *p, GError **error)
{
    VmmBlockDev *bs = &n->pub;
    JsonNode *bnode = json_object_get_member(opts, "backing");
    g_autoptr(JsonObject) bopts = NULL;

    if (bnode && JSON_NODE_HOLDS_VALUE(bnode) &&
        json_node_get_value_type(bnode) == G_TYPE_STRING) {
        const char *s = json_node_get_string(bnode);
        if (!*s || !strcmp(s, "null"))
            return TRUE; /* backing: null */
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%s: backing: a reference to node '%s' is not supported; give the options", bs->filename, s);
        return FALSE;
    }
    if (bnode && JSON_NODE_HOLDS_OBJECT(bnode))
        bopts = deep_copy(json_node_get_object(bnode));
    if (!bs->backing_file && !bopts)
        return TRUE;
    if (!bopts)
        bopts = json_object_new();
    if (p->depth >= MAX_BACKING_DEPTH) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: the backing chain is deeper than %d images (a loop?)", bs->filename,
                    MAX_BACKING_DEPTH);
        return FALSE;
    }

    g_autofree char *path = vmm_block_resolve_backing(bs->filename, bs->backing_file);
    const char *fmt = NULL;
    if (!json_object_has_member(bopts, "driver") && !json_object_has_member(bopts, "format")) {
        fmt = bs->backing_format;
        if (!fmt)
            vmm_warn("%s: the image names no format for its backing file '%s'; probing it",
                     bs->filename, bs->backing_file ? bs->backing_file : "");
    }

    /* QEMU's bdrv_default_perms_for_cow: consistent reads only; others may
     * write the backing file only if our user lets others write. */
    NodeParams bp = *p;
    bp.flags &= ~(VMM_BDRV_O_RDWR | VMM_BDRV_O_SNAPSHOT | VMM_BDRV_O_WRITETHROUGH | VMM_BDRV_O_CHECK);
    bp.perm = p->perm & VMM_BLK_PERM_CONSISTENT_READ;
    bp.shared = (p->shared & VMM_BLK_PERM_WRITE ? VMM_BLK_PERM_WRITE | VMM_BLK_PERM_RESIZE : 0) |
                VMM_BLK_PERM_CONSISTENT_READ | VMM_BLK_PERM_WRITE_UNCHANGED;
    bp.auto_read_only = FALSE;
    bp.depth = p->depth + 1;

    GError *local = NULL;
    VmmBlockDev *backing = open_node(path, fmt, bopts, &bp, &local);
    if (!backing) {
        g_set_error(error, local->domain, local->code, "Could not open backing file: %s",
                    local->message);
        g_error_free(local);
        return FALSE;
    }
    bs->backing = backing;
    return TRUE;
}

static void print_probed_raw_warning(const char *filename)
{
    fprintf(stderr,
            "WARNING: Image format was not specified for '%s' and probing guessed raw.\n"
            "         Automatically detecting the format is dangerous for raw images, "
            "write operations on block 0 will be restricted.\n"
            "         Specify the 'raw' format explicitly to remove the restrictions.\n",
            filename);
}

static void node_close(BlockNode *n);

static VmmBlockDev *open_node(const char *filename, const char *format, JsonObject *opts,
                              const NodeParams *params, GError **error)
{
    GenericOpts g;
    NodeParams p = *params;
    const char *drv_name = NULL;
    g_autoptr(JsonObject) node_opts = NULL;

    if (!parse_generic_opts(opts, &g, error) || !opt_string(opts, "driver", &drv_name, error))
        return NULL;
    if (!drv_name && !opt_string(opts, "format", &drv_name, error))
        return NULL;
    if (format && drv_name && strcmp(format, drv_name)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "Cannot use driver '%s' with format '%s'", drv_name, format);
        return NULL;
    }
    if (!drv_name)
        drv_name = format;

    p.flags = (p.flags | g.cache_set) & ~g.cache_clear;
    if (g.read_only)
        p.flags &= ~VMM_BDRV_O_RDWR;
    if (g.share_rw)
        p.flags |= VMM_BDRV_O_SHARE_RW;
    if (g.discard_set)
        p.discard_unmap = g.discard_unmap;
    p.auto_read_only |= g.auto_read_only;
    if (g.force_share) {
        if (p.flags & VMM_BDRV_O_RDWR) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "force-share=on can only be used with read-only images");
            return NULL;
        }
        p.force_share = TRUE;
    }
    if (g.detect_zeroes == VMM_DETECT_ZEROES_UNMAP && !p.discard_unmap) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap");
        return NULL;
    }

    const VmmBlockDriver *drv = NULL;
    if (drv_name) {
        drv = vmm_block_find_driver(drv_name);
        if (!drv) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_NOT_FOUND, "Unknown driver '%s'", drv_name);
            return NULL;
        }
    }

    const char *explicit_name = vmm_opts_get_string(opts, "filename", NULL);
    if (drv && drv->is_protocol && explicit_name)
        filename = explicit_name;
    /* A network protocol may name its server in options instead (nbd's server.*). */
    gboolean names_server = vmm_opts_has(opts, "server") || vmm_opts_has(opts, "host") ||
                            vmm_opts_has(opts, "path");
    if (drv && drv->is_protocol && (!filename || !*filename) && !names_server) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "The '%s' block driver requires a file name", drv->format_name);
        return NULL;
    }
    if (drv && !check_node_keys(drv, opts, error))
        return NULL;

    BlockNode *n = node_new(drv ? drv : &vmm_raw_driver, filename, &p);
    VmmBlockDev *bs = &n->pub;
    bs->detect_zeroes = g.detect_zeroes;
    n->writethrough = g.writethrough_set ? g.writethrough : (p.flags & VMM_BDRV_O_WRITETHROUGH) != 0;
    if (g.node_name && !node_name_claim(bs, g.node_name, error))
        goto fail;

    node_opts = deep_copy(opts);
    if (drv && drv->is_protocol) {
        if (filename)
            json_object_set_string_member(node_opts, "filename", filename);
        if (p.auto_read_only)
            json_object_set_boolean_member(node_opts, "auto-read-only", TRUE);
    } else {
        if (!open_file_child(n, filename, opts, &p, &drv, error))
            goto fail;
        if (!check_node_keys(drv, opts, error))
            goto fail;
        g_free(bs->filename);
        bs->filename = g_strdup(bs->file->filename);
        if (bs->file->read_only)
            bs->read_only = TRUE;
    }

    if (!drv->open(bs, node_opts, p.flags, error))
        goto fail;
    if (n->probed && !bs->read_only)
        print_probed_raw_warning(bs->filename);
    if (!(p.flags & VMM_BDRV_O_NO_BACKING) && !open_backing(n, opts, &p, error)) {
        if (drv->close)
            drv->close(bs);
        goto fail;
    }
    return bs;

fail:
    if (bs->file)
        vmm_block_unref(bs->file);
    bs->file = NULL;
    node_free(n);
    return NULL;
}

static gboolean create_temp_overlay(VmmBlockDev *base, char **path_out, GError **error)
{
    const char *tmpdir = g_getenv("TMPDIR");
    if (!tmpdir || !*tmpdir)
        tmpdir = "/var/tmp";
    g_autofree char *path = g_build_filename(tmpdir, "vl.XXXXXX", NULL);
    int fd = g_mkstemp(path);
    if (fd < 0)
        return vmm_set_errno(error, errno, "Could not get temporary filename in %s", tmpdir);
    close(fd);

    g_autofree char *base_path = g_str_has_prefix(base->filename, "json:") || path_has_protocol(base->filename)
                                     ? g_strdup(base->filename)
                                     : g_canonicalize_filename(base->filename, NULL);
    g_autoptr(JsonObject) copts = json_object_new();
    json_object_set_int_member(copts, "size", (gint64)vmm_block_size(base));
    json_object_set_string_member(copts, "backing_file", base_path);
    json_object_set_string_member(copts, "backing_fmt", base->drv->format_name);
    if (!vmm_block_create(path, "qcow2", copts, error)) {
        unlink(path);
        return FALSE;
    }
    *path_out = g_steal_pointer(&path);
    return TRUE;
}

/* -snapshot: the image is opened read-only under a temporary qcow2 overlay
 * that takes every write and is gone (unlinked) once it is open. */
static VmmBlockDev *open_snapshot(VmmBlockDev *base, const NodeParams *p, GError **error)
{
    if (!vmm_block_find_driver("qcow2")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%s: snapshot mode needs the qcow2 driver for its temporary overlay, and this build has none",
                    base->filename);
        vmm_block_unref(base);
        return NULL;
    }
    g_autofree char *path = NULL;
    if (!create_temp_overlay(base, &path, error)) {
        g_prefix_error(error, "%s: snapshot mode: ", base->filename);
        vmm_block_unref(base);
        return NULL;
    }
    NodeParams op = *p;
    op.flags = (p->flags | VMM_BDRV_O_RDWR | VMM_BDRV_O_NO_BACKING) & ~VMM_BDRV_O_SNAPSHOT;
    op.perm = VMM_BLK_PERM_CONSISTENT_READ | VMM_BLK_PERM_WRITE;
    op.shared = VMM_BLK_PERM_ALL & ~(guint)VMM_BLK_PERM_WRITE;
    g_autoptr(JsonObject) oopts = json_object_new();
    VmmBlockDev *overlay = open_node(path, "qcow2", oopts, &op, error);
    unlink(path);
    if (!overlay) {
        vmm_block_unref(base);
        return NULL;
    }
    overlay->open_flags &= ~VMM_BDRV_O_NO_BACKING;
    overlay->backing = base;
    return overlay;
}

VmmBlockDev *vmm_block_open(const char *filename, const char *format, JsonObject *options,
                            int flags, GError **error)
{
    g_autoptr(JsonObject) opts = NULL;
    GenericOpts g;

    vmm_block_init();
    if (filename && g_str_has_prefix(filename, "json:")) {
        opts = parse_json_filename(filename, error);
        if (!opts)
            return NULL;
        if (options)
            merge_into(opts, options);
        filename = NULL;
    } else {
        opts = deep_copy(options);
    }
    /* A protocol whose options name the server (nbd's server.*) needs no filename. */
    if (!filename && !vmm_opts_has(opts, "filename") && !vmm_opts_has(opts, "file") &&
        !vmm_opts_has(opts, "server")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "No filename or file options given");
        return NULL;
    }
    if (!parse_generic_opts(opts, &g, error))
        return NULL;

    gboolean snapshot = (flags & VMM_BDRV_O_SNAPSHOT) != 0;
    if (vmm_opts_has(opts, "snapshot") && !opt_bool(opts, "snapshot", FALSE, &snapshot, error))
        return NULL;
    json_object_remove_member(opts, "snapshot");

    NodeParams p = {.flags = flags & ~VMM_BDRV_O_SNAPSHOT};
    if (g.read_only || snapshot)
        p.flags &= ~VMM_BDRV_O_RDWR;
    if (g.share_rw)
        p.flags |= VMM_BDRV_O_SHARE_RW;
    gboolean rw = (p.flags & VMM_BDRV_O_RDWR) != 0;
    /* The user's permissions, as a QEMU guest device asks them: write
     * access is exclusive unless share-rw; a read-only user with share-rw
     * also lets format nodes share writes (qemu-img -U, force-share). */
    p.perm = VMM_BLK_PERM_CONSISTENT_READ | (rw ? VMM_BLK_PERM_WRITE : 0);
    p.shared = VMM_BLK_PERM_ALL;
    if (rw && !(p.flags & VMM_BDRV_O_SHARE_RW))
        p.shared &= ~(guint)VMM_BLK_PERM_WRITE;
    p.force_share = !rw && (p.flags & VMM_BDRV_O_SHARE_RW);

    VmmBlockDev *bs = open_node(filename, format, opts, &p, error);
    if (bs && snapshot)
        bs = open_snapshot(bs, &p, error);
    return bs;
}

VmmBlockDev *vmm_block_ref(VmmBlockDev *bs)
{
    g_atomic_int_inc(&bs->refcnt);
    return bs;
}

static void node_close(BlockNode *n)
{
    VmmBlockDev *bs = &n->pub;
    g_autoptr(GError) err = NULL;

    if (!bs->read_only && !vmm_block_flush(bs, &err))
        vmm_warn("%s: flush on close failed: %s", bs->filename, err->message);
    if (bs->drv->close)
        bs->drv->close(bs);
    if (bs->backing)
        vmm_block_unref(bs->backing);
    if (bs->file)
        vmm_block_unref(bs->file);
    node_free(n);
}

void vmm_block_unref(VmmBlockDev *bs)
{
    if (bs && g_atomic_int_dec_and_test(&bs->refcnt))
        node_close(node_of(bs));
}

/* ---------------------------------------------------------------------------
 * Creating
 * ------------------------------------------------------------------------- */

/* "encrypt.format" for nested {"encrypt": {"format": ...}} */
static void collect_keys(JsonObject *obj, const char *prefix, GPtrArray *out)
{
    g_autoptr(GList) names = json_object_get_members(obj);
    for (GList *l = names; l; l = l->next) {
        g_autofree char *key = prefix ? g_strdup_printf("%s.%s", prefix, (char *)l->data)
                                      : g_strdup(l->data);
        JsonNode *m = json_object_get_member(obj, l->data);
        if (JSON_NODE_HOLDS_OBJECT(m))
            collect_keys(json_node_get_object(m), key, out);
        else
            g_ptr_array_add(out, g_steal_pointer(&key));
    }
}

static gboolean spec_has_exact(const VmmOptKey *keys, const char *key)
{
    for (guint i = 0; keys && keys[i].name; i++) {
        const char *n = keys[i].name;
        size_t len = strlen(n);
        if (!strcmp(n, key))
            return TRUE;
        if (len > 2 && !strcmp(n + len - 2, ".*") && !strncmp(n, key, len - 1))
            return TRUE;
    }
    return FALSE;
}

static gboolean check_create_opts(const VmmBlockDriver *drv, const VmmBlockDriver *proto,
                                  JsonObject *opts, const char *filename, GError **error)
{
    g_autoptr(GPtrArray) keys = g_ptr_array_new_with_free_func(g_free);

    collect_keys(opts, NULL, keys);
    for (guint i = 0; i < keys->len; i++) {
        const char *key = keys->pdata[i];
        if (spec_has_exact(drv->create_opts, key) || (proto && spec_has_exact(proto->create_opts, key)))
            continue;
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: Invalid parameter '%s' (not an option of the %s format)", filename, key,
                    drv->format_name);
        return FALSE;
    }
    return TRUE;
}

gboolean vmm_block_create(const char *filename, const char *format, JsonObject *opts,
                          GError **error)
{
    g_autoptr(JsonObject) own = NULL;

    vmm_block_init();
    const VmmBlockDriver *drv = vmm_block_find_driver(format);
    if (!drv) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_NOT_FOUND, "Unknown file format '%s'", format ? format : "");
        return FALSE;
    }
    if (!drv->create) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "Format driver '%s' does not support image creation", drv->format_name);
        return FALSE;
    }
    if (!opts)
        opts = own = json_object_new();
    const VmmBlockDriver *proto = drv->is_protocol ? NULL : protocol_for(filename);
    if (!check_create_opts(drv, proto, opts, filename, error))
        return FALSE;
    if (drv->is_protocol)
        return drv->create(filename, NULL, opts, error);

    /* The protocol layer gets its own options (nocow, extent_size_hint)
     * and an empty file; the format driver sizes it. */
    g_autoptr(JsonObject) popts = json_object_new();
    json_object_set_int_member(popts, "size", 0);
    for (guint i = 0; proto->create_opts && proto->create_opts[i].name; i++) {
        const char *k = proto->create_opts[i].name;
        if (strcmp(k, "size") && strcmp(k, "preallocation") && json_object_has_member(opts, k))
            json_object_set_member(popts, k, json_node_copy(json_object_get_member(opts, k)));
    }
    if (!proto->create || !proto->create(filename, NULL, popts, error))
        return FALSE;

    /* The format's steps need no flushes of their own (a half-created image
     * is no image either way): one at the end makes the new image durable.
     * On a busy host each fdatasync can wait long behind other writers. */
    NodeParams p = {
        .flags = VMM_BDRV_O_RDWR | VMM_BDRV_O_NO_FLUSH,
        .perm = VMM_BLK_PERM_CONSISTENT_READ | VMM_BLK_PERM_WRITE | VMM_BLK_PERM_RESIZE,
        .shared = VMM_BLK_PERM_ALL & ~(guint)(VMM_BLK_PERM_WRITE | VMM_BLK_PERM_RESIZE),
        .discard_unmap = TRUE,
    };
    g_autoptr(JsonObject) fopts = json_object_new();
    VmmBlockDev *file = open_node(filename, proto->format_name, fopts, &p, error);
    if (!file)
        return FALSE;
    gboolean ok = drv->create(filename, file, opts, error);
    vmm_block_unref(file);
    if (!ok)
        return FALSE;
    p.flags &= ~VMM_BDRV_O_NO_FLUSH;
    g_autoptr(JsonObject) fopts2 = json_object_new();
    file = open_node(filename, proto->format_name, fopts2, &p, error);
    if (!file)
        return FALSE;
    ok = vmm_block_flush(file, error);
    vmm_block_unref(file);
    return ok;
}

/* ---------------------------------------------------------------------------
 * Requests
 * ------------------------------------------------------------------------- */

static gboolean check_request(VmmBlockDev *bs, guint64 offset, guint64 bytes, gboolean write,
                              GError **error)
{
    if (offset + bytes < offset || offset > G_MAXINT64 || bytes > G_MAXINT64) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: request at offset %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT " bytes overflows",
                    bs->filename, offset, bytes);
        return FALSE;
    }
    if (write && bs->read_only) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PERMISSION, "%s: Block node is read-only (%s)",
                    bs->filename, g_strerror(EROFS));
        return FALSE;
    }
    guint64 size = vmm_block_size(bs);
    if (!node_is_growable(bs) && offset + bytes > size) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: request at offset %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT
                    " bytes lies past the end of the image (%" G_GUINT64_FORMAT " bytes)",
                    bs->filename, offset, bytes, size);
        return FALSE;
    }
    return TRUE;
}

static gboolean unsupported(VmmBlockDev *bs, const char *what, GError **error)
{
    g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED, "%s: the %s driver does not support %s",
                bs->filename, bs->drv->format_name, what);
    return FALSE;
}

static void *bounce_alloc(guint32 align, gsize size)
{
    void *p = NULL;
    if (posix_memalign(&p, MAX(align, 4096u), size))
        return NULL;
    return p;
}

static gboolean ranges_conflict(const TrackedReq *a, const TrackedReq *b)
{
    return (a->serialising || b->serialising) && a->start < b->end && b->start < a->end;
}

static void track_begin(BlockNode *n, TrackedReq *req)
{
    g_mutex_lock(&n->req_lock);
    for (;;) {
        gboolean conflict = FALSE;
        for (guint i = 0; i < n->reqs->len && !conflict; i++)
            conflict = ranges_conflict(req, n->reqs->pdata[i]);
        if (!conflict)
            break;
        g_cond_wait(&n->req_cond, &n->req_lock);
    }
    g_ptr_array_add(n->reqs, req);
    g_mutex_unlock(&n->req_lock);
}

static void track_end(BlockNode *n, TrackedReq *req)
{
    g_mutex_lock(&n->req_lock);
    g_ptr_array_remove_fast(n->reqs, req);
    g_cond_broadcast(&n->req_cond);
    g_mutex_unlock(&n->req_lock);
}

static gboolean needs_bounce(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf)
{
    guint32 a = bs->request_alignment;
    return a > 1 && (offset % a || bytes % a || (buf && (guintptr)buf % a));
}

/* Reads through an aligned bounce buffer, chunk by chunk. */
static gboolean bounce_pread(VmmBlockDev *bs, guint64 offset, guint64 bytes, void *buf,
                             GError **error)
{
    guint32 a = bs->request_alignment;
    gsize cap = MAX((gsize)BOUNCE_CHUNK, (gsize)a);
    guint8 *bounce = bounce_alloc(a, cap);
    guint64 cur = offset, end = offset + bytes;
    gboolean ok = TRUE;

    if (!bounce)
        return vmm_set_errno(error, ENOMEM, "%s: bounce buffer", bs->filename);
    while (ok && cur < end) {
        guint64 astart = cur / a * a;
        guint64 aend = MIN((end + a - 1) / a * a, astart + cap);
        guint64 n = MIN(aend, end) - cur;
        ok = bs->drv->pread(bs, astart, aend - astart, bounce, 0, error);
        if (ok)
            memcpy((guint8 *)buf + (cur - offset), bounce + (cur - astart), n);
        cur += n;
    }
    free(bounce);
    return ok;
}

/* Read-modify-write for unaligned writes on O_DIRECT nodes. BUF NULL writes
 * zeroes. The caller tracks the request as serialising. */
static gboolean bounce_pwrite(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf,
                              int flags, GError **error)
{
    guint32 a = bs->request_alignment;
    gsize cap = MAX((gsize)BOUNCE_CHUNK, (gsize)a);
    guint8 *bounce = bounce_alloc(a, cap);
    guint64 cur = offset, end = offset + bytes;
    gboolean ok = TRUE;

    if (!bounce)
        return vmm_set_errno(error, ENOMEM, "%s: bounce buffer", bs->filename);
    while (ok && cur < end) {
        guint64 astart = cur / a * a;
        guint64 aend = MIN((end + a - 1) / a * a, astart + cap);
        guint64 n = MIN(aend, end) - cur;
        gboolean head = cur > astart;
        gboolean tail = cur + n < aend && !(head && aend - a == astart);
        if (head)
            ok = bs->drv->pread(bs, astart, a, bounce, 0, error);
        if (ok && tail)
            ok = bs->drv->pread(bs, aend - a, a, bounce + (aend - a - astart), 0, error);
        if (ok) {
            if (buf)
                memcpy(bounce + (cur - astart), (const guint8 *)buf + (cur - offset), n);
            else
                memset(bounce + (cur - astart), 0, n);
            ok = bs->drv->pwrite(bs, astart, aend - astart, bounce, flags, error);
        }
        cur += n;
    }
    free(bounce);
    return ok;
}

gboolean vmm_block_pread(VmmBlockDev *bs, guint64 offset, guint64 bytes, void *buf, GError **error)
{
    if (!check_request(bs, offset, bytes, FALSE, error))
        return FALSE;
    if (!bytes)
        return TRUE;
    if (!bs->drv->pread)
        return unsupported(bs, "reading", error);
    if (needs_bounce(bs, offset, bytes, buf))
        return bounce_pread(bs, offset, bytes, buf, error);
    return bs->drv->pread(bs, offset, bytes, buf, 0, error);
}

gboolean vmm_block_map_host(VmmBlockDev *bs, guint64 offset, guint64 bytes, gboolean write, int *fd,
                            guint64 *host_offset, guint64 *pnum)
{
    if (bytes == 0 || offset > bs->size || bytes > bs->size - offset)
        return FALSE;
    if (write && (bs->read_only || bs->detect_zeroes != VMM_DETECT_ZEROES_OFF ||
                  (node_of(bs)->probed && offset < PROBE_BUF_SIZE)))
        return FALSE;
    if (bs->drv->map_host)
        return bs->drv->map_host(bs, offset, bytes, write, fd, host_offset, pnum);
    return bs->drv->is_filter && bs->file &&
           vmm_block_map_host(bs->file, offset, bytes, write, fd, host_offset, pnum);
}

gboolean vmm_block_pwrite_spliced(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *head,
                                  gsize head_len, struct VmmSplicePipe *const *pipes, guint npipes, int flags,
                                  GError **error)
{
    int fd;
    guint64 host, pnum;
    if (!check_request(bs, offset, bytes, TRUE, error))
        return FALSE;
    if (!vmm_block_map_host(bs, offset, bytes, TRUE, &fd, &host, &pnum) || pnum < bytes || head_len > bytes) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: write at offset %" G_GUINT64_FORMAT
                    " cannot go to the host file directly", bs->filename, offset);
        return FALSE;
    }
    /* The head goes to the same mapped range as the pipes (not through
     * vmm_block_pwrite, which would flush a writethrough node once more). */
    for (gsize done = 0; done < head_len;) {
        ssize_t n = pwrite(fd, (const guint8 *)head + done, head_len - done, (off_t)(host + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return vmm_set_errno(error, n < 0 ? errno : ENOSPC,
                                 "%s: write of %" G_GUINT64_FORMAT " bytes at offset %" G_GUINT64_FORMAT,
                                 bs->filename, bytes, offset);
        done += (gsize)n;
    }
    guint64 at = head_len;
    for (guint i = 0; i < npipes; i++) {
        gsize held = vmm_splice_pipe_held(pipes[i]);
        if (held > bytes - at || !vmm_splice_drain_to_file(pipes[i], fd, host + at))
            return vmm_set_errno(error, held > bytes - at ? EINVAL : errno,
                                 "%s: write of %" G_GUINT64_FORMAT " bytes at offset %" G_GUINT64_FORMAT,
                                 bs->filename, bytes, offset);
        at += held;
    }
    if (at != bytes) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: write at offset %" G_GUINT64_FORMAT
                    ": %" G_GUINT64_FORMAT " bytes of data for %" G_GUINT64_FORMAT, bs->filename, offset, at, bytes);
        return FALSE;
    }
    if ((flags & VMM_BDRV_REQ_FUA) || node_of(bs)->writethrough)
        return vmm_block_flush(bs, error);
    return TRUE;
}

/* preadv or pwritev of all of IOV (BYTES) at host offset AT of FD. A read
 * that meets the file's end zero-fills the rest (as file_pread does); a
 * write that stops short is ENOSPC. Returns 0 or an errno value. */
static int host_iov_io(int fd, guint64 at, const struct iovec *iov, guint niov, guint64 bytes, gboolean write)
{
    guint64 done;
    int err = vmm_iov_pio(fd, at, iov, niov, write, &done);
    if (err || done == bytes)
        return err;
    if (write)
        return ENOSPC;
    g_autofree guint8 *zeroes = g_malloc0(bytes - done);
    vmm_iov_from_buf(iov, niov, done, zeroes, bytes - done);
    return 0;
}

static gboolean iov_bad_length(VmmBlockDev *bs, guint64 offset, guint64 bytes, const struct iovec *iov,
                               guint niov, GError **error)
{
    guint64 total = vmm_iov_size(iov, niov);
    if (total == bytes)
        return FALSE;
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: request at offset %" G_GUINT64_FORMAT
                " of %" G_GUINT64_FORMAT " bytes with %" G_GUINT64_FORMAT " bytes of buffers",
                bs->filename, offset, bytes, total);
    return TRUE;
}

gboolean vmm_block_preadv(VmmBlockDev *bs, guint64 offset, guint64 bytes, const struct iovec *iov,
                          guint niov, GError **error)
{
    int fd;
    guint64 host, pnum;
    if (!check_request(bs, offset, bytes, FALSE, error) || iov_bad_length(bs, offset, bytes, iov, niov, error))
        return FALSE;
    if (!bytes)
        return TRUE;
    if (vmm_block_map_host(bs, offset, bytes, FALSE, &fd, &host, &pnum) && pnum >= bytes) {
        int err = host_iov_io(fd, host, iov, niov, bytes, FALSE);
        return !err || vmm_set_errno(error, err, "%s: read of %" G_GUINT64_FORMAT " bytes at offset %"
                                     G_GUINT64_FORMAT, bs->filename, bytes, offset);
    }
    g_autofree guint8 *buf = g_try_malloc(bytes);
    if (!buf)
        return vmm_set_errno(error, ENOMEM, "%s: read of %" G_GUINT64_FORMAT " bytes", bs->filename, bytes);
    if (!vmm_block_pread(bs, offset, bytes, buf, error))
        return FALSE;
    vmm_iov_from_buf(iov, niov, 0, buf, bytes);
    return TRUE;
}

gboolean vmm_block_pwritev(VmmBlockDev *bs, guint64 offset, guint64 bytes, const struct iovec *iov,
                           guint niov, int flags, GError **error)
{
    int fd;
    guint64 host, pnum;
    if (!check_request(bs, offset, bytes, TRUE, error) || iov_bad_length(bs, offset, bytes, iov, niov, error))
        return FALSE;
    if (!bytes)
        return TRUE;
    if (vmm_block_map_host(bs, offset, bytes, TRUE, &fd, &host, &pnum) && pnum >= bytes) {
        int err = host_iov_io(fd, host, iov, niov, bytes, TRUE);
        if (err)
            return vmm_set_errno(error, err, "%s: write of %" G_GUINT64_FORMAT " bytes at offset %"
                                 G_GUINT64_FORMAT, bs->filename, bytes, offset);
        if ((flags & VMM_BDRV_REQ_FUA) || node_of(bs)->writethrough)
            return vmm_block_flush(bs, error);
        return TRUE;
    }
    g_autofree guint8 *buf = g_try_malloc(bytes);
    if (!buf)
        return vmm_set_errno(error, ENOMEM, "%s: write of %" G_GUINT64_FORMAT " bytes", bs->filename, bytes);
    vmm_iov_to_buf(iov, niov, 0, buf, bytes);
    return vmm_block_pwrite(bs, offset, bytes, buf, flags, error);
}

/* A probed raw image must not get a format header in sector 0 (a guest
 * could otherwise make the host parse its data as qcow2 on the next boot). */
static gboolean check_probed_write(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf,
                                   GError **error)
{
    guint8 sector[PROBE_BUF_SIZE];

    if (!node_of(bs)->probed || offset >= PROBE_BUF_SIZE)
        return TRUE;
    guint64 have = MIN(vmm_block_size(bs), (guint64)PROBE_BUF_SIZE);
    memset(sector, 0, sizeof(sector));
    if (have && !bs->drv->pread(bs, 0, have, sector, 0, error))
        return FALSE;
    memcpy(sector + offset, buf, MIN(bytes, PROBE_BUF_SIZE - offset));
    for (const VmmBlockDriver *const *d = vmm_block_drivers(); *d; d++) {
        if ((*d)->is_protocol || (*d)->is_filter || !(*d)->probe || !strcmp((*d)->format_name, "raw"))
            continue;
        if ((*d)->probe(sector, MAX(have, MIN(offset + bytes, (guint64)PROBE_BUF_SIZE)), bs->filename) > 1) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_PERMISSION,
                        "%s: write to block 0 of an image probed as raw would make it look like a %s image "
                        "(%s); specify the 'raw' format explicitly",
                        bs->filename, (*d)->format_name, g_strerror(EPERM));
            return FALSE;
        }
    }
    return TRUE;
}

static gboolean after_write(VmmBlockDev *bs, gboolean emulate_fua, GError **error)
{
    if (emulate_fua || node_of(bs)->writethrough)
        return vmm_block_flush(bs, error);
    return TRUE;
}

static gboolean do_pwrite(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf,
                          int flags, GError **error)
{
    BlockNode *n = node_of(bs);
    gboolean emulate_fua = (flags & VMM_BDRV_REQ_FUA) && !(bs->drv->supported_write_flags & VMM_BDRV_REQ_FUA);
    gboolean ok;

    if (emulate_fua)
        flags &= ~VMM_BDRV_REQ_FUA;
    if (bs->request_alignment > 1) {
        guint32 a = bs->request_alignment;
        TrackedReq req = {offset / a * a, (offset + bytes + a - 1) / a * a, FALSE};
        req.serialising = needs_bounce(bs, offset, bytes, buf);
        track_begin(n, &req);
        ok = req.serialising ? bounce_pwrite(bs, offset, bytes, buf, flags, error)
                             : bs->drv->pwrite(bs, offset, bytes, buf, flags, error);
        track_end(n, &req);
    } else {
        ok = bs->drv->pwrite(bs, offset, bytes, buf, flags, error);
    }
    return ok && after_write(bs, emulate_fua, error);
}

static gboolean write_zero_buffers(VmmBlockDev *bs, guint64 offset, guint64 bytes, int flags,
                                   GError **error)
{
    gsize cap = (gsize)MIN(bytes, (guint64)BOUNCE_CHUNK);
    guint8 *zero = bounce_alloc(bs->request_alignment, MAX(cap, (gsize)bs->request_alignment));
    gboolean ok = TRUE;

    if (!zero)
        return vmm_set_errno(error, ENOMEM, "%s: zero buffer", bs->filename);
    memset(zero, 0, MAX(cap, (gsize)bs->request_alignment));
    for (guint64 done = 0; ok && done < bytes;) {
        guint64 n = MIN(bytes - done, (guint64)cap);
        ok = bs->drv->pwrite(bs, offset + done, n, zero, flags & VMM_BDRV_REQ_FUA, error);
        done += n;
    }
    free(zero);
    return ok;
}

static gboolean zeroes_aligned(VmmBlockDev *bs, guint64 offset, guint64 bytes, int flags,
                               GError **error)
{
    if (bs->drv->pwrite_zeroes)
        return bs->drv->pwrite_zeroes(bs, offset, bytes, flags, error);
    if (flags & VMM_BDRV_REQ_NO_FALLBACK)
        return unsupported(bs, "fast zero writes", error);
    if (!bs->drv->pwrite)
        return unsupported(bs, "writing", error);
    return write_zero_buffers(bs, offset, bytes, flags, error);
}

static gboolean do_pwrite_zeroes(VmmBlockDev *bs, guint64 offset, guint64 bytes, int flags,
                                 GError **error)
{
    BlockNode *n = node_of(bs);
    gboolean emulate_fua = (flags & VMM_BDRV_REQ_FUA) && !(bs->drv->supported_write_flags & VMM_BDRV_REQ_FUA);
    guint32 a = bs->request_alignment;
    gboolean ok = TRUE;

    if (!bs->discard_unmap)
        flags &= ~VMM_BDRV_REQ_MAY_UNMAP;
    if (emulate_fua)
        flags &= ~VMM_BDRV_REQ_FUA;
    if (a <= 1)
        return zeroes_aligned(bs, offset, bytes, flags, error) && after_write(bs, emulate_fua, error);

    /* Unaligned head and tail become read-modify-write of zeroes. */
    guint64 end = offset + bytes;
    guint64 mid_start = MIN((offset + a - 1) / a * a, end);
    guint64 mid_end = MAX(end / a * a, mid_start);
    TrackedReq req = {offset / a * a, (end + a - 1) / a * a, mid_start != offset || mid_end != end};
    if (flags & VMM_BDRV_REQ_NO_FALLBACK && req.serialising)
        return unsupported(bs, "fast zero writes of unaligned ranges", error);
    track_begin(n, &req);
    if (mid_start > offset)
        ok = bounce_pwrite(bs, offset, mid_start - offset, NULL, flags & VMM_BDRV_REQ_FUA, error);
    if (ok && mid_end > mid_start)
        ok = zeroes_aligned(bs, mid_start, mid_end - mid_start, flags, error);
    if (ok && end > mid_end && mid_end >= mid_start)
        ok = bounce_pwrite(bs, MAX(mid_end, offset), end - MAX(mid_end, offset), NULL,
                           flags & VMM_BDRV_REQ_FUA, error);
    track_end(n, &req);
    return ok && after_write(bs, emulate_fua, error);
}

gboolean vmm_block_pwrite(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf,
                          int flags, GError **error)
{
    if (!check_request(bs, offset, bytes, TRUE, error))
        return FALSE;
    if (!bytes)
        return TRUE;
    if (!bs->drv->pwrite)
        return unsupported(bs, "writing", error);
    if (!check_probed_write(bs, offset, bytes, buf, error))
        return FALSE;
    if (bs->detect_zeroes != VMM_DETECT_ZEROES_OFF && vmm_buffer_is_zero(buf, bytes)) {
        int zflags = flags & VMM_BDRV_REQ_FUA;
        if (bs->detect_zeroes == VMM_DETECT_ZEROES_UNMAP)
            zflags |= VMM_BDRV_REQ_MAY_UNMAP;
        return do_pwrite_zeroes(bs, offset, bytes, zflags, error);
    }
    return do_pwrite(bs, offset, bytes, buf, flags, error);
}

gboolean vmm_block_pwrite_zeroes(VmmBlockDev *bs, guint64 offset, guint64 bytes, int flags,
                                 GError **error)
{
    if (!check_request(bs, offset, bytes, TRUE, error))
        return FALSE;
    if (!bytes)
        return TRUE;
    return do_pwrite_zeroes(bs, offset, bytes, flags, error);
}

gboolean vmm_block_pwrite_compressed(VmmBlockDev *bs, guint64 offset, guint64 bytes,
                                     const void *buf, GError **error)
{
    if (!check_request(bs, offset, bytes, TRUE, error))
        return FALSE;
    if (!bs->drv->pwrite_compressed)
        return unsupported(bs, "compressed writes", error);
    if (!bs->drv->pwrite_compressed(bs, offset, bytes, buf, error))
        return FALSE;
    return after_write(bs, FALSE, error);
}

gboolean vmm_block_pdiscard(VmmBlockDev *bs, guint64 offset, guint64 bytes, GError **error)
{
    if (!check_request(bs, offset, bytes, TRUE, error))
        return FALSE;
    /* discard=ignore (the default) drops discards; a driver without
     * discard has nothing to free. Both are fine: discard is advisory. */
    if (!bytes || !bs->discard_unmap || !bs->drv->pdiscard)
        return TRUE;
    return bs->drv->pdiscard(bs, offset, bytes, error);
}

gboolean vmm_block_allocate(VmmBlockDev *bs, guint64 offset, guint64 bytes, GError **error)
{
    if (!check_request(bs, offset, bytes, TRUE, error))
        return FALSE;
    if (!bytes)
        return TRUE;
    if (bs->drv->allocate)
        return bs->drv->allocate(bs, offset, bytes, error);
    if (bs->drv->is_filter && bs->file)
        return vmm_block_allocate(bs->file, offset, bytes, error);
    return unsupported(bs, "allocating ranges ahead of writes", error);
}

gssize vmm_block_compress_cluster(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf,
                                  void *out, gsize out_len, GError **error)
{
    if (!check_request(bs, offset, bytes, TRUE, error))
        return -1;
    if (!bs->drv->compress_cluster || !bs->drv->pwrite_precompressed) {
        unsupported(bs, "compressing clusters ahead of writes", error);
        return -1;
    }
    return bs->drv->compress_cluster(bs, offset, bytes, buf, out, out_len, error);
}

gboolean vmm_block_pwrite_precompressed(VmmBlockDev *bs, guint64 offset, guint64 bytes,
                                        const void *cdata, gsize clen, GError **error)
{
    if (!check_request(bs, offset, bytes, TRUE, error))
        return FALSE;
    if (!bs->drv->pwrite_precompressed)
        return unsupported(bs, "compressed writes", error);
    if (!bs->drv->pwrite_precompressed(bs, offset, bytes, cdata, clen, error))
        return FALSE;
    return after_write(bs, FALSE, error);
}

gboolean vmm_block_flush(VmmBlockDev *bs, GError **error)
{
    if (bs->read_only)
        return TRUE;
    if (bs->drv->flush && !bs->drv->flush(bs, error))
        return FALSE;
    return !bs->file || vmm_block_flush(bs->file, error);
}

int vmm_block_status(VmmBlockDev *bs, guint64 offset, guint64 bytes, guint64 *pnum,
                     guint64 *map, VmmBlockDev **file, GError **error)
{
    guint64 size = vmm_block_size(bs);
    guint64 local_map = 0;
    VmmBlockDev *local_file = NULL;
    int ret;

    if (!map)
        map = &local_map;
    if (!file)
        file = &local_file;
    *file = NULL;
    if (offset >= size) {
        *pnum = 0;
        return VMM_BLOCK_EOF;
    }
    bytes = MIN(bytes, size - offset);
    if (!bytes) {
        *pnum = 0;
        return 0;
    }
    if (bs->drv->block_status) {
        ret = bs->drv->block_status(bs, offset, bytes, pnum, map, file, error);
        if (ret < 0)
            return -1;
    } else if (bs->drv->is_filter && bs->file) {
        ret = vmm_block_status(bs->file, offset, bytes, pnum, map, file, error);
        if (ret < 0)
            return -1;
    } else {
        *pnum = bytes;
        *map = offset;
        *file = bs;
        ret = VMM_BLOCK_DATA | VMM_BLOCK_OFFSET_VALID;
    }
    *pnum = CLAMP(*pnum, 1, bytes);
    ret &= ~VMM_BLOCK_EOF;
    if (ret & (VMM_BLOCK_DATA | VMM_BLOCK_ZERO))
        ret |= VMM_BLOCK_ALLOCATED;
    else if (!bs->backing && !bs->drv->is_protocol && !is_passthrough_format(bs->drv))
        ret |= VMM_BLOCK_ZERO; /* unallocated without a backing file reads zeroes */
    if (offset + *pnum == size)
        ret |= VMM_BLOCK_EOF;
    return ret;
}

int vmm_block_status_above(VmmBlockDev *bs, VmmBlockDev *base, guint64 offset, guint64 bytes,
                           guint64 *pnum, guint64 *map, VmmBlockDev **file, int *depth,
                           GError **error)
{
    guint64 top_size = vmm_block_size(bs);
    VmmBlockDev *p = bs;
    int layer = 1;
    int ret;

    if (depth)
        *depth = 0;
    ret = vmm_block_status(p, offset, bytes, pnum, map, file, error);
    while (ret >= 0 && *pnum && !(ret & VMM_BLOCK_ALLOCATED) && p->backing && p->backing != base) {
        guint64 n = *pnum;
        p = p->backing;
        layer++;
        if (offset >= vmm_block_size(p)) {
            /* past the end of a shorter backing file: zeroes */
            ret = VMM_BLOCK_ZERO;
            *pnum = n;
            break;
        }
        ret = vmm_block_status(p, offset, n, pnum, map, file, error);
    }
    if (ret < 0)
        return -1;
    if (depth && (ret & VMM_BLOCK_ALLOCATED))
        *depth = layer;
    ret &= ~VMM_BLOCK_EOF;
    if (offset + *pnum >= top_size)
        ret |= VMM_BLOCK_EOF;
    return ret;
}

gboolean vmm_block_truncate(VmmBlockDev *bs, guint64 size, gboolean exact, VmmPrealloc prealloc,
                            gboolean shrink_allowed, GError **error)
{
    if (bs->read_only) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PERMISSION, "%s: Block node is read-only (%s)",
                    bs->filename, g_strerror(EROFS));
        return FALSE;
    }
    if (size > G_MAXINT64) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG, "%s: size %" G_GUINT64_FORMAT " is too large",
                    bs->filename, size);
        return FALSE;
    }
    if (!bs->drv->truncate)
        return unsupported(bs, "resizing", error);
    return bs->drv->truncate(bs, size, exact, prealloc, shrink_allowed, error);
}

gboolean vmm_block_make_empty(VmmBlockDev *bs, GError **error)
{
    if (bs->read_only) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PERMISSION, "%s: cannot empty a read-only node", bs->filename);
        return FALSE;
    }
    if (!bs->drv->make_empty) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED, "%s: format %s cannot be emptied", bs->filename,
                    bs->drv->format_name);
        return FALSE;
    }
    return bs->drv->make_empty(bs, error) && vmm_block_flush(bs, error);
}
