/* qcow2 guest cluster mapping: L1/L2 lookup, allocating writes with
 * copy-on-write of partial (sub)clusters, zero clusters and subclusters,
 * discard, compressed clusters (zlib and zstd) and block status. */
#include "blockd/qcow2.h"
#include "common/bytes.h"
#include "common/error.h"
#include <string.h>
#include <zlib.h>
#include <zstd.h>

guint64 q2_l2_get(const Qcow2State *s, const guint8 *table, guint64 idx)
{
    return get_be64(table + (idx << s->l2_entry_shift));
}

guint64 q2_l2_get_bitmap(const Qcow2State *s, const guint8 *table, guint64 idx)
{
    return s->extended_l2 ? get_be64(table + (idx << s->l2_entry_shift) + 8) : 0;
}

void q2_l2_set(const Qcow2State *s, guint8 *table, guint64 idx, guint64 entry)
{
    put_be64(table + (idx << s->l2_entry_shift), entry);
}

void q2_l2_set_bitmap(const Qcow2State *s, guint8 *table, guint64 idx, guint64 bitmap)
{
    if (s->extended_l2)
        put_be64(table + (idx << s->l2_entry_shift) + 8, bitmap);
}

static gboolean entry_has_host(const Qcow2State *s, guint64 entry)
{
    return (entry & L2E_OFFSET_MASK) || (q2_has_data_file(s) && (entry & QCOW_OFLAG_COPIED));
}

Qcow2SubclusterType q2_subcluster_type(const Qcow2State *s, guint64 entry, guint64 bitmap, int sc)
{
    gboolean host = entry_has_host(s, entry);

    if (entry & QCOW_OFLAG_COMPRESSED)
        return QCOW2_SC_COMPRESSED;
    if (!s->extended_l2) {
        if (entry & QCOW_OFLAG_ZERO)
            return (entry & L2E_OFFSET_MASK) ? QCOW2_SC_ZERO_ALLOC : QCOW2_SC_ZERO_PLAIN;
        return host ? QCOW2_SC_NORMAL : QCOW2_SC_UNALLOCATED_PLAIN;
    }
    gboolean alloc = (bitmap >> sc) & 1, zero = (bitmap >> (32 + sc)) & 1;
    if (alloc && zero)
        return QCOW2_SC_INVALID;
    if (alloc)
        return host ? QCOW2_SC_NORMAL : QCOW2_SC_INVALID;
    if (zero)
        return host ? QCOW2_SC_ZERO_ALLOC : QCOW2_SC_ZERO_PLAIN;
    return host ? QCOW2_SC_UNALLOCATED_ALLOC : QCOW2_SC_UNALLOCATED_PLAIN;
}

void q2_compressed_range(const Qcow2State *s, guint64 entry, guint64 *coffset, guint64 *csize)
{
    guint64 nb_sectors = ((entry >> s->csize_shift) & s->csize_mask) + 1;

    *coffset = entry & s->cluster_offset_mask;
    *csize = nb_sectors * QCOW2_COMPRESSED_SECTOR - (*coffset & (QCOW2_COMPRESSED_SECTOR - 1));
}

static gboolean type_has_host(Qcow2SubclusterType t)
{
    return t == QCOW2_SC_NORMAL || t == QCOW2_SC_ZERO_ALLOC || t == QCOW2_SC_UNALLOCATED_ALLOC;
}

/* ---- L2 tables ---- */

static gboolean check_l2_offset(Qcow2State *s, guint64 l1_index, guint64 l2_off, GError **error)
{
    if (q2_offset_into_cluster(s, l2_off))
        return q2_signal_corruption(s, error, "L2 table offset 0x%" G_GINT64_MODIFIER
                                    "x unaligned (L1 index 0x%" G_GINT64_MODIFIER "x)",
                                    l2_off, l1_index);
    if (l2_off < s->cluster_size)
        return q2_signal_corruption(s, error, "L2 table offset 0x%" G_GINT64_MODIFIER
                                    "x overlaps the header (L1 index 0x%" G_GINT64_MODIFIER "x)",
                                    l2_off, l1_index);
    return TRUE;
}

gboolean q2_get_l2_table(Qcow2State *s, guint64 offset, gboolean alloc, guint8 **table,
                         GError **error)
{
    guint64 idx = q2_l1_index(s, offset), old, new_off;
    guint8 *l2;

    *table = NULL;
    if (idx >= s->l1_size) {
        if (!alloc)
            return TRUE;
        if (!q2_grow_l1_table(s, idx + 1, FALSE, error))
            return FALSE;
    }
    old = s->l1_table[idx] & L1E_OFFSET_MASK;
    if (old && !check_l2_offset(s, idx, old, error))
        return FALSE;
    if (old && (!alloc || (s->l1_table[idx] & QCOW_OFLAG_COPIED)))
        return q2_cache_get(s, s->l2_cache, old, table, error);
    if (!alloc)
        return TRUE;

    /* A new table, or a private copy of one a snapshot shares. */
    if (!q2_alloc_clusters(s, s->cluster_size, &new_off, error))
        return FALSE;
    if (!q2_cache_get_empty(s, s->l2_cache, new_off, &l2, error))
        return FALSE;
    if (old) {
        guint8 *src;
        if (!q2_cache_get(s, s->l2_cache, old, &src, error)) {
            q2_cache_put(s->l2_cache, l2);
            return FALSE;
        }
        memcpy(l2, src, s->cluster_size);
        q2_cache_put(s->l2_cache, src);
    } else {
        memset(l2, 0, s->cluster_size);
    }
    q2_cache_mark_dirty(s->l2_cache, l2);
    /* The table (after the refcounts that make it ours) before the L1 entry. */
    if (!q2_cache_set_dependency(s, s->l2_cache, s->refcount_cache, error) ||
        !q2_cache_flush(s, s->l2_cache, error)) {
        q2_cache_put(s->l2_cache, l2);
        return FALSE;
    }
    s->l1_table[idx] = new_off | QCOW_OFLAG_COPIED;
    if (!q2_write_l1_entry(s, idx, error)) {
        q2_cache_put(s->l2_cache, l2);
        return FALSE;
    }
    if (old && !q2_free_clusters(s, old, s->cluster_size, QCOW2_DISCARD_OTHER, error)) {
        q2_cache_put(s->l2_cache, l2);
        return FALSE;
    }
    *table = l2;
    return TRUE;
}

/* ---- lookup ---- */

static gboolean same_kind(const Qcow2State *s, Qcow2SubclusterType t0, guint64 e0,
                          Qcow2SubclusterType t, guint64 e)
{
    if (t != t0)
        return FALSE;
    return (e0 & QCOW_OFLAG_COPIED) == (e & QCOW_OFLAG_COPIED);
}

