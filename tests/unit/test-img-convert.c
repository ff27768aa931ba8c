/* The fast paths of vmm-img convert and the block-layer calls behind them:
 * vmm_block_allocate (file, raw, qcow2), compressing clusters ahead of their
 * ordered write (vmm_block_compress_cluster / _pwrite_precompressed), qcow2's
 * packing of compressed clusters, the guess that skips deflate on
 * incompressible clusters (checked against deflate itself), and vmm-img
 * convert end to end against qemu-img (when installed): the same content and
 * the same map as qemu-img's own output, with the allocate-ahead path and with
 * its fallback (VMM_IMG_CONVERT_NO_ALLOCATE=1). */
#include "blockd/block.h"
#include "blockd/qcow2.h"
#include "common/error.h"
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

static char *tmpdir;

static char *tpath(const char *name)
{
    return g_build_filename(tmpdir, name, NULL);
}

static char *tpath2(const char *a, const char *b)
{
    g_autofree char *name = g_strconcat(a, b, NULL);
    return tpath(name);
}

static gboolean have_program(const char *name)
{
    g_autofree char *p = g_find_program_in_path(name);
    return p != NULL;
}

static gboolean have_qemu(void)
{
    return have_program("qemu-img") && have_program("timeout");
}

static char *vmm_img_path(void)
{
    const char *dir = g_getenv("VMM_BIN_DIR");
    if (!dir)
        return NULL;
    char *p = g_build_filename(dir, "vmm-img", NULL);
    if (access(p, X_OK) != 0) {
        g_free(p);
        return NULL;
    }
    return p;
}

/* Runs a shell command in tmpdir (bounded by timeout); its exit status, and
 * its stdout in *OUT if wanted. */
