/* qcow2 consistency check and repair, counted as qemu-img check counts:
 * refcounts computed from every reference (header, L1/L2 tables of the active
 * state and of each snapshot, data clusters, snapshot table, refcount
 * structure, bitmaps) and compared with the stored ones; COPIED flags of the
 * active tables. Messages go to stderr in QEMU's words. */
#include "blockd/qcow2.h"
#include "common/bytes.h"
#include "common/error.h"
#include <string.h>

typedef struct {
    Qcow2State *s;
    VmmCheckResult *res;
    guint64 *rc;
    guint64 nb;
    guint64 file_clusters;
} Counter;

/* One more reference to every cluster of [OFF, OFF+LEN). */
static void inc_refs(Counter *c, guint64 off, guint64 len)
{
    Qcow2State *s = c->s;

    if (!len)
        return;
    guint64 first = off >> s->cluster_bits, last = (off + len - 1) >> s->cluster_bits;
    if (off + len < off || last >= c->file_clusters + 1) {
        g_printerr("ERROR: counting reference for region exceeding the end of the file by one "
                   "cluster or more: offset 0x%" G_GINT64_MODIFIER "x size 0x%" G_GINT64_MODIFIER "x\n",
                   off, len);
        c->res->corruptions++;
        return;
    }
    if (last >= c->nb) {
        guint64 n = MAX(last + 1, c->nb * 2);
        c->rc = g_renew(guint64, c->rc, n);
        memset(c->rc + c->nb, 0, (n - c->nb) * sizeof(guint64));
        c->nb = n;
    }
    for (guint64 k = first; k <= last; k++) {
        if (c->rc[k] == s->refcount_max) {
            g_printerr("ERROR: overflow cluster offset=0x%" G_GINT64_MODIFIER "x\n", k << s->cluster_bits);
            c->res->corruptions++;
            continue;
        }
        c->rc[k]++;
    }
}

static gboolean check_l2(Counter *c, guint64 l2_off, gboolean active, guint64 *next_contig,
                         GError **error)
{
    Qcow2State *s = c->s;
    guint8 *l2;

    if (!q2_cache_get(s, s->l2_cache, l2_off, &l2, error))
        return FALSE;
    for (guint64 i = 0; i < s->l2_size; i++) {
        guint64 e = q2_l2_get(s, l2, i), bm = q2_l2_get_bitmap(s, l2, i);
        guint64 off = e & L2E_OFFSET_MASK;

        if (e & QCOW_OFLAG_COMPRESSED) {
            guint64 coff, csize;
            if (e & QCOW_OFLAG_COPIED) {
                g_printerr("ERROR: coffset=0x%" G_GINT64_MODIFIER "x: copied flag must never be set "
                           "for compressed clusters\n", e & s->cluster_offset_mask);
                c->res->corruptions++;
            }
            if (q2_has_data_file(s)) {
                g_printerr("ERROR compressed cluster %" G_GUINT64_FORMAT " with data file, entry=0x%"
                           G_GINT64_MODIFIER "x\n", i, e);
                c->res->corruptions++;
                continue;
            }
            if (bm) {
                g_printerr("ERROR compressed cluster %" G_GUINT64_FORMAT " with non-zero subcluster "
                           "allocation bitmap, entry=0x%" G_GINT64_MODIFIER "x\n", i, e);
                c->res->corruptions++;
                continue;
            }
            q2_compressed_range(s, e & ~QCOW_OFLAG_COPIED, &coff, &csize);
            inc_refs(c, coff, csize);
            if (active) {
                c->res->allocated_clusters++;
                c->res->compressed_clusters++;
                c->res->fragmented_clusters++;
            }
            continue;
        }
        if (s->extended_l2) {
            if ((bm >> 32) & bm & 0xffffffffull) {
                g_printerr("ERROR invalid subcluster allocation bitmap, entry=0x%" G_GINT64_MODIFIER
                           "x bitmap=0x%" G_GINT64_MODIFIER "x\n", e, bm);
                c->res->corruptions++;
            }
            if (!off && !(q2_has_data_file(s) && (e & QCOW_OFLAG_COPIED)) && (bm & 0xffffffffull)) {
                g_printerr("ERROR: unallocated cluster %" G_GUINT64_FORMAT " has allocated subclusters\n", i);
                c->res->corruptions++;
            }
        }
        if (!off && !(q2_has_data_file(s) && (e & QCOW_OFLAG_COPIED)))
            continue;
        if (active) {
            c->res->allocated_clusters++;
            if (*next_contig && off != *next_contig)
                c->res->fragmented_clusters++;
            *next_contig = off + s->cluster_size;
        }
        if (q2_offset_into_cluster(s, off)) {
            g_printerr("ERROR offset=%" G_GINT64_MODIFIER "x: Cluster is not properly aligned; "
                       "L2 entry corrupted.\n", off);
            c->res->corruptions++;
            continue;
        }
        if (!q2_has_data_file(s))
            inc_refs(c, off, s->cluster_size);
    }
    q2_cache_put(s->l2_cache, l2);
    return TRUE;
}