gboolean q2_get_host_offset(Qcow2State *s, guint64 offset, guint64 *bytes, guint64 *host,
                            Qcow2SubclusterType *type, guint64 *l2_entry, GError **error)
{
    guint64 in_cluster = q2_offset_into_cluster(s, offset);
    guint64 l2_cover = s->cluster_size << s->l2_bits;
    guint64 max = MIN(*bytes, l2_cover - (offset & (l2_cover - 1)));
    guint64 idx = q2_l1_index(s, offset), l2_off, l2_index, e, bm, count;
    guint8 *l2;
    int sc;

    *host = 0;
    *l2_entry = 0;
    *type = QCOW2_SC_UNALLOCATED_PLAIN;
    l2_off = idx < s->l1_size ? (s->l1_table[idx] & L1E_OFFSET_MASK) : 0;
    if (!l2_off) {
        *bytes = max;
        return TRUE;
    }
    if (!check_l2_offset(s, idx, l2_off, error))
        return FALSE;
    if (!q2_cache_get(s, s->l2_cache, l2_off, &l2, error))
        return FALSE;

    l2_index = q2_l2_index(s, offset);
    e = q2_l2_get(s, l2, l2_index);
    bm = q2_l2_get_bitmap(s, l2, l2_index);
    sc = (int)(in_cluster >> s->subcluster_bits);
    *type = q2_subcluster_type(s, e, bm, sc);
    *l2_entry = e;

    if (*type == QCOW2_SC_INVALID) {
        q2_cache_put(s->l2_cache, l2);
        return q2_signal_corruption(s, error, "invalid L2 entry 0x%" G_GINT64_MODIFIER "x bitmap 0x%"
                                    G_GINT64_MODIFIER "x for guest offset 0x%" G_GINT64_MODIFIER "x",
                                    e, bm, offset);
    }
    if (type_has_host(*type) || *type == QCOW2_SC_COMPRESSED) {
        guint64 hc = e & L2E_OFFSET_MASK;
        if (*type != QCOW2_SC_COMPRESSED && q2_offset_into_cluster(s, hc)) {
            q2_cache_put(s->l2_cache, l2);
            return q2_signal_corruption(s, error, "cluster allocation offset 0x%" G_GINT64_MODIFIER
                                        "x unaligned (L2 offset 0x%" G_GINT64_MODIFIER
                                        "x, L2 index 0x%" G_GINT64_MODIFIER "x)",
                                        hc, l2_off, l2_index);
        }
        if (*type != QCOW2_SC_COMPRESSED)
            *host = hc + in_cluster;
    }
    if (*type == QCOW2_SC_COMPRESSED) {
        count = s->cluster_size - in_cluster;
    } else {
        /* Extend over the subclusters and clusters that read the same way. */
        int k = sc + 1;
        guint64 expect = (e & L2E_OFFSET_MASK) + s->cluster_size;
        count = 0;
        while (k < s->subclusters && q2_subcluster_type(s, e, bm, k) == *type)
            k++;
        count = ((guint64)k << s->subcluster_bits) - in_cluster;
        if (k == s->subclusters) {
            for (guint64 j = l2_index + 1; j < s->l2_size && count < max; j++) {
                guint64 e2 = q2_l2_get(s, l2, j), bm2 = q2_l2_get_bitmap(s, l2, j);
                Qcow2SubclusterType t2;
                int m = 0;
                t2 = q2_subcluster_type(s, e2, bm2, 0);
                if (!same_kind(s, *type, e, t2, e2))
                    break;
                if (type_has_host(*type) && (e2 & L2E_OFFSET_MASK) != expect)
                    break;
                while (m < s->subclusters && q2_subcluster_type(s, e2, bm2, m) == t2)
                    m++;
                count += (guint64)m << s->subcluster_bits;
                expect += s->cluster_size;
                if (m < s->subclusters)
                    break;
            }
        }
    }
    q2_cache_put(s->l2_cache, l2);
    *bytes = MIN(max, count);
    return TRUE;
}

/* ---- compression ---- */

