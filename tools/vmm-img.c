/* vmm-img: the disk image tool (the role of qemu-img), on the same block layer
 * as blockd. This file holds main, the subcommand dispatch and what the
 * subcommands share: option parsing, opening images, JSON and human output
 * in qemu-img's formats, and the progress bar. See docs/vmm-img.md. */
#include "img.h"
#include "blockd/nbd-uri.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *usage;
} ImgCommand;

static const ImgCommand commands[] = {
    {"amend", img_amend,
     "amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename"},
    {"bench", img_bench,
     "bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-n] [--no-drain] "
     "[-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename"},
    {"check", img_check,
     "check [--object objectdef] [--image-opts] [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] "
     "[-T src_cache] [-U] filename"},
    {"commit", img_commit,
     "commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-d] [-p] filename"},
    {"compare", img_compare,
     "compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] "
     "filename1 filename2"},
    {"convert", img_convert,
     "convert [--object objectdef] [--image-opts] [--target-image-opts] [--target-is-zero] [-U] [-c] "
     "[-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] "
     "[-o options] [-S sparse_size] [-m num_workers] [-W] filename [filename2 [...]] output_filename"},
    {"create", img_create,
     "create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] "
     "filename [size]"},
    {"dd", img_dd,
     "dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] "
     "if=input of=output"},
    {"info", img_info,
     "info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename"},
    {"map", img_map,
     "map [--object objectdef] [--image-opts] [-f fmt] [--start-offset=offset] [--max-length=len] "
     "[--output=ofmt] [-U] filename"},
    {"measure", img_measure,
     "measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--object objectdef] "
     "[--image-opts] [-f fmt] filename]"},
    {"snapshot", img_snapshot,
     "snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | "
     "-d snapshot] filename"},
    {"rebase", img_rebase,
     "rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] "
     "-b backing_file [-F backing_fmt] filename"},
    {"resize", img_resize,
     "resize [--object objectdef] [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] [--shrink] "
     "filename [+ | -]size"},
};

/* ---------------------------------------------------------------- messages */

static G_GNUC_PRINTF(2, 0) void vreport(const char *prefix, const char *fmt, va_list ap)
{
    fflush(stdout);
    fprintf(stderr, "vmm-img: %s", prefix);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void img_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport("", fmt, ap);
    va_end(ap);
}

void img_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport("warning: ", fmt, ap);
    va_end(ap);
}

void img_report_error(GError *err, const char *prefix_fmt, ...)
{
    g_autofree char *prefix = NULL;
    if (prefix_fmt) {
        va_list ap;
        va_start(ap, prefix_fmt);
        prefix = g_strdup_vprintf(prefix_fmt, ap);
        va_end(ap);
    }
    const char *msg = err ? err->message : "unknown error";
    if (prefix)
        img_error("%s: %s", prefix, msg);
    else
        img_error("%s", msg);
    if (err)
        g_error_free(err);
}

int img_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport("", fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try 'vmm-img --help' for more information\n");
    return 1;
}

int img_bad_option(char **argv, int c)
{
    const char *opt = argv[optind - 1];
    if (c == ':') {
        if (optopt)
            return img_usage_error("option requires an argument -- '%c'", optopt);
        return img_usage_error("option '%s' requires an argument", opt);
    }
    if (optopt)
        return img_usage_error("invalid option -- '%c'", optopt);
    return img_usage_error("unrecognized option '%s'", opt);
}

