/* vmm-img convert: copies one or more images (concatenated) into a new image
 * of any format, as qemu-img convert.
 *
 * The virtual range is cut into chunks (2 MiB, or one target cluster when
 * compressing). A pool of workers (-m, default 8) reads chunks concurrently;
 * without -W the writes are then done in chunk order, as qemu-img does, so a
 * qcow2 target gets its clusters laid out sequentially. Zero ranges (from the
 * source's block status, or found by scanning data in -S granules) are not
 * written to a target that starts zeroed, and written as zeroes otherwise. */
#include "img.h"

#include <string.h>

#define CONVERT_CHUNK (2u << 20)
#define CONVERT_MAX_SPARSE (16u << 20)
#define CONVERT_MAX_WORKERS 16

typedef enum { RUN_DATA, RUN_ZERO, RUN_BACKING } RunKind;

typedef struct {
    VmmBlockDev **src;
    guint64 *src_start;       /* virtual offset where each source begins */
    guint n_src;
    guint64 total;
    VmmBlockDev *dst;
    guint64 chunk;
    guint64 min_sparse;       /* 0: write everything as data */
    gboolean compress;
    gboolean zero_init;       /* the target reads as zeroes before we write */
    gboolean target_has_backing;
    gboolean out_of_order;

    GMutex lock;
    GCond turn;
    guint64 next_chunk;       /* next chunk to hand out */
    guint64 next_write;       /* in-order mode: the chunk whose turn it is to write */
    guint64 n_chunks;
    guint64 done_bytes;
    GError *error;            /* first failure; the others stop */
} Convert;

static gboolean convert_failed(Convert *s)
{
    g_mutex_lock(&s->lock);
    gboolean failed = s->error != NULL;
    g_mutex_unlock(&s->lock);
    return failed;
}

