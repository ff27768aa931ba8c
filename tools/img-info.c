/* vmm-img info: what an image is, in qemu-img info's human and JSON forms
 * (QEMU's ImageInfo keys). */
#include "img.h"

#include <string.h>

static gint64 allocated_size(VmmBlockDev *bs)
{
    for (; bs; bs = bs->file) {
        if (bs->drv && bs->drv->allocated_file_size)
            return bs->drv->allocated_file_size(bs);
    }
    return -1;
}

static JsonArray *snapshot_array(GPtrArray *sns)
{
    JsonArray *arr = json_array_new();
    for (guint i = 0; i < sns->len; i++) {
        const VmmSnapshotInfo *sn = sns->pdata[i];
        JsonObject *o = json_object_new();
        if (sn->icount != (guint64)-1)
            json_object_set_int_member(o, "icount", (gint64)sn->icount);
        json_object_set_int_member(o, "vm-clock-nsec", (gint64)(sn->vm_clock_nsec % 1000000000ULL));
        json_object_set_string_member(o, "name", sn->name ? sn->name : "");
        json_object_set_int_member(o, "date-sec", sn->date_sec);
        json_object_set_int_member(o, "date-nsec", sn->date_nsec);
        json_object_set_int_member(o, "vm-clock-sec", (gint64)(sn->vm_clock_nsec / 1000000000ULL));
        json_object_set_string_member(o, "id", sn->id ? sn->id : "");
        json_object_set_int_member(o, "vm-state-size", (gint64)sn->vm_state_size);
        json_array_add_object_element(arr, o);
    }
    return arr;
}

static GPtrArray *list_snapshots(VmmBlockDev *bs)
{
    if (!bs->drv || !bs->drv->snapshot_list)
        return NULL;
    GError *err = NULL;
    GPtrArray *sns = bs->drv->snapshot_list(bs, &err);
    if (!sns) {
        if (err)
            g_error_free(err);
        return NULL;
    }
    if (sns->len == 0) {
        g_ptr_array_unref(sns);
        return NULL;
    }
    return sns;
}

/* QEMU's ImageInfo of BS, named FILENAME. */
static JsonObject *collect_info(VmmBlockDev *bs, const char *filename, GPtrArray **snapshots_out)
{
    JsonObject *info = json_object_new();
    GPtrArray *sns = list_snapshots(bs);
    if (sns)
        json_object_set_array_member(info, "snapshots", snapshot_array(sns));
    if (bs->backing_format && bs->backing_file)
        json_object_set_string_member(info, "backing-filename-format", bs->backing_format);
    json_object_set_int_member(info, "virtual-size", (gint64)vmm_block_size(bs));
    json_object_set_string_member(info, "filename", filename);
    guint64 cluster = img_cluster_size(bs);
    if (cluster)
        json_object_set_int_member(info, "cluster-size", (gint64)cluster);
    json_object_set_string_member(info, "format", img_format_name(bs));
    gint64 actual = allocated_size(bs);
    if (actual >= 0)
        json_object_set_int_member(info, "actual-size", actual);
    if (bs->encrypted)
        json_object_set_boolean_member(info, "encrypted", TRUE);
    JsonObject *specific = img_format_specific(bs);
    if (specific)
        json_object_set_object_member(info, "format-specific", specific);
    if (bs->backing_file && *bs->backing_file) {
        g_autofree char *full = vmm_block_resolve_backing(filename, bs->backing_file);
        if (full)
            json_object_set_string_member(info, "full-backing-filename", full);
        json_object_set_string_member(info, "backing-filename", bs->backing_file);
    }
    gboolean dirty = img_dirty_flag(bs);
    json_object_set_boolean_member(info, "dirty-flag", dirty);
    if (snapshots_out)
        *snapshots_out = sns;
    else if (sns)
        g_ptr_array_unref(sns);
    return info;
}

static void dump_node(int indent, JsonNode *node);

static void dump_object(int indent, JsonObject *obj)
{
    g_autoptr(GList) members = json_object_get_members(obj);
    for (GList *l = members; l; l = l->next) {
        JsonNode *v = json_object_get_member(obj, l->data);
        gboolean composite = JSON_NODE_HOLDS_OBJECT(v) || JSON_NODE_HOLDS_ARRAY(v);
        g_autofree char *key = g_strdup(l->data);
        g_strdelimit(key, "-", ' ');
        printf("%*s%s:%c", indent * 4, "", key, composite ? '\n' : ' ');
        dump_node(indent + 1, v);
        if (!composite)
            printf("\n");
    }
}

