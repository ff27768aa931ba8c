/* qcow2 host cluster management: the two-level refcount structure with
 * entries of 1..64 bits, cluster allocation and freeing, and growth of the
 * refcount table. Every function runs with s->lock held. */
#include "blockd/qcow2.h"
#include "common/bytes.h"
#include "common/error.h"
#include <string.h>

guint64 q2_refblock_get(int order, const guint8 *block, guint64 idx)
{
    switch (order) {
    case 0: case 1: case 2: {
        int per_byte_shift = 3 - order;
        guint8 byte = block[idx >> per_byte_shift];
        int shift = (int)(idx & ((1u << per_byte_shift) - 1)) << order;
        return (byte >> shift) & ((1u << (1 << order)) - 1);
    }
    case 3:
        return block[idx];
    case 4:
        return ((guint64)block[idx * 2] << 8) | block[idx * 2 + 1];
    case 5: {
        const guint8 *p = block + idx * 4;
        return ((guint64)p[0] << 24) | ((guint64)p[1] << 16) | ((guint64)p[2] << 8) | p[3];
    }
    default:
        return get_be64(block + idx * 8);
    }
}

void q2_refblock_set(int order, guint8 *block, guint64 idx, guint64 value)
{
    switch (order) {
    case 0: case 1: case 2: {
        int per_byte_shift = 3 - order;
        guint8 *byte = &block[idx >> per_byte_shift];
        int shift = (int)(idx & ((1u << per_byte_shift) - 1)) << order;
        guint8 mask = (guint8)(((1u << (1 << order)) - 1) << shift);
        *byte = (guint8)((*byte & ~mask) | ((value << shift) & mask));
        break;
    }
    case 3:
        block[idx] = (guint8)value;
        break;
    case 4:
        block[idx * 2] = (guint8)(value >> 8);
        block[idx * 2 + 1] = (guint8)value;
        break;
    case 5: {
        guint8 *p = block + idx * 4;
        p[0] = (guint8)(value >> 24);
        p[1] = (guint8)(value >> 16);
        p[2] = (guint8)(value >> 8);
        p[3] = (guint8)value;
        break;
    }
    default:
        put_be64(block + idx * 8, value);
    }
}

gboolean q2_refcount_init(Qcow2State *s, GError **error)
{
    guint64 n = (guint64)s->refcount_table_clusters << s->cluster_bits;

    if (n > QCOW2_MAX_REFTABLE_BYTES) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: header field refcount_table_clusters is %u; the refcount table may not "
                    "exceed %u bytes", s->bs->filename, s->refcount_table_clusters,
                    QCOW2_MAX_REFTABLE_BYTES);
        return FALSE;
    }
    s->refcount_table_size = n / 8;
    if (!q2_validate_table(s, s->refcount_table_offset, s->refcount_table_size, 8,
                           QCOW2_MAX_REFTABLE_BYTES, "refcount table", error))
        return FALSE;
    s->refcount_table = g_new0(guint64, s->refcount_table_size ? s->refcount_table_size : 1);
    if (n && !q2_file_pread(s, s->refcount_table_offset, n, s->refcount_table, "refcount table",
                            error))
        return FALSE;
    for (guint64 i = 0; i < s->refcount_table_size; i++)
        s->refcount_table[i] = GUINT64_FROM_BE(s->refcount_table[i]);
    return TRUE;
}

/* The refcount block offset for refcount table index RT (0: none). */
static gboolean refblock_offset(Qcow2State *s, guint64 rt, guint64 *off, GError **error)
{
    guint64 e;

    *off = 0;
    if (rt >= s->refcount_table_size)
        return TRUE;
    e = s->refcount_table[rt] & REFT_OFFSET_MASK;
    if (e && q2_offset_into_cluster(s, e))
        return q2_signal_corruption(s, error, "refblock offset 0x%" G_GINT64_MODIFIER "x "
                                    "unaligned (reftable index 0x%" G_GINT64_MODIFIER "x)", e, rt);
    *off = e;
    return TRUE;
}

gboolean q2_get_refcount(Qcow2State *s, guint64 cluster_index, guint64 *refcount, GError **error)
{
    guint64 off;
    guint8 *block;

    *refcount = 0;
    if (!refblock_offset(s, cluster_index >> s->refblock_bits, &off, error))
        return FALSE;
    if (!off)
        return TRUE;
    if (!q2_cache_get(s, s->refcount_cache, off, &block, error))
        return FALSE;
    *refcount = q2_refblock_get(s->refcount_order, block,
                                cluster_index & ((1ull << s->refblock_bits) - 1));
    q2_cache_put(s->refcount_cache, block);
    return TRUE;
}