void img_qprintf(gboolean quiet, const char *fmt, ...)
{
    if (quiet)
        return;
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------- parsing */

gboolean img_parse_size(const char *s, guint64 *out)
{
    if (!s || !*s || *s == '-' || *s == '+')
        return FALSE;
    char *end;
    errno = 0;
    /* Integers are exact; a fraction is allowed only with a suffix (as QEMU). */
    guint64 ival = g_ascii_strtoull(s, &end, 10);
    if (errno || end == s)
        return FALSE;
    double fval = (double)ival;
    gboolean fraction = FALSE;
    if (*end == '.') {
        fval = g_ascii_strtod(s, &end);
        fraction = TRUE;
    }
    guint64 mult = 1;
    switch (*end) {
    case '\0': break;
    case 'b': case 'B': mult = 1; end++; break;
    case 'k': case 'K': mult = 1ULL << 10; end++; break;
    case 'm': case 'M': mult = 1ULL << 20; end++; break;
    case 'g': case 'G': mult = 1ULL << 30; end++; break;
    case 't': case 'T': mult = 1ULL << 40; end++; break;
    case 'p': case 'P': mult = 1ULL << 50; end++; break;
    case 'e': case 'E': mult = 1ULL << 60; end++; break;
    default: return FALSE;
    }
    if (*end)
        return FALSE;
    if (fraction) {
        if (mult == 1)
            return FALSE;
        double v = fval * (double)mult;
        if (v >= 18446744073709551616.0)
            return FALSE;
        *out = (guint64)v;
        return TRUE;
    }
    if (mult > 1 && ival > G_MAXUINT64 / mult)
        return FALSE;
    *out = ival * mult;
    return TRUE;
}

gboolean img_parse_output(const char *s, ImgOutput *out)
{
    if (!strcmp(s, "human")) {
        *out = IMG_OUTPUT_HUMAN;
        return TRUE;
    }
    if (!strcmp(s, "json")) {
        *out = IMG_OUTPUT_JSON;
        return TRUE;
    }
    img_usage_error("--output must be used with human or json as argument.");
    return FALSE;
}

/* TLS credentials become usable by the nbd driver's tls-creds= option (the
 * client side: what qemu-img needs to reach a TLS NBD server). */
static gboolean img_register_tls_creds(JsonObject *obj, const char *type, const char *id,
                                       GError **error)
{
    const char *endpoint = vmm_opts_get_string(obj, "endpoint", "client");
    if (strcmp(endpoint, "client") != 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "--object %s,id=%s: vmm-img is an NBD client and needs endpoint=client, not '%s'",
                    type, id, endpoint);
        return FALSE;
    }
    const char *dir = vmm_opts_get_string(obj, "dir", NULL);
    if (!dir) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "--object %s,id=%s: parameter 'dir' is missing",
                    type, id);
        return FALSE;
    }
    if (!g_file_test(dir, G_FILE_TEST_IS_DIR)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_NOT_FOUND,
                    "--object %s,id=%s: credentials directory '%s' does not exist", type, id, dir);
        return FALSE;
    }
    gboolean psk = strcmp(type, "tls-creds-psk") == 0;
    vmm_nbd_tls_creds_register(id, psk ? VMM_NBD_TLS_PSK : VMM_NBD_TLS_X509, dir,
                               psk ? vmm_opts_get_string(obj, "username", NULL) : NULL);
    return TRUE;
}

gboolean img_add_object(const char *def, GError **error)
{
    static const VmmOptSpec spec = {.option = "--object", .implied = "qom-type", .keys = NULL};
    if (vmm_opts_wants_help(def)) {
        printf("List of user creatable objects:\n  secret\n  tls-creds-psk\n  tls-creds-x509\n");
        exit(0);
    }
    g_autoptr(JsonObject) obj = vmm_opts_parse(&spec, def, error);
    if (!obj)
        return FALSE;
    const char *type = vmm_opts_get_string(obj, "qom-type", NULL);
    if (!type) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "--object: parameter 'qom-type' is missing");
        return FALSE;
    }
    gboolean tls = strcmp(type, "tls-creds-x509") == 0 || strcmp(type, "tls-creds-psk") == 0;
    if (strcmp(type, "secret") != 0 && !tls) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "--object: object type '%s' is not supported by vmm-img "
                    "(supported: secret, tls-creds-psk, tls-creds-x509)", type);
        return FALSE;
    }
    const char *id = vmm_opts_get_string(obj, "id", NULL);
    if (!id) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "--object: parameter 'id' is missing");
        return FALSE;
    }
    if (tls)
        return img_register_tls_creds(obj, type, id, error);
    /* Secrets only matter for encrypted images, which the block layer refuses
     * for now with its own message; accepting the object keeps scripts working. */
    return TRUE;
}