static int run(char **out, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static int run(char **out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *cmd = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_autofree char *full = g_strdup_printf("timeout 120 sh -c '%s'", cmd);
    g_autofree char *o = NULL, *e = NULL;
    g_autoptr(GError) err = NULL;
    int status = -1;
    char *argv[] = {"sh", "-c", full, NULL};

    if (!g_spawn_sync(tmpdir, argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &o, &e, &status, &err))
        g_error("spawn %s: %s", cmd, err->message);
    if (g_test_verbose() || status)
        g_printerr("$ %s\n%s%s", cmd, o ? o : "", e ? e : "");
    if (out)
        *out = g_steal_pointer(&o);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* xorshift: the same bytes on every run. */
static void fill_random(guint8 *buf, gsize len, guint64 seed)
{
    guint64 x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (gsize i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (guint8)(x >> 32);
    }
}

/* Base64-like text: compressible (6 bits a byte) but of high entropy. */
static void fill_text(guint8 *buf, gsize len, guint64 seed)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    fill_random(buf, len, seed);
    for (gsize i = 0; i < len; i++)
        buf[i] = (i % 77 == 76) ? '\n' : (guint8)alphabet[buf[i] & 63];
}

/* What QEMU does with a cluster: deflate (raw, 4 KiB window) into
 * cluster - 1 bytes; TRUE if that fits. */
static gboolean deflate_fits(const guint8 *buf, gsize len)
{
    g_autofree guint8 *out = g_malloc(len);
    z_stream strm;
    memset(&strm, 0, sizeof(strm));
    g_assert_cmpint(deflateInit2(&strm, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY), ==, Z_OK);
    strm.next_in = (Bytef *)buf;
    strm.avail_in = (uInt)len;
    strm.next_out = out;
    strm.avail_out = (uInt)(len - 1);
    gboolean fits = deflate(&strm, Z_FINISH) == Z_STREAM_END;
    deflateEnd(&strm);
    return fits;
}

/* The guess may only skip clusters that deflate could not shrink. */
static void check_guess(const guint8 *buf, gsize len, const char *what, guint *skipped)
{
    if (!q2_looks_incompressible(buf, len))
        return;
    (*skipped)++;
    if (deflate_fits(buf, len))
        g_error("%s (%" G_GSIZE_FORMAT " bytes): guessed incompressible, but deflate shrinks it", what, len);
}

static void test_incompressible_guess(void)
{
    const gsize sizes[] = {4096, 65536, 2 << 20};
    for (gsize k = 0; k < G_N_ELEMENTS(sizes); k++) {
        gsize cs = sizes[k];
        g_autofree guint8 *buf = g_malloc(cs);
        guint skipped = 0;

        /* Random bytes: skipped (the speed-up), and rightly so. */
        fill_random(buf, cs, 1 + k);
        g_assert_true(q2_looks_incompressible(buf, cs));
        g_assert_false(deflate_fits(buf, cs));
        /* Text and zeroes: deflated. */
        fill_text(buf, cs, 2);
        g_assert_false(q2_looks_incompressible(buf, cs));
        memset(buf, 0, cs);
        g_assert_false(q2_looks_incompressible(buf, cs));
        if (cs > (1 << 20) && !g_test_slow())
            continue; /* deflating 2 MiB clusters many times takes a while */

        /* Random bytes with a repeated stretch (which deflate's window can
         * reference) of growing length, anywhere in the cluster. */
        for (gsize rep = 4; rep <= 4096 && 4 * rep <= cs; rep *= 2) {
            for (int pos = 0; pos < 3; pos++) {
                fill_random(buf, cs, 100 + rep + (gsize)pos);
                gsize at = (cs - 2 * rep - 1) * (gsize)pos / 2;
                gsize dist = MIN(rep, (gsize)4000);
                for (gsize i = 0; i < rep; i++)
                    buf[at + dist + i] = buf[at + i];
                g_autofree char *what = g_strdup_printf("random with %" G_GSIZE_FORMAT " bytes repeated", rep);
                check_guess(buf, cs, what, &skipped);
            }
        }
        /* Random bytes with one value over-represented: Huffman territory. */
        for (gsize extra = 16; extra <= cs / 8; extra *= 2) {
            fill_random(buf, cs, 200 + extra);
            for (gsize i = 0; i < extra; i++)
                buf[(i * 7919) % cs] = 0x41;
            g_autofree char *what = g_strdup_printf("random with %" G_GSIZE_FORMAT " extra 'A's", extra);
            check_guess(buf, cs, what, &skipped);
        }
        /* Random bytes from a smaller alphabet (e.g. 7-bit data). */
        for (int bits = 5; bits <= 8; bits++) {
            fill_random(buf, cs, 300 + (guint64)bits);
            for (gsize i = 0; i < cs; i++)
                buf[i] &= (guint8)((1u << bits) - 1);
            g_autofree char *what = g_strdup_printf("random %d-bit bytes", bits);
            check_guess(buf, cs, what, &skipped);
        }
        /* Some of the near-random cases are skipped: the test covers both ways. */
        g_assert_cmpuint(skipped, >, 0);
    }
}

static JsonObject *create_opts(guint64 size, const char *extra_key, const char *extra_val)
{
    JsonObject *o = json_object_new();
    json_object_set_int_member(o, "size", (gint64)size);
    if (extra_key)
        json_object_set_string_member(o, extra_key, extra_val);
    return o;
}

static VmmBlockDev *open_rw(const char *path, const char *fmt)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) oo = json_object_new();
    json_object_set_string_member(oo, "discard", "unmap");
    /* Freed clusters keep their old bytes in the file: reusing them must
     * not show those. */
    if (!strcmp(fmt, "qcow2"))
        json_object_set_boolean_member(oo, "pass-discard-request", FALSE);
    VmmBlockDev *bs = vmm_block_open(path, fmt, oo, VMM_BDRV_O_RDWR, &err);
    if (!bs)
        g_error("open %s: %s", path, err->message);
    return bs;
}

static VmmBlockDev *create_and_open(const char *path, const char *fmt, guint64 size, const char *key,
                                    const char *val)
{
    g_autoptr(JsonObject) o = create_opts(size, key, val);
    g_autoptr(GError) err = NULL;
    if (!vmm_block_create(path, fmt, o, &err))
        g_error("create %s: %s", path, err->message);
    return open_rw(path, fmt);
}

static void assert_reads(VmmBlockDev *bs, guint64 off, const guint8 *expect, gsize len)
{
    g_autofree guint8 *b = g_malloc(len);
    g_autoptr(GError) err = NULL;
    if (!vmm_block_pread(bs, off, len, b, &err))
        g_error("read: %s", err->message);
    for (gsize i = 0; i < len; i++)
        if (b[i] != expect[i])
            g_error("byte %" G_GUINT64_FORMAT " is 0x%02x, expected 0x%02x", off + i, b[i], expect[i]);
}

static void must(gboolean ok, GError *err, const char *what)
{
    if (!ok)
        g_error("%s: %s", what, err ? err->message : "?");
}

static void assert_qemu_check_clean(const char *path)
{
    if (!have_qemu())
        return;
    g_autofree char *out = NULL;
    if (run(&out, "qemu-img check -U %s", path) != 0)
        g_error("qemu-img check %s is not clean:\n%s", path, out);
}

/* vmm_block_allocate keeps what every range reads, on raw and on qcow2
 * (new clusters, and clusters reused from freed space inside the file). */