/* First run of N clusters with refcount 0 from free_cluster_index; nothing is
 * referenced yet, but free_cluster_index moves past the run. */
static gboolean alloc_clusters_noref(Qcow2State *s, guint64 n, guint64 *cluster, GError **error)
{
    guint64 start = s->free_cluster_index, i = start, run = 0;
    guint64 per_block = 1ull << s->refblock_bits;

    while (run < n) {
        guint64 rt = i >> s->refblock_bits, off;

        if (!refblock_offset(s, rt, &off, error))
            return FALSE;
        if (!off) {
            /* A whole block of free clusters. */
            guint64 block_end = (rt + 1) * per_block;
            run += block_end - i;
            i = block_end;
            continue;
        }
        guint8 *block;
        if (!q2_cache_get(s, s->refcount_cache, off, &block, error))
            return FALSE;
        for (; run < n && (i >> s->refblock_bits) == rt; i++) {
            if (q2_refblock_get(s->refcount_order, block, i & (per_block - 1)) == 0) {
                run++;
            } else {
                run = 0;
                start = i + 1;
            }
        }
        q2_cache_put(s->refcount_cache, block);
    }
    if (((start + n) << s->cluster_bits) > L2E_OFFSET_MASK || start + n < start) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG,
                    "%s: no room for another cluster (host offsets are limited to 64 PiB)",
                    s->bs->filename);
        return FALSE;
    }
    s->free_cluster_index = start + n;
    *cluster = start;
    return TRUE;
}

static gboolean write_reftable_entry(Qcow2State *s, guint64 rt, GError **error)
{
    guint8 buf[8];

    put_be64(buf, s->refcount_table[rt]);
    return q2_file_pwrite(s, s->refcount_table_offset + rt * 8, 8, buf, error);
}

/* A new, larger refcount table plus the refcount blocks that describe the
 * area holding them, placed past every cluster in use and past MIN_CLUSTER. */
static gboolean grow_refcount_table(Qcow2State *s, guint64 min_cluster, GError **error)
{
    guint64 per_block = 1ull << s->refblock_bits, cs = s->cluster_size;
    guint64 covered_end = s->refcount_table_size * per_block;
    guint64 area = MAX(MAX(covered_end, s->free_cluster_index), min_cluster + 1);
    guint64 entries = MAX(s->refcount_table_size + s->refcount_table_size / 2, cs / 8);
    guint64 nb_blocks = 1, table_clusters = 0, first_rt, last_rt;

    for (;;) {
        guint64 need;
        table_clusters = (entries * 8 + cs - 1) / cs;
        first_rt = area >> s->refblock_bits;
        last_rt = (area + nb_blocks + table_clusters - 1) >> s->refblock_bits;
        need = last_rt + 1 + (last_rt + 1) / 4;
        if (last_rt - first_rt + 1 == nb_blocks && entries >= last_rt + 1)
            break;
        nb_blocks = last_rt - first_rt + 1;
        if (entries < need)
            entries = need;
    }
    entries = table_clusters * cs / 8;
    if (table_clusters * cs > QCOW2_MAX_REFTABLE_BYTES) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG,
                    "%s: the refcount table would exceed %u bytes", s->bs->filename,
                    QCOW2_MAX_REFTABLE_BYTES);
        return FALSE;
    }

    guint64 total = nb_blocks + table_clusters;
    g_autofree guint8 *blocks = g_malloc0(nb_blocks * cs);
    for (guint64 c = area; c < area + total; c++)
        q2_refblock_set(s->refcount_order, blocks + ((c >> s->refblock_bits) - first_rt) * cs,
                        c & (per_block - 1), 1);
    g_autofree guint64 *table = g_new0(guint64, entries);
    g_autofree guint64 *table_be = g_new0(guint64, entries);
    memcpy(table, s->refcount_table, s->refcount_table_size * 8);
    for (guint64 b = 0; b < nb_blocks; b++)
        table[first_rt + b] = (area + b) << s->cluster_bits;
    for (guint64 i = 0; i < entries; i++)
        table_be[i] = GUINT64_TO_BE(table[i]);

    guint64 table_off = (area + nb_blocks) << s->cluster_bits;
    if (!q2_file_pwrite(s, area << s->cluster_bits, nb_blocks * cs, blocks, error) ||
        !q2_file_pwrite(s, table_off, table_clusters * cs, table_be, error) ||
        !q2_file_flush(s, error))
        return FALSE;

    guint8 hdr[12];
    guint32 clusters_be = GUINT32_TO_BE((guint32)table_clusters);
    put_be64(hdr, table_off);
    memcpy(hdr + 8, &clusters_be, 4);
    if (!q2_file_pwrite(s, 48, sizeof(hdr), hdr, error) || !q2_file_flush(s, error))
        return FALSE;

    guint64 old_off = s->refcount_table_offset;
    guint64 old_clusters = s->refcount_table_clusters;
    g_free(s->refcount_table);
    s->refcount_table = g_steal_pointer(&table);
    s->refcount_table_size = entries;
    s->refcount_table_offset = table_off;
    s->refcount_table_clusters = (guint32)table_clusters;
    if (s->free_cluster_index >= area && s->free_cluster_index < area + total)
        s->free_cluster_index = area + total;
    return q2_free_clusters(s, old_off, old_clusters * cs, QCOW2_DISCARD_OTHER, error);
}

