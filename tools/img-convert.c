/* vmm-img convert: copies one or more images (concatenated) into a new image
 * of any format, as qemu-img convert.
 *
 * The virtual range is cut into chunks of 2 MiB. A pool of workers (-m,
 * default 8) takes chunks in order and runs each in three steps:
 *  1. (in parallel) read the chunk, split it into data, zero and backing
 *     runs (the source's block status, then a scan of the data in -S
 *     granules), and compress its clusters with -c;
 *  2. (in chunk order, unless -W) what decides the target's layout: the
 *     target allocates the data ranges ahead (vmm_block_allocate: qcow2
 *     links its clusters in order, the file reserves extents), or, where it
 *     cannot, the writes themselves; compressed clusters are placed here;
 *  3. (in parallel) the data writes into the ranges allocated in step 2.
 * So a qcow2 target gets its clusters laid out sequentially as with
 * qemu-img's in-order writes, while reads, compression and data copies run
 * on all cores. Zero ranges are not written to a target that starts zeroed,
 * and written as zeroes otherwise. */
#include "img.h"

#include <stdlib.h>
#include <string.h>

#define CONVERT_CHUNK (2u << 20)
#define CONVERT_MAX_SPARSE (16u << 20)
#define CONVERT_MAX_WORKERS 16
#define CONVERT_BUF_ALIGN 4096

typedef enum { RUN_DATA, RUN_ZERO, RUN_BACKING } RunKind;

typedef struct {
    VmmBlockDev **src;
    guint64 *src_start;       /* virtual offset where each source begins */
    guint n_src;
    guint64 total;
    VmmBlockDev *dst;
    guint64 chunk;
    guint64 cluster;          /* the target's cluster size (compression unit) */
    guint64 min_sparse;       /* 0: write everything as data */
    gboolean compress;
    gboolean precompress;     /* the target compresses in two steps (step 1 and 2) */
    gboolean zero_init;       /* the target reads as zeroes before we write */
    gboolean target_has_backing;
    gboolean out_of_order;
    gint allocate_ahead;      /* atomic: step 2 allocates, step 3 writes */

    GMutex lock;
    GCond turn[CONVERT_MAX_WORKERS];
    guint n_workers;
    guint64 next_chunk;       /* next chunk to hand out */
    guint64 next_write;       /* in-order mode: the chunk whose turn it is */
    guint64 n_chunks;
    guint64 done_bytes;
    GError *error;            /* first failure; the others stop */
} Convert;

typedef struct {
    guint64 offset, len;
    RunKind kind;
    gssize clen;              /* -c: compressed length, 0: write as data */
} Run;

/* One worker's chunk: its runs and buffers. */
typedef struct {
    guint64 offset, len;
    guint8 *buf;              /* the chunk's data */
    guint8 *cbuf;             /* -c: compressed clusters, one cluster apart */
    GArray *runs;             /* Run, after reading */
    GArray *pieces;           /* Run, what to write (data split at zeroes) */
    gboolean allocated;       /* step 2 allocated the data pieces */
} Chunk;

static void convert_fail(Convert *s, GError *err)
{
    g_mutex_lock(&s->lock);
    if (!s->error)
        s->error = err;
    else
        g_error_free(err);
    for (guint i = 0; i < s->n_workers; i++)
        g_cond_broadcast(&s->turn[i]);
    g_mutex_unlock(&s->lock);
}

/* Which source holds virtual OFFSET. */
static guint source_of(Convert *s, guint64 offset)
{
    guint i = 0;
    while (i + 1 < s->n_src && offset >= s->src_start[i + 1])
        i++;
    return i;
}

/* The kind of the run at OFFSET in source I, and its length (<= BYTES). */
static gboolean source_run(Convert *s, guint i, guint64 offset, guint64 bytes, RunKind *kind,
                           guint64 *len, GError **error)
{
    VmmBlockDev *bs = s->src[i];
    guint64 pnum = 0, map = 0;
    VmmBlockDev *file = NULL;
    int ret;
    if (s->target_has_backing)
        ret = vmm_block_status(bs, offset, bytes, &pnum, &map, &file, error);
    else
        ret = vmm_block_status_above(bs, NULL, offset, bytes, &pnum, &map, &file, NULL, error);
    if (ret < 0)
        return FALSE;
    if (pnum == 0 || pnum > bytes)
        pnum = bytes;
    *len = pnum;
    if (ret & VMM_BLOCK_ZERO)
        *kind = RUN_ZERO;
    else if (ret & VMM_BLOCK_DATA)
        *kind = RUN_DATA;
    else
        *kind = s->target_has_backing ? RUN_BACKING : RUN_ZERO;
    /* -S 0: the target is fully allocated, zeroes are written as data. */
    if (*kind == RUN_ZERO && s->min_sparse == 0 && !s->compress)
        *kind = RUN_DATA;
    return TRUE;
}

