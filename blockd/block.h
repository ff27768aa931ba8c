/* The block layer shared by blockd and vmm-img: a graph of nodes, each run by
 * a driver (one file per driver: file.c, raw.c, qcow2*.c, preallocate.c, ...).
 * A format node (qcow2, raw) sits on a protocol node (file, later nbd) through
 * bs->file, and may have a backing node (bs->backing) of any format.
 *
 * Requests are synchronous calls that may run concurrently from many threads on
 * the same node: drivers keep their metadata consistent under their own locks and
 * do data I/O outside them. Every call that can fail fills a GError whose message
 * names the node's file and the cause ("disk.qcow2: L2 table offset 0x... past
 * the end of the file"). */
#pragma once
#include <glib.h>
#include <json-glib/json-glib.h>
#include <stdbool.h>
#include <sys/types.h>
#include "common/opts.h"

typedef struct VmmBlockDev VmmBlockDev;
typedef struct VmmBlockDriver VmmBlockDriver;

/* Open flags */
enum {
    VMM_BDRV_O_RDWR = 1 << 0,
    VMM_BDRV_O_NO_BACKING = 1 << 1,   /* do not open the backing chain */
    VMM_BDRV_O_SNAPSHOT = 1 << 2,     /* -snapshot: writes go to a temporary overlay */
    VMM_BDRV_O_NOCACHE = 1 << 3,      /* cache.direct: O_DIRECT */
    VMM_BDRV_O_NO_FLUSH = 1 << 4,     /* cache.no-flush (cache=unsafe) */
    VMM_BDRV_O_WRITETHROUGH = 1 << 5, /* every write is followed by a flush */
    VMM_BDRV_O_SHARE_RW = 1 << 6,     /* share-rw: allow other writers (locking) */
    VMM_BDRV_O_CHECK = 1 << 7,        /* opened for check/repair: tolerate damage */
    VMM_BDRV_O_INACTIVE = 1 << 8,     /* probing or info: take no write lock */
};

/* Request flags */
enum {
    VMM_BDRV_REQ_FUA = 1 << 0,        /* the write is durable when the call returns */
    VMM_BDRV_REQ_MAY_UNMAP = 1 << 1,  /* write_zeroes may deallocate */
    VMM_BDRV_REQ_NO_FALLBACK = 1 << 2,/* write_zeroes must be fast or fail (NBD FAST_ZERO) */
    /* A hint on pwrite: the range holds nothing yet (a fresh target being
     * filled, clusters just allocated), so the protocol driver may reserve it
     * as one extent before writing (fallocate), which ext4 and xfs do much
     * faster than allocating page by page. Content is the same either way. */
    VMM_BDRV_REQ_ALLOCATE = 1 << 3,
};

/* Block status bits, as QEMU's BDRV_BLOCK_* */
enum {
    VMM_BLOCK_DATA = 1 << 0,          /* reads return data (not known to be zero) */
    VMM_BLOCK_ZERO = 1 << 1,          /* reads return zeroes */
    VMM_BLOCK_OFFSET_VALID = 1 << 2,  /* *map is the offset in *file */
    VMM_BLOCK_ALLOCATED = 1 << 3,     /* the content comes from this layer (not backing) */
    VMM_BLOCK_COMPRESSED = 1 << 4,
    VMM_BLOCK_EOF = 1 << 5,           /* the range reaches the end of the node */
};

typedef enum { VMM_DETECT_ZEROES_OFF, VMM_DETECT_ZEROES_ON, VMM_DETECT_ZEROES_UNMAP } VmmDetectZeroes;
typedef enum { VMM_PREALLOC_OFF, VMM_PREALLOC_METADATA, VMM_PREALLOC_FALLOC, VMM_PREALLOC_FULL } VmmPrealloc;

/* Result of check (qemu-img check's fields and exit codes). */
typedef struct {
    guint64 corruptions, leaks, check_errors;
    guint64 corruptions_fixed, leaks_fixed;
    guint64 allocated_clusters, total_clusters, fragmented_clusters, compressed_clusters;
    guint64 image_end_offset;
    gboolean has_total;
} VmmCheckResult;
enum { VMM_CHECK_FIX_LEAKS = 1, VMM_CHECK_FIX_ERRORS = 2 };