/* The refcount block that holds CLUSTER's refcount, allocating one (and
 * growing the table) when there is none. */
static gboolean get_or_alloc_refblock(Qcow2State *s, guint64 cluster, guint64 *off, GError **error)
{
    for (;;) {
        guint64 rt = cluster >> s->refblock_bits, new_cluster;

        if (rt >= s->refcount_table_size) {
            if (!grow_refcount_table(s, cluster, error))
                return FALSE;
            continue;
        }
        if (!refblock_offset(s, rt, off, error))
            return FALSE;
        if (*off)
            return TRUE;

        if (!alloc_clusters_noref(s, 1, &new_cluster, error))
            return FALSE;
        guint64 new_rt = new_cluster >> s->refblock_bits;
        guint64 new_off = new_cluster << s->cluster_bits;
        guint8 *block;

        if (new_rt >= s->refcount_table_size) {
            if (!grow_refcount_table(s, new_cluster, error))
                return FALSE;
            continue;
        }
        if (new_rt != rt && !q2_update_refcount(s, new_off, 1, 1, QCOW2_DISCARD_NEVER, error))
            return FALSE;
        /* The recursion may have filled this very entry meanwhile. */
        if (!refblock_offset(s, rt, off, error))
            return FALSE;
        if (*off) {
            if (new_rt != rt)
                return q2_update_refcount(s, new_off, 1, -1, QCOW2_DISCARD_NEVER, error);
            return TRUE;
        }
        /* The block reaches the disk (with the refcounts that make it count)
         * before the table entry that names it. */
        if (!q2_cache_get_empty(s, s->refcount_cache, new_off, &block, error))
            return FALSE;
        memset(block, 0, s->cluster_size);
        if (new_rt == rt)
            q2_refblock_set(s->refcount_order, block, new_cluster & ((1ull << s->refblock_bits) - 1), 1);
        q2_cache_mark_dirty(s->refcount_cache, block);
        q2_cache_put(s->refcount_cache, block);
        if (!q2_cache_flush(s, s->refcount_cache, error))
            return FALSE;
        s->refcount_table[rt] = new_off;
        if (!write_reftable_entry(s, rt, error) || !q2_file_flush(s, error))
            return FALSE;
        *off = new_off;
        return TRUE;
    }
}

typedef struct {
    guint64 start, len;
} Range;

static void queue_discard(GArray *q, guint64 off, guint64 len)
{
    if (q->len) {
        Range *last = &g_array_index(q, Range, q->len - 1);
        if (last->start + last->len == off) {
            last->len += len;
            return;
        }
    }
    Range r = { off, len };
    g_array_append_val(q, r);
}

static gboolean discard_wanted(Qcow2State *s, Qcow2DiscardType type)
{
    switch (type) {
    case QCOW2_DISCARD_REQUEST: return s->pass_discard_request;
    case QCOW2_DISCARD_SNAPSHOT: return s->pass_discard_snapshot;
    case QCOW2_DISCARD_OTHER: return s->pass_discard_other;
    default: return FALSE;
    }
}