static void append_run(GArray *runs, guint64 offset, guint64 len, RunKind kind)
{
    if (runs->len) {
        Run *last = &g_array_index(runs, Run, runs->len - 1);
        if (last->kind == kind && last->offset + last->len == offset) {
            last->len += len;
            return;
        }
    }
    Run r = {.offset = offset, .len = len, .kind = kind};
    g_array_append_val(runs, r);
}

/* Splits the chunk into runs and reads its data into its buffer. */
static gboolean read_chunk(Convert *s, Chunk *c, GError **error)
{
    g_array_set_size(c->runs, 0);
    guint64 pos = c->offset, end = c->offset + c->len;
    while (pos < end) {
        guint i = source_of(s, pos);
        guint64 src_off = pos - s->src_start[i];
        guint64 src_end = s->src_start[i] + vmm_block_size(s->src[i]);
        guint64 want = MIN(end, src_end) - pos;
        RunKind kind;
        guint64 len;
        if (!source_run(s, i, src_off, want, &kind, &len, error))
            return FALSE;
        guint8 *dst = c->buf + (pos - c->offset);
        if (kind == RUN_DATA) {
            if (!vmm_block_pread(s->src[i], src_off, len, dst, error))
                return FALSE;
        } else if (s->compress) {
            memset(dst, 0, len); /* compressed clusters are whole */
        }
        append_run(c->runs, pos, len, kind);
        pos += len;
    }
    return TRUE;
}

/* Splits data run R into data and zero pieces at zero stretches of -S
 * granules (aligned to the virtual disk, as qemu-img's sectors). A granule
 * is data as soon as one byte is not zero, so scanning data costs little. */
static void split_sparse(Convert *s, const Chunk *c, const Run *r)
{
    const guint8 *data = c->buf + (r->offset - c->offset);
    guint64 g = s->min_sparse, pos = 0;

    if (g == 0) {
        append_run(c->pieces, r->offset, r->len, RUN_DATA);
        return;
    }
    while (pos < r->len) {
        guint64 next = MIN(r->len, ((r->offset + pos) / g + 1) * g - r->offset);
        RunKind kind = vmm_buffer_is_zero(data + pos, next - pos) ? RUN_ZERO : RUN_DATA;
        append_run(c->pieces, r->offset + pos, next - pos, kind);
        pos = next;
    }
}

static gboolean range_all_backing(const Chunk *c, guint64 offset, guint64 len)
{
    for (guint i = 0; i < c->runs->len; i++) {
        const Run *r = &g_array_index(c->runs, Run, i);
        if (r->offset < offset + len && offset < r->offset + r->len && r->kind != RUN_BACKING)
            return FALSE;
    }
    return TRUE;
}

/* -c: one piece per cluster, compressed here when the target can do it
 * ahead of the write. */
static gboolean compress_chunk(Convert *s, Chunk *c, GError **error)
{
    for (guint64 off = 0; off < c->len; off += s->cluster) {
        guint64 n = MIN(s->cluster, c->len - off);
        const guint8 *data = c->buf + off;
        Run p = {.offset = c->offset + off, .len = n, .kind = RUN_DATA};
        if (range_all_backing(c, p.offset, n))
            p.kind = RUN_BACKING;
        else if (vmm_buffer_is_zero(data, n))
            p.kind = RUN_ZERO;
        else if (s->precompress) {
            p.clen = vmm_block_compress_cluster(s->dst, p.offset, n, data, c->cbuf + off, s->cluster, error);
            if (p.clen < 0)
                return FALSE;
        }
        g_array_append_val(c->pieces, p);
    }
    return TRUE;
}

/* Step 1: everything that does not depend on the order of chunks. */
static gboolean prepare_chunk(Convert *s, Chunk *c, GError **error)
{
    g_array_set_size(c->pieces, 0);
    if (!read_chunk(s, c, error))
        return FALSE;
    if (s->compress)
        return compress_chunk(s, c, error);
    for (guint i = 0; i < c->runs->len; i++) {
        const Run *r = &g_array_index(c->runs, Run, i);
        if (r->kind == RUN_DATA)
            split_sparse(s, c, r);
        else
            append_run(c->pieces, r->offset, r->len, r->kind);
    }
    return TRUE;
}

