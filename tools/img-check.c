/* vmm-img check: consistency check and repair, with qemu-img check's output
 * and exit codes (0 clean, 1 check failed, 2 corruptions, 3 leaks only,
 * 63 format without checks). */
#include "img.h"

#include <string.h>

enum { CHECK_EXIT_NOT_SUPPORTED = 63 };

static void dump_human(const VmmCheckResult *r, gboolean quiet)
{
    if (!(r->corruptions || r->leaks || r->check_errors)) {
        img_qprintf(quiet, "No errors were found on the image.\n");
    } else {
        if (r->corruptions)
            img_qprintf(quiet,
                        "\n%" G_GUINT64_FORMAT " errors were found on the image.\n"
                        "Data may be corrupted, or further writes to the image may corrupt it.\n",
                        r->corruptions);
        if (r->leaks)
            img_qprintf(quiet,
                        "\n%" G_GUINT64_FORMAT " leaked clusters were found on the image.\n"
                        "This means waste of disk space, but no harm to data.\n",
                        r->leaks);
        if (r->check_errors)
            img_qprintf(quiet, "\n%" G_GUINT64_FORMAT " internal errors have occurred during the check.\n",
                        r->check_errors);
    }
    if (r->total_clusters && r->allocated_clusters)
        img_qprintf(quiet,
                    "%" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT " = %0.2f%% allocated, %0.2f%% "
                    "fragmented, %0.2f%% compressed clusters\n",
                    r->allocated_clusters, r->total_clusters,
                    r->allocated_clusters * 100.0 / r->total_clusters,
                    r->fragmented_clusters * 100.0 / r->allocated_clusters,
                    r->compressed_clusters * 100.0 / r->allocated_clusters);
    if (r->image_end_offset)
        img_qprintf(quiet, "Image end offset: %" G_GUINT64_FORMAT "\n", r->image_end_offset);
}

static void set_if(JsonObject *o, const char *key, guint64 v)
{
    if (v)
        json_object_set_int_member(o, key, (gint64)v);
}

/* QEMU's ImageCheck: optional members only when nonzero. */
static void dump_json(const VmmCheckResult *r, const char *filename, const char *format)
{
    JsonObject *o = json_object_new();
    set_if(o, "image-end-offset", r->image_end_offset);
    set_if(o, "total-clusters", r->total_clusters);
    json_object_set_int_member(o, "check-errors", (gint64)r->check_errors);
    set_if(o, "leaks", r->leaks);
    set_if(o, "corruptions", r->corruptions);
    set_if(o, "leaks-fixed", r->leaks_fixed);
    set_if(o, "corruptions-fixed", r->corruptions_fixed);
    set_if(o, "allocated-clusters", r->allocated_clusters);
    set_if(o, "fragmented-clusters", r->fragmented_clusters);
    set_if(o, "compressed-clusters", r->compressed_clusters);
    json_object_set_string_member(o, "filename", filename);
    json_object_set_string_member(o, "format", format);
    img_print_json_object(o);
    json_object_unref(o);
}

int img_check(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"repair", required_argument, NULL, 'r'},
        {"output", required_argument, NULL, IMG_OPT_OUTPUT},
        {"object", required_argument, NULL, IMG_OPT_OBJECT},
        {"image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    ImgOpenSpec spec = {.check = TRUE, .no_backing = TRUE};
    ImgOutput output = IMG_OUTPUT_HUMAN;
    gboolean quiet = FALSE;
    int fix = 0;
    GError *err = NULL;
    int c;

    while ((c = getopt_long(argc, argv, ":hf:r:T:qU", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("usage: vmm-img check [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] "
                   "[-T src_cache] [-U] filename\n");
            return 0;
        case 'f': spec.fmt = optarg; break;
        case 'r':
            if (!strcmp(optarg, "leaks"))
                fix = VMM_CHECK_FIX_LEAKS;
            else if (!strcmp(optarg, "all"))
                fix = VMM_CHECK_FIX_LEAKS | VMM_CHECK_FIX_ERRORS;
            else
                return img_usage_error("Unknown option value for -r (expecting 'leaks' or 'all'): %s",
                                       optarg);
            spec.writable = TRUE;
            break;
        case 'T': spec.cache = optarg; break;
        case 'q': quiet = TRUE; break;
        case 'U': spec.force_share = TRUE; break;
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
    if (optind != argc - 1)
        return img_usage_error("Expecting one image file name");
    const char *filename = argv[optind];
    spec.quiet = quiet;

    VmmBlockDev *bs = img_open(filename, &spec, &err);
    if (!bs) {
        img_report_error(err, NULL);
        return 1;
    }
    int ret;
    VmmCheckResult r = {0};
    if (!bs->drv->check) {
        img_error("This image format does not support checks");
        vmm_block_unref(bs);
        return CHECK_EXIT_NOT_SUPPORTED;
    }
    gboolean ok = bs->drv->check(bs, &r, fix, &err);
    if (ok && (r.corruptions_fixed || r.leaks_fixed)) {
        guint64 lf = r.leaks_fixed, cf = r.corruptions_fixed;
        if (output == IMG_OUTPUT_HUMAN)
            img_qprintf(quiet,
                        "The following inconsistencies were found and repaired:\n\n"
                        "    %" G_GUINT64_FORMAT " leaked clusters\n"
                        "    %" G_GUINT64_FORMAT " corruptions\n\n"
                        "Double checking the fixed image now...\n",
                        lf, cf);
        memset(&r, 0, sizeof(r));
        ok = bs->drv->check(bs, &r, 0, &err);
        r.leaks_fixed = lf;
        r.corruptions_fixed = cf;
    }
    if (ok) {
        if (output == IMG_OUTPUT_HUMAN)
            dump_human(&r, quiet);
        else
            dump_json(&r, filename, img_format_name(bs));
    }
    if (!ok || r.check_errors) {
        if (!ok)
            img_report_error(err, "Check failed");
        else
            img_error("Check failed");
        ret = 1;
    } else if (r.corruptions) {
        ret = 2;
    } else if (r.leaks) {
        ret = 3;
    } else {
        ret = 0;
    }
    GError *ferr = NULL;
    if (spec.writable && !vmm_block_flush(bs, &ferr)) {
        img_report_error(ferr, "%s", filename);
        ret = 1;
    }
    vmm_block_unref(bs);
    return ret;
}
