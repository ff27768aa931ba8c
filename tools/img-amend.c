/* vmm-img amend: change format options of an existing image, as qemu-img
 * amend -o (compat, lazy_refcounts, size, backing_file, ...). */
#include "img.h"

#include <string.h>

int img_amend(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, IMG_OPT_OBJECT},
        {"image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS},
        {"force", no_argument, NULL, IMG_OPT_FORCE},
        {NULL, 0, NULL, 0},
    };
    ImgOpenSpec spec = {.writable = TRUE, .cache = "writeback"};
    g_autofree char *options = NULL;
    gboolean quiet = FALSE, force = FALSE, progress = FALSE;
    GError *err = NULL;
    int c;

    while ((c = getopt_long(argc, argv, ":ho:f:t:pq", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("usage: vmm-img amend [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename\n");
            return 0;
        case 'o': img_append_options(&options, optarg); break;
        case 'f': spec.fmt = optarg; break;
        case 't': spec.cache = optarg; break;
        case 'p': progress = TRUE; break;
        case 'q': quiet = TRUE; break;
        case IMG_OPT_FORCE: force = TRUE; break;
        case IMG_OPT_IMAGE_OPTS: spec.image_opts = TRUE; break;
        case IMG_OPT_OBJECT:
            if (!img_object_option(optarg))
                return 1;
            break;
        default:
            return img_bad_option(argv, c);
        }
    }
    if (!options) {
        img_error("Must specify options (-o)");
        return 1;
    }
    const char *filename = optind < argc ? argv[optind] : NULL;
    if (vmm_opts_wants_help(options) && (!filename || spec.fmt)) {
        const VmmBlockDriver *drv = vmm_block_find_driver(spec.fmt ? spec.fmt : "qcow2");
        if (!drv) {
            img_error("Unknown file format '%s'", spec.fmt);
            return 1;
        }
        img_print_create_opts_help(drv, NULL);
        return 0;
    }
    if (!filename || optind != argc - 1)
        return img_usage_error("Expecting one image file name");
    spec.quiet = quiet;

    VmmBlockDev *bs = img_open(filename, &spec, &err);
    if (!bs) {
        img_report_error(err, NULL);
        return 1;
    }
    int ret = 1;
    if (vmm_opts_wants_help(options)) {
        img_print_create_opts_help(bs->drv, NULL);
        ret = 0;
        goto out;
    }
    if (!bs->drv->amend) {
        img_error("Format driver '%s' does not support option amendment", img_format_name(bs));
        goto out;
    }
    JsonObject *opts = img_parse_create_opts(bs->drv, options, &err);
    if (!opts) {
        img_report_error(err, NULL);
        goto out;
    }
    img_progress_init(progress && !quiet, 1.0);
    gboolean ok = bs->drv->amend(bs, opts, force, &err);
    img_progress_end();
    json_object_unref(opts);
    if (!ok || !vmm_block_flush(bs, &err)) {
        img_report_error(err, "Error while amending options");
        goto out;
    }
    ret = 0;
out:
    vmm_block_unref(bs);
    return ret;
}