gssize q2_compress(Qcow2State *s, guint8 *dst, gsize dst_len, const guint8 *src, gsize src_len)
{
    if (s->compression_type == QCOW2_COMPRESSION_ZSTD) {
        size_t r = ZSTD_compress(dst, dst_len, src, src_len, ZSTD_CLEVEL_DEFAULT);
        return ZSTD_isError(r) ? -1 : (gssize)r;
    }
    z_stream strm;
    gssize ret;

    memset(&strm, 0, sizeof(strm));
    /* Raw deflate with a 4 KiB window, as QEMU writes it. */
    if (deflateInit2(&strm, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return -1;
    strm.next_in = (Bytef *)src;
    strm.avail_in = (uInt)src_len;
    strm.next_out = dst;
    strm.avail_out = (uInt)dst_len;
    ret = deflate(&strm, Z_FINISH) == Z_STREAM_END ? (gssize)(dst_len - strm.avail_out) : -1;
    deflateEnd(&strm);
    return ret;
}

gboolean q2_decompress(Qcow2State *s, guint8 *dst, gsize dst_len, const guint8 *src, gsize src_len)
{
    if (s->compression_type == QCOW2_COMPRESSION_ZSTD) {
        ZSTD_DCtx *dctx = ZSTD_createDCtx();
        ZSTD_inBuffer in = { src, src_len, 0 };
        ZSTD_outBuffer out = { dst, dst_len, 0 };
        gboolean ok = TRUE;

        if (!dctx)
            return FALSE;
        /* The data may be followed by padding: stop when the cluster is full. */
        while (out.pos < out.size) {
            size_t r = ZSTD_decompressStream(dctx, &out, &in);
            if (ZSTD_isError(r)) {
                ok = FALSE;
                break;
            }
            if (out.pos == out.size)
                break;
            if (r == 0 || in.pos == in.size) {
                ok = FALSE; /* the frame ended short of a cluster */
                break;
            }
        }
        ZSTD_freeDCtx(dctx);
        return ok;
    }
    z_stream strm;
    int r;

    memset(&strm, 0, sizeof(strm));
    if (inflateInit2(&strm, -12) != Z_OK)
        return FALSE;
    strm.next_in = (Bytef *)src;
    strm.avail_in = (uInt)src_len;
    strm.next_out = dst;
    strm.avail_out = (uInt)dst_len;
    r = inflate(&strm, Z_FINISH);
    inflateEnd(&strm);
    /* Z_BUF_ERROR with a full output: the padding after the stream. */
    return (r == Z_STREAM_END || r == Z_BUF_ERROR) && strm.avail_out == 0;
}

static gboolean read_compressed(Qcow2State *s, guint64 entry, guint64 in_cluster, guint64 n,
                                guint8 *buf, GError **error)
{
    guint64 coff, csize;
    g_autofree guint8 *cbuf = NULL, *out = NULL;

    q2_compressed_range(s, entry, &coff, &csize);
    if (csize > 2 * s->cluster_size + QCOW2_COMPRESSED_SECTOR)
        return q2_signal_corruption(s, error, "compressed cluster at 0x%" G_GINT64_MODIFIER
                                    "x is %" G_GUINT64_FORMAT " bytes, too large", coff, csize);
    cbuf = g_malloc(csize);
    out = g_malloc(s->cluster_size);
    if (!q2_file_pread(s, coff, csize, cbuf, "compressed cluster", error))
        return FALSE;
    if (!q2_decompress(s, out, s->cluster_size, cbuf, csize)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: compressed cluster at host offset 0x%" G_GINT64_MODIFIER
                    "x does not decompress (%s)", s->bs->filename, coff,
                    s->compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib");
        return FALSE;
    }
    memcpy(buf, out + in_cluster, n);
    return TRUE;
}

/* ---- read ---- */

static gboolean read_backing(Qcow2State *s, guint64 offset, guint64 n, guint8 *buf, GError **error)
{
    VmmBlockDev *backing = s->bs->backing;
    guint64 bsize, part = 0;

    if (backing) {
        bsize = vmm_block_size(backing);
        if (offset < bsize) {
            part = MIN(n, bsize - offset);
            if (!vmm_block_pread(backing, offset, part, buf, error))
                return FALSE;
        }
    }
    memset(buf + part, 0, n - part);
    return TRUE;
}

static gboolean maybe_clean_caches(Qcow2State *s);

gboolean q2_preadv(Qcow2State *s, guint64 offset, guint64 bytes, guint8 *buf, GError **error)
{
    while (bytes) {
        guint64 n = bytes, host, entry;
        Qcow2SubclusterType type;
        gboolean ok;

        g_mutex_lock(&s->lock);
        maybe_clean_caches(s);
        ok = q2_get_host_offset(s, offset, &n, &host, &type, &entry, error);
        g_mutex_unlock(&s->lock);
        if (!ok)
            return FALSE;
        switch (type) {
        case QCOW2_SC_UNALLOCATED_PLAIN:
        case QCOW2_SC_UNALLOCATED_ALLOC:
            if (!read_backing(s, offset, n, buf, error))
                return FALSE;
            break;
        case QCOW2_SC_ZERO_PLAIN:
        case QCOW2_SC_ZERO_ALLOC:
            memset(buf, 0, n);
            break;
        case QCOW2_SC_NORMAL:
            if (!vmm_block_pread(s->data_file, host, n, buf, error))
                return FALSE;
            break;
        case QCOW2_SC_COMPRESSED:
            if (!read_compressed(s, entry, q2_offset_into_cluster(s, offset), n, buf, error))
                return FALSE;
            break;
        default:
            g_assert_not_reached();
        }
        offset += n;
        buf += n;
        bytes -= n;
    }
    return TRUE;
}

/* ---- in-flight allocations ---- */

static gboolean inflight_overlaps(Qcow2State *s, guint64 first, guint64 n)
{
    for (guint i = 0; i < s->inflight->len; i++) {
        Qcow2InFlight *f = g_ptr_array_index(s->inflight, i);
        if (first < f->first_cluster + f->nb_clusters && f->first_cluster < first + n)
            return TRUE;
    }
    return FALSE;
}

/* Waits (dropping the lock) until no allocating write covers the clusters of
 * [OFFSET, OFFSET+BYTES). Returns TRUE if it had to wait. */
static gboolean wait_inflight(Qcow2State *s, guint64 offset, guint64 bytes)
{
    guint64 first = offset >> s->cluster_bits;
    guint64 n = q2_size_to_clusters(s, offset + bytes) - first;
    gboolean waited = FALSE;

    while (inflight_overlaps(s, first, n)) {
        g_cond_wait(&s->alloc_cond, &s->lock);
        waited = TRUE;
    }
    return waited;
}

static Qcow2InFlight *inflight_add(Qcow2State *s, guint64 first, guint64 n)
{
    Qcow2InFlight *f = g_new(Qcow2InFlight, 1);

    f->first_cluster = first;
    f->nb_clusters = n;
    g_ptr_array_add(s->inflight, f);
    return f;
}

static void inflight_remove(Qcow2State *s, Qcow2InFlight *f)
{
    g_ptr_array_remove_fast(s->inflight, f);
    g_free(f);
    g_cond_broadcast(&s->alloc_cond);
}

/* ---- write ---- */

typedef struct {
    guint64 old_entry, old_bitmap;
    guint64 new_bitmap;
    guint64 ws, we;              /* written bytes within the cluster */
    guint64 keep_mask;           /* subclusters whose old data must be copied */
} ClusterPlan;

typedef struct {
    guint64 guest;               /* first guest cluster offset */
    guint64 n;                   /* clusters */
    guint64 host;                /* first host cluster */
    gboolean new_host;           /* host clusters were allocated for this write */
    ClusterPlan *c;
} AllocRun;

static guint64 sc_mask_range(int from, int to) /* [from, to) */
{
    if (to <= from)
        return 0;
    guint64 bits = (to - from) >= 64 ? ~0ull : ((1ull << (to - from)) - 1);
    return (bits << from) & 0xffffffffull;
}

/* Which subclusters the cluster holds after the write, and which of them need
 * old content copied. Without extended L2 the cluster is one subcluster. */
static void plan_cluster(Qcow2State *s, ClusterPlan *p, gboolean new_host)
{
    int first = (int)(p->ws >> s->subcluster_bits);
    int last = (int)((p->we - 1) >> s->subcluster_bits) + 1;
    guint64 written = s->extended_l2 ? sc_mask_range(first, last) : 1;
    guint64 old_alloc = 0, old_zero = 0;

    if (!s->extended_l2) {
        p->new_bitmap = 0;
        p->keep_mask = 0;
        return;
    }
    if (p->old_entry & QCOW_OFLAG_COMPRESSED) {
        old_alloc = 0xffffffffull;
    } else {
        old_alloc = p->old_bitmap & L2_BITMAP_ALLOC_MASK;
        old_zero = (p->old_bitmap & L2_BITMAP_ZERO_MASK) >> 32;
    }
    /* A new host cluster must carry the old data of the other subclusters. */
    p->keep_mask = new_host ? (old_alloc & ~written) : 0;
    guint64 alloc = written | old_alloc;
    p->new_bitmap = alloc | ((old_zero & ~alloc) << 32);
}

/* Host clusters allocated for this write hold nothing yet: the protocol
 * driver may reserve them as one extent before the data goes in. */
static int new_cluster_flags(const AllocRun *run)
{
    return run->new_host ? VMM_BDRV_REQ_ALLOCATE : 0;
}

/* Reads the guest range of the cluster at GUEST into BUF at [A, B). */
static gboolean fill_cow(Qcow2State *s, guint64 guest, guint64 a, guint64 b, guint8 *buf,
                         GError **error)
{
    if (b <= a)
        return TRUE;
    return q2_preadv(s, guest + a, b - a, buf + a, error);
}

/* Writes cluster I of RUN through a bounce buffer: data, copy-on-write parts,
 * and only the subclusters that hold data afterwards. */
static gboolean write_cluster_bounced(Qcow2State *s, AllocRun *run, guint64 i, const guint8 *data,
                                      guint64 data_guest, gboolean *cow, GError **error)
{
    ClusterPlan *p = &run->c[i];
    guint64 guest = run->guest + (i << s->cluster_bits);
    guint64 host = run->host + (i << s->cluster_bits);
    guint64 scs = s->subcluster_size, cs = s->cluster_size;
    g_autofree guint8 *b = g_malloc(cs);
    guint64 lo = p->ws - (p->ws & (scs - 1));
    guint64 hi = MIN(cs, (p->we + scs - 1) & ~(scs - 1));

    if (!s->extended_l2) {
        lo = 0;
        hi = cs;
    }
    if (lo < p->ws || p->we < hi)
        *cow = TRUE;
    if (!fill_cow(s, guest, lo, p->ws, b, error) || !fill_cow(s, guest, p->we, hi, b, error))
        return FALSE;
    memcpy(b + p->ws, data + (guest + p->ws - data_guest), p->we - p->ws);
    if (!vmm_block_pwrite(s->data_file, host + lo, hi - lo, b + lo, new_cluster_flags(run), error))
        return FALSE;
    /* Old subclusters a snapshot or a compressed cluster still holds. */
    for (int k = 0; k < s->subclusters; k++) {
        if (!((p->keep_mask >> k) & 1))
            continue;
        int e = k;
        while (e + 1 < s->subclusters && ((p->keep_mask >> (e + 1)) & 1))
            e++;
        guint64 a = (guint64)k * scs, z = (guint64)(e + 1) * scs;
        *cow = TRUE;
        if (!fill_cow(s, guest, a, z, b, error) ||
            !vmm_block_pwrite(s->data_file, host + a, z - a, b + a, 0, error))
            return FALSE;
        k = e;
    }
    return TRUE;
}

static gboolean cluster_is_simple(Qcow2State *s, const ClusterPlan *p)
{
    guint64 scs = s->subcluster_size;

    if (p->keep_mask)
        return FALSE;
    if (!s->extended_l2)
        return p->ws == 0 && p->we == s->cluster_size;
    return (p->ws & (scs - 1)) == 0 && (p->we & (scs - 1)) == 0;
}

/* Writes the data of RUN: stretches of wholly written (sub)clusters straight
 * from DATA, the others through a bounce buffer with their copy-on-write. */
static gboolean write_run_data(Qcow2State *s, AllocRun *run, guint64 offset, const guint8 *data,
                               gboolean *cow, GError **error)
{
    guint64 i0 = 0;

    *cow = FALSE;
    for (guint64 i = 0; i <= run->n; i++) {
        if (i < run->n && cluster_is_simple(s, &run->c[i]))
            continue;
        if (i0 < i) {
            guint64 gs = run->guest + (i0 << s->cluster_bits) + run->c[i0].ws;
            guint64 ge = run->guest + ((i - 1) << s->cluster_bits) + run->c[i - 1].we;
            if (!vmm_block_pwrite(s->data_file, run->host + (gs - run->guest), ge - gs,
                                  data + (gs - offset), new_cluster_flags(run), error))
                return FALSE;
        }
        if (i < run->n && !write_cluster_bounced(s, run, i, data, offset, cow, error))
            return FALSE;
        i0 = i + 1;
    }
    return TRUE;
}

/* Updates the L2 entries of RUN after its data is written. */
static gboolean link_run(Qcow2State *s, AllocRun *run, gboolean cow, GError **error)
{
    guint8 *l2;
    guint64 l2_index = q2_l2_index(s, run->guest);

    if (!q2_get_l2_table(s, run->guest, TRUE, &l2, error))
        return FALSE;
    if (!s->lazy_refcounts && !q2_has_data_file(s) &&
        !q2_cache_set_dependency(s, s->l2_cache, s->refcount_cache, error)) {
        q2_cache_put(s->l2_cache, l2);
        return FALSE;
    }
    /* Copied data reaches the disk before the entry that exposes it. */
    if (cow)
        q2_cache_depends_on_flush(s->l2_cache);
    g_autofree guint64 *old = g_new(guint64, run->n);
    for (guint64 i = 0; i < run->n; i++) {
        guint64 host = run->host + (i << s->cluster_bits);
        old[i] = q2_l2_get(s, l2, l2_index + i);
        q2_l2_set(s, l2, l2_index + i, host | QCOW_OFLAG_COPIED);
        q2_l2_set_bitmap(s, l2, l2_index + i, run->c[i].new_bitmap);
    }
    q2_cache_mark_dirty(s->l2_cache, l2);
    q2_cache_put(s->l2_cache, l2);
    if (!run->new_host)
        return TRUE;
    for (guint64 i = 0; i < run->n; i++) {
        if (!q2_free_any_cluster(s, old[i], QCOW2_DISCARD_NEVER, error))
            return FALSE;
    }
    return TRUE;
}

typedef enum { CL_DIRECT, CL_INPLACE, CL_NEWALLOC } ClusterClass;

static ClusterClass classify(Qcow2State *s, guint64 e, guint64 bm, guint64 ws, guint64 we)
{
    gboolean mine = q2_has_data_file(s) ? entry_has_host(s, e)
                                        : ((e & QCOW_OFLAG_COPIED) && (e & L2E_OFFSET_MASK));

    if ((e & QCOW_OFLAG_COMPRESSED) || !mine)
        return CL_NEWALLOC;
    if (!s->extended_l2)
        return (e & QCOW_OFLAG_ZERO) ? CL_INPLACE : CL_DIRECT;
    int first = (int)(ws >> s->subcluster_bits), last = (int)((we - 1) >> s->subcluster_bits) + 1;
    guint64 want = sc_mask_range(first, last);
    return (bm & want) == want ? CL_DIRECT : CL_INPLACE;
}

/* Plans and runs the allocation for the clusters from OFFSET: up to BYTES,
 * the same L2 table, and clusters that all need it. Lock held on entry and
 * exit; dropped during data I/O. *DONE gets the bytes written; 0 means the
 * caller must look again (we waited for another writer). */
static gboolean allocating_write(Qcow2State *s, guint64 offset, guint64 bytes, const guint8 *data,
                                 ClusterClass first_class, guint64 *done, GError **error)
{
    guint64 cs = s->cluster_size, guest0 = q2_start_of_cluster(s, offset);
    guint64 l2_cover = cs << s->l2_bits;
    guint64 limit = MIN(offset + bytes, (guest0 & ~(l2_cover - 1)) + l2_cover);
    guint8 *l2;
    AllocRun run = { .guest = guest0 };
    guint64 n = 0, end;
    gboolean cow = FALSE, ok;

    *done = 0;
    if (wait_inflight(s, offset, 1))
        return TRUE;
    if (!q2_get_l2_table(s, offset, TRUE, &l2, error))
        return FALSE;
    guint64 idx0 = q2_l2_index(s, guest0);
    guint64 max_n = q2_size_to_clusters(s, limit) - (guest0 >> s->cluster_bits);
    if (first_class == CL_INPLACE)
        max_n = 1;
    run.c = g_new0(ClusterPlan, max_n);
    for (n = 0; n < max_n; n++) {
        guint64 cg = guest0 + (n << s->cluster_bits);
        guint64 ws = n == 0 ? offset - guest0 : 0;
        guint64 we = MIN(cs, limit - cg);
        guint64 e = q2_l2_get(s, l2, idx0 + n), bm = q2_l2_get_bitmap(s, l2, idx0 + n);
        gboolean old_data = s->extended_l2 &&
            ((bm & L2_BITMAP_ALLOC_MASK) || (e & QCOW_OFLAG_COMPRESSED));

        /* Clusters after the first: new allocations without old subclusters
         * to carry over, which nobody else is filling. */
        if (n > 0 && (classify(s, e, bm, ws, we) != CL_NEWALLOC || old_data ||
                      inflight_overlaps(s, cg >> s->cluster_bits, 1)))
            break;
        run.c[n] = (ClusterPlan){ .old_entry = e, .old_bitmap = bm, .ws = ws, .we = we };
        if (we < cs || (n == 0 && old_data)) {
            n++;
            break;
        }
    }
    q2_cache_put(s->l2_cache, l2);
    run.n = n;
    end = MIN(limit, guest0 + (n << s->cluster_bits));

    if (first_class == CL_INPLACE) {
        run.host = run.c[0].old_entry & L2E_OFFSET_MASK;
        if (q2_has_data_file(s))
            run.host = guest0;
        run.new_host = FALSE;
    } else if (q2_has_data_file(s)) {
        run.host = guest0;
        run.new_host = TRUE;
    } else {
        if (s->lazy_refcounts && !q2_mark_dirty(s, error)) {
            g_free(run.c);
            return FALSE;
        }
        if (!q2_alloc_clusters(s, n << s->cluster_bits, &run.host, error)) {
            g_free(run.c);
            return FALSE;
        }
        run.new_host = TRUE;
    }
    for (guint64 i = 0; i < n; i++)
        plan_cluster(s, &run.c[i], run.new_host);
    if (first_class == CL_INPLACE && !s->extended_l2) {
        /* ZERO_ALLOC: the rest of the cluster must read as zeroes. */
        run.c[0].new_bitmap = 0;
    }

    Qcow2InFlight *f = inflight_add(s, guest0 >> s->cluster_bits, n);
    g_mutex_unlock(&s->lock);
    ok = write_run_data(s, &run, offset, data, &cow, error);
    g_mutex_lock(&s->lock);
    if (ok)
        ok = link_run(s, &run, cow, error);
    else if (run.new_host && !q2_has_data_file(s))
        q2_free_clusters(s, run.host, n << s->cluster_bits, QCOW2_DISCARD_NEVER, NULL);
    inflight_remove(s, f);
    g_free(run.c);
    if (ok)
        *done = end - offset;
    return ok;
}

static gboolean maybe_clean_caches(Qcow2State *s)
{
    if (!s->cache_clean_interval)
        return TRUE;
    gint64 now = g_get_monotonic_time();
    if (now - s->last_clean_time >= (gint64)s->cache_clean_interval * G_USEC_PER_SEC) {
        q2_cache_clean_unused(s->l2_cache);
        q2_cache_clean_unused(s->refcount_cache);
        s->last_clean_time = now;
    }
    return TRUE;
}

gboolean q2_pwritev(Qcow2State *s, guint64 offset, guint64 bytes, const guint8 *buf, int flags,
                    GError **error)
{
    gboolean ok = TRUE;

    while (bytes && ok) {
        guint64 n = bytes, host, entry, done = 0;
        Qcow2SubclusterType type;
        ClusterClass cls;

        g_mutex_lock(&s->lock);
        maybe_clean_caches(s);
        ok = q2_get_host_offset(s, offset, &n, &host, &type, &entry, error);
        if (ok) {
            guint64 in_c = q2_offset_into_cluster(s, offset);
            if (type == QCOW2_SC_NORMAL &&
                (q2_has_data_file(s) || (entry & QCOW_OFLAG_COPIED))) {
                cls = CL_DIRECT;
            } else {
                guint8 *l2;
                guint64 bm = 0;
                ok = q2_get_l2_table(s, offset, FALSE, &l2, error);
                if (ok && l2) {
                    bm = q2_l2_get_bitmap(s, l2, q2_l2_index(s, offset));
                    q2_cache_put(s->l2_cache, l2);
                }
                cls = classify(s, entry, bm, in_c, MIN(s->cluster_size, in_c + bytes));
                if (cls == CL_DIRECT)
                    cls = CL_INPLACE; /* the first subcluster was not allocated */
            }
            if (ok && cls == CL_DIRECT) {
                g_mutex_unlock(&s->lock);
                ok = vmm_block_pwrite(s->data_file, host, n, buf, 0, error);
                done = n;
            } else if (ok) {
                ok = allocating_write(s, offset, bytes, buf, cls, &done, error);
                g_mutex_unlock(&s->lock);
            } else {
                g_mutex_unlock(&s->lock);
            }
        } else {
            g_mutex_unlock(&s->lock);
        }
        offset += done;
        buf += done;
        bytes -= done;
    }
    if (ok && (flags & VMM_BDRV_REQ_FUA)) {
        g_mutex_lock(&s->lock);
        ok = q2_flush_metadata(s, error);
        g_mutex_unlock(&s->lock);
    }
    return ok;
}

/* ---- zeroes and discard ---- */

/* TRUE if [OFFSET, OFFSET+BYTES) already reads as zeroes without backing data. */
static gboolean reads_as_zero(Qcow2State *s, guint64 offset, guint64 bytes, gboolean *zero,
                              GError **error)
{
    *zero = TRUE;
    while (bytes) {
        guint64 n = bytes, host, entry;
        Qcow2SubclusterType t;
        if (!q2_get_host_offset(s, offset, &n, &host, &t, &entry, error))
            return FALSE;
        if (t == QCOW2_SC_ZERO_PLAIN || t == QCOW2_SC_ZERO_ALLOC ||
            ((t == QCOW2_SC_UNALLOCATED_PLAIN || t == QCOW2_SC_UNALLOCATED_ALLOC) &&
             (!s->bs->backing || offset >= vmm_block_size(s->bs->backing)))) {
            offset += n;
            bytes -= n;
            continue;
        }
        *zero = FALSE;
        return TRUE;
    }
    return TRUE;
}

static gboolean write_zero_buffer(Qcow2State *s, guint64 offset, guint64 bytes, int flags,
                                  GError **error)
{
    gboolean zero;

    g_mutex_lock(&s->lock);
    gboolean ok = reads_as_zero(s, offset, bytes, &zero, error);
    g_mutex_unlock(&s->lock);
    if (!ok)
        return FALSE;
    if (zero)
        return TRUE;
    if (flags & VMM_BDRV_REQ_NO_FALLBACK) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%s: zeroing part of a cluster needs a write", s->bs->filename);
        return FALSE;
    }
    while (bytes) {
        guint64 n = MIN(bytes, 1u << 20);
        g_autofree guint8 *z = g_malloc0(n);
        if (!q2_pwritev(s, offset, n, z, 0, error))
            return FALSE;
        offset += n;
        bytes -= n;
    }
    return TRUE;
}

/* Sets whole clusters [OFFSET, OFFSET+BYTES) to zero or discards them, within
 * one L2 table. ZERO: make them read zero (else discard). */
static gboolean zero_or_discard_clusters(Qcow2State *s, guint64 offset, guint64 nb, gboolean zero,
                                         gboolean unmap, gboolean full, GError **error)
{
    guint8 *l2;
    guint64 idx = q2_l2_index(s, offset);
    Qcow2DiscardType dtype = QCOW2_DISCARD_REQUEST;

    guint64 l1i = q2_l1_index(s, offset);
    gboolean has_l2 = l1i < s->l1_size && (s->l1_table[l1i] & L1E_OFFSET_MASK);

    /* Without a table and a backing file, a discard has nothing to do.
     * Otherwise the table is ours to change (a snapshot's is copied). */
    if (!zero && !has_l2 && !s->bs->backing)
        return TRUE;
    if (!q2_get_l2_table(s, offset, TRUE, &l2, error))
        return FALSE;
    for (guint64 i = 0; i < nb; i++) {
        guint64 e = q2_l2_get(s, l2, idx + i), bm = q2_l2_get_bitmap(s, l2, idx + i);
        guint64 ne = e, nbm = bm;
        gboolean allocated = (e & QCOW_OFLAG_COMPRESSED) || entry_has_host(s, e);
        gboolean free_old;

        if (zero) {
            gboolean drop = (e & QCOW_OFLAG_COMPRESSED) || (unmap && allocated);
            ne = drop ? 0 : e;
            if (s->extended_l2)
                nbm = L2_BITMAP_ZERO_MASK;
            else
                ne |= QCOW_OFLAG_ZERO;
            free_old = drop;
        } else {
            if (full) {
                ne = 0;
                nbm = 0;
            } else if (s->bs->backing || allocated) {
                if (s->extended_l2) {
                    ne = 0;
                    nbm = L2_BITMAP_ZERO_MASK;
                } else {
                    ne = q2_has_zero_flag(s) ? QCOW_OFLAG_ZERO : 0;
                }
            }
            free_old = TRUE;
        }
        if (ne == e && nbm == bm)
            continue;
        if (q2_has_data_file(s) && ne == 0 && q2_data_file_is_raw(s) && !zero) {
            /* A raw data file keeps its clusters mapped 1:1. */
            continue;
        }
        q2_l2_set(s, l2, idx + i, ne);
        q2_l2_set_bitmap(s, l2, idx + i, nbm);
        q2_cache_mark_dirty(s->l2_cache, l2);
        if (free_old && allocated && !(ne & L2E_OFFSET_MASK) &&
            !q2_free_any_cluster(s, e, dtype, error)) {
            q2_cache_put(s->l2_cache, l2);
            return FALSE;
        }
    }
    q2_cache_put(s->l2_cache, l2);
    return TRUE;
}

/* Zero flags for whole subclusters [OFFSET, OFFSET+BYTES) inside one cluster. */
static gboolean zero_subclusters(Qcow2State *s, guint64 offset, guint64 bytes, gboolean *done,
                                 GError **error)
{
    guint8 *l2;
    guint64 idx = q2_l2_index(s, offset);
    int first = (int)(q2_offset_into_cluster(s, offset) >> s->subcluster_bits);
    int last = first + (int)(bytes >> s->subcluster_bits);
    guint64 mask = sc_mask_range(first, last);

    *done = FALSE;
    if (!q2_get_l2_table(s, offset, TRUE, &l2, error))
        return FALSE;
    guint64 e = q2_l2_get(s, l2, idx), bm = q2_l2_get_bitmap(s, l2, idx);
    if (!(e & QCOW_OFLAG_COMPRESSED)) {
        bm = (bm & ~mask) | (mask << 32);
        q2_l2_set_bitmap(s, l2, idx, bm);
        q2_cache_mark_dirty(s->l2_cache, l2);
        *done = TRUE;
    }
    q2_cache_put(s->l2_cache, l2);
    return TRUE;
}

gboolean q2_pwrite_zeroes(Qcow2State *s, guint64 offset, guint64 bytes, int flags, GError **error)
{
    guint64 cs = s->cluster_size, end = offset + bytes;
    guint64 align = s->extended_l2 ? s->subcluster_size : cs;
    guint64 a = (offset + align - 1) & ~(align - 1);
    /* The tail of the last cluster past the end of the disk counts as whole. */
    guint64 z = end >= s->bs->size ? ((end + align - 1) & ~(align - 1)) : (end & ~(align - 1));
    gboolean ok = TRUE;

    if (q2_data_file_is_raw(s)) {
        if (!vmm_block_pwrite_zeroes(s->data_file, offset, bytes, flags & ~VMM_BDRV_REQ_MAY_UNMAP,
                                     error))
            return FALSE;
        flags &= ~VMM_BDRV_REQ_MAY_UNMAP; /* keep the 1:1 mapping */
    }
    if (!q2_has_zero_flag(s) || a >= z)
        return write_zero_buffer(s, offset, bytes, flags, error);
    if (offset < a && !write_zero_buffer(s, offset, a - offset, flags, error))
        return FALSE;
    if (z < end && !write_zero_buffer(s, z, end - z, flags, error))
        return FALSE;

    g_mutex_lock(&s->lock);
    wait_inflight(s, a, z - a);
    if (s->lazy_refcounts && !q2_has_data_file(s))
        ok = q2_mark_dirty(s, error);
    while (ok && a < z) {
        guint64 c_end = q2_start_of_cluster(s, a) + cs;
        if (q2_offset_into_cluster(s, a) || z < c_end) {
            /* Whole subclusters of one cluster (extended L2 only). */
            guint64 stop = MIN(z, c_end);
            gboolean done;
            ok = zero_subclusters(s, a, stop - a, &done, error);
            if (ok && !done) {
                g_mutex_unlock(&s->lock);
                ok = write_zero_buffer(s, a, MIN(stop, end) - a, flags, error);
                g_mutex_lock(&s->lock);
            }
            a = stop;
            continue;
        }
        guint64 l2_cover = cs << s->l2_bits;
        guint64 stop = MIN((a & ~(l2_cover - 1)) + l2_cover, z & ~(cs - 1));
        ok = zero_or_discard_clusters(s, a, (stop - a) >> s->cluster_bits, TRUE,
                                      (flags & VMM_BDRV_REQ_MAY_UNMAP) != 0, FALSE, error);
        a = stop;
    }
    if (ok && (flags & VMM_BDRV_REQ_FUA))
        ok = q2_flush_metadata(s, error);
    g_mutex_unlock(&s->lock);
    return ok;
}

gboolean q2_pdiscard(Qcow2State *s, guint64 offset, guint64 bytes, gboolean full, GError **error)
{
    guint64 cs = s->cluster_size, end = offset + bytes;
    guint64 a = (offset + cs - 1) & ~(cs - 1);
    guint64 z = end == s->bs->size ? ((end + cs - 1) & ~(cs - 1)) : (end & ~(cs - 1));
    gboolean ok = TRUE;

    if (a >= z)
        return TRUE;
    g_mutex_lock(&s->lock);
    wait_inflight(s, a, z - a);
    if (s->lazy_refcounts && !q2_has_data_file(s))
        ok = q2_mark_dirty(s, error);
    while (ok && a < z) {
        guint64 l2_cover = cs << s->l2_bits;
        guint64 stop = MIN((a & ~(l2_cover - 1)) + l2_cover, z);
        ok = zero_or_discard_clusters(s, a, (stop - a) >> s->cluster_bits, FALSE, TRUE, full, error);
        a = stop;
    }
    g_mutex_unlock(&s->lock);
    return ok;
}

/* ---- compressed writes ---- */

/* Compressed clusters are whole clusters (the image's last may be short),
 * in the image file itself. */
static gboolean check_compressed_write(Qcow2State *s, guint64 offset, guint64 bytes, GError **error)
{
    if (q2_has_data_file(s)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%s: compressed writes are not possible with an external data file",
                    s->bs->filename);
        return FALSE;
    }
    if (q2_offset_into_cluster(s, offset)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: compressed write at 0x%" G_GINT64_MODIFIER "x is not cluster aligned",
                    s->bs->filename, offset);
        return FALSE;
    }
    if (bytes > s->cluster_size || (bytes < s->cluster_size && offset + bytes != s->bs->size)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: compressed writes must cover whole clusters", s->bs->filename);
        return FALSE;
    }
    return TRUE;
}