gboolean img_cache_flags(const char *mode, int *flags, GError **error)
{
    *flags &= ~(VMM_BDRV_O_NOCACHE | VMM_BDRV_O_NO_FLUSH | VMM_BDRV_O_WRITETHROUGH);
    if (!strcmp(mode, "writeback"))
        return TRUE;
    if (!strcmp(mode, "none") || !strcmp(mode, "off")) {
        *flags |= VMM_BDRV_O_NOCACHE;
        return TRUE;
    }
    if (!strcmp(mode, "writethrough")) {
        *flags |= VMM_BDRV_O_WRITETHROUGH;
        return TRUE;
    }
    if (!strcmp(mode, "directsync")) {
        *flags |= VMM_BDRV_O_NOCACHE | VMM_BDRV_O_WRITETHROUGH;
        return TRUE;
    }
    if (!strcmp(mode, "unsafe")) {
        *flags |= VMM_BDRV_O_NO_FLUSH;
        return TRUE;
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Invalid cache option: %s", mode);
    return FALSE;
}

void img_append_options(char **acc, const char *more)
{
    if (!*acc) {
        *acc = g_strdup(more);
        return;
    }
    char *joined = g_strconcat(*acc, ",", more, NULL);
    g_free(*acc);
    *acc = joined;
}

/* ---------------------------------------------------------------- images */

/* The node options for --image-opts: any key, values as strings. */
static JsonObject *parse_image_opts(const char *optstr, const char **filename,
                                    const char **fmt, GError **error)
{
    static const VmmOptSpec spec = {.option = "--image-opts", .implied = NULL, .keys = NULL};
    JsonObject *opts = vmm_opts_parse(&spec, optstr, error);
    if (!opts)
        return NULL;
    *filename = vmm_opts_get_string(opts, "file.filename", NULL);
    if (!*filename)
        *filename = vmm_opts_get_string(opts, "filename", NULL);
    *fmt = vmm_opts_get_string(opts, "driver", NULL);
    /* A network protocol's node names its server instead of a file. */
    if (!*filename && (vmm_opts_has(opts, "server") || vmm_opts_has(opts, "host") ||
                       vmm_opts_has(opts, "path")))
        return opts;
    if (!*filename) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "--image-opts: '%s' names no file (file.filename=...)", optstr);
        json_object_unref(opts);
        return NULL;
    }
    return opts;
}

static gboolean message_names(const char *msg, const char *filename)
{
    return g_str_has_prefix(msg, filename) || strstr(msg, filename) != NULL;
}

VmmBlockDev *img_open(const char *filename, const ImgOpenSpec *spec, GError **error)
{
    int flags = 0;
    if (spec->writable)
        flags |= VMM_BDRV_O_RDWR;
    else
        flags |= VMM_BDRV_O_INACTIVE;
    if (spec->no_backing)
        flags |= VMM_BDRV_O_NO_BACKING;
    if (spec->check)
        flags |= VMM_BDRV_O_CHECK;
    if (spec->cache && !img_cache_flags(spec->cache, &flags, error))
        return NULL;

    g_autoptr(JsonObject) options = NULL;
    const char *path = filename;
    const char *fmt = spec->fmt;
    if (spec->image_opts) {
        options = parse_image_opts(filename, &path, &fmt, error);
        if (!options)
            return NULL;
    } else {
        options = json_object_new();
    }
    if (spec->force_share) {
        if (spec->writable) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: force-share=on can only be used with read-only images", path);
            return NULL;
        }
        /* -U: share every permission, so another writer does not stop us. */
        if (!vmm_opts_has(options, "force-share"))
            json_object_set_boolean_member(options, "force-share", TRUE);
    }
    if (spec->discard_unmap && !vmm_opts_has(options, "discard"))
        json_object_set_string_member(options, "discard", "unmap");
    if (spec->backing_force_share) {
        JsonObject *b = json_object_has_member(options, "backing")
                            ? json_object_get_object_member(options, "backing") : NULL;
        if (!b) {
            b = json_object_new();
            json_object_set_object_member(options, "backing", b);
        }
        json_object_set_boolean_member(b, "force-share", TRUE);
    }

    GError *local = NULL;
    VmmBlockDev *bs = vmm_block_open(path, fmt, options, flags, &local);
    if (!path)  /* a server's node: errors name it by its options */
        path = filename;
    if (!bs) {
        if (message_names(local->message, path))
            g_propagate_error(error, local);
        else {
            g_set_error(error, local->domain, local->code, "Could not open '%s': %s", path,
                        local->message);
            g_error_free(local);
        }
        return NULL;
    }
    return bs;
}

