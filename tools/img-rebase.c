/* vmm-img rebase: change an image's backing file, as qemu-img rebase.
 *
 * Safe mode keeps the guest-visible content: every range the image does not
 * allocate itself reads from the old backing chain before and from the new one
 * after, so where the two differ the old content is copied into the image.
 * -u only rewrites the header (the caller promises the contents match);
 * -b "" removes the backing file (the image then holds everything). */
#include "img.h"

#include <string.h>

#define REBASE_CHUNK (2u << 20)
#define SECTOR 512u

typedef struct {
    VmmBlockDev *bs, *old_backing, *new_backing;
    guint8 *buf_old, *buf_new;
} Rebase;

/* Reads [OFFSET, OFFSET+LEN) of BACKING, zeroes past its end (or without one). */
static gboolean read_backing(VmmBlockDev *backing, guint64 offset, guint64 len, guint8 *buf,
                             GError **error)
{
    guint64 size = backing ? vmm_block_size(backing) : 0;
    guint64 have = offset < size ? MIN(len, size - offset) : 0;
    if (have && !vmm_block_pread(backing, offset, have, buf, error))
        return FALSE;
    memset(buf + have, 0, len - have);
    return TRUE;
}

/* Copies the sectors of [OFFSET, OFFSET+LEN) where old and new backing differ. */
static gboolean rebase_range(Rebase *r, guint64 offset, guint64 len, GError **error)
{
    if (!read_backing(r->old_backing, offset, len, r->buf_old, error) ||
        !read_backing(r->new_backing, offset, len, r->buf_new, error))
        return FALSE;
    guint64 pos = 0;
    while (pos < len) {
        guint64 n = MIN(SECTOR, len - pos);
        if (!memcmp(r->buf_old + pos, r->buf_new + pos, n)) {
            pos += n;
            continue;
        }
        guint64 end = pos + n;
        while (end < len) {
            guint64 m = MIN(SECTOR, len - end);
            if (!memcmp(r->buf_old + end, r->buf_new + end, m))
                break;
            end += m;
        }
        if (!vmm_block_pwrite(r->bs, offset + pos, end - pos, r->buf_old + pos, 0, error))
            return FALSE;
        pos = end;
    }
    return TRUE;
}

static gboolean rebase_safe(Rebase *r, gboolean progress, GError **error)
{
    guint64 size = vmm_block_size(r->bs);
    img_progress_init(progress, 1.0);
    for (guint64 offset = 0; offset < size;) {
        guint64 pnum = 0, map;
        VmmBlockDev *file;
        guint64 want = MIN(REBASE_CHUNK, size - offset);
        int ret = vmm_block_status(r->bs, offset, want, &pnum, &map, &file, error);
        if (ret < 0)
            return FALSE;
        if (pnum == 0 || pnum > want)
            pnum = want;
        /* What the image holds itself stays; only backing-provided ranges matter. */
        if (!(ret & (VMM_BLOCK_ALLOCATED | VMM_BLOCK_DATA | VMM_BLOCK_ZERO)) &&
            !rebase_range(r, offset, pnum, error))
            return FALSE;
        offset += pnum;
        img_progress_print(offset * 100.0 / size);
    }
    img_progress_end();
    return TRUE;
}

int img_rebase(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, IMG_OPT_OBJECT},
        {"image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    ImgOpenSpec spec = {.writable = TRUE, .cache = "writeback"};
    const char *out_base = NULL, *out_basefmt = NULL, *src_cache = NULL;
    gboolean unsafe = FALSE, progress = FALSE, quiet = FALSE, force_share = FALSE;
    GError *err = NULL;
    int c;

    while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qU", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("usage: vmm-img rebase [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] "
                   "-b backing_file [-F backing_fmt] filename\n");
            return 0;
        case 'f': spec.fmt = optarg; break;
        case 'F': out_basefmt = optarg; break;
        case 'b': out_base = optarg; break;
        case 'u': unsafe = TRUE; break;
        case 'p': progress = TRUE; break;
        case 't': spec.cache = optarg; break;
        case 'T': src_cache = optarg; break;
        case 'q': quiet = TRUE; break;
        case 'U': force_share = TRUE; break;
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
    if (!out_base) {
        img_error("Must specify backing file (-b) or use unsafe mode (-u)");
        return 1;
    }
    const char *filename = argv[optind];
    gboolean remove_backing = out_base[0] == '\0';
    if (!remove_backing && !out_basefmt) {
        img_error("Could not change the backing file to '%s': backing format must be specified",
                  out_base);
        return 1;
    }
    spec.no_backing = unsafe;
    spec.quiet = quiet;
    VmmBlockDev *bs = img_open(filename, &spec, &err);
    if (!bs) {
        img_report_error(err, NULL);
        return 1;
    }
    int ret = 1;
    Rebase r = {.bs = bs, .old_backing = bs->backing};
    if (!bs->drv->change_backing_file) {
        img_error("Could not change the backing file to '%s': format '%s' has no backing files",
                  out_base, img_format_name(bs));
        goto out;
    }
    if (!unsafe) {
        if (!remove_backing) {
            g_autofree char *path = vmm_block_resolve_backing(bs->filename, out_base);
            ImgOpenSpec bspec = {.fmt = out_basefmt, .cache = src_cache,
                                 .force_share = force_share, .quiet = TRUE};
            r.new_backing = img_open(path, &bspec, &err);
            if (!r.new_backing) {
                img_report_error(err, "Could not open new backing file '%s'", path);
                goto out;
            }
        }
        r.buf_old = g_malloc(REBASE_CHUNK);
        r.buf_new = g_malloc(REBASE_CHUNK);
        if (!rebase_safe(&r, progress && !quiet, &err)) {
            img_report_error(err, "Error while rebasing %s", filename);
            goto out;
        }
    }
    if (!bs->drv->change_backing_file(bs, remove_backing ? NULL : out_base,
                                      remove_backing ? NULL : out_basefmt, &err)) {
        img_report_error(err, "Could not change the backing file to '%s'", out_base);
        goto out;
    }
    if (!vmm_block_flush(bs, &err)) {
        img_report_error(err, "%s", filename);
        goto out;
    }
    ret = 0;
out:
    if (r.new_backing)
        vmm_block_unref(r.new_backing);
    g_free(r.buf_old);
    g_free(r.buf_new);
    vmm_block_unref(bs);
    return ret;
}
