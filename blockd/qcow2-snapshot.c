/* qcow2 internal snapshots: the snapshot table (with its extra data kept),
 * create, apply (goto), delete and list. Every function runs with s->lock. */
#include "blockd/qcow2.h"
#include "common/bytes.h"
#include "common/error.h"
#include <stdlib.h>
#include <string.h>

#define SN_FIXED 40
#define SN_EXTRA_KNOWN 24  /* vm_state_size_large, disk_size, icount */

static void clear_snapshot(Qcow2Snapshot *sn)
{
    g_free(sn->id);
    g_free(sn->name);
    g_free(sn->unknown_extra);
    memset(sn, 0, sizeof(*sn));
}

void q2_free_snapshots(Qcow2State *s)
{
    for (guint32 i = 0; s->snapshots && i < s->nb_snapshots; i++)
        clear_snapshot(&s->snapshots[i]);
    g_free(s->snapshots);
    s->snapshots = NULL;
}

static gboolean bad_table(Qcow2State *s, guint32 i, const char *why, GError **error)
{
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: snapshot table entry %u: %s",
                s->bs->filename, i, why);
    return FALSE;
}

gboolean q2_read_snapshots(Qcow2State *s, GError **error)
{
    guint64 off = s->snapshots_offset, start = off;

    s->snapshots_size = 0;
    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: header field nb_snapshots is %u; at most "
                    "%u snapshots are supported", s->bs->filename, s->nb_snapshots, QCOW2_MAX_SNAPSHOTS);
        s->nb_snapshots = 0;
        return FALSE;
    }
    s->snapshots = g_new0(Qcow2Snapshot, s->nb_snapshots ? s->nb_snapshots : 1);
    if (!s->nb_snapshots)
        return TRUE;
    if (!q2_validate_table(s, off, 1, SN_FIXED, QCOW2_MAX_SNAPSHOTS_BYTES,
                           "snapshot table (header field snapshots_offset)", error))
        return FALSE;
    for (guint32 i = 0; i < s->nb_snapshots; i++) {
        Qcow2Snapshot *sn = &s->snapshots[i];
        guint8 h[SN_FIXED];
        guint32 id_len, name_len;

        off = (off + 7) & ~7ull;
        if (off - start > QCOW2_MAX_SNAPSHOTS_BYTES)
            return bad_table(s, i, "the snapshot table is larger than 64 MiB", error);
        if (!q2_file_pread(s, off, SN_FIXED, h, "snapshot table", error))
            return FALSE;
        sn->l1_table_offset = get_be64(h);
        sn->l1_size = get_be32(h + 8);
        id_len = (h[12] << 8) | h[13];
        name_len = (h[14] << 8) | h[15];
        sn->date_sec = get_be32(h + 16);
        sn->date_nsec = get_be32(h + 20);
        sn->vm_clock_nsec = get_be64(h + 24);
        sn->vm_state_size = get_be32(h + 32);
        sn->extra_size = get_be32(h + 36);
        sn->icount = G_MAXUINT64;
        sn->disk_size = s->bs->size;
        off += SN_FIXED;
        if (sn->extra_size > 1024 * 1024)
            return bad_table(s, i, "extra data is larger than 1 MiB", error);
        if (sn->extra_size) {
            g_autofree guint8 *extra = g_malloc(sn->extra_size);
            if (!q2_file_pread(s, off, sn->extra_size, extra, "snapshot table", error))
                return FALSE;
            if (sn->extra_size >= 8)
                sn->vm_state_size = get_be64(extra);
            if (sn->extra_size >= 16) {
                sn->disk_size = get_be64(extra + 8);
                sn->has_disk_size = TRUE;
            }
            if (sn->extra_size >= 24) {
                sn->icount = get_be64(extra + 16);
                sn->has_icount = TRUE;
            }
            if (sn->extra_size > SN_EXTRA_KNOWN) {
                sn->unknown_extra_len = sn->extra_size - SN_EXTRA_KNOWN;
                sn->unknown_extra = g_memdup2(extra + SN_EXTRA_KNOWN, sn->unknown_extra_len);
            }
            off += sn->extra_size;
        }
        sn->id = g_malloc0(id_len + 1);
        sn->name = g_malloc0(name_len + 1);
        if ((id_len && !q2_file_pread(s, off, id_len, sn->id, "snapshot table", error)) ||
            (name_len && !q2_file_pread(s, off + id_len, name_len, sn->name, "snapshot table", error)))
            return FALSE;
        off += id_len + name_len;
        if (sn->l1_size > QCOW2_MAX_L1_BYTES / 8)
            return bad_table(s, i, "its L1 table is too large", error);
        if (sn->l1_size && q2_offset_into_cluster(s, sn->l1_table_offset))
            return bad_table(s, i, "its L1 table offset is not cluster aligned", error);
    }
    s->snapshots_size = off - start;
    return TRUE;
}