/* Deflating random-looking bytes takes as long as deflating text and never
 * pays: the result does not fit in a cluster - 1 bytes, so the cluster is
 * written as it is. Such a cluster is recognised at a tenth of the cost
 * when both of these hold:
 *  - its bytes are about evenly spread over the 256 values (chi-square of
 *    the byte counts at most INCOMPRESSIBLE_MAX_CHI2; random bytes give
 *    255 +- 23): Huffman coding of the bytes then saves at most about
 *    chi2 / (16 ln 2) bits, some 40 bytes, less than a dynamic deflate
 *    block's code tables cost;
 *  - fewer than INCOMPRESSIBLE_MAX_REPEATS of its positions start a 4-byte
 *    string that occurs in the 4 KiB before it: the strings that deflate's
 *    4 KiB window could replace with back-references (random data has
 *    about 0.06 per 64 KiB; a repeated stretch of 40 bytes has 16).
 * Anything else is deflated, so the stored image is the one deflate gives
 * (tests/unit/test-qcow2-compress.c checks the guess against deflate). */
#define INCOMPRESSIBLE_MAX_CHI2 400
#define INCOMPRESSIBLE_MAX_REPEATS 16
#define REPEAT_HASH_BITS 13
#define DEFLATE_WINDOW 4096

static gboolean bytes_look_uniform(const guint8 *buf, gsize len)
{
    guint32 hist[4][256] = {{0}};
    gsize i = 0;

    /* Four histograms: consecutive equal bytes do not wait on each other. */
    for (; i + 4 <= len; i += 4) {
        hist[0][buf[i]]++;
        hist[1][buf[i + 1]]++;
        hist[2][buf[i + 2]]++;
        hist[3][buf[i + 3]]++;
    }
    for (; i < len; i++)
        hist[0][buf[i]]++;
    guint64 squares = 0;
    for (int b = 0; b < 256; b++) {
        guint64 c = (guint64)hist[0][b] + hist[1][b] + hist[2][b] + hist[3][b];
        squares += c * c;
    }
    /* sum((c - len/256)^2 / (len/256)) = 256 * sum(c^2) / len - len */
    double chi2 = 256.0 * (double)squares / (double)len - (double)len;
    return chi2 <= INCOMPRESSIBLE_MAX_CHI2;
}

