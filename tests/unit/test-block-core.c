/* The generic block layer (blockd/block.c) with the file, raw and preallocate
 * drivers: create/open/read/write/zeroes/discard/flush/status/truncate,
 * detect-zeroes, O_DIRECT read-modify-write, json: filenames, option errors,
 * probing, backing chains (through a tiny test format), locking within one
 * process, concurrency. Images are checked with qemu-img where it exists. */
#include "blockd/block.h"
#include "common/error.h"
#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KiB 1024ull
#define MiB (1024ull * 1024)

static char *tmpdir;

/* ---------------------------------------------------------------- helpers */

static char *tpath(const char *name)
{
    return g_build_filename(tmpdir, name, NULL);
}

static void rm_rf(const char *path)
{
    GDir *d = g_dir_open(path, 0, NULL);
    if (d) {
        const char *n;
        while ((n = g_dir_read_name(d))) {
            g_autofree char *sub = g_build_filename(path, n, NULL);
            rm_rf(sub);
        }
        g_dir_close(d);
        g_rmdir(path);
    } else {
        g_unlink(path);
    }
}

static void fill_pattern(guint8 *buf, gsize len, guint64 offset, guint seed)
{
    for (gsize i = 0; i < len; i++)
        buf[i] = (guint8)((offset + i) * 31 + seed * 7 + ((offset + i) >> 9));
}

static JsonObject *opts_from(const char *text)
{
    static const VmmOptSpec spec = {.option = "test", .implied = NULL, .keys = NULL};
    g_autoptr(GError) err = NULL;
    JsonObject *o = vmm_opts_parse(&spec, text, &err);
    g_assert_no_error(err);
    return o;
}

static VmmBlockDev *open_ok(const char *path, const char *fmt, const char *opts, int flags)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) o = opts ? opts_from(opts) : NULL;
    VmmBlockDev *bs = vmm_block_open(path, fmt, o, flags, &err);
    g_assert_no_error(err);
    g_assert_nonnull(bs);
    return bs;
}

static GError *open_fails(const char *path, const char *fmt, const char *opts, int flags)
{
    GError *err = NULL;
    g_autoptr(JsonObject) o = opts ? opts_from(opts) : NULL;
    VmmBlockDev *bs = vmm_block_open(path, fmt, o, flags, &err);
    if (bs)
        vmm_block_unref(bs);
    g_assert_null(bs);
    g_assert_nonnull(err);
    return err;
}

static void create_raw(const char *path, guint64 size, const char *prealloc)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) o = json_object_new();
    json_object_set_int_member(o, "size", (gint64)size);
    if (prealloc)
        json_object_set_string_member(o, "preallocation", prealloc);
    g_assert_true(vmm_block_create(path, "raw", o, &err));
    g_assert_no_error(err);
}

static guint64 file_blocks(const char *path)
{
    struct stat st;
    g_assert_cmpint(stat(path, &st), ==, 0);
    return (guint64)st.st_blocks * 512;
}

static guint64 file_size(const char *path)
{
    struct stat st;
    g_assert_cmpint(stat(path, &st), ==, 0);
    return (guint64)st.st_size;
}

static gboolean have_qemu_img(void)
{
    g_autofree char *p = g_find_program_in_path("qemu-img");
    return p != NULL;
}

/* Runs ARGV under timeout(1); returns the exit status, output in *OUT. */
static int run(char **out, const char *const *argv)
{
    GPtrArray *a = g_ptr_array_new();
    g_ptr_array_add(a, (gpointer) "timeout");
    g_ptr_array_add(a, (gpointer) "60");
    for (guint i = 0; argv[i]; i++)
        g_ptr_array_add(a, (gpointer)argv[i]);
    g_ptr_array_add(a, NULL);
    g_autofree char *sout = NULL, *serr = NULL;
    int status = -1;
    g_autoptr(GError) err = NULL;
    gboolean ok = g_spawn_sync(NULL, (char **)a->pdata, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &sout, &serr,
                               &status, &err);
    g_ptr_array_free(a, TRUE);
    g_assert_no_error(err);
    g_assert_true(ok);
    if (out)
        *out = g_strconcat(sout ? sout : "", serr ? serr : "", NULL);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void assert_qemu_compare_identical(const char *a, const char *b)
{
    if (!have_qemu_img())
        return;
    g_autofree char *out = NULL;
    const char *argv[] = {"qemu-img", "compare", "-f", "raw", "-F", "raw", a, b, NULL};
    int rc = run(&out, argv);
    if (rc != 0)
        g_printerr("qemu-img compare: %s\n", out);
    g_assert_cmpint(rc, ==, 0);
}

/* ------------------------------------------------------- a test format
 * "tcow": a 512-byte header (magic, size, backing name and format), the
 * data from 64 KiB on; a byte is allocated where the file has data (not a hole).
 * Just enough of a format to test probing, backing chains, status_above
 * and the preallocate filter without the qcow2 driver. */

#define TCOW_HDR 512
#define TCOW_DATA 65536 /* data offset: the header's block holds no data */

static int tcow_probe(const guint8 *buf, gsize len, const char *filename)
{
    (void)filename;
    return len >= 4 && !memcmp(buf, "TCOW", 4) ? 100 : 0;
}

static gboolean tcow_open(VmmBlockDev *bs, JsonObject *options, int flags, GError **error)
{
    guint8 hdr[TCOW_HDR];
    (void)options;
    (void)flags;
    if (!vmm_block_pread(bs->file, 0, TCOW_HDR, hdr, error))
        return FALSE;
    if (memcmp(hdr, "TCOW", 4)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: not a tcow image", bs->filename);
        return FALSE;
    }
    guint64 size;
    memcpy(&size, hdr + 8, 8);
    bs->size = GUINT64_FROM_LE(size);
    hdr[255] = hdr[300] = 0;
    if (hdr[16])
        bs->backing_file = g_strdup((char *)hdr + 16);
    if (hdr[256])
        bs->backing_format = g_strdup((char *)hdr + 256);
    return TRUE;
}

static int tcow_block_status(VmmBlockDev *bs, guint64 offset, guint64 bytes, guint64 *pnum, guint64 *map,
                             VmmBlockDev **file, GError **error)
{
    int ret = vmm_block_status(bs->file, TCOW_DATA + offset, bytes, pnum, map, file, error);
    if (ret < 0)
        return -1;
    if (*pnum == 0) {
        *pnum = bytes;
        return 0;
    }
    return (ret & VMM_BLOCK_DATA) ? VMM_BLOCK_DATA | VMM_BLOCK_OFFSET_VALID : 0;
}

static gboolean tcow_pread(VmmBlockDev *bs, guint64 offset, guint64 bytes, void *buf, int flags, GError **error)
{
    (void)flags;
    while (bytes) {
        guint64 n, map;
        VmmBlockDev *f;
        int ret = tcow_block_status(bs, offset, bytes, &n, &map, &f, error);
        if (ret < 0)
            return FALSE;
        n = MIN(n, bytes);
        if (ret & VMM_BLOCK_DATA) {
            if (!vmm_block_pread(bs->file, TCOW_DATA + offset, n, buf, error))
                return FALSE;
        } else if (bs->backing && offset < vmm_block_size(bs->backing)) {
            guint64 m = MIN(n, vmm_block_size(bs->backing) - offset);
            if (!vmm_block_pread(bs->backing, offset, m, buf, error))
                return FALSE;
            memset((guint8 *)buf + m, 0, n - m);
        } else {
            memset(buf, 0, n);
        }
        buf = (guint8 *)buf + n;
        offset += n;
        bytes -= n;
    }
    return TRUE;
}

static gboolean tcow_pwrite(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf, int flags,
                            GError **error)
{
    return vmm_block_pwrite(bs->file, TCOW_DATA + offset, bytes, buf, flags, error);
}

static gboolean tcow_create(const char *filename, VmmBlockDev *file, JsonObject *opts, GError **error)
{
    guint8 hdr[TCOW_HDR] = "TCOW";
    guint64 size = GUINT64_TO_LE(vmm_opts_get_uint(opts, "size", 0));
    (void)filename;
    memcpy(hdr + 8, &size, 8);
    g_strlcpy((char *)hdr + 16, vmm_opts_get_string(opts, "backing_file", ""), 239);
    g_strlcpy((char *)hdr + 256, vmm_opts_get_string(opts, "backing_fmt", ""), 32);
    return vmm_block_pwrite(file, 0, TCOW_HDR, hdr, 0, error);
}

static const VmmOptKey tcow_create_opts[] = {
    {"size", VMM_OPT_SIZE, "Virtual disk size", NULL},
    {"backing_file", VMM_OPT_STRING, "backing", NULL},
    {"backing_fmt", VMM_OPT_STRING, "backing format", NULL},
    {NULL, 0, NULL, NULL},
};

static const VmmBlockDriver tcow_driver = {
    .format_name = "tcow",
    .create_opts = tcow_create_opts,
    .probe = tcow_probe,
    .open = tcow_open,
    .create = tcow_create,
    .pread = tcow_pread,
    .pwrite = tcow_pwrite,
    .block_status = tcow_block_status,
};

static void create_tcow(const char *path, guint64 size, const char *backing, const char *fmt)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) o = json_object_new();
    json_object_set_int_member(o, "size", (gint64)size);
    if (backing)
        json_object_set_string_member(o, "backing_file", backing);
    if (fmt)
        json_object_set_string_member(o, "backing_fmt", fmt);
    g_assert_true(vmm_block_create(path, "tcow", o, &err));
    g_assert_no_error(err);
}