static guint64 entry_size(const Qcow2Snapshot *sn)
{
    guint64 n = SN_FIXED + SN_EXTRA_KNOWN + sn->unknown_extra_len + strlen(sn->id) + strlen(sn->name);
    return (n + 7) & ~7ull;
}

/* Writes SNAPSHOTS[0..N) as a new table and switches the header to it. */
static gboolean write_snapshots(Qcow2State *s, Qcow2Snapshot *sns, guint32 n, GError **error)
{
    guint64 size = 0, off = 0, pos = 0;

    for (guint32 i = 0; i < n; i++)
        size += entry_size(&sns[i]);
    if (size > QCOW2_MAX_SNAPSHOTS_BYTES) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG, "%s: the snapshot table would exceed 64 MiB",
                    s->bs->filename);
        return FALSE;
    }
    g_autofree guint8 *buf = g_malloc0(size ? size : 1);
    for (guint32 i = 0; i < n; i++) {
        Qcow2Snapshot *sn = &sns[i];
        guint8 *p = buf + pos;
        guint32 id_len = (guint32)strlen(sn->id), name_len = (guint32)strlen(sn->name);
        guint32 extra = SN_EXTRA_KNOWN + sn->unknown_extra_len;

        put_be64(p, sn->l1_table_offset);
        put_be32(p + 8, sn->l1_size);
        put_be16(p + 12, (guint16)id_len);
        put_be16(p + 14, (guint16)name_len);
        put_be32(p + 16, sn->date_sec);
        put_be32(p + 20, sn->date_nsec);
        put_be64(p + 24, sn->vm_clock_nsec);
        put_be32(p + 32, (guint32)MIN(sn->vm_state_size, G_MAXUINT32));
        put_be32(p + 36, extra);
        put_be64(p + 40, sn->vm_state_size);
        put_be64(p + 48, sn->disk_size);
        put_be64(p + 56, sn->icount);
        if (sn->unknown_extra_len)
            memcpy(p + 64, sn->unknown_extra, sn->unknown_extra_len);
        memcpy(p + SN_FIXED + extra, sn->id, id_len);
        memcpy(p + SN_FIXED + extra + id_len, sn->name, name_len);
        pos += entry_size(sn);
    }
    if (size) {
        if (!q2_alloc_clusters(s, size, &off, error))
            return FALSE;
        /* The table and the refcounts that own it reach the disk first. */
        if (!q2_flush_metadata(s, error) || !q2_file_pwrite(s, off, size, buf, error) ||
            !q2_file_flush(s, error))
            return FALSE;
    }
    guint8 hdr[12];
    put_be32(hdr, n);
    put_be64(hdr + 4, off);
    if (!q2_file_pwrite(s, 60, 12, hdr, error) || !q2_file_flush(s, error))
        return FALSE;

    guint64 old_off = s->snapshots_offset, old_size = s->snapshots_size;
    s->snapshots_offset = off;
    s->snapshots_size = size;
    if (old_size && !q2_free_clusters(s, old_off, old_size, QCOW2_DISCARD_SNAPSHOT, error))
        return FALSE;
    return TRUE;
}

static int find_snapshot(Qcow2State *s, const char *id_or_name)
{
    for (guint32 i = 0; i < s->nb_snapshots; i++) {
        if (!strcmp(s->snapshots[i].id, id_or_name))
            return (int)i;
    }
    for (guint32 i = 0; i < s->nb_snapshots; i++) {
        if (!strcmp(s->snapshots[i].name, id_or_name))
            return (int)i;
    }
    return -1;
}

static char *new_snapshot_id(Qcow2State *s)
{
    guint64 max = 0;

    for (guint32 i = 0; i < s->nb_snapshots; i++) {
        guint64 v = g_ascii_strtoull(s->snapshots[i].id, NULL, 10);
        max = MAX(max, v);
    }
    return g_strdup_printf("%" G_GUINT64_FORMAT, max + 1);
}

