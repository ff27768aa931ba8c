/* The qcow2 format driver: probe, open (header, header extensions, feature
 * bits), create, the request entry points, truncate, info, amend, measure and
 * backing file changes. The on-disk format is QEMU's docs/interop/qcow2.txt;
 * behaviour follows QEMU 7.2 where the spec leaves a choice. */
#include "blockd/qcow2.h"
#include "common/bytes.h"
#include "common/error.h"
#include "common/log.h"
#include <stdarg.h>
#include <string.h>
#include <time.h>

/* ---- options ---- */

static const VmmOptKey qcow2_create_opts[] = {
    { "size", VMM_OPT_SIZE, "Virtual disk size", NULL },
    { "compat", VMM_OPT_STRING, "Compatibility level (v2 [0.10] or v3 [1.1])", NULL },
    { "backing_file", VMM_OPT_STRING, "File name of a base image", NULL },
    { "backing_fmt", VMM_OPT_STRING, "Image format of the base image", NULL },
    { "encryption", VMM_OPT_BOOL,
      "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)", NULL },
    { "encrypt.format", VMM_OPT_STRING, "Encrypt the image, format choices: 'aes', 'luks'", NULL },
    { "encrypt.key-secret", VMM_OPT_STRING, "ID of secret providing qcow AES key or LUKS passphrase", NULL },
    { "encrypt.cipher-alg", VMM_OPT_STRING, "Name of encryption cipher algorithm", NULL },
    { "encrypt.cipher-mode", VMM_OPT_STRING, "Name of encryption cipher mode", NULL },
    { "encrypt.ivgen-alg", VMM_OPT_STRING, "Name of IV generator algorithm", NULL },
    { "encrypt.ivgen-hash-alg", VMM_OPT_STRING, "Name of IV generator hash algorithm", NULL },
    { "encrypt.hash-alg", VMM_OPT_STRING, "Name of encryption hash algorithm", NULL },
    { "encrypt.iter-time", VMM_OPT_NUMBER, "Time to spend in PBKDF in milliseconds", NULL },
    { "cluster_size", VMM_OPT_SIZE, "qcow2 cluster size", "65536" },
    { "preallocation", VMM_OPT_STRING,
      "Preallocation mode (allowed values: off, metadata, falloc, full)", "off" },
    { "lazy_refcounts", VMM_OPT_BOOL, "Postpone refcount updates", "off" },
    { "refcount_bits", VMM_OPT_NUMBER, "Width of a reference count entry in bits", "16" },
    { "compression_type", VMM_OPT_STRING,
      "Compression method used for image cluster compression", "zlib" },
    { "extended_l2", VMM_OPT_BOOL, "Extended L2 tables", "off" },
    { "data_file", VMM_OPT_STRING, "File name of an external data file", NULL },
    { "data_file_raw", VMM_OPT_BOOL, "The external data file must stay valid as a raw image", "off" },
    /* nocow and extent_size_hint belong to the file protocol (QEMU lists them
     * there too); create passes nocow on to an external data file. */
    { NULL, 0, NULL, NULL },
};

static const VmmOptKey qcow2_open_opts[] = {
    { "lazy-refcounts", VMM_OPT_BOOL, "Postpone refcount updates", NULL },
    { "pass-discard-request", VMM_OPT_BOOL, "Pass guest discard requests to the layer below", "on" },
    { "pass-discard-snapshot", VMM_OPT_BOOL,
      "Generate discard requests when snapshot related space is freed", "on" },
    { "pass-discard-other", VMM_OPT_BOOL, "Generate discard requests when other clusters are freed", "off" },
    { "overlap-check", VMM_OPT_STRING, "Metadata overlap checks (accepted; we check on open)", NULL },
    { "cache-size", VMM_OPT_SIZE, "Maximum combined metadata (L2 table and refcount block) cache size", NULL },
    { "l2-cache-size", VMM_OPT_SIZE, "Maximum L2 table cache size", NULL },
    { "l2-cache-entry-size", VMM_OPT_SIZE, "Size of each entry in the L2 cache", NULL },
    { "refcount-cache-size", VMM_OPT_SIZE, "Maximum refcount block cache size", NULL },
    { "cache-clean-interval", VMM_OPT_NUMBER, "Clean unused cache entries after this time (in seconds)", "600" },
    { "data-file", VMM_OPT_STRING, "External data file", NULL },
    { "encrypt.key-secret", VMM_OPT_STRING, "ID of the secret that provides the key", NULL },
    { NULL, 0, NULL, NULL },
};

/* A size or number option: integers as parsed by a typed spec, or strings
 * with suffixes as an untyped one leaves them. */
static gboolean opt_size(Qcow2State *s, const char *who, JsonObject *o, const char *key, guint64 def,
                         guint64 *out, gboolean *set, GError **error)
{
    JsonNode *n = o && json_object_has_member(o, key) ? json_object_get_member(o, key) : NULL;

    *out = def;
    if (set)
        *set = FALSE;
    if (!n || JSON_NODE_HOLDS_NULL(n))
        return TRUE;
    if (set)
        *set = TRUE;
    if (JSON_NODE_HOLDS_VALUE(n) && json_node_get_value_type(n) == G_TYPE_INT64 &&
        json_node_get_int(n) >= 0) {
        *out = (guint64)json_node_get_int(n);
        return TRUE;
    }
    if (JSON_NODE_HOLDS_VALUE(n) && json_node_get_value_type(n) == G_TYPE_STRING)
        return vmm_parse_size(who, key, json_node_get_string(n), out, error);
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: option '%s' must be a size", who, key);
    (void)s;
    return FALSE;
}

static const char *opt_str(JsonObject *o, const char *key)
{
    return vmm_opts_get_string(o, key, NULL);
}

/* ---- helpers for the other files ---- */

static guint64 file_end(Qcow2State *s)
{
    return vmm_block_size(s->bs->file);
}

gboolean q2_file_pread(Qcow2State *s, guint64 off, guint64 len, void *buf, const char *what,
                       GError **error)
{
    guint64 end = file_end(s);

    if (off >= end || off + len < off) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: %s at offset 0x%" G_GINT64_MODIFIER "x is past the end of the file "
                    "(0x%" G_GINT64_MODIFIER "x)", s->bs->filename, what, off, end);
        return FALSE;
    }
    if (off + len > end) {
        /* A table that ends in a short last cluster reads zeroes past EOF. */
        memset((guint8 *)buf + (end - off), 0, off + len - end);
        len = end - off;
    }
    return vmm_block_pread(s->bs->file, off, len, buf, error);
}

gboolean q2_file_pwrite(Qcow2State *s, guint64 off, guint64 len, const void *buf, GError **error)
{
    return vmm_block_pwrite(s->bs->file, off, len, buf, 0, error);
}

gboolean q2_file_flush(Qcow2State *s, GError **error)
{
    return vmm_block_flush(s->bs->file, error);
}

gboolean q2_signal_corruption(Qcow2State *s, GError **error, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *msg = NULL;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (!s->read_only && !(s->bs->open_flags & VMM_BDRV_O_CHECK) && !s->corrupt_signalled) {
        /* Stop writing before the damage spreads; QEMU does the same. */
        s->corrupt_signalled = TRUE;
        if (s->version >= 3) {
            s->incompatible |= QCOW2_INCOMPAT_CORRUPT;
            if (q2_update_header(s, NULL))
                q2_file_flush(s, NULL);
        }
        s->read_only = TRUE;
        vmm_warn("%s: marking image as corrupt: %s; further corruption events will be suppressed",
                  s->bs->filename, msg);
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: image is corrupt: %s", s->bs->filename, msg);
    return FALSE;
}

gboolean q2_validate_table(Qcow2State *s, guint64 off, guint64 entries, guint64 entry_size,
                           guint64 max_bytes, const char *what, GError **error)
{
    if (entries > max_bytes / entry_size) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: %s too large (%" G_GUINT64_FORMAT
                    " entries)", s->bs->filename, what, entries);
        return FALSE;
    }
    if (!entries)
        return TRUE;
    if (q2_offset_into_cluster(s, off)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: %s offset 0x%" G_GINT64_MODIFIER
                    "x is not aligned to a cluster", s->bs->filename, what, off);
        return FALSE;
    }
    if (off == 0 || off > G_MAXINT64 - entries * entry_size) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: %s offset 0x%" G_GINT64_MODIFIER
                    "x is invalid", s->bs->filename, what, off);
        return FALSE;
    }
    if (off >= file_end(s)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: %s offset 0x%" G_GINT64_MODIFIER
                    "x is past the end of the file", s->bs->filename, what, off);
        return FALSE;
    }
    return TRUE;
}

/* ---- header ---- */

static const struct { guint8 type, bit; const char *name; } feature_table[] = {
    { 0, 0, "dirty bit" },
    { 0, 1, "corrupt bit" },
    { 0, 2, "external data file" },
    { 0, 3, "compression type" },
    { 0, 4, "extended L2 entries" },
    { 1, 0, "lazy refcounts" },
    { 2, 0, "bitmaps" },
    { 2, 1, "raw external data" },
};