static gboolean write_zero_range(Convert *s, guint64 offset, guint64 len, GError **error)
{
    if (s->zero_init || len == 0)
        return TRUE;
    return vmm_block_pwrite_zeroes(s->dst, offset, len, VMM_BDRV_REQ_MAY_UNMAP, error);
}

/* A target that starts zeroed holds nothing where we write: let the
 * protocol reserve each range as one extent (see VMM_BDRV_REQ_ALLOCATE). */
static int data_write_flags(const Convert *s)
{
    return s->zero_init ? VMM_BDRV_REQ_ALLOCATE : 0;
}

static gboolean write_piece(Convert *s, const Chunk *c, const Run *p, GError **error)
{
    const guint8 *data = c->buf + (p->offset - c->offset);
    switch (p->kind) {
    case RUN_BACKING:
        return TRUE;
    case RUN_ZERO:
        return write_zero_range(s, p->offset, p->len, error);
    case RUN_DATA:
        if (s->compress && s->precompress && p->clen > 0)
            return vmm_block_pwrite_precompressed(s->dst, p->offset, p->len, c->cbuf + (p->offset - c->offset),
                                                  (gsize)p->clen, error);
        if (s->compress && !s->precompress)
            return vmm_block_pwrite_compressed(s->dst, p->offset, p->len, data, error);
        return vmm_block_pwrite(s->dst, p->offset, p->len, data, c->allocated ? 0 : data_write_flags(s), error);
    }
    return TRUE;
}

/* Step 2, in chunk order: allocates the data pieces in the target (the
 * data follows in step 3), or writes them when the target cannot. */
static gboolean place_chunk(Convert *s, Chunk *c, GError **error)
{
    c->allocated = g_atomic_int_get(&s->allocate_ahead);
    for (guint i = 0; i < c->pieces->len; i++) {
        const Run *p = &g_array_index(c->pieces, Run, i);
        if (p->kind == RUN_DATA && c->allocated) {
            GError *err = NULL;
            if (vmm_block_allocate(s->dst, p->offset, p->len, &err))
                continue;
            if (!g_error_matches(err, VMM_ERROR, VMM_ERROR_UNSUPPORTED)) {
                g_propagate_error(error, err);
                return FALSE;
            }
            /* This target cannot: from here on every write is done in
             * order, including the pieces of this chunk allocated so far. */
            g_error_free(err);
            g_atomic_int_set(&s->allocate_ahead, FALSE);
            c->allocated = FALSE;
            for (guint k = 0; k < i; k++)
                if (g_array_index(c->pieces, Run, k).kind == RUN_DATA &&
                    !write_piece(s, c, &g_array_index(c->pieces, Run, k), error))
                    return FALSE;
        }
        if (!write_piece(s, c, p, error))
            return FALSE;
    }
    return TRUE;
}

/* Step 3: the data of the pieces allocated in step 2. */
static gboolean fill_chunk(Convert *s, const Chunk *c, GError **error)
{
    if (!c->allocated)
        return TRUE;
    for (guint i = 0; i < c->pieces->len; i++) {
        const Run *p = &g_array_index(c->pieces, Run, i);
        if (p->kind == RUN_DATA && !write_piece(s, c, p, error))
            return FALSE;
    }
    return TRUE;
}

static void report_progress(Convert *s, guint64 bytes)
{
    g_mutex_lock(&s->lock);
    s->done_bytes += bytes;
    img_progress_print(s->total ? s->done_bytes * 100.0 / s->total : 100.0);
    g_mutex_unlock(&s->lock);
}

/* In-order mode: wait until chunk IDX may place its data; FALSE if the copy
 * failed. The chunks waiting are fewer than the workers and consecutive,
 * so each waits on its own condition and only its predecessor wakes it. */
static gboolean wait_turn(Convert *s, guint64 idx)
{
    if (s->out_of_order)
        return TRUE;
    g_mutex_lock(&s->lock);
    while (s->next_write != idx && !s->error)
        g_cond_wait(&s->turn[idx % s->n_workers], &s->lock);
    gboolean ok = s->error == NULL;
    g_mutex_unlock(&s->lock);
    return ok;
}

static void end_turn(Convert *s)
{
    if (s->out_of_order)
        return;
    g_mutex_lock(&s->lock);
    s->next_write++;
    g_cond_signal(&s->turn[s->next_write % s->n_workers]);
    g_mutex_unlock(&s->lock);
}