static gboolean check_l1(Counter *c, guint64 l1_off, guint32 l1_size, gboolean active, GError **error)
{
    Qcow2State *s = c->s;
    g_autofree guint64 *l1 = NULL;
    guint64 next_contig = 0;

    if (!l1_size)
        return TRUE;
    inc_refs(c, l1_off, (guint64)l1_size * 8);
    if (active) {
        l1 = g_memdup2(s->l1_table, (gsize)l1_size * 8);
    } else {
        l1 = g_new(guint64, l1_size);
        g_autoptr(GError) err = NULL;
        if (!q2_file_pread(s, l1_off, (guint64)l1_size * 8, l1, "snapshot L1 table", &err)) {
            g_printerr("ERROR: I/O error in check_refcounts_l1: %s\n", err->message);
            c->res->check_errors++;
            return TRUE;
        }
        for (guint32 i = 0; i < l1_size; i++)
            l1[i] = GUINT64_FROM_BE(l1[i]);
    }
    for (guint32 i = 0; i < l1_size; i++) {
        guint64 l2_off = l1[i] & L1E_OFFSET_MASK;
        if (!l2_off)
            continue;
        inc_refs(c, l2_off, s->cluster_size);
        if (q2_offset_into_cluster(s, l2_off)) {
            g_printerr("ERROR l2_offset=%" G_GINT64_MODIFIER "x: Table is not cluster aligned; "
                       "L1 entry corrupted\n", l2_off);
            c->res->corruptions++;
            continue;
        }
        if ((l2_off >> s->cluster_bits) >= c->file_clusters) {
            /* Already counted as a corruption by inc_refs. */
            continue;
        }
        g_autoptr(GError) err = NULL;
        if (!check_l2(c, l2_off, active, &next_contig, &err)) {
            g_printerr("ERROR: I/O error in check_refcounts_l2: %s\n", err->message);
            c->res->check_errors++;
        }
    }
    (void)error;
    return TRUE;
}

