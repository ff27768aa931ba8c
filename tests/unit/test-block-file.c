/* The file protocol and raw format against the real peer, QEMU 7.2's
 * qemu-img and qemu-io: images written by one read back identically through
 * the other, and image locks exclude each other both ways. Skips when the
 * QEMU tools are not installed. */
#include "blockd/block.h"
#include "common/error.h"
#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define KiB 1024ull
#define MiB (1024ull * 1024)

static char *tmpdir;

static char *tpath(const char *name)
{
    return g_build_filename(tmpdir, name, NULL);
}

static gboolean have_tools(void)
{
    g_autofree char *a = g_find_program_in_path("qemu-img");
    g_autofree char *b = g_find_program_in_path("qemu-io");
    if (!a || !b) {
        g_test_skip("qemu-img or qemu-io is not installed");
        return FALSE;
    }
    return TRUE;
}

/* Runs ARGV under timeout(1); returns the exit status, stdout+stderr in *OUT. */
static int run(char **out, const char *const *argv)
{
    g_autoptr(GPtrArray) a = g_ptr_array_new();
    g_ptr_array_add(a, (gpointer) "timeout");
    g_ptr_array_add(a, (gpointer) "60");
    for (guint i = 0; argv[i]; i++)
        g_ptr_array_add(a, (gpointer)argv[i]);
    g_ptr_array_add(a, NULL);
    g_autofree char *sout = NULL, *serr = NULL;
    int status = -1;
    g_autoptr(GError) err = NULL;
    g_assert_true(g_spawn_sync(NULL, (char **)a->pdata, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &sout, &serr,
                               &status, &err));
    g_assert_no_error(err);
    if (out)
        *out = g_strconcat(sout ? sout : "", serr ? serr : "", NULL);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int qemu_io(char **out, const char *path, const char *fmt, const char *cmd, gboolean read_only)
{
    const char *argv[] = {"qemu-io", "-f", fmt, "-c", cmd, path, NULL, NULL};
    if (read_only) {
        argv[5] = "-r";
        argv[6] = path;
    }
    return run(out, argv);
}

static gboolean proc_locks_have(const char *path, int byte)
{
    struct stat st;
    g_autofree char *locks = NULL;
    if (stat(path, &st) < 0 || !g_file_get_contents("/proc/locks", &locks, NULL, NULL))
        return FALSE;
    g_autofree char *inode = g_strdup_printf(":%lu ", (unsigned long)st.st_ino);
    g_auto(GStrv) lines = g_strsplit(locks, "\n", -1);
    for (guint i = 0; lines[i]; i++) {
        char *p = strstr(lines[i], inode);
        if (!p)
            continue;
        p += strlen(inode);
        long start = strtol(p, &p, 10);
        long end = strtol(p, NULL, 10);
        if (byte >= start && byte <= end)
            return TRUE;
    }
    return FALSE;
}

/* An interactive qemu-io holding PATH open until its stdin closes. */
typedef struct {
    GPid pid;
    int in_fd;
} Holder;

static gboolean holder_start(Holder *h, const char *path, const char *fmt, int expect_byte)
{
    const char *argv[] = {"qemu-io", "-f", fmt, path, NULL};
    g_autoptr(GError) err = NULL;
    int out_fd = -1;
    g_assert_true(g_spawn_async_with_pipes(NULL, (char **)argv, NULL,
                                           G_SPAWN_SEARCH_PATH | G_SPAWN_DO_NOT_REAP_CHILD |
                                               G_SPAWN_STDERR_TO_DEV_NULL,
                                           NULL, NULL, &h->pid, &h->in_fd, &out_fd, NULL, &err));
    g_assert_no_error(err);
    close(out_fd);
    for (int i = 0; i < 200; i++) { /* up to 10 s for its locks to appear */
        if (proc_locks_have(path, expect_byte))
            return TRUE;
        g_usleep(50 * 1000);
    }
    return FALSE;
}

static void holder_stop(Holder *h)
{
    int status;
    close(h->in_fd); /* EOF: qemu-io quits */
    for (int i = 0; i < 200; i++) {
        if (waitpid(h->pid, &status, WNOHANG) == h->pid) {
            g_spawn_close_pid(h->pid);
            return;
        }
        g_usleep(50 * 1000);
    }
    kill(h->pid, SIGKILL);
    waitpid(h->pid, &status, 0);
    g_spawn_close_pid(h->pid);
}

static VmmBlockDev *try_open(const char *path, const char *fmt, int flags, GError **err)
{
    return vmm_block_open(path, fmt, NULL, flags, err);
}

/* ------------------------------------------------------------------ tests */

static void test_qemu_writes_we_read(void)
{
    if (!have_tools())
        return;
    g_autofree char *img = tpath("q2v.raw");
    const char *create[] = {"qemu-img", "create", "-f", "raw", img, "4M", NULL};
    g_assert_cmpint(run(NULL, create), ==, 0);
    g_assert_cmpint(qemu_io(NULL, img, "raw", "write -P 0xab 4096 65536", FALSE), ==, 0);
    g_assert_cmpint(qemu_io(NULL, img, "raw", "write -P 0xcd 1048575 3", FALSE), ==, 0);
    g_assert_cmpint(qemu_io(NULL, img, "raw", "write -z 8192 4096", FALSE), ==, 0);

    g_autoptr(GError) err = NULL;
    VmmBlockDev *bs = try_open(img, "raw", 0, &err);
    g_assert_no_error(err);
    g_assert_cmpuint(vmm_block_size(bs), ==, 4 * MiB);
    g_autofree guint8 *buf = g_malloc(2 * MiB);
    g_assert_true(vmm_block_pread(bs, 0, 2 * MiB, buf, &err));
    for (guint64 i = 0; i < 2 * MiB; i++) {
        guint8 want = 0;
        if (i >= 4096 && i < 4096 + 65536 && !(i >= 8192 && i < 12288))
            want = 0xab;
        if (i >= 1048575 && i < 1048578)
            want = 0xcd;
        if (buf[i] != want)
            g_error("byte %" G_GUINT64_FORMAT ": %#x, want %#x", i, buf[i], want);
    }
    vmm_block_unref(bs);
}

static void test_we_write_qemu_compares(void)
{
    if (!have_tools())
        return;
    g_autofree char *ours = tpath("ours.raw");
    g_autofree char *theirs = tpath("theirs.raw");
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) o = json_object_new();
    json_object_set_int_member(o, "size", (gint64)(4 * MiB));
    g_assert_true(vmm_block_create(ours, "raw", o, &err));
    g_assert_no_error(err);
    const char *create[] = {"qemu-img", "create", "-f", "raw", theirs, "4M", NULL};
    g_assert_cmpint(run(NULL, create), ==, 0);

    /* same "disk size" and virtual size as qemu-img's own new image */
    g_autofree char *info_ours = NULL, *info_theirs = NULL;
    const char *i1[] = {"qemu-img", "info", "--output=json", ours, NULL};
    const char *i2[] = {"qemu-img", "info", "--output=json", theirs, NULL};
    g_assert_cmpint(run(&info_ours, i1), ==, 0);
    g_assert_cmpint(run(&info_theirs, i2), ==, 0);
    const char *a = strstr(info_ours, "\"actual-size\"");
    const char *b = strstr(info_theirs, "\"actual-size\"");
    g_assert_nonnull(a);
    g_assert_nonnull(b);
    g_assert_cmpint(strcspn(a, ","), ==, strcspn(b, ","));
    g_assert_cmpint(strncmp(a, b, strcspn(a, ",")), ==, 0);

    VmmBlockDev *bs = try_open(ours, "raw", VMM_BDRV_O_RDWR, &err);
    g_assert_no_error(err);
    g_autofree guint8 *buf = g_malloc(65536);
    memset(buf, 0xab, 65536);
    g_assert_true(vmm_block_pwrite(bs, 4096, 65536, buf, 0, &err));
    memset(buf, 0x5c, 65536);
    g_assert_true(vmm_block_pwrite(bs, 3 * MiB + 100, 1000, buf, VMM_BDRV_REQ_FUA, &err));
    g_assert_true(vmm_block_pwrite_zeroes(bs, 8192, 4096, VMM_BDRV_REQ_MAY_UNMAP, &err));
    g_assert_no_error(err);
    vmm_block_unref(bs);

    g_assert_cmpint(qemu_io(NULL, theirs, "raw", "write -P 0xab 4096 65536", FALSE), ==, 0);
    g_assert_cmpint(qemu_io(NULL, theirs, "raw", "write -P 0x5c 3145828 1000", FALSE), ==, 0);
    g_assert_cmpint(qemu_io(NULL, theirs, "raw", "write -z 8192 4096", FALSE), ==, 0);
    g_autofree char *out = NULL;
    const char *cmp[] = {"qemu-img", "compare", "-f", "raw", "-F", "raw", ours, theirs, NULL};
    int rc = run(&out, cmp);
    if (rc)
        g_printerr("%s\n", out);
    g_assert_cmpint(rc, ==, 0);
    g_clear_pointer(&out, g_free);
    /* and qemu-io reads back what we wrote */
    g_assert_cmpint(qemu_io(&out, ours, "raw", "read -P 0x5c 3145828 1000", TRUE), ==, 0);
    g_assert_null(strstr(out, "Pattern verification failed"));
}

