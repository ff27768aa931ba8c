/* vmm-img compare: are two images' contents the same? As qemu-img compare,
 * with its messages and exit codes: 0 identical, 1 different, 2 open error,
 * 3 block status error, 4 read error. */
#include "img.h"

#include <string.h>

#define COMPARE_BUF (2u << 20)
#define SECTOR 512u

enum {
    CMP_SAME = 0,
    CMP_DIFFERENT = 1,
    CMP_OPEN_ERROR = 2,
    CMP_STATUS_ERROR = 3,
    CMP_READ_ERROR = 4,
};

/* Sector-granular first difference, as qemu-img's compare_buffers. */
static guint64 matching_prefix(const guint8 *a, const guint8 *b, guint64 len, gboolean *differ)
{
    guint64 i = MIN(len, SECTOR);
    gboolean res = memcmp(a, b, i) != 0;
    while (i < len) {
        guint64 n = MIN(len - i, SECTOR);
        if ((memcmp(a + i, b + i, n) != 0) != res)
            break;
        i += n;
    }
    *differ = res;
    return i;
}

static gint64 find_nonzero(const guint8 *buf, guint64 len)
{
    for (guint64 i = 0; i < len; i += SECTOR)
        if (!vmm_buffer_is_zero(buf + i, MIN(SECTOR, len - i)))
            return (gint64)i;
    return -1;
}

/* Exit code for a range that must read as zeroes. */
static int check_empty(VmmBlockDev *bs, const char *filename, guint64 offset, guint64 len,
                       guint8 *buf, gboolean quiet)
{
    GError *err = NULL;
    if (!vmm_block_pread(bs, offset, len, buf, &err)) {
        img_report_error(err, "Error while reading offset %" G_GUINT64_FORMAT " of %s", offset,
                         filename);
        return CMP_READ_ERROR;
    }
    gint64 idx = find_nonzero(buf, len);
    if (idx >= 0) {
        img_qprintf(quiet, "Content mismatch at offset %" G_GUINT64_FORMAT "!\n", offset + (guint64)idx);
        return CMP_DIFFERENT;
    }
    return CMP_SAME;
}

static int status_of(VmmBlockDev *bs, const char *filename, guint64 offset, guint64 bytes,
                     guint64 *pnum)
{
    GError *err = NULL;
    guint64 map;
    VmmBlockDev *file;
    int ret = vmm_block_status_above(bs, NULL, offset, bytes, pnum, &map, &file, NULL, &err);
    if (ret < 0) {
        img_report_error(err, "Sector allocation test failed for %s", filename);
        return -1;
    }
    if (*pnum == 0 || *pnum > bytes)
        *pnum = bytes;
    return ret & (VMM_BLOCK_DATA | VMM_BLOCK_ZERO | VMM_BLOCK_ALLOCATED);
}

typedef struct {
    VmmBlockDev *bs[2];
    const char *name[2];
    guint64 size[2];
    gboolean strict, quiet;
    guint8 *buf[2];
} Compare;

static int compare_common(Compare *c, guint64 common, guint64 progress_base)
{
    GError *err = NULL;
    for (guint64 offset = 0; offset < common;) {
        guint64 p1, p2;
        int st1 = status_of(c->bs[0], c->name[0], offset, common - offset, &p1);
        if (st1 < 0)
            return CMP_STATUS_ERROR;
        int st2 = status_of(c->bs[1], c->name[1], offset, common - offset, &p2);
        if (st2 < 0)
            return CMP_STATUS_ERROR;
        guint64 chunk = MIN(p1, p2);
        gboolean alloc1 = (st1 & VMM_BLOCK_ALLOCATED) != 0, alloc2 = (st2 & VMM_BLOCK_ALLOCATED) != 0;
        if (c->strict && st1 != st2) {
            img_qprintf(c->quiet, "Strict mode: Offset %" G_GUINT64_FORMAT " block status mismatch!\n",
                        offset);
            return CMP_DIFFERENT;
        }
        if ((st1 & VMM_BLOCK_ZERO) && (st2 & VMM_BLOCK_ZERO)) {
            /* both read as zeroes */
        } else if (alloc1 == alloc2) {
            if (alloc1) {
                chunk = MIN(chunk, COMPARE_BUF);
                for (int i = 0; i < 2; i++) {
                    if (!vmm_block_pread(c->bs[i], offset, chunk, c->buf[i], &err)) {
                        img_report_error(err, "Error while reading offset %" G_GUINT64_FORMAT " of %s",
                                         offset, c->name[i]);
                        return CMP_READ_ERROR;
                    }
                }
                gboolean differ;
                guint64 same = matching_prefix(c->buf[0], c->buf[1], chunk, &differ);
                if (differ || same != chunk) {
                    img_qprintf(c->quiet, "Content mismatch at offset %" G_GUINT64_FORMAT "!\n",
                                offset + (differ ? 0 : same));
                    return CMP_DIFFERENT;
                }
            }
        } else {
            chunk = MIN(chunk, COMPARE_BUF);
            int i = alloc1 ? 0 : 1;
            int rc = check_empty(c->bs[i], c->name[i], offset, chunk, c->buf[0], c->quiet);
            if (rc != CMP_SAME)
                return rc;
        }
        offset += chunk;
        img_progress_print(progress_base ? offset * 100.0 / progress_base : 100.0);
    }
    return CMP_SAME;
}

