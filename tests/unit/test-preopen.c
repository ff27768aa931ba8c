/* blockd in a VM opens images only from the fds vmmd handed over
 * (blockd/preopen.c, consulted by the file driver): a qcow2 chain opens
 * through the table by the names the block layer resolves, a path not handed
 * over is refused (never opened), a read-only fd is not written. */
#include "blockd/block.h"
#include "blockd/preopen.h"

#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

static char *dir;

static char *make_chain(void)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *base = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *top = g_build_filename(dir, "top.qcow2", NULL);
    g_autoptr(JsonObject) o = json_object_new();
    json_object_set_int_member(o, "size", 1 << 20);
    g_assert_true(vmm_block_create(base, "raw", o, &err));
    json_object_set_string_member(o, "backing_file", "base.raw");
    json_object_set_string_member(o, "backing_fmt", "raw");
    g_assert_true(vmm_block_create(top, "qcow2", o, &err));
    g_assert_no_error(err);
    /* Data in the base, seen through the top. */
    VmmBlockDev *b = vmm_block_open(base, "raw", NULL, VMM_BDRV_O_RDWR, &err);
    g_assert_no_error(err);
    g_assert_true(vmm_block_pwrite(b, 0, 5, "hello", 0, &err));
    vmm_block_unref(b);
    return g_steal_pointer(&top);
}

static int open_fd(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC);
    g_assert_cmpint(fd, >=, 0);
    return fd;
}

static void test_chain_from_fds(void)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *top = make_chain();
    g_autofree char *base = g_build_filename(dir, "base.raw", NULL);
    /* From now on nothing is opened by path, as in blockd's sandbox. */
    vmm_block_preopen_set_strict(TRUE);
    VmmBlockDev *bs = vmm_block_open(top, "qcow2", NULL, VMM_BDRV_O_RDWR, &err);
    g_assert_null(bs);
    g_assert_nonnull(strstr(err->message, "Permission denied"));
    g_clear_error(&err);

    vmm_block_preopen_add(top, open_fd(top, O_RDWR));
    /* The backing file missing from the table: refused, not opened. */
    bs = vmm_block_open(top, "qcow2", NULL, VMM_BDRV_O_RDWR, &err);
    g_assert_null(bs);
    g_assert_nonnull(strstr(err->message, "Could not open backing file"));
    g_clear_error(&err);

    vmm_block_preopen_add(base, open_fd(base, O_RDONLY));
    bs = vmm_block_open(top, "qcow2", NULL, VMM_BDRV_O_RDWR, &err);
    g_assert_no_error(err);
    char buf[5];
    g_assert_true(vmm_block_pread(bs, 0, 5, buf, &err));
    g_assert_cmpmem(buf, 5, "hello", 5);
    g_assert_true(vmm_block_pwrite(bs, 4096, 5, "world", 0, &err));
    g_assert_true(vmm_block_flush(bs, &err));
    vmm_block_unref(bs);

    /* A read-only fd cannot serve a read-write open. */
    bs = vmm_block_open(base, "raw", NULL, VMM_BDRV_O_RDWR, &err);
    g_assert_null(bs);
    g_assert_nonnull(strstr(err->message, "Permission denied"));
    g_clear_error(&err);
    bs = vmm_block_open(base, "raw", NULL, 0, &err);
    g_assert_no_error(err);
    vmm_block_unref(bs);

    vmm_block_preopen_clear();
    vmm_block_preopen_set_strict(FALSE);
    g_unlink(top);
    g_unlink(base);
}

/* Without strict mode, paths not in the table open as usual. */
static void test_not_strict(void)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *top = make_chain();
    int fd;
    g_assert_false(vmm_block_preopen_open(top, O_RDONLY, &fd));
    VmmBlockDev *bs = vmm_block_open(top, "qcow2", NULL, 0, &err);
    g_assert_no_error(err);
    vmm_block_unref(bs);
    g_autofree char *base = g_build_filename(dir, "base.raw", NULL);
    g_unlink(top);
    g_unlink(base);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    dir = g_dir_make_tmp("preopen-XXXXXX", NULL);
    g_test_add_func("/preopen/chain-from-fds", test_chain_from_fds);
    g_test_add_func("/preopen/not-strict", test_not_strict);
    int rc = g_test_run();
    g_rmdir(dir);
    g_free(dir);
    return rc;
}
