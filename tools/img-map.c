/* vmm-img map: where an image's data lives, as qemu-img map prints it
 * (human: the data ranges with their host offsets; json: every range with
 * start, length, depth, present, zero, data and offset). */
#include "img.h"

#include <string.h>

#define MAP_PROBE_MAX (1ULL << 30)

typedef struct {
    guint64 start, length, offset;
    int depth;
    gboolean present, zero, data, has_offset;
    const char *filename;
} MapEntry;

static gboolean entry_mergeable(const MapEntry *curr, const MapEntry *next)
{
    if (curr->length == 0)
        return FALSE;
    if (curr->zero != next->zero || curr->data != next->data || curr->depth != next->depth ||
        curr->present != next->present || !curr->filename != !next->filename ||
        curr->has_offset != next->has_offset)
        return FALSE;
    if (curr->filename && strcmp(curr->filename, next->filename))
        return FALSE;
    if (curr->has_offset && curr->offset + curr->length != next->offset)
        return FALSE;
    return TRUE;
}

static gboolean dump_entry(ImgOutput out, MapEntry *e, MapEntry *next)
{
    if (out == IMG_OUTPUT_HUMAN) {
        if (e->data && !e->has_offset) {
            img_error("File contains external, encrypted or compressed clusters.");
            return FALSE;
        }
        if (e->data && !e->zero)
            printf("%#-16" G_GINT64_MODIFIER "x%#-16" G_GINT64_MODIFIER "x%#-16" G_GINT64_MODIFIER "x%s\n",
                   e->start, e->length, e->has_offset ? e->offset : 0,
                   e->filename ? e->filename : "");
        /* The human format does not tell 0, ZERO and ZERO|DATA apart: merge them. */
        if (next && (!next->data || next->zero)) {
            next->data = FALSE;
            next->zero = TRUE;
        }
        return TRUE;
    }
    printf("{ \"start\": %" G_GUINT64_FORMAT ", \"length\": %" G_GUINT64_FORMAT ", \"depth\": %d,"
           " \"present\": %s, \"zero\": %s, \"data\": %s",
           e->start, e->length, e->depth, e->present ? "true" : "false",
           e->zero ? "true" : "false", e->data ? "true" : "false");
    if (e->has_offset)
        printf(", \"offset\": %" G_GUINT64_FORMAT, e->offset);
    putchar('}');
    if (next)
        puts(",");
    return TRUE;
}

static gboolean get_entry(VmmBlockDev *bs, guint64 offset, guint64 bytes, MapEntry *e, GError **error)
{
    guint64 pnum = 0, map = 0;
    VmmBlockDev *file = NULL;
    int depth = 0;
    int ret = img_chain_status(bs, offset, bytes, &pnum, &map, &file, &depth, error);
    if (ret < 0)
        return FALSE;
    gboolean has_offset = (ret & VMM_BLOCK_OFFSET_VALID) != 0;
    *e = (MapEntry){
        .start = offset,
        .length = pnum,
        .data = (ret & VMM_BLOCK_DATA) != 0,
        .zero = (ret & VMM_BLOCK_ZERO) != 0,
        .offset = map,
        .has_offset = has_offset,
        .depth = depth,
        .present = (ret & VMM_BLOCK_ALLOCATED) != 0,
        .filename = file && has_offset ? file->filename : NULL,
    };
    return TRUE;
}

int img_map(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"output", required_argument, NULL, IMG_OPT_OUTPUT},
        {"object", required_argument, NULL, IMG_OPT_OBJECT},
        {"image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        {"start-offset", required_argument, NULL, 's'},
        {"max-length", required_argument, NULL, 'l'},
        {NULL, 0, NULL, 0},
    };
    ImgOpenSpec spec = {0};
    ImgOutput output = IMG_OUTPUT_HUMAN;
    guint64 start = 0, max_length = G_MAXUINT64;
    GError *err = NULL;
    int c;

    while ((c = getopt_long(argc, argv, ":f:hUs:l:", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("usage: vmm-img map [-f fmt] [--start-offset=offset] [--max-length=len] "
                   "[--output=ofmt] [-U] filename\n");
            return 0;
        case 'f': spec.fmt = optarg; break;
        case 'U': spec.force_share = TRUE; break;
        case 's':
            if (!img_parse_size(optarg, &start)) {
                img_error("Invalid start offset specified! You may use k, M, G, T, P or E suffixes "
                          "for ");
                return 1;
            }
            break;
        case 'l':
            if (!img_parse_size(optarg, &max_length)) {
                img_error("Invalid length specified! You may use k, M, G, T, P or E suffixes for ");
                return 1;
            }
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
    if (optind != argc - 1)
        return img_usage_error("Expecting one image file name");
    const char *filename = argv[optind];
    VmmBlockDev *bs = img_open(filename, &spec, &err);
    if (!bs) {
        img_report_error(err, NULL);
        return 1;
    }
    guint64 length = vmm_block_size(bs);
    if (max_length != G_MAXUINT64 && start + max_length < length)
        length = start + max_length;

    if (output == IMG_OUTPUT_HUMAN)
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    else
        putchar('[');

    int ret = 0;
    MapEntry curr = {.start = start, .length = 0}, next;
    while (curr.start + curr.length < length) {
        guint64 offset = curr.start + curr.length;
        guint64 n = MIN(MAP_PROBE_MAX, length - offset);
        if (!get_entry(bs, offset, n, &next, &err)) {
            img_report_error(err, "Could not read file metadata");
            ret = 1;
            goto out;
        }
        if (entry_mergeable(&curr, &next)) {
            curr.length += next.length;
            continue;
        }
        if (curr.length > 0 && !dump_entry(output, &curr, &next)) {
            ret = 1;
            goto out;
        }
        curr = next;
    }
    if (!dump_entry(output, &curr, NULL))
        ret = 1;
    if (output == IMG_OUTPUT_JSON)
        puts("]");
out:
    fflush(stdout);
    vmm_block_unref(bs);
    return ret;
}