typedef struct {
    char *id, *name;
    guint64 vm_state_size;
    gint64 date_sec, date_nsec;
    guint64 vm_clock_nsec;
    guint64 icount; /* (guint64)-1 if absent */
} VmmSnapshotInfo;

struct VmmBlockDriver {
    const char *format_name;          /* "qcow2", "raw", "file", "preallocate" */
    gboolean is_protocol;             /* runs on a path, not on a child node */
    gboolean is_filter;               /* passes everything to bs->file */
    const VmmOptKey *create_opts;     /* for create and "-o help"; NULL: cannot create */
    const VmmOptKey *open_opts;       /* runtime options (cache sizes, ...) */

    /* 0..100: how sure the driver is that BUF (the first bytes) is its format. */
    int (*probe)(const guint8 *buf, gsize len, const char *filename);
    /* OPTIONS: the node's options (dotted keys already nested). bs->file is
     * opened by the generic layer for format drivers before this call. */
    gboolean (*open)(VmmBlockDev *bs, JsonObject *options, int flags, GError **error);
    void (*close)(VmmBlockDev *bs);
    /* Creates an image of OPTS (validated against create_opts; "size" in bytes)
     * on FILE (a protocol node opened read-write, already truncated to 0) for
     * format drivers; protocol drivers create FILENAME themselves (FILE NULL). */
    gboolean (*create)(const char *filename, VmmBlockDev *file, JsonObject *opts, GError **error);