static gsize add_ext(guint8 *buf, gsize pos, gsize cap, guint32 type, const void *data, guint32 len,
                     gboolean *ok)
{
    gsize padded = (len + 7u) & ~7u;

    if (pos + 8 + padded > cap) {
        *ok = FALSE;
        return pos;
    }
    put_be32(buf + pos, type);
    put_be32(buf + pos + 4, len);
    if (len)
        memcpy(buf + pos + 8, data, len);
    return pos + 8 + padded;
}

gboolean q2_update_header(Qcow2State *s, GError **error)
{
    gsize cap = s->cluster_size, pos;
    g_autofree guint8 *buf = g_malloc0(cap);
    gboolean ok = TRUE;

    put_be32(buf, QCOW_MAGIC);
    put_be32(buf + 4, (guint32)s->version);
    put_be32(buf + 20, (guint32)s->cluster_bits);
    put_be64(buf + 24, s->bs->size);
    put_be32(buf + 32, 0);
    put_be32(buf + 36, s->l1_size);
    put_be64(buf + 40, s->l1_table_offset);
    put_be64(buf + 48, s->refcount_table_offset);
    put_be32(buf + 56, s->refcount_table_clusters);
    put_be32(buf + 60, s->nb_snapshots);
    put_be64(buf + 64, s->snapshots_offset);
    if (s->version >= 3) {
        put_be64(buf + 72, s->incompatible);
        put_be64(buf + 80, s->compatible);
        put_be64(buf + 88, s->autoclear);
        put_be32(buf + 96, (guint32)s->refcount_order);
        put_be32(buf + 100, s->header_length);
        buf[104] = (guint8)s->compression_type;
        if (s->header_tail_len)
            memcpy(buf + 105, s->header_tail, s->header_tail_len);
        pos = s->header_length;
    } else {
        pos = QCOW2_V2_HEADER_SIZE;
    }

    if (s->image_backing_format)
        pos = add_ext(buf, pos, cap, QCOW2_EXT_BACKING_FORMAT, s->image_backing_format,
                      (guint32)strlen(s->image_backing_format), &ok);
    if (q2_has_data_file(s) && s->image_data_file)
        pos = add_ext(buf, pos, cap, QCOW2_EXT_DATA_FILE, s->image_data_file,
                      (guint32)strlen(s->image_data_file), &ok);
    /* QEMU leaves the table out for clusters of 4k and less: it would
     * crowd out the backing file name. */
    if (s->version >= 3 && s->cluster_size > 4096) {
        guint8 ft[G_N_ELEMENTS(feature_table) * 48];
        memset(ft, 0, sizeof(ft));
        for (gsize i = 0; i < G_N_ELEMENTS(feature_table); i++) {
            ft[i * 48] = feature_table[i].type;
            ft[i * 48 + 1] = feature_table[i].bit;
            strncpy((char *)ft + i * 48 + 2, feature_table[i].name, 46);
        }
        pos = add_ext(buf, pos, cap, QCOW2_EXT_FEATURE_TABLE, ft, sizeof(ft), &ok);
    }
    if (s->bitmaps_ext)
        pos = add_ext(buf, pos, cap, s->bitmaps_ext->type, s->bitmaps_ext->data, s->bitmaps_ext->len, &ok);
    for (guint i = 0; s->unknown_exts && i < s->unknown_exts->len; i++) {
        Qcow2Ext *e = g_ptr_array_index(s->unknown_exts, i);
        pos = add_ext(buf, pos, cap, e->type, e->data, e->len, &ok);
    }
    pos = add_ext(buf, pos, cap, QCOW2_EXT_END, NULL, 0, &ok);
    if (s->image_backing_file) {
        gsize len = strlen(s->image_backing_file);
        if (pos + len > cap) {
            ok = FALSE;
        } else {
            memcpy(buf + pos, s->image_backing_file, len);
            put_be64(buf + 8, pos);
            put_be32(buf + 16, (guint32)len);
        }
    }
    if (!ok) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG,
                    "%s: the header, its extensions and the backing file name do not fit in "
                    "one cluster (%" G_GUINT64_FORMAT " bytes)", s->bs->filename, s->cluster_size);
        return FALSE;
    }
    return q2_file_pwrite(s, 0, cap, buf, error);
}

static gboolean write_incompatible(Qcow2State *s, GError **error)
{
    guint8 b[8];

    put_be64(b, s->incompatible);
    return q2_file_pwrite(s, 72, 8, b, error);
}

gboolean q2_mark_dirty(Qcow2State *s, GError **error)
{
    if (s->version < 3 || (s->incompatible & QCOW2_INCOMPAT_DIRTY))
        return TRUE;
    /* Refcounts may lag from now on: say so before the first such change. */
    if (!q2_file_flush(s, error))
        return FALSE;
    s->incompatible |= QCOW2_INCOMPAT_DIRTY;
    if (!write_incompatible(s, error) || !q2_file_flush(s, error))
        return FALSE;
    s->dirty_marked = TRUE;
    return TRUE;
}

gboolean q2_mark_clean(Qcow2State *s, GError **error)
{
    if (!(s->incompatible & QCOW2_INCOMPAT_DIRTY))
        return TRUE;
    if (!q2_flush_metadata(s, error))
        return FALSE;
    s->incompatible &= ~(guint64)QCOW2_INCOMPAT_DIRTY;
    if (!write_incompatible(s, error) || !q2_file_flush(s, error))
        return FALSE;
    s->dirty_marked = FALSE;
    return TRUE;
}

gboolean q2_flush_metadata(Qcow2State *s, GError **error)
{
    if (s->data_file != s->bs->file && !vmm_block_flush(s->data_file, error))
        return FALSE;
    if (!q2_cache_write(s, s->l2_cache, error) || !q2_cache_write(s, s->refcount_cache, error) ||
        !q2_file_flush(s, error))
        return FALSE;
    if (!s->pending_frees || !s->pending_frees->len)
        return TRUE;
    /* The tables no longer name these clusters on disk: now they may go. */
    return q2_apply_pending_frees(s, error) && q2_cache_write(s, s->refcount_cache, error) &&
           q2_file_flush(s, error);
}

/* ---- L1 table ---- */

gboolean q2_write_l1_entry(Qcow2State *s, guint64 idx, GError **error)
{
    /* The 512-byte sector that holds the entry, as QEMU writes it. */
    guint64 first = idx & ~63ull, n = MIN(64, s->l1_size - first);
    guint8 buf[512];

    for (guint64 i = 0; i < n; i++)
        put_be64(buf + i * 8, s->l1_table[first + i]);
    if (!q2_file_pwrite(s, s->l1_table_offset + first * 8, n * 8, buf, error))
        return FALSE;
    return q2_file_flush(s, error);
}

gboolean q2_grow_l1_table(Qcow2State *s, guint64 min_size, gboolean exact, GError **error)
{
    guint64 new_size = s->l1_size, new_off;

    if (min_size <= s->l1_size)
        return TRUE;
    if (exact) {
        new_size = min_size;
    } else {
        if (!new_size)
            new_size = 1;
        while (new_size < min_size)
            new_size = (new_size * 3 + 1) / 2;
    }
    if (new_size > QCOW2_MAX_L1_BYTES / 8) {
        if (min_size > QCOW2_MAX_L1_BYTES / 8) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG,
                        "%s: the L1 table would exceed %u bytes", s->bs->filename,
                        QCOW2_MAX_L1_BYTES);
            return FALSE;
        }
        new_size = QCOW2_MAX_L1_BYTES / 8;
    }
    g_autofree guint8 *buf = g_malloc0(new_size * 8);
    for (guint64 i = 0; i < s->l1_size; i++)
        put_be64(buf + i * 8, s->l1_table[i]);
    /* The refcounts of the new table reach the disk before the header names it. */
    if (!q2_cache_flush(s, s->refcount_cache, error) ||
        !q2_alloc_clusters(s, new_size * 8, &new_off, error) ||
        !q2_cache_flush(s, s->refcount_cache, error) ||
        !q2_file_pwrite(s, new_off, new_size * 8, buf, error) || !q2_file_flush(s, error))
        return FALSE;

    guint8 hdr[12];
    put_be32(hdr, (guint32)new_size);
    put_be64(hdr + 4, new_off);
    if (!q2_file_pwrite(s, 36, 12, hdr, error) || !q2_file_flush(s, error))
        return FALSE;

    guint64 old_off = s->l1_table_offset, old_size = s->l1_size;
    guint64 *t = g_new0(guint64, new_size);
    memcpy(t, s->l1_table, old_size * 8);
    g_free(s->l1_table);
    s->l1_table = t;
    s->l1_table_offset = new_off;
    s->l1_size = (guint32)new_size;
    if (old_size && !q2_free_clusters(s, old_off, old_size * 8, QCOW2_DISCARD_OTHER, error))
        return FALSE;
    return TRUE;
}

static guint64 size_to_l1(const Qcow2State *s, guint64 size)
{
    int shift = s->cluster_bits + s->l2_bits;
    return (size + (1ull << shift) - 1) >> shift;
}