gboolean q2_update_refcount(Qcow2State *s, guint64 offset, guint64 len, gint64 addend,
                            Qcow2DiscardType type, GError **error)
{
    if (len == 0 || addend == 0)
        return TRUE;
    if (addend < 0 &&
        !q2_cache_set_dependency(s, s->refcount_cache, s->l2_cache, error))
        return FALSE;

    g_autoptr(GArray) discards = g_array_new(FALSE, FALSE, sizeof(Range));
    guint64 first = offset >> s->cluster_bits;
    guint64 last = (offset + len - 1) >> s->cluster_bits;
    guint64 mask = (1ull << s->refblock_bits) - 1;
    gboolean ok = TRUE;

    for (guint64 c = first; c <= last && ok;) {
        guint64 off;
        guint8 *block;

        if (!get_or_alloc_refblock(s, c, &off, error) ||
            !q2_cache_get(s, s->refcount_cache, off, &block, error)) {
            ok = FALSE;
            break;
        }
        guint64 rt = c >> s->refblock_bits;
        for (; c <= last && (c >> s->refblock_bits) == rt; c++) {
            guint64 v = q2_refblock_get(s->refcount_order, block, c & mask);
            if ((addend < 0 && v < (guint64)-addend) ||
                (addend > 0 && s->refcount_max - v < (guint64)addend)) {
                q2_cache_put(s->refcount_cache, block);
                if (addend < 0)
                    return q2_signal_corruption(s, error, "refcount of cluster 0x%"
                                                G_GINT64_MODIFIER "x would drop below zero",
                                                c << s->cluster_bits);
                g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG,
                            "%s: refcount of cluster 0x%" G_GINT64_MODIFIER "x would exceed %"
                            G_GUINT64_FORMAT " (refcount_bits=%d)", s->bs->filename,
                            c << s->cluster_bits, s->refcount_max, 1 << s->refcount_order);
                return FALSE;
            }
            v += addend;
            q2_refblock_set(s->refcount_order, block, c & mask, v);
            if (v == 0) {
                guint64 coff = c << s->cluster_bits;
                if (c < s->free_cluster_index)
                    s->free_cluster_index = c;
                if (s->free_byte_offset && q2_start_of_cluster(s, s->free_byte_offset) == coff)
                    s->free_byte_offset = 0;
                q2_cache_discard(s->l2_cache, coff);
                if (coff != off)
                    q2_cache_discard(s->refcount_cache, coff);
                if (discard_wanted(s, type))
                    queue_discard(discards, coff, s->cluster_size);
            }
        }
        q2_cache_mark_dirty(s->refcount_cache, block);
        q2_cache_put(s->refcount_cache, block);
    }
    if (!ok)
        return FALSE;
    for (guint i = 0; i < discards->len; i++) {
        Range *r = &g_array_index(discards, Range, i);
        /* Advisory: a file that cannot discard still holds correct data. */
        vmm_block_pdiscard(s->bs->file, r->start, r->len, NULL);
    }
    return TRUE;
}

gboolean q2_alloc_clusters(Qcow2State *s, guint64 size, guint64 *offset, GError **error)
{
    guint64 n = q2_size_to_clusters(s, size), c;

    if (n == 0)
        n = 1;
    if (!alloc_clusters_noref(s, n, &c, error))
        return FALSE;
    if (!q2_update_refcount(s, c << s->cluster_bits, n << s->cluster_bits, 1,
                            QCOW2_DISCARD_NEVER, error))
        return FALSE;
    *offset = c << s->cluster_bits;
    return TRUE;
}

gboolean q2_alloc_clusters_at(Qcow2State *s, guint64 offset, guint64 *n, GError **error)
{
    guint64 c = offset >> s->cluster_bits, run = 0, v;

    for (; run < *n; run++) {
        if (!q2_get_refcount(s, c + run, &v, error))
            return FALSE;
        if (v)
            break;
    }
    *n = run;
    if (!run)
        return TRUE;
    return q2_update_refcount(s, offset, run << s->cluster_bits, 1, QCOW2_DISCARD_NEVER, error);
}

gboolean q2_alloc_bytes(Qcow2State *s, guint64 size, guint64 *offset, GError **error)
{
    guint64 cs = s->cluster_size, off = s->free_byte_offset, refcount;

    g_assert(size > 0 && size <= cs);
    /* A cluster shared by as many compressed clusters as its refcount can
     * count takes no more. */
    if (off) {
        if (!q2_get_refcount(s, off >> s->cluster_bits, &refcount, error))
            return FALSE;
        if (refcount >= s->refcount_max)
            off = 0;
    }
    guint64 free_in_cluster = off ? cs - q2_offset_into_cluster(s, off) : 0;
    guint64 new_cluster = 0;
    if (!off || free_in_cluster < size) {
        if (!q2_alloc_clusters(s, cs, &new_cluster, error))
            return FALSE;
        /* As QEMU: when the new cluster follows the partly used one, the
         * data runs on into it instead of leaving the tail unused. */
        if (!off || off + free_in_cluster != new_cluster) {
            *offset = new_cluster;
            goto done;
        }
    }
    if (!q2_update_refcount(s, off, 1, 1, QCOW2_DISCARD_NEVER, error)) {
        if (new_cluster)
            q2_free_clusters(s, new_cluster, cs, QCOW2_DISCARD_NEVER, NULL);
        return FALSE;
    }
    *offset = off;
done:
    s->free_byte_offset = *offset + size;
    if (q2_offset_into_cluster(s, s->free_byte_offset) == 0)
        s->free_byte_offset = 0;
    return TRUE;
}

