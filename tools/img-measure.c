/* vmm-img measure: how big a new image would be, as qemu-img measure
 * ("required size" for the data at hand, "fully allocated size"). */
#include "img.h"

#include <string.h>

/* Data bytes of SRC, each data run widened to whole target clusters, as
 * qcow2's measure counts them (zero and unallocated ranges cost nothing). */
static gboolean count_allocated(VmmBlockDev *src, guint64 cluster, guint64 *allocated, GError **error)
{
    guint64 size = vmm_block_size(src), total = 0;
    for (guint64 offset = 0; offset < size;) {
        guint64 pnum = 0, map;
        VmmBlockDev *file;
        int ret = vmm_block_status_above(src, NULL, offset, size - offset, &pnum, &map, &file, NULL,
                                         error);
        if (ret < 0)
            return FALSE;
        if (pnum == 0 || pnum > size - offset)
            pnum = size - offset;
        if (!(ret & VMM_BLOCK_ZERO) && (ret & VMM_BLOCK_DATA)) {
            guint64 end = (offset + pnum + cluster - 1) / cluster * cluster;
            total += (offset % cluster) + (end - offset);
            pnum = MIN(end, size) - offset;
            if (offset + pnum < end) /* widened past the image end */
                pnum = size - offset;
        }
        offset += pnum;
    }
    *allocated = total;
    return TRUE;
}

int img_measure(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS},
        {"object", required_argument, NULL, IMG_OPT_OBJECT},
        {"output", required_argument, NULL, IMG_OPT_OUTPUT},
        {"size", required_argument, NULL, IMG_OPT_SIZE},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    ImgOpenSpec spec = {0};
    ImgOutput output = IMG_OUTPUT_HUMAN;
    const char *out_fmt = "raw";
    g_autofree char *options = NULL;
    guint64 size = 0;
    gboolean has_size = FALSE;
    GError *err = NULL;
    int c;

    while ((c = getopt_long(argc, argv, ":hf:O:o:l:U", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("usage: vmm-img measure [--output=ofmt] [-O output_fmt] [-o options] "
                   "[--size N | [--image-opts] [-f fmt] filename]\n");
            return 0;
        case 'f': spec.fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'o': img_append_options(&options, optarg); break;
        case 'l':
            img_error("measure -l (internal snapshots) is not supported");
            return 1;
        case 'U': spec.force_share = TRUE; break;
        case IMG_OPT_SIZE:
            if (!img_parse_size(optarg, &size)) {
                img_error("Invalid image size specified. You may use k, M, G, T, P or E suffixes for");
                img_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
                return 1;
            }
            has_size = TRUE;
            break;
        case IMG_OPT_OUTPUT:
            if (!img_parse_output(optarg, &output))
                return 1;
            break;
        case IMG_OPT_IMAGE_OPTS: spec.image_opts = TRUE; break;
        case IMG_OPT_OBJECT:
            if (!img_object_option(optarg))
                return 1;
            break;
        default:
            return img_bad_option(argv, c);
        }
    }
    const char *filename = optind < argc ? argv[optind] : NULL;
    if (optind + 1 < argc)
        return img_usage_error("Expecting at most one image file name");
    if (filename && has_size) {
        img_error("--size N cannot be used together with a filename.");
        return 1;
    }
    if (!filename && !has_size) {
        img_error("Either --size N or one filename must be specified.");
        return 1;
    }
    const VmmBlockDriver *drv = vmm_block_find_driver(out_fmt);
    if (!drv) {
        img_error("Unknown file format '%s'", out_fmt);
        return 1;
    }
    if (options && vmm_opts_wants_help(options)) {
        img_print_create_opts_help(drv, NULL);
        return 0;
    }
    if (!drv->measure && strcmp(out_fmt, "raw") != 0) {
        img_error("Format driver '%s' does not support size measurement", out_fmt);
        return 1;
    }
    g_autoptr(JsonObject) opts = img_parse_create_opts(drv, options, &err);
    if (!opts) {
        img_report_error(err, NULL);
        return 1;
    }
    guint64 allocated = 0;
    if (filename) {
        VmmBlockDev *src = img_open(filename, &spec, &err);
        if (!src) {
            img_report_error(err, NULL);
            return 1;
        }
        size = vmm_block_size(src);
        guint64 cluster = vmm_opts_get_uint(opts, "cluster_size", 0);
        if (!cluster)
            cluster = strcmp(out_fmt, "raw") ? 65536 : 512;
        gboolean ok = count_allocated(src, cluster, &allocated, &err);
        vmm_block_unref(src);
        if (!ok) {
            img_report_error(err, "%s", filename);
            return 1;
        }
    } else {
        if (vmm_opts_has(opts, "size"))
            size = vmm_opts_get_uint(opts, "size", size);
        /* as QEMU's measure functions: whole sectors */
        size = (size + 511) / 512 * 512;
    }
    json_object_set_int_member(opts, "size", (gint64)size);
    /* A preallocated image holds every data cluster, whatever the source has. */
    const char *prealloc = vmm_opts_get_string(opts, "preallocation", "off");
    if (!strcmp(prealloc, "full") || !strcmp(prealloc, "falloc"))
        allocated = size;

    guint64 required = 0, fully = 0;
    if (!drv->measure) {
        /* raw: every byte of the virtual disk is in the file (QEMU's raw_measure) */
        required = fully = filename ? size : (size + 511) / 512 * 512;
    } else if (!drv->measure(opts, size, allocated, &required, &fully, &err)) {
        img_report_error(err, NULL);
        return 1;
    }
    /* qcow2 can carry persistent bitmaps; we copy none, so they cost 0. */
    gboolean has_bitmaps = filename && !strcmp(out_fmt, "qcow2");
    if (output == IMG_OUTPUT_HUMAN) {
        printf("required size: %" G_GUINT64_FORMAT "\n", required);
        printf("fully allocated size: %" G_GUINT64_FORMAT "\n", fully);
        if (has_bitmaps)
            printf("bitmaps size: 0\n");
    } else {
        JsonObject *o = json_object_new();
        if (has_bitmaps)
            json_object_set_int_member(o, "bitmaps", 0);
        json_object_set_int_member(o, "required", (gint64)required);
        json_object_set_int_member(o, "fully-allocated", (gint64)fully);
        img_print_json_object(o);
        json_object_unref(o);
    }
    return 0;
}