/* ------------------------------------------------------------------ tests */

static void test_helpers(void)
{
    guint8 buf[4096] = {0};
    g_assert_true(vmm_buffer_is_zero(buf, sizeof(buf)));
    g_assert_true(vmm_buffer_is_zero(buf, 0));
    g_assert_true(vmm_buffer_is_zero(buf, 7));
    for (gsize i = 0; i < sizeof(buf); i += 97) {
        buf[i] = 1;
        g_assert_false(vmm_buffer_is_zero(buf, sizeof(buf)));
        buf[i] = 0;
    }
    buf[4095] = 0x80;
    g_assert_false(vmm_buffer_is_zero(buf, sizeof(buf)));
    g_assert_true(vmm_buffer_is_zero(buf, 4095));

    VmmPrealloc p;
    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_parse_prealloc("falloc", &p, NULL));
    g_assert_cmpint(p, ==, VMM_PREALLOC_FALLOC);
    g_assert_cmpstr(vmm_prealloc_name(VMM_PREALLOC_FULL), ==, "full");
    g_assert_false(vmm_parse_prealloc("lots", &p, &err));
    g_assert_nonnull(strstr(err->message, "lots"));

    struct {
        const char *image, *backing, *want;
    } cases[] = {
        {"/a/b/top.qcow2", "base.img", "/a/b/base.img"},
        {"/a/b/top.qcow2", "../c/base.img", "/a/b/../c/base.img"},
        {"/a/b/top.qcow2", "/abs/base.img", "/abs/base.img"},
        {"top.qcow2", "base.img", "base.img"},
        {"dir/top.qcow2", "base.img", "dir/base.img"},
        {"/a/top.qcow2", "nbd://host/exp", "nbd://host/exp"},
        {"json:{\"file.filename\":\"/a/x\"}", "base.img", "base.img"},
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *got = vmm_block_resolve_backing(cases[i].image, cases[i].backing);
        g_assert_cmpstr(got, ==, cases[i].want);
    }
    g_assert_nonnull(vmm_block_find_driver("file"));
    g_assert_nonnull(vmm_block_find_driver("raw"));
    g_assert_nonnull(vmm_block_find_driver("preallocate"));
    g_assert_null(vmm_block_find_driver("nosuch"));
}

static void test_raw_rw(void)
{
    g_autofree char *img = tpath("rw.raw");
    g_autofree char *ref = tpath("rw.ref");
    const guint64 size = 4 * MiB;
    static const struct {
        guint64 off, len;
    } writes[] = {{0, 4096}, {100, 1000}, {65536 + 7, 200000}, {4 * MiB - 513, 513}, {1 * MiB, 1 * MiB}};

    create_raw(img, size, NULL);
    g_assert_cmpuint(file_size(img), ==, size);
    g_assert_cmpuint(file_blocks(img), <=, 8 * KiB); /* sparse, first block written like QEMU */
    VmmBlockDev *bs = open_ok(img, "raw", NULL, VMM_BDRV_O_RDWR);
    g_assert_cmpuint(vmm_block_size(bs), ==, size);
    g_assert_cmpstr(vmm_block_format_name(bs), ==, "raw");
    g_assert_cmpstr(vmm_block_format_name(bs->file), ==, "file");

    int rfd = open(ref, O_RDWR | O_CREAT | O_TRUNC, 0644);
    g_assert_cmpint(rfd, >=, 0);
    g_assert_cmpint(ftruncate(rfd, (off_t)size), ==, 0);
    for (guint i = 0; i < G_N_ELEMENTS(writes); i++) {
        g_autofree guint8 *buf = g_malloc(writes[i].len);
        fill_pattern(buf, writes[i].len, writes[i].off, i + 1);
        g_autoptr(GError) err = NULL;
        g_assert_true(vmm_block_pwrite(bs, writes[i].off, writes[i].len, buf, i == 2 ? VMM_BDRV_REQ_FUA : 0, &err));
        g_assert_no_error(err);
        g_assert_cmpint(pwrite(rfd, buf, writes[i].len, (off_t)writes[i].off), ==, (ssize_t)writes[i].len);
    }
    close(rfd);

    /* reads, including unaligned ones, match the reference */
    g_autofree guint8 *got = g_malloc(size);
    g_assert_true(vmm_block_pread(bs, 0, size, got, NULL));
    g_autofree char *refdata = NULL;
    gsize reflen;
    g_assert_true(g_file_get_contents(ref, &refdata, &reflen, NULL));
    g_assert_cmpuint(reflen, ==, size);
    g_assert_cmpmem(got, size, refdata, size);
    guint8 small[333];
    g_assert_true(vmm_block_pread(bs, 65536 + 1000, sizeof(small), small, NULL));
    g_assert_cmpmem(small, sizeof(small), refdata + 65536 + 1000, sizeof(small));

    /* out of bounds */
    g_autoptr(GError) err = NULL;
    g_assert_false(vmm_block_pwrite(bs, size - 10, 20, small, 0, &err));
    g_assert_nonnull(strstr(err->message, "past the end"));
    g_assert_nonnull(strstr(err->message, img));
    g_clear_error(&err);
    g_assert_false(vmm_block_pread(bs, size, 1, small, &err));
    g_clear_error(&err);
    g_assert_true(vmm_block_flush(bs, NULL));
    vmm_block_unref(bs);
    assert_qemu_compare_identical(img, ref);
}