gboolean q2_free_clusters(Qcow2State *s, guint64 offset, guint64 len, Qcow2DiscardType type,
                          GError **error)
{
    return q2_update_refcount(s, offset, len, -1, type, error);
}

gboolean q2_free_clusters_deferred(Qcow2State *s, guint64 offset, guint64 len, Qcow2DiscardType type,
                                   GError **error)
{
    Qcow2PendingFree f = { offset, len, type };

    if (!len)
        return TRUE;
    if (!s->pending_frees)
        s->pending_frees = g_array_new(FALSE, FALSE, sizeof(Qcow2PendingFree));
    g_array_append_val(s->pending_frees, f);
    if (s->pending_frees->len >= 4096)
        return q2_flush_metadata(s, error);
    return TRUE;
}

gboolean q2_apply_pending_frees(Qcow2State *s, GError **error)
{
    GArray *a = s->pending_frees;

    if (!a || !a->len)
        return TRUE;
    s->pending_frees = NULL;
    for (guint i = 0; i < a->len; i++) {
        Qcow2PendingFree *f = &g_array_index(a, Qcow2PendingFree, i);
        if (!q2_update_refcount(s, f->offset, f->len, -1, f->type, error)) {
            g_array_free(a, TRUE);
            return FALSE;
        }
    }
    g_array_free(a, TRUE);
    return TRUE;
}

gboolean q2_free_any_cluster(Qcow2State *s, guint64 entry, Qcow2DiscardType type, GError **error)
{
    if (entry & QCOW_OFLAG_COMPRESSED) {
        guint64 coff, csize;
        q2_compressed_range(s, entry, &coff, &csize);
        return q2_free_clusters_deferred(s, coff, csize, type, error);
    }
    guint64 off = entry & L2E_OFFSET_MASK;
    if (!off && !(q2_has_data_file(s) && (entry & QCOW_OFLAG_COPIED)))
        return TRUE;
    if (q2_has_data_file(s)) {
        /* Data clusters of an external data file are not refcounted. */
        if (discard_wanted(s, type) && !q2_data_file_is_raw(s))
            vmm_block_pdiscard(s->data_file, off, s->cluster_size, NULL);
        return TRUE;
    }
    return q2_free_clusters_deferred(s, off, s->cluster_size, type, error);
}

static gboolean read_l1(Qcow2State *s, guint64 l1_offset, guint32 l1_size, guint64 *l1,
                        GError **error)
{
    if (!q2_file_pread(s, l1_offset, (guint64)l1_size * 8, l1, "snapshot L1 table", error))
        return FALSE;
    for (guint32 i = 0; i < l1_size; i++)
        l1[i] = GUINT64_FROM_BE(l1[i]);
    return TRUE;
}

static gboolean write_l1(Qcow2State *s, guint64 l1_offset, guint32 l1_size, const guint64 *l1,
                         GError **error)
{
    g_autofree guint64 *be = g_new(guint64, l1_size ? l1_size : 1);

    for (guint32 i = 0; i < l1_size; i++)
        be[i] = GUINT64_TO_BE(l1[i]);
    return q2_file_pwrite(s, l1_offset, (guint64)l1_size * 8, be, error);
}

