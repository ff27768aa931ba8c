/* qcow2 driver internals, shared by blockd/qcow2*.c only.
 *
 * Locking: every field of Qcow2State below "lock" is guarded by it, and every
 * function in this header expects the caller to hold it unless its comment says
 * otherwise. Data I/O (guest clusters) runs outside the lock; allocating writes
 * register the guest clusters they fill in s->inflight so that a second writer
 * of the same clusters waits for the first one's L2 update.
 *
 * Crash safety: the L2 cache depends on the refcount cache (a new cluster's
 * refcount reaches the disk before any L2 entry naming it), the refcount cache
 * depends on the L2 cache when refcounts drop (an L2 entry stops naming a
 * cluster before the cluster can be handed out again), and L1 entries are
 * written only after the L2 table they name has been written and flushed. */
#pragma once
#include "blockd/block.h"
#include <glib.h>
#include <stdint.h>

#define QCOW_MAGIC 0x514649fbu
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_DEFAULT_CLUSTER_BITS 16
#define QCOW2_V2_HEADER_SIZE 72
#define QCOW2_V3_HEADER_SIZE 104
#define QCOW2_HEADER_SIZE 112          /* what we write for v3: with compression_type */
#define QCOW2_MAX_L1_BYTES (32u << 20)
#define QCOW2_MAX_REFTABLE_BYTES (8u << 20)
#define QCOW2_MAX_SNAPSHOTS 65536
#define QCOW2_MAX_SNAPSHOTS_BYTES (64u << 20)
#define QCOW2_MAX_BACKING_NAME 1023
#define QCOW2_SUBCLUSTERS 32
#define QCOW2_COMPRESSED_SECTOR 512ull

#define QCOW_OFLAG_COPIED (1ull << 63)
#define QCOW_OFLAG_COMPRESSED (1ull << 62)
#define QCOW_OFLAG_ZERO 1ull
#define L1E_OFFSET_MASK 0x00fffffffffffe00ull
#define L2E_OFFSET_MASK 0x00fffffffffffe00ull
#define REFT_OFFSET_MASK 0xfffffffffffffe00ull
#define L1E_RESERVED_MASK 0x7f000000000001ffull
#define L2E_STD_RESERVED_MASK 0x3f000000000001feull
#define L2_BITMAP_ALLOC_MASK 0x00000000ffffffffull
#define L2_BITMAP_ZERO_MASK 0xffffffff00000000ull

/* Header feature bits */
enum {
    QCOW2_INCOMPAT_DIRTY = 1 << 0,
    QCOW2_INCOMPAT_CORRUPT = 1 << 1,
    QCOW2_INCOMPAT_DATA_FILE = 1 << 2,
    QCOW2_INCOMPAT_COMPRESSION = 1 << 3,
    QCOW2_INCOMPAT_EXTL2 = 1 << 4,
    QCOW2_INCOMPAT_KNOWN = 0x1f,
    QCOW2_COMPAT_LAZY_REFCOUNTS = 1 << 0,
    QCOW2_AUTOCLEAR_BITMAPS = 1 << 0,
    QCOW2_AUTOCLEAR_DATA_FILE_RAW = 1 << 1,
};

/* Header extension types */
#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u

enum { QCOW2_COMPRESSION_ZLIB = 0, QCOW2_COMPRESSION_ZSTD = 1 };

/* What one (sub)cluster of the guest reads from, as QEMU's subcluster types. */
typedef enum {
    QCOW2_SC_NORMAL,             /* data at the host offset */
    QCOW2_SC_COMPRESSED,
    QCOW2_SC_ZERO_PLAIN,         /* zeroes, no host cluster */
    QCOW2_SC_ZERO_ALLOC,         /* zeroes, host cluster kept (preallocated) */
    QCOW2_SC_UNALLOCATED_PLAIN,  /* backing or zeroes */
    QCOW2_SC_UNALLOCATED_ALLOC,  /* backing or zeroes; host cluster reserved (extended L2) */
    QCOW2_SC_INVALID,            /* both bitmap bits set, or a bad descriptor */
} Qcow2SubclusterType;