const char *img_format_name(VmmBlockDev *bs)
{
    return bs->drv ? bs->drv->format_name : "unknown";
}

VmmBlockDev *img_protocol_node(VmmBlockDev *bs)
{
    while (bs->file && bs->drv && !bs->drv->is_protocol)
        bs = bs->file;
    return bs;
}

JsonObject *img_format_specific(VmmBlockDev *bs)
{
    if (!bs->drv || !bs->drv->info_specific)
        return NULL;
    JsonObject *spec = bs->drv->info_specific(bs);
    if (!spec)
        return NULL;
    if (json_object_has_member(spec, "type") && json_object_has_member(spec, "data"))
        return spec;
    JsonObject *wrap = json_object_new();
    json_object_set_string_member(wrap, "type", img_format_name(bs));
    json_object_set_object_member(wrap, "data", spec);
    return wrap;
}

/* Reads the qcow2 header fields that the driver interface does not expose:
 * cluster_bits (offset 20) and the incompatible feature bits (offset 72, bit 0
 * is the dirty bit; only in version 3 headers). */
static gboolean qcow2_header_fields(VmmBlockDev *bs, guint32 *cluster_bits, guint64 *incompatible)
{
    guint8 h[80];
    if (!bs->file || vmm_block_size(bs->file) < sizeof(h) ||
        !vmm_block_pread(bs->file, 0, sizeof(h), h, NULL))
        return FALSE;
    guint32 version = GUINT32_FROM_BE(*(guint32 *)(h + 4));
    *cluster_bits = GUINT32_FROM_BE(*(guint32 *)(h + 20));
    *incompatible = version >= 3 ? GUINT64_FROM_BE(*(guint64 *)(h + 72)) : 0;
    return TRUE;
}

static gboolean is_qcow2(VmmBlockDev *bs)
{
    return bs->drv && !strcmp(bs->drv->format_name, "qcow2");
}

guint64 img_cluster_size(VmmBlockDev *bs)
{
    guint32 bits;
    guint64 incompat;
    if (is_qcow2(bs) && qcow2_header_fields(bs, &bits, &incompat) && bits >= 9 && bits <= 21)
        return 1ULL << bits;
    return 0;
}

gboolean img_dirty_flag(VmmBlockDev *bs)
{
    guint32 bits;
    guint64 incompat;
    return is_qcow2(bs) && qcow2_header_fields(bs, &bits, &incompat) && (incompat & 1);
}

int img_chain_status(VmmBlockDev *bs, guint64 offset, guint64 bytes, guint64 *pnum,
                     guint64 *map, VmmBlockDev **file, int *depth, GError **error)
{
    int d = 0;
    for (;;) {
        guint64 n = 0, m = 0;
        VmmBlockDev *f = NULL;
        int ret = vmm_block_status(bs, offset, bytes, &n, &m, &f, error);
        if (ret < 0)
            return -1;
        if (n == 0 || n > bytes)
            n = bytes;
        bytes = n;
        if (ret & (VMM_BLOCK_ZERO | VMM_BLOCK_DATA)) {
            *pnum = n;
            *map = m;
            *file = f;
            *depth = d;
            return ret;
        }
        /* Past the end of a shorter backing file the data reads as zeroes. */
        if (!bs->backing || offset >= vmm_block_size(bs->backing)) {
            *pnum = n;
            *map = 0;
            *file = NULL;
            *depth = d + (bs->backing ? 1 : 0);
            return (ret & ~VMM_BLOCK_OFFSET_VALID) | VMM_BLOCK_ZERO;
        }
        bs = bs->backing;
        d++;
    }
}

/* ---------------------------------------------------------------- create options */

