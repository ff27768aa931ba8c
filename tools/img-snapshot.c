/* vmm-img snapshot: list, create, apply and delete internal snapshots, as
 * qemu-img snapshot (-l, -c, -a, -d). */
#include "img.h"

#include <string.h>

typedef enum { SN_NONE, SN_LIST, SN_CREATE, SN_APPLY, SN_DELETE } SnapshotAction;

static gboolean not_supported(VmmBlockDev *bs, const char *what, GError **error)
{
    g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED, "%s: format '%s' does not support %s",
                bs->filename, img_format_name(bs), what);
    return FALSE;
}

static gboolean do_create(VmmBlockDev *bs, const char *name, GError **error)
{
    if (!bs->drv->snapshot_create)
        return not_supported(bs, "internal snapshots", error);
    gint64 rt = g_get_real_time();
    VmmSnapshotInfo sn = {
        .name = (char *)name,
        .date_sec = rt / G_USEC_PER_SEC,
        .date_nsec = (rt % G_USEC_PER_SEC) * 1000,
        .icount = 0, /* as qemu-img, which zeroes the whole record */
    };
    return bs->drv->snapshot_create(bs, &sn, error);
}

static gboolean do_apply(VmmBlockDev *bs, const char *name, GError **error)
{
    if (!bs->drv->snapshot_goto)
        return not_supported(bs, "internal snapshots", error);
    return bs->drv->snapshot_goto(bs, name, error);
}

static gboolean do_delete(VmmBlockDev *bs, const char *name, GError **error)
{
    if (!bs->drv->snapshot_delete)
        return not_supported(bs, "internal snapshots", error);
    return bs->drv->snapshot_delete(bs, name, error);
}

static int do_list(VmmBlockDev *bs)
{
    if (!bs->drv->snapshot_list)
        return 0;
    GError *err = NULL;
    GPtrArray *sns = bs->drv->snapshot_list(bs, &err);
    if (!sns) {
        img_report_error(err, "Could not list snapshots");
        return 1;
    }
    if (sns->len)
        img_print_snapshot_table(sns);
    g_ptr_array_unref(sns);
    return 0;
}

int img_snapshot(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, IMG_OPT_OBJECT},
        {"image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    ImgOpenSpec spec = {.no_backing = TRUE};
    SnapshotAction action = SN_NONE;
    const char *name = NULL;
    gboolean quiet = FALSE;
    GError *err = NULL;
    int c;

    while ((c = getopt_long(argc, argv, ":la:c:d:f:hqU", long_options, NULL)) != -1) {
        SnapshotAction a = SN_NONE;
        switch (c) {
        case 'h':
            printf("usage: vmm-img snapshot [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] "
                   "filename\n");
            return 0;
        case 'l': a = SN_LIST; break;
        case 'a': a = SN_APPLY; break;
        case 'c': a = SN_CREATE; break;
        case 'd': a = SN_DELETE; break;
        case 'f': spec.fmt = optarg; break;
        case 'q': quiet = TRUE; break;
        case 'U': spec.force_share = TRUE; break;
        case IMG_OPT_IMAGE_OPTS: spec.image_opts = TRUE; break;
        case IMG_OPT_OBJECT:
            if (!img_object_option(optarg))
                return 1;
            break;
        default:
            return img_bad_option(argv, c);
        }
        if (a != SN_NONE) {
            if (action != SN_NONE)
                return img_usage_error("Cannot mix '-l', '-a', '-c', '-d'");
            action = a;
            name = a == SN_LIST ? NULL : optarg;
        }
    }
    if (optind != argc - 1)
        return img_usage_error("Expecting one image file name");
    const char *filename = argv[optind];
    if (action == SN_NONE)
        action = SN_LIST;
    spec.writable = action != SN_LIST;
    spec.quiet = quiet;

    VmmBlockDev *bs = img_open(filename, &spec, &err);
    if (!bs) {
        img_report_error(err, NULL);
        return 1;
    }
    int ret = 0;
    switch (action) {
    case SN_LIST:
        ret = do_list(bs);
        break;
    case SN_CREATE:
        if (!do_create(bs, name, &err)) {
            img_report_error(err, "Could not create snapshot '%s'", name);
            ret = 1;
        }
        break;
    case SN_APPLY:
        if (!do_apply(bs, name, &err)) {
            img_report_error(err, "Could not apply snapshot '%s'", name);
            ret = 1;
        }
        break;
    case SN_DELETE:
        if (!do_delete(bs, name, &err)) {
            img_report_error(err, "Could not delete snapshot '%s'", name);
            ret = 1;
        }
        break;
    case SN_NONE:
        break;
    }
    if (ret == 0 && spec.writable && !vmm_block_flush(bs, &err)) {
        img_report_error(err, "%s", filename);
        ret = 1;
    }
    vmm_block_unref(bs);
    return ret;
}
