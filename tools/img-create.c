/* vmm-img create: a new image of a format, as qemu-img create. */
#include "img.h"

#include <string.h>

static JsonNode *get_dotted(JsonObject *obj, const char *key)
{
    g_auto(GStrv) parts = g_strsplit(key, ".", -1);
    JsonNode *node = NULL;
    for (int i = 0; parts[i]; i++) {
        if (!obj || !json_object_has_member(obj, parts[i]))
            return NULL;
        node = json_object_get_member(obj, parts[i]);
        obj = JSON_NODE_HOLDS_OBJECT(node) ? json_object_get_object_member(obj, parts[i]) : NULL;
    }
    return node;
}

static char *node_value_string(const VmmOptKey *k, JsonNode *node)
{
    if (!JSON_NODE_HOLDS_VALUE(node))
        return NULL;
    GType t = json_node_get_value_type(node);
    if (t == G_TYPE_BOOLEAN)
        return g_strdup(json_node_get_boolean(node) ? "on" : "off");
    if (t == G_TYPE_INT64)
        return g_strdup_printf("%" G_GINT64_FORMAT, json_node_get_int(node));
    (void)k;
    return g_strdup(json_node_get_string(node));
}

/* "Formatting 'x', fmt=qcow2 cluster_size=65536 ..." as bdrv_img_create prints. */
static void print_formatting(const char *filename, const VmmBlockDriver *drv, JsonObject *opts)
{
    GString *line = g_string_new(NULL);
    g_string_append_printf(line, "Formatting '%s', fmt=%s", filename, drv->format_name);
    for (const VmmOptKey *k = drv->create_opts; k && k->name; k++) {
        JsonNode *node = get_dotted(opts, k->name);
        g_autofree char *val = node ? node_value_string(k, node) : NULL;
        if (val)
            g_string_append_printf(line, " %s=%s", k->name, val);
        else if (k->def_value)
            g_string_append_printf(line, " %s=%s", k->name, k->def_value);
    }
    printf("%s\n", line->str);
    fflush(stdout);
    g_string_free(line, TRUE);
}

static gboolean driver_has_create_opt(const VmmBlockDriver *drv, const char *name)
{
    for (const VmmOptKey *k = drv->create_opts; k && k->name; k++)
        if (!strcmp(k->name, name))
            return TRUE;
    return FALSE;
}

/* Opens the backing file named in the new image (relative to its directory)
 * to learn its size and format, as qemu-img does unless -u. */
static gboolean inspect_backing(const char *filename, const char *backing, const char *backing_fmt,
                                guint64 *size, char **detected_fmt, GError **error)
{
    g_autofree char *path = vmm_block_resolve_backing(filename, backing);
    ImgOpenSpec spec = {.fmt = backing_fmt, .no_backing = TRUE, .force_share = TRUE};
    GError *local = NULL;
    VmmBlockDev *bs = img_open(path, &spec, &local);
    if (!bs) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_NOT_FOUND, "%s: Could not open backing image: %s",
                    filename, local->message);
        g_error_free(local);
        return FALSE;
    }
    *size = vmm_block_size(bs);
    *detected_fmt = g_strdup(img_format_name(bs));
    vmm_block_unref(bs);
    return TRUE;
}

int img_create(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, IMG_OPT_OBJECT},
        {NULL, 0, NULL, 0},
    };
    const char *fmt = "raw", *base_filename = NULL, *base_fmt = NULL;
    g_autofree char *options = NULL;
    gboolean quiet = FALSE, unsafe = FALSE;
    GError *err = NULL;
    int c;

    while ((c = getopt_long(argc, argv, ":F:b:f:ho:qu", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("usage: vmm-img create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] "
                   "[-o options] filename [size]\n");
            return 0;
        case 'F': base_fmt = optarg; break;
        case 'b': base_filename = optarg; break;
        case 'f': fmt = optarg; break;
        case 'o': img_append_options(&options, optarg); break;
        case 'q': quiet = TRUE; break;
        case 'u': unsafe = TRUE; break;
        case IMG_OPT_OBJECT:
            if (!img_object_option(optarg))
                return 1;
            break;
        default:
            return img_bad_option(argv, c);
        }
    }

    const VmmBlockDriver *drv = vmm_block_find_driver(fmt);
    if (options && vmm_opts_wants_help(options)) {
        if (!drv) {
            img_error("Unknown file format '%s'", fmt);
            return 1;
        }
        const char *target = optind < argc ? argv[optind] : NULL;
        img_print_create_opts_help(drv, target && !drv->is_protocol
                                            ? vmm_block_find_driver("file") : NULL);
        return 0;
    }
    if (optind >= argc)
        return img_usage_error("Expecting image file name");
    const char *filename = argv[optind++];
    const char *size_str = optind < argc ? argv[optind++] : NULL;
    if (optind != argc)
        return img_usage_error("Unexpected argument: %s", argv[optind]);

    if (!drv || !drv->create) {
        img_error("%s: %s file format '%s'", filename, drv ? "Cannot create images of" : "Unknown",
                  fmt);
        return 1;
    }
    guint64 size = 0;
    if (size_str && !img_parse_size(size_str, &size)) {
        img_error("Invalid image size specified. You may use k, M, G, T, P or E suffixes for");
        img_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        return 1;
    }
    if (size > (guint64)G_MAXINT64) {
        img_error("%s: Image size must be less than 8 EiB!", filename);
        return 1;
    }

    g_autoptr(JsonObject) opts = img_parse_create_opts(drv, options, &err);
    if (!opts) {
        img_report_error(err, "%s", filename);
        return 1;
    }
    if (base_filename) {
        if (!driver_has_create_opt(drv, "backing_file")) {
            img_error("%s: Backing file not supported for file format '%s'", filename, fmt);
            return 1;
        }
        json_object_set_string_member(opts, "backing_file", base_filename);
    }
    if (base_fmt) {
        if (!driver_has_create_opt(drv, "backing_fmt")) {
            img_error("%s: Backing file format not supported for file format '%s'", filename, fmt);
            return 1;
        }
        json_object_set_string_member(opts, "backing_fmt", base_fmt);
    }
    if (size_str)
        json_object_set_int_member(opts, "size", (gint64)size);

    const char *backing = vmm_opts_get_string(opts, "backing_file", NULL);
    const char *backing_fmt = vmm_opts_get_string(opts, "backing_fmt", NULL);
    if (backing && !*backing)
        backing = NULL;
    if (backing && !unsafe) {
        guint64 backing_size = 0;
        g_autofree char *detected = NULL;
        if (!inspect_backing(filename, backing, backing_fmt, &backing_size, &detected, &err)) {
            img_report_error(err, NULL);
            return 1;
        }
        if (!backing_fmt) {
            img_error("%s: Backing file specified without backing format", filename);
            fprintf(stderr, "Detected format of %s.\n", detected);
            return 1;
        }
        if (!vmm_opts_has(opts, "size"))
            json_object_set_int_member(opts, "size", (gint64)backing_size);
    } else if (backing && !backing_fmt) {
        img_error("%s: Backing file specified without backing format", filename);
        return 1;
    }
    if (!vmm_opts_has(opts, "size")) {
        img_error("%s: Image creation needs a size parameter", filename);
        return 1;
    }

    if (!quiet)
        print_formatting(filename, drv, opts);
    if (!vmm_block_create(filename, fmt, opts, &err)) {
        img_report_error(err, NULL);
        return 1;
    }
    return 0;
}
