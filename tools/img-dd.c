/* vmm-img dd: dd-style copy between images, as qemu-img dd (if= of= bs=
 * count= skip=). Like qemu-img 7.2, count= limits the input to count*bs bytes
 * from its start, and skip= then starts inside that range. */
#include "img.h"

#include <string.h>

typedef struct {
    const char *in, *out;
    guint64 bs, count, skip;
    gboolean has_count, has_skip;
} DdArgs;

static gboolean parse_operand(const char *arg, DdArgs *d)
{
    const char *eq = strchr(arg, '=');
    if (!eq) {
        img_error("unrecognized operand %s", arg);
        return FALSE;
    }
    g_autofree char *key = g_strndup(arg, (gsize)(eq - arg));
    const char *val = eq + 1;
    if (!strcmp(key, "if")) {
        d->in = val;
    } else if (!strcmp(key, "of")) {
        d->out = val;
    } else if (!strcmp(key, "bs") || !strcmp(key, "count") || !strcmp(key, "skip")) {
        guint64 v;
        if (!img_parse_size(val, &v) || (!strcmp(key, "bs") && (v == 0 || v > G_MAXINT32))) {
            img_error(!strcmp(key, "bs") ? "invalid buffer size for %s: '%s'" : "invalid number for %s: '%s'",
                      key, val);
            return FALSE;
        }
        if (!strcmp(key, "bs")) {
            d->bs = v;
        } else if (!strcmp(key, "count")) {
            d->count = v;
            d->has_count = TRUE;
        } else {
            d->skip = v;
            d->has_skip = TRUE;
        }
    } else {
        img_error("unrecognized operand %s", arg);
        return FALSE;
    }
    return TRUE;
}

int img_dd(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, IMG_OPT_OBJECT},
        {"image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    ImgOpenSpec spec = {0};
    const char *out_fmt = "raw";
    DdArgs d = {.bs = 512};
    GError *err = NULL;
    int c;

    while ((c = getopt_long(argc, argv, ":hf:O:U", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("usage: vmm-img dd [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] "
                   "[skip=blocks] if=input of=output\n");
            return 0;
        case 'f': spec.fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'U': spec.force_share = TRUE; break;
        case IMG_OPT_IMAGE_OPTS: spec.image_opts = TRUE; break;
        case IMG_OPT_OBJECT:
            if (!img_object_option(optarg))
                return 1;
            break;
        default:
            return img_bad_option(argv, c);
        }
    }
    for (int i = optind; i < argc; i++)
        if (!parse_operand(argv[i], &d))
            return 1;
    if (!d.in || !d.out) {
        img_error("Must specify both input and output files");
        return 1;
    }
    const VmmBlockDriver *drv = vmm_block_find_driver(out_fmt);
    if (!drv || !drv->create) {
        img_error("Unknown file format '%s'", out_fmt);
        return 1;
    }
    VmmBlockDev *in = img_open(d.in, &spec, &err);
    if (!in) {
        img_report_error(err, NULL);
        return 1;
    }
    int ret = 1;
    VmmBlockDev *out = NULL;
    guint8 *buf = NULL;
    guint64 size = vmm_block_size(in);
    if (d.has_count && d.count <= G_MAXINT64 / d.bs && size > d.count * d.bs)
        size = d.count * d.bs;
    guint64 in_pos = 0, out_size = 0;
    if (d.has_skip && (d.skip > G_MAXINT64 / d.bs || size < d.bs * d.skip)) {
        out_size = 0;
        in_pos = size;
    } else {
        in_pos = d.skip * d.bs;
        out_size = size - in_pos;
    }

    g_autoptr(JsonObject) opts = json_object_new();
    json_object_set_int_member(opts, "size", (gint64)out_size);
    if (!vmm_block_create(d.out, out_fmt, opts, &err)) {
        img_report_error(err, "%s", d.out);
        goto out;
    }
    ImgOpenSpec ospec = {.fmt = out_fmt, .writable = TRUE, .no_backing = TRUE, .quiet = TRUE};
    out = img_open(d.out, &ospec, &err);
    if (!out) {
        img_report_error(err, NULL);
        goto out;
    }
    buf = g_malloc(d.bs);
    for (guint64 out_pos = 0; in_pos < size;) {
        guint64 n = MIN(d.bs, size - in_pos);
        if (!vmm_block_pread(in, in_pos, n, buf, &err)) {
            img_report_error(err, "error while reading from input image file");
            goto out;
        }
        if (!vmm_block_pwrite(out, out_pos, n, buf, 0, &err)) {
            img_report_error(err, "error while writing to output image file");
            goto out;
        }
        in_pos += n;
        out_pos += n;
    }
    if (!vmm_block_flush(out, &err)) {
        img_report_error(err, "%s", d.out);
        goto out;
    }
    ret = 0;
out:
    g_free(buf);
    if (out)
        vmm_block_unref(out);
    vmm_block_unref(in);
    return ret;
}