typedef struct {
    guint32 type;
    guint32 len;
    guint8 *data;
} Qcow2Ext;

typedef struct {
    guint64 l1_table_offset;
    guint32 l1_size;
    char *id;
    char *name;
    guint32 date_sec, date_nsec;
    guint64 vm_clock_nsec;
    guint64 vm_state_size;
    guint64 disk_size;
    guint64 icount;
    gboolean has_disk_size, has_icount;
    guint32 extra_size;          /* as read (>= 16 in v3) */
    guint8 *unknown_extra;       /* extra data past the fields we know, kept */
    guint32 unknown_extra_len;
} Qcow2Snapshot;

typedef struct Qcow2Cache Qcow2Cache;

typedef struct {
    guint64 offset, len;
    int type;                    /* Qcow2DiscardType */
} Qcow2PendingFree;

typedef struct {
    guint64 first_cluster;       /* guest cluster index */
    guint64 nb_clusters;
} Qcow2InFlight;

typedef struct Qcow2State {
    VmmBlockDev *bs;
    VmmBlockDev *data_file;      /* bs->file, or the external data file */
    gboolean own_data_file;

    /* geometry (immutable after open) */
    int version;
    int cluster_bits;
    guint64 cluster_size;
    int l2_bits;                 /* log2 of entries per L2 table */
    guint64 l2_size;             /* entries per L2 table */
    int l2_entry_shift;          /* 3, or 4 with extended L2 */
    gboolean extended_l2;
    int subcluster_bits;
    guint64 subcluster_size;
    int subclusters;             /* 1, or 32 with extended L2 */
    int refcount_order;
    guint64 refcount_max;
    int refblock_bits;           /* log2 of entries per refcount block */
    int csize_shift;
    guint64 csize_mask;
    guint64 cluster_offset_mask;
    int compression_type;

    GMutex lock;
    GCond alloc_cond;
    GPtrArray *inflight;         /* Qcow2InFlight* of allocating writes */

    /* header */
    guint64 incompatible, compatible, autoclear;
    guint32 header_length;
    guint8 *header_tail;         /* unknown header fields past byte 105, kept */
    guint32 header_tail_len;
    char *image_backing_file;
    char *image_backing_format;
    char *image_data_file;
    GPtrArray *unknown_exts;     /* Qcow2Ext*, rewritten as they were */
    Qcow2Ext *bitmaps_ext;       /* kept verbatim */
    guint32 nb_bitmaps;
    guint64 bitmap_dir_offset, bitmap_dir_size;
    GArray *feature_names;       /* guint8[48] entries, for messages */

    guint64 l1_table_offset;
    guint32 l1_size;
    guint64 *l1_table;           /* host byte order */
    guint32 l1_vm_state_index;

    guint64 refcount_table_offset;
    guint32 refcount_table_clusters;
    guint64 refcount_table_size; /* entries */
    guint64 *refcount_table;     /* host byte order */
    guint64 free_cluster_index;
    guint64 free_byte_offset;    /* where the next compressed cluster may go, 0 none */
    GArray *pending_frees;       /* Qcow2PendingFree: freed, not reusable before a flush */

    guint32 nb_snapshots;
    guint64 snapshots_offset;
    guint64 snapshots_size;
    Qcow2Snapshot *snapshots;

    Qcow2Cache *l2_cache;
    Qcow2Cache *refcount_cache;
    guint64 cache_clean_interval;   /* seconds, 0 = never */
    gint64 last_clean_time;         /* monotonic µs */

    gboolean lazy_refcounts;
    gboolean dirty_marked;          /* we set the dirty bit in this session */
    gboolean read_only;
    gboolean corrupt_signalled;
    gboolean pass_discard_request, pass_discard_snapshot, pass_discard_other;
} Qcow2State;

typedef enum { QCOW2_DISCARD_NEVER, QCOW2_DISCARD_REQUEST, QCOW2_DISCARD_SNAPSHOT,
               QCOW2_DISCARD_OTHER } Qcow2DiscardType;