static void test_zeroes_discard_status(void)
{
    g_autofree char *img = tpath("zd.raw");
    const guint64 size = 2 * MiB;
    create_raw(img, size, NULL);
    VmmBlockDev *bs = open_ok(img, "raw", "discard=unmap", VMM_BDRV_O_RDWR);
    g_autofree guint8 *buf = g_malloc(size);
    memset(buf, 0x5a, size);
    g_assert_true(vmm_block_pwrite(bs, 0, size, buf, 0, NULL));
    g_assert_true(vmm_block_flush(bs, NULL));
    guint64 full = file_blocks(img);
    g_assert_cmpuint(full, >=, size);

    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_block_pwrite_zeroes(bs, 256 * KiB, 256 * KiB, VMM_BDRV_REQ_MAY_UNMAP, &err));
    g_assert_no_error(err);
    g_assert_true(vmm_block_pdiscard(bs, 1 * MiB, 512 * KiB, &err));
    g_assert_no_error(err);
    g_assert_true(vmm_block_pwrite_zeroes(bs, 1600 * KiB, 100, 0, &err)); /* unaligned, no unmap */
    g_assert_no_error(err);
    g_assert_cmpuint(file_blocks(img), <=, full - 700 * KiB);

    g_assert_true(vmm_block_pread(bs, 0, size, buf, NULL));
    for (guint64 i = 0; i < size; i++) {
        gboolean zero = (i >= 256 * KiB && i < 512 * KiB) || (i >= 1 * MiB && i < 1536 * KiB) ||
                        (i >= 1600 * KiB && i < 1600 * KiB + 100);
        if (buf[i] != (zero ? 0 : 0x5a))
            g_error("byte %" G_GUINT64_FORMAT " is %u", i, buf[i]);
    }

    /* status: data, zero (hole), data */
    guint64 pnum, map;
    VmmBlockDev *file;
    int ret = vmm_block_status(bs, 0, size, &pnum, &map, &file, &err);
    g_assert_no_error(err);
    g_assert_cmpint(ret & (VMM_BLOCK_DATA | VMM_BLOCK_ALLOCATED | VMM_BLOCK_OFFSET_VALID), ==,
                    VMM_BLOCK_DATA | VMM_BLOCK_ALLOCATED | VMM_BLOCK_OFFSET_VALID);
    g_assert_cmpuint(pnum, ==, 256 * KiB);
    g_assert_true(file == bs->file);
    ret = vmm_block_status(bs, 256 * KiB, size, &pnum, &map, NULL, &err);
    g_assert_true(ret & VMM_BLOCK_ZERO);
    g_assert_cmpuint(pnum, ==, 256 * KiB);
    g_assert_cmpuint(map, ==, 256 * KiB);
    ret = vmm_block_status(bs, 1 * MiB, size, &pnum, NULL, NULL, &err);
    g_assert_true(ret & VMM_BLOCK_ZERO);
    ret = vmm_block_status(bs, size - 4096, size, &pnum, NULL, NULL, &err);
    g_assert_true(ret & VMM_BLOCK_EOF);
    g_assert_cmpuint(pnum, ==, 4096);
    ret = vmm_block_status(bs, size, 1, &pnum, NULL, NULL, &err);
    g_assert_cmpuint(pnum, ==, 0);
    g_assert_true(ret & VMM_BLOCK_EOF);
    vmm_block_unref(bs);

    /* discard=ignore (default): discard is dropped, data stays */
    bs = open_ok(img, "raw", NULL, VMM_BDRV_O_RDWR);
    g_assert_true(vmm_block_pdiscard(bs, 0, 64 * KiB, NULL));
    g_assert_true(vmm_block_pread(bs, 0, 64 * KiB, buf, NULL));
    g_assert_cmpuint(buf[100], ==, 0x5a);
    vmm_block_unref(bs);
}

static void test_detect_zeroes(void)
{
    g_autofree char *img = tpath("dz.raw");
    const guint64 size = 1 * MiB;
    create_raw(img, size, NULL);
    g_autofree guint8 *buf = g_malloc(size);
    memset(buf, 0x11, size);

    VmmBlockDev *bs = open_ok(img, "raw", "detect-zeroes=unmap,discard=unmap", VMM_BDRV_O_RDWR);
    g_assert_cmpint(bs->detect_zeroes, ==, VMM_DETECT_ZEROES_UNMAP);
    g_assert_true(vmm_block_pwrite(bs, 0, size, buf, 0, NULL));
    g_assert_true(vmm_block_flush(bs, NULL));
    guint64 before = file_blocks(img);
    memset(buf, 0, size);
    g_assert_true(vmm_block_pwrite(bs, 0, 512 * KiB, buf, 0, NULL)); /* all zero: becomes an unmap */
    g_assert_cmpuint(file_blocks(img), <=, before - 500 * KiB);
    guint64 pnum;
    int ret = vmm_block_status(bs, 0, size, &pnum, NULL, NULL, NULL);
    g_assert_true(ret & VMM_BLOCK_ZERO);
    g_assert_cmpuint(pnum, ==, 512 * KiB);
    vmm_block_unref(bs);

    /* detect-zeroes=off: the same zero write allocates */
    bs = open_ok(img, "raw", NULL, VMM_BDRV_O_RDWR);
    before = file_blocks(img);
    g_assert_true(vmm_block_pwrite(bs, 0, 512 * KiB, buf, 0, NULL));
    g_assert_true(vmm_block_flush(bs, NULL));
    g_assert_cmpuint(file_blocks(img), >=, before + 500 * KiB);
    vmm_block_unref(bs);

    /* detect-zeroes=on: content is right */
    bs = open_ok(img, "raw", "detect-zeroes=on", VMM_BDRV_O_RDWR);
    memset(buf, 0x22, size);
    g_assert_true(vmm_block_pwrite(bs, 0, size, buf, 0, NULL));
    memset(buf, 0, 4096);
    g_assert_true(vmm_block_pwrite(bs, 8192, 4096, buf, 0, NULL));
    g_assert_true(vmm_block_pread(bs, 0, size, buf, NULL));
    g_assert_cmpuint(buf[8191], ==, 0x22);
    g_assert_true(vmm_buffer_is_zero(buf + 8192, 4096));
    g_assert_cmpuint(buf[12288], ==, 0x22);
    vmm_block_unref(bs);
}