/* ---- open ---- */

static void set_geometry(Qcow2State *s, int cluster_bits, int refcount_order, gboolean extended_l2)
{
    s->cluster_bits = cluster_bits;
    s->cluster_size = 1ull << cluster_bits;
    s->extended_l2 = extended_l2;
    s->l2_entry_shift = extended_l2 ? 4 : 3;
    s->l2_bits = cluster_bits - s->l2_entry_shift;
    s->l2_size = 1ull << s->l2_bits;
    s->subclusters = extended_l2 ? QCOW2_SUBCLUSTERS : 1;
    s->subcluster_bits = extended_l2 ? cluster_bits - 5 : cluster_bits;
    s->subcluster_size = 1ull << s->subcluster_bits;
    s->refcount_order = refcount_order;
    s->refcount_max = refcount_order == 6 ? G_MAXUINT64 : (1ull << (1 << refcount_order)) - 1;
    s->refblock_bits = cluster_bits + 3 - refcount_order;
    s->csize_shift = 62 - (cluster_bits - 8);
    s->csize_mask = (1ull << (cluster_bits - 8)) - 1;
    s->cluster_offset_mask = (1ull << s->csize_shift) - 1;
}

static const char *feature_name(Qcow2State *s, int type, int bit)
{
    for (guint i = 0; s->feature_names && i < s->feature_names->len / 48; i++) {
        const guint8 *e = (const guint8 *)s->feature_names->data + i * 48;
        if (e[0] == type && e[1] == bit)
            return (const char *)e + 2;
    }
    return NULL;
}

static void free_ext(gpointer p)
{
    Qcow2Ext *e = p;
    g_free(e->data);
    g_free(e);
}

static gboolean read_extensions(Qcow2State *s, const guint8 *hdr, gsize hdr_len, gsize start,
                                gsize end, GError **error)
{
    gsize pos = start;

    while (pos + 8 <= end) {
        guint32 type = get_be32(hdr + pos), len = get_be32(hdr + pos + 4);
        pos += 8;
        if (type == QCOW2_EXT_END)
            return TRUE;
        if (len > end - pos) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: header extension 0x%08x is %u bytes, past the end of the header area",
                        s->bs->filename, type, len);
            return FALSE;
        }
        const guint8 *data = hdr + pos;
        switch (type) {
        case QCOW2_EXT_BACKING_FORMAT:
            if (len > 1023) {
                g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                            "%s: backing format name is %u bytes, too long", s->bs->filename, len);
                return FALSE;
            }
            g_free(s->image_backing_format);
            s->image_backing_format = g_strndup((const char *)data, len);
            break;
        case QCOW2_EXT_FEATURE_TABLE:
            if (!s->feature_names)
                s->feature_names = g_array_new(FALSE, FALSE, 1);
            g_array_append_vals(s->feature_names, data, len - len % 48);
            break;
        case QCOW2_EXT_DATA_FILE:
            g_free(s->image_data_file);
            s->image_data_file = g_strndup((const char *)data, len);
            break;
        case QCOW2_EXT_CRYPTO:
            g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                        "%s: encrypted qcow2 images (LUKS header extension) are not supported yet",
                        s->bs->filename);
            return FALSE;
        case QCOW2_EXT_BITMAPS:
            if (len < 24) {
                g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                            "%s: bitmaps header extension is %u bytes, too short", s->bs->filename, len);
                return FALSE;
            }
            s->bitmaps_ext = g_new0(Qcow2Ext, 1);
            s->bitmaps_ext->type = type;
            s->bitmaps_ext->len = len;
            s->bitmaps_ext->data = g_memdup2(data, len);
            s->nb_bitmaps = get_be32(data);
            s->bitmap_dir_size = get_be64(data + 8);
            s->bitmap_dir_offset = get_be64(data + 16);
            break;
        default: {
            Qcow2Ext *e = g_new0(Qcow2Ext, 1);
            e->type = type;
            e->len = len;
            e->data = g_memdup2(data, len);
            g_ptr_array_add(s->unknown_exts, e);
        }
        }
        pos += (len + 7u) & ~7u;
    }
    (void)hdr_len;
    return TRUE;
}

static gboolean refuse_unknown_incompat(Qcow2State *s, GError **error)
{
    guint64 unknown = s->incompatible & ~(guint64)QCOW2_INCOMPAT_KNOWN;
    g_autoptr(GString) names = g_string_new(NULL);

    if (!unknown)
        return TRUE;
    for (int bit = 0; bit < 64; bit++) {
        if (!(unknown & (1ull << bit)))
            continue;
        const char *name = feature_name(s, 0, bit);
        if (names->len)
            g_string_append(names, ", ");
        if (name)
            g_string_append_printf(names, "%.46s", name);
        else
            g_string_append_printf(names, "Unknown incompatible feature: %" G_GINT64_MODIFIER "x",
                                   (guint64)1 << bit);
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                "%s: unsupported qcow2 feature(s): %s", s->bs->filename, names->str);
    return FALSE;
}

static gboolean read_cache_sizes(Qcow2State *s, JsonObject *o, guint64 *l2_bytes, guint64 *rc_bytes,
                                 GError **error)
{
    const char *who = s->bs->filename;
    guint64 min_rc = 4 * s->cluster_size;
    guint64 max_l2_entries = (s->bs->size + s->cluster_size - 1) / s->cluster_size;
    guint64 max_l2 = ((max_l2_entries << s->l2_entry_shift) + s->cluster_size - 1) & ~(s->cluster_size - 1);
    guint64 combined, l2_setting, entry_size;
    gboolean combined_set, l2_set, rc_set;

    if (!opt_size(s, who, o, "cache-size", 0, &combined, &combined_set, error) ||
        !opt_size(s, who, o, "l2-cache-size", 32u << 20, &l2_setting, &l2_set, error) ||
        !opt_size(s, who, o, "refcount-cache-size", 0, rc_bytes, &rc_set, error) ||
        !opt_size(s, who, o, "l2-cache-entry-size", s->cluster_size, &entry_size, NULL, error))
        return FALSE;
    if (entry_size < 512 || entry_size > s->cluster_size || (entry_size & (entry_size - 1))) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: L2 cache entry size must be a power of two between 512 and the cluster "
                    "size (%" G_GUINT64_FORMAT ")", who, s->cluster_size);
        return FALSE;
    }
    *l2_bytes = MIN(max_l2, l2_setting);
    if (combined_set) {
        if (l2_set && rc_set) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: cache-size, l2-cache-size and "
                        "refcount-cache-size may not be set at the same time", who);
            return FALSE;
        } else if (l2_set && l2_setting > combined) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: l2-cache-size may not exceed cache-size", who);
            return FALSE;
        } else if (*rc_bytes > combined) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: refcount-cache-size may not exceed cache-size", who);
            return FALSE;
        }
        if (l2_set) {
            *rc_bytes = combined - *l2_bytes;
        } else if (rc_set) {
            *l2_bytes = combined - *rc_bytes;
        } else if (combined >= max_l2 + min_rc) {
            *l2_bytes = max_l2;
            *rc_bytes = combined - max_l2;
        } else {
            *rc_bytes = MIN(combined, min_rc);
            *l2_bytes = combined - *rc_bytes;
        }
    }
    if (!rc_set && !combined_set)
        *rc_bytes = min_rc;
    return TRUE;
}

static gboolean open_options(Qcow2State *s, JsonObject *o, GError **error)
{
    guint64 l2_bytes, rc_bytes, interval;
    gboolean set;

    if (!read_cache_sizes(s, o, &l2_bytes, &rc_bytes, error))
        return FALSE;
    if (!opt_size(s, s->bs->filename, o, "cache-clean-interval", 600, &interval, &set, error))
        return FALSE;
    if (interval > G_MAXUINT32) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: cache-clean-interval must be between 0 and %u", s->bs->filename, G_MAXUINT32);
        return FALSE;
    }
    s->cache_clean_interval = interval;
    s->last_clean_time = g_get_monotonic_time();
    s->l2_cache = q2_cache_new(s, (int)MAX(2, MIN(l2_bytes / s->cluster_size, 1u << 20)), "L2 table");
    s->refcount_cache = q2_cache_new(s, (int)MAX(4, MIN(rc_bytes / s->cluster_size, 1u << 20)),
                                     "refcount block");
    s->lazy_refcounts = vmm_opts_get_bool(o, "lazy-refcounts",
                                          (s->compatible & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0);
    if (s->lazy_refcounts && s->version < 3) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level",
                    s->bs->filename);
        return FALSE;
    }
    s->pass_discard_request = vmm_opts_get_bool(o, "pass-discard-request", TRUE);
    s->pass_discard_snapshot = vmm_opts_get_bool(o, "pass-discard-snapshot", TRUE);
    s->pass_discard_other = vmm_opts_get_bool(o, "pass-discard-other", FALSE);
    return TRUE;
}