static inline guint64 q2_offset_into_cluster(const Qcow2State *s, guint64 off)
{
    return off & (s->cluster_size - 1);
}
static inline guint64 q2_start_of_cluster(const Qcow2State *s, guint64 off)
{
    return off & ~(s->cluster_size - 1);
}
static inline guint64 q2_size_to_clusters(const Qcow2State *s, guint64 size)
{
    return (size + s->cluster_size - 1) >> s->cluster_bits;
}
static inline guint64 q2_l1_index(const Qcow2State *s, guint64 guest)
{
    return guest >> (s->l2_bits + s->cluster_bits);
}
static inline guint64 q2_l2_index(const Qcow2State *s, guint64 guest)
{
    return (guest >> s->cluster_bits) & (s->l2_size - 1);
}
static inline gboolean q2_has_data_file(const Qcow2State *s)
{
    return (s->incompatible & QCOW2_INCOMPAT_DATA_FILE) != 0;
}
static inline gboolean q2_data_file_is_raw(const Qcow2State *s)
{
    return (s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW) != 0;
}
static inline gboolean q2_has_zero_flag(const Qcow2State *s)
{
    return s->version >= 3;
}

/* L2 table entries in a cached table (big-endian on disk and in the cache). */
guint64 q2_l2_get(const Qcow2State *s, const guint8 *table, guint64 idx);
guint64 q2_l2_get_bitmap(const Qcow2State *s, const guint8 *table, guint64 idx);
void q2_l2_set(const Qcow2State *s, guint8 *table, guint64 idx, guint64 entry);
void q2_l2_set_bitmap(const Qcow2State *s, guint8 *table, guint64 idx, guint64 bitmap);
Qcow2SubclusterType q2_subcluster_type(const Qcow2State *s, guint64 entry, guint64 bitmap, int sc);
/* The host byte range of a compressed cluster's data. */
void q2_compressed_range(const Qcow2State *s, guint64 entry, guint64 *coffset, guint64 *csize);