static void test_allocate_keeps_content(gconstpointer data)
{
    const char *fmt = data;
    g_autofree char *p = tpath2("alloc.", fmt);
    guint64 size = 8 << 20;
    g_autofree guint8 *shadow = g_malloc0(size);
    g_autofree guint8 *b = g_malloc(1 << 20);
    VmmBlockDev *bs = create_and_open(p, fmt, size, NULL, NULL);
    GError *err = NULL;

    fill_random(b, 1 << 20, 7);
    must(vmm_block_pwrite(bs, 3 << 20, 1 << 20, b, 0, &err), err, "write");
    memcpy(shadow + (3 << 20), b, 1 << 20);
    /* Free the middle of it again: its clusters are reused below. */
    must(vmm_block_pdiscard(bs, (3 << 20) + 65536, 512 << 10, &err), err, "discard");
    memset(shadow + (3 << 20) + 65536, 0, 512 << 10);
    /* Reopened, qcow2 looks for free clusters from the start of the file. */
    must(vmm_block_flush(bs, &err), err, "flush");
    vmm_block_unref(bs);
    bs = open_rw(p, fmt);

    /* Unaligned ranges over holes, data, freed space and the image end. */
    must(vmm_block_allocate(bs, 100, 300000, &err), err, "allocate head");
    must(vmm_block_allocate(bs, (3 << 20) - 5000, (1 << 20) + 10000, &err), err, "allocate over data");
    must(vmm_block_allocate(bs, size - 70000, 70000, &err), err, "allocate tail");
    assert_reads(bs, 0, shadow, size);

    if (!strcmp(fmt, "qcow2")) {
        /* The clusters are there now (data, not zero) and read as zeroes. */
        guint64 pnum = 0;
        int st = vmm_block_status(bs, 65536, 65536, &pnum, NULL, NULL, &err);
        g_assert_cmpint(st, >=, 0);
        g_assert_true(st & VMM_BLOCK_ALLOCATED);
    }
    /* Writes into the allocated ranges land where they should. */
    fill_random(b, 200000, 8);
    must(vmm_block_pwrite(bs, 150, 200000, b, 0, &err), err, "write allocated");
    memcpy(shadow + 150, b, 200000);
    must(vmm_block_pwrite(bs, (3 << 20) + 65536 + 4096, 100000, b, 0, &err), err, "write reused");
    memcpy(shadow + (3 << 20) + 65536 + 4096, b, 100000);
    assert_reads(bs, 0, shadow, size);
    must(vmm_block_flush(bs, &err), err, "flush");
    vmm_block_unref(bs);

    bs = vmm_block_open(p, fmt, NULL, 0, &err);
    must(bs != NULL, err, "reopen");
    assert_reads(bs, 0, shadow, size);
    vmm_block_unref(bs);
    if (!strcmp(fmt, "qcow2"))
        assert_qemu_check_clean(p);
}