/* qemu-io holds a raw image read-write: it uses write and shares
 * everything (bytes 100, 101). */
static void test_qemu_holds_raw(void)
{
    if (!have_tools())
        return;
    g_autofree char *img = tpath("held.raw");
    const char *create[] = {"qemu-img", "create", "-f", "raw", img, "1M", NULL};
    g_assert_cmpint(run(NULL, create), ==, 0);
    Holder h;
    g_assert_true(holder_start(&h, img, "raw", 101));

    g_autoptr(GError) err = NULL;
    VmmBlockDev *bs = try_open(img, "raw", VMM_BDRV_O_RDWR, &err);
    g_assert_null(bs);
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(err->message, "Failed to get shared \"write\" lock"));
    g_autofree char *hint = g_strdup_printf("Is another process using the image [%s]?", img);
    g_assert_nonnull(strstr(err->message, hint));
    g_clear_error(&err);
    bs = try_open(img, "raw", VMM_BDRV_O_RDWR | VMM_BDRV_O_SHARE_RW, &err); /* both share: fine */
    g_assert_no_error(err);
    vmm_block_unref(bs);
    bs = try_open(img, "raw", 0, &err);
    g_assert_no_error(err);
    vmm_block_unref(bs);
    holder_stop(&h);

    bs = try_open(img, "raw", VMM_BDRV_O_RDWR, &err); /* and free again */
    g_assert_no_error(err);
    vmm_block_unref(bs);
}