static gboolean refuse_with_data_file(Qcow2State *s, GError **error)
{
    if (q2_has_data_file(s)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%s: internal snapshots are not supported with an external data file",
                    s->bs->filename);
        return FALSE;
    }
    return TRUE;
}

gboolean q2_snapshot_create(Qcow2State *s, const VmmSnapshotInfo *info, GError **error)
{
    Qcow2Snapshot sn;
    guint64 l1_off;

    if (!refuse_with_data_file(s, error))
        return FALSE;
    if (s->nb_snapshots >= QCOW2_MAX_SNAPSHOTS) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG, "%s: too many snapshots", s->bs->filename);
        return FALSE;
    }
    if (info->id && *info->id) {
        for (guint32 i = 0; i < s->nb_snapshots; i++) {
            if (!strcmp(s->snapshots[i].id, info->id)) {
                g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                            "%s: a snapshot with ID '%s' already exists", s->bs->filename, info->id);
                return FALSE;
            }
        }
    }
    if ((info->id && strlen(info->id) > 0xffff) || (info->name && strlen(info->name) > 0xffff)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: snapshot ID or name too long", s->bs->filename);
        return FALSE;
    }
    memset(&sn, 0, sizeof(sn));
    sn.id = info->id && *info->id ? g_strdup(info->id) : new_snapshot_id(s);
    sn.name = g_strdup(info->name ? info->name : "");
    sn.l1_size = s->l1_size;
    sn.vm_state_size = info->vm_state_size;
    sn.vm_clock_nsec = info->vm_clock_nsec;
    sn.icount = info->icount;
    sn.disk_size = s->bs->size;
    sn.has_disk_size = sn.has_icount = TRUE;
    if (info->date_sec || info->date_nsec) {
        sn.date_sec = (guint32)info->date_sec;
        sn.date_nsec = (guint32)info->date_nsec;
    } else {
        gint64 now = g_get_real_time();
        sn.date_sec = (guint32)(now / G_USEC_PER_SEC);
        sn.date_nsec = (guint32)(now % G_USEC_PER_SEC) * 1000;
    }

    /* A copy of the active L1 table, then one more reference to everything
     * it names (which also clears their COPIED flags). */
    if (!q2_flush_metadata(s, error))
        goto fail;
    l1_off = 0;
    if (s->l1_size) {
        g_autofree guint64 *l1 = g_new(guint64, s->l1_size);
        for (guint32 i = 0; i < s->l1_size; i++)
            l1[i] = GUINT64_TO_BE(s->l1_table[i]);
        if (!q2_alloc_clusters(s, (guint64)s->l1_size * 8, &l1_off, error) ||
            !q2_file_pwrite(s, l1_off, (guint64)s->l1_size * 8, l1, error))
            goto fail;
    }
    sn.l1_table_offset = l1_off;
    if (!q2_update_snapshot_refcount(s, s->l1_table_offset, s->l1_size, 1, error) ||
        !q2_flush_metadata(s, error))
        goto fail;

    Qcow2Snapshot *all = g_new0(Qcow2Snapshot, s->nb_snapshots + 1);
    memcpy(all, s->snapshots, sizeof(Qcow2Snapshot) * s->nb_snapshots);
    all[s->nb_snapshots] = sn;
    if (!write_snapshots(s, all, s->nb_snapshots + 1, error)) {
        g_free(all);
        goto fail;
    }
    g_free(s->snapshots);
    s->snapshots = all;
    s->nb_snapshots++;
    return q2_flush_metadata(s, error);
fail:
    clear_snapshot(&sn);
    return FALSE;
}