static gpointer convert_worker(gpointer opaque)
{
    Convert *s = opaque;
    /* Page-aligned: the kernel copies between the page cache and a buffer
     * that shares its alignment about half again as fast. */
    Chunk c = {.buf = g_aligned_alloc(s->chunk, 1, CONVERT_BUF_ALIGN),
               .cbuf = s->precompress ? g_aligned_alloc(s->chunk, 1, CONVERT_BUF_ALIGN) : NULL,
               .runs = g_array_new(FALSE, FALSE, sizeof(Run)),
               .pieces = g_array_new(FALSE, FALSE, sizeof(Run))};
    for (;;) {
        g_mutex_lock(&s->lock);
        guint64 idx = s->next_chunk++;
        gboolean stop = idx >= s->n_chunks || s->error;
        g_mutex_unlock(&s->lock);
        if (stop)
            break;
        c.offset = idx * s->chunk;
        c.len = MIN(s->chunk, s->total - c.offset);
        GError *err = NULL;
        gboolean ok = prepare_chunk(s, &c, &err);
        if (!wait_turn(s, idx)) {
            if (err)
                g_error_free(err);
            break;
        }
        if (ok)
            ok = place_chunk(s, &c, &err);
        end_turn(s);
        if (ok)
            ok = fill_chunk(s, &c, &err);
        if (!ok) {
            convert_fail(s, err);
            break;
        }
        report_progress(s, c.len);
    }
    g_array_unref(c.runs);
    g_array_unref(c.pieces);
    g_aligned_free(c.buf);
    g_aligned_free(c.cbuf);
    return NULL;
}

static gboolean uses_page_cache(VmmBlockDev *bs)
{
    return !(bs->open_flags & VMM_BDRV_O_NOCACHE) && (!bs->file || uses_page_cache(bs->file));
}

/* -m requests in flight, one per thread. Through the page cache a copy is
 * bound by the CPU (memory copies), and more threads than processors only
 * contend for caches and the files' locks: measured on 2 CPUs, 8 threads
 * took 1.5 times as long as 2. Direct I/O waits on the device, where all
 * of -m pays off. */
static guint worker_count(Convert *s, guint requested)
{
    guint n = MAX(1, MIN(requested, CONVERT_MAX_WORKERS));
    gboolean buffered = uses_page_cache(s->dst);
    for (guint i = 0; i < s->n_src; i++)
        buffered = buffered && uses_page_cache(s->src[i]);
    if (buffered)
        n = MIN(n, MAX(1u, g_get_num_processors()));
    return n;
}

static gboolean run_convert(Convert *s, guint workers, GError **error)
{
    GThread *threads[CONVERT_MAX_WORKERS];

    s->n_workers = worker_count(s, workers);
    g_mutex_init(&s->lock);
    for (guint i = 0; i < s->n_workers; i++)
        g_cond_init(&s->turn[i]);
    s->n_chunks = (s->total + s->chunk - 1) / s->chunk;
    for (guint i = 0; i < s->n_workers; i++)
        threads[i] = g_thread_new("convert", convert_worker, s);
    for (guint i = 0; i < s->n_workers; i++)
        g_thread_join(threads[i]);
    g_mutex_clear(&s->lock);
    for (guint i = 0; i < s->n_workers; i++)
        g_cond_clear(&s->turn[i]);
    if (s->error) {
        g_propagate_error(error, s->error);
        s->error = NULL;
        return FALSE;
    }
    return TRUE;
}


typedef struct {
    const char *src_fmt, *out_fmt, *out_baseimg, *out_basefmt, *cache, *src_cache;
    char *options;
    gboolean compress, progress, skip_create, out_of_order, target_is_zero, quiet;
    gboolean image_opts, target_image_opts, force_share;
    guint64 min_sparse;
    guint workers;
} ConvertArgs;