static gboolean few_repeats_in_window(const guint8 *buf, gsize len)
{
    guint32 last[1u << REPEAT_HASH_BITS]; /* position + 1 of the last string with that hash */
    guint repeats = 0;

    memset(last, 0, sizeof(last));
    for (gsize p = 0; p + 4 <= len; p++) {
        guint32 v;
        memcpy(&v, buf + p, 4);
        guint32 h = (v * 2654435761u) >> (32 - REPEAT_HASH_BITS);
        guint32 q = last[h];
        if (q && p - (q - 1) <= DEFLATE_WINDOW && memcmp(buf + q - 1, &v, 4) == 0 &&
            ++repeats >= INCOMPRESSIBLE_MAX_REPEATS)
            return FALSE;
        last[h] = (guint32)p + 1;
    }
    return TRUE;
}

gboolean q2_looks_incompressible(const guint8 *buf, gsize len)
{
    return len >= DEFLATE_WINDOW && bytes_look_uniform(buf, len) && few_repeats_in_window(buf, len);
}

gssize q2_compress_cluster(Qcow2State *s, guint64 offset, guint64 bytes, const guint8 *buf,
                           guint8 *out, gsize out_len, GError **error)
{
    guint64 cs = s->cluster_size;

    if (!check_compressed_write(s, offset, bytes, error))
        return -1;
    if (out_len < cs) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: compression buffer of %" G_GSIZE_FORMAT " bytes is smaller than a cluster",
                    s->bs->filename, out_len);
        return -1;
    }
    /* A short last cluster is compressed as a whole one, zero-padded. */
    g_autofree guint8 *padded = NULL;
    if (bytes < cs) {
        padded = g_malloc0(cs);
        memcpy(padded, buf, bytes);
        buf = padded;
    }
    /* zstd finds out quickly itself; deflate does not. */
    if (s->compression_type != QCOW2_COMPRESSION_ZSTD && q2_looks_incompressible(buf, cs))
        return 0;
    /* Kept only if it saves at least a byte, as QEMU: cs - 1 bytes of room. */
    gssize clen = q2_compress(s, out, cs - 1, buf, cs);
    return clen < 0 ? 0 : clen;
}