static gboolean open_data_file(Qcow2State *s, JsonObject *o, int flags, GError **error)
{
    const char *name = opt_str(o, "data-file");

    if (!q2_has_data_file(s)) {
        if (name) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: 'data-file' can only be set for images with an external data file",
                        s->bs->filename);
            return FALSE;
        }
        s->data_file = s->bs->file;
        s->autoclear &= ~(guint64)QCOW2_AUTOCLEAR_DATA_FILE_RAW;
        return TRUE;
    }
    if (!name)
        name = s->image_data_file;
    if (!name) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: the image has an external data file but names none: use the data-file option",
                    s->bs->filename);
        return FALSE;
    }
    g_autofree char *path = NULL;
    if (g_path_is_absolute(name) || g_file_test(name, G_FILE_TEST_EXISTS))
        path = g_strdup(name);
    else
        path = vmm_block_resolve_backing(s->bs->filename, name);
    int f = (flags & (VMM_BDRV_O_RDWR | VMM_BDRV_O_NOCACHE | VMM_BDRV_O_NO_FLUSH |
                      VMM_BDRV_O_SHARE_RW | VMM_BDRV_O_INACTIVE)) | VMM_BDRV_O_NO_BACKING;
    s->data_file = vmm_block_open(path, "file", NULL, f, error);
    if (!s->data_file) {
        g_prefix_error(error, "%s: external data file: ", s->bs->filename);
        return FALSE;
    }
    s->own_data_file = TRUE;
    return TRUE;
}

static void qcow2_free_state(Qcow2State *s)
{
    if (!s)
        return;
    q2_cache_free(s->l2_cache);
    q2_cache_free(s->refcount_cache);
    if (s->own_data_file && s->data_file)
        vmm_block_unref(s->data_file);
    q2_free_snapshots(s);
    g_free(s->l1_table);
    g_free(s->refcount_table);
    g_free(s->header_tail);
    g_free(s->image_backing_file);
    g_free(s->image_backing_format);
    g_free(s->image_data_file);
    if (s->unknown_exts)
        g_ptr_array_free(s->unknown_exts, TRUE);
    if (s->bitmaps_ext)
        free_ext(s->bitmaps_ext);
    if (s->feature_names)
        g_array_free(s->feature_names, TRUE);
    if (s->inflight)
        g_ptr_array_free(s->inflight, TRUE);
    if (s->pending_frees)
        g_array_free(s->pending_frees, TRUE);
    g_mutex_clear(&s->lock);
    g_cond_clear(&s->alloc_cond);
    g_free(s);
}

static gboolean parse_header(Qcow2State *s, const guint8 *h, gsize hlen, GError **error)
{
    const char *fn = s->bs->filename;
    guint32 cluster_bits, refcount_order = 4;

    if (hlen < QCOW2_V2_HEADER_SIZE || get_be32(h) != QCOW_MAGIC) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: %s", fn,
                    hlen < QCOW2_V2_HEADER_SIZE ? "file too short for a qcow2 header"
                                                : "not a qcow2 image (bad magic)");
        return FALSE;
    }
    s->version = (int)get_be32(h + 4);
    if (s->version != 2 && s->version != 3) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED, "%s: unsupported qcow2 version %d",
                    fn, s->version);
        return FALSE;
    }
    cluster_bits = get_be32(h + 20);
    if (cluster_bits < QCOW2_MIN_CLUSTER_BITS || cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: header field cluster_bits is %u; it must be between %d and %d", fn,
                    cluster_bits, QCOW2_MIN_CLUSTER_BITS, QCOW2_MAX_CLUSTER_BITS);
        return FALSE;
    }
    if (s->version >= 3) {
        if (hlen < QCOW2_V3_HEADER_SIZE) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: file too short for a qcow2 v3 header", fn);
            return FALSE;
        }
        s->incompatible = get_be64(h + 72);
        s->compatible = get_be64(h + 80);
        s->autoclear = get_be64(h + 88);
        refcount_order = get_be32(h + 96);
        s->header_length = get_be32(h + 100);
        if (s->header_length < QCOW2_V3_HEADER_SIZE || (s->header_length & 7) ||
            s->header_length > (1u << cluster_bits) || s->header_length > hlen) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: header field header_length is %u; it must be a multiple of 8 between "
                        "104 and the cluster size", fn, s->header_length);
            return FALSE;
        }
        if (refcount_order > 6) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: header field refcount_order is %u; refcount entries may not exceed 64 bits",
                        fn, refcount_order);
            return FALSE;
        }
        if (s->header_length > 104)
            s->compression_type = h[104];
        if (s->header_length > 105) {
            s->header_tail_len = s->header_length - 105;
            s->header_tail = g_memdup2(h + 105, s->header_tail_len);
        }
    } else {
        s->header_length = QCOW2_V2_HEADER_SIZE;
    }
    if ((s->incompatible & QCOW2_INCOMPAT_EXTL2) && cluster_bits < 14) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: extended L2 entries need clusters of at least 16384 bytes (cluster_bits %u)",
                    fn, cluster_bits);
        return FALSE;
    }
    set_geometry(s, (int)cluster_bits, (int)refcount_order, (s->incompatible & QCOW2_INCOMPAT_EXTL2) != 0);
    s->bs->size = get_be64(h + 24);
    if (get_be32(h + 32) != 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%s: encrypted qcow2 images (crypt_method %u, %s) are not supported yet", fn,
                    get_be32(h + 32), get_be32(h + 32) == 1 ? "aes" : get_be32(h + 32) == 2 ? "luks" : "unknown");
        return FALSE;
    }
    s->l1_size = get_be32(h + 36);
    s->l1_table_offset = get_be64(h + 40);
    s->refcount_table_offset = get_be64(h + 48);
    s->refcount_table_clusters = get_be32(h + 56);
    s->nb_snapshots = get_be32(h + 60);
    s->snapshots_offset = get_be64(h + 64);
    return TRUE;
}

static gboolean check_compression_type(Qcow2State *s, GError **error)
{
    gboolean bit = (s->incompatible & QCOW2_INCOMPAT_COMPRESSION) != 0;

    if (s->compression_type > QCOW2_COMPRESSION_ZSTD) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%s: unknown compression type %d in header field compression_type",
                    s->bs->filename, s->compression_type);
        return FALSE;
    }
    if (bit != (s->compression_type != QCOW2_COMPRESSION_ZLIB)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: header field compression_type (%d) disagrees with the compression type "
                    "incompatible bit", s->bs->filename, s->compression_type);
        return FALSE;
    }
    return TRUE;
}

static gboolean read_l1_table(Qcow2State *s, GError **error)
{
    guint64 need = size_to_l1(s, s->bs->size);

    if (s->l1_size > QCOW2_MAX_L1_BYTES / 8) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: header field l1_size is %u; the L1 table may not exceed %u bytes",
                    s->bs->filename, s->l1_size, QCOW2_MAX_L1_BYTES);
        return FALSE;
    }
    if (!q2_validate_table(s, s->l1_table_offset, s->l1_size, 8, QCOW2_MAX_L1_BYTES,
                           "L1 table (header field l1_table_offset)", error))
        return FALSE;
    if (s->l1_size < need) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: header field l1_size is %u; the disk size needs at least %" G_GUINT64_FORMAT,
                    s->bs->filename, s->l1_size, need);
        return FALSE;
    }
    s->l1_vm_state_index = (guint32)need;
    s->l1_table = g_new0(guint64, s->l1_size ? s->l1_size : 1);
    if (s->l1_size && !q2_file_pread(s, s->l1_table_offset, (guint64)s->l1_size * 8, s->l1_table,
                                     "L1 table", error))
        return FALSE;
    for (guint32 i = 0; i < s->l1_size; i++)
        s->l1_table[i] = GUINT64_FROM_BE(s->l1_table[i]);
    return TRUE;
}

static gboolean read_backing_name(Qcow2State *s, const guint8 *h, GError **error)
{
    guint64 off = get_be64(h + 8);
    guint32 len = get_be32(h + 16);

    if (!off)
        return TRUE;
    if (len > QCOW2_MAX_BACKING_NAME || off + len > s->cluster_size) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: backing file name (header fields backing_file_offset/size 0x%"
                    G_GINT64_MODIFIER "x/%u) is too long or outside the first cluster",
                    s->bs->filename, off, len);
        return FALSE;
    }
    s->image_backing_file = g_malloc0(len + 1);
    if (!q2_file_pread(s, off, len, s->image_backing_file, "backing file name", error))
        return FALSE;
    if (strlen(s->image_backing_file) != len) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: backing file name contains a NUL byte",
                    s->bs->filename);
        return FALSE;
    }
    return TRUE;
}

/* Lazy refcounts left the image dirty: rebuild the refcounts. */
static gboolean repair_dirty(Qcow2State *s, GError **error)
{
    VmmCheckResult res;

    memset(&res, 0, sizeof(res));
    if (!q2_check(s, &res, VMM_CHECK_FIX_ERRORS | VMM_CHECK_FIX_LEAKS, error)) {
        g_prefix_error(error, "%s: could not repair dirty image: ", s->bs->filename);
        return FALSE;
    }
    if (res.corruptions || res.check_errors) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: could not repair dirty image: %" G_GUINT64_FORMAT " corruptions remain",
                    s->bs->filename, res.corruptions);
        return FALSE;
    }
    s->incompatible &= ~(guint64)QCOW2_INCOMPAT_DIRTY;
    if (!q2_update_header(s, error) || !q2_file_flush(s, error))
        return FALSE;
    return TRUE;
}