/* One L2 table of an L1 being (un)referenced: data clusters and COPIED flags. */
static gboolean update_l2_refcounts(Qcow2State *s, guint64 l2_off, int addend, GError **error)
{
    guint8 *l2;

    if (!q2_cache_get(s, s->l2_cache, l2_off, &l2, error))
        return FALSE;
    for (guint64 j = 0; j < s->l2_size; j++) {
        guint64 e = q2_l2_get(s, l2, j), ne, refcount = 1;
        guint64 off = e & L2E_OFFSET_MASK;

        if (e & QCOW_OFLAG_COMPRESSED) {
            guint64 coff, csize;
            q2_compressed_range(s, e, &coff, &csize);
            if (addend && !q2_update_refcount(s, coff, csize, addend, QCOW2_DISCARD_SNAPSHOT, error))
                goto fail;
            continue;
        }
        if (!off && !(q2_has_data_file(s) && (e & QCOW_OFLAG_COPIED)))
            continue;
        if (!q2_has_data_file(s)) {
            if (addend && !q2_update_refcount(s, off, 1, addend, QCOW2_DISCARD_SNAPSHOT, error))
                goto fail;
            if (!q2_get_refcount(s, off >> s->cluster_bits, &refcount, error))
                goto fail;
        }
        ne = refcount == 1 ? (e | QCOW_OFLAG_COPIED) : (e & ~QCOW_OFLAG_COPIED);
        if (ne != e) {
            q2_l2_set(s, l2, j, ne);
            q2_cache_mark_dirty(s->l2_cache, l2);
        }
    }
    q2_cache_put(s->l2_cache, l2);
    return TRUE;
fail:
    q2_cache_put(s->l2_cache, l2);
    return FALSE;
}

gboolean q2_update_snapshot_refcount(Qcow2State *s, guint64 l1_offset, guint32 l1_size,
                                     int addend, GError **error)
{
    gboolean active = l1_offset == s->l1_table_offset;
    g_autofree guint64 *l1 = g_new0(guint64, l1_size ? l1_size : 1);
    gboolean changed = FALSE;

    if (active)
        memcpy(l1, s->l1_table, (gsize)MIN(l1_size, s->l1_size) * 8);
    else if (!read_l1(s, l1_offset, l1_size, l1, error))
        return FALSE;
    if (addend < 0 && !q2_cache_set_dependency(s, s->refcount_cache, s->l2_cache, error))
        return FALSE;

    for (guint32 i = 0; i < l1_size; i++) {
        guint64 l2_off = l1[i] & L1E_OFFSET_MASK, refcount, ne;

        if (!l2_off)
            continue;
        if (q2_offset_into_cluster(s, l2_off))
            return q2_signal_corruption(s, error, "L2 table offset 0x%" G_GINT64_MODIFIER
                                        "x unaligned (L1 index 0x%x)", l2_off, i);
        if (!update_l2_refcounts(s, l2_off, addend, error))
            return FALSE;
        if (addend && !q2_update_refcount(s, l2_off, 1, addend, QCOW2_DISCARD_SNAPSHOT, error))
            return FALSE;
        if (!q2_get_refcount(s, l2_off >> s->cluster_bits, &refcount, error))
            return FALSE;
        ne = refcount == 1 ? (l1[i] | QCOW_OFLAG_COPIED) : (l1[i] & ~QCOW_OFLAG_COPIED);
        if (ne != l1[i]) {
            l1[i] = ne;
            changed = TRUE;
        }
    }
    if (!changed)
        return TRUE;
    /* L2 tables (and through them the refcounts) reach the disk before the L1. */
    if (!q2_cache_flush(s, s->l2_cache, error) || !write_l1(s, l1_offset, l1_size, l1, error))
        return FALSE;
    if (active)
        memcpy(s->l1_table, l1, (gsize)MIN(l1_size, s->l1_size) * 8);
    return TRUE;
}

gboolean q2_refcount_end(Qcow2State *s, guint64 *end_cluster, GError **error)
{
    guint64 per_block = 1ull << s->refblock_bits;

    *end_cluster = 0;
    for (guint64 rt = s->refcount_table_size; rt-- > 0;) {
        guint64 off;
        guint8 *block;

        if (!refblock_offset(s, rt, &off, error))
            return FALSE;
        if (!off)
            continue;
        if (!q2_cache_get(s, s->refcount_cache, off, &block, error))
            return FALSE;
        for (guint64 i = per_block; i-- > 0;) {
            if (q2_refblock_get(s->refcount_order, block, i)) {
                *end_cluster = rt * per_block + i + 1;
                break;
            }
        }
        q2_cache_put(s->refcount_cache, block);
        if (*end_cluster)
            return TRUE;
    }
    return TRUE;
}

guint64 q2_refcount_metadata_size(guint64 clusters, guint64 cluster_size, int refcount_order,
                                  guint64 *refblock_count)
{
    /* The fixed point where the refcount structure also counts itself. */
    guint64 per_table_cluster = cluster_size / 8;
    guint64 per_block = cluster_size * 8 / (1u << refcount_order);
    guint64 table = 0, blocks = 0, n = 0, last;

    do {
        last = n;
        blocks = (clusters + table + blocks + per_block - 1) / per_block;
        table = (blocks + per_table_cluster - 1) / per_table_cluster;
        n = clusters + blocks + table;
    } while (n != last);
    if (refblock_count)
        *refblock_count = blocks;
    return (blocks + table) * cluster_size;
}