static void check_bitmaps(Counter *c)
{
    Qcow2State *s = c->s;
    guint64 dsize = s->bitmap_dir_size, pos = 0;

    if (!s->bitmaps_ext || !s->nb_bitmaps)
        return;
    if (dsize > (64u << 20) || q2_offset_into_cluster(s, s->bitmap_dir_offset)) {
        g_printerr("ERROR bitmap directory is invalid\n");
        c->res->corruptions++;
        return;
    }
    inc_refs(c, s->bitmap_dir_offset, dsize);
    g_autofree guint8 *dir = g_malloc0(dsize ? dsize : 1);
    g_autoptr(GError) err = NULL;
    if (dsize && !q2_file_pread(s, s->bitmap_dir_offset, dsize, dir, "bitmap directory", &err)) {
        g_printerr("ERROR: %s\n", err->message);
        c->res->check_errors++;
        return;
    }
    for (guint32 i = 0; i < s->nb_bitmaps; i++) {
        if (pos + 24 > dsize) {
            g_printerr("ERROR bitmap directory entry %u is truncated\n", i);
            c->res->corruptions++;
            return;
        }
        guint64 toff = get_be64(dir + pos);
        guint32 tsize = get_be32(dir + pos + 8);
        guint32 name = (dir[pos + 18] << 8) | dir[pos + 19];
        guint32 extra = get_be32(dir + pos + 20);
        if (tsize > (64u << 20) / 8 || q2_offset_into_cluster(s, toff)) {
            g_printerr("ERROR bitmap table of bitmap %u is invalid\n", i);
            c->res->corruptions++;
        } else if (tsize) {
            inc_refs(c, toff, (guint64)tsize * 8);
            g_autofree guint64 *t = g_new(guint64, tsize);
            g_autoptr(GError) e2 = NULL;
            if (q2_file_pread(s, toff, (guint64)tsize * 8, t, "bitmap table", &e2)) {
                for (guint32 k = 0; k < tsize; k++) {
                    guint64 d = GUINT64_FROM_BE(t[k]) & 0x00fffffffffffe00ull;
                    if (d)
                        inc_refs(c, d, s->cluster_size);
                }
            } else {
                c->res->check_errors++;
            }
        }
        pos += (24 + (guint64)extra + name + 7) & ~7ull;
    }
}

gboolean q2_calculate_refcounts(Qcow2State *s, VmmCheckResult *res, gboolean with_refcount_structure,
                                guint64 **refcounts, guint64 *nb, GError **error)
{
    Counter c = { .s = s, .res = res };
    guint64 fsize = vmm_block_size(s->bs->file);

    c.file_clusters = q2_size_to_clusters(s, fsize);
    c.nb = MAX(c.file_clusters, 1);
    c.rc = g_new0(guint64, c.nb);

    inc_refs(&c, 0, s->cluster_size);
    check_l1(&c, s->l1_table_offset, s->l1_size, TRUE, error);
    for (guint32 i = 0; i < s->nb_snapshots; i++) {
        Qcow2Snapshot *sn = &s->snapshots[i];
        if (sn->l1_size > QCOW2_MAX_L1_BYTES / 8 || q2_offset_into_cluster(s, sn->l1_table_offset)) {
            g_printerr("ERROR snapshot %s (%s) l1_offset=%#" G_GINT64_MODIFIER "x: L1 table is not "
                       "cluster aligned; snapshot table entry corrupted\n", sn->id, sn->name,
                       sn->l1_table_offset);
            res->corruptions++;
            continue;
        }
        check_l1(&c, sn->l1_table_offset, sn->l1_size, FALSE, error);
    }
    inc_refs(&c, s->snapshots_offset, s->snapshots_size);
    check_bitmaps(&c);
    if (with_refcount_structure) {
        inc_refs(&c, s->refcount_table_offset, (guint64)s->refcount_table_clusters << s->cluster_bits);
        for (guint64 i = 0; i < s->refcount_table_size; i++) {
            guint64 off = s->refcount_table[i] & REFT_OFFSET_MASK;
            if (!off)
                continue;
            if (q2_offset_into_cluster(s, off)) {
                g_printerr("ERROR refcount block %" G_GUINT64_FORMAT " is not cluster aligned; "
                           "refcount table entry corrupted\n", i);
                res->corruptions++;
                continue;
            }
            if (off >= fsize) {
                g_printerr("ERROR refcount block %" G_GUINT64_FORMAT " is outside image\n", i);
                res->corruptions++;
                continue;
            }
            inc_refs(&c, off, s->cluster_size);
        }
    }
    *refcounts = c.rc;
    *nb = c.nb;
    return TRUE;
}

/* Stored vs computed refcounts. With FIX, mismatches in existing refcount
 * blocks are corrected in place; a referenced cluster with no stored refcount
 * needs a rebuild (*REBUILD). */