static gboolean qcow2_do_open(Qcow2State *s, JsonObject *o, int flags, GError **error)
{
    VmmBlockDev *bs = s->bs;
    guint64 fsize = vmm_block_size(bs->file);
    gsize hlen = (gsize)MIN(fsize, 1u << QCOW2_MAX_CLUSTER_BITS);
    g_autofree guint8 *h = g_malloc0(MAX(hlen, QCOW2_HEADER_SIZE));
    gboolean rw = (flags & VMM_BDRV_O_RDWR) != 0;

    s->read_only = !rw;
    if (hlen && !vmm_block_pread(bs->file, 0, hlen, h, error))
        return FALSE;
    if (!parse_header(s, h, hlen, error))
        return FALSE;
    if (hlen > s->cluster_size)
        hlen = s->cluster_size;
    if (!read_extensions(s, h, hlen, s->header_length,
                         get_be64(h + 8) ? MIN(get_be64(h + 8), hlen) : hlen, error))
        return FALSE;
    if (!refuse_unknown_incompat(s, error) || !check_compression_type(s, error))
        return FALSE;
    if ((s->incompatible & QCOW2_INCOMPAT_CORRUPT) && rw && !(flags & VMM_BDRV_O_CHECK)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PERMISSION,
                    "%s: image is corrupt; cannot be opened read/write", bs->filename);
        return FALSE;
    }
    if (!read_backing_name(s, h, error))
        return FALSE;
    if (!open_options(s, o, error))
        return FALSE;
    if (!q2_refcount_init(s, error) || !read_l1_table(s, error) || !q2_read_snapshots(s, error))
        return FALSE;
    if (!open_data_file(s, o, flags, error))
        return FALSE;
    if (s->image_backing_file && q2_data_file_is_raw(s)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: a backing file and a raw external data file (data-file-raw) cannot go together",
                    bs->filename);
        return FALSE;
    }

    g_free(bs->backing_file);
    g_free(bs->backing_format);
    bs->backing_file = g_strdup(s->image_backing_file);
    bs->backing_format = g_strdup(s->image_backing_format);

    if (rw && !(flags & VMM_BDRV_O_INACTIVE)) {
        if ((s->incompatible & QCOW2_INCOMPAT_DIRTY) && !(flags & VMM_BDRV_O_CHECK) &&
            !repair_dirty(s, error))
            return FALSE;
        /* A writer that does not maintain what an autoclear bit vouches for
         * (bitmaps, unknown features) clears the bit first. */
        guint64 keep = s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW;
        if (keep != s->autoclear) {
            s->autoclear = keep;
            if (!q2_update_header(s, error) || !q2_file_flush(s, error))
                return FALSE;
        }
    }
    return TRUE;
}

static gboolean qcow2_open(VmmBlockDev *bs, JsonObject *options, int flags, GError **error)
{
    Qcow2State *s = g_new0(Qcow2State, 1);

    g_mutex_init(&s->lock);
    g_cond_init(&s->alloc_cond);
    s->bs = bs;
    s->unknown_exts = g_ptr_array_new_with_free_func(free_ext);
    s->inflight = g_ptr_array_new();
    if (!bs->file) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: qcow2 needs a file node", bs->filename);
        qcow2_free_state(s);
        return FALSE;
    }
    bs->opaque = s;
    g_mutex_lock(&s->lock);
    gboolean ok = qcow2_do_open(s, options, flags, error);
    g_mutex_unlock(&s->lock);
    if (!ok) {
        bs->opaque = NULL;
        qcow2_free_state(s);
        return FALSE;
    }
    return TRUE;
}

static void qcow2_close(VmmBlockDev *bs)
{
    Qcow2State *s = bs->opaque;
    g_autoptr(GError) err = NULL;

    if (!s)
        return;
    g_mutex_lock(&s->lock);
    if (!s->read_only) {
        if (!q2_flush_metadata(s, &err) || (s->dirty_marked && !q2_mark_clean(s, &err)))
            vmm_warn("%s: %s", bs->filename, err->message);
    }
    g_mutex_unlock(&s->lock);
    qcow2_free_state(s);
    bs->opaque = NULL;
}

static int qcow2_probe(const guint8 *buf, gsize len, const char *filename)
{
    if (len >= 8 && get_be32(buf) == QCOW_MAGIC && (get_be32(buf + 4) == 2 || get_be32(buf + 4) == 3))
        return 100;
    return 0;
}

/* ---- requests ---- */

static gboolean check_writable(Qcow2State *s, GError **error)
{
    if (s->read_only) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PERMISSION, "%s: %s", s->bs->filename,
                    s->corrupt_signalled ? "image was marked corrupt; further writes are refused"
                                         : "image is opened read-only");
        return FALSE;
    }
    return TRUE;
}

static gboolean qcow2_pread(VmmBlockDev *bs, guint64 offset, guint64 bytes, void *buf, int flags,
                            GError **error)
{
    return q2_preadv(bs->opaque, offset, bytes, buf, error);
}

static gboolean qcow2_pwrite(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf, int flags,
                             GError **error)
{
    Qcow2State *s = bs->opaque;
    return check_writable(s, error) && q2_pwritev(s, offset, bytes, buf, flags, error);
}

static gboolean qcow2_pwrite_zeroes(VmmBlockDev *bs, guint64 offset, guint64 bytes, int flags,
                                    GError **error)
{
    Qcow2State *s = bs->opaque;
    return check_writable(s, error) && q2_pwrite_zeroes(s, offset, bytes, flags, error);
}

static gboolean qcow2_pwrite_compressed(VmmBlockDev *bs, guint64 offset, guint64 bytes,
                                        const void *buf, GError **error)
{
    Qcow2State *s = bs->opaque;
    return check_writable(s, error) && q2_pwrite_compressed(s, offset, bytes, buf, error);
}

static gssize qcow2_compress_cluster(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf,
                                     void *out, gsize out_len, GError **error)
{
    return q2_compress_cluster(bs->opaque, offset, bytes, buf, out, out_len, error);
}

static gboolean qcow2_pwrite_precompressed(VmmBlockDev *bs, guint64 offset, guint64 bytes,
                                           const void *cdata, gsize clen, GError **error)
{
    Qcow2State *s = bs->opaque;
    return check_writable(s, error) && q2_write_compressed(s, offset, bytes, cdata, clen, error);
}

static gboolean qcow2_allocate(VmmBlockDev *bs, guint64 offset, guint64 bytes, GError **error)
{
    Qcow2State *s = bs->opaque;
    return check_writable(s, error) && q2_allocate(s, offset, bytes, error);
}

static gboolean qcow2_pdiscard(VmmBlockDev *bs, guint64 offset, guint64 bytes, GError **error)
{
    Qcow2State *s = bs->opaque;
    return check_writable(s, error) && q2_pdiscard(s, offset, bytes, FALSE, error);
}

/* Full discard: the L2 entries go, so the clusters read from the backing
 * chain again (QEMU's qcow2_make_empty). */
static gboolean qcow2_make_empty(VmmBlockDev *bs, GError **error)
{
    Qcow2State *s = bs->opaque;
    return check_writable(s, error) && q2_pdiscard(s, 0, bs->size, TRUE, error);
}

static gboolean qcow2_flush(VmmBlockDev *bs, GError **error)
{
    Qcow2State *s = bs->opaque;
    gboolean ok = TRUE;

    if (s->read_only)
        return TRUE;
    g_mutex_lock(&s->lock);
    ok = q2_flush_metadata(s, error);
    g_mutex_unlock(&s->lock);
    return ok;
}

static int qcow2_block_status(VmmBlockDev *bs, guint64 offset, guint64 bytes, guint64 *pnum,
                              guint64 *map, VmmBlockDev **file, GError **error)
{
    return q2_block_status(bs->opaque, offset, bytes, pnum, map, file, error);
}

/* ---- truncate ---- */

static gboolean write_size(Qcow2State *s, guint64 size, GError **error)
{
    guint8 b[8];

    put_be64(b, size);
    return q2_file_pwrite(s, 24, 8, b, error) && q2_file_flush(s, error);
}