gboolean q2_rebuild_refcount_structure(Qcow2State *s, guint64 *refcounts, guint64 nb,
                                       int new_order, GError **error)
{
    guint64 cs = s->cluster_size;
    int new_block_bits = s->cluster_bits + 3 - new_order;
    guint64 per_block = 1ull << new_block_bits;
    guint64 max = new_order == 6 ? G_MAXUINT64 : (1ull << (1 << new_order)) - 1;
    guint64 area = nb, nb_blocks = 0, table_clusters = 0;

    for (guint64 i = 0; i < nb; i++) {
        if (refcounts[i] > max) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG,
                        "%s: cluster at offset 0x%" G_GINT64_MODIFIER "x has a refcount of %"
                        G_GUINT64_FORMAT ", more than %d-bit entries hold", s->bs->filename,
                        i << s->cluster_bits, refcounts[i], 1 << new_order);
            return FALSE;
        }
    }
    for (;;) {
        guint64 end = area + nb_blocks + table_clusters;
        guint64 b = (end + per_block - 1) / per_block;
        guint64 t = (b * 8 + cs - 1) / cs;
        if (b == nb_blocks && t == table_clusters)
            break;
        nb_blocks = b;
        table_clusters = t;
    }
    if (table_clusters * cs > QCOW2_MAX_REFTABLE_BYTES) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG,
                    "%s: the refcount table would exceed %u bytes", s->bs->filename,
                    QCOW2_MAX_REFTABLE_BYTES);
        return FALSE;
    }
    guint64 total = area + nb_blocks + table_clusters;
    guint64 entries = table_clusters * cs / 8;
    g_autofree guint8 *block = g_malloc(cs);
    g_autofree guint64 *table = g_new0(guint64, entries);

    /* Everything in flight goes out before the structure changes under it;
     * REFCOUNTS were computed after the deferred frees were applied. */
    if (s->pending_frees && s->pending_frees->len) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_FAILED,
                    "%s: internal error: refcounts rebuilt with frees pending", s->bs->filename);
        return FALSE;
    }
    if (!q2_cache_flush(s, s->l2_cache, error) || !q2_cache_flush(s, s->refcount_cache, error))
        return FALSE;
    for (guint64 b = 0; b < nb_blocks; b++) {
        memset(block, 0, cs);
        for (guint64 i = 0; i < per_block; i++) {
            guint64 c = b * per_block + i;
            guint64 v = c < nb ? refcounts[c] : (c >= area && c < total ? 1 : 0);
            if (v)
                q2_refblock_set(new_order, block, i, v);
        }
        table[b] = GUINT64_TO_BE((area + b) << s->cluster_bits);
        if (!q2_file_pwrite(s, (area + b) << s->cluster_bits, cs, block, error))
            return FALSE;
    }
    guint64 table_off = (area + nb_blocks) << s->cluster_bits;
    if (!q2_file_pwrite(s, table_off, table_clusters * cs, table, error) || !q2_file_flush(s, error))
        return FALSE;

    g_free(s->refcount_table);
    s->refcount_table = g_new0(guint64, entries);
    for (guint64 i = 0; i < entries; i++)
        s->refcount_table[i] = GUINT64_FROM_BE(table[i]);
    s->refcount_table_size = entries;
    s->refcount_table_offset = table_off;
    s->refcount_table_clusters = (guint32)table_clusters;
    s->refcount_order = new_order;
    s->refblock_bits = new_block_bits;
    s->refcount_max = max;
    s->free_cluster_index = 0;
    s->free_byte_offset = 0;
    if (!q2_cache_empty(s, s->refcount_cache, error))
        return FALSE;
    if (!q2_update_header(s, error) || !q2_file_flush(s, error))
        return FALSE;
    return TRUE;
}

/* QEMU's qcow2_refcount_area: a new refcount table at START (cluster
 * aligned, nothing in use from there on) with the refcount blocks needed to
 * cover everything up to START plus ADDITIONAL clusters and the new structure
 * itself. Returns the first offset past the new structure in *END. */
