/* vmm-img bench: a simple I/O benchmark, as qemu-img bench. The block API is
 * synchronous, so a queue depth of N is N threads each issuing one request at
 * a time; offsets are handed out in qemu-img's order from a shared cursor. */
#include "img.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    VmmBlockDev *bs;
    guint64 image_size, offset, step, bufsize;
    guint count, issued, done, flush_interval;
    gboolean write, drain;
    int pattern;
    GMutex lock;
    GError *error;
} Bench;

/* The next request's offset, or FALSE when all are issued or one failed. */
static gboolean next_request(Bench *b, guint64 *offset)
{
    g_mutex_lock(&b->lock);
    gboolean ok = b->issued < b->count && !b->error;
    if (ok) {
        *offset = b->offset;
        b->issued++;
        b->offset += b->step;
        if (b->image_size <= b->bufsize)
            b->offset = 0;
        else
            b->offset %= b->image_size - b->bufsize;
    }
    g_mutex_unlock(&b->lock);
    return ok;
}

static void bench_fail(Bench *b, GError *err)
{
    g_mutex_lock(&b->lock);
    if (!b->error)
        b->error = err;
    else
        g_error_free(err);
    g_mutex_unlock(&b->lock);
}

/* Counts a completed request; TRUE if a flush is due now. */
static gboolean complete_request(Bench *b)
{
    g_mutex_lock(&b->lock);
    b->done++;
    gboolean flush = b->write && b->flush_interval && b->done % b->flush_interval == 0;
    g_mutex_unlock(&b->lock);
    return flush;
}

static gpointer bench_worker(gpointer opaque)
{
    Bench *b = opaque;
    void *buf = NULL;
    /* 4 KiB alignment: requests may go to an O_DIRECT file (-t none). */
    if (posix_memalign(&buf, 4096, b->bufsize) != 0) {
        bench_fail(b, g_error_new(VMM_ERROR, VMM_ERROR_FAILED, "out of memory for the buffer"));
        return NULL;
    }
    memset(buf, b->write ? b->pattern : 0, b->bufsize);
    guint64 offset;
    while (next_request(b, &offset)) {
        GError *err = NULL;
        gboolean ok = b->write ? vmm_block_pwrite(b->bs, offset, b->bufsize, buf, 0, &err)
                               : vmm_block_pread(b->bs, offset, b->bufsize, buf, &err);
        if (ok && complete_request(b))
            ok = vmm_block_flush(b->bs, &err);
        if (!ok) {
            bench_fail(b, err);
            break;
        }
    }
    free(buf);
    return NULL;
}

static gboolean parse_uint(const char *what, const char *s, guint64 min, guint64 max, guint64 *out)
{
    if (!vmm_parse_number(NULL, NULL, s, out, NULL) || *out < min || *out > max) {
        img_error("Invalid %s specified", what);
        return FALSE;
    }
    return TRUE;
}