static gboolean shrink(Qcow2State *s, guint64 size, GError **error)
{
    guint64 old = s->bs->size, new_l1 = size_to_l1(s, size), end;

    if (s->nb_snapshots) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%s: can't shrink an image which has snapshots", s->bs->filename);
        return FALSE;
    }
    g_mutex_unlock(&s->lock);
    gboolean ok = q2_pdiscard(s, (size + s->cluster_size - 1) & ~(s->cluster_size - 1),
                              old - MIN(old, (size + s->cluster_size - 1) & ~(s->cluster_size - 1)),
                              TRUE, error);
    g_mutex_lock(&s->lock);
    if (!ok)
        return FALSE;
    /* L2 tables past the new end go; the L1 keeps its size. */
    for (guint64 i = new_l1; i < s->l1_size; i++) {
        guint64 l2 = s->l1_table[i] & L1E_OFFSET_MASK;
        if (!l2)
            continue;
        s->l1_table[i] = 0;
        if (!q2_write_l1_entry(s, i, error) ||
            !q2_free_clusters(s, l2, s->cluster_size, QCOW2_DISCARD_OTHER, error))
            return FALSE;
    }
    if (!write_size(s, size, error) || !q2_flush_metadata(s, error))
        return FALSE;
    s->bs->size = size;
    if (!q2_refcount_end(s, &end, error))
        return FALSE;
    if (!q2_has_data_file(s) && (end << s->cluster_bits) < vmm_block_size(s->bs->file))
        vmm_block_truncate(s->bs->file, end << s->cluster_bits, FALSE, VMM_PREALLOC_OFF, TRUE, NULL);
    if (q2_has_data_file(s) && q2_data_file_is_raw(s))
        return vmm_block_truncate(s->data_file, size, FALSE, VMM_PREALLOC_OFF, TRUE, error);
    return TRUE;
}

static gboolean do_truncate(Qcow2State *s, guint64 size, VmmPrealloc prealloc, gboolean shrink_allowed,
                            GError **error)
{
    guint64 old = s->bs->size;

    if (size & 511) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: the image size must be a multiple of 512 bytes", s->bs->filename);
        return FALSE;
    }
    if (s->nb_bitmaps) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%s: cannot resize qcow2 with persistent bitmaps", s->bs->filename);
        return FALSE;
    }
    if (size < old) {
        if (!shrink_allowed) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: shrinking needs shrink_allowed (--shrink)", s->bs->filename);
            return FALSE;
        }
        if (prealloc != VMM_PREALLOC_OFF) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: preallocation can't be used for shrinking an image", s->bs->filename);
            return FALSE;
        }
        return shrink(s, size, error);
    }
    if (!q2_grow_l1_table(s, size_to_l1(s, size), TRUE, error))
        return FALSE;
    if (q2_has_data_file(s) && vmm_block_size(s->data_file) < size &&
        !vmm_block_truncate(s->data_file, size, FALSE,
                            prealloc == VMM_PREALLOC_METADATA ? VMM_PREALLOC_OFF : prealloc, FALSE, error))
        return FALSE;
    if (prealloc == VMM_PREALLOC_METADATA && size > old &&
        !q2_preallocate(s, old, size - old, prealloc, error))
        return FALSE;
    if ((prealloc == VMM_PREALLOC_FALLOC || prealloc == VMM_PREALLOC_FULL) && size > old &&
        !q2_preallocate_data(s, old, size, prealloc, error))
        return FALSE;
    if (!q2_flush_metadata(s, error) || !write_size(s, size, error))
        return FALSE;
    s->bs->size = size;
    s->l1_vm_state_index = (guint32)size_to_l1(s, size);
    return TRUE;
}

static gboolean qcow2_truncate(VmmBlockDev *bs, guint64 size, gboolean exact, VmmPrealloc prealloc,
                               gboolean shrink_allowed, GError **error)
{
    Qcow2State *s = bs->opaque;

    if (!check_writable(s, error))
        return FALSE;
    g_mutex_lock(&s->lock);
    gboolean ok = do_truncate(s, size, prealloc, shrink_allowed, error);
    g_mutex_unlock(&s->lock);
    return ok;
}

/* ---- create ---- */

typedef struct {
    guint64 size, cluster_size, refcount_bits;
    int version, compression_type;
    gboolean lazy, extended_l2, data_file_raw;
    VmmPrealloc prealloc;
    const char *backing_file, *backing_fmt, *data_file;
} CreateOpts;

static gboolean parse_create_opts(const char *fn, JsonObject *o, CreateOpts *c, GError **error)
{
    const char *compat = opt_str(o, "compat");
    const char *ct = opt_str(o, "compression_type");
    const char *pre = opt_str(o, "preallocation");
    const char *enc = opt_str(o, "encrypt.format");
    guint64 v;

    memset(c, 0, sizeof(*c));
    c->version = 3;
    if (!opt_size(NULL, fn, o, "size", 0, &c->size, NULL, error) ||
        !opt_size(NULL, fn, o, "cluster_size", 65536, &c->cluster_size, NULL, error) ||
        !opt_size(NULL, fn, o, "refcount_bits", 16, &c->refcount_bits, NULL, error))
        return FALSE;
    if (compat) {
        if (!strcmp(compat, "0.10") || !strcmp(compat, "v2"))
            c->version = 2;
        else if (!strcmp(compat, "1.1") || !strcmp(compat, "v3"))
            c->version = 3;
        else {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: invalid compatibility level: '%s'", fn, compat);
            return FALSE;
        }
    }
    if (vmm_opts_get_bool(o, "encryption", FALSE) || enc) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%s: qcow2 encryption (encrypt.format=%s) is not supported yet", fn, enc ? enc : "aes");
        return FALSE;
    }
    if (c->cluster_size < 512 || c->cluster_size > (2u << 20) || (c->cluster_size & (c->cluster_size - 1))) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: cluster size must be a power of two between 512 and 2048k", fn);
        return FALSE;
    }
    v = c->refcount_bits;
    if (v == 0 || v > 64 || (v & (v - 1))) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: refcount width must be a power of two and may not exceed 64 bits", fn);
        return FALSE;
    }
    if (c->version < 3 && v != 16) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: different refcount widths than 16 bits "
                    "require compatibility level 1.1 or above (use compat=1.1 or greater)", fn);
        return FALSE;
    }
    c->lazy = vmm_opts_get_bool(o, "lazy_refcounts", FALSE);
    if (c->lazy && c->version < 3) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: lazy refcounts only supported with "
                    "compatibility level 1.1 and above (use compat=1.1 or greater)", fn);
        return FALSE;
    }
    c->extended_l2 = vmm_opts_get_bool(o, "extended_l2", FALSE);
    if (c->extended_l2 && c->version < 3) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: extended L2 entries are only supported "
                    "with compatibility level 1.1 and above (use compat=1.1 or greater)", fn);
        return FALSE;
    }
    if (c->extended_l2 && c->cluster_size < 16384) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: extended L2 entries are only supported "
                    "with cluster sizes of at least 16384 bytes", fn);
        return FALSE;
    }
    c->compression_type = QCOW2_COMPRESSION_ZLIB;
    if (ct && !strcmp(ct, "zstd"))
        c->compression_type = QCOW2_COMPRESSION_ZSTD;
    else if (ct && strcmp(ct, "zlib")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: invalid compression_type '%s' (zlib or zstd)", fn, ct);
        return FALSE;
    }
    if (c->compression_type != QCOW2_COMPRESSION_ZLIB && c->version < 3) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: non-zlib compression type is only supported "
                    "with compatibility level 1.1 and above (use compat=1.1 or greater)", fn);
        return FALSE;
    }
    if (!vmm_parse_prealloc(pre ? pre : "off", &c->prealloc, error)) {
        g_prefix_error(error, "%s: ", fn);
        return FALSE;
    }
    c->backing_file = opt_str(o, "backing_file");
    c->backing_fmt = opt_str(o, "backing_fmt");
    c->data_file = opt_str(o, "data_file");
    c->data_file_raw = vmm_opts_get_bool(o, "data_file_raw", FALSE);
    if (c->backing_fmt && !c->backing_file) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: backing format cannot be used without backing file", fn);
        return FALSE;
    }
    if (c->data_file && c->version < 3) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: external data files are only supported "
                    "with compatibility level 1.1 and above", fn);
        return FALSE;
    }
    if (c->data_file_raw && !c->data_file) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: data-file-raw requires data-file", fn);
        return FALSE;
    }
    if (c->data_file_raw && c->backing_file) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: backing file and data-file-raw cannot be used at the same time", fn);
        return FALSE;
    }
    if (c->data_file_raw && c->prealloc == VMM_PREALLOC_OFF)
        c->prealloc = VMM_PREALLOC_METADATA; /* the raw file must be readable as it is */
    if (c->backing_file && c->prealloc != VMM_PREALLOC_OFF && !c->extended_l2) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: backing file and preallocation can only "
                    "be used at the same time if extended_l2 is on", fn);
        return FALSE;
    }
    /* qemu-img create rounds the size up to whole sectors before the driver
     * sees it ("1000" makes a 1024-byte disk). */
    if (c->size > G_MAXUINT64 - 511) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG, "%s: image size too large", fn);
        return FALSE;
    }
    c->size = (c->size + 511) & ~511ull;
    return TRUE;
}

/* The minimal image QEMU starts from: header, refcount table, one refcount
 * block counting those three clusters. */