gboolean q2_write_compressed(Qcow2State *s, guint64 offset, guint64 bytes, const guint8 *cdata,
                             gsize clen, GError **error)
{
    guint64 cs = s->cluster_size, coff, old = 0, nb_sectors;
    gboolean ok;
    guint8 *l2;

    if (!check_compressed_write(s, offset, bytes, error))
        return FALSE;
    if (clen == 0 || clen >= cs) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: compressed cluster of %" G_GSIZE_FORMAT " bytes does not fit a cluster",
                    s->bs->filename, clen);
        return FALSE;
    }
    g_mutex_lock(&s->lock);
    while (wait_inflight(s, offset, cs)) {
    }
    ok = !s->lazy_refcounts || q2_mark_dirty(s, error);
    ok = ok && q2_alloc_bytes(s, (guint64)clen, &coff, error);
    Qcow2InFlight *f = ok ? inflight_add(s, offset >> s->cluster_bits, 1) : NULL;
    g_mutex_unlock(&s->lock);
    if (!ok)
        return FALSE;
    ok = vmm_block_pwrite(s->bs->file, coff, (guint64)clen, cdata, 0, error);
    g_mutex_lock(&s->lock);
    if (ok)
        ok = q2_get_l2_table(s, offset, TRUE, &l2, error);
    if (ok && !s->lazy_refcounts) {
        ok = q2_cache_set_dependency(s, s->l2_cache, s->refcount_cache, error);
        if (!ok)
            q2_cache_put(s->l2_cache, l2);
    }
    if (ok) {
        guint64 idx = q2_l2_index(s, offset);
        nb_sectors = ((coff + clen - 1) / QCOW2_COMPRESSED_SECTOR) - (coff / QCOW2_COMPRESSED_SECTOR);
        old = q2_l2_get(s, l2, idx);
        q2_l2_set(s, l2, idx, coff | (nb_sectors << s->csize_shift) | QCOW_OFLAG_COMPRESSED);
        q2_l2_set_bitmap(s, l2, idx, 0);
        q2_cache_mark_dirty(s->l2_cache, l2);
        q2_cache_put(s->l2_cache, l2);
        ok = q2_free_any_cluster(s, old, QCOW2_DISCARD_NEVER, error);
    }
    inflight_remove(s, f);
    g_mutex_unlock(&s->lock);
    return ok;
}

