/* vmm-img resize: grow or shrink an image's virtual size, as qemu-img resize
 * (absolute or +SIZE/-SIZE, --shrink required to shrink, --preallocation). */
#include "img.h"

#include <string.h>

int img_resize(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, IMG_OPT_OBJECT},
        {"image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS},
        {"preallocation", required_argument, NULL, IMG_OPT_PREALLOCATION},
        {"shrink", no_argument, NULL, IMG_OPT_SHRINK},
        {NULL, 0, NULL, 0},
    };
    ImgOpenSpec spec = {.writable = TRUE, .no_backing = TRUE};
    VmmPrealloc prealloc = VMM_PREALLOC_OFF;
    gboolean quiet = FALSE, shrink = FALSE;
    GError *err = NULL;
    int c;

    /* The size goes first so that "-1G" is not taken for an option. */
    if (argc < 3)
        return img_usage_error("Expecting image file name and size");
    const char *size_str = argv[--argc];

    while ((c = getopt_long(argc, argv, ":f:hq", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("usage: vmm-img resize [-f fmt] [--preallocation=prealloc] [-q] [--shrink] "
                   "filename [+ | -]size\n");
            return 0;
        case 'f': spec.fmt = optarg; break;
        case 'q': quiet = TRUE; break;
        case IMG_OPT_PREALLOCATION:
            if (!vmm_parse_prealloc(optarg, &prealloc, &err)) {
                img_report_error(err, NULL);
                return 1;
            }
            break;
        case IMG_OPT_SHRINK: shrink = TRUE; break;
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
        return img_usage_error("Expecting image file name and size");
    const char *filename = argv[optind];

    int relative = 0;
    if (size_str[0] == '+' || size_str[0] == '-') {
        relative = size_str[0] == '+' ? 1 : -1;
        size_str++;
    }
    guint64 n;
    if (!img_parse_size(size_str, &n)) {
        img_error("Invalid image size specified. You may use k, M, G, T, P or E suffixes for");
        img_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        return 1;
    }
    if (n > (guint64)G_MAXINT64) {
        img_error("Image size must be less than 8 EiB!");
        return 1;
    }
    spec.quiet = quiet;
    VmmBlockDev *bs = img_open(filename, &spec, &err);
    if (!bs) {
        img_report_error(err, NULL);
        return 1;
    }
    int ret = 1;
    guint64 current = vmm_block_size(bs);
    gint64 total;
    if (relative > 0)
        total = (gint64)(current + n);
    else if (relative < 0)
        total = (gint64)current - (gint64)n;
    else
        total = (gint64)n;
    if (total <= 0) {
        img_error("New image size must be positive");
        goto out;
    }
    if ((guint64)total < current && prealloc != VMM_PREALLOC_OFF) {
        img_error("Preallocation can only be used for growing images");
        goto out;
    }
    if ((guint64)total < current && !shrink) {
        img_error("Use the --shrink option to perform a shrink operation.");
        img_warn("Shrinking an image will delete all data beyond the shrunken image's end. Before "
                 "performing such an operation, make sure there is no important data there.");
        goto out;
    }
    /* not exact, as qemu-img: a block device may stay bigger than asked */
    if (!vmm_block_truncate(bs, (guint64)total, FALSE, prealloc, shrink, &err) ||
        !vmm_block_flush(bs, &err)) {
        img_report_error(err, NULL);
        goto out;
    }
    img_qprintf(quiet, "Image resized.\n");
    ret = 0;
out:
    vmm_block_unref(bs);
    return ret;
}