    gboolean (*pread)(VmmBlockDev *bs, guint64 offset, guint64 bytes, void *buf, int flags, GError **error);
    gboolean (*pwrite)(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf, int flags, GError **error);
    gboolean (*pwrite_zeroes)(VmmBlockDev *bs, guint64 offset, guint64 bytes, int flags, GError **error);
    gboolean (*pwrite_compressed)(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf, GError **error);
    gboolean (*pdiscard)(VmmBlockDev *bs, guint64 offset, guint64 bytes, GError **error);
    gboolean (*flush)(VmmBlockDev *bs, GError **error);
    /* Status of [OFFSET, OFFSET+BYTES): returns VMM_BLOCK_* bits for the first
     * *PNUM bytes (>= 1), or -1 with error. *MAP and *FILE with OFFSET_VALID. */
    int (*block_status)(VmmBlockDev *bs, guint64 offset, guint64 bytes, guint64 *pnum,
                        guint64 *map, VmmBlockDev **file, GError **error);
    gboolean (*truncate)(VmmBlockDev *bs, guint64 size, gboolean exact, VmmPrealloc prealloc,
                         gboolean shrink_allowed, GError **error);
    /* Bytes the image takes on the host (qemu-img info "disk size"); -1 unknown. */
    gint64 (*allocated_file_size)(VmmBlockDev *bs);
    /* Format-specific part of info ("format-specific": {...}), or NULL. */
    JsonObject *(*info_specific)(VmmBlockDev *bs);
    gboolean (*check)(VmmBlockDev *bs, VmmCheckResult *res, int fix, GError **error);
    gboolean (*snapshot_create)(VmmBlockDev *bs, const VmmSnapshotInfo *sn, GError **error);
    gboolean (*snapshot_goto)(VmmBlockDev *bs, const char *id_or_name, GError **error);
    gboolean (*snapshot_delete)(VmmBlockDev *bs, const char *id_or_name, GError **error);
    GPtrArray *(*snapshot_list)(VmmBlockDev *bs, GError **error); /* VmmSnapshotInfo* */
    gboolean (*amend)(VmmBlockDev *bs, JsonObject *opts, gboolean force, GError **error);
    /* Bytes a new image of this format needs for SIZE bytes of virtual disk of
     * which ALLOCATED are data (qemu-img measure): required and fully-allocated. */
    gboolean (*measure)(JsonObject *create_opts, guint64 size, guint64 allocated,
                        guint64 *required, guint64 *fully_allocated, GError **error);
    /* Rewrites the backing file name and format in the image header. */
    gboolean (*change_backing_file)(VmmBlockDev *bs, const char *backing_file,
                                    const char *backing_fmt, GError **error);
    /* TRUE if a freshly created image reads as zeroes (qemu-img convert -n). */
    gboolean (*has_zero_init)(VmmBlockDev *bs);
    /* Drops every cluster this layer allocates, so that it reads through to
     * its backing chain again (qemu-img commit); NULL: cannot. */
    gboolean (*make_empty)(VmmBlockDev *bs, GError **error);
    /* Changes the node's cache/lock permissions after open (reopen); may be NULL. */
    gboolean (*set_perm)(VmmBlockDev *bs, gboolean write, gboolean share_write, GError **error);
    /* Reserves [OFFSET, OFFSET+BYTES) so that later writes there need no
     * allocation (qcow2: whole clusters, linked in the order of the calls,
     * so writes done afterwards in any order get the layout of in-order
     * writes). What the range reads must not change: a driver that cannot
     * promise that (a backing file would be hidden) fails with
     * VMM_ERROR_UNSUPPORTED. NULL: unsupported (filters pass it down). */
    gboolean (*allocate)(VmmBlockDev *bs, guint64 offset, guint64 bytes, GError **error);
    /* Compressed writes in two steps, so that callers compress on many
     * threads and still place clusters in order: compress_cluster packs
     * the cluster at OFFSET (BYTES: a cluster, or the image's short last
     * one) into OUT (OUT_LEN bytes, too few is an error) and returns its
     * length, or 0 when
     * compressing does not make it smaller (write it with pwrite instead,
     * as pwrite_compressed would); pwrite_precompressed then places it. */
    gssize (*compress_cluster)(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf,
                               void *out, gsize out_len, GError **error);
    gboolean (*pwrite_precompressed)(VmmBlockDev *bs, guint64 offset, guint64 bytes,
                                     const void *cdata, gsize clen, GError **error);
    /* (added by the generic layer) VMM_BDRV_REQ_FUA if pwrite and
     * pwrite_zeroes make FUA writes durable themselves; when 0 the generic
     * layer passes no FUA down and flushes the node after the write instead.
     * MAY_UNMAP and NO_FALLBACK always reach pwrite_zeroes. */
    int supported_write_flags;
    /* Where [OFFSET, OFFSET+BYTES) lies verbatim in a host file, so that a
     * server can splice it between the file and a socket without copying:
     * *FD and *HOST_OFFSET for the first *PNUM bytes; WRITE: for writing it
     * (in place, nothing to allocate). FALSE: go through pread/pwrite (the
     * data is transformed, not allocated here, or the fd is O_DIRECT).
     * NULL: never; filters pass it down. */
    gboolean (*map_host)(VmmBlockDev *bs, guint64 offset, guint64 bytes, gboolean write, int *fd,
                         guint64 *host_offset, guint64 *pnum);
};

struct VmmBlockDev {
    const VmmBlockDriver *drv;
    void *opaque;                 /* the driver's state */
    char *filename;               /* what messages name */
    char *node_name;
    VmmBlockDev *file;            /* protocol child of a format or filter node */
    VmmBlockDev *backing;         /* backing node, or NULL */
    char *backing_file;           /* as written in the image (may be relative) */
    char *backing_format;         /* as written in the image, or NULL */
    guint64 size;                 /* virtual size in bytes */
    int open_flags;               /* VMM_BDRV_O_* */
    gboolean read_only;
    guint32 request_alignment;    /* 1, or 512/4096 with O_DIRECT */
    VmmDetectZeroes detect_zeroes;
    gboolean discard_unmap;       /* discard=unmap (default ignore) */
    gboolean encrypted;
    gint refcnt;
};

