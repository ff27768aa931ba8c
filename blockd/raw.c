/* The `raw` format driver: the image is the bytes of its file child, or a
 * window of them (offset and size options), as QEMU 7.2's raw-format.c. */
#include "blockd/block.h"
#include "common/error.h"
#include <string.h>

#define SECTOR 512

typedef struct {
    guint64 offset, size;
    gboolean has_size;
} RawState;

static const VmmOptKey raw_open_opts[] = {
    {"offset", VMM_OPT_SIZE, "offset in the disk where the image starts", NULL},
    {"size", VMM_OPT_SIZE, "virtual disk size", NULL},
    {NULL, 0, NULL, NULL},
};

static const VmmOptKey raw_create_opts[] = {
    {"preallocation", VMM_OPT_STRING, "Preallocation mode (allowed values: off, falloc, full)", NULL},
    {"size", VMM_OPT_SIZE, "Virtual disk size", NULL},
    {NULL, 0, NULL, NULL},
};

static int raw_probe(const guint8 *buf, gsize len, const char *filename)
{
    (void)buf;
    (void)len;
    (void)filename;
    return 1; /* anything is raw, as a last resort */
}

static gboolean raw_open(VmmBlockDev *bs, JsonObject *options, int flags, GError **error)
{
    RawState *s = g_new0(RawState, 1);
    gboolean has_offset;
    guint64 file_size = vmm_block_size(bs->file);

    (void)flags;
    has_offset = vmm_opts_has(options, "offset");
    s->has_size = vmm_opts_has(options, "size");
    if (!vmm_block_opt_size(options, "offset", 0, &s->offset, error) ||
        !vmm_block_opt_size(options, "size", 0, &s->size, error))
        goto fail;
    (void)has_offset;
    if (s->offset > file_size) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: Offset (%" G_GUINT64_FORMAT ") cannot be greater than size of the containing file (%"
                    G_GUINT64_FORMAT ")", bs->filename, s->offset, file_size);
        goto fail;
    }
    if (s->has_size) {
        if (s->size % SECTOR) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: Specified size is not multiple of %u",
                        bs->filename, SECTOR);
            goto fail;
        }
        if (s->offset + s->size > file_size || s->offset + s->size < s->offset) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: The sum of offset (%" G_GUINT64_FORMAT ") and size (%" G_GUINT64_FORMAT
                        ") has to be smaller or equal to the  actual size of the containing file (%"
                        G_GUINT64_FORMAT ")", bs->filename, s->offset, s->size, file_size);
            goto fail;
        }
    } else {
        s->size = file_size - s->offset;
    }
    bs->opaque = s;
    bs->size = s->size;
    return TRUE;
fail:
    g_free(s);
    return FALSE;
}

static void raw_close(VmmBlockDev *bs)
{
    g_free(bs->opaque);
    bs->opaque = NULL;
}

static guint64 raw_off(VmmBlockDev *bs)
{
    return ((RawState *)bs->opaque)->offset;
}

static gboolean raw_pread(VmmBlockDev *bs, guint64 offset, guint64 bytes, void *buf, int flags, GError **error)
{
    (void)flags;
    return vmm_block_pread(bs->file, offset + raw_off(bs), bytes, buf, error);
}

static gboolean raw_map_host(VmmBlockDev *bs, guint64 offset, guint64 bytes, gboolean write, int *fd,
                             guint64 *host_offset, guint64 *pnum)
{
    return vmm_block_map_host(bs->file, offset + raw_off(bs), bytes, write, fd, host_offset, pnum);
}

static gboolean raw_pwrite(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf, int flags,
                           GError **error)
{
    return vmm_block_pwrite(bs->file, offset + raw_off(bs), bytes, buf, flags, error);
}

static gboolean raw_pwrite_zeroes(VmmBlockDev *bs, guint64 offset, guint64 bytes, int flags, GError **error)
{
    return vmm_block_pwrite_zeroes(bs->file, offset + raw_off(bs), bytes, flags, error);
}