static void test_json_and_window(void)
{
    g_autofree char *img = tpath("js.raw");
    create_raw(img, 64 * KiB, NULL);
    VmmBlockDev *w = open_ok(img, "raw", NULL, VMM_BDRV_O_RDWR);
    guint8 buf[4096];
    fill_pattern(buf, sizeof(buf), 0, 9);
    g_assert_true(vmm_block_pwrite(w, 0, sizeof(buf), buf, 0, NULL));
    vmm_block_unref(w);

    g_autofree char *json = g_strdup_printf(
        "json:{\"driver\":\"raw\",\"offset\":512,\"size\":1024,\"file\":{\"driver\":\"file\",\"filename\":\"%s\"}}",
        img);
    VmmBlockDev *bs = open_ok(json, NULL, NULL, 0);
    g_assert_cmpuint(vmm_block_size(bs), ==, 1024);
    g_assert_cmpstr(bs->filename, ==, img);
    guint8 got[1024];
    g_assert_true(vmm_block_pread(bs, 0, sizeof(got), got, NULL));
    g_assert_cmpmem(got, sizeof(got), buf + 512, 1024);
    guint64 pnum, map;
    vmm_block_status(bs, 0, 1024, &pnum, &map, NULL, NULL);
    g_assert_cmpuint(map, ==, 512);
    g_autoptr(GError) err = NULL;
    g_assert_false(vmm_block_pwrite(bs, 0, 16, got, 0, &err)); /* read-only */
    g_assert_true(g_error_matches(err, VMM_ERROR, VMM_ERROR_PERMISSION));
    g_assert_nonnull(strstr(err->message, img));
    g_clear_error(&err);
    g_assert_false(vmm_block_truncate(bs, 4096, TRUE, VMM_PREALLOC_OFF, FALSE, &err));
    vmm_block_unref(bs);

    /* dotted json keys, and -drive style options (file.*, locking on the format node) */
    g_autofree char *json2 = g_strdup_printf("json:{\"driver\":\"raw\",\"file.filename\":\"%s\",\"locking\":\"off\"}", img);
    bs = open_ok(json2, NULL, NULL, VMM_BDRV_O_RDWR);
    g_assert_cmpuint(vmm_block_size(bs), ==, 64 * KiB);
    vmm_block_unref(bs);
    g_autofree char *dotted = g_strdup_printf("driver=raw,file.driver=file,file.filename=%s,node-name=n0", img);
    bs = open_ok(NULL, NULL, dotted, 0);
    g_assert_cmpstr(bs->node_name, ==, "n0");
    g_autoptr(GError) dup = open_fails(NULL, NULL, dotted, 0);
    g_assert_nonnull(strstr(dup->message, "Duplicate nodes with node-name='n0'"));
    vmm_block_unref(bs);
    bs = open_ok(NULL, NULL, dotted, 0); /* the name is free again */
    vmm_block_unref(bs);
}

static void test_option_errors(void)
{
    g_autofree char *img = tpath("err.raw");
    create_raw(img, 1 * MiB, NULL);
    static const struct {
        const char *opts, *fmt, *want;
        int flags;
    } cases[] = {
        {"foo=1", "raw", "Block format 'raw' does not support the option 'foo'", 0},
        {"file.bar=1", "raw", "Block protocol 'file' does not support the option 'bar'", 0},
        {"cache.direct=maybe", "raw", "Parameter 'cache.direct' expects 'on' or 'off'", 0},
        {"cache=fast", "raw", "invalid cache option", 0},
        {"detect-zeroes=unmap", "raw", "setting detect-zeroes to unmap is not allowed", 0},
        {"detect-zeroes=maybe", "raw", "detect-zeroes", 0},
        {"discard=foo", "raw", "Invalid discard option", 0},
        {"node-name=1a", "raw", "Invalid node-name: '1a'", 0},
        {"offset=2M", "raw", "Offset (2097152) cannot be greater than size of the containing file (1048576)", 0},
        {"size=1000", "raw", "Specified size is not multiple of 512", 0},
        {"size=1M,offset=512", "raw", "The sum of offset (512) and size (1048576) has to be smaller or equal", 0},
        {"file.locking=sometimes", "raw", "locking", 0},
        {"file.aio=native", "raw", "aio=native was specified, but it requires cache.direct=on", 0},
        {"file.aio=posix", "raw", "aio", 0},
        {"force-share=on", "raw", "force-share=on can only be used with read-only images", VMM_BDRV_O_RDWR},
        {"driver=qed", "raw", "Cannot use driver 'qed' with format 'raw'", 0},
        {"driver=nosuch", NULL, "Unknown driver 'nosuch'", 0},
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(GError) err = open_fails(img, cases[i].fmt, cases[i].opts, cases[i].flags);
        if (!strstr(err->message, cases[i].want))
            g_error("%s: got '%s', want '%s'", cases[i].opts, err->message, cases[i].want);
    }
    g_autofree char *missing = tpath("missing.raw");
    g_autoptr(GError) err = open_fails(missing, "raw", NULL, 0);
    g_assert_nonnull(strstr(err->message, "Could not open"));
    g_assert_nonnull(strstr(err->message, missing));
    g_assert_nonnull(strstr(err->message, "No such file"));
    g_clear_error(&err);
    err = open_fails("json:{\"driver\":", NULL, NULL, 0);
    g_clear_error(&err);
    err = open_fails(tmpdir, "raw", NULL, 0); /* a directory */
    g_assert_nonnull(strstr(err->message, "regular file"));
    g_clear_error(&err);

    /* aio=native with cache.direct and io_uring run on threads */
    VmmBlockDev *bs = open_ok(img, "raw", "file.aio=io_uring", VMM_BDRV_O_RDWR);
    vmm_block_unref(bs);

    /* create options */
    g_autofree char *c = tpath("create.raw");
    g_autoptr(JsonObject) o = opts_from("size=1M,cluster_size=64k");
    g_assert_false(vmm_block_create(c, "raw", o, &err));
    g_assert_nonnull(strstr(err->message, "cluster_size"));
    g_assert_nonnull(strstr(err->message, "raw"));
    g_clear_error(&err);
    g_autoptr(JsonObject) o2 = opts_from("size=1M,preallocation=metadata");
    g_assert_false(vmm_block_create(c, "raw", o2, &err));
    g_assert_nonnull(strstr(err->message, "metadata"));
    g_clear_error(&err);
    g_autoptr(JsonObject) o3 = opts_from("size=1M,preallocation=lots");
    g_assert_false(vmm_block_create(c, "raw", o3, &err));
    g_clear_error(&err);
    g_assert_false(vmm_block_create(c, "nosuch", NULL, &err));
    g_assert_nonnull(strstr(err->message, "nosuch"));
    g_clear_error(&err);
    g_assert_false(vmm_block_create(c, "preallocate", NULL, &err));
    g_assert_nonnull(strstr(err->message, "does not support image creation"));
}

