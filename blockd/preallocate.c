/* The `preallocate` filter (QEMU 7.2's block/preallocate.c): placed between
 * a format and its protocol node, it extends the file by prealloc-size
 * (aligned to prealloc-align) whenever a write goes past the end of the file,
 * and cuts the file back to the real end of the data on close. It is active
 * only while its parent holds both WRITE and RESIZE (a format node opened
 * read-write); otherwise it passes everything through. */
#include "blockd/block.h"
#include "common/error.h"

#define SECTOR 512

typedef struct {
    guint64 align, size;
    GMutex lock;
    gboolean active;
    guint64 data_end; /* where the data ends: the node's visible size */
    guint64 file_end; /* where the file ends, preallocation included */
} PreallocState;

static const VmmOptKey prealloc_open_opts[] = {
    {"prealloc-align", VMM_OPT_SIZE, "on preallocation, align file length to this number, default 1M", "1M"},
    {"prealloc-size", VMM_OPT_SIZE, "how much to preallocate, default 128M", "128M"},
    {NULL, 0, NULL, NULL},
};

static guint64 align_up(guint64 n, guint64 a)
{
    return a > 1 ? (n + a - 1) / a * a : n;
}

static gboolean prealloc_open(VmmBlockDev *bs, JsonObject *options, int flags, GError **error)
{
    PreallocState s = {0};
    guint perm;

    (void)flags;
    if (!vmm_block_opt_size(options, "prealloc-align", 1024 * 1024, &s.align, error) ||
        !vmm_block_opt_size(options, "prealloc-size", 128 * 1024 * 1024, &s.size, error))
        return FALSE;
    if (s.align % SECTOR) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: prealloc-align parameter of preallocate filter is not aligned to %u", bs->filename, SECTOR);
        return FALSE;
    }
    guint32 file_align = bs->file->request_alignment;
    if (s.align == 0 || (file_align > 1 && s.align % file_align)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: prealloc-align parameter of preallocate filter is not aligned to underlying node "
                    "request alignment (%u)", bs->filename, file_align);
        return FALSE;
    }
    vmm_block_get_perm(bs, &perm, NULL);
    s.active = (perm & (VMM_BLK_PERM_WRITE | VMM_BLK_PERM_RESIZE)) == (VMM_BLK_PERM_WRITE | VMM_BLK_PERM_RESIZE);
    s.data_end = s.file_end = vmm_block_size(bs->file);
    PreallocState *st = g_new(PreallocState, 1);
    *st = s;
    g_mutex_init(&st->lock);
    bs->opaque = st;
    bs->size = s.data_end;
    return TRUE;
}

static void set_visible_size(VmmBlockDev *bs, guint64 size)
{
    __atomic_store_n(&bs->size, size, __ATOMIC_RELEASE);
}

/* Called before every write: moves the data end and, past the file end,
 * preallocates. A failed preallocation is not an error: the write itself
 * extends the file. */
static void handle_write(VmmBlockDev *bs, guint64 offset, guint64 bytes)
{
    PreallocState *s = bs->opaque;
    guint64 end = offset + bytes;

    g_mutex_lock(&s->lock);
    if (end > s->data_end) {
        s->data_end = end;
        set_visible_size(bs, end);
        if (s->active && end > s->file_end) {
            guint32 file_align = MAX(bs->file->request_alignment, 1u);
            guint64 start = align_up(s->file_end, file_align);
            guint64 pend = align_up(MAX(start, end) + s->size, MAX(s->align, (guint64)file_align));
            if (vmm_block_pwrite_zeroes(bs->file, start, pend - start, VMM_BDRV_REQ_NO_FALLBACK, NULL))
                s->file_end = pend;
            else
                s->file_end = MAX(s->file_end, vmm_block_size(bs->file));
        }
    }
    g_mutex_unlock(&s->lock);
}

/* Inactive: the visible size follows the file, which others may grow. */
static void follow_file(VmmBlockDev *bs)
{
    PreallocState *s = bs->opaque;
    if (s->active)
        return;
    g_mutex_lock(&s->lock);
    s->data_end = s->file_end = vmm_block_size(bs->file);
    set_visible_size(bs, s->data_end);
    g_mutex_unlock(&s->lock);
}