static gboolean compare_refcounts(Qcow2State *s, VmmCheckResult *res, int fix, gboolean *rebuild,
                                  guint64 *highest, const guint64 *rc, guint64 nb, GError **error)
{
    *rebuild = FALSE;
    *highest = 0;
    for (guint64 i = 0; i < nb; i++) {
        guint64 r1, r2 = rc[i];
        g_autoptr(GError) err = NULL;
        guint64 *fixed = NULL;

        if (!q2_get_refcount(s, i, &r1, &err)) {
            g_printerr("Can't get refcount for cluster %" G_GUINT64_FORMAT ": %s\n", i, err->message);
            res->check_errors++;
            *rebuild = TRUE;
            continue;
        }
        if (r1 || r2)
            *highest = i;
        if (r1 == r2)
            continue;
        if (r1 == 0)
            *rebuild = TRUE;
        else if (r1 > r2 && (fix & VMM_CHECK_FIX_LEAKS))
            fixed = &res->leaks_fixed;
        else if (r1 < r2 && (fix & VMM_CHECK_FIX_ERRORS))
            fixed = &res->corruptions_fixed;
        g_printerr("%s cluster %" G_GUINT64_FORMAT " refcount=%" G_GUINT64_FORMAT " reference=%"
                   G_GUINT64_FORMAT "\n", fixed ? "Repairing" : r1 < r2 ? "ERROR" : "Leaked", i, r1, r2);
        if (fixed) {
            gint64 diff = (gint64)(r2 - r1);
            if (q2_update_refcount(s, i << s->cluster_bits, 1, diff, QCOW2_DISCARD_NEVER, &err)) {
                (*fixed)++;
                continue;
            }
            g_printerr("ERROR: %s\n", err->message);
        }
        if (r1 < r2)
            res->corruptions++;
        else
            res->leaks++;
    }
    (void)error;
    return TRUE;
}

/* COPIED must be set exactly on active L1/L2 entries whose cluster has refcount 1. */
static gboolean check_oflag_copied(Qcow2State *s, VmmCheckResult *res, int fix, GError **error)
{
    gboolean l1_dirty = FALSE;

    for (guint32 i = 0; i < s->l1_size; i++) {
        guint64 l1e = s->l1_table[i], l2_off = l1e & L1E_OFFSET_MASK, rc;
        guint8 *l2;

        if (!l2_off || q2_offset_into_cluster(s, l2_off) ||
            (l2_off >> s->cluster_bits) >= q2_size_to_clusters(s, vmm_block_size(s->bs->file)))
            continue;
        if (!q2_get_refcount(s, l2_off >> s->cluster_bits, &rc, error))
            return FALSE;
        if ((rc == 1) != ((l1e & QCOW_OFLAG_COPIED) != 0)) {
            g_printerr("%s OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%" G_GINT64_MODIFIER
                       "x refcount=%" G_GUINT64_FORMAT "\n",
                       (fix & VMM_CHECK_FIX_ERRORS) ? "Repairing" : "ERROR", i, l1e, rc);
            if (fix & VMM_CHECK_FIX_ERRORS) {
                s->l1_table[i] = rc == 1 ? (l1e | QCOW_OFLAG_COPIED) : (l1e & ~QCOW_OFLAG_COPIED);
                l1_dirty = TRUE;
                res->corruptions_fixed++;
            } else {
                res->corruptions++;
            }
        }
        if (!q2_cache_get(s, s->l2_cache, l2_off, &l2, error))
            return FALSE;
        for (guint64 j = 0; j < s->l2_size; j++) {
            guint64 e = q2_l2_get(s, l2, j), off = e & L2E_OFFSET_MASK;
            if ((e & QCOW_OFLAG_COMPRESSED) || !off || q2_offset_into_cluster(s, off) ||
                q2_has_data_file(s))
                continue;
            if (!q2_get_refcount(s, off >> s->cluster_bits, &rc, error)) {
                q2_cache_put(s->l2_cache, l2);
                return FALSE;
            }
            if ((rc == 1) == ((e & QCOW_OFLAG_COPIED) != 0))
                continue;
            g_printerr("%s OFLAG_COPIED data cluster: l2_entry=%" G_GINT64_MODIFIER "x refcount=%"
                       G_GUINT64_FORMAT "\n", (fix & VMM_CHECK_FIX_ERRORS) ? "Repairing" : "ERROR", e, rc);
            if (fix & VMM_CHECK_FIX_ERRORS) {
                q2_l2_set(s, l2, j, rc == 1 ? (e | QCOW_OFLAG_COPIED) : (e & ~QCOW_OFLAG_COPIED));
                q2_cache_mark_dirty(s->l2_cache, l2);
                res->corruptions_fixed++;
            } else {
                res->corruptions++;
            }
        }
        q2_cache_put(s->l2_cache, l2);
    }
    if (l1_dirty) {
        g_autofree guint64 *be = g_new(guint64, s->l1_size);
        for (guint32 i = 0; i < s->l1_size; i++)
            be[i] = GUINT64_TO_BE(s->l1_table[i]);
        if (!q2_cache_flush(s, s->l2_cache, error) ||
            !q2_file_pwrite(s, s->l1_table_offset, (guint64)s->l1_size * 8, be, error))
            return FALSE;
    }
    return s->read_only || q2_flush_metadata(s, error);
}