gboolean q2_snapshot_goto(Qcow2State *s, const char *id_or_name, GError **error)
{
    int i = find_snapshot(s, id_or_name);

    if (i < 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_NOT_FOUND, "%s: no snapshot with ID or name '%s'",
                    s->bs->filename, id_or_name);
        return FALSE;
    }
    Qcow2Snapshot *sn = &s->snapshots[i];
    if (!refuse_with_data_file(s, error))
        return FALSE;
    if (!q2_grow_l1_table(s, sn->l1_size, TRUE, error))
        return FALSE;
    guint32 cur = s->l1_size;
    g_autofree guint64 *l1 = g_new0(guint64, cur ? cur : 1);
    if (sn->l1_size &&
        !q2_file_pread(s, sn->l1_table_offset, (guint64)sn->l1_size * 8, l1, "snapshot L1 table", error))
        return FALSE;
    for (guint32 k = 0; k < cur; k++)
        l1[k] = GUINT64_FROM_BE(l1[k]);

    /* References for what the snapshot names, then the switch, then the old
     * active table's references go. */
    if (!q2_update_snapshot_refcount(s, sn->l1_table_offset, sn->l1_size, 1, error) ||
        !q2_flush_metadata(s, error))
        return FALSE;
    g_autofree guint64 *old = g_memdup2(s->l1_table, (gsize)cur * 8);
    g_autofree guint64 *be = g_new(guint64, cur ? cur : 1);
    for (guint32 k = 0; k < cur; k++)
        be[k] = GUINT64_TO_BE(l1[k]);
    if (cur && (!q2_file_pwrite(s, s->l1_table_offset, (guint64)cur * 8, be, error) ||
                !q2_file_flush(s, error)))
        return FALSE;
    memcpy(s->l1_table, l1, (gsize)cur * 8);

    /* The old table's L2 tables are reached through a scratch copy. */
    guint64 tmp_off = 0;
    if (cur) {
        for (guint32 k = 0; k < cur; k++)
            be[k] = GUINT64_TO_BE(old[k]);
        if (!q2_alloc_clusters(s, (guint64)cur * 8, &tmp_off, error) ||
            !q2_file_pwrite(s, tmp_off, (guint64)cur * 8, be, error) ||
            !q2_update_snapshot_refcount(s, tmp_off, cur, -1, error) ||
            !q2_free_clusters(s, tmp_off, (guint64)cur * 8, QCOW2_DISCARD_NEVER, error))
            return FALSE;
    }
    if (!q2_update_snapshot_refcount(s, s->l1_table_offset, cur, 0, error))
        return FALSE;
    if (sn->disk_size != s->bs->size) {
        guint8 b[8];
        put_be64(b, sn->disk_size);
        if (!q2_file_pwrite(s, 24, 8, b, error))
            return FALSE;
        s->bs->size = sn->disk_size;
    }
    return q2_flush_metadata(s, error);
}

gboolean q2_snapshot_delete(Qcow2State *s, const char *id_or_name, GError **error)
{
    int i = find_snapshot(s, id_or_name);

    if (i < 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_NOT_FOUND, "%s: no snapshot with ID or name '%s'",
                    s->bs->filename, id_or_name);
        return FALSE;
    }
    Qcow2Snapshot sn = s->snapshots[i];
    Qcow2Snapshot *rest = g_new0(Qcow2Snapshot, s->nb_snapshots);
    guint32 n = 0;

    for (guint32 k = 0; k < s->nb_snapshots; k++) {
        if ((int)k != i)
            rest[n++] = s->snapshots[k];
    }
    if (!q2_flush_metadata(s, error) || !write_snapshots(s, rest, n, error)) {
        g_free(rest);
        return FALSE;
    }
    g_free(s->snapshots);
    s->snapshots = rest;
    s->nb_snapshots = n;

    gboolean ok = q2_update_snapshot_refcount(s, sn.l1_table_offset, sn.l1_size, -1, error) &&
                  (!sn.l1_size || q2_free_clusters(s, sn.l1_table_offset, (guint64)sn.l1_size * 8,
                                                   QCOW2_DISCARD_SNAPSHOT, error)) &&
                  q2_update_snapshot_refcount(s, s->l1_table_offset, s->l1_size, 0, error) &&
                  q2_flush_metadata(s, error);
    clear_snapshot(&sn);
    return ok;
}

static void free_info(gpointer p)
{
    VmmSnapshotInfo *i = p;
    g_free(i->id);
    g_free(i->name);
    g_free(i);
}

GPtrArray *q2_snapshot_list(Qcow2State *s)
{
    GPtrArray *a = g_ptr_array_new_with_free_func(free_info);

    for (guint32 k = 0; k < s->nb_snapshots; k++) {
        Qcow2Snapshot *sn = &s->snapshots[k];
        VmmSnapshotInfo *i = g_new0(VmmSnapshotInfo, 1);
        i->id = g_strdup(sn->id);
        i->name = g_strdup(sn->name);
        i->vm_state_size = sn->vm_state_size;
        i->date_sec = sn->date_sec;
        i->date_nsec = sn->date_nsec;
        i->vm_clock_nsec = sn->vm_clock_nsec;
        i->icount = sn->has_icount ? sn->icount : G_MAXUINT64;
        g_ptr_array_add(a, i);
    }
    return a;
}