static int parse_args(int argc, char **argv, ConvertArgs *a)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, IMG_OPT_OBJECT},
        {"image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS},
        {"target-image-opts", no_argument, NULL, IMG_OPT_TARGET_IMAGE_OPTS},
        {"target-is-zero", no_argument, NULL, IMG_OPT_TARGET_IS_ZERO},
        {"force-share", no_argument, NULL, 'U'},
        {"salvage", no_argument, NULL, IMG_OPT_SALVAGE},
        {"bitmaps", no_argument, NULL, IMG_OPT_BITMAPS},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, ":hf:O:B:Cco:l:S:pt:T:qnm:WUr:F:", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("usage: vmm-img convert [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] "
                   "[-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-S sparse_size] "
                   "[-m num_workers] [-W] [--target-is-zero] filename [filename2 [...]] output_filename\n");
            return 0;
        case 'f': a->src_fmt = optarg; break;
        case 'O': a->out_fmt = optarg; break;
        case 'B': a->out_baseimg = optarg; break;
        case 'F': a->out_basefmt = optarg; break;
        case 'C': break; /* copy offloading: our copies are plain reads and writes */
        case 'c': a->compress = TRUE; break;
        case 'o': img_append_options(&a->options, optarg); break;
        case 'l':
            img_error("convert -l (copy from an internal snapshot) is not supported");
            return 1;
        case 'S': {
            guint64 v;
            if (!img_parse_size(optarg, &v) || v % 512 || v > CONVERT_MAX_SPARSE) {
                img_error("Invalid buffer size for sparse output specified. Valid sizes are "
                          "multiples of 512 up to %u. Select 0 to disable sparse detection "
                          "(fully allocates output).", CONVERT_MAX_SPARSE);
                return 1;
            }
            a->min_sparse = v;
            break;
        }
        case 'p': a->progress = TRUE; break;
        case 't': a->cache = optarg; break;
        case 'T': a->src_cache = optarg; break;
        case 'q': a->quiet = TRUE; break;
        case 'n': a->skip_create = TRUE; break;
        case 'm': {
            guint64 v;
            if (!vmm_parse_number(NULL, NULL, optarg, &v, NULL) || v < 1 || v > CONVERT_MAX_WORKERS) {
                img_error("Invalid number of coroutines. Allowed number of coroutines is between "
                          "1 and %d", CONVERT_MAX_WORKERS);
                return 1;
            }
            a->workers = (guint)v;
            break;
        }
        case 'W': a->out_of_order = TRUE; break;
        case 'U': a->force_share = TRUE; break;
        case 'r': break; /* rate limit: accepted, not applied */
        case IMG_OPT_SALVAGE:
            img_error("convert --salvage is not supported");
            return 1;
        case IMG_OPT_BITMAPS:
            img_error("convert --bitmaps is not supported");
            return 1;
        case IMG_OPT_IMAGE_OPTS: a->image_opts = TRUE; break;
        case IMG_OPT_TARGET_IMAGE_OPTS: a->target_image_opts = TRUE; break;
        case IMG_OPT_TARGET_IS_ZERO: a->target_is_zero = TRUE; break;
        case IMG_OPT_OBJECT:
            if (!img_object_option(optarg))
                return 1;
            break;
        default:
            return img_bad_option(argv, c);
        }
    }
    return -1;
}

static gboolean create_target(const char *out_filename, const ConvertArgs *a, guint64 total,
                              GError **error)
{
    const VmmBlockDriver *drv = vmm_block_find_driver(a->out_fmt);
    if (!drv || !drv->create) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED, "Unknown file format '%s'", a->out_fmt);
        return FALSE;
    }
    g_autoptr(JsonObject) opts = img_parse_create_opts(drv, a->options, error);
    if (!opts)
        return FALSE;
    if (a->out_baseimg)
        json_object_set_string_member(opts, "backing_file", a->out_baseimg);
    if (a->out_basefmt)
        json_object_set_string_member(opts, "backing_fmt", a->out_basefmt);
    if (vmm_opts_get_string(opts, "backing_file", NULL) && !vmm_opts_get_string(opts, "backing_fmt", NULL)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "Use of backing file requires explicit backing format");
        return FALSE;
    }
    if (!vmm_opts_has(opts, "size"))
        json_object_set_int_member(opts, "size", (gint64)total);
    return vmm_block_create(out_filename, a->out_fmt, opts, error);
}

static void close_all(VmmBlockDev **src, guint n, VmmBlockDev *dst)
{
    for (guint i = 0; i < n; i++)
        if (src[i])
            vmm_block_unref(src[i]);
    if (dst)
        vmm_block_unref(dst);
}