static void dump_node(int indent, JsonNode *node)
{
    if (JSON_NODE_HOLDS_OBJECT(node)) {
        dump_object(indent, json_node_get_object(node));
    } else if (JSON_NODE_HOLDS_ARRAY(node)) {
        JsonArray *arr = json_node_get_array(node);
        for (guint i = 0; i < json_array_get_length(arr); i++) {
            JsonNode *v = json_array_get_element(arr, i);
            gboolean composite = JSON_NODE_HOLDS_OBJECT(v) || JSON_NODE_HOLDS_ARRAY(v);
            printf("%*s[%u]:%c", indent * 4, "", i, composite ? '\n' : ' ');
            dump_node(indent + 1, v);
            if (!composite)
                printf("\n");
        }
    } else if (JSON_NODE_HOLDS_VALUE(node)) {
        GType t = json_node_get_value_type(node);
        if (t == G_TYPE_BOOLEAN)
            printf("%s", json_node_get_boolean(node) ? "true" : "false");
        else if (t == G_TYPE_INT64)
            printf("%" G_GINT64_FORMAT, json_node_get_int(node));
        else if (t == G_TYPE_DOUBLE)
            printf("%g", json_node_get_double(node));
        else
            printf("%s", json_node_get_string(node));
    }
}

static void dump_human(JsonObject *info, GPtrArray *sns)
{
    guint64 vsize = (guint64)json_object_get_int_member(info, "virtual-size");
    g_autofree char *vstr = img_size_to_str(vsize);
    printf("image: %s\n", json_object_get_string_member(info, "filename"));
    printf("file format: %s\n", json_object_get_string_member(info, "format"));
    printf("virtual size: %s (%" G_GUINT64_FORMAT " bytes)\n", vstr, vsize);
    if (json_object_has_member(info, "actual-size")) {
        g_autofree char *a = img_size_to_str((guint64)json_object_get_int_member(info, "actual-size"));
        printf("disk size: %s\n", a);
    } else {
        printf("disk size: unavailable\n");
    }
    if (json_object_has_member(info, "encrypted"))
        printf("encrypted: yes\n");
    if (json_object_has_member(info, "cluster-size"))
        printf("cluster_size: %" G_GINT64_FORMAT "\n", json_object_get_int_member(info, "cluster-size"));
    if (json_object_get_boolean_member(info, "dirty-flag"))
        printf("dirty flag: yes\n");
    if (json_object_has_member(info, "backing-filename")) {
        const char *b = json_object_get_string_member(info, "backing-filename");
        printf("backing file: %s", b);
        if (!json_object_has_member(info, "full-backing-filename"))
            printf(" (cannot determine actual path)");
        else if (strcmp(b, json_object_get_string_member(info, "full-backing-filename")))
            printf(" (actual path: %s)", json_object_get_string_member(info, "full-backing-filename"));
        printf("\n");
    }
    if (json_object_has_member(info, "backing-filename-format"))
        printf("backing file format: %s\n",
               json_object_get_string_member(info, "backing-filename-format"));
    if (sns)
        img_print_snapshot_table(sns);
    if (json_object_has_member(info, "format-specific")) {
        JsonObject *fs = json_object_get_object_member(info, "format-specific");
        JsonObject *data = json_object_get_object_member(fs, "data");
        printf("Format specific information:\n");
        if (data)
            dump_object(1, data);
    }
}

int img_info(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"output", required_argument, NULL, IMG_OPT_OUTPUT},
        {"backing-chain", no_argument, NULL, IMG_OPT_BACKING_CHAIN},
        {"object", required_argument, NULL, IMG_OPT_OBJECT},
        {"image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    ImgOpenSpec spec = {0};
    ImgOutput output = IMG_OUTPUT_HUMAN;
    gboolean chain = FALSE;
    GError *err = NULL;
    int c;

    while ((c = getopt_long(argc, argv, ":f:hU", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("usage: vmm-img info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename\n");
            return 0;
        case 'f': spec.fmt = optarg; break;
        case 'U': spec.force_share = TRUE; break;
        case IMG_OPT_OUTPUT:
            if (!img_parse_output(optarg, &output))
                return 1;
            break;
        case IMG_OPT_BACKING_CHAIN: chain = TRUE; break;
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

    spec.no_backing = !chain;
    VmmBlockDev *top = img_open(filename, &spec, &err);
    if (!top) {
        img_report_error(err, NULL);
        return 1;
    }
    JsonArray *list = json_array_new();
    int n = 0;
    for (VmmBlockDev *bs = top; bs; bs = chain ? bs->backing : NULL, n++) {
        GPtrArray *sns = NULL;
        JsonObject *info = collect_info(bs, n == 0 && !spec.image_opts ? filename : bs->filename,
                                        &sns);
        if (output == IMG_OUTPUT_HUMAN) {
            if (n > 0)
                printf("\n");
            dump_human(info, sns);
        }
        if (sns)
            g_ptr_array_unref(sns);
        json_array_add_object_element(list, info);
        if (n > 1000) {
            img_error("%s: backing chain too long (a loop?)", filename);
            break;
        }
    }
    if (output == IMG_OUTPUT_JSON) {
        JsonNode *node = json_node_new(JSON_NODE_ARRAY);
        json_node_set_array(node, list);
        if (chain) {
            img_print_json(node);
        } else {
            img_print_json(json_array_get_element(list, 0));
        }
        json_node_unref(node);
    }
    json_array_unref(list);
    vmm_block_unref(top);
    return 0;
}