static void test_create_prealloc_truncate(void)
{
    g_autofree char *off = tpath("p-off.raw");
    g_autofree char *fal = tpath("p-falloc.raw");
    g_autofree char *full = tpath("p-full.raw");
    g_autoptr(GError) err = NULL;

    create_raw(off, 8 * MiB, "off");
    create_raw(fal, 8 * MiB, "falloc");
    create_raw(full, 8 * MiB, "full");
    g_assert_cmpuint(file_blocks(off), <, 1 * MiB);
    g_assert_cmpuint(file_blocks(fal), >=, 8 * MiB);
    g_assert_cmpuint(file_blocks(full), >=, 8 * MiB);
    g_autoptr(JsonObject) o = opts_from("size=1M,nocow=on,extent_size_hint=0");
    g_autofree char *nocow = tpath("nocow.raw");
    g_assert_true(vmm_block_create(nocow, "raw", o, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(file_size(nocow), ==, 1 * MiB);

    VmmBlockDev *bs = open_ok(off, "raw", NULL, VMM_BDRV_O_RDWR);
    g_assert_true(vmm_block_truncate(bs, 16 * MiB, TRUE, VMM_PREALLOC_FALLOC, FALSE, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(vmm_block_size(bs), ==, 16 * MiB);
    g_assert_cmpuint(file_size(off), ==, 16 * MiB);
    g_assert_cmpuint(file_blocks(off), >=, 8 * MiB);
    g_assert_true(vmm_block_truncate(bs, 20 * MiB, TRUE, VMM_PREALLOC_FULL, FALSE, &err));
    g_assert_cmpuint(file_blocks(off), >=, 12 * MiB);
    g_assert_false(vmm_block_truncate(bs, 4 * MiB, TRUE, VMM_PREALLOC_OFF, FALSE, &err));
    g_assert_nonnull(strstr(err->message, "shrink"));
    g_clear_error(&err);
    g_assert_false(vmm_block_truncate(bs, 4 * MiB, TRUE, VMM_PREALLOC_FALLOC, TRUE, &err));
    g_assert_nonnull(strstr(err->message, "Cannot use preallocation for shrinking files"));
    g_clear_error(&err);
    g_assert_true(vmm_block_truncate(bs, 4 * MiB, TRUE, VMM_PREALLOC_OFF, TRUE, &err));
    g_assert_cmpuint(vmm_block_size(bs), ==, 4 * MiB);
    g_assert_cmpuint(file_size(off), ==, 4 * MiB);
    g_assert_true(bs->drv->allocated_file_size(bs) > 0);
    g_assert_true(bs->drv->has_zero_init(bs));
    vmm_block_unref(bs);

    /* raw window: fixed size */
    bs = open_ok(off, "raw", "offset=4096", VMM_BDRV_O_RDWR);
    g_assert_cmpuint(vmm_block_size(bs), ==, 4 * MiB - 4096);
    vmm_block_unref(bs);
    bs = open_ok(off, "raw", "offset=4096,size=8192", VMM_BDRV_O_RDWR);
    g_assert_false(vmm_block_truncate(bs, 1 * MiB, TRUE, VMM_PREALLOC_OFF, FALSE, &err));
    g_assert_nonnull(strstr(err->message, "Cannot resize fixed-size raw disks"));
    vmm_block_unref(bs);

    /* a file whose length is not a sector multiple reads as whole sectors (QEMU 7.2) */
    g_autofree char *odd = tpath("odd.raw");
    g_assert_true(g_file_set_contents(odd, "0123456789", 10, NULL));
    bs = open_ok(odd, "raw", NULL, 0);
    g_assert_cmpuint(vmm_block_size(bs), ==, 512);
    guint8 sector[512];
    g_assert_true(vmm_block_pread(bs, 0, 512, sector, NULL));
    g_assert_cmpmem(sector, 10, "0123456789", 10);
    g_assert_true(vmm_buffer_is_zero(sector + 10, 502));
    vmm_block_unref(bs);

    if (have_qemu_img()) {
        g_autofree char *out = NULL;
        const char *argv[] = {"qemu-img", "info", "--output=json", full, NULL};
        g_assert_cmpint(run(&out, argv), ==, 0);
        g_assert_nonnull(strstr(out, "\"virtual-size\": 8388608"));
        g_assert_nonnull(strstr(out, "\"format\": \"raw\""));
    }
}

typedef struct {
    VmmBlockDev *bs;
    guint index, nthreads;
    guint64 chunk;
    guint rounds;
    gboolean failed;
} Worker;

/* Thread I writes bytes [k*N*chunk + I*chunk, +chunk) for every k: with a
 * small chunk, several threads share every 4 KiB block. */
static gpointer worker_main(gpointer p)
{
    Worker *w = p;
    g_autofree guint8 *buf = g_malloc(w->chunk);
    for (guint k = 0; k < w->rounds; k++) {
        guint64 off = ((guint64)k * w->nthreads + w->index) * w->chunk;
        fill_pattern(buf, w->chunk, off, 3);
        if (!vmm_block_pwrite(w->bs, off, w->chunk, buf, 0, NULL))
            w->failed = TRUE;
    }
    return NULL;
}

static void run_workers(VmmBlockDev *bs, guint nthreads, guint64 chunk, guint rounds)
{
    Worker w[16];
    GThread *t[16];
    g_assert_cmpuint(nthreads, <=, 16);
    for (guint i = 0; i < nthreads; i++) {
        w[i] = (Worker){.bs = bs, .index = i, .nthreads = nthreads, .chunk = chunk, .rounds = rounds};
        t[i] = g_thread_new("writer", worker_main, &w[i]);
    }
    for (guint i = 0; i < nthreads; i++) {
        g_thread_join(t[i]);
        g_assert_false(w[i].failed);
    }
    guint64 total = (guint64)nthreads * chunk * rounds;
    g_autofree guint8 *got = g_malloc(total);
    g_autofree guint8 *want = g_malloc(total);
    g_assert_true(vmm_block_pread(bs, 0, total, got, NULL));
    fill_pattern(want, total, 0, 3);
    g_assert_cmpmem(got, total, want, total);
}

static void test_threads(void)
{
    g_autofree char *img = tpath("threads.raw");
    create_raw(img, 8 * MiB, NULL);
    VmmBlockDev *bs = open_ok(img, "raw", NULL, VMM_BDRV_O_RDWR);
    run_workers(bs, 8, 16 * KiB, 64);
    run_workers(bs, 8, 100, 200);
    vmm_block_unref(bs);
}

/* O_DIRECT needs a real disk (tmpfs refuses it): a directory in /var/tmp. */
static void test_odirect(void)
{
    g_autofree char *vdir = g_build_filename("/var/tmp", "blk-direct-XXXXXX", NULL);
    if (!g_mkdtemp(vdir)) {
        g_test_skip("no /var/tmp");
        return;
    }
    g_autofree char *img = g_build_filename(vdir, "direct.raw", NULL);
    create_raw(img, 8 * MiB, NULL);
    g_autoptr(GError) err = NULL;
    VmmBlockDev *bs = vmm_block_open(img, "raw", NULL, VMM_BDRV_O_RDWR | VMM_BDRV_O_NOCACHE, &err);
    if (!bs && err && strstr(err->message, "Invalid argument")) {
        g_test_skip("O_DIRECT not supported here");
        rm_rf(vdir);
        return;
    }
    g_assert_no_error(err);
    g_assert_cmpuint(bs->file->request_alignment, >=, 512);

    /* the descriptor really is O_DIRECT (fdinfo flags, octal 040000) */
    gboolean found = FALSE;
    GDir *fds = g_dir_open("/proc/self/fd", 0, NULL);
    const char *n;
    while (fds && (n = g_dir_read_name(fds))) {
        g_autofree char *link = g_strdup_printf("/proc/self/fd/%s", n);
        g_autofree char *target = g_file_read_link(link, NULL);
        if (target && !strcmp(target, img)) {
            g_autofree char *info = NULL, *fdinfo = g_strdup_printf("/proc/self/fdinfo/%s", n);
            g_assert_true(g_file_get_contents(fdinfo, &info, NULL, NULL));
            const char *f = strstr(info, "flags:");
            g_assert_nonnull(f);
            guint64 flags = g_ascii_strtoull(f + 6, NULL, 8);
            g_assert_true(flags & 040000);
            found = TRUE;
        }
    }
    if (fds)
        g_dir_close(fds);
    g_assert_true(found);

    /* unaligned requests go through read-modify-write */
    guint8 buf[3000];
    fill_pattern(buf, sizeof(buf), 777, 5);
    g_assert_true(vmm_block_pwrite(bs, 777, sizeof(buf), buf, 0, &err));
    g_assert_no_error(err);
    guint8 got[3000];
    g_assert_true(vmm_block_pread(bs, 777, sizeof(got), got, &err));
    g_assert_cmpmem(got, sizeof(got), buf, sizeof(buf));
    g_assert_true(vmm_block_pwrite_zeroes(bs, 1000, 100, 0, &err));
    g_assert_true(vmm_block_pread(bs, 777, sizeof(got), got, &err));
    g_assert_true(vmm_buffer_is_zero(got + 223, 100));
    g_assert_cmpuint(got[222], ==, buf[222]);
    g_assert_cmpuint(got[323], ==, buf[323]);
    /* many threads writing disjoint bytes that share blocks */
    run_workers(bs, 8, 100, 300);
    run_workers(bs, 4, 8192, 32);
    vmm_block_unref(bs);

    /* what went to disk is what a buffered open reads */
    bs = open_ok(img, "raw", NULL, 0);
    g_autofree guint8 *all = g_malloc(4 * 8192 * 32);
    g_autofree guint8 *want = g_malloc(4 * 8192 * 32);
    g_assert_true(vmm_block_pread(bs, 0, 4 * 8192 * 32, all, NULL));
    fill_pattern(want, 4 * 8192 * 32, 0, 3);
    g_assert_cmpmem(all, 4 * 8192 * 32, want, 4 * 8192 * 32);
    vmm_block_unref(bs);

    /* cache=none via the shorthand, truncate full through O_DIRECT */
    bs = open_ok(img, "raw", "cache=none", VMM_BDRV_O_RDWR);
    g_assert_cmpuint(bs->file->request_alignment, >=, 512);
    g_assert_true(vmm_block_truncate(bs, 9 * MiB + 512, TRUE, VMM_PREALLOC_FULL, FALSE, &err));
    g_assert_no_error(err);
    vmm_block_unref(bs);
    rm_rf(vdir);
}

static void test_probe(void)
{
    g_autofree char *img = tpath("probe.raw");
    g_autofree char *tc = tpath("probe.tcow");
    create_raw(img, 64 * KiB, NULL);
    create_tcow(tc, 64 * KiB, NULL, NULL);

    VmmBlockDev *bs = open_ok(tc, NULL, NULL, 0);
    g_assert_cmpstr(vmm_block_format_name(bs), ==, "tcow");
    vmm_block_unref(bs);
    bs = open_ok(tc, "raw", NULL, 0); /* format=raw: the header is just data */
    g_assert_cmpstr(vmm_block_format_name(bs), ==, "raw");
    vmm_block_unref(bs);

    bs = open_ok(img, NULL, NULL, VMM_BDRV_O_RDWR); /* warns: probed raw */
    g_assert_cmpstr(vmm_block_format_name(bs), ==, "raw");
    guint8 hdr[512] = "TCOW";
    g_autoptr(GError) err = NULL;
    g_assert_false(vmm_block_pwrite(bs, 0, 512, hdr, 0, &err));
    g_assert_true(g_error_matches(err, VMM_ERROR, VMM_ERROR_PERMISSION));
    g_assert_nonnull(strstr(err->message, "tcow"));
    g_clear_error(&err);
    g_assert_false(vmm_block_pwrite(bs, 0, 4, "TCOW", 0, &err)); /* a partial write too */
    g_clear_error(&err);
    g_assert_true(vmm_block_pwrite(bs, 0, 4, "DATA", 0, &err)); /* harmless data is fine */
    g_assert_true(vmm_block_pwrite(bs, 512, 4, "TCOW", 0, &err));
    vmm_block_unref(bs);
    bs = open_ok(img, "raw", NULL, VMM_BDRV_O_RDWR);
    g_assert_true(vmm_block_pwrite(bs, 0, 512, hdr, 0, &err));
    g_assert_no_error(err);
    vmm_block_unref(bs);
    bs = open_ok(img, NULL, NULL, 0);
    g_assert_cmpstr(vmm_block_format_name(bs), ==, "tcow");
    vmm_block_unref(bs);
}

static void write_byte_run(VmmBlockDev *bs, guint64 off, guint64 len, guint8 v)
{
    g_autofree guint8 *buf = g_malloc(len);
    memset(buf, v, len);
    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_block_pwrite(bs, off, len, buf, 0, &err));
    g_assert_no_error(err);
}

static void test_backing_chain(void)
{
    g_autofree char *da = tpath("a");
    g_autofree char *db = tpath("b");
    g_mkdir(da, 0755);
    g_mkdir(db, 0755);
    g_autofree char *base = g_build_filename(da, "base.raw", NULL);
    g_autofree char *mid = g_build_filename(db, "mid.tcow", NULL);
    g_autofree char *top = g_build_filename(db, "top.tcow", NULL);
    create_raw(base, 64 * KiB, NULL);
    create_tcow(mid, 1 * MiB, "../a/base.raw", "raw");
    create_tcow(top, 1 * MiB, "mid.tcow", NULL); /* no format: probed */

    VmmBlockDev *bs = open_ok(base, "raw", NULL, VMM_BDRV_O_RDWR);
    write_byte_run(bs, 0, 64 * KiB, 'A');
    vmm_block_unref(bs);
    bs = open_ok(mid, "tcow", "backing=", VMM_BDRV_O_RDWR);
    g_assert_null(bs->backing);
    write_byte_run(bs, 64 * KiB, 64 * KiB, 'B');
    vmm_block_unref(bs);
    bs = open_ok(top, "tcow", NULL, VMM_BDRV_O_RDWR | VMM_BDRV_O_NO_BACKING);
    g_assert_null(bs->backing);
    write_byte_run(bs, 128 * KiB, 64 * KiB, 'C');
    vmm_block_unref(bs);

    bs = open_ok(top, NULL, NULL, VMM_BDRV_O_RDWR);
    g_assert_nonnull(bs->backing);
    g_assert_nonnull(bs->backing->backing);
    g_assert_null(bs->backing->backing->backing);
    g_assert_true(bs->backing->read_only);
    g_assert_cmpstr(bs->backing->filename, ==, mid);
    g_assert_cmpstr(vmm_block_format_name(bs->backing->backing), ==, "raw");
    g_autofree guint8 *buf = g_malloc(256 * KiB);
    g_assert_true(vmm_block_pread(bs, 0, 256 * KiB, buf, NULL));
    g_assert_cmpuint(buf[0], ==, 'A');
    g_assert_cmpuint(buf[64 * KiB], ==, 'B');
    g_assert_cmpuint(buf[128 * KiB], ==, 'C');
    g_assert_cmpuint(buf[192 * KiB], ==, 0);

    static const struct {
        guint64 off;
        int depth;
        int bits;
    } want[] = {{0, 3, VMM_BLOCK_ALLOCATED}, {64 * KiB, 2, VMM_BLOCK_DATA | VMM_BLOCK_ALLOCATED},
                {128 * KiB, 1, VMM_BLOCK_DATA | VMM_BLOCK_ALLOCATED}, {192 * KiB, 0, VMM_BLOCK_ZERO}};
    for (guint i = 0; i < G_N_ELEMENTS(want); i++) {
        guint64 pnum;
        int depth;
        g_autoptr(GError) err = NULL;
        int ret = vmm_block_status_above(bs, NULL, want[i].off, 64 * KiB, &pnum, NULL, NULL, &depth, &err);
        g_assert_no_error(err);
        g_assert_cmpint(depth, ==, want[i].depth);
        g_assert_cmpint(ret & want[i].bits, ==, want[i].bits);
        g_assert_cmpuint(pnum, >, 0);
        if (want[i].depth == 0)
            g_assert_false(ret & VMM_BLOCK_ALLOCATED);
    }
    /* with base = the middle image, only the top counts */
    guint64 pnum;
    int depth;
    int ret = vmm_block_status_above(bs, bs->backing, 64 * KiB, 64 * KiB, &pnum, NULL, NULL, &depth, NULL);
    g_assert_cmpint(depth, ==, 0);
    g_assert_false(ret & VMM_BLOCK_ALLOCATED);
    vmm_block_unref(bs);

    /* backing given as options; and a missing backing file */
    g_autofree char *bopts = g_strdup_printf("backing.driver=raw,backing.file.filename=%s", base);
    bs = open_ok(top, "tcow", bopts, 0);
    g_assert_cmpstr(bs->backing->filename, ==, base);
    vmm_block_unref(bs);
    g_autofree char *orphan = tpath("orphan.tcow");
    create_tcow(orphan, 1 * MiB, "gone.raw", "raw");
    g_autoptr(GError) err = open_fails(orphan, NULL, NULL, 0);
    g_assert_nonnull(strstr(err->message, "Could not open backing file"));
    g_assert_nonnull(strstr(err->message, "gone.raw"));
    /* a loop ends with an error, not a crash */
    g_autofree char *loop = tpath("loop.tcow");
    create_tcow(loop, 1 * MiB, "loop.tcow", "tcow");
    g_autoptr(GError) lerr = open_fails(loop, NULL, NULL, 0);
    g_assert_nonnull(strstr(lerr->message, "deeper"));
}

static gboolean proc_locks_have(const char *path, const char *type, int byte)
{
    struct stat st;
    g_autofree char *locks = NULL;
    if (stat(path, &st) < 0 || !g_file_get_contents("/proc/locks", &locks, NULL, NULL))
        return FALSE;
    g_autofree char *inode = g_strdup_printf(":%lu ", (unsigned long)st.st_ino);
    g_auto(GStrv) lines = g_strsplit(locks, "\n", -1);
    for (guint i = 0; lines[i]; i++) {
        if (!strstr(lines[i], inode) || !strstr(lines[i], type))
            continue;
        const char *p = strstr(lines[i], inode) + strlen(inode);
        long start = strtol(p, (char **)&p, 10);
        long end = strtol(p, NULL, 10);
        if (byte >= start && byte <= end)
            return TRUE;
    }
    return FALSE;
}

static void test_locking_in_process(void)
{
    g_autofree char *img = tpath("lock.raw");
    create_raw(img, 1 * MiB, NULL);

    VmmBlockDev *a = open_ok(img, "raw", NULL, VMM_BDRV_O_RDWR);
    g_assert_true(proc_locks_have(img, "OFDLCK", 100));
    g_assert_true(proc_locks_have(img, "OFDLCK", 101));
    g_assert_true(proc_locks_have(img, "OFDLCK", 201));
    g_assert_false(proc_locks_have(img, "OFDLCK", 203));
    g_autoptr(GError) err = open_fails(img, "raw", NULL, VMM_BDRV_O_RDWR);
    g_assert_true(g_error_matches(err, VMM_ERROR, VMM_ERROR_PERMISSION));
    g_assert_nonnull(strstr(err->message, "Failed to get \"write\" lock"));
    g_autofree char *hint = g_strdup_printf("Is another process using the image [%s]?", img);
    g_assert_nonnull(strstr(err->message, hint));
    g_clear_error(&err);
    VmmBlockDev *r = open_ok(img, "raw", NULL, 0); /* readers are fine */
    vmm_block_unref(r);
    r = open_ok(img, "raw", "file.locking=off", VMM_BDRV_O_RDWR);
    vmm_block_unref(r);
    /* a format node (tcow) refuses to share writes even read-only */
    err = open_fails(img, "tcow", NULL, 0);
    g_assert_nonnull(strstr(err->message, "Failed to get shared \"write\" lock"));
    g_clear_error(&err);
    r = open_ok(img, "raw", NULL, VMM_BDRV_O_INACTIVE);
    vmm_block_unref(r);
    vmm_block_unref(a);
    g_assert_false(proc_locks_have(img, "OFDLCK", 100));

    /* share-rw on both sides: two writers */
    a = open_ok(img, "raw", "share-rw=on", VMM_BDRV_O_RDWR);
    VmmBlockDev *b = open_ok(img, "raw", NULL, VMM_BDRV_O_RDWR | VMM_BDRV_O_SHARE_RW);
    g_assert_false(proc_locks_have(img, "OFDLCK", 201));
    /* a writer that does not share conflicts with them */
    err = open_fails(img, "raw", NULL, VMM_BDRV_O_RDWR);
    g_assert_nonnull(strstr(err->message, "Failed to get shared \"write\" lock"));
    g_clear_error(&err);
    vmm_block_unref(a);
    vmm_block_unref(b);

    /* locking=off takes nothing */
    a = open_ok(img, "raw", "file.locking=off", VMM_BDRV_O_RDWR);
    g_assert_false(proc_locks_have(img, "OFDLCK", 100));
    vmm_block_unref(a);

    /* no OFD locks: POSIX fallback for locking=on, nothing for auto */
    vmm_block_file_set_ofd_available(FALSE);
    a = open_ok(img, "raw", "file.locking=on", VMM_BDRV_O_RDWR);
    g_assert_true(proc_locks_have(img, "POSIX", 101));
    vmm_block_unref(a);
    a = open_ok(img, "raw", NULL, VMM_BDRV_O_RDWR);
    g_assert_false(proc_locks_have(img, "POSIX", 101));
    vmm_block_unref(a);
    vmm_block_file_set_ofd_available(TRUE);
}

static void test_preallocate(void)
{
    g_autofree char *img = tpath("pre.tcow");
    create_tcow(img, 8 * MiB, NULL, NULL);
    g_assert_cmpuint(file_size(img), ==, 512);
    g_autofree char *opts = g_strdup_printf(
        "driver=tcow,file.driver=preallocate,file.prealloc-size=4M,file.prealloc-align=64K,file.file.filename=%s", img);
    VmmBlockDev *bs = open_ok(NULL, NULL, opts, VMM_BDRV_O_RDWR);
    g_assert_cmpstr(vmm_block_format_name(bs->file), ==, "preallocate");
    write_byte_run(bs, 0, 4096, 'P');
    /* end of data 64K + 4K; +4M, aligned to 64K */
    const guint64 during = (68 * KiB + 4 * MiB + 64 * KiB - 1) / (64 * KiB) * (64 * KiB);
    g_assert_cmpuint(file_size(img), ==, during);
    g_assert_cmpuint(vmm_block_size(bs->file), ==, 68 * KiB);
    write_byte_run(bs, 8192, 4096, 'Q'); /* inside the preallocation: no growth */
    g_assert_cmpuint(file_size(img), ==, during);
    vmm_block_unref(bs);
    g_assert_cmpuint(file_size(img), ==, 64 * KiB + 8192 + 4096);

    /* the defaults: 1M alignment, 128M */
    g_autofree char *opts2 = g_strdup_printf("driver=tcow,file.driver=preallocate,file.file.filename=%s", img);
    bs = open_ok(NULL, NULL, opts2, VMM_BDRV_O_RDWR);
    write_byte_run(bs, 1 * MiB, 4096, 'R');
    g_assert_cmpuint(file_size(img), ==, 130 * MiB);
    vmm_block_unref(bs);
    g_assert_cmpuint(file_size(img), ==, 64 * KiB + 1 * MiB + 4096);

    /* under raw (no resize permission) the filter stays out of the way */
    g_autofree char *opts3 = g_strdup_printf("driver=raw,file.driver=preallocate,file.file.filename=%s", img);
    bs = open_ok(NULL, NULL, opts3, VMM_BDRV_O_RDWR);
    write_byte_run(bs, 0, 512, 'S');
    g_assert_cmpuint(file_size(img), ==, 64 * KiB + 1 * MiB + 4096);
    vmm_block_unref(bs);

    g_autofree char *bad = g_strdup_printf("%s,file.prealloc-align=1000", opts2);
    g_autoptr(GError) err = open_fails(NULL, NULL, bad, 0);
    g_assert_nonnull(strstr(err->message, "prealloc-align parameter of preallocate filter is not aligned to 512"));
}

static void test_snapshot_mode(void)
{
    g_autofree char *img = tpath("snap.raw");
    create_raw(img, 1 * MiB, NULL);
    VmmBlockDev *bs = open_ok(img, "raw", NULL, VMM_BDRV_O_RDWR);
    write_byte_run(bs, 0, 4096, 'O');
    vmm_block_unref(bs);

    if (!vmm_block_find_driver("qcow2")) {
        g_autoptr(GError) err = open_fails(img, "raw", NULL, VMM_BDRV_O_RDWR | VMM_BDRV_O_SNAPSHOT);
        g_assert_nonnull(strstr(err->message, "snapshot mode needs the qcow2 driver"));
        g_assert_nonnull(strstr(err->message, img));
        return;
    }
    bs = open_ok(img, "raw", NULL, VMM_BDRV_O_RDWR | VMM_BDRV_O_SNAPSHOT);
    g_assert_nonnull(bs->backing);
    write_byte_run(bs, 0, 4096, 'N');
    guint8 c;
    g_assert_true(vmm_block_pread(bs, 0, 1, &c, NULL));
    g_assert_cmpuint(c, ==, 'N');
    vmm_block_unref(bs);
    bs = open_ok(img, "raw", NULL, 0);
    g_assert_true(vmm_block_pread(bs, 0, 1, &c, NULL));
    g_assert_cmpuint(c, ==, 'O');
    vmm_block_unref(bs);
}

static void test_cache_modes(void)
{
    g_autofree char *img = tpath("cache.raw");
    create_raw(img, 1 * MiB, NULL);
    static const char *const modes[] = {"cache=writeback", "cache=writethrough", "cache=unsafe",
                                        "cache.no-flush=on", "cache.writeback=off"};
    for (guint i = 0; i < G_N_ELEMENTS(modes); i++) {
        VmmBlockDev *bs = open_ok(img, "raw", modes[i], VMM_BDRV_O_RDWR);
        write_byte_run(bs, 4096 * i, 4096, (guint8)('a' + i));
        g_assert_true(vmm_block_flush(bs, NULL));
        if (strstr(modes[i], "unsafe") || strstr(modes[i], "no-flush"))
            g_assert_true(bs->file->open_flags & VMM_BDRV_O_NO_FLUSH);
        vmm_block_unref(bs);
    }
    VmmBlockDev *bs = open_ok(img, "raw", NULL, 0);
    for (guint i = 0; i < G_N_ELEMENTS(modes); i++) {
        guint8 c;
        g_assert_true(vmm_block_pread(bs, 4096 * i + 17, 1, &c, NULL));
        g_assert_cmpuint(c, ==, 'a' + i);
    }
    vmm_block_unref(bs);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    vmm_block_init();
    vmm_block_register(&tcow_driver);
    g_autoptr(GError) err = NULL;
    tmpdir = g_dir_make_tmp("blk-core-XXXXXX", &err);
    g_assert_no_error(err);

    g_test_add_func("/block/helpers", test_helpers);
    g_test_add_func("/block/raw-rw", test_raw_rw);
    g_test_add_func("/block/zeroes-discard-status", test_zeroes_discard_status);
    g_test_add_func("/block/detect-zeroes", test_detect_zeroes);
    g_test_add_func("/block/json-and-window", test_json_and_window);
    g_test_add_func("/block/option-errors", test_option_errors);
    g_test_add_func("/block/create-prealloc-truncate", test_create_prealloc_truncate);
    g_test_add_func("/block/threads", test_threads);
    g_test_add_func("/block/odirect", test_odirect);
    g_test_add_func("/block/probe", test_probe);
    g_test_add_func("/block/backing-chain", test_backing_chain);
    g_test_add_func("/block/locking-in-process", test_locking_in_process);
    g_test_add_func("/block/preallocate", test_preallocate);
    g_test_add_func("/block/snapshot-mode", test_snapshot_mode);
    g_test_add_func("/block/cache-modes", test_cache_modes);
    int rc = g_test_run();
    rm_rf(tmpdir);
    g_free(tmpdir);
    return rc;
}