static gboolean raw_allocate(VmmBlockDev *bs, guint64 offset, guint64 bytes, GError **error)
{
    return vmm_block_allocate(bs->file, offset + raw_off(bs), bytes, error);
}

static gboolean raw_pdiscard(VmmBlockDev *bs, guint64 offset, guint64 bytes, GError **error)
{
    return vmm_block_pdiscard(bs->file, offset + raw_off(bs), bytes, error);
}

static int raw_block_status(VmmBlockDev *bs, guint64 offset, guint64 bytes, guint64 *pnum, guint64 *map,
                            VmmBlockDev **file, GError **error)
{
    int ret = vmm_block_status(bs->file, offset + raw_off(bs), bytes, pnum, map, file, error);
    if (ret >= 0 && *pnum == 0) {
        /* the window ends past the file's (sector-rounded) end: zeroes */
        *pnum = bytes;
        *map = offset + raw_off(bs);
        *file = bs->file;
        return VMM_BLOCK_ZERO | VMM_BLOCK_OFFSET_VALID;
    }
    return ret < 0 ? -1 : ret & ~(VMM_BLOCK_EOF | VMM_BLOCK_ALLOCATED);
}

static gboolean raw_truncate(VmmBlockDev *bs, guint64 size, gboolean exact, VmmPrealloc prealloc,
                             gboolean shrink_allowed, GError **error)
{
    RawState *s = bs->opaque;

    if (s->has_size) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED, "%s: Cannot resize fixed-size raw disks",
                    bs->filename);
        return FALSE;
    }
    if (G_MAXINT64 - size < s->offset) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: Disk size too large for the chosen offset",
                    bs->filename);
        return FALSE;
    }
    if (!vmm_block_truncate(bs->file, size + s->offset, exact, prealloc, shrink_allowed, error))
        return FALSE;
    s->size = size;
    __atomic_store_n(&bs->size, size, __ATOMIC_RELEASE);
    return TRUE;
}

static gint64 raw_allocated_file_size(VmmBlockDev *bs)
{
    const VmmBlockDriver *d = bs->file->drv;
    return d->allocated_file_size ? d->allocated_file_size(bs->file) : -1;
}

static gboolean raw_has_zero_init(VmmBlockDev *bs)
{
    const VmmBlockDriver *d = bs->file->drv;
    return d->has_zero_init ? d->has_zero_init(bs->file) : FALSE;
}

static gboolean raw_create(const char *filename, VmmBlockDev *file, JsonObject *opts, GError **error)
{
    VmmPrealloc prealloc = VMM_PREALLOC_OFF;
    const char *p = vmm_opts_get_string(opts, "preallocation", NULL);

    if (p && !vmm_parse_prealloc(p, &prealloc, error))
        return FALSE;
    if (prealloc == VMM_PREALLOC_METADATA) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED, "%s: Unsupported preallocation mode: metadata",
                    filename);
        return FALSE;
    }
    guint64 size;
    if (!vmm_block_opt_size(opts, "size", 0, &size, error))
        return FALSE;
    return vmm_block_truncate(file, size, TRUE, prealloc, TRUE, error);
}

const VmmBlockDriver vmm_raw_driver = {
    .format_name = "raw",
    .create_opts = raw_create_opts,
    .open_opts = raw_open_opts,
    .probe = raw_probe,
    .open = raw_open,
    .close = raw_close,
    .create = raw_create,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .pwrite_zeroes = raw_pwrite_zeroes,
    .pdiscard = raw_pdiscard,
    .allocate = raw_allocate,
    .block_status = raw_block_status,
    .map_host = raw_map_host,
    .truncate = raw_truncate,
    .allocated_file_size = raw_allocated_file_size,
    .has_zero_init = raw_has_zero_init,
    .supported_write_flags = VMM_BDRV_REQ_FUA,
};
