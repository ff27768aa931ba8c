/* Unit tests of the qcow2 driver (blockd/qcow2*.c): images we create and
 * images qemu-img makes (when qemu-img is installed; those tests are skipped
 * otherwise), read/write/zero/discard/compressed/subclusters, snapshots,
 * check and repair, lazy refcounts, bad input and concurrent writers. */
#include "blockd/block.h"
#include "common/error.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char *tmpdir;

/* ---- helpers ---- */

static char *tpath(const char *name)
{
    return g_build_filename(tmpdir, name, NULL);
}

static gboolean have_qemu(void)
{
    static int have = -1;
    if (have < 0) {
        g_autofree char *a = g_find_program_in_path("qemu-img");
        g_autofree char *b = g_find_program_in_path("qemu-io");
        g_autofree char *t = g_find_program_in_path("timeout");
        have = a && b && t;
    }
    return have;
}

#define NEED_QEMU()                                          \
    do {                                                     \
        if (!have_qemu()) {                                  \
            g_test_skip("qemu-img/qemu-io not installed");   \
            return;                                          \
        }                                                    \
    } while (0)

/* Runs a shell command (bounded by timeout); returns its exit status and
 * optionally its stdout. */
static int run(char **out, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static int run(char **out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *cmd = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_autofree char *full = g_strdup_printf("timeout 120 sh -c '%s'", cmd);
    g_autofree char *o = NULL, *e = NULL;
    int status = -1;
    g_autoptr(GError) err = NULL;
    char *argv[] = { "sh", "-c", full, NULL };

    if (!g_spawn_sync(tmpdir, argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &o, &e, &status, &err))
        g_error("spawn %s: %s", cmd, err->message);
    if (g_test_verbose() || (status && !out))
        g_printerr("$ %s\n%s%s", cmd, o ? o : "", e ? e : "");
    if (out)
        *out = g_steal_pointer(&o);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static JsonObject *opts_from(const char *kv)
{
    JsonObject *o = json_object_new();
    if (!kv)
        return o;
    g_auto(GStrv) parts = g_strsplit(kv, ",", -1);
    for (int i = 0; parts[i]; i++) {
        char *eq = strchr(parts[i], '=');
        g_assert_nonnull(eq);
        *eq = 0;
        const char *v = eq + 1;
        char *end;
        guint64 n = g_ascii_strtoull(v, &end, 10);
        if (*v && !*end)
            json_object_set_int_member(o, parts[i], (gint64)n);
        else if (!strcmp(v, "on") || !strcmp(v, "off"))
            json_object_set_boolean_member(o, parts[i], !strcmp(v, "on"));
        else
            json_object_set_string_member(o, parts[i], v);
    }
    return o;
}

static void create_ours(const char *path, const char *kv)
{
    g_autoptr(JsonObject) o = opts_from(kv);
    g_autoptr(GError) err = NULL;
    if (!vmm_block_create(path, "qcow2", o, &err))
        g_error("create %s (%s): %s", path, kv, err->message);
}

static VmmBlockDev *open_q(const char *path, int flags, const char *kv)
{
    g_autoptr(JsonObject) o = opts_from(kv);
    g_autoptr(GError) err = NULL;
    /* guest discards reach us only with discard=unmap, as qemu-io opens */
    if ((flags & VMM_BDRV_O_RDWR) && !json_object_has_member(o, "discard"))
        json_object_set_string_member(o, "discard", "unmap");
    VmmBlockDev *bs = vmm_block_open(path, "qcow2", o, flags, &err);
    if (!bs)
        g_error("open %s: %s", path, err->message);
    return bs;
}

static void fill_pattern(guint8 *buf, gsize len, guint64 offset, guint32 seed)
{
    for (gsize i = 0; i < len; i++) {
        guint64 x = (offset + i) / 8 * 0x9e3779b97f4a7c15ull + seed;
        buf[i] = (guint8)(x >> 56) ^ (guint8)((offset + i) & 7);
    }
}

static void write_pattern(VmmBlockDev *bs, guint64 off, guint64 len, guint32 seed, guint8 *shadow)
{
    g_autofree guint8 *b = g_malloc(len);
    g_autoptr(GError) err = NULL;
    fill_pattern(b, len, off, seed);
    if (!vmm_block_pwrite(bs, off, len, b, 0, &err))
        g_error("write %" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT ": %s", off, len, err->message);
    if (shadow)
        memcpy(shadow + off, b, len);
}

static void assert_reads(VmmBlockDev *bs, const guint8 *expect, guint64 size)
{
    g_autofree guint8 *b = g_malloc(size);
    g_autoptr(GError) err = NULL;
    if (!vmm_block_pread(bs, 0, size, b, &err))
        g_error("read: %s", err->message);
    for (guint64 i = 0; i < size; i++) {
        if (b[i] != expect[i])
            g_error("byte %" G_GUINT64_FORMAT " is 0x%02x, expected 0x%02x", i, b[i], expect[i]);
    }
}

static void write_raw_file(const char *path, const guint8 *data, gsize len)
{
    g_autoptr(GError) err = NULL;
    g_assert_true(g_file_set_contents(path, (const char *)data, (gssize)len, &err));
}

static void assert_qemu_check_clean(const char *path)
{
    g_autofree char *out = NULL;
    int rc = run(&out, "qemu-img check -U --output=json %s", path);
    if (rc != 0)
        g_error("qemu-img check %s: exit %d\n%s", path, rc, out);
}

static void assert_qemu_compare(const char *img, const guint8 *expect, guint64 size)
{
    g_autofree char *raw = g_strdup_printf("%s.expect", img);
    write_raw_file(raw, expect, size);
    g_autofree char *out = NULL;
    int rc = run(&out, "qemu-img compare -U -f raw -F qcow2 %s %s", raw, img);
    if (rc != 0)
        g_error("qemu-img compare %s: exit %d %s", img, rc, out);
    unlink(raw);
}

/* ---- tests ---- */

static void test_probe_and_create_basic(void)
{
    g_autofree char *p = tpath("basic.qcow2");
    guint64 size = 4 << 20;
    g_autofree guint8 *shadow = g_malloc0(size);

    create_ours(p, "size=4194304");
    VmmBlockDev *bs = vmm_block_open(p, NULL, NULL, VMM_BDRV_O_RDWR, NULL);
    g_assert_nonnull(bs);
    g_assert_cmpstr(vmm_block_format_name(bs), ==, "qcow2");
    g_assert_cmpuint(vmm_block_size(bs), ==, size);
    assert_reads(bs, shadow, size);
    write_pattern(bs, 0, 512, 1, shadow);
    write_pattern(bs, 65536 + 100, 3000, 2, shadow);
    write_pattern(bs, 1 << 20, 1 << 20, 3, shadow);
    write_pattern(bs, size - 4096, 4096, 4, shadow);
    write_pattern(bs, 70000, 200000, 5, shadow);
    assert_reads(bs, shadow, size);
    g_assert_true(vmm_block_flush(bs, NULL));
    vmm_block_unref(bs);

    bs = open_q(p, 0, NULL);
    assert_reads(bs, shadow, size);
    vmm_block_unref(bs);
    if (have_qemu()) {
        assert_qemu_check_clean(p);
        assert_qemu_compare(p, shadow, size);
    }
}

/* Images we create are byte for byte those qemu-img creates. */
static const char *const create_cases[] = {
    "size=1073741824",
    "size=104857600,compat=0.10",
    "size=10485760,cluster_size=512",
    "size=10485760,cluster_size=4096",
    "size=1073741824,cluster_size=2097152",
    "size=10485760,refcount_bits=1",
    "size=10485760,refcount_bits=64,cluster_size=512",
    "size=10485760,lazy_refcounts=on",
    "size=10485760,extended_l2=on",
    "size=10485760,compression_type=zstd",
    "size=1048576,preallocation=metadata",
    "size=1048576,preallocation=metadata,extended_l2=on",
    "size=3145728,preallocation=falloc,cluster_size=4096",
    "size=1048576,preallocation=full",
    "size=10485760,backing_file=base.img,backing_fmt=raw",
    "size=10485760,backing_file=base.img,backing_fmt=raw,extended_l2=on,preallocation=metadata",
    "size=10485760,data_file=DATA",
    "size=10485760,data_file=DATA,data_file_raw=on",
    "size=20971520000,cluster_size=512",
    "size=0",
};

static void test_create_identical(gconstpointer data)
{
    const char *kv = data;
    NEED_QEMU();
    g_autofree char *ours = tpath("create-ours.qcow2");
    g_autoptr(GString) qopts = g_string_new(NULL);
    g_auto(GStrv) parts = g_strsplit(kv, ",", -1);
    g_autofree char *size = NULL;
    g_autoptr(GString) ourkv = g_string_new(NULL);

    g_assert_cmpint(run(NULL, "rm -f create-*; truncate -s 10M base.img"), ==, 0);
    for (int i = 0; parts[i]; i++) {
        const char *p = parts[i];
        if (g_str_has_prefix(p, "size=")) {
            size = g_strdup(p + 5);
            g_string_append_printf(ourkv, "%s%s", ourkv->len ? "," : "", p);
            continue;
        }
        if (g_str_has_prefix(p, "data_file=")) {
            g_string_append_printf(qopts, "%sdata_file=create-qemu.data", qopts->len ? "," : "");
            g_string_append_printf(ourkv, "%sdata_file=%s/create-ours.data", ourkv->len ? "," : "", tmpdir);
            continue;
        }
        g_string_append_printf(qopts, "%s%s", qopts->len ? "," : "", p);
        if (g_str_has_prefix(p, "backing_file="))
            g_string_append_printf(ourkv, "%sbacking_file=%s", ourkv->len ? "," : "", "base.img");
        else
            g_string_append_printf(ourkv, "%s%s", ourkv->len ? "," : "", p);
    }
    g_assert_cmpint(run(NULL, "qemu-img create -q -f qcow2 %s%s create-qemu.qcow2 %s",
                        qopts->len ? "-o " : "", qopts->str, size), ==, 0);
    create_ours(ours, ourkv->str);
    if (strstr(kv, "data_file")) {
        /* The data file name differs; compare everything else. */
        g_autofree char *i1 = NULL, *i2 = NULL;
        run(&i1, "qemu-img info --output=json create-ours.qcow2 | grep -v -e filename -e data-file\\\" -e actual-size");
        run(&i2, "qemu-img info --output=json create-qemu.qcow2 | grep -v -e filename -e data-file\\\" -e actual-size");
        g_assert_cmpstr(i1, ==, i2);
        assert_qemu_check_clean(ours);
        g_autofree char *cmp = NULL;
        g_assert_cmpint(run(&cmp, "stat -c %%s create-ours.data create-qemu.data | uniq | wc -l"), ==, 0);
        g_assert_cmpstr(cmp, ==, "1\n");
        return;
    }
    g_autofree char *out = NULL;
    if (run(&out, "cmp create-ours.qcow2 create-qemu.qcow2") != 0) {
        run(NULL, "ls -l create-*; cmp -l create-ours.qcow2 create-qemu.qcow2 | head -20");
        g_test_message("%s: our image differs from qemu-img's", kv);
        g_test_fail();
        return;
    }
    assert_qemu_check_clean(ours);
}

static guint8 *read_file_exact(const char *path, guint64 size)
{
    gchar *data = NULL;
    gsize len = 0;
    g_autoptr(GError) err = NULL;
    if (!g_file_get_contents(path, &data, &len, &err))
        g_error("%s: %s", path, err->message);
    g_assert_cmpuint(len, ==, size);
    return (guint8 *)data;
}

/* qemu-io commands for N seeded random writes, zero writes and discards. */
static char *qemu_io_script(guint32 seed, guint64 size, int n)
{
    g_autoptr(GRand) r = g_rand_new_with_seed(seed);
    GString *s = g_string_new(NULL);
    for (int i = 0; i < n; i++) {
        guint64 len = (guint64)g_rand_int_range(r, 1, 300) * 512;
        guint64 off = (guint64)g_rand_int_range(r, 0, (gint32)((size - len) / 512)) * 512;
        int kind = g_rand_int_range(r, 0, 10);
        if (kind == 0)
            g_string_append_printf(s, " -c \"write -z %" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT "\"", off, len);
        else if (kind == 1)
            g_string_append_printf(s, " -c \"discard %" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT "\"", off, len);
        else
            g_string_append_printf(s, " -c \"write -P %d %" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT "\"",
                                   g_rand_int_range(r, 1, 255), off, len);
    }
    return g_string_free(s, FALSE);
}

/* Our own writes: patterns, zeroes (with and without unmap) and discards,
 * mirrored into SHADOW (discarded ranges read back as zero only when there
 * is no backing file; we re-read them into the shadow instead). */
static void our_random_io(VmmBlockDev *bs, guint8 *shadow, guint64 size, guint32 seed, int n)
{
    g_autoptr(GRand) r = g_rand_new_with_seed(seed);
    g_autoptr(GError) err = NULL;
    for (int i = 0; i < n; i++) {
        guint64 len = (guint64)g_rand_int_range(r, 1, 400) * 512;
        guint64 off = (guint64)g_rand_int_range(r, 0, (gint32)((size - len) / 512)) * 512;
        int kind = g_rand_int_range(r, 0, 10);
        if (g_rand_boolean(r)) {
            /* unaligned too */
            guint64 d = (guint64)g_rand_int_range(r, 0, 511);
            if (off + len + d <= size)
                off += d;
        }
        if (kind == 0) {
            int fl = g_rand_boolean(r) ? VMM_BDRV_REQ_MAY_UNMAP : 0;
            if (!vmm_block_pwrite_zeroes(bs, off, len, fl, &err))
                g_error("zero %" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT ": %s", off, len, err->message);
            memset(shadow + off, 0, len);
        } else if (kind == 1) {
            if (!vmm_block_pdiscard(bs, off, len, &err))
                g_error("discard: %s", err->message);
            if (!vmm_block_pread(bs, off, len, shadow + off, &err))
                g_error("read: %s", err->message);
        } else {
            write_pattern(bs, off, len, g_rand_int(r), shadow);
        }
    }
}

typedef struct {
    const char *name;
    const char *create;      /* qemu-img -o options */
    guint64 size;
    int backing_depth;       /* extra images below */
    gboolean snapshot;       /* take internal snapshots between writes */
} InteropCase;

static const InteropCase interop_cases[] = {
    { "default", "", 16 << 20, 0, FALSE },
    { "cluster512", "cluster_size=512", 4 << 20, 0, FALSE },
    { "cluster4k", "cluster_size=4096", 16 << 20, 0, FALSE },
    { "cluster2M", "cluster_size=2M", 32 << 20, 0, FALSE },
    { "refcount1", "refcount_bits=1", 16 << 20, 0, FALSE },
    { "refcount64", "refcount_bits=64,cluster_size=4096", 8 << 20, 0, FALSE },
    { "compat010", "compat=0.10", 16 << 20, 0, FALSE },
    { "lazy", "lazy_refcounts=on", 16 << 20, 0, FALSE },
    { "extl2", "extended_l2=on", 16 << 20, 0, FALSE },
    { "extl2-32k", "extended_l2=on,cluster_size=32k", 8 << 20, 0, FALSE },
    { "datafile", "data_file=IMG.data", 16 << 20, 0, FALSE },
    { "datafile-raw", "data_file=IMG.data,data_file_raw=on", 16 << 20, 0, FALSE },
    { "backing3", "", 16 << 20, 2, FALSE },
    { "backing3-extl2", "extended_l2=on", 16 << 20, 2, FALSE },
    { "snapshots", "", 16 << 20, 0, TRUE },
    { "snapshots-v2", "compat=0.10", 16 << 20, 0, TRUE },
};

static void make_qemu_image(const InteropCase *c, const char *img, guint32 seed)
{
    g_autofree char *opts = g_strdup(c->create);
    if (strstr(opts, "IMG.data")) {
        g_free(opts);
        opts = g_strdup_printf("data_file=%s.data%s", img,
                               strstr(c->create, "data_file_raw") ? ",data_file_raw=on" : "");
    }
    g_autofree char *prev = NULL;
    for (int d = c->backing_depth; d >= 0; d--) {
        g_autofree char *name = d ? g_strdup_printf("%s.b%d", img, d) : g_strdup(img);
        g_autofree char *bopt = prev ? g_strdup_printf("-b %s -F qcow2", prev) : g_strdup("");
        g_assert_cmpint(run(NULL, "qemu-img create -q -f qcow2 %s %s%s %s %" G_GUINT64_FORMAT,
                            bopt, *opts ? "-o " : "", opts, name, c->size), ==, 0);
        g_autofree char *script = qemu_io_script(seed + (guint32)d, c->size, 30);
        g_assert_cmpint(run(NULL, "qemu-io -f qcow2 %s %s > /dev/null", script, name), ==, 0);
        if (c->snapshot) {
            g_assert_cmpint(run(NULL, "qemu-img snapshot -c snap1 %s", name), ==, 0);
            g_autofree char *s2 = qemu_io_script(seed + 100, c->size, 20);
            g_assert_cmpint(run(NULL, "qemu-io -f qcow2 %s %s > /dev/null", s2, name), ==, 0);
            g_assert_cmpint(run(NULL, "qemu-img snapshot -c snap2 %s", name), ==, 0);
            g_autofree char *s3 = qemu_io_script(seed + 200, c->size, 20);
            g_assert_cmpint(run(NULL, "qemu-io -f qcow2 %s %s > /dev/null", s3, name), ==, 0);
        }
        g_free(prev);
        prev = g_strdup(name);
    }
}

/* QCOW2_HEAVY=1 (tests/interop/test-qcow2-qemu.sh): bigger images, more
 * requests, more seeds. */
static gboolean heavy(void)
{
    return g_getenv("QCOW2_HEAVY") != NULL;
}

static void interop_once(const InteropCase *c, guint32 seed);

static void test_interop(gconstpointer data)
{
    const InteropCase *c = data;
    NEED_QEMU();
    int seeds = heavy() ? 4 : 1;
    for (int i = 0; i < seeds; i++) {
        InteropCase big = *c;
        if (heavy())
            big.size *= 4;
        interop_once(&big, 1234 + (guint32)i * 101);
    }
}

static void interop_once(const InteropCase *c, guint32 seed)
{
    g_autofree char *img = g_strdup_printf("%s/io-%s.qcow2", tmpdir, c->name);
    g_autofree char *ref = g_strdup_printf("%s.ref", img);
    g_autoptr(GError) err = NULL;
    int nio = heavy() ? 400 : 60;

    run(NULL, "rm -f %s*", img);
    make_qemu_image(c, img, seed);
    g_assert_cmpint(run(NULL, "qemu-img convert -O raw %s %s", img, ref), ==, 0);
    g_autofree guint8 *shadow = read_file_exact(ref, c->size);

    /* Read: everything we read equals qemu-img's own conversion. */
    VmmBlockDev *bs = open_q(img, 0, NULL);
    g_assert_cmpuint(vmm_block_size(bs), ==, c->size);
    assert_reads(bs, shadow, c->size);
    vmm_block_unref(bs);

    /* Write: qemu-img check stays clean and compare agrees. */
    bs = open_q(img, VMM_BDRV_O_RDWR, NULL);
    our_random_io(bs, shadow, c->size, seed + 99, nio);
    assert_reads(bs, shadow, c->size);
    if (c->snapshot) {
        g_autoptr(GPtrArray) list = bs->drv->snapshot_list(bs, &err);
        g_assert_nonnull(list);
        g_assert_cmpuint(list->len, ==, 2);
        g_assert_cmpstr(((VmmSnapshotInfo *)list->pdata[0])->name, ==, "snap1");
    }
    vmm_block_unref(bs);
    assert_qemu_check_clean(img);
    assert_qemu_compare(img, shadow, c->size);
    if (c->snapshot) {
        /* The snapshots still hold what qemu-io wrote before them. */
        g_autofree char *s1 = g_strdup_printf("%s.s1", img);
        g_assert_cmpint(run(NULL, "qemu-img convert -O raw -l snapshot.name=snap1 %s %s", img, s1), ==, 0);
        bs = open_q(img, VMM_BDRV_O_RDWR, NULL);
        g_assert_true(bs->drv->snapshot_goto(bs, "snap1", &err));
        g_autofree guint8 *s1data = read_file_exact(s1, c->size);
        assert_reads(bs, s1data, c->size);
        vmm_block_unref(bs);
        assert_qemu_check_clean(img);
    }
}

/* Compressed clusters: qemu-img convert -c output reads back; ours
 * (pwrite_compressed) passes qemu-img check and compare. */
static void test_compressed(gconstpointer data)
{
    const char *ctype = data;
    NEED_QEMU();
    guint64 size = 8 << 20;
    g_autofree char *raw = tpath("c-src.raw");
    g_autofree char *img = tpath("c-qemu.qcow2");
    g_autofree char *ours = tpath("c-ours.qcow2");
    g_autofree guint8 *shadow = g_malloc0(size);
    g_autoptr(GError) err = NULL;

    /* compressible text-ish data, some incompressible, some zero */
    for (guint64 i = 0; i < size / 2; i++)
        shadow[i] = "qcow2 compressed clusters "[i % 26];
    fill_pattern(shadow + size / 2, size / 4, 0, 7);
    write_raw_file(raw, shadow, size);
    g_assert_cmpint(run(NULL, "qemu-img convert -c -f raw -O qcow2 -o compression_type=%s %s %s",
                        ctype, raw, img), ==, 0);
    VmmBlockDev *bs = open_q(img, 0, NULL);
    assert_reads(bs, shadow, size);
    guint64 pnum = 0;
    int st = vmm_block_status(bs, 0, size, &pnum, NULL, NULL, &err);
    g_assert_cmpint(st, >=, 0);
    g_assert_true(st & VMM_BLOCK_COMPRESSED);
    vmm_block_unref(bs);

    /* Overwrite part of a compressed image through the normal path. */
    bs = open_q(img, VMM_BDRV_O_RDWR, NULL);
    write_pattern(bs, 100000, 70000, 3, shadow);
    g_assert_true(vmm_block_pwrite_zeroes(bs, 1 << 20, 1 << 20, VMM_BDRV_REQ_MAY_UNMAP, &err));
    memset(shadow + (1 << 20), 0, 1 << 20);
    vmm_block_unref(bs);
    assert_qemu_check_clean(img);
    assert_qemu_compare(img, shadow, size);

    /* Our compressed writes. */
    g_autofree char *kv = g_strdup_printf("size=%" G_GUINT64_FORMAT ",compression_type=%s", size, ctype);
    create_ours(ours, kv);
    bs = open_q(ours, VMM_BDRV_O_RDWR, NULL);
    for (guint64 off = 0; off < size; off += 65536) {
        if (!vmm_block_pwrite_compressed(bs, off, 65536, shadow + off, &err))
            g_error("compressed write: %s", err->message);
    }
    assert_reads(bs, shadow, size);
    vmm_block_unref(bs);
    assert_qemu_check_clean(ours);
    assert_qemu_compare(ours, shadow, size);
    g_autofree char *out = NULL;
    run(&out, "qemu-img info %s", ours);
    g_assert_nonnull(strstr(out, ctype));
    g_autofree char *disk = NULL;
    /* it really is smaller than the data */
    run(&disk, "stat -c %%s %s", ours);
    g_assert_cmpuint(g_ascii_strtoull(disk, NULL, 10), <, size * 3 / 4);
}

/* Internal snapshots we take are what qemu-img lists and converts. */
static void test_snapshots_ours(void)
{
    NEED_QEMU();
    guint64 size = 8 << 20;
    g_autofree char *img = tpath("snap-ours.qcow2");
    g_autofree guint8 *v1 = g_malloc0(size);
    g_autoptr(GError) err = NULL;

    create_ours(img, "size=8388608");
    VmmBlockDev *bs = open_q(img, VMM_BDRV_O_RDWR, NULL);
    our_random_io(bs, v1, size, 5, 40);
    VmmSnapshotInfo sn = { .name = "first", .vm_state_size = 0, .icount = (guint64)-1 };
    g_assert_true(bs->drv->snapshot_create(bs, &sn, &err));
    g_autofree guint8 *v2 = g_memdup2(v1, size);
    our_random_io(bs, v2, size, 6, 40);
    VmmSnapshotInfo sn2 = { .id = "7", .name = "second", .icount = (guint64)-1 };
    g_assert_true(bs->drv->snapshot_create(bs, &sn2, &err));
    g_assert_false(bs->drv->snapshot_create(bs, &sn2, &err));   /* duplicate ID */
    g_clear_error(&err);
    g_autofree guint8 *v3 = g_memdup2(v2, size);
    our_random_io(bs, v3, size, 7, 40);
    vmm_block_unref(bs);
    assert_qemu_check_clean(img);
    assert_qemu_compare(img, v3, size);

    g_autofree char *list = NULL;
    g_assert_cmpint(run(&list, "qemu-img snapshot -l %s", img), ==, 0);
    g_assert_nonnull(strstr(list, "first"));
    g_assert_nonnull(strstr(list, "second"));
    g_autofree char *s1 = tpath("snap-ours.s1");
    g_assert_cmpint(run(NULL, "qemu-img convert -O raw -l snapshot.name=first %s %s", img, s1), ==, 0);
    g_autofree guint8 *got = read_file_exact(s1, size);
    g_assert_true(memcmp(got, v1, size) == 0);

    /* apply and delete */
    bs = open_q(img, VMM_BDRV_O_RDWR, NULL);
    g_assert_true(bs->drv->snapshot_goto(bs, "7", &err));
    assert_reads(bs, v2, size);
    g_assert_true(bs->drv->snapshot_delete(bs, "first", &err));
    g_assert_false(bs->drv->snapshot_delete(bs, "first", &err));
    g_clear_error(&err);
    g_autoptr(GPtrArray) l = bs->drv->snapshot_list(bs, &err);
    g_assert_cmpuint(l->len, ==, 1);
    g_assert_cmpstr(((VmmSnapshotInfo *)l->pdata[0])->id, ==, "7");
    our_random_io(bs, v2, size, 8, 20);
    vmm_block_unref(bs);
    assert_qemu_check_clean(img);
    assert_qemu_compare(img, v2, size);
    g_assert_cmpint(run(NULL, "qemu-img snapshot -d second %s", img), ==, 0);
    assert_qemu_check_clean(img);
}

static void poke(const char *path, guint64 off, const void *data, gsize len)
{
    int fd = open(path, O_WRONLY);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(pwrite(fd, data, len, (off_t)off), ==, (gssize)len);
    close(fd);
}

static void poke_be64(const char *path, guint64 off, guint64 v)
{
    v = GUINT64_TO_BE(v);
    poke(path, off, &v, 8);
}

static void poke_be32(const char *path, guint64 off, guint32 v)
{
    v = GUINT32_TO_BE(v);
    poke(path, off, &v, 4);
}

static void poke_be16(const char *path, guint64 off, guint16 v)
{
    v = GUINT16_TO_BE(v);
    poke(path, off, &v, 2);
}

static guint64 qemu_check_field(const char *img, const char *field)
{
    g_autofree char *out = NULL;
    run(&out, "qemu-img check --output=json %s", img);
    g_autoptr(JsonParser) p = json_parser_new();
    g_assert_true(json_parser_load_from_data(p, out, -1, NULL));
    JsonObject *o = json_node_get_object(json_parser_get_root(p));
    return json_object_has_member(o, field) ? (guint64)json_object_get_int_member(o, field) : 0;
}

static void our_check(const char *img, int fix, VmmCheckResult *res)
{
    g_autoptr(GError) err = NULL;
    VmmBlockDev *bs = open_q(img, (fix ? VMM_BDRV_O_RDWR : 0) | VMM_BDRV_O_CHECK, NULL);
    memset(res, 0, sizeof(*res));
    if (!bs->drv->check(bs, res, fix, &err))
        g_error("check: %s", err->message);
    vmm_block_unref(bs);
}

/* check counts what qemu-img check counts, and repairs what it repairs. */
static void test_check_repair(void)
{
    NEED_QEMU();
    g_autofree char *img = tpath("chk.qcow2");
    guint64 size = 8 << 20;
    g_autofree guint8 *shadow = g_malloc0(size);
    VmmCheckResult r;

    create_ours(img, "size=8388608");
    VmmBlockDev *bs = open_q(img, VMM_BDRV_O_RDWR, NULL);
    write_pattern(bs, 0, 3 << 20, 1, shadow);
    write_pattern(bs, 5 << 20, 100000, 2, shadow);
    g_assert_true(vmm_block_pdiscard(bs, 1 << 20, 1 << 20, NULL));
    g_assert_true(vmm_block_pread(bs, 1 << 20, 1 << 20, shadow + (1 << 20), NULL));
    vmm_block_unref(bs);

    our_check(img, 0, &r);
    g_assert_cmpuint(r.corruptions, ==, 0);
    g_assert_cmpuint(r.leaks, ==, 0);
    g_assert_cmpuint(r.allocated_clusters, ==, qemu_check_field(img, "allocated-clusters"));
    g_assert_cmpuint(r.fragmented_clusters, ==, qemu_check_field(img, "fragmented-clusters"));
    g_assert_cmpuint(r.total_clusters, ==, qemu_check_field(img, "total-clusters"));
    g_assert_cmpuint(r.image_end_offset, ==, qemu_check_field(img, "image-end-offset"));

    /* Two leaked clusters: refcount 1 on clusters nothing names (in the
     * discarded megabyte, clusters 21 and 22 of the file). */
    poke_be16(img, 0x20000 + 2 * 21, 1);
    poke_be16(img, 0x20000 + 2 * 22, 1);
    our_check(img, 0, &r);
    g_assert_cmpuint(r.leaks, ==, 2);
    g_assert_cmpuint(r.leaks, ==, qemu_check_field(img, "leaks"));
    g_assert_cmpuint(r.corruptions, ==, 0);
    our_check(img, VMM_CHECK_FIX_LEAKS, &r);
    g_assert_cmpuint(r.leaks_fixed, ==, 2);
    assert_qemu_check_clean(img);

    /* A data cluster whose refcount says free: a corruption, repaired by
     * rebuilding the refcounts. */
    poke_be16(img, 0x20000 + 2 * 6, 0);
    our_check(img, 0, &r);
    g_assert_cmpuint(r.corruptions, >=, 1);
    g_assert_cmpuint(r.corruptions, ==, qemu_check_field(img, "corruptions"));
    our_check(img, VMM_CHECK_FIX_ERRORS | VMM_CHECK_FIX_LEAKS, &r);
    g_assert_cmpuint(r.corruptions, ==, 0);
    g_assert_cmpuint(r.corruptions_fixed, >=, 1);
    assert_qemu_check_clean(img);
    assert_qemu_compare(img, shadow, size);

    /* A refcount of 2 on a data cluster: COPIED is wrong and the refcount
     * too high, both found. (The rebuild moved the refcount block.) */
    guint64 rt = 0, rb = 0;
    int fd = open(img, O_RDONLY);
    g_assert_cmpint(pread(fd, &rt, 8, 48), ==, 8);
    g_assert_cmpint(pread(fd, &rb, 8, (off_t)GUINT64_FROM_BE(rt)), ==, 8);
    close(fd);
    poke_be16(img, GUINT64_FROM_BE(rb) + 2 * 7, 2);
    our_check(img, 0, &r);
    g_assert_cmpuint(r.leaks, ==, 1);
    g_assert_cmpuint(r.leaks, ==, qemu_check_field(img, "leaks"));
    g_assert_cmpuint(r.corruptions, ==, qemu_check_field(img, "corruptions"));
    our_check(img, VMM_CHECK_FIX_ERRORS | VMM_CHECK_FIX_LEAKS, &r);
    assert_qemu_check_clean(img);
    assert_qemu_compare(img, shadow, size);
}

/* Lazy refcounts: a writer killed after a flush leaves the dirty bit; the
 * next read-write open rebuilds the refcounts and the flushed data is there. */
static void test_lazy_dirty_repair(void)
{
    NEED_QEMU();
    g_autofree char *img = tpath("lazy.qcow2");
    guint64 size = 8 << 20;
    g_autofree guint8 *shadow = g_malloc0(size);

    create_ours(img, "size=8388608,lazy_refcounts=on");
    fill_pattern(shadow, 2 << 20, 0, 11);
    pid_t pid = fork();
    g_assert_cmpint(pid, >=, 0);
    if (pid == 0) {
        VmmBlockDev *bs = vmm_block_open(img, "qcow2", NULL, VMM_BDRV_O_RDWR, NULL);
        if (!bs || !vmm_block_pwrite(bs, 0, 2 << 20, shadow, 0, NULL) || !vmm_block_flush(bs, NULL))
            _exit(1);
        guint8 junk[70000];
        memset(junk, 0x5a, sizeof(junk));
        vmm_block_pwrite(bs, 4 << 20, sizeof(junk), junk, 0, NULL);
        _exit(0); /* no close: the image stays dirty */
    }
    int status;
    g_assert_cmpint(waitpid(pid, &status, 0), ==, pid);
    g_assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    g_autofree char *info = NULL;
    run(&info, "qemu-img info --output=json -U %s", img);
    g_assert_nonnull(strstr(info, "\"dirty-flag\": true"));

    VmmBlockDev *bs = open_q(img, VMM_BDRV_O_RDWR, NULL);
    g_autofree guint8 *got = g_malloc(2 << 20);
    g_assert_true(vmm_block_pread(bs, 0, 2 << 20, got, NULL));
    g_assert_true(memcmp(got, shadow, 2 << 20) == 0);
    vmm_block_unref(bs);
    g_free(info);
    info = NULL;
    run(&info, "qemu-img info --output=json %s", img);
    g_assert_nonnull(strstr(info, "\"dirty-flag\": false"));
    assert_qemu_check_clean(img);
}

typedef struct {
    VmmBlockDev *bs;
    int index, nthreads;
    guint64 size;
    guint8 *shadow;
} ThreadArg;

static gpointer writer_thread(gpointer p)
{
    ThreadArg *a = p;
    guint64 chunk = 4096 + 512 * (guint64)a->index;
    for (guint64 i = 0;; i++) {
        guint64 off = (i * (guint64)a->nthreads + (guint64)a->index) * 8192;
        if (off + chunk > a->size)
            break;
        g_autofree guint8 *b = g_malloc(chunk);
        fill_pattern(b, chunk, off, (guint32)a->index);
        if (!vmm_block_pwrite(a->bs, off, MIN(chunk, 8192), b, 0, NULL))
            g_error("thread %d write failed", a->index);
    }
    return NULL;
}

/* Many writers on the same clusters at once. */
static void test_concurrent_writers(gconstpointer data)
{
    const char *kv = data;
    g_autofree char *img = tpath("conc.qcow2");
    guint64 size = 8 << 20;
    int n = 8;
    g_autofree guint8 *shadow = g_malloc0(size);
    GThread *t[8];
    ThreadArg args[8];

    create_ours(img, kv);
    VmmBlockDev *bs = open_q(img, VMM_BDRV_O_RDWR, NULL);
    for (int i = 0; i < n; i++) {
        args[i] = (ThreadArg){ bs, i, n, size, shadow };
        t[i] = g_thread_new("writer", writer_thread, &args[i]);
    }
    for (int i = 0; i < n; i++)
        g_thread_join(t[i]);
    for (int i = 0; i < n; i++) {
        guint64 chunk = MIN(4096 + 512 * (guint64)i, 8192);
        for (guint64 k = 0;; k++) {
            guint64 off = (k * (guint64)n + (guint64)i) * 8192;
            if (off + 4096 + 512 * (guint64)i > size)
                break;
            fill_pattern(shadow + off, chunk, off, (guint32)i);
        }
    }
    assert_reads(bs, shadow, size);
    vmm_block_unref(bs);
    if (have_qemu()) {
        assert_qemu_check_clean(img);
        assert_qemu_compare(img, shadow, size);
    }
}

typedef struct {
    const char *name;
    void (*damage)(const char *path);
    const char *expect;       /* in the open error, or NULL: opens, reads fail cleanly */
} BadCase;

static void bad_truncated(const char *p) { g_assert_cmpint(truncate(p, 50), ==, 0); }
static void bad_truncated_v3(const char *p) { g_assert_cmpint(truncate(p, 90), ==, 0); }
static void bad_cluster_bits(const char *p) { poke_be32(p, 20, 30); }
static void bad_cluster_bits_low(const char *p) { poke_be32(p, 20, 8); }
static void bad_l1_past_eof(const char *p) { poke_be64(p, 40, 1ull << 40); }
static void bad_l1_unaligned(const char *p) { poke_be64(p, 40, 0x30008); }
static void bad_l1_huge(const char *p) { poke_be32(p, 36, 0x10000000); }
static void bad_l1_small(const char *p) { poke_be32(p, 36, 0); }
static void bad_reftable_past_eof(const char *p) { poke_be64(p, 48, 1ull << 40); }
static void bad_reftable_huge(const char *p) { poke_be32(p, 56, 0x1000000); }
static void bad_incompat(const char *p) { poke_be64(p, 72, 1ull << 5); }
static void bad_version(const char *p) { poke_be32(p, 4, 4); }
static void bad_header_length(const char *p) { poke_be32(p, 100, 1000000); }
static void bad_refcount_order(const char *p) { poke_be32(p, 96, 7); }
static void bad_crypt(const char *p) { poke_be32(p, 32, 2); }
static void bad_compression(const char *p) { poke_be64(p, 72, 1ull << 3); }
static void bad_backing_name(const char *p) { poke_be64(p, 8, 100); poke_be32(p, 16, 5000); }
static void bad_snapshots(const char *p) { poke_be32(p, 60, 70000); }
static void bad_snapshots_eof(const char *p) { poke_be32(p, 60, 1); poke_be64(p, 64, 1ull << 40); }
static void bad_ext_len(const char *p) { poke_be32(p, 112, 0x12345678); poke_be32(p, 116, 0x7fffffff); }
/* damage that open does not see: reads must fail with a message */
static void bad_l2_past_eof(const char *p) { poke_be64(p, 0x30000, 0x8000000000000000ull | (1ull << 40)); }
static void bad_l2_unaligned(const char *p) { poke_be64(p, 0x30000, 0x8000000000000000ull | 0x41000); }
static void bad_data_unaligned(const char *p) { poke_be64(p, 0x40000, 0x8000000000051000ull); }
static void bad_refblock_loop(const char *p) { poke_be64(p, 0x10000, 0x10000); }
static void bad_overlap(const char *p) { poke_be64(p, 0x30000, 0x8000000000000000ull | 0x10000); }
static void bad_compressed(const char *p) { poke_be64(p, 0x40000, 0x4000000000050000ull | (3ull << 54)); }

static const BadCase bad_cases[] = {
    { "truncated", bad_truncated, "header" },
    { "truncated-v3", bad_truncated_v3, "header" },
    { "cluster-bits-high", bad_cluster_bits, "cluster_bits" },
    { "cluster-bits-low", bad_cluster_bits_low, "cluster_bits" },
    { "l1-past-eof", bad_l1_past_eof, "L1 table" },
    { "l1-unaligned", bad_l1_unaligned, "L1 table" },
    { "l1-huge", bad_l1_huge, "l1_size" },
    { "l1-small", bad_l1_small, "l1_size" },
    { "reftable-past-eof", bad_reftable_past_eof, "refcount table" },
    { "reftable-huge", bad_reftable_huge, "refcount_table_clusters" },
    { "unknown-incompat", bad_incompat, "Unknown incompatible feature" },
    { "version", bad_version, "version" },
    { "header-length", bad_header_length, "header_length" },
    { "refcount-order", bad_refcount_order, "refcount_order" },
    { "encrypted", bad_crypt, "encrypt" },
    { "compression-bit", bad_compression, "compression" },
    { "backing-name", bad_backing_name, "backing file name" },
    { "snapshots-many", bad_snapshots, "nb_snapshots" },
    { "snapshots-eof", bad_snapshots_eof, "snapshot table" },
    { "extension-length", bad_ext_len, "extension" },
    { "l2-past-eof", bad_l2_past_eof, NULL },
    { "l2-unaligned", bad_l2_unaligned, NULL },
    { "data-unaligned", bad_data_unaligned, NULL },
    { "refblock-loop", bad_refblock_loop, NULL },
    { "l2-overlaps-reftable", bad_overlap, NULL },
    { "compressed-garbage", bad_compressed, NULL },
};

/* Damaged images: a clear error naming the file (and the field), never a crash. */
static void test_bad_image(gconstpointer data)
{
    const BadCase *c = data;
    g_autofree char *img = g_strdup_printf("%s/bad-%s.qcow2", tmpdir, c->name);
    g_autoptr(GError) err = NULL;
    guint64 size = 4 << 20;
    g_autofree guint8 *buf = g_malloc(size);

    create_ours(img, "size=4194304");
    VmmBlockDev *bs = open_q(img, VMM_BDRV_O_RDWR, NULL);
    write_pattern(bs, 0, 200000, 1, NULL);
    vmm_block_unref(bs);
    c->damage(img);

    bs = vmm_block_open(img, "qcow2", NULL, 0, &err);
    if (c->expect) {
        g_assert_null(bs);
        g_assert_nonnull(err);
        g_test_message("%s", err->message);
        g_assert_nonnull(strstr(err->message, img));
        if (!strstr(err->message, c->expect))
            g_error("'%s' does not mention '%s'", err->message, c->expect);
        return;
    }
    if (!bs) {
        g_test_message("refused: %s", err->message);
        g_assert_nonnull(strstr(err->message, img));
        return;
    }
    /* Reads of the damaged part fail with a message, others work. */
    gboolean ok = vmm_block_pread(bs, 0, size, buf, &err);
    if (!ok) {
        g_test_message("read: %s", err->message);
        g_assert_nonnull(strstr(err->message, img));
        g_clear_error(&err);
    }
    guint64 pnum;
    vmm_block_status(bs, 0, size, &pnum, NULL, NULL, &err);
    g_clear_error(&err);
    VmmCheckResult r;
    memset(&r, 0, sizeof(r));
    g_assert_true(bs->drv->check(bs, &r, 0, &err));
    g_test_message("check: %" G_GUINT64_FORMAT " corruptions, %" G_GUINT64_FORMAT " leaks",
                   r.corruptions, r.leaks);
    g_assert_true(!ok || r.corruptions + r.leaks + r.check_errors > 0);
    vmm_block_unref(bs);

    /* Read-write: a detected corruption marks the image corrupt. */
    bs = vmm_block_open(img, "qcow2", NULL, VMM_BDRV_O_RDWR, &err);
    if (bs) {
        g_autofree guint8 *w = g_malloc0(65536);
        if (!vmm_block_pread(bs, 0, size, buf, NULL) ||
            !vmm_block_pwrite(bs, 0, 65536, w, 0, NULL) ||
            !vmm_block_pwrite(bs, 65536 * 3, 65536, w, 0, NULL))
            g_test_message("rw access failed cleanly");
        vmm_block_unref(bs);
    }
    g_clear_error(&err);
}

/* The corrupt bit: read-write open refused, read-only allowed. */
static void test_corrupt_bit(void)
{
    g_autofree char *img = tpath("corrupt.qcow2");
    g_autoptr(GError) err = NULL;

    create_ours(img, "size=1048576");
    poke_be64(img, 72, 2);
    VmmBlockDev *bs = vmm_block_open(img, "qcow2", NULL, VMM_BDRV_O_RDWR, &err);
    g_assert_null(bs);
    g_assert_nonnull(strstr(err->message, "corrupt"));
    g_clear_error(&err);
    bs = vmm_block_open(img, "qcow2", NULL, 0, &err);
    g_assert_nonnull(bs);
    vmm_block_unref(bs);

    /* Corruption found while running sets the bit. */
    create_ours(img, "size=4194304");
    bs = open_q(img, VMM_BDRV_O_RDWR, NULL);
    write_pattern(bs, 0, 4096, 1, NULL);
    vmm_block_unref(bs);
    bad_l2_unaligned(img);
    bs = open_q(img, VMM_BDRV_O_RDWR, NULL);
    guint8 b[512];
    g_assert_false(vmm_block_pread(bs, 0, 512, b, &err));
    g_assert_nonnull(strstr(err->message, "unaligned"));
    g_clear_error(&err);
    g_assert_false(vmm_block_pwrite(bs, 1 << 20, 512, b, 0, &err));
    vmm_block_unref(bs);
    g_clear_error(&err);
    bs = vmm_block_open(img, "qcow2", NULL, VMM_BDRV_O_RDWR, &err);
    g_assert_null(bs);
}

/* Unknown autoclear bits (and bitmaps) are cleared by a writer; unknown
 * header extensions survive a header rewrite. */
static void test_autoclear_and_unknown_ext(void)
{
    g_autofree char *img = tpath("ext.qcow2");
    g_autoptr(GError) err = NULL;

    create_ours(img, "size=1048576");
    /* an unknown extension before the end marker: move the feature table */
    guint8 ext[16] = { 0x12, 0x34, 0x56, 0x78, 0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o', 0, 0, 0 };
    g_autofree char *orig = NULL;
    gsize len;
    g_assert_true(g_file_get_contents(img, &orig, &len, NULL));
    guint8 *h = (guint8 *)orig;
    memmove(h + 112 + 16, h + 112, 400);
    memcpy(h + 112, ext, 16);
    h[95] = 0x84; /* autoclear: an unknown bit 7 and bit 2 */
    g_assert_true(g_file_set_contents(img, orig, (gssize)len, NULL));

    VmmBlockDev *bs = open_q(img, 0, NULL);
    vmm_block_unref(bs);
    g_autofree char *same = NULL;
    g_assert_true(g_file_get_contents(img, &same, &len, NULL));
    g_assert_cmpint(((guint8 *)same)[95], ==, 0x84); /* read-only: untouched */

    bs = open_q(img, VMM_BDRV_O_RDWR, NULL);
    write_pattern(bs, 0, 4096, 1, NULL);
    g_assert_true(bs->drv->change_backing_file(bs, "somewhere.img", "raw", &err));
    vmm_block_unref(bs);
    g_autofree char *after = NULL;
    g_assert_true(g_file_get_contents(img, &after, &len, NULL));
    g_assert_cmpint(((guint8 *)after)[95], ==, 0);
    g_assert_true(memmem(after, 4096, ext, 13) != NULL);
    g_assert_true(memmem(after, 4096, "somewhere.img", 13) != NULL);
}

/* ---- crash consistency ---- */

#define CRASH_SLOT 24576
#define CRASH_SLOTS_PER_BATCH 4

static void crash_slot_order(guint32 seed, guint *order, guint n)
{
    g_autoptr(GRand) r = g_rand_new_with_seed(seed);
    for (guint i = 0; i < n; i++)
        order[i] = i;
    for (guint i = n - 1; i > 0; i--) {
        guint j = (guint)g_rand_int_range(r, 0, (gint32)i + 1);
        guint t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

static G_GNUC_NORETURN void crash_child(const char *img, guint32 seed, guint nslots, int ackfd)
{
    g_autofree guint *order = g_new(guint, nslots);
    guint8 *buf = g_malloc(CRASH_SLOT);
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "discard", "unmap");
    VmmBlockDev *bs = vmm_block_open(img, "qcow2", o, VMM_BDRV_O_RDWR, NULL);
    if (!bs)
        _exit(2);
    crash_slot_order(seed, order, nslots);
    for (guint b = 0; (b + 1) * CRASH_SLOTS_PER_BATCH <= nslots; b++) {
        for (guint j = 0; j < CRASH_SLOTS_PER_BATCH; j++) {
            guint64 off = (guint64)order[b * CRASH_SLOTS_PER_BATCH + j] * CRASH_SLOT;
            fill_pattern(buf, CRASH_SLOT, off, seed + b);
            if (!vmm_block_pwrite(bs, off, CRASH_SLOT, buf, 0, NULL))
                _exit(3);
        }
        /* churn that frees clusters: zero a slot written long ago */
        if (b > 8 && (b & 3) == 0) {
            guint64 off = (guint64)order[(b - 8) * CRASH_SLOTS_PER_BATCH] * CRASH_SLOT;
            if (!vmm_block_pwrite_zeroes(bs, off, CRASH_SLOT, VMM_BDRV_REQ_MAY_UNMAP, NULL))
                _exit(4);
        }
        if (!vmm_block_flush(bs, NULL))
            _exit(5);
        if (write(ackfd, &b, sizeof(b)) != sizeof(b))
            _exit(6);
    }
    pause();
    _exit(0);
}

static void crash_run(const char *kv, guint32 seed)
{
    g_autofree char *img = tpath("crash.qcow2");
    guint64 size = 16 << 20;
    guint nslots = (guint)(size / CRASH_SLOT);
    int fds[2];
    gint64 acked = -1;

    unlink(img);
    create_ours(img, kv);
    g_assert_cmpint(pipe(fds), ==, 0);
    pid_t pid = fork();
    g_assert_cmpint(pid, >=, 0);
    if (pid == 0) {
        close(fds[0]);
        crash_child(img, seed, nslots, fds[1]);
    }
    close(fds[1]);
    g_autoptr(GRand) r = g_rand_new_with_seed(seed);
    g_usleep((gulong)g_rand_int_range(r, 2000, 150000));
    kill(pid, SIGKILL);
    int status;
    g_assert_cmpint(waitpid(pid, &status, 0), ==, pid);
    g_assert_true(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 0));
    guint b;
    while (read(fds[0], &b, sizeof(b)) == sizeof(b))
        acked = b;
    close(fds[0]);

    gboolean lazy = strstr(kv, "lazy") != NULL;
    if (!lazy) {
        g_autofree char *out = NULL;
        int rc = run(&out, "qemu-img check --output=json %s", img);
        if (rc != 0 && rc != 3)
            g_error("seed %u: qemu-img check: exit %d\n%s", seed, rc, out);
    }
    /* Open read-write (a lazy image gets repaired), then every flushed slot
     * reads as written (or zero, where the churn zeroed it). */
    VmmBlockDev *bs = open_q(img, VMM_BDRV_O_RDWR, NULL);
    g_autofree guint *order = g_new(guint, nslots);
    g_autofree guint8 *want = g_malloc(CRASH_SLOT), *got = g_malloc(CRASH_SLOT);
    g_autofree gboolean *zeroed = g_new0(gboolean, nslots);
    crash_slot_order(seed, order, nslots);
    for (gint64 bb = 0; bb <= acked; bb++) {
        if (bb > 8 && (bb & 3) == 0)
            zeroed[order[(bb - 8) * CRASH_SLOTS_PER_BATCH]] = TRUE;
    }
    /* The batch after the last flush may have zeroed its slot already. */
    gint64 nb = acked + 1;
    guint maybe_zeroed = nb > 8 && (nb & 3) == 0 ? order[(nb - 8) * CRASH_SLOTS_PER_BATCH] : G_MAXUINT;
    for (gint64 bb = 0; bb <= acked; bb++) {
        for (guint j = 0; j < CRASH_SLOTS_PER_BATCH; j++) {
            guint slot = order[bb * CRASH_SLOTS_PER_BATCH + j];
            guint64 off = (guint64)slot * CRASH_SLOT;
            fill_pattern(want, CRASH_SLOT, off, seed + (guint32)bb);
            if (zeroed[slot])
                memset(want, 0, CRASH_SLOT);
            g_assert_true(vmm_block_pread(bs, off, CRASH_SLOT, got, NULL));
            if (slot == maybe_zeroed && vmm_buffer_is_zero(got, CRASH_SLOT))
                continue;
            if (memcmp(want, got, CRASH_SLOT)) {
                guint k = 0;
                while (want[k] == got[k])
                    k++;
                run(NULL, "cp %s /tmp/crash-fail.qcow2; qemu-img map --output=json %s | head -50 >&2", img, img);
                g_error("seed %u: flushed batch %" G_GINT64_FORMAT "/%" G_GINT64_FORMAT " slot %u (offset 0x%"
                        G_GINT64_MODIFIER "x) lost from byte %u: got %02x %02x %02x, want %02x %02x %02x%s",
                        seed, bb, acked, slot, off, k, got[k], got[k + 1], got[k + 2], want[k], want[k + 1],
                        want[k + 2], zeroed[slot] ? " (zeroed)" : "");
            }
        }
    }
    vmm_block_unref(bs);
    g_autofree char *out = NULL;
    int rc = run(&out, "qemu-img check --output=json %s", img);
    if (rc != 0 && rc != 3)
        g_error("seed %u: qemu-img check after reopen: exit %d\n%s", seed, rc, out);
    g_test_message("seed %u: %" G_GINT64_FORMAT " batches flushed", seed, acked + 1);
}

static void test_crash(gconstpointer data)
{
    const char *kv = data;
    NEED_QEMU();
    const char *env = g_getenv("QCOW2_CRASH_RUNS");
    int runs = env ? atoi(env) : 8;
    for (int i = 0; i < runs; i++)
        crash_run(kv, 1000 + (guint32)i * 7919);
}

/* ---- amend, resize, measure ---- */

static void test_amend(void)
{
    NEED_QEMU();
    g_autofree char *img = tpath("amend.qcow2");
    guint64 size = 8 << 20;
    g_autofree guint8 *shadow = g_malloc0(size);
    g_autoptr(GError) err = NULL;
    g_autofree char *info = NULL;

    create_ours(img, "size=8388608");
    VmmBlockDev *bs = open_q(img, VMM_BDRV_O_RDWR, NULL);
    our_random_io(bs, shadow, size, 21, 60);
    const char *steps[] = { "refcount_bits=64", "refcount_bits=1", "refcount_bits=16",
                            "lazy_refcounts=on", "lazy_refcounts=off", "compat=0.10", "compat=1.1" };
    for (gsize i = 0; i < G_N_ELEMENTS(steps); i++) {
        g_autoptr(JsonObject) o = opts_from(steps[i]);
        if (!bs->drv->amend(bs, o, FALSE, &err))
            g_error("amend %s: %s", steps[i], err->message);
        assert_reads(bs, shadow, size);
        g_assert_true(vmm_block_flush(bs, NULL));
        assert_qemu_check_clean(img);
        g_free(info);
        info = NULL;
        run(&info, "qemu-img info -U %s", img);
        if (g_str_has_prefix(steps[i], "refcount_bits")) {
            g_autofree char *want = g_strdup_printf("refcount bits: %s", steps[i] + 14);
            g_assert_nonnull(strstr(info, want));
        }
        if (!strcmp(steps[i], "compat=0.10"))
            g_assert_nonnull(strstr(info, "compat: 0.10"));
    }
    g_autoptr(JsonObject) bad = opts_from("cluster_size=4096");
    g_assert_false(bs->drv->amend(bs, bad, FALSE, &err));
    g_clear_error(&err);
    our_random_io(bs, shadow, size, 22, 30);
    vmm_block_unref(bs);
    assert_qemu_check_clean(img);
    assert_qemu_compare(img, shadow, size);
}

static void test_resize(gconstpointer data)
{
    const char *prealloc = data;
    NEED_QEMU();
    g_autofree char *img = tpath("resize.qcow2");
    g_autofree char *ref = tpath("resize-qemu.qcow2");
    guint64 size = 4 << 20, big = 12 << 20;
    g_autofree guint8 *shadow = g_malloc0(big);
    g_autoptr(GError) err = NULL;
    VmmPrealloc mode;

    g_assert_true(vmm_parse_prealloc(prealloc, &mode, NULL));
    create_ours(img, "size=4194304");
    VmmBlockDev *bs = open_q(img, VMM_BDRV_O_RDWR, NULL);
    our_random_io(bs, shadow, size, 31, 30);
    g_assert_true(vmm_block_truncate(bs, big, FALSE, mode, FALSE, &err));
    g_assert_cmpuint(vmm_block_size(bs), ==, big);
    write_pattern(bs, big - 100000, 100000, 4, shadow);
    assert_reads(bs, shadow, big);
    vmm_block_unref(bs);
    assert_qemu_check_clean(img);
    assert_qemu_compare(img, shadow, big);

    /* the same resize by qemu-img on an empty image gives the same bytes */
    create_ours(img, "size=4194304");
    g_assert_cmpint(run(NULL, "qemu-img create -q -f qcow2 %s 4M && qemu-img resize -q --preallocation=%s %s 12M",
                        ref, prealloc, ref), ==, 0);
    bs = open_q(img, VMM_BDRV_O_RDWR, NULL);
    g_assert_true(vmm_block_truncate(bs, big, FALSE, mode, FALSE, &err));
    vmm_block_unref(bs);
    g_assert_cmpint(run(NULL, "cmp %s %s", img, ref), ==, 0);

    /* shrink */
    bs = open_q(img, VMM_BDRV_O_RDWR, NULL);
    g_assert_false(vmm_block_truncate(bs, size, FALSE, VMM_PREALLOC_OFF, FALSE, &err));
    g_clear_error(&err);
    g_assert_true(vmm_block_truncate(bs, size, FALSE, VMM_PREALLOC_OFF, TRUE, &err));
    vmm_block_unref(bs);
    assert_qemu_check_clean(img);
}

static void test_measure(gconstpointer data)
{
    const char *kv = data;
    NEED_QEMU();
    const VmmBlockDriver *drv = vmm_block_find_driver("qcow2");
    g_assert_nonnull(drv);
    g_autoptr(JsonObject) o = opts_from(kv);
    guint64 req, full;
    g_autoptr(GError) err = NULL;
    guint64 size = 1ull << 30;
    g_assert_true(drv->measure(o, size, 0, &req, &full, &err));
    g_autofree char *out = NULL;
    g_autofree char *opts = g_strdup(kv);
    g_assert_cmpint(run(&out, "qemu-img measure -O qcow2 %s%s --size 1G --output=json",
                        *opts ? "-o " : "", opts), ==, 0);
    g_autoptr(JsonParser) p = json_parser_new();
    g_assert_true(json_parser_load_from_data(p, out, -1, NULL));
    JsonObject *r = json_node_get_object(json_parser_get_root(p));
    g_assert_cmpuint(req, ==, (guint64)json_object_get_int_member(r, "required"));
    g_assert_cmpuint(full, ==, (guint64)json_object_get_int_member(r, "fully-allocated"));
}

/* Tiny caches force evictions (and their write ordering) all the time. */
static void test_small_caches(void)
{
    g_autofree char *img = tpath("cache.qcow2");
    guint64 size = 32 << 20;
    g_autofree guint8 *shadow = g_malloc0(size);
    g_autoptr(GError) err = NULL;

    create_ours(img, "size=33554432,cluster_size=4096,refcount_bits=4");
    VmmBlockDev *bs = open_q(img, VMM_BDRV_O_RDWR,
                             "l2-cache-size=8192,refcount-cache-size=16384,cache-clean-interval=1");
    our_random_io(bs, shadow, size, 41, 150);
    VmmSnapshotInfo sn = { .name = "s", .icount = (guint64)-1 };
    g_assert_true(bs->drv->snapshot_create(bs, &sn, &err));
    our_random_io(bs, shadow, size, 42, 150);
    assert_reads(bs, shadow, size);
    vmm_block_unref(bs);
    if (have_qemu()) {
        assert_qemu_check_clean(img);
        assert_qemu_compare(img, shadow, size);
    }
    const char *bad[] = { "cache-size=65536,l2-cache-size=8192,refcount-cache-size=16384",
                          "cache-size=65536,l2-cache-size=131072", "l2-cache-entry-size=100",
                          "cache-clean-interval=99999999999" };
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autoptr(JsonObject) o = opts_from(bad[i]);
        bs = vmm_block_open(img, "qcow2", o, 0, &err);
        g_assert_null(bs);
        g_test_message("%s: %s", bad[i], err->message);
        g_clear_error(&err);
    }
    bs = open_q(img, 0, "cache-size=1048576");
    assert_reads(bs, shadow, size);
    vmm_block_unref(bs);
}

/* External data files we create: qemu-img agrees; a raw one stays the image. */
static void test_data_file_ours(gconstpointer data)
{
    gboolean raw = GPOINTER_TO_INT(data);
    NEED_QEMU();
    g_autofree char *img = tpath(raw ? "df-raw.qcow2" : "df.qcow2");
    g_autofree char *dfile = g_strdup_printf("%s.data", img);
    guint64 size = 8 << 20;
    g_autofree guint8 *shadow = g_malloc0(size);
    g_autofree char *kv = g_strdup_printf("size=8388608,data_file=%s%s", dfile, raw ? ",data_file_raw=on" : "");

    create_ours(img, kv);
    VmmBlockDev *bs = open_q(img, VMM_BDRV_O_RDWR, NULL);
    our_random_io(bs, shadow, size, 51, 80);
    assert_reads(bs, shadow, size);
    g_autoptr(GError) err = NULL;
    g_assert_false(vmm_block_pwrite_compressed(bs, 0, 65536, shadow, &err));
    g_clear_error(&err);
    VmmSnapshotInfo sn = { .name = "x", .icount = (guint64)-1 };
    g_assert_false(bs->drv->snapshot_create(bs, &sn, &err));
    g_clear_error(&err);
    vmm_block_unref(bs);
    assert_qemu_check_clean(img);
    assert_qemu_compare(img, shadow, size);
    if (raw) {
        g_autofree guint8 *d = read_file_exact(dfile, size);
        g_assert_true(memcmp(d, shadow, size) == 0);
    }
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    tmpdir = g_dir_make_tmp("test-qcow2-XXXXXX", NULL);
    g_assert_nonnull(tmpdir);

    g_test_add_func("/qcow2/basic", test_probe_and_create_basic);
    for (gsize i = 0; i < G_N_ELEMENTS(create_cases); i++) {
        g_autofree char *name = g_strdup_printf("/qcow2/create-identical/%s", create_cases[i]);
        g_test_add_data_func(name, create_cases[i], test_create_identical);
    }

    for (gsize i = 0; i < G_N_ELEMENTS(interop_cases); i++) {
        g_autofree char *name = g_strdup_printf("/qcow2/interop/%s", interop_cases[i].name);
        g_test_add_data_func(name, &interop_cases[i], test_interop);
    }

    g_test_add_data_func("/qcow2/compressed/zlib", "zlib", test_compressed);
    g_test_add_data_func("/qcow2/compressed/zstd", "zstd", test_compressed);
    g_test_add_func("/qcow2/snapshots-ours", test_snapshots_ours);

    g_test_add_func("/qcow2/check-repair", test_check_repair);
    g_test_add_func("/qcow2/lazy-dirty-repair", test_lazy_dirty_repair);
    g_test_add_data_func("/qcow2/concurrent/default", "size=8388608", test_concurrent_writers);
    g_test_add_data_func("/qcow2/concurrent/extl2", "size=8388608,extended_l2=on,cluster_size=131072",
                         test_concurrent_writers);
    g_test_add_data_func("/qcow2/concurrent/4k", "size=8388608,cluster_size=4096", test_concurrent_writers);

    for (gsize i = 0; i < G_N_ELEMENTS(bad_cases); i++) {
        g_autofree char *name = g_strdup_printf("/qcow2/bad/%s", bad_cases[i].name);
        g_test_add_data_func(name, &bad_cases[i], test_bad_image);
    }
    g_test_add_func("/qcow2/corrupt-bit", test_corrupt_bit);
    g_test_add_func("/qcow2/autoclear-unknown-ext", test_autoclear_and_unknown_ext);

    g_test_add_data_func("/qcow2/crash/default", "size=16777216", test_crash);
    g_test_add_data_func("/qcow2/crash/lazy", "size=16777216,lazy_refcounts=on", test_crash);
    g_test_add_data_func("/qcow2/crash/extl2", "size=16777216,extended_l2=on", test_crash);
    g_test_add_func("/qcow2/amend", test_amend);
    g_test_add_func("/qcow2/small-caches", test_small_caches);
    g_test_add_data_func("/qcow2/data-file/plain", GINT_TO_POINTER(0), test_data_file_ours);
    g_test_add_data_func("/qcow2/data-file/raw", GINT_TO_POINTER(1), test_data_file_ours);
    g_test_add_data_func("/qcow2/resize/off", "off", test_resize);
    g_test_add_data_func("/qcow2/resize/metadata", "metadata", test_resize);
    g_test_add_data_func("/qcow2/resize/falloc", "falloc", test_resize);
    g_test_add_data_func("/qcow2/resize/full", "full", test_resize);
    g_test_add_data_func("/qcow2/measure/default", "", test_measure);
    g_test_add_data_func("/qcow2/measure/4k-rc64", "cluster_size=4096,refcount_bits=64", test_measure);
    g_test_add_data_func("/qcow2/measure/extl2", "extended_l2=on", test_measure);

    int rc = g_test_run();
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        g_printerr("could not remove %s\n", tmpdir);
    return rc;
}