/* ---- drivers ---- */
void vmm_block_register(const VmmBlockDriver *drv);
const VmmBlockDriver *vmm_block_find_driver(const char *format_name);
/* All registered drivers, in registration order (NULL-terminated). */
const VmmBlockDriver *const *vmm_block_drivers(void);
/* Registers the built-in drivers; idempotent. Called by vmm_block_open/create. */
void vmm_block_init(void);

/* ---- opening ---- */
/* Opens FILENAME (a path, or a "json:{...}" pseudo-filename) with OPTIONS (may
 * be NULL; "driver", "file.*", "backing.*", cache.*, detect-zeroes, discard,
 * locking, ...). FORMAT NULL probes the format (raw if nothing matches, with the
 * warning QEMU prints for writes to a probed raw image). The backing chain is
 * opened unless VMM_BDRV_O_NO_BACKING, each backing file resolved relative to
 * the directory of the image that names it. */
VmmBlockDev *vmm_block_open(const char *filename, const char *format, JsonObject *options,
                            int flags, GError **error);
VmmBlockDev *vmm_block_ref(VmmBlockDev *bs);
void vmm_block_unref(VmmBlockDev *bs); /* closes at 0 (and flushes first) */

/* Creates FILENAME of FORMAT with OPTS (a JsonObject as parsed from -o, with
 * "size"). For format drivers the file is created through the "file" driver. */
gboolean vmm_block_create(const char *filename, const char *format, JsonObject *opts,
                          GError **error);

/* ---- requests (bounds, read-only, alignment and detect-zeroes handled here) ---- */
gboolean vmm_block_pread(VmmBlockDev *bs, guint64 offset, guint64 bytes, void *buf, GError **error);
gboolean vmm_block_pwrite(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf,
                          int flags, GError **error);
gboolean vmm_block_pwrite_zeroes(VmmBlockDev *bs, guint64 offset, guint64 bytes, int flags,
                                 GError **error);
gboolean vmm_block_pwrite_compressed(VmmBlockDev *bs, guint64 offset, guint64 bytes,
                                     const void *buf, GError **error);
gboolean vmm_block_pdiscard(VmmBlockDev *bs, guint64 offset, guint64 bytes, GError **error);
/* The driver's allocate (through filters); VMM_ERROR_UNSUPPORTED if none. */
gboolean vmm_block_allocate(VmmBlockDev *bs, guint64 offset, guint64 bytes, GError **error);
/* The two steps of vmm_block_pwrite_compressed (see the driver ops): OUT
 * holds OUT_LEN bytes, at least the format's cluster size. Returns the
 * compressed length, 0 if the cluster is to be written uncompressed, -1
 * with an error (VMM_ERROR_UNSUPPORTED if the format has no such steps). */
gssize vmm_block_compress_cluster(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf,
                                  void *out, gsize out_len, GError **error);
gboolean vmm_block_pwrite_precompressed(VmmBlockDev *bs, guint64 offset, guint64 bytes,
                                        const void *cdata, gsize clen, GError **error);
gboolean vmm_block_flush(VmmBlockDev *bs, GError **error);
/* See VmmBlockDriver.map_host; FALSE also for a request out of range, and
 * for WRITE where the generic layer has work to do on the data (read-only,
 * detect-zeroes, the probed raw image's first sector). */
gboolean vmm_block_map_host(VmmBlockDev *bs, guint64 offset, guint64 bytes, gboolean write, int *fd,
                            guint64 *host_offset, guint64 *pnum);
/* A write of BYTES at OFFSET whose data is HEAD (HEAD_LEN bytes) followed by
 * what PIPES hold, in order (common/splice.h), for a range that
 * vmm_block_map_host(WRITE) maps in whole. The pipes are emptied (a failed
 * one keeps bytes: free it). FUA and writethrough as vmm_block_pwrite. */
struct VmmSplicePipe;
gboolean vmm_block_pwrite_spliced(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *head,
                                  gsize head_len, struct VmmSplicePipe *const *pipes, guint npipes, int flags,
                                  GError **error);