static gboolean write_empty_image(VmmBlockDev *file, const CreateOpts *c, GError **error)
{
    guint64 cs = c->cluster_size;
    int order = __builtin_ctzll(c->refcount_bits);
    g_autofree guint8 *buf = g_malloc0(3 * cs);

    put_be32(buf, QCOW_MAGIC);
    put_be32(buf + 4, (guint32)c->version);
    put_be32(buf + 20, (guint32)__builtin_ctzll(cs));
    put_be64(buf + 48, cs);
    put_be32(buf + 56, 1);
    if (c->version >= 3) {
        guint64 incompat = 0;
        if (c->extended_l2)
            incompat |= QCOW2_INCOMPAT_EXTL2;
        if (c->compression_type)
            incompat |= QCOW2_INCOMPAT_COMPRESSION;
        if (c->data_file)
            incompat |= QCOW2_INCOMPAT_DATA_FILE;
        put_be64(buf + 72, incompat);
        put_be64(buf + 80, c->lazy ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0);
        put_be64(buf + 88, c->data_file_raw ? QCOW2_AUTOCLEAR_DATA_FILE_RAW : 0);
        put_be32(buf + 96, (guint32)order);
        put_be32(buf + 100, QCOW2_HEADER_SIZE);
        buf[104] = (guint8)c->compression_type;
    }
    put_be64(buf + cs, 2 * cs);
    for (int i = 0; i < 3; i++)
        q2_refblock_set(order, buf + 2 * cs, (guint64)i, 1);
    return vmm_block_pwrite(file, 0, 3 * cs, buf, 0, error);
}

extern const VmmBlockDriver vmm_qcow2_driver;

static gboolean qcow2_create(const char *filename, VmmBlockDev *file, JsonObject *opts, GError **error)
{
    CreateOpts c;
    VmmBlockDev tmp;
    g_autoptr(JsonObject) oo = json_object_new();
    gboolean ok;

    if (!file) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: qcow2 needs a file node", filename);
        return FALSE;
    }
    if (!parse_create_opts(filename, opts, &c, error))
        return FALSE;
    if (c.data_file) {
        g_autoptr(JsonObject) dopts = json_object_new();
        json_object_set_int_member(dopts, "size", 0);
        if (vmm_opts_has(opts, "nocow"))
            json_object_set_boolean_member(dopts, "nocow", vmm_opts_get_bool(opts, "nocow", FALSE));
        if (!vmm_block_create(c.data_file, "file", dopts, error)) {
            g_prefix_error(error, "%s: creating the external data file: ", filename);
            return FALSE;
        }
        json_object_set_string_member(oo, "data-file", c.data_file);
    }
    if (!write_empty_image(file, &c, error))
        return FALSE;

    memset(&tmp, 0, sizeof(tmp));
    tmp.drv = &vmm_qcow2_driver;
    tmp.filename = (char *)filename;
    tmp.file = file;
    tmp.refcnt = 1;
    if (!qcow2_open(&tmp, oo, VMM_BDRV_O_RDWR | VMM_BDRV_O_NO_BACKING, error))
        return FALSE;
    Qcow2State *s = tmp.opaque;
    g_mutex_lock(&s->lock);
    s->image_backing_file = g_strdup(c.backing_file);
    s->image_backing_format = g_strdup(c.backing_fmt);
    s->image_data_file = g_strdup(c.data_file);
    ok = q2_update_header(s, error) && do_truncate(s, c.size, c.prealloc, FALSE, error) &&
         q2_flush_metadata(s, error);
    g_mutex_unlock(&s->lock);
    qcow2_close(&tmp);
    g_free(tmp.backing_file);
    g_free(tmp.backing_format);
    return ok;
}

/* ---- info, measure, backing file ---- */

static gint64 qcow2_allocated_file_size(VmmBlockDev *bs)
{
    Qcow2State *s = bs->opaque;
    gint64 n = -1;

    if (bs->file && bs->file->drv && bs->file->drv->allocated_file_size)
        n = bs->file->drv->allocated_file_size(bs->file);
    if (n >= 0 && s && s->data_file && s->data_file != bs->file && s->data_file->drv->allocated_file_size) {
        gint64 d = s->data_file->drv->allocated_file_size(s->data_file);
        if (d >= 0)
            n += d;
    }
    return n;
}

static JsonObject *qcow2_info_specific(VmmBlockDev *bs)
{
    Qcow2State *s = bs->opaque;
    JsonObject *top = json_object_new();
    JsonObject *d = json_object_new();

    json_object_set_string_member(top, "type", "qcow2");
    json_object_set_string_member(d, "compat", s->version >= 3 ? "1.1" : "0.10");
    json_object_set_string_member(d, "compression-type",
                                  s->compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib");
    if (s->version >= 3) {
        json_object_set_boolean_member(d, "lazy-refcounts", (s->compatible & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0);
        json_object_set_int_member(d, "refcount-bits", 1 << s->refcount_order);
        if (s->image_data_file)
            json_object_set_string_member(d, "data-file", s->image_data_file);
        if (q2_has_data_file(s))
            json_object_set_boolean_member(d, "data-file-raw", q2_data_file_is_raw(s));
        json_object_set_boolean_member(d, "corrupt", (s->incompatible & QCOW2_INCOMPAT_CORRUPT) != 0);
        json_object_set_boolean_member(d, "extended-l2", s->extended_l2);
    } else {
        json_object_set_int_member(d, "refcount-bits", 1 << s->refcount_order);
    }
    json_object_set_object_member(top, "data", d);
    return top;
}

static gboolean qcow2_measure(JsonObject *opts, guint64 size, guint64 allocated, guint64 *required,
                              guint64 *fully_allocated, GError **error)
{
    CreateOpts c;

    if (!parse_create_opts("measure", opts, &c, error))
        return FALSE;
    if (opts && vmm_opts_has(opts, "size"))
        size = c.size;
    guint64 cs = c.cluster_size;
    guint64 l2e = c.extended_l2 ? 16 : 8;
    guint64 aligned = (size + cs - 1) & ~(cs - 1);
    guint64 meta = cs, nl2e, nl1e;
    int order = __builtin_ctzll(c.refcount_bits);

    nl2e = aligned / cs;
    nl2e = (nl2e + cs / l2e - 1) / (cs / l2e) * (cs / l2e);
    meta += nl2e * l2e;
    nl1e = nl2e * l2e / cs;
    nl1e = (nl1e + cs / 8 - 1) / (cs / 8) * (cs / 8);
    meta += nl1e * 8;
    meta += q2_refcount_metadata_size((meta + aligned) / cs, cs, order, NULL);
    *fully_allocated = meta + aligned;
    guint64 alloc = MIN((allocated + cs - 1) & ~(cs - 1), aligned);
    *required = *fully_allocated - aligned + alloc;
    return TRUE;
}

static gboolean qcow2_change_backing_file(VmmBlockDev *bs, const char *backing_file,
                                          const char *backing_fmt, GError **error)
{
    Qcow2State *s = bs->opaque;
    gboolean ok;

    if (!check_writable(s, error))
        return FALSE;
    if (backing_file && q2_data_file_is_raw(s)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: cannot set a backing file on an image with a raw external data file", bs->filename);
        return FALSE;
    }
    if (backing_file && strlen(backing_file) > QCOW2_MAX_BACKING_NAME) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: backing file name too long", bs->filename);
        return FALSE;
    }
    g_mutex_lock(&s->lock);
    char *old_file = s->image_backing_file, *old_fmt = s->image_backing_format;
    s->image_backing_file = backing_file && *backing_file ? g_strdup(backing_file) : NULL;
    s->image_backing_format = s->image_backing_file && backing_fmt ? g_strdup(backing_fmt) : NULL;
    ok = q2_update_header(s, error) && q2_file_flush(s, error);
    if (ok) {
        g_free(old_file);
        g_free(old_fmt);
        g_free(bs->backing_file);
        g_free(bs->backing_format);
        bs->backing_file = g_strdup(s->image_backing_file);
        bs->backing_format = g_strdup(s->image_backing_format);
    } else {
        g_free(s->image_backing_file);
        g_free(s->image_backing_format);
        s->image_backing_file = old_file;
        s->image_backing_format = old_fmt;
    }
    g_mutex_unlock(&s->lock);
    return ok;
}

static gboolean qcow2_has_zero_init(VmmBlockDev *bs)
{
    Qcow2State *s = bs->opaque;

    if (s && q2_has_data_file(s) && s->data_file->drv && s->data_file->drv->has_zero_init)
        return s->data_file->drv->has_zero_init(s->data_file);
    return TRUE;
}

/* ---- check, snapshots ---- */

static gboolean qcow2_check(VmmBlockDev *bs, VmmCheckResult *res, int fix, GError **error)
{
    Qcow2State *s = bs->opaque;

    if (fix && s->read_only) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PERMISSION,
                    "%s: repairing needs the image opened read-write", bs->filename);
        return FALSE;
    }
    g_mutex_lock(&s->lock);
    gboolean ok = q2_check(s, res, fix, error);
    if (ok && fix && (s->incompatible & QCOW2_INCOMPAT_DIRTY) && !res->corruptions && !res->check_errors) {
        s->incompatible &= ~(guint64)QCOW2_INCOMPAT_DIRTY;
        ok = q2_update_header(s, error) && q2_file_flush(s, error);
    }
    g_mutex_unlock(&s->lock);
    return ok;
}