int img_bench(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"flush-interval", required_argument, NULL, IMG_OPT_FLUSH_INTERVAL},
        {"image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS},
        {"pattern", required_argument, NULL, IMG_OPT_PATTERN},
        {"no-drain", no_argument, NULL, IMG_OPT_NO_DRAIN},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    ImgOpenSpec spec = {.cache = "writeback", .no_backing = FALSE};
    Bench b = {.count = 75000, .bufsize = 4096, .drain = TRUE};
    guint64 depth = 64, step = 0, v;
    gboolean quiet = FALSE, has_flush = FALSE;
    GError *err = NULL;
    int c;

    while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("usage: vmm-img bench [-c count] [-d depth] [-f fmt] [--flush-interval=N] "
                   "[--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] "
                   "[-S step_size] [-t cache] [-w] [-U] filename\n");
            return 0;
        case 'c':
            if (!parse_uint("request count", optarg, 1, G_MAXINT32, &v))
                return 1;
            b.count = (guint)v;
            break;
        case 'd':
            if (!parse_uint("queue depth", optarg, 1, 1024, &depth))
                return 1;
            break;
        case 'f': spec.fmt = optarg; break;
        case 'n': spec.cache = "none"; break; /* native AIO implies O_DIRECT in qemu-img */
        case 'i':
            if (strcmp(optarg, "threads") && strcmp(optarg, "native") && strcmp(optarg, "io_uring")) {
                img_error("Invalid aio option: %s", optarg);
                return 1;
            }
            break; /* requests run on threads whatever the engine */
        case 'o':
            if (!img_parse_size(optarg, &b.offset)) {
                img_error("Invalid offset specified");
                return 1;
            }
            break;
        case 'q': quiet = TRUE; break;
        case 's':
            if (!img_parse_size(optarg, &b.bufsize) || b.bufsize == 0 || b.bufsize > G_MAXINT32) {
                img_error("Invalid buffer size specified");
                return 1;
            }
            break;
        case 'S':
            if (!img_parse_size(optarg, &step) || step > G_MAXINT32) {
                img_error("Invalid step size specified");
                return 1;
            }
            break;
        case 't': spec.cache = optarg; break;
        case 'w': b.write = TRUE; spec.writable = TRUE; break;
        case 'U': spec.force_share = TRUE; break;
        case IMG_OPT_FLUSH_INTERVAL:
            if (!parse_uint("flush interval", optarg, 0, G_MAXINT32, &v))
                return 1;
            b.flush_interval = (guint)v;
            has_flush = TRUE;
            break;
        case IMG_OPT_PATTERN:
            if (!parse_uint("pattern byte", optarg, 0, 0xff, &v))
                return 1;
            b.pattern = (int)v;
            break;
        case IMG_OPT_NO_DRAIN: b.drain = FALSE; break;
        case IMG_OPT_IMAGE_OPTS: spec.image_opts = TRUE; break;
        default:
            return img_bad_option(argv, c);
        }
    }
    if (optind != argc - 1)
        return img_usage_error("Expecting one image file name");
    if (has_flush && !b.write) {
        img_error("--flush-interval is only available in write tests");
        return 1;
    }
    if (!b.drain && !has_flush) {
        img_error("--no-drain requires --flush-interval");
        return 1;
    }
    const char *filename = argv[optind];
    spec.quiet = quiet;
    b.bs = img_open(filename, &spec, &err);
    if (!b.bs) {
        img_report_error(err, NULL);
        return 1;
    }
    b.image_size = vmm_block_size(b.bs);
    b.step = step ? step : b.bufsize;
    if (b.offset + b.bufsize > b.image_size) {
        img_error("%s: requests of %" G_GUINT64_FORMAT " bytes at offset %" G_GUINT64_FORMAT
                  " go past the end of the image (%" G_GUINT64_FORMAT " bytes)",
                  filename, b.bufsize, b.offset, b.image_size);
        vmm_block_unref(b.bs);
        return 1;
    }
    printf("Sending %u %s requests, %" G_GUINT64_FORMAT " bytes each, %" G_GUINT64_FORMAT
           " in parallel (starting at offset %" G_GUINT64_FORMAT ", step size %" G_GUINT64_FORMAT ")\n",
           b.count, b.write ? "write" : "read", b.bufsize, depth, b.offset, b.step);
    if (b.flush_interval)
        printf("Sending flush every %u requests\n", b.flush_interval);
    fflush(stdout);

    g_mutex_init(&b.lock);
    guint nthreads = (guint)MIN(depth, (guint64)b.count);
    GThread **threads = g_new0(GThread *, nthreads);
    double t1 = img_now();
    for (guint i = 0; i < nthreads; i++)
        threads[i] = g_thread_new("bench", bench_worker, &b);
    for (guint i = 0; i < nthreads; i++)
        g_thread_join(threads[i]);
    double t2 = img_now();
    g_free(threads);
    g_mutex_clear(&b.lock);

    int ret = 0;
    if (b.error) {
        img_report_error(b.error, "%s request failed", b.write ? "write" : "read");
        ret = 1;
    } else {
        printf("Run completed in %3.3f seconds.\n", t2 - t1);
    }
    vmm_block_unref(b.bs);
    return ret;
}