gboolean q2_refcount_area(Qcow2State *s, guint64 start, guint64 additional, gboolean exact,
                          guint64 *end, GError **error)
{
    guint64 cs = s->cluster_size, per_block = 1ull << s->refblock_bits, total_blocks;
    guint64 per_table_cluster = cs / 8;

    q2_refcount_metadata_size(start / cs + additional, cs, s->refcount_order, &total_blocks);
    if (!exact) {
        /* generous: room for the table to grow by half */
        guint64 blocks = 0, table = 0, n = 0, last, clusters = start / cs + additional;
        gboolean generous = TRUE;
        do {
            last = n;
            blocks = (clusters + table + blocks + per_block - 1) / per_block;
            table = (blocks + per_table_cluster - 1) / per_table_cluster;
            n = clusters + blocks + table;
            if (n == last && generous) {
                clusters += (table + 1) / 2;
                n = 0;
                generous = FALSE;
            }
        } while (n != last);
        total_blocks = blocks;
    }
    guint64 area_index = (start / cs) / per_block;
    guint64 table_size = exact ? total_blocks : total_blocks + (total_blocks + 1) / 2;
    table_size = (table_size + per_table_cluster - 1) / per_table_cluster * per_table_cluster;
    guint64 table_clusters = table_size * 8 / cs;
    if (table_size * 8 > QCOW2_MAX_REFTABLE_BYTES) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG,
                    "%s: the refcount table would exceed %u bytes", s->bs->filename,
                    QCOW2_MAX_REFTABLE_BYTES);
        return FALSE;
    }
    g_autofree guint64 *table = g_new0(guint64, table_size);
    memcpy(table, s->refcount_table, MIN(table_size, s->refcount_table_size) * 8);

    guint64 new_blocks = 0;
    for (guint64 i = area_index; i < total_blocks; i++) {
        if (!(table[i] & REFT_OFFSET_MASK))
            new_blocks++;
    }
    guint64 table_off = start + new_blocks * cs;
    guint64 end_off = table_off + table_clusters * cs;
    guint64 block_off = start;

    for (guint64 i = area_index; i < total_blocks; i++) {
        guint8 *block;
        if (table[i] & REFT_OFFSET_MASK) {
            if (!q2_cache_get(s, s->refcount_cache, table[i] & REFT_OFFSET_MASK, &block, error))
                return FALSE;
        } else {
            if (!q2_cache_get_empty(s, s->refcount_cache, block_off, &block, error))
                return FALSE;
            memset(block, 0, cs);
            q2_cache_mark_dirty(s->refcount_cache, block);
            table[i] = block_off;
            block_off += cs;
        }
        guint64 first = i * per_block * cs;
        if (first < end_off) {
            guint64 j = first < start ? (start - first) / cs : 0;
            guint64 stop = MIN((end_off - first) / cs, per_block);
            for (; j < stop; j++)
                q2_refblock_set(s->refcount_order, block, j, 1);
            q2_cache_mark_dirty(s->refcount_cache, block);
        }
        q2_cache_put(s->refcount_cache, block);
    }
    if (!q2_cache_flush(s, s->refcount_cache, error))
        return FALSE;
    g_autofree guint64 *be = g_new(guint64, table_size);
    for (guint64 i = 0; i < table_size; i++)
        be[i] = GUINT64_TO_BE(table[i]);
    if (!q2_file_pwrite(s, table_off, table_size * 8, be, error) || !q2_file_flush(s, error))
        return FALSE;
    guint8 hdr[12];
    guint32 clusters_be = GUINT32_TO_BE((guint32)table_clusters);
    put_be64(hdr, table_off);
    memcpy(hdr + 8, &clusters_be, 4);
    if (!q2_file_pwrite(s, 48, sizeof(hdr), hdr, error) || !q2_file_flush(s, error))
        return FALSE;

    guint64 old_off = s->refcount_table_offset, old_clusters = s->refcount_table_clusters;
    g_free(s->refcount_table);
    s->refcount_table = g_steal_pointer(&table);
    s->refcount_table_size = table_size;
    s->refcount_table_offset = table_off;
    s->refcount_table_clusters = (guint32)table_clusters;
    if (!q2_free_clusters(s, old_off, old_clusters * cs, QCOW2_DISCARD_OTHER, error))
        return FALSE;
    *end = end_off;
    return TRUE;
}

gboolean q2_last_cluster(Qcow2State *s, guint64 file_size, gint64 *last, GError **error)
{
    guint64 n = q2_size_to_clusters(s, file_size), rc;

    *last = -1;
    for (guint64 i = n; i-- > 0;) {
        if (!q2_get_refcount(s, i, &rc, error))
            return FALSE;
        if (rc) {
            *last = (gint64)i;
            return TRUE;
        }
    }
    return TRUE;
}