/* Vectored reads and writes: the data is IOV (NIOV pieces that add up to
 * BYTES), e.g. guest memory. Where vmm_block_map_host maps the whole range
 * onto a host file, preadv/pwritev go there with no copy of ours; otherwise
 * the data passes through one buffer and vmm_block_pread/pwrite. FUA and
 * writethrough as vmm_block_pwrite. */
struct iovec;
gboolean vmm_block_preadv(VmmBlockDev *bs, guint64 offset, guint64 bytes, const struct iovec *iov,
                          guint niov, GError **error);
gboolean vmm_block_pwritev(VmmBlockDev *bs, guint64 offset, guint64 bytes, const struct iovec *iov,
                           guint niov, int flags, GError **error);
int vmm_block_status(VmmBlockDev *bs, guint64 offset, guint64 bytes, guint64 *pnum,
                     guint64 *map, VmmBlockDev **file, GError **error);
/* Like vmm_block_status but looks down the backing chain: ALLOCATED means
 * allocated in any layer from BS down to (excluding) BASE; *DEPTH (may be NULL)
 * gets the layer (1 = BS) or 0 if unallocated everywhere. */
int vmm_block_status_above(VmmBlockDev *bs, VmmBlockDev *base, guint64 offset, guint64 bytes,
                           guint64 *pnum, guint64 *map, VmmBlockDev **file, int *depth,
                           GError **error);
gboolean vmm_block_truncate(VmmBlockDev *bs, guint64 size, gboolean exact, VmmPrealloc prealloc,
                            gboolean shrink_allowed, GError **error);
guint64 vmm_block_size(VmmBlockDev *bs);
/* The driver's make_empty, then a flush; an error names the node if the
 * format cannot do it. */
gboolean vmm_block_make_empty(VmmBlockDev *bs, GError **error);

/* ---- helpers for drivers ---- */
gboolean vmm_buffer_is_zero(const void *buf, gsize len);
gboolean vmm_parse_prealloc(const char *s, VmmPrealloc *out, GError **error);
const char *vmm_prealloc_name(VmmPrealloc p);
/* Resolves a backing file name relative to the image that names it. */
char *vmm_block_resolve_backing(const char *image_filename, const char *backing);

/* ---- additions of the generic layer (block.c) ---- */

/* Node permissions, QEMU's BLK_PERM_* bits (include/block/block-common.h).
 * The file driver turns them into image locks that QEMU's own processes see:
 * byte 100+N held while permission N is used, byte 200+N while it is not
 * shared (see docs/block-layer.md). */
enum {
    VMM_BLK_PERM_CONSISTENT_READ = 0x01,
    VMM_BLK_PERM_WRITE = 0x02,
    VMM_BLK_PERM_WRITE_UNCHANGED = 0x04,
    VMM_BLK_PERM_RESIZE = 0x08,
    VMM_BLK_PERM_ALL = 0x0f,
};
/* What the node's parent (or user) asked of it: the permissions it uses and
 * those it lets others use. Protocol drivers lock these at open and again in
 * their set_perm. */
void vmm_block_get_perm(VmmBlockDev *bs, guint *perm, guint *shared);
/* TRUE when the node runs on a path (file, ...) and may grow by writes. */
gboolean vmm_block_is_protocol(VmmBlockDev *bs);
/* The node's format driver name ("qcow2"), or NULL. */
const char *vmm_block_format_name(VmmBlockDev *bs);
/* Human name of one VMM_BLK_PERM_* bit ("write"), as QEMU's messages spell it. */
const char *vmm_block_perm_name(guint perm_bit);

/* Testing: makes the file driver act as on a host without OFD locks (POSIX
 * lock fallback and its warning). */
void vmm_block_file_set_ofd_available(gboolean available);

/* Option values that may arrive typed (JSON numbers/booleans, from a typed
 * spec) or as text (json:, --image-opts): sizes accept suffixes ("64k").
 * Absent keys give DEF; bad values are errors naming the key. */
gboolean vmm_block_opt_size(JsonObject *opts, const char *key, guint64 def, guint64 *out, GError **error);
gboolean vmm_block_opt_bool(JsonObject *opts, const char *key, gboolean def, gboolean *out, GError **error);