int img_convert(int argc, char **argv)
{
    ConvertArgs a = {.out_fmt = "raw", .min_sparse = 4096, .workers = 8, .cache = "unsafe"};
    GError *err = NULL;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0) {
        g_free(a.options);
        return rc;
    }
    g_autofree char *options_owned G_GNUC_UNUSED = a.options; /* frees -o at return */

    if (a.options && vmm_opts_wants_help(a.options)) {
        const VmmBlockDriver *drv = vmm_block_find_driver(a.out_fmt);
        if (!drv) {
            img_error("Unknown file format '%s'", a.out_fmt);
            return 1;
        }
        img_print_create_opts_help(drv, NULL);
        return 0;
    }
    if (argc - optind < 2)
        return img_usage_error("Expecting image file name");
    if (a.target_is_zero && !a.skip_create) {
        img_error("--target-is-zero requires use of -n flag");
        return 1;
    }
    if (a.skip_create && (a.options || a.out_baseimg)) {
        img_error(a.options ? "-o has no effect when skipping image creation"
                            : "-B has no effect when skipping image creation");
        return 1;
    }
    if (a.out_basefmt && !a.out_baseimg) {
        img_error("-F needs -B (backing file format without a backing file)");
        return 1;
    }
    guint n_src = (guint)(argc - optind - 1);
    const char *out_filename = argv[argc - 1];
    g_autofree VmmBlockDev **src = g_new0(VmmBlockDev *, n_src);
    g_autofree guint64 *starts = g_new0(guint64, n_src);
    guint64 total = 0;
    ImgOpenSpec sspec = {.fmt = a.src_fmt, .cache = a.src_cache, .image_opts = a.image_opts,
                         .force_share = a.force_share, .quiet = a.quiet};
    for (guint i = 0; i < n_src; i++) {
        src[i] = img_open(argv[optind + i], &sspec, &err);
        if (!src[i]) {
            img_report_error(err, NULL);
            close_all(src, n_src, NULL);
            return 1;
        }
        starts[i] = total;
        total += vmm_block_size(src[i]);
    }

    if (!a.skip_create && !create_target(out_filename, &a, total, &err)) {
        img_report_error(err, "%s", out_filename);
        close_all(src, n_src, NULL);
        return 1;
    }
    ImgOpenSpec dspec = {.fmt = a.target_image_opts ? NULL : a.out_fmt, .cache = a.cache,
                         .image_opts = a.target_image_opts, .writable = TRUE,
                         .no_backing = TRUE};
    VmmBlockDev *dst = img_open(out_filename, &dspec, &err);
    if (!dst) {
        img_report_error(err, NULL);
        close_all(src, n_src, NULL);
        return 1;
    }
    if (a.skip_create && vmm_block_size(dst) < total) {
        img_error("%s: target image is smaller than the source (%" G_GUINT64_FORMAT " < %"
                  G_GUINT64_FORMAT " bytes)", out_filename, vmm_block_size(dst), total);
        close_all(src, n_src, dst);
        return 1;
    }
    Convert s = {.src = src, .src_start = starts, .n_src = n_src, .total = total, .dst = dst,
                 .chunk = CONVERT_CHUNK, .min_sparse = a.min_sparse, .compress = a.compress,
                 .target_has_backing = a.out_baseimg != NULL, .out_of_order = a.out_of_order};
    if (a.compress) {
        if (!dst->drv->pwrite_compressed) {
            img_error("Compression not supported for this file format");
            close_all(src, n_src, dst);
            return 1;
        }
        s.cluster = img_cluster_size(dst);
        if (s.cluster == 0)
            s.cluster = 65536;
        /* Chunks of whole clusters: compressed clusters are placed whole. */
        s.chunk = (CONVERT_CHUNK + s.cluster - 1) / s.cluster * s.cluster;
        s.precompress = dst->drv->compress_cluster && dst->drv->pwrite_precompressed;
    }
    if (a.target_is_zero)
        s.zero_init = TRUE;
    else if (!a.skip_create && !s.target_has_backing && dst->drv->has_zero_init)
        s.zero_init = dst->drv->has_zero_init(dst);
    /* Allocating ahead keeps what the target reads (zeroes): only where
     * nothing else (old data, a backing file) would show through. */
    s.allocate_ahead = s.zero_init && !s.target_has_backing && !a.compress &&
                       !getenv("VMM_IMG_CONVERT_NO_ALLOCATE"); /* tests force the fallback */

    img_progress_init(a.progress && !a.quiet, 1.0);
    gboolean ok = run_convert(&s, a.workers, &err);
    img_progress_end();
    if (ok)
        ok = vmm_block_flush(dst, &err);
    if (!ok)
        img_report_error(err, "error while writing %s", out_filename);
    close_all(src, n_src, dst);
    return ok ? 0 : 1;
}