/* qcow2.c */
gboolean q2_signal_corruption(Qcow2State *s, GError **error, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
gboolean q2_file_pread(Qcow2State *s, guint64 off, guint64 len, void *buf, const char *what,
                       GError **error);
gboolean q2_file_pwrite(Qcow2State *s, guint64 off, guint64 len, const void *buf, GError **error);
gboolean q2_file_flush(Qcow2State *s, GError **error);
gboolean q2_update_header(Qcow2State *s, GError **error);
gboolean q2_mark_dirty(Qcow2State *s, GError **error);
gboolean q2_mark_clean(Qcow2State *s, GError **error);
gboolean q2_write_l1_entry(Qcow2State *s, guint64 idx, GError **error);
gboolean q2_grow_l1_table(Qcow2State *s, guint64 min_size, gboolean exact, GError **error);
gboolean q2_flush_metadata(Qcow2State *s, GError **error);
/* Checks that [OFF, OFF+LEN) is a sane place for a metadata table: aligned,
 * not overflowing, inside the file. WHAT names the field. */
gboolean q2_validate_table(Qcow2State *s, guint64 off, guint64 entries, guint64 entry_size,
                           guint64 max_bytes, const char *what, GError **error);

/* qcow2-cache.c */
Qcow2Cache *q2_cache_new(Qcow2State *s, int entries, const char *what);
void q2_cache_free(Qcow2Cache *c);
int q2_cache_entries(const Qcow2Cache *c);
gboolean q2_cache_get(Qcow2State *s, Qcow2Cache *c, guint64 offset, guint8 **table, GError **error);
gboolean q2_cache_get_empty(Qcow2State *s, Qcow2Cache *c, guint64 offset, guint8 **table,
                            GError **error);
void q2_cache_put(Qcow2Cache *c, guint8 *table);
void q2_cache_mark_dirty(Qcow2Cache *c, guint8 *table);
gboolean q2_cache_write(Qcow2State *s, Qcow2Cache *c, GError **error);
gboolean q2_cache_flush(Qcow2State *s, Qcow2Cache *c, GError **error);
gboolean q2_cache_set_dependency(Qcow2State *s, Qcow2Cache *c, Qcow2Cache *dep, GError **error);
void q2_cache_depends_on_flush(Qcow2Cache *c);
void q2_cache_discard(Qcow2Cache *c, guint64 offset);
void q2_cache_clean_unused(Qcow2Cache *c);
gboolean q2_cache_empty(Qcow2State *s, Qcow2Cache *c, GError **error);

/* qcow2-refcount.c */
gboolean q2_refcount_init(Qcow2State *s, GError **error);
guint64 q2_refblock_get(int order, const guint8 *block, guint64 idx);
void q2_refblock_set(int order, guint8 *block, guint64 idx, guint64 value);
gboolean q2_get_refcount(Qcow2State *s, guint64 cluster_index, guint64 *refcount, GError **error);
/* Adds ADDEND to the refcount of every cluster touched by [OFFSET, OFFSET+LEN). */
gboolean q2_update_refcount(Qcow2State *s, guint64 offset, guint64 len, gint64 addend,
                            Qcow2DiscardType type, GError **error);
/* Allocates SIZE bytes worth of contiguous clusters; returns the host offset. */
gboolean q2_alloc_clusters(Qcow2State *s, guint64 size, guint64 *offset, GError **error);
/* Allocates N clusters at OFFSET if free; *N is reduced to the run that was free. */
gboolean q2_alloc_clusters_at(Qcow2State *s, guint64 offset, guint64 *n, GError **error);
/* Space for SIZE (< cluster) bytes of compressed data, packed. */
gboolean q2_alloc_bytes(Qcow2State *s, guint64 size, guint64 *offset, GError **error);
/* Drops a reference now: for clusters whose last referrer on disk (header,
 * L1 entry) was already rewritten and flushed. */
gboolean q2_free_clusters(Qcow2State *s, guint64 offset, guint64 len, Qcow2DiscardType type,
                          GError **error);
/* Drops a reference at the next metadata flush, once the L2 tables that
 * stopped naming the clusters are on disk: until then a crash must still find
 * the old data there, so the clusters must not be handed out again. */
gboolean q2_free_clusters_deferred(Qcow2State *s, guint64 offset, guint64 len,
                                   Qcow2DiscardType type, GError **error);
/* Applies the deferred frees (the tables that named them are on disk). */
gboolean q2_apply_pending_frees(Qcow2State *s, GError **error);
/* Frees (deferred) whatever L2 entry ENTRY holds. */
gboolean q2_free_any_cluster(Qcow2State *s, guint64 entry, Qcow2DiscardType type, GError **error);
/* Adds ADDEND to every cluster that L1 table at L1_OFFSET names and fixes the
 * COPIED flags (ADDEND 0: only the flags). */
gboolean q2_update_snapshot_refcount(Qcow2State *s, guint64 l1_offset, guint32 l1_size,
                                     int addend, GError **error);
/* Highest host cluster index with a non-zero refcount, plus one. */
gboolean q2_refcount_end(Qcow2State *s, guint64 *end_cluster, GError **error);
/* Writes a whole new refcount structure from REFCOUNTS (one per cluster,
 * NB entries) at the end of the file, with order NEW_ORDER, and switches the
 * header to it. The old structure's clusters become free. */
gboolean q2_rebuild_refcount_structure(Qcow2State *s, guint64 *refcounts, guint64 nb,
                                       int new_order, GError **error);
gboolean q2_refcount_area(Qcow2State *s, guint64 start, guint64 additional, gboolean exact,
                          guint64 *end, GError **error);
/* Highest cluster index below FILE_SIZE with a refcount, or -1. */
gboolean q2_last_cluster(Qcow2State *s, guint64 file_size, gint64 *last, GError **error);
guint64 q2_refcount_metadata_size(guint64 clusters, guint64 cluster_size, int refcount_order,
                                  guint64 *refblock_count);

/* qcow2-cluster.c */
/* Mapping of the guest range starting at OFFSET: the type of its first
 * subcluster, how many bytes (<= BYTES) share that type and a contiguous host
 * range, the host offset (when it has one) and the raw L2 entry. */
gboolean q2_get_host_offset(Qcow2State *s, guint64 offset, guint64 *bytes, guint64 *host,
                            Qcow2SubclusterType *type, guint64 *l2_entry, GError **error);
gboolean q2_preadv(Qcow2State *s, guint64 offset, guint64 bytes, guint8 *buf, GError **error);
gboolean q2_pwritev(Qcow2State *s, guint64 offset, guint64 bytes, const guint8 *buf, int flags,
                    GError **error);
gboolean q2_pwrite_zeroes(Qcow2State *s, guint64 offset, guint64 bytes, int flags, GError **error);
gboolean q2_pdiscard(Qcow2State *s, guint64 offset, guint64 bytes, gboolean full, GError **error);
/* The two steps of q2_pwrite_compressed: compress_cluster returns the
 * compressed length, 0 if the cluster does not shrink, -1 on error. */
gssize q2_compress_cluster(Qcow2State *s, guint64 offset, guint64 bytes, const guint8 *buf,
                           guint8 *out, gsize out_len, GError **error);
/* TRUE when deflate cannot shrink BUF (a cluster) to fit, by a cheap test
 * of its byte entropy and of repeated strings (see qcow2-cluster.c). */
gboolean q2_looks_incompressible(const guint8 *buf, gsize len);
gboolean q2_write_compressed(Qcow2State *s, guint64 offset, guint64 bytes, const guint8 *cdata,
                             gsize clen, GError **error);
gboolean q2_pwrite_compressed(Qcow2State *s, guint64 offset, guint64 bytes, const guint8 *buf,
                              GError **error);
int q2_block_status(Qcow2State *s, guint64 offset, guint64 bytes, guint64 *pnum, guint64 *map,
                    VmmBlockDev **file, GError **error);
/* Allocates L2 tables and (PREALLOC_FALLOC/FULL/METADATA) data clusters for
 * guest bytes [OFFSET, OFFSET+BYTES). */
/* Links zeroed host clusters to the unallocated clusters of the range, in
 * call order (the driver's allocate op). */
gboolean q2_allocate(Qcow2State *s, guint64 offset, guint64 bytes, GError **error);
gboolean q2_preallocate(Qcow2State *s, guint64 offset, guint64 bytes, VmmPrealloc mode,
                        GError **error);
/* falloc/full growth as QEMU lays it out: a refcount area past the used part
 * of the file, then all new data clusters contiguous after it. */
gboolean q2_preallocate_data(Qcow2State *s, guint64 old_size, guint64 new_size, VmmPrealloc mode,
                             GError **error);
/* Rewrites zero clusters as data (for compat=0.10). */
gboolean q2_expand_zero_clusters(Qcow2State *s, GError **error);
gssize q2_compress(Qcow2State *s, guint8 *dst, gsize dst_len, const guint8 *src, gsize src_len);
gboolean q2_decompress(Qcow2State *s, guint8 *dst, gsize dst_len, const guint8 *src, gsize src_len);
/* The L2 table for guest OFFSET, allocating it when ALLOC: *L2_OFFSET 0 = none. */
gboolean q2_get_l2_table(Qcow2State *s, guint64 offset, gboolean alloc, guint8 **table,
                         GError **error);

/* qcow2-snapshot.c */
gboolean q2_read_snapshots(Qcow2State *s, GError **error);
void q2_free_snapshots(Qcow2State *s);
gboolean q2_snapshot_create(Qcow2State *s, const VmmSnapshotInfo *sn, GError **error);
gboolean q2_snapshot_goto(Qcow2State *s, const char *id_or_name, GError **error);
gboolean q2_snapshot_delete(Qcow2State *s, const char *id_or_name, GError **error);
GPtrArray *q2_snapshot_list(Qcow2State *s);

/* qcow2-check.c */
gboolean q2_check(Qcow2State *s, VmmCheckResult *res, int fix, GError **error);
/* Refcounts of every host cluster as the metadata says they should be. */
gboolean q2_calculate_refcounts(Qcow2State *s, VmmCheckResult *res, gboolean with_refcount_structure,
                                guint64 **refcounts, guint64 *nb, GError **error);