static int compare_keys(gconstpointer a, gconstpointer b)
{
    const VmmOptKey *ka = *(const VmmOptKey *const *)a;
    const VmmOptKey *kb = *(const VmmOptKey *const *)b;
    return strcmp(ka->name, kb->name);
}

static const char *type_name(VmmOptType t)
{
    switch (t) {
    case VMM_OPT_BOOL: return "bool (on/off)";
    case VMM_OPT_NUMBER: return "num";
    case VMM_OPT_SIZE: return "size";
    default: return "str";
    }
}

static void add_keys(GPtrArray *keys, const VmmOptKey *list)
{
    for (const VmmOptKey *k = list; k && k->name; k++) {
        gboolean dup = FALSE;
        for (guint i = 0; i < keys->len; i++)
            if (!strcmp(((const VmmOptKey *)keys->pdata[i])->name, k->name))
                dup = TRUE;
        if (!dup)
            g_ptr_array_add(keys, (gpointer)k);
    }
}

void img_print_create_opts_help(const VmmBlockDriver *drv, const VmmBlockDriver *proto)
{
    g_autoptr(GPtrArray) keys = g_ptr_array_new();
    add_keys(keys, drv->create_opts);
    if (proto && proto != drv)
        add_keys(keys, proto->create_opts);
    g_ptr_array_sort(keys, compare_keys);
    if (proto)
        printf("Supported options:\n");
    else
        printf("Supported %s options:\n", drv->format_name);
    for (guint i = 0; i < keys->len; i++) {
        const VmmOptKey *k = keys->pdata[i];
        g_autofree char *lhs = g_strdup_printf("%s=<%s>", k->name, type_name(k->type));
        printf("  %-22s - %s\n", lhs, k->help ? k->help : "");
    }
    if (!proto)
        printf("\nThe protocol level may support further options.\n"
               "Specify the target filename to include those options.\n");
}

JsonObject *img_parse_create_opts(const VmmBlockDriver *drv, const char *optstr, GError **error)
{
    const VmmBlockDriver *proto = drv->is_protocol ? NULL : vmm_block_find_driver("file");
    g_autoptr(GArray) keys = g_array_new(TRUE, TRUE, sizeof(VmmOptKey));
    for (const VmmOptKey *k = drv->create_opts; k && k->name; k++)
        g_array_append_val(keys, *k);
    for (const VmmOptKey *k = proto ? proto->create_opts : NULL; k && k->name; k++) {
        gboolean dup = FALSE;
        for (guint i = 0; i < keys->len; i++)
            if (!strcmp(g_array_index(keys, VmmOptKey, i).name, k->name))
                dup = TRUE;
        if (!dup)
            g_array_append_val(keys, *k);
    }
    VmmOptSpec spec = {.option = "-o", .implied = NULL, .keys = (const VmmOptKey *)keys->data};
    if (!optstr || !*optstr)
        return json_object_new();
    return vmm_opts_parse(&spec, optstr, error);
}

/* ---------------------------------------------------------------- output */