static gboolean qcow2_snapshot_create(VmmBlockDev *bs, const VmmSnapshotInfo *sn, GError **error)
{
    Qcow2State *s = bs->opaque;
    if (!check_writable(s, error))
        return FALSE;
    g_mutex_lock(&s->lock);
    gboolean ok = q2_snapshot_create(s, sn, error);
    g_mutex_unlock(&s->lock);
    return ok;
}

static gboolean qcow2_snapshot_goto(VmmBlockDev *bs, const char *id, GError **error)
{
    Qcow2State *s = bs->opaque;
    if (!check_writable(s, error))
        return FALSE;
    g_mutex_lock(&s->lock);
    gboolean ok = q2_snapshot_goto(s, id, error);
    g_mutex_unlock(&s->lock);
    return ok;
}

static gboolean qcow2_snapshot_delete(VmmBlockDev *bs, const char *id, GError **error)
{
    Qcow2State *s = bs->opaque;
    if (!check_writable(s, error))
        return FALSE;
    g_mutex_lock(&s->lock);
    gboolean ok = q2_snapshot_delete(s, id, error);
    g_mutex_unlock(&s->lock);
    return ok;
}

static GPtrArray *qcow2_snapshot_list(VmmBlockDev *bs, GError **error)
{
    Qcow2State *s = bs->opaque;
    g_mutex_lock(&s->lock);
    GPtrArray *a = q2_snapshot_list(s);
    g_mutex_unlock(&s->lock);
    return a;
}

/* ---- amend ---- */

static gboolean amend_refcount_bits(Qcow2State *s, int order, GError **error)
{
    g_autofree guint64 *rc = NULL;
    guint64 nb = 0;
    VmmCheckResult res;

    memset(&res, 0, sizeof(res));
    /* Deferred frees first: the computed refcounts must be the final ones. */
    if (!q2_flush_metadata(s, error) || !q2_calculate_refcounts(s, &res, FALSE, &rc, &nb, error))
        return FALSE;
    if (res.corruptions || res.check_errors) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: the image has metadata errors; run check -r all first", s->bs->filename);
        return FALSE;
    }
    return q2_rebuild_refcount_structure(s, rc, nb, order, error);
}

static gboolean do_amend(Qcow2State *s, JsonObject *opts, gboolean force, GError **error)
{
    const char *fn = s->bs->filename;
    const char *compat = opt_str(opts, "compat");
    int version = s->version;
    static const char *const fixed[] = { "cluster_size", "extended_l2", "compression_type", "encrypt",
                                         "encryption", "preallocation", "nocow" };

    for (gsize i = 0; i < G_N_ELEMENTS(fixed); i++) {
        if (json_object_has_member(opts, fixed[i])) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                        "%s: changing the option '%s' is not supported", fn, fixed[i]);
            return FALSE;
        }
    }
    if (compat) {
        if (!strcmp(compat, "0.10") || !strcmp(compat, "v2"))
            version = 2;
        else if (!strcmp(compat, "1.1") || !strcmp(compat, "v3"))
            version = 3;
        else {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: unknown compatibility level %s", fn, compat);
            return FALSE;
        }
    }
    gboolean lazy = vmm_opts_get_bool(opts, "lazy_refcounts", (s->compatible & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0);
    guint64 rbits = 1ull << s->refcount_order;
    if (!opt_size(s, fn, opts, "refcount_bits", rbits, &rbits, NULL, error))
        return FALSE;
    if (rbits == 0 || rbits > 64 || (rbits & (rbits - 1))) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: refcount width must be a power of two and may not exceed 64 bits", fn);
        return FALSE;
    }
    if (version < 3) {
        if (lazy && vmm_opts_has(opts, "lazy_refcounts")) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: lazy refcounts only supported with "
                        "compatibility level 1.1 and above (use compat=1.1 or greater)", fn);
            return FALSE;
        }
        if (rbits != 16) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: different refcount widths than 16 bits "
                        "require compatibility level 1.1 or above (use compat=1.1 or greater)", fn);
            return FALSE;
        }
        if (s->extended_l2 || q2_has_data_file(s) || s->compression_type || s->nb_bitmaps) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED, "%s: cannot downgrade an image with "
                        "extended L2 entries, a data file, zstd compression or bitmaps to compat=0.10", fn);
            return FALSE;
        }
        lazy = FALSE;
    }
    const char *data_file = opt_str(opts, "data_file");
    if (data_file && !q2_has_data_file(s)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%s: data-file can only be set for images that use an external data file", fn);
        return FALSE;
    }
    if (vmm_opts_has(opts, "data_file_raw")) {
        gboolean raw = vmm_opts_get_bool(opts, "data_file_raw", FALSE);
        if (raw && !q2_has_data_file(s)) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: data-file-raw requires data-file", fn);
            return FALSE;
        }
        if (!raw && q2_data_file_is_raw(s)) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                        "%s: data-file-raw cannot be turned off once set", fn);
            return FALSE;
        }
        if (raw)
            s->autoclear |= QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    }
    if (data_file) {
        g_free(s->image_data_file);
        s->image_data_file = g_strdup(data_file);
    }
    if (vmm_opts_has(opts, "backing_file") || vmm_opts_has(opts, "backing_fmt")) {
        const char *bf = opt_str(opts, "backing_file");
        const char *bfmt = opt_str(opts, "backing_fmt");
        if (!bf)
            bf = s->image_backing_file;
        g_free(s->image_backing_file);
        g_free(s->image_backing_format);
        s->image_backing_file = bf && *bf ? g_strdup(bf) : NULL;
        s->image_backing_format = s->image_backing_file && bfmt ? g_strdup(bfmt) : NULL;
    }
    if (version > s->version) {
        s->version = version;
        s->header_length = QCOW2_HEADER_SIZE;
    }
    if (rbits != (1ull << s->refcount_order) &&
        !amend_refcount_bits(s, __builtin_ctzll(rbits), error))
        return FALSE;
    if (lazy) {
        s->compatible |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    } else if (s->compatible & QCOW2_COMPAT_LAZY_REFCOUNTS) {
        /* Refcounts must be exact before the bit goes. */
        if (!q2_mark_clean(s, error))
            return FALSE;
        s->compatible &= ~(guint64)QCOW2_COMPAT_LAZY_REFCOUNTS;
    }
    s->lazy_refcounts = lazy;
    if (version < s->version) {
        if (!q2_mark_clean(s, error) || !q2_expand_zero_clusters(s, error))
            return FALSE;
        s->version = version;
        s->header_length = QCOW2_V2_HEADER_SIZE;
        s->incompatible = s->compatible = s->autoclear = 0;
        g_free(s->header_tail);
        s->header_tail = NULL;
        s->header_tail_len = 0;
    }
    if (!q2_flush_metadata(s, error) || !q2_update_header(s, error) || !q2_file_flush(s, error))
        return FALSE;
    if (vmm_opts_has(opts, "size")) {
        guint64 size;
        if (!opt_size(s, fn, opts, "size", 0, &size, NULL, error))
            return FALSE;
        if (size != s->bs->size && !do_truncate(s, size, VMM_PREALLOC_OFF, force || size > s->bs->size, error))
            return FALSE;
    }
    (void)force;
    return TRUE;
}

static gboolean qcow2_amend(VmmBlockDev *bs, JsonObject *opts, gboolean force, GError **error)
{
    Qcow2State *s = bs->opaque;

    if (!check_writable(s, error))
        return FALSE;
    g_mutex_lock(&s->lock);
    gboolean ok = do_amend(s, opts, force, error);
    if (ok) {
        g_free(bs->backing_file);
        g_free(bs->backing_format);
        bs->backing_file = g_strdup(s->image_backing_file);
        bs->backing_format = g_strdup(s->image_backing_format);
    }
    g_mutex_unlock(&s->lock);
    return ok;
}

const VmmBlockDriver vmm_qcow2_driver = {
    .format_name = "qcow2",
    .create_opts = qcow2_create_opts,
    .open_opts = qcow2_open_opts,
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .create = qcow2_create,
    .pread = qcow2_pread,
    .pwrite = qcow2_pwrite,
    .pwrite_zeroes = qcow2_pwrite_zeroes,
    .pwrite_compressed = qcow2_pwrite_compressed,
    .compress_cluster = qcow2_compress_cluster,
    .pwrite_precompressed = qcow2_pwrite_precompressed,
    .allocate = qcow2_allocate,
    .pdiscard = qcow2_pdiscard,
    .make_empty = qcow2_make_empty,
    .flush = qcow2_flush,
    .block_status = qcow2_block_status,
    .truncate = qcow2_truncate,
    .allocated_file_size = qcow2_allocated_file_size,
    .info_specific = qcow2_info_specific,
    .check = qcow2_check,
    .snapshot_create = qcow2_snapshot_create,
    .snapshot_goto = qcow2_snapshot_goto,
    .snapshot_delete = qcow2_snapshot_delete,
    .snapshot_list = qcow2_snapshot_list,
    .amend = qcow2_amend,
    .measure = qcow2_measure,
    .change_backing_file = qcow2_change_backing_file,
    .has_zero_init = qcow2_has_zero_init,
};