static void convert_fail(Convert *s, GError *err)
{
    g_mutex_lock(&s->lock);
    if (!s->error)
        s->error = err;
    else
        g_error_free(err);
    g_cond_broadcast(&s->turn);
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

typedef struct {
    guint64 offset, len;
    RunKind kind;
} Run;

/* Splits chunk [OFFSET, OFFSET+LEN) into runs and reads its data into BUF. */
static gboolean read_chunk(Convert *s, guint64 offset, guint64 len, guint8 *buf, GArray *runs,
                           GError **error)
{
    g_array_set_size(runs, 0);
    guint64 pos = offset;
    while (pos < offset + len) {
        guint i = source_of(s, pos);
        guint64 src_off = pos - s->src_start[i];
        guint64 src_end = s->src_start[i] + vmm_block_size(s->src[i]);
        guint64 want = MIN(offset + len, src_end) - pos;
        Run r = {.offset = pos};
        if (!source_run(s, i, src_off, want, &r.kind, &r.len, error))
            return FALSE;
        if (r.kind == RUN_DATA || s->compress) {
            if (r.kind == RUN_DATA) {
                if (!vmm_block_pread(s->src[i], src_off, r.len, buf + (pos - offset), error))
                    return FALSE;
            } else {
                memset(buf + (pos - offset), 0, r.len);
            }
        }
        if (runs->len && g_array_index(runs, Run, runs->len - 1).kind == r.kind)
            g_array_index(runs, Run, runs->len - 1).len += r.len;
        else
            g_array_append_val(runs, r);
        pos += r.len;
    }
    return TRUE;
}

static gboolean write_zero_range(Convert *s, guint64 offset, guint64 len, GError **error)
{
    if (s->zero_init || len == 0)
        return TRUE;
    return vmm_block_pwrite_zeroes(s->dst, offset, len, VMM_BDRV_REQ_MAY_UNMAP, error);
}

/* Writes DATA, leaving out zero stretches of at least min_sparse bytes. */
static gboolean write_sparse(Convert *s, guint64 offset, guint64 len, const guint8 *data,
                             GError **error)
{
    if (s->min_sparse == 0)
        return vmm_block_pwrite(s->dst, offset, len, data, 0, error);
    guint64 pos = 0;
    while (pos < len) {
        /* Granules are aligned to the virtual disk, as qemu-img's sectors. */
        guint64 gran_end = MIN(len, ((offset + pos) / s->min_sparse + 1) * s->min_sparse - offset);
        gboolean zero = vmm_buffer_is_zero(data + pos, gran_end - pos);
        guint64 end = gran_end;
        while (end < len) {
            guint64 next = MIN(len, end + s->min_sparse);
            if (vmm_buffer_is_zero(data + end, next - end) != zero)
                break;
            end = next;
        }
        gboolean ok = zero ? write_zero_range(s, offset + pos, end - pos, error)
                           : vmm_block_pwrite(s->dst, offset + pos, end - pos, data + pos, 0, error);
        if (!ok)
            return FALSE;
        pos = end;
    }
    return TRUE;
}

static gboolean write_chunk(Convert *s, guint64 offset, guint64 len, const guint8 *buf,
                            GArray *runs, GError **error)
{
    if (s->compress) {
        gboolean all_backing = runs->len == 1 && g_array_index(runs, Run, 0).kind == RUN_BACKING;
        if (all_backing)
            return TRUE;
        if (vmm_buffer_is_zero(buf, len))
            return write_zero_range(s, offset, len, error);
        return vmm_block_pwrite_compressed(s->dst, offset, len, buf, error);
    }
    for (guint i = 0; i < runs->len; i++) {
        const Run *r = &g_array_index(runs, Run, i);
        const guint8 *data = buf + (r->offset - offset);
        gboolean ok = TRUE;
        switch (r->kind) {
        case RUN_BACKING: break;
        case RUN_ZERO: ok = write_zero_range(s, r->offset, r->len, error); break;
        case RUN_DATA: ok = write_sparse(s, r->offset, r->len, data, error); break;
        }
        if (!ok)
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

/* In-order mode: wait until chunk IDX may write; FALSE if the copy failed. */
static gboolean wait_turn(Convert *s, guint64 idx)
{
    if (s->out_of_order)
        return TRUE;
    g_mutex_lock(&s->lock);
    while (s->next_write != idx && !s->error)
        g_cond_wait(&s->turn, &s->lock);
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
    g_cond_broadcast(&s->turn);
    g_mutex_unlock(&s->lock);
}

static gpointer convert_worker(gpointer opaque)
{
    Convert *s = opaque;
    guint8 *buf = g_malloc(s->chunk);
    GArray *runs = g_array_new(FALSE, FALSE, sizeof(Run));
    for (;;) {
        g_mutex_lock(&s->lock);
        guint64 idx = s->next_chunk++;
        gboolean stop = idx >= s->n_chunks || s->error;
        g_mutex_unlock(&s->lock);
        if (stop)
            break;
        guint64 offset = idx * s->chunk;
        guint64 len = MIN(s->chunk, s->total - offset);
        GError *err = NULL;
        gboolean ok = read_chunk(s, offset, len, buf, runs, &err);
        if (!wait_turn(s, idx)) {
            if (err)
                g_error_free(err);
            break;
        }
        if (ok)
            ok = write_chunk(s, offset, len, buf, runs, &err);
        end_turn(s);
        if (!ok) {
            convert_fail(s, err);
            break;
        }
        report_progress(s, len);
    }
    g_array_unref(runs);
    g_free(buf);
    return NULL;
}

static gboolean run_convert(Convert *s, guint workers, GError **error)
{
    g_mutex_init(&s->lock);
    g_cond_init(&s->turn);
    s->n_chunks = (s->total + s->chunk - 1) / s->chunk;
    GThread *threads[CONVERT_MAX_WORKERS];
    guint n = MAX(1, MIN(workers, CONVERT_MAX_WORKERS));
    for (guint i = 0; i < n; i++)
        threads[i] = g_thread_new("convert", convert_worker, s);
    for (guint i = 0; i < n; i++)
        g_thread_join(threads[i]);
    g_mutex_clear(&s->lock);
    g_cond_clear(&s->turn);
    (void)convert_failed;
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
        s.chunk = img_cluster_size(dst);
        if (s.chunk == 0)
            s.chunk = 65536;
    }
    if (a.target_is_zero)
        s.zero_init = TRUE;
    else if (!a.skip_create && !s.target_has_backing && dst->drv->has_zero_init)
        s.zero_init = dst->drv->has_zero_init(dst);

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