gboolean q2_check(Qcow2State *s, VmmCheckResult *res, int fix, GError **error)
{
    g_autofree guint64 *rc = NULL;
    guint64 nb = 0, highest = 0;
    gboolean rebuild = FALSE;
    VmmCheckResult pre;

    memset(res, 0, sizeof(*res));
    if (!s->read_only && !q2_flush_metadata(s, error))
        return FALSE;
    if (!q2_calculate_refcounts(s, res, TRUE, &rc, &nb, error))
        return FALSE;
    pre = *res;
    compare_refcounts(s, res, 0, &rebuild, &highest, rc, nb, error);

    if (rebuild && (fix & VMM_CHECK_FIX_ERRORS)) {
        VmmCheckResult old = *res, scratch;
        g_autofree guint64 *rc2 = NULL;
        guint64 nb2 = 0;

        g_printerr("Rebuilding refcount structure\n");
        memset(&scratch, 0, sizeof(scratch));
        if (!q2_calculate_refcounts(s, &scratch, FALSE, &rc2, &nb2, error))
            return FALSE;
        /* Trailing clusters nothing references need no refcount block. */
        while (nb2 > 1 && !rc2[nb2 - 1])
            nb2--;
        if (!q2_rebuild_refcount_structure(s, rc2, nb2, s->refcount_order, error))
            return FALSE;
        g_free(rc);
        rc = NULL;
        memset(res, 0, sizeof(*res));
        if (!q2_calculate_refcounts(s, res, TRUE, &rc, &nb, error))
            return FALSE;
        compare_refcounts(s, res, VMM_CHECK_FIX_LEAKS, &rebuild, &highest, rc, nb, error);
        if (rebuild)
            g_printerr("ERROR rebuilt refcount structure is still broken\n");
        guint64 fresh_leaks = res->leaks, left_corrupt = res->corruptions;
        *res = old;
        res->corruptions = left_corrupt;
        res->corruptions_fixed += old.corruptions > left_corrupt ? old.corruptions - left_corrupt : 0;
        res->leaks_fixed += old.leaks;
        res->leaks = fresh_leaks;
    } else if (fix) {
        if (rebuild) {
            g_printerr("ERROR need to rebuild refcount structures\n");
            res->check_errors++;
        } else if (res->leaks || res->corruptions) {
            *res = pre;
            compare_refcounts(s, res, fix, &rebuild, &highest, rc, nb, error);
        }
    }
    if (!check_oflag_copied(s, res, fix, error))
        return FALSE;
    s->free_cluster_index = 0;
    res->image_end_offset = (highest + 1) << s->cluster_bits;
    res->total_clusters = q2_size_to_clusters(s, s->bs->size);
    res->has_total = TRUE;
    return TRUE;
}