/* qemu-io holds a qcow2 image: the qcow2 node takes write and resize and
 * shares neither (bytes 100, 101, 103, 201, 203). */
static void test_qemu_holds_qcow2(void)
{
    if (!have_tools())
        return;
    g_autofree char *img = tpath("held.qcow2");
    const char *create[] = {"qemu-img", "create", "-f", "qcow2", img, "1M", NULL};
    g_assert_cmpint(run(NULL, create), ==, 0);
    Holder h;
    g_assert_true(holder_start(&h, img, "qcow2", 201));

    g_autoptr(GError) err = NULL;
    VmmBlockDev *bs = try_open(img, "raw", VMM_BDRV_O_RDWR | VMM_BDRV_O_SHARE_RW, &err);
    g_assert_null(bs);
    g_assert_nonnull(strstr(err->message, "Failed to get \"write\" lock"));
    g_clear_error(&err);
    bs = try_open(img, "raw", 0, &err); /* a raw reader shares everything: allowed, as qemu-io -r -f raw */
    g_assert_no_error(err);
    vmm_block_unref(bs);
    bs = try_open(img, "raw", VMM_BDRV_O_INACTIVE, &err);
    g_assert_no_error(err);
    vmm_block_unref(bs);
    holder_stop(&h);
}

/* We hold a raw image read-write (bytes 100, 101, 201 as a QEMU guest
 * device): qemu-io cannot write, qemu-img info and qemu-io -r can read. */
static void test_we_hold_raw(void)
{
    if (!have_tools())
        return;
    g_autofree char *img = tpath("ours-held.raw");
    const char *create[] = {"qemu-img", "create", "-f", "raw", img, "1M", NULL};
    g_assert_cmpint(run(NULL, create), ==, 0);
    g_autoptr(GError) err = NULL;
    VmmBlockDev *bs = try_open(img, "raw", VMM_BDRV_O_RDWR, &err);
    g_assert_no_error(err);

    g_autofree char *out = NULL;
    g_assert_cmpint(qemu_io(&out, img, "raw", "write 0 512", FALSE), !=, 0);
    g_assert_nonnull(strstr(out, "Failed to get \"write\" lock"));
    g_clear_pointer(&out, g_free);
    const char *info[] = {"qemu-img", "info", img, NULL};
    g_assert_cmpint(run(&out, info), ==, 0);
    g_clear_pointer(&out, g_free);
    g_assert_cmpint(qemu_io(&out, img, "raw", "read 0 512", TRUE), ==, 0);
    g_clear_pointer(&out, g_free);
    /* as a qcow2 reader QEMU refuses to share our write */
    g_assert_cmpint(qemu_io(&out, img, "qcow2", "read 0 512", TRUE), !=, 0);
    vmm_block_unref(bs);

    /* locking=off: QEMU sees nothing */
    g_autoptr(JsonObject) o = json_object_new();
    json_object_set_string_member(o, "locking", "off");
    bs = vmm_block_open(img, "raw", o, VMM_BDRV_O_RDWR, &err);
    g_assert_no_error(err);
    g_clear_pointer(&out, g_free);
    g_assert_cmpint(qemu_io(&out, img, "raw", "write 0 512", FALSE), ==, 0);
    vmm_block_unref(bs);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_autoptr(GError) err = NULL;
    tmpdir = g_dir_make_tmp("blk-file-XXXXXX", &err);
    g_assert_no_error(err);
    g_test_add_func("/block-file/qemu-writes-we-read", test_qemu_writes_we_read);
    g_test_add_func("/block-file/we-write-qemu-compares", test_we_write_qemu_compares);
    g_test_add_func("/block-file/lock/qemu-holds-raw", test_qemu_holds_raw);
    g_test_add_func("/block-file/lock/qemu-holds-qcow2", test_qemu_holds_qcow2);
    g_test_add_func("/block-file/lock/we-hold-raw", test_we_hold_raw);
    int rc = g_test_run();
    GDir *d = g_dir_open(tmpdir, 0, NULL);
    const char *n;
    while (d && (n = g_dir_read_name(d))) {
        g_autofree char *p = g_build_filename(tmpdir, n, NULL);
        g_unlink(p);
    }
    if (d)
        g_dir_close(d);
    g_rmdir(tmpdir);
    g_free(tmpdir);
    return rc;
}
