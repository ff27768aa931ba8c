/* libFuzzer target for the qcow2 open and read path (blockd/qcow2*.c): the
 * input is an image file; it is opened read-only (no backing chain), read
 * through, mapped with block_status and checked. Any failure must be a
 * GError naming the file; crashes, hangs and sanitizer reports are bugs. */
#include "blockd/block.h"
#include "common/log.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define READ_LIMIT (8u << 20)   /* bytes of virtual disk read per input */
#define STATUS_STEPS 4096

static void expect_named(GError *err, const char *path)
{
    if (err && !strstr(err->message, path)) {
        fprintf(stderr, "error without the file name: %s\n", err->message);
        abort();
    }
}

static void read_through(VmmBlockDev *bs, const char *path)
{
    guint64 size = vmm_block_size(bs), end = MIN(size, (guint64)READ_LIMIT);
    static guint8 buf[65536];

    for (guint64 off = 0; off < end; off += sizeof(buf)) {
        g_autoptr(GError) err = NULL;
        if (!vmm_block_pread(bs, off, MIN(sizeof(buf), end - off), buf, &err)) {
            expect_named(err, path);
            break;
        }
    }
    guint64 off = 0;
    for (int i = 0; i < STATUS_STEPS && off < size; i++) {
        g_autoptr(GError) err = NULL;
        guint64 pnum = 0, map = 0;
        VmmBlockDev *file = NULL;
        int st = vmm_block_status(bs, off, size - off, &pnum, &map, &file, &err);
        if (st < 0) {
            expect_named(err, path);
            break;
        }
        if (pnum == 0 || pnum > size - off)
            abort();
        off += pnum;
    }
    if (bs->drv->check) {
        g_autoptr(GError) err = NULL;
        VmmCheckResult res;
        memset(&res, 0, sizeof(res));
        if (!bs->drv->check(bs, &res, 0, &err))
            expect_named(err, path);
    }
    if (bs->drv->snapshot_list) {
        g_autoptr(GError) err = NULL;
        GPtrArray *l = bs->drv->snapshot_list(bs, &err);
        if (l)
            g_ptr_array_unref(l);
    }
    if (bs->drv->info_specific) {
        JsonObject *o = bs->drv->info_specific(bs);
        if (o)
            json_object_unref(o);
    }
}

static void discard_message(const gchar *msg)
{
    (void)msg;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* check prints QEMU's per-cluster messages: keep the fuzzer's output readable */
    g_set_printerr_handler(discard_message);
    int fd = memfd_create("fuzz-qcow2", MFD_CLOEXEC);
    if (fd < 0)
        return 0;
    if (size && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);

    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) opts = json_object_new();
    json_object_set_string_member(opts, "locking", "off");
    VmmBlockDev *bs = vmm_block_open(path, "qcow2", opts, VMM_BDRV_O_NO_BACKING, &err);
    if (bs) {
        read_through(bs, path);
        vmm_block_unref(bs);
    } else {
        expect_named(err, path);
    }
    close(fd);
    return 0;
}