gboolean q2_pwrite_compressed(Qcow2State *s, guint64 offset, guint64 bytes, const guint8 *buf,
                              GError **error)
{
    guint64 cs = s->cluster_size;
    g_autofree guint8 *out = g_malloc(cs);

    while (bytes) {
        guint64 n = MIN(bytes, cs);
        gssize clen = q2_compress_cluster(s, offset, n, buf, out, cs, error);
        gboolean ok;

        if (clen < 0)
            return FALSE;
        /* Incompressible: an ordinary cluster is smaller. */
        ok = clen == 0 ? q2_pwritev(s, offset, n, buf, 0, error)
                       : q2_write_compressed(s, offset, n, out, (gsize)clen, error);
        if (!ok)
            return FALSE;
        offset += n;
        buf += n;
        bytes -= n;
    }
    return TRUE;
}

/* ---- block status ---- */

int q2_block_status(Qcow2State *s, guint64 offset, guint64 bytes, guint64 *pnum, guint64 *map,
                    VmmBlockDev **file, GError **error)
{
    guint64 n = bytes, host, entry;
    Qcow2SubclusterType type;
    int st = 0;

    g_mutex_lock(&s->lock);
    gboolean ok = q2_get_host_offset(s, offset, &n, &host, &type, &entry, error);
    g_mutex_unlock(&s->lock);
    if (!ok)
        return -1;
    *pnum = n;
    switch (type) {
    case QCOW2_SC_ZERO_PLAIN:
        st = VMM_BLOCK_ZERO;
        break;
    case QCOW2_SC_ZERO_ALLOC:
        st = VMM_BLOCK_ZERO | VMM_BLOCK_OFFSET_VALID;
        break;
    case QCOW2_SC_NORMAL:
        st = VMM_BLOCK_DATA | VMM_BLOCK_OFFSET_VALID;
        break;
    case QCOW2_SC_COMPRESSED:
        st = VMM_BLOCK_DATA | VMM_BLOCK_COMPRESSED;
        break;
    case QCOW2_SC_UNALLOCATED_ALLOC:
        st = VMM_BLOCK_OFFSET_VALID;
        break;
    default:
        st = 0;
    }
    if (st & VMM_BLOCK_OFFSET_VALID) {
        if (map)
            *map = host;
        if (file)
            *file = s->data_file;
    }
    if (st & (VMM_BLOCK_DATA | VMM_BLOCK_ZERO))
        st |= VMM_BLOCK_ALLOCATED;
    if (offset + n >= s->bs->size)
        st |= VMM_BLOCK_EOF;
    return st;
}

/* ---- allocation ahead of writes ---- */

/* Makes the host range [HOST, HOST+LEN) of clusters just taken read as
 * zeroes: space freed inside the file may hold old data; past its end the
 * file grows (and gets its blocks reserved where the host does that well). */
static gboolean zero_new_host_range(Qcow2State *s, guint64 host, guint64 len, GError **error)
{
    VmmBlockDev *f = s->bs->file;
    guint64 fsize = vmm_block_size(f), end = host + len;
    GError *err = NULL;

    if (host < fsize && !vmm_block_pwrite_zeroes(f, host, MIN(end, fsize) - host, 0, error))
        return FALSE;
    if (end <= fsize)
        return TRUE;
    if (!vmm_block_allocate(f, MAX(host, fsize), end - MAX(host, fsize), &err)) {
        if (!g_error_matches(err, VMM_ERROR, VMM_ERROR_UNSUPPORTED)) {
            g_propagate_error(error, err);
            return FALSE;
        }
        g_clear_error(&err);
    }
    /* Safe against concurrent writers: every cluster past the old end was
     * taken under s->lock, which we hold, so none of them is written yet. */
    return vmm_block_size(f) >= end || vmm_block_truncate(f, end, FALSE, VMM_PREALLOC_OFF, FALSE, error);
}

/* Links new host clusters to the unallocated clusters of [OFFSET, END)
 * within one L2 table; *NEXT gets where that table's part ends. */
static gboolean allocate_in_l2(Qcow2State *s, guint64 offset, guint64 end, guint64 *next, GError **error)
{
    guint64 l2_cover = s->cluster_size << s->l2_bits;
    guint64 stop = MIN((offset & ~(l2_cover - 1)) + l2_cover, end);
    guint64 idx = q2_l2_index(s, offset), nb = q2_size_to_clusters(s, stop - offset);
    gboolean ok = TRUE;
    guint8 *l2;

    *next = stop;
    if (!q2_get_l2_table(s, offset, TRUE, &l2, error))
        return FALSE;
    if (!s->lazy_refcounts && !q2_cache_set_dependency(s, s->l2_cache, s->refcount_cache, error)) {
        q2_cache_put(s->l2_cache, l2);
        return FALSE;
    }
    for (guint64 i = 0; ok && i < nb;) {
        guint64 run = 0, host;
        while (i + run < nb && !(q2_l2_get(s, l2, idx + i + run) & (L2E_OFFSET_MASK | QCOW_OFLAG_COMPRESSED)))
            run++;
        if (!run) {
            i++;
            continue;
        }
        ok = q2_alloc_clusters(s, run << s->cluster_bits, &host, error);
        if (ok && !zero_new_host_range(s, host, run << s->cluster_bits, error)) {
            q2_free_clusters(s, host, run << s->cluster_bits, QCOW2_DISCARD_NEVER, NULL);
            ok = FALSE;
        }
        for (guint64 k = 0; ok && k < run; k++) {
            /* A zero cluster stays one (it reads as zeroes either way). */
            guint64 old = q2_l2_get(s, l2, idx + i + k);
            q2_l2_set(s, l2, idx + i + k, (host + (k << s->cluster_bits)) | QCOW_OFLAG_COPIED |
                                          (old & QCOW_OFLAG_ZERO));
        }
        i += run;
    }
    /* The zeroes (and the file's new length) reach the disk before the
     * entries that expose them. */
    q2_cache_depends_on_flush(s->l2_cache);
    q2_cache_mark_dirty(s->l2_cache, l2);
    q2_cache_put(s->l2_cache, l2);
    return ok;
}

gboolean q2_allocate(Qcow2State *s, guint64 offset, guint64 bytes, GError **error)
{
    guint64 end = offset + bytes;
    gboolean ok = TRUE;

    /* Whole clusters are taken: the rest of a cluster would hide what a
     * backing file shows there, and an external data file holds the data
     * of unallocated clusters at their own place already. Extended L2
     * entries would need their subcluster bitmaps planned: left to writes. */
    if (s->image_backing_file || s->bs->backing || q2_has_data_file(s) || s->extended_l2) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%s: clusters cannot be allocated ahead of writes in this image", s->bs->filename);
        return FALSE;
    }
    g_mutex_lock(&s->lock);
    while (wait_inflight(s, offset, bytes)) {
    }
    if (s->lazy_refcounts)
        ok = q2_mark_dirty(s, error);
    for (guint64 cur = q2_start_of_cluster(s, offset); ok && cur < end;)
        ok = allocate_in_l2(s, cur, end, &cur, error);
    g_mutex_unlock(&s->lock);
    return ok;
}

/* ---- preallocation ---- */