static gboolean prealloc_pread(VmmBlockDev *bs, guint64 offset, guint64 bytes, void *buf, int flags,
                               GError **error)
{
    (void)flags;
    return vmm_block_pread(bs->file, offset, bytes, buf, error);
}

static gboolean prealloc_pwrite(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf, int flags,
                                GError **error)
{
    handle_write(bs, offset, bytes);
    gboolean ok = vmm_block_pwrite(bs->file, offset, bytes, buf, flags, error);
    follow_file(bs);
    return ok;
}

static gboolean prealloc_pwrite_zeroes(VmmBlockDev *bs, guint64 offset, guint64 bytes, int flags,
                                       GError **error)
{
    handle_write(bs, offset, bytes);
    gboolean ok = vmm_block_pwrite_zeroes(bs->file, offset, bytes, flags, error);
    follow_file(bs);
    return ok;
}

static gboolean prealloc_pdiscard(VmmBlockDev *bs, guint64 offset, guint64 bytes, GError **error)
{
    return vmm_block_pdiscard(bs->file, offset, bytes, error);
}

static int prealloc_block_status(VmmBlockDev *bs, guint64 offset, guint64 bytes, guint64 *pnum, guint64 *map,
                                 VmmBlockDev **file, GError **error)
{
    int ret = vmm_block_status(bs->file, offset, bytes, pnum, map, file, error);
    if (ret >= 0 && *pnum == 0) {
        *pnum = bytes;
        return VMM_BLOCK_ZERO;
    }
    return ret < 0 ? -1 : ret & ~(VMM_BLOCK_EOF | VMM_BLOCK_ALLOCATED);
}

static gboolean prealloc_truncate(VmmBlockDev *bs, guint64 size, gboolean exact, VmmPrealloc prealloc,
                                  gboolean shrink_allowed, GError **error)
{
    PreallocState *s = bs->opaque;
    gboolean ok = TRUE;

    g_mutex_lock(&s->lock);
    if (s->active && size > s->data_end) {
        if (prealloc == VMM_PREALLOC_FALLOC && size <= s->file_end) {
            /* already preallocated: it becomes the user's */
            s->data_end = size;
            set_visible_size(bs, size);
            g_mutex_unlock(&s->lock);
            return TRUE;
        }
        if (s->file_end > s->data_end) {
            ok = vmm_block_truncate(bs->file, s->data_end, TRUE, VMM_PREALLOC_OFF, TRUE, error);
            if (ok)
                s->file_end = s->data_end;
        }
    }
    if (ok)
        ok = vmm_block_truncate(bs->file, size, exact, prealloc, shrink_allowed, error);
    if (ok) {
        s->data_end = s->file_end = size;
        set_visible_size(bs, size);
    } else {
        s->data_end = s->file_end = vmm_block_size(bs->file);
    }
    g_mutex_unlock(&s->lock);
    return ok;
}

static void prealloc_close(VmmBlockDev *bs)
{
    PreallocState *s = bs->opaque;

    if (!s)
        return;
    if (s->active && s->file_end > s->data_end)
        (void)vmm_block_truncate(bs->file, s->data_end, TRUE, VMM_PREALLOC_OFF, TRUE, NULL);
    g_mutex_clear(&s->lock);
    g_free(s);
    bs->opaque = NULL;
}

static gint64 prealloc_allocated_file_size(VmmBlockDev *bs)
{
    const VmmBlockDriver *d = bs->file->drv;
    return d->allocated_file_size ? d->allocated_file_size(bs->file) : -1;
}

static gboolean prealloc_has_zero_init(VmmBlockDev *bs)
{
    const VmmBlockDriver *d = bs->file->drv;
    return d->has_zero_init ? d->has_zero_init(bs->file) : FALSE;
}

const VmmBlockDriver vmm_preallocate_driver = {
    .format_name = "preallocate",
    .is_filter = TRUE,
    .open_opts = prealloc_open_opts,
    .open = prealloc_open,
    .close = prealloc_close,
    .pread = prealloc_pread,
    .pwrite = prealloc_pwrite,
    .pwrite_zeroes = prealloc_pwrite_zeroes,
    .pdiscard = prealloc_pdiscard,
    .block_status = prealloc_block_status,
    .truncate = prealloc_truncate,
    .allocated_file_size = prealloc_allocated_file_size,
    .has_zero_init = prealloc_has_zero_init,
    .supported_write_flags = VMM_BDRV_REQ_FUA,
};