/* The part of the larger image past the smaller's end must read as zeroes. */
static int compare_tail(Compare *c, guint64 common)
{
    int over = c->size[0] > c->size[1] ? 0 : 1;
    guint64 end = c->size[over];
    for (guint64 offset = common; offset < end;) {
        guint64 chunk;
        int st = status_of(c->bs[over], c->name[over], offset, end - offset, &chunk);
        if (st < 0)
            return CMP_STATUS_ERROR;
        if ((st & VMM_BLOCK_ALLOCATED) && !(st & VMM_BLOCK_ZERO)) {
            chunk = MIN(chunk, COMPARE_BUF);
            int rc = check_empty(c->bs[over], c->name[over], offset, chunk, c->buf[0], c->quiet);
            if (rc != CMP_SAME)
                return rc;
        }
        offset += chunk;
        img_progress_print(offset * 100.0 / end);
    }
    return CMP_SAME;
}

int img_compare(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, IMG_OPT_OBJECT},
        {"image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    ImgOpenSpec spec[2] = {{0}, {0}};
    Compare c = {0};
    gboolean progress = FALSE;
    GError *err = NULL;
    int ch;

    while ((ch = getopt_long(argc, argv, ":hf:F:T:pqsU", long_options, NULL)) != -1) {
        switch (ch) {
        case 'h':
            printf("usage: vmm-img compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] "
                   "filename1 filename2\n");
            return 0;
        case 'f': spec[0].fmt = optarg; break;
        case 'F': spec[1].fmt = optarg; break;
        case 'T': spec[0].cache = spec[1].cache = optarg; break;
        case 'p': progress = TRUE; break;
        case 'q': c.quiet = TRUE; break;
        case 's': c.strict = TRUE; break;
        case 'U': spec[0].force_share = spec[1].force_share = TRUE; break;
        case IMG_OPT_IMAGE_OPTS: spec[0].image_opts = spec[1].image_opts = TRUE; break;
        case IMG_OPT_OBJECT:
            if (!img_add_object(optarg, &err)) {
                img_report_error(err, NULL);
                return CMP_OPEN_ERROR;
            }
            break;
        default:
            img_bad_option(argv, ch);
            return CMP_OPEN_ERROR;
        }
    }
    if (argc - optind != 2) {
        img_usage_error("Expecting two image file names");
        return CMP_OPEN_ERROR;
    }
    int rc = CMP_SAME;
    for (int i = 0; i < 2; i++) {
        c.name[i] = argv[optind + i];
        spec[i].quiet = c.quiet;
        c.bs[i] = img_open(c.name[i], &spec[i], &err);
        if (!c.bs[i]) {
            img_report_error(err, NULL);
            rc = CMP_OPEN_ERROR;
            goto out;
        }
        c.size[i] = vmm_block_size(c.bs[i]);
        c.buf[i] = g_malloc(COMPARE_BUF);
    }
    guint64 common = MIN(c.size[0], c.size[1]);
    guint64 progress_base = MAX(c.size[0], c.size[1]);
    if (c.strict && c.size[0] != c.size[1]) {
        img_qprintf(c.quiet, "Strict mode: Image size mismatch!\n");
        rc = CMP_DIFFERENT;
        goto out;
    }
    img_progress_init(progress && !c.quiet, 2.0);
    rc = compare_common(&c, common, progress_base);
    if (rc == CMP_SAME && c.size[0] != c.size[1]) {
        img_qprintf(c.quiet, "Warning: Image size mismatch!\n");
        rc = compare_tail(&c, common);
    }
    img_progress_end();
    if (rc == CMP_SAME)
        img_qprintf(c.quiet, "Images are identical.\n");
out:
    for (int i = 0; i < 2; i++) {
        if (c.bs[i])
            vmm_block_unref(c.bs[i]);
        g_free(c.buf[i]);
    }
    return rc;
}