/* With a backing file, allocating whole clusters would hide its data. */
static void test_allocate_refused_with_backing(void)
{
    g_autofree char *base = tpath("base.qcow2");
    g_autofree char *top = tpath("top.qcow2");
    VmmBlockDev *bs = create_and_open(base, "qcow2", 1 << 20, NULL, NULL);
    vmm_block_unref(bs);
    g_autoptr(JsonObject) o = create_opts(1 << 20, "backing_file", base);
    json_object_set_string_member(o, "backing_fmt", "qcow2");
    g_autoptr(GError) err = NULL;
    must(vmm_block_create(top, "qcow2", o, &err), err, "create overlay");
    bs = vmm_block_open(top, "qcow2", NULL, VMM_BDRV_O_RDWR, &err);
    must(bs != NULL, err, "open overlay");
    g_assert_false(vmm_block_allocate(bs, 0, 65536, &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_UNSUPPORTED);
    vmm_block_unref(bs);
}

/* Compressing apart from the write: the image reads back, incompressible
 * clusters are left to ordinary writes, and the packing (data running on
 * into the next cluster, as QEMU's) keeps qemu-img check clean, down to
 * 1-bit refcounts where no two compressed clusters may share one. */
static void test_precompressed(gconstpointer data)
{
    const char *opts = data;
    g_autofree char *p = tpath2(opts, ".qcow2");
    guint64 cs = 65536, n = 48, size = n * cs;
    g_autofree guint8 *shadow = g_malloc0(size);
    g_autofree guint8 *out = g_malloc(cs);
    g_auto(GStrv) kv = g_strsplit(opts, "=", 2);
    VmmBlockDev *bs = create_and_open(p, "qcow2", size, kv[0], kv[1]);
    GError *err = NULL;
    guint compressed = 0;

    for (guint64 i = 0; i < n; i++) {
        guint8 *c = shadow + i * cs;
        if (i % 3 == 0)
            fill_random(c, cs, i);
        else
            fill_text(c, cs, i); /* about 3/4 of a cluster compressed */
        gssize clen = vmm_block_compress_cluster(bs, i * cs, cs, c, out, cs, &err);
        must(clen >= 0, err, "compress");
        if (i % 3 == 0)
            g_assert_cmpint(clen, ==, 0);
        if (clen == 0) {
            must(vmm_block_pwrite(bs, i * cs, cs, c, 0, &err), err, "write incompressible");
        } else {
            compressed++;
            must(vmm_block_pwrite_precompressed(bs, i * cs, cs, out, (gsize)clen, &err), err, "write compressed");
        }
    }
    g_assert_cmpuint(compressed, ==, n - n / 3);
    /* A short output buffer and a misplaced cluster are errors. */
    g_assert_cmpint(vmm_block_compress_cluster(bs, 0, cs, shadow, out, cs / 2, &err), ==, -1);
    g_clear_error(&err);
    g_assert_cmpint(vmm_block_compress_cluster(bs, 512, cs, shadow, out, cs, &err), ==, -1);
    g_clear_error(&err);
    assert_reads(bs, 0, shadow, size);
    must(vmm_block_flush(bs, &err), err, "flush");
    vmm_block_unref(bs);
    assert_qemu_check_clean(p);
    if (have_qemu()) {
        g_autofree char *raw = tpath("pc.expect");
        g_assert_true(g_file_set_contents(raw, (const char *)shadow, (gssize)size, NULL));
        g_assert_cmpint(run(NULL, "qemu-img compare -U -f raw -F qcow2 %s %s", raw, p), ==, 0);
        unlink(raw);
    }
    /* A format without compression says so. */
    g_autofree char *rp = tpath("pc.raw");
    bs = create_and_open(rp, "raw", cs, NULL, NULL);
    g_assert_cmpint(vmm_block_compress_cluster(bs, 0, cs, shadow, out, cs, &err), ==, -1);
    g_assert_error(err, VMM_ERROR, VMM_ERROR_UNSUPPORTED);
    g_clear_error(&err);
    vmm_block_unref(bs);
}

/* A source with the shapes convert cares about: holes between data extents
 * of odd lengths, zero 4 KiB granules and a zero 64 KiB cluster inside data
 * (allocated, so only a scan finds them), random and text data, and a tail
 * that is not a whole cluster. */
static void make_source(const char *path, guint64 size)
{
    g_autofree guint8 *buf = g_malloc(2 << 20);
    FILE *f = fopen(path, "w");
    guint64 off = 0, seed = 1;

    g_assert_nonnull(f);
    g_assert_cmpint(ftruncate(fileno(f), (off_t)size), ==, 0);
    while (off < size) {
        guint64 len = MIN(size - off, (1 + (seed * 7919) % 300) * 4096);
        if (seed % 2) {
            if (seed % 4 == 1)
                fill_random(buf, len, seed);
            else
                fill_text(buf, len, seed);
            if (len > 3 * 4096)
                memset(buf + 4096, 0, 4096);
            if (len > 4 * 65536) {
                guint64 z = (off + 2 * 65536) / 65536 * 65536 - off;
                memset(buf + z, 0, 65536);
            }
            g_assert_cmpint(pwrite(fileno(f), buf, len, (off_t)off), ==, (ssize_t)len);
        }
        off += len;
        seed++;
    }
    fclose(f);
}

typedef struct {
    const char *name;
    const char *args;     /* for both tools */
    const char *ours;     /* extra options of ours */
    const char *env;      /* for ours */
    const char *ofmt;
    gboolean same_map;    /* the layout is qemu-img's too */
} ConvertCase;

static const ConvertCase convert_cases[] = {
    {"raw-qcow2", "-f raw -O qcow2", "", "", "qcow2", TRUE},
    {"raw-qcow2-no-allocate", "-f raw -O qcow2", "", "VMM_IMG_CONVERT_NO_ALLOCATE=1", "qcow2", TRUE},
    {"raw-qcow2-m1", "-f raw -O qcow2", "-m 1", "", "qcow2", TRUE},
    {"raw-qcow2-W", "-f raw -O qcow2", "-W -m 4", "", "qcow2", FALSE},
    {"raw-qcow2-4k", "-f raw -O qcow2 -o cluster_size=4096", "", "", "qcow2", TRUE},
    {"raw-qcow2-extl2", "-f raw -O qcow2 -o extended_l2=on", "", "", "qcow2", FALSE},
    {"raw-qcow2-S0", "-f raw -O qcow2 -S 0", "", "", "qcow2", TRUE},
    {"raw-raw", "-f raw -O raw", "", "", "raw", TRUE},
    {"raw-raw-no-allocate", "-f raw -O raw", "", "VMM_IMG_CONVERT_NO_ALLOCATE=1", "raw", TRUE},
    {"qcow2-raw", "-f qcow2 -O raw", "", "", "raw", TRUE},
    {"qcow2-qcow2", "-f qcow2 -O qcow2", "", "", "qcow2", TRUE},
    {"zlib", "-c -f raw -O qcow2", "", "", "qcow2", TRUE},
    {"zstd", "-c -f raw -O qcow2 -o compression_type=zstd", "", "", "qcow2", TRUE},
    {"zlib-1bit-refcounts", "-c -f raw -O qcow2 -o refcount_bits=1", "", "", "qcow2", TRUE},
};

/* vmm-img convert and qemu-img convert of the same source: the same content,
 * qemu-img check clean, and (in-order writes) the same map. */
static void test_convert_vs_qemu(gconstpointer data)
{
    const ConvertCase *c = data;
    g_autofree char *vmm_img = vmm_img_path();
    if (!vmm_img || !have_qemu()) {
        g_test_skip("needs vmm-img (VMM_BIN_DIR) and qemu-img");
        return;
    }
    g_autofree char *src = tpath("conv-src.raw");
    if (access(src, R_OK) != 0) {
        make_source(src, 24 * 1048576 + 12345 * 512);
        g_assert_cmpint(run(NULL, "qemu-img convert -f raw -O qcow2 %s %s.qcow2", src, src), ==, 0);
    }
    const char *in = strstr(c->args, "-f qcow2") ? "conv-src.raw.qcow2" : "conv-src.raw";
    g_autofree char *ours = g_strdup_printf("ours-%s.%s", c->name, c->ofmt);
    g_autofree char *theirs = g_strdup_printf("qemu-%s.%s", c->name, c->ofmt);
    g_assert_cmpint(run(NULL, "qemu-img convert %s %s %s", c->args, in, theirs), ==, 0);
    g_assert_cmpint(run(NULL, "env %s %s convert %s %s %s %s", c->env, vmm_img, c->ours, c->args, in, ours), ==, 0);
    g_assert_cmpint(run(NULL, "qemu-img compare -f %s -F %s %s %s", c->ofmt, c->ofmt, theirs, ours), ==, 0);
    if (!strcmp(c->ofmt, "qcow2"))
        assert_qemu_check_clean(ours);
    if (c->same_map) {
        g_autofree char *m1 = NULL, *m2 = NULL;
        g_assert_cmpint(run(&m1, "qemu-img map --output=json -f %s %s", c->ofmt, theirs), ==, 0);
        g_assert_cmpint(run(&m2, "qemu-img map --output=json -f %s %s", c->ofmt, ours), ==, 0);
        g_assert_cmpstr(m2, ==, m1);
    }
    g_autofree char *ours_path = tpath(ours), *theirs_path = tpath(theirs);
    unlink(ours_path);
    unlink(theirs_path);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    tmpdir = g_dir_make_tmp("test-img-convert-XXXXXX", NULL);
    g_assert_nonnull(tmpdir);

    g_test_add_func("/img-convert/incompressible-guess", test_incompressible_guess);
    g_test_add_data_func("/img-convert/allocate/raw", "raw", test_allocate_keeps_content);
    g_test_add_data_func("/img-convert/allocate/qcow2", "qcow2", test_allocate_keeps_content);
    g_test_add_func("/img-convert/allocate/backing", test_allocate_refused_with_backing);
    g_test_add_data_func("/img-convert/precompressed/zlib", "compression_type=zlib", test_precompressed);
    g_test_add_data_func("/img-convert/precompressed/zstd", "compression_type=zstd", test_precompressed);
    g_test_add_data_func("/img-convert/precompressed/refcount1", "refcount_bits=1", test_precompressed);
    for (gsize i = 0; i < G_N_ELEMENTS(convert_cases); i++) {
        g_autofree char *name = g_strdup_printf("/img-convert/vs-qemu/%s", convert_cases[i].name);
        g_test_add_data_func(name, &convert_cases[i], test_convert_vs_qemu);
    }

    int rc = g_test_run();
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        g_printerr("could not remove %s\n", tmpdir);
    return rc;
}
