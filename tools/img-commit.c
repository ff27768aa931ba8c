/* vmm-img commit: write an overlay's changes into its backing file (or a base
 * further down with -b), as qemu-img commit. Afterwards the overlay is
 * emptied unless -d (or -b, which implies -d as in qemu-img 7.2).
 *
 * The base is written through a read-write handle of its own; the overlay's
 * chain is reopened before emptying so that no cached metadata of the base
 * read-only node is used after the base changed. */
#include "img.h"

#include <stdlib.h>
#include <string.h>

#define COMMIT_CHUNK (2u << 20)

static gboolean same_file(const char *a, const char *b)
{
    g_autofree char *ra = realpath(a, NULL);
    g_autofree char *rb = realpath(b, NULL);
    if (ra && rb)
        return strcmp(ra, rb) == 0;
    return strcmp(a, b) == 0;
}

static VmmBlockDev *find_base(VmmBlockDev *top, const char *base_name, GError **error)
{
    if (!top->backing) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: Image does not have a backing file",
                    top->filename);
        return NULL;
    }
    if (!base_name)
        return top->backing;
    for (VmmBlockDev *bs = top->backing; bs; bs = bs->backing) {
        if (same_file(bs->filename, base_name) || !strcmp(bs->filename, base_name))
            return bs;
        g_autofree char *resolved = vmm_block_resolve_backing(top->filename, base_name);
        if (resolved && same_file(bs->filename, resolved))
            return bs;
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_NOT_FOUND, "Did not find '%s' in the backing chain of '%s'",
                base_name, top->filename);
    return NULL;
}

/* Copies what the layers above BASE hold into BASE_RW. */
static gboolean commit_data(VmmBlockDev *top, VmmBlockDev *base, VmmBlockDev *base_rw,
                            gboolean progress, GError **error)
{
    guint64 size = vmm_block_size(top);
    if (vmm_block_size(base_rw) < size &&
        !vmm_block_truncate(base_rw, size, FALSE, VMM_PREALLOC_OFF, FALSE, error))
        return FALSE;
    g_autofree guint8 *buf = g_malloc(COMMIT_CHUNK);
    img_progress_init(progress, 1.0);
    for (guint64 offset = 0; offset < size;) {
        guint64 pnum = 0, map;
        VmmBlockDev *file;
        guint64 want = MIN(COMMIT_CHUNK, size - offset);
        int ret = vmm_block_status_above(top, base, offset, want, &pnum, &map, &file, NULL, error);
        if (ret < 0)
            return FALSE;
        if (pnum == 0 || pnum > want)
            pnum = want;
        if (ret & VMM_BLOCK_ALLOCATED) {
            gboolean ok;
            if ((ret & VMM_BLOCK_ZERO) && !(ret & VMM_BLOCK_DATA))
                ok = vmm_block_pwrite_zeroes(base_rw, offset, pnum, VMM_BDRV_REQ_MAY_UNMAP, error);
            else
                ok = vmm_block_pread(top, offset, pnum, buf, error) &&
                     vmm_block_pwrite(base_rw, offset, pnum, buf, 0, error);
            if (!ok)
                return FALSE;
        }
        offset += pnum;
        img_progress_print(offset * 100.0 / size);
    }
    img_progress_end();
    return vmm_block_flush(base_rw, error);
}

/* Makes the overlay read through to its backing chain again, as qemu-img's
 * bdrv_make_empty. */
static gboolean make_empty(VmmBlockDev *top, GError **error)
{
    if (!top->backing)
        return TRUE;
    return vmm_block_make_empty(top, error);
}

int img_commit(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, IMG_OPT_OBJECT},
        {"image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS},
        {NULL, 0, NULL, 0},
    };
    ImgOpenSpec spec = {.writable = TRUE, .cache = "writeback"};
    const char *base_name = NULL;
    gboolean quiet = FALSE, progress = FALSE, drop = FALSE;
    GError *err = NULL;
    int c;

    while ((c = getopt_long(argc, argv, ":f:ht:b:dpqr:", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("usage: vmm-img commit [-q] [-f fmt] [-t cache] [-b base] [-d] [-p] filename\n");
            return 0;
        case 'f': spec.fmt = optarg; break;
        case 't': spec.cache = optarg; break;
        case 'b':
            base_name = optarg;
            drop = TRUE; /* -b implies -d: the overlay may back other images */
            break;
        case 'd': drop = TRUE; break;
        case 'p': progress = TRUE; break;
        case 'q': quiet = TRUE; break;
        case 'r': break; /* rate limit: accepted, not applied */
        case IMG_OPT_IMAGE_OPTS: spec.image_opts = TRUE; break;
        case IMG_OPT_OBJECT:
            if (!img_object_option(optarg))
                return 1;
            break;
        default:
            return img_bad_option(argv, c);
        }
    }
    if (optind != argc - 1)
        return img_usage_error("Expecting one image file name");
    const char *filename = argv[optind];
    spec.quiet = quiet;

    /* First without the chain, to learn whether there is one. */
    ImgOpenSpec probe = spec;
    probe.writable = FALSE;
    probe.no_backing = TRUE;
    VmmBlockDev *top = img_open(filename, &probe, &err);
    if (!top) {
        img_report_error(err, NULL);
        return 1;
    }
    gboolean has_backing = top->backing_file && *top->backing_file;
    vmm_block_unref(top);
    if (!has_backing) {
        img_error("%s: Image does not have a backing file", filename);
        return 1;
    }
    /* The chain's read-only nodes take no locks, so that our own base_rw
     * handle may write the base (qemu-img reopens it read-write instead). */
    ImgOpenSpec tspec = spec;
    tspec.backing_force_share = TRUE;
    top = img_open(filename, &tspec, &err);
    if (!top) {
        img_report_error(err, NULL);
        return 1;
    }
    VmmBlockDev *base = find_base(top, base_name, &err);
    if (!base) {
        img_report_error(err, NULL);
        vmm_block_unref(top);
        return 1;
    }
    ImgOpenSpec bspec = {.fmt = img_format_name(base), .cache = spec.cache, .writable = TRUE,
                         .no_backing = TRUE, .quiet = TRUE};
    g_autofree char *base_path = g_strdup(base->filename);
    VmmBlockDev *base_rw = img_open(base_path, &bspec, &err);
    if (!base_rw) {
        img_report_error(err, "Block commit failed");
        vmm_block_unref(top);
        return 1;
    }
    gboolean ok = commit_data(top, base, base_rw, progress && !quiet, &err);
    vmm_block_unref(base_rw);
    vmm_block_unref(top);
    if (!ok) {
        img_report_error(err, "Block commit failed");
        return 1;
    }
    if (!drop) {
        spec.discard_unmap = TRUE;
        top = img_open(filename, &spec, &err);
        if (!top || !make_empty(top, &err)) {
            img_report_error(err, "Could not empty %s", filename);
            if (top)
                vmm_block_unref(top);
            return 1;
        }
        vmm_block_unref(top);
    }
    img_qprintf(quiet, "Image committed.\n");
    return 0;
}