gboolean q2_preallocate(Qcow2State *s, guint64 offset, guint64 bytes, VmmPrealloc mode,
                        GError **error)
{
    guint64 cs = s->cluster_size, end = offset + bytes, host_end = 0;

    offset = q2_start_of_cluster(s, offset);
    while (offset < end) {
        guint8 *l2;
        guint64 idx = q2_l2_index(s, offset);
        guint64 l2_cover = cs << s->l2_bits;
        guint64 stop = MIN((offset & ~(l2_cover - 1)) + l2_cover, end);
        guint64 nb = q2_size_to_clusters(s, stop - offset);

        if (!q2_get_l2_table(s, offset, TRUE, &l2, error))
            return FALSE;
        for (guint64 i = 0; i < nb;) {
            guint64 e = q2_l2_get(s, l2, idx + i), run = 0, host;
            if (e & (L2E_OFFSET_MASK | QCOW_OFLAG_COMPRESSED) ||
                (q2_has_data_file(s) && (e & QCOW_OFLAG_COPIED))) {
                i++;
                continue;
            }
            while (i + run < nb && !(q2_l2_get(s, l2, idx + i + run) &
                                     (L2E_OFFSET_MASK | QCOW_OFLAG_COMPRESSED | QCOW_OFLAG_COPIED)))
                run++;
            if (q2_has_data_file(s)) {
                host = offset + (i << s->cluster_bits);
            } else if (!q2_alloc_clusters(s, run << s->cluster_bits, &host, error)) {
                q2_cache_put(s->l2_cache, l2);
                return FALSE;
            }
            for (guint64 k = 0; k < run; k++) {
                guint64 old = q2_l2_get(s, l2, idx + i + k);
                q2_l2_set(s, l2, idx + i + k,
                          (host + (k << s->cluster_bits)) | QCOW_OFLAG_COPIED | (old & QCOW_OFLAG_ZERO));
            }
            host_end = MAX(host_end, host + (run << s->cluster_bits));
            i += run;
        }
        q2_cache_mark_dirty(s->l2_cache, l2);
        if (!q2_has_data_file(s) &&
            !q2_cache_set_dependency(s, s->l2_cache, s->refcount_cache, error)) {
            q2_cache_put(s->l2_cache, l2);
            return FALSE;
        }
        q2_cache_put(s->l2_cache, l2);
        offset = stop;
    }
    /* The data clusters read as zeroes: give the file its length (and, for
     * falloc/full, its blocks) before any entry naming them reaches the disk. */
    if (host_end) {
        VmmBlockDev *f = s->data_file;
        guint64 fsize = vmm_block_size(f);
        if (q2_has_data_file(s))
            host_end = MAX(host_end, MIN(end, s->bs->size));
        if (host_end > fsize &&
            !vmm_block_truncate(f, host_end, FALSE,
                                mode == VMM_PREALLOC_METADATA ? VMM_PREALLOC_OFF : mode, FALSE, error))
            return FALSE;
    }
    return q2_cache_flush(s, s->l2_cache, error);
}

gboolean q2_preallocate_data(Qcow2State *s, guint64 old_size, guint64 new_size, VmmPrealloc mode,
                             GError **error)
{
    guint64 cs = s->cluster_size, fsize = vmm_block_size(s->bs->file), start, host;
    gint64 last;

    if (q2_has_data_file(s))
        return q2_preallocate(s, old_size, new_size - old_size, mode, error);
    if (!q2_last_cluster(s, fsize, &last, error))
        return FALSE;
    guint64 used_end = last >= 0 ? ((guint64)last + 1) * cs : (fsize + cs - 1) & ~(cs - 1);
    guint64 nb_data = (((new_size + cs - 1) & ~(cs - 1)) - q2_start_of_cluster(s, old_size)) >> s->cluster_bits;
    guint64 nb_l2 = (nb_data + s->l2_size - 1) / s->l2_size + 1;
    guint64 n = nb_data;

    if (!q2_refcount_area(s, used_end, nb_data + nb_l2, TRUE, &start, error))
        return FALSE;
    if (!q2_alloc_clusters_at(s, start, &n, error))
        return FALSE;
    g_assert(n == nb_data);
    if (!vmm_block_truncate(s->bs->file, start + nb_data * cs, FALSE, mode, FALSE, error)) {
        q2_free_clusters(s, start, nb_data * cs, QCOW2_DISCARD_OTHER, NULL);
        return FALSE;
    }
    host = start;
    for (guint64 guest = q2_start_of_cluster(s, old_size); n;) {
        guint8 *l2;
        guint64 idx = q2_l2_index(s, guest);
        guint64 k = MIN(n, s->l2_size - idx);
        if (!q2_get_l2_table(s, guest, TRUE, &l2, error))
            return FALSE;
        if (!q2_cache_set_dependency(s, s->l2_cache, s->refcount_cache, error)) {
            q2_cache_put(s->l2_cache, l2);
            return FALSE;
        }
        for (guint64 i = 0; i < k; i++) {
            guint64 old = q2_l2_get(s, l2, idx + i);
            q2_l2_set(s, l2, idx + i, (host + (i << s->cluster_bits)) | QCOW_OFLAG_COPIED);
            if (!q2_free_any_cluster(s, old, QCOW2_DISCARD_NEVER, error)) {
                q2_cache_put(s->l2_cache, l2);
                return FALSE;
            }
        }
        q2_cache_mark_dirty(s->l2_cache, l2);
        q2_cache_put(s->l2_cache, l2);
        guest += k << s->cluster_bits;
        host += k << s->cluster_bits;
        n -= k;
    }
    return q2_cache_flush(s, s->l2_cache, error);
}

gboolean q2_expand_zero_clusters(Qcow2State *s, GError **error)
{
    /* Zero clusters of the active L1 become explicit zeroes (or holes without
     * a backing file); snapshots keep theirs only if they have none. */
    guint64 cs = s->cluster_size;

    for (guint32 i = 0; i < s->nb_snapshots; i++) {
        g_autofree guint64 *l1 = g_new0(guint64, s->snapshots[i].l1_size + 1);
        if (!q2_file_pread(s, s->snapshots[i].l1_table_offset, (guint64)s->snapshots[i].l1_size * 8,
                           l1, "snapshot L1 table", error))
            return FALSE;
        for (guint32 j = 0; j < s->snapshots[i].l1_size; j++) {
            guint64 l2_off = GUINT64_FROM_BE(l1[j]) & L1E_OFFSET_MASK;
            guint8 *l2;
            if (!l2_off)
                continue;
            if (!q2_cache_get(s, s->l2_cache, l2_off, &l2, error))
                return FALSE;
            for (guint64 k = 0; k < s->l2_size; k++) {
                guint64 e = q2_l2_get(s, l2, k);
                if (!(e & QCOW_OFLAG_COMPRESSED) && (e & QCOW_OFLAG_ZERO)) {
                    q2_cache_put(s->l2_cache, l2);
                    g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                                "%s: snapshot '%s' has zero clusters; delete it before "
                                "downgrading to compat=0.10", s->bs->filename, s->snapshots[i].name);
                    return FALSE;
                }
            }
            q2_cache_put(s->l2_cache, l2);
        }
    }
    for (guint64 l1i = 0; l1i < s->l1_size; l1i++) {
        guint64 l2_off = s->l1_table[l1i] & L1E_OFFSET_MASK;
        guint8 *l2;
        if (!l2_off)
            continue;
        if (!q2_cache_get(s, s->l2_cache, l2_off, &l2, error))
            return FALSE;
        for (guint64 k = 0; k < s->l2_size; k++) {
            guint64 e = q2_l2_get(s, l2, k);
            if ((e & QCOW_OFLAG_COMPRESSED) || !(e & QCOW_OFLAG_ZERO))
                continue;
            if (!(e & L2E_OFFSET_MASK) && !s->bs->backing) {
                q2_l2_set(s, l2, k, 0);
            } else {
                guint64 host = e & L2E_OFFSET_MASK;
                g_autofree guint8 *z = g_malloc0(cs);
                if (!host || !(e & QCOW_OFLAG_COPIED)) {
                    if (!q2_alloc_clusters(s, cs, &host, error))
                        goto fail;
                    if (e & L2E_OFFSET_MASK)
                        q2_free_any_cluster(s, e & ~QCOW_OFLAG_ZERO, QCOW2_DISCARD_NEVER, NULL);
                }
                if (!vmm_block_pwrite(s->data_file, host, cs, z, 0, error))
                    goto fail;
                q2_l2_set(s, l2, k, host | QCOW_OFLAG_COPIED);
            }
            q2_cache_mark_dirty(s->l2_cache, l2);
        }
        q2_cache_put(s->l2_cache, l2);
        continue;
fail:
        q2_cache_put(s->l2_cache, l2);
        return FALSE;
    }
    if (!q2_file_flush(s, error))
        return FALSE;
    if (!q2_cache_set_dependency(s, s->l2_cache, s->refcount_cache, error))
        return FALSE;
    return q2_cache_flush(s, s->l2_cache, error);
}