char *img_size_to_str(guint64 val)
{
    static const char *suffixes[] = {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
    int i;
    /* As QEMU: switch to the next unit when the integer part reaches 1000. */
    frexp((double)val / (1000.0 / 1024.0), &i);
    i = (i - 1) / 10;
    if (i < 0)
        i = 0;
    if (i > 6)
        i = 6;
    guint64 div = 1ULL << (i * 10);
    return g_strdup_printf("%0.3g %sB", (double)val / (double)div, suffixes[i]);
}

static void json_quote(GString *out, const char *s)
{
    g_string_append_c(out, '"');
    for (const char *p = s; *p;) {
        gunichar c = g_utf8_get_char_validated(p, -1);
        if (c == (gunichar)-1 || c == (gunichar)-2) {
            g_string_append(out, "\\uFFFD");
            p++;
            continue;
        }
        switch (c) {
        case '"': g_string_append(out, "\\\""); break;
        case '\\': g_string_append(out, "\\\\"); break;
        case '\b': g_string_append(out, "\\b"); break;
        case '\f': g_string_append(out, "\\f"); break;
        case '\n': g_string_append(out, "\\n"); break;
        case '\r': g_string_append(out, "\\r"); break;
        case '\t': g_string_append(out, "\\t"); break;
        default:
            if (c < 0x20 || c >= 0x7f) {
                if (c > 0xffff) {
                    c -= 0x10000;
                    g_string_append_printf(out, "\\u%04X\\u%04X", 0xd800 | (c >> 10),
                                           0xdc00 | (c & 0x3ff));
                } else {
                    g_string_append_printf(out, "\\u%04X", c);
                }
            } else {
                g_string_append_c(out, (char)c);
            }
        }
        p = g_utf8_next_char(p);
    }
    g_string_append_c(out, '"');
}

static void json_newline(GString *out, int depth)
{
    g_string_append_printf(out, "\n%*s", depth * 4, "");
}

static void json_write(GString *out, JsonNode *node, int depth)
{
    switch (JSON_NODE_TYPE(node)) {
    case JSON_NODE_OBJECT: {
        JsonObject *obj = json_node_get_object(node);
        g_autoptr(GList) members = json_object_get_members(obj);
        g_string_append_c(out, '{');
        for (GList *l = members; l; l = l->next) {
            if (l != members)
                g_string_append_c(out, ',');
            json_newline(out, depth + 1);
            json_quote(out, l->data);
            g_string_append(out, ": ");
            json_write(out, json_object_get_member(obj, l->data), depth + 1);
        }
        json_newline(out, depth);
        g_string_append_c(out, '}');
        break;
    }
    case JSON_NODE_ARRAY: {
        JsonArray *arr = json_node_get_array(node);
        g_string_append_c(out, '[');
        for (guint i = 0; i < json_array_get_length(arr); i++) {
            if (i)
                g_string_append_c(out, ',');
            json_newline(out, depth + 1);
            json_write(out, json_array_get_element(arr, i), depth + 1);
        }
        json_newline(out, depth);
        g_string_append_c(out, ']');
        break;
    }
    case JSON_NODE_NULL:
        g_string_append(out, "null");
        break;
    case JSON_NODE_VALUE:
        switch (json_node_get_value_type(node)) {
        case G_TYPE_BOOLEAN:
            g_string_append(out, json_node_get_boolean(node) ? "true" : "false");
            break;
        case G_TYPE_INT64:
            g_string_append_printf(out, "%" G_GINT64_FORMAT, json_node_get_int(node));
            break;
        case G_TYPE_DOUBLE:
            g_string_append_printf(out, "%.17g", json_node_get_double(node));
            break;
        default:
            json_quote(out, json_node_get_string(node) ? json_node_get_string(node) : "");
        }
        break;
    }
}

char *img_json_pretty(JsonNode *node)
{
    GString *out = g_string_new(NULL);
    json_write(out, node, 0);
    return g_string_free(out, FALSE);
}

void img_print_json(JsonNode *node)
{
    g_autofree char *s = img_json_pretty(node);
    printf("%s\n", s);
}

void img_print_json_object(JsonObject *obj)
{
    JsonNode *node = json_node_new(JSON_NODE_OBJECT);
    json_node_set_object(node, obj);
    img_print_json(node);
    json_node_unref(node);
}

/* ---------------------------------------------------------------- progress */

static struct {
    gboolean enabled;
    double min_step;
    double last;
} progress;

void img_progress_init(gboolean enabled, double min_step)
{
    progress.enabled = enabled && isatty(STDOUT_FILENO);
    progress.min_step = min_step;
    progress.last = -1;
    img_progress_print(0);
}

void img_progress_print(double percent)
{
    if (!progress.enabled)
        return;
    if (percent > 100)
        percent = 100;
    if (progress.last >= 0 && percent - progress.last < progress.min_step && percent < 100)
        return;
    progress.last = percent;
    printf("    (%3.2f/100%%)\r", percent);
    fflush(stdout);
}

void img_progress_end(void)
{
    if (!progress.enabled)
        return;
    if (progress.last < 100)
        img_progress_print(100);
    printf("\n");
    fflush(stdout);
    progress.enabled = FALSE;
}

/* ---------------------------------------------------------------- snapshots */

static void print_snapshot_row(const VmmSnapshotInfo *sn)
{
    if (!sn) {
        printf("%-10s%-17s%8s%20s%13s%11s", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
        return;
    }
    g_autoptr(GDateTime) date = g_date_time_new_from_unix_local(sn->date_sec);
    g_autofree char *date_buf = date ? g_date_time_format(date, "%Y-%m-%d %H:%M:%S")
                                     : g_strdup("-");
    guint64 secs = sn->vm_clock_nsec / 1000000000ULL;
    char clock_buf[64], icount_buf[32] = "";
    snprintf(clock_buf, sizeof(clock_buf), "%02d:%02d:%02d.%03d", (int)(secs / 3600),
             (int)((secs / 60) % 60), (int)(secs % 60),
             (int)((sn->vm_clock_nsec / 1000000) % 1000));
    if (sn->icount != (guint64)-1)
        snprintf(icount_buf, sizeof(icount_buf), "%" G_GUINT64_FORMAT, sn->icount);
    g_autofree char *sizing = img_size_to_str(sn->vm_state_size);
    printf("%-9s %-16s %8s%20s%13s%11s", sn->id ? sn->id : "", sn->name ? sn->name : "", sizing,
           date_buf, clock_buf, icount_buf);
}

void img_print_snapshot_table(GPtrArray *snapshots)
{
    printf("Snapshot list:\n");
    print_snapshot_row(NULL);
    printf("\n");
    for (guint i = 0; i < snapshots->len; i++) {
        print_snapshot_row(snapshots->pdata[i]);
        printf("\n");
    }
}

double img_now(void)
{
    return (double)g_get_monotonic_time() / G_USEC_PER_SEC;
}

/* ---------------------------------------------------------------- main */

static void print_help(void)
{
    printf("vmm-img (vmmd) - disk image utility, compatible with qemu-img\n"
           "usage: vmm-img [standard options] command [command options]\n\n"
           "    '-h', '--help'       display this help and exit\n"
           "    '-V', '--version'    output version information and exit\n\n"
           "Command syntax:\n");
    for (gsize i = 0; i < G_N_ELEMENTS(commands); i++)
        printf("  %s\n", commands[i].usage);
    printf("\nCommand parameters: as qemu-img's (see docs/vmm-img.md).\n"
           "  'size' takes k/K, M, G, T, P, E suffixes (powers of 1024).\n"
           "  '-p' shows progress on a terminal; '-q' prints nothing but errors.\n"
           "  '--output' takes human or json.\n\n"
           "Supported formats:");
    vmm_block_init();
    for (const VmmBlockDriver *const *d = vmm_block_drivers(); d && *d; d++)
        printf(" %s", (*d)->format_name);
    printf("\n");
}

int main(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {"trace", required_argument, NULL, 'T'},
        {NULL, 0, NULL, 0},
    };
    int c;
    /* '+': stop at the subcommand, whose options are its own. */
    while ((c = getopt_long(argc, argv, "+:hVT:", long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            print_help();
            return 0;
        case 'V':
            printf("vmm-img version 0.1 (qemu-img 7.2 compatible)\n");
            return 0;
        case 'T':
            img_warn("tracing is not supported; -T '%s' ignored", optarg);
            break;
        default:
            return img_bad_option(argv, c);
        }
    }
    if (optind >= argc)
        return img_usage_error("Not enough arguments");
    const char *name = argv[optind];
    for (gsize i = 0; i < G_N_ELEMENTS(commands); i++) {
        if (strcmp(commands[i].name, name) == 0) {
            char **sub_argv = argv + optind;
            int sub_argc = argc - optind;
            optind = 0; /* glibc: restart getopt for the subcommand */
            vmm_block_init();
            int rc = commands[i].run(sub_argc, sub_argv);
            fflush(stdout);
            return rc;
        }
    }
    return img_usage_error("Command not found: %s", name);
}

gboolean img_object_option(const char *value)
{
    GError *err = NULL;
    if (img_add_object(value, &err))
        return TRUE;
    img_report_error(err, NULL);
    return FALSE;
}
