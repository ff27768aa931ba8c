/* The `file` protocol driver: a regular file (or a host block device) on
 * pread/pwrite, fallocate and SEEK_DATA/SEEK_HOLE, with QEMU 7.2's image
 * locking (block/file-posix.c) so that QEMU's processes and ours see each
 * other's locks.
 *
 * Requests are synchronous; concurrency comes from the callers' threads
 * (aio=threads). aio=native and aio=io_uring are accepted for compatibility
 * and run the same way. */
#include "blockd/block.h"
#include "blockd/preopen.h"
#include "common/error.h"
#include "common/log.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef FS_NOCOW_FL
#define FS_NOCOW_FL 0x00800000
#endif
#ifndef NFS_SUPER_MAGIC
#define NFS_SUPER_MAGIC 0x6969
#endif
#ifndef TMPFS_MAGIC
#define TMPFS_MAGIC 0x01021994
#endif

/* QEMU's lock byte layout: libvirt owns byte 0; QEMU byte 100+N ("I use
 * permission N") and 200+N ("I do not share permission N"). */
#define LOCK_PERM_BASE 100
#define LOCK_SHARED_BASE 200
#define SECTOR 512
#define MAX_BLOCKSIZE 4096
#define ZERO_CHUNK (1024 * 1024)
#define DEFAULT_EXTENT_SIZE_HINT (1024 * 1024)
/* Writes with VMM_BDRV_REQ_ALLOCATE reserve their range first from this size
 * on; below it the extra fallocate call costs more than it saves. */
#define ALLOCATE_HINT_MIN (64 * 1024)

typedef struct {
    int fd;
    int open_flags;
    gboolean use_lock;
    gboolean posix_locks;          /* no OFD locks on this host */
    GMutex lock_mutex;
    guint locked_perm, locked_shared; /* bytes this fd holds */
    gboolean no_flush;
    gboolean is_block_dev;
    gint has_zero_range;           /* atomic: FALLOC_FL_ZERO_RANGE works here */
    gint has_punch;
    gint has_falloc;               /* atomic: VMM_BDRV_REQ_ALLOCATE reserves extents */
    gint page_cache_inconsistent;  /* errno of a failed fdatasync */
} FileState;

static const VmmOptKey file_open_opts[] = {
    {"filename", VMM_OPT_STRING, "File name of the image", NULL},
    {"aio", VMM_OPT_STRING, "host AIO implementation (threads, native, io_uring)", NULL},
    {"aio-max-batch", VMM_OPT_NUMBER, "AIO max batch size (0 = auto handled by AIO backend, default: 0)", NULL},
    {"locking", VMM_OPT_STRING, "file locking mode (on/off/auto, default: auto)", NULL},
    {"pr-manager", VMM_OPT_STRING, "id of persistent reservation manager object (default: none)", NULL},
    {"drop-cache", VMM_OPT_BOOL, "invalidate page cache during live migration (default: on)", NULL},
    {"x-check-cache-dropped", VMM_OPT_BOOL, "check that page cache was dropped on live migration (default: off)", NULL},
    {NULL, 0, NULL, NULL},
};

static const VmmOptKey file_create_opts[] = {
    {"extent_size_hint", VMM_OPT_SIZE, "Extent size hint for the image file, 0 to disable", NULL},
    {"nocow", VMM_OPT_BOOL, "Turn off copy-on-write (valid only on btrfs)", NULL},
    {"preallocation", VMM_OPT_STRING, "Preallocation mode (allowed values: off, falloc, full)", NULL},
    {"size", VMM_OPT_SIZE, "Virtual disk size", NULL},
    {NULL, 0, NULL, NULL},
};

/* ---------------------------------------------------------------------------
 * Locking
 * ------------------------------------------------------------------------- */

static gint ofd_state = -1; /* -1 unknown, 0 no, 1 yes */

void vmm_block_file_set_ofd_available(gboolean available)
{
    g_atomic_int_set(&ofd_state, available ? 1 : 0);
}

static gboolean ofd_locks_available(void)
{
    int state = g_atomic_int_get(&ofd_state);
    if (state >= 0)
        return state;
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET};
    gboolean ok = fd >= 0 && (fcntl(fd, F_OFD_GETLK, &fl) == 0 || errno != EINVAL);
    if (fd >= 0)
        close(fd);
    g_atomic_int_set(&ofd_state, ok ? 1 : 0);
    return ok;
}

static int lock_cmd(FileState *s, gboolean test)
{
    if (s->posix_locks)
        return test ? F_GETLK : F_SETLK;
    return test ? F_OFD_GETLK : F_OFD_SETLK;
}

static int lock_byte(FileState *s, int byte, short type)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};
    return fcntl(s->fd, lock_cmd(s, FALSE), &fl) == -1 ? -errno : 0;
}

/* 0 if nobody else holds BYTE, -EAGAIN if somebody does. */
static int test_byte(FileState *s, int byte)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};
    if (fcntl(s->fd, lock_cmd(s, TRUE), &fl) == -1)
        return -errno;
    return fl.l_type == F_UNLCK ? 0 : -EAGAIN;
}

static gboolean lock_error(GError **error, int err, const char *what, const char *filename)
{
    /* EAGAIN/EACCES: someone holds the byte, the common case: no strerror */
    if (err == EAGAIN || err == EACCES)
        g_set_error(error, VMM_ERROR, VMM_ERROR_PERMISSION, "%s\nIs another process using the image [%s]?",
                    what, filename);
    else
        g_set_error(error, VMM_ERROR, VMM_ERROR_IO, "%s: %s\nIs another process using the image [%s]?",
                    what, g_strerror(err), filename);
    return FALSE;
}

/* QEMU's raw_apply_lock_bytes: takes the bytes of PERM and of UNSHARED
 * (shared locks); with UNLOCK also drops the bytes no longer needed. */
static gboolean apply_lock_bytes(FileState *s, guint perm, guint unshared, gboolean unlock,
                                 const char *filename, GError **error)
{
    for (int pass = 0; pass < 2; pass++) {
        guint want = pass ? unshared : perm;
        guint *locked = pass ? &s->locked_shared : &s->locked_perm;
        int base = pass ? LOCK_SHARED_BASE : LOCK_PERM_BASE;
        for (int i = 0; (1u << i) <= VMM_BLK_PERM_ALL; i++) {
            guint bit = 1u << i;
            int ret;
            if ((want & bit) && !(*locked & bit)) {
                ret = lock_byte(s, base + i, F_RDLCK);
                if (ret) {
                    g_autofree char *msg = g_strdup_printf("Failed to lock byte %d", base + i);
                    return lock_error(error, -ret, msg, filename);
                }
                *locked |= bit;
            } else if (unlock && (*locked & bit) && !(want & bit)) {
                ret = lock_byte(s, base + i, F_UNLCK);
                if (ret)
                    return vmm_set_errno(error, -ret, "%s: Failed to unlock byte %d", filename, base + i);
                *locked &= ~bit;
            }
        }
    }
    return TRUE;
}

/* QEMU's raw_check_lock_bytes: nobody else may refuse to share what we
 * use, nor use what we refuse to share. */
static gboolean check_lock_bytes(FileState *s, guint perm, guint shared, const char *filename,
                                 GError **error)
{
    for (int i = 0; (1u << i) <= VMM_BLK_PERM_ALL; i++) {
        guint bit = 1u << i;
        int ret = (perm & bit) ? test_byte(s, LOCK_SHARED_BASE + i) : 0;
        if (ret) {
            g_autofree char *msg = g_strdup_printf("Failed to get \"%s\" lock", vmm_block_perm_name(bit));
            return lock_error(error, -ret, msg, filename);
        }
    }
    for (int i = 0; (1u << i) <= VMM_BLK_PERM_ALL; i++) {
        guint bit = 1u << i;
        int ret = !(shared & bit) ? test_byte(s, LOCK_PERM_BASE + i) : 0;
        if (ret) {
            g_autofree char *msg = g_strdup_printf("Failed to get shared \"%s\" lock", vmm_block_perm_name(bit));
            return lock_error(error, -ret, msg, filename);
        }
    }
    return TRUE;
}

/* Takes the locks for the node's permissions: first the union of old and
 * new (so there is no window without them), then checks the others', then
 * drops what is no longer needed. On failure the old state is restored. */
static gboolean file_apply_perm(VmmBlockDev *bs, GError **error)
{
    FileState *s = bs->opaque;
    guint perm, shared;
    gboolean ok = TRUE;

    if (!s->use_lock || (bs->open_flags & VMM_BDRV_O_INACTIVE))
        return TRUE;
    vmm_block_get_perm(bs, &perm, &shared);
    perm &= VMM_BLK_PERM_ALL;
    guint unshared = ~shared & VMM_BLK_PERM_ALL;
    g_mutex_lock(&s->lock_mutex);
    guint old_perm = s->locked_perm, old_unshared = s->locked_shared;
    ok = apply_lock_bytes(s, old_perm | perm, old_unshared | unshared, FALSE, bs->filename, error) &&
         check_lock_bytes(s, perm, shared, bs->filename, error);
    if (ok)
        ok = apply_lock_bytes(s, perm, unshared, TRUE, bs->filename, error);
    else
        apply_lock_bytes(s, old_perm, old_unshared, TRUE, bs->filename, NULL);
    g_mutex_unlock(&s->lock_mutex);
    return ok;
}

static gboolean file_set_perm(VmmBlockDev *bs, gboolean write, gboolean share_write, GError **error)
{
    (void)write;
    (void)share_write; /* the node's full permission set is what counts */
    return file_apply_perm(bs, error);
}

/* ---------------------------------------------------------------------------
 * Opening
 * ------------------------------------------------------------------------- */

static const char *strip_file_prefix(const char *filename)
{
    return g_str_has_prefix(filename, "file:") ? filename + strlen("file:") : filename;
}

static gboolean io_aligned(int fd, void *buf, size_t len)
{
    ssize_t ret = pread(fd, buf, len, 0);
    /* Linux says EINVAL for a misaligned O_DIRECT read; other errors are not
     * about alignment */
    return ret >= 0 || errno != EINVAL;
}

/* QEMU's raw_probe_alignment for O_DIRECT: the device's logical block size,
 * else the smallest read size that works (1 meaning "cannot tell": 4096). */
static guint32 probe_alignment(int fd)
{
    struct statfs sfs;
    unsigned int sector = 0;
    size_t max_align = MAX((size_t)MAX_BLOCKSIZE, (size_t)sysconf(_SC_PAGESIZE));
    static const size_t alignments[] = {1, 512, 1024, 2048, 4096};

    if (fstatfs(fd, &sfs) == 0 && sfs.f_type == NFS_SUPER_MAGIC)
        return 1;
    if (ioctl(fd, BLKSSZGET, &sector) == 0 && sector)
        return sector;
    struct {
        guint32 d_mem, d_miniosz, d_maxiosz;
    } da;
    if (ioctl(fd, _IOR('X', 30, typeof(da)), &da) == 0 && da.d_miniosz)
        return da.d_miniosz; /* XFS_IOC_DIOINFO */
    void *buf = NULL;
    if (posix_memalign(&buf, max_align, max_align))
        return MAX_BLOCKSIZE;
    guint32 align = 0;
    for (guint i = 0; i < G_N_ELEMENTS(alignments) && !align; i++)
        if (io_aligned(fd, buf, alignments[i]))
            align = alignments[i] != 1 ? alignments[i] : max_align;
    free(buf);
    return align ? align : MAX_BLOCKSIZE;
}

static guint64 round_up_sector(guint64 n)
{
    return (n + SECTOR - 1) / SECTOR * SECTOR;
}

/* The node's length as QEMU reports it: whole sectors. */
static gboolean refresh_size(VmmBlockDev *bs, GError **error)
{
    FileState *s = bs->opaque;
    struct stat st;

    if (fstat(s->fd, &st) < 0)
        return vmm_set_errno(error, errno, "%s: Could not stat file", bs->filename);
    guint64 size = (guint64)st.st_size;
    if (S_ISBLK(st.st_mode)) {
        off_t end = lseek(s->fd, 0, SEEK_END);
        if (end < 0)
            return vmm_set_errno(error, errno, "%s: Could not get the device size", bs->filename);
        size = (guint64)end;
    }
    __atomic_store_n(&bs->size, round_up_sector(size), __ATOMIC_RELEASE);
    return TRUE;
}

static void grow_size(VmmBlockDev *bs, guint64 end)
{
    guint64 want = round_up_sector(end);
    guint64 cur = __atomic_load_n(&bs->size, __ATOMIC_ACQUIRE);
    while (cur < want &&
           !__atomic_compare_exchange_n(&bs->size, &cur, want, FALSE, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        ;
}

static gboolean parse_locking(JsonObject *options, FileState *s, const char *filename, GError **error)
{
    const char *locking = vmm_opts_get_string(options, "locking", NULL);
    gboolean b;

    if (!locking && vmm_opts_has(options, "locking")) {
        /* a JSON boolean */
        locking = vmm_opts_get_bool(options, "locking", FALSE) ? "on" : "off";
    }
    if (!locking || !strcmp(locking, "auto")) {
        s->use_lock = ofd_locks_available();
    } else if (vmm_parse_bool(NULL, NULL, locking, &b, NULL)) {
        s->use_lock = b;
        if (b && !ofd_locks_available()) {
            fprintf(stderr, "warning: File lock requested but OFD locking syscall is unavailable, "
                            "falling back to POSIX file locks\n"
                            "Due to the implementation, locks can be lost unexpectedly.\n");
            s->posix_locks = TRUE;
        }
    } else {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: invalid parameter value for 'locking': %s",
                    filename, locking);
        return FALSE;
    }
    return TRUE;
}

static gboolean parse_aio(JsonObject *options, int flags, const char *filename, GError **error)
{
    const char *aio = vmm_opts_get_string(options, "aio", "threads");

    if (!strcmp(aio, "native")) {
        if (!(flags & VMM_BDRV_O_NOCACHE)) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: aio=native was specified, but it requires cache.direct=on, which was not specified.",
                        filename);
            return FALSE;
        }
    } else if (strcmp(aio, "threads") && strcmp(aio, "io_uring")) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: invalid parameter value for 'aio': %s (threads, native or io_uring)", filename, aio);
        return FALSE;
    }
    if (vmm_opts_get_string(options, "pr-manager", NULL)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "%s: pr-manager is not supported (no persistent reservation managers)", filename);
        return FALSE;
    }
    return TRUE;
}

/* Reserving extents ahead of a write helps filesystems with delayed
 * allocation; on tmpfs it would zero pages that the write then overwrites,
 * and on NFS it is one more round trip. */
static gboolean falloc_pays_off(int fd)
{
    struct statfs sfs;
    if (fstatfs(fd, &sfs) < 0)
        return FALSE;
    return sfs.f_type != TMPFS_MAGIC && sfs.f_type != NFS_SUPER_MAGIC;
}

static int open_image_fd(const char *path, int flags, gboolean auto_read_only, gboolean *read_only)
{
    int oflags = O_CLOEXEC | ((flags & VMM_BDRV_O_NOCACHE) ? O_DIRECT : 0);
    int fd;

    *read_only = !(flags & VMM_BDRV_O_RDWR);
    /* blockd in a VM: the images are fds from vmmd (blockd/preopen.h). */
    if (vmm_block_preopen_open(path, oflags | (*read_only ? O_RDONLY : O_RDWR), &fd))
        return fd;
    do {
        fd = open(path, oflags | (*read_only ? O_RDONLY : O_RDWR));
    } while (fd < 0 && errno == EINTR);
    if (fd < 0 && !*read_only && auto_read_only && (errno == EACCES || errno == EROFS || errno == EPERM)) {
        *read_only = TRUE;
        fd = open(path, oflags | O_RDONLY);
    }
    if (fd < 0 && errno == EROFS)
        errno = EACCES;
    return fd;
}

static gboolean file_open(VmmBlockDev *bs, JsonObject *options, int flags, GError **error)
{
    FileState *s = g_new0(FileState, 1);
    const char *path = strip_file_prefix(vmm_opts_get_string(options, "filename", bs->filename));
    gboolean read_only;
    struct stat st;

    s->fd = -1;
    g_mutex_init(&s->lock_mutex);
    g_atomic_int_set(&s->has_zero_range, 1);
    g_atomic_int_set(&s->has_punch, 1);
    bs->opaque = s;
    if (!parse_aio(options, flags, bs->filename, error) || !parse_locking(options, s, bs->filename, error))
        goto fail;

    s->fd = open_image_fd(path, flags, vmm_opts_get_bool(options, "auto-read-only", FALSE), &read_only);
    if (s->fd < 0) {
        vmm_set_errno(error, errno, "Could not open '%s'", path);
        goto fail;
    }
    bs->read_only = read_only;
    if (read_only)
        bs->open_flags &= ~VMM_BDRV_O_RDWR;
    if (fstat(s->fd, &st) < 0) {
        vmm_set_errno(error, errno, "%s: Could not stat file", bs->filename);
        goto fail;
    }
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "'file' driver requires '%s' to be a regular file", bs->filename);
        goto fail;
    }
    s->is_block_dev = S_ISBLK(st.st_mode);
    g_atomic_int_set(&s->has_falloc, !s->is_block_dev && falloc_pays_off(s->fd));
    s->open_flags = fcntl(s->fd, F_GETFL);
    s->no_flush = (flags & VMM_BDRV_O_NO_FLUSH) != 0;
    bs->request_alignment = (flags & VMM_BDRV_O_NOCACHE) ? probe_alignment(s->fd) : 1;
    if (!refresh_size(bs, error) || !file_apply_perm(bs, error))
        goto fail;
    return TRUE;

fail:
    if (s->fd >= 0)
        close(s->fd);
    g_mutex_clear(&s->lock_mutex);
    g_free(s);
    bs->opaque = NULL;
    return FALSE;
}

static void file_close(VmmBlockDev *bs)
{
    FileState *s = bs->opaque;
    if (!s)
        return;
    /* closing the descriptor releases its OFD locks */
    if (s->fd >= 0)
        close(s->fd);
    g_mutex_clear(&s->lock_mutex);
    g_free(s);
    bs->opaque = NULL;
}

/* ---------------------------------------------------------------------------
 * I/O
 * ------------------------------------------------------------------------- */

/* Past the end of a regular file the map still holds: a splice stops at
 * EOF and the caller pads with zeroes, as file_pread does. */
static gboolean file_map_host(VmmBlockDev *bs, guint64 offset, guint64 bytes, gboolean write, int *fd,
                              guint64 *host_offset, guint64 *pnum)
{
    FileState *s = bs->opaque;
    if (s->open_flags & O_DIRECT)
        return FALSE;
    (void)write;   /* the generic layer checked the range is inside the file */
    *fd = s->fd;
    *host_offset = offset;
    *pnum = bytes;
    return TRUE;
}

static gboolean file_pread(VmmBlockDev *bs, guint64 offset, guint64 bytes, void *buf, int flags,
                           GError **error)
{
    FileState *s = bs->opaque;
    guint64 done = 0;

    (void)flags;
    while (done < bytes) {
        ssize_t n = pread(s->fd, (guint8 *)buf + done, bytes - done, (off_t)(offset + done));
        if (n < 0 && errno == EINTR)
            continue;
        /* O_DIRECT short reads only happen at EOF; the next one is unaligned */
        if (n < 0 && errno == EINVAL && (s->open_flags & O_DIRECT) && done > 0)
            break;
        if (n < 0)
            return vmm_set_errno(error, errno, "%s: read of %" G_GUINT64_FORMAT " bytes at offset %" G_GUINT64_FORMAT,
                                 bs->filename, bytes, offset);
        if (n == 0)
            break;
        done += (guint64)n;
    }
    if (done < bytes)
        memset((guint8 *)buf + done, 0, bytes - done); /* past the end of the file */
    return TRUE;
}

static ssize_t write_some(FileState *s, const void *buf, size_t len, off_t offset, gboolean fua)
{
#ifdef RWF_DSYNC
    if (fua) {
        struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
        ssize_t n = pwritev2(s->fd, &iov, 1, offset, RWF_DSYNC);
        if (n >= 0 || (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL))
            return n;
    }
#endif
    return pwrite(s->fd, buf, len, offset);
}

static gboolean file_flush(VmmBlockDev *bs, GError **error);
static int do_fallocate(int fd, int mode, guint64 offset, guint64 len);

/* VMM_BDRV_REQ_ALLOCATE: one fallocate reserves the whole range, where the
 * write alone would make ext4 reserve and map it page by page. Mode 0 leaves
 * any data already there untouched, so a wrong hint costs only the call;
 * errors are left for the write itself to meet (ENOSPC) or ignored. */
static void allocate_before_write(FileState *s, guint64 offset, guint64 bytes)
{
    if (bytes < ALLOCATE_HINT_MIN || !g_atomic_int_get(&s->has_falloc))
        return;
    if (do_fallocate(s->fd, 0, offset, bytes) == -ENOTSUP)
        g_atomic_int_set(&s->has_falloc, 0);
}

static gboolean file_pwrite(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf, int flags,
                            GError **error)
{
    FileState *s = bs->opaque;
    gboolean fua = (flags & VMM_BDRV_REQ_FUA) && !s->no_flush;
    guint64 done = 0;

    if (flags & VMM_BDRV_REQ_ALLOCATE)
        allocate_before_write(s, offset, bytes);
    while (done < bytes) {
        ssize_t n = write_some(s, (const guint8 *)buf + done, bytes - done, (off_t)(offset + done), fua);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return vmm_set_errno(error, errno, "%s: write of %" G_GUINT64_FORMAT " bytes at offset %" G_GUINT64_FORMAT,
                                 bs->filename, bytes, offset);
        if (n == 0)
            return vmm_set_errno(error, ENOSPC, "%s: write at offset %" G_GUINT64_FORMAT, bs->filename,
                                 offset + done);
        done += (guint64)n;
    }
    grow_size(bs, offset + bytes);
#ifndef RWF_DSYNC
    if (fua && !file_flush(bs, error))
        return FALSE;
#endif
    return TRUE;
}

static int do_fallocate(int fd, int mode, guint64 offset, guint64 len)
{
    while (fallocate(fd, mode, (off_t)offset, (off_t)len) < 0) {
        if (errno != EINTR)
            return (errno == ENODEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == ENOTTY)
                       ? -ENOTSUP
                       : -errno;
    }
    return 0;
}

static gboolean write_zero_buffers(VmmBlockDev *bs, guint64 offset, guint64 bytes, GError **error)
{
    FileState *s = bs->opaque;
    gsize cap = (gsize)MIN(bytes, (guint64)ZERO_CHUNK);
    void *zero = NULL;
    gboolean ok = TRUE;

    cap = MAX((cap + MAX_BLOCKSIZE - 1) / MAX_BLOCKSIZE * MAX_BLOCKSIZE, (gsize)MAX_BLOCKSIZE);
    if (posix_memalign(&zero, MAX_BLOCKSIZE, cap))
        return vmm_set_errno(error, ENOMEM, "%s: zero buffer", bs->filename);
    memset(zero, 0, cap);
    for (guint64 done = 0; ok && done < bytes;) {
        guint64 n = MIN(bytes - done, (guint64)cap);
        ssize_t w = pwrite(s->fd, zero, n, (off_t)(offset + done));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            ok = vmm_set_errno(error, w < 0 ? errno : ENOSPC, "%s: writing zeroes at offset %" G_GUINT64_FORMAT,
                               bs->filename, offset + done);
        else
            done += (guint64)w;
    }
    free(zero);
    if (ok)
        grow_size(bs, offset + bytes);
    return ok;
}

static gboolean zeroes_regular(VmmBlockDev *bs, guint64 offset, guint64 bytes, int flags, GError **error)
{
    FileState *s = bs->opaque;
    struct stat st;
    int ret = -ENOTSUP;

    if (fstat(s->fd, &st) < 0)
        return vmm_set_errno(error, errno, "%s: Could not stat file", bs->filename);
    guint64 eof = (guint64)st.st_size;
    guint64 end = offset + bytes;

    /* MAY_UNMAP: punch what lies inside the file; what lies past its end
     * is extended below like any other zero write. */
    if ((flags & VMM_BDRV_REQ_MAY_UNMAP) && g_atomic_int_get(&s->has_punch) && offset < eof) {
        guint64 in_end = MIN(end, eof);
        ret = do_fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, in_end - offset);
        if (ret == 0) {
            if (end <= eof)
                return TRUE;
            offset = in_end;
            bytes = end - in_end;
        } else if (ret == -ENOTSUP) {
            g_atomic_int_set(&s->has_punch, 0);
        } else if (ret != -EINVAL && ret != -EBUSY) {
            return vmm_set_errno(error, -ret, "%s: punching a hole at offset %" G_GUINT64_FORMAT, bs->filename, offset);
        }
    }
    if (g_atomic_int_get(&s->has_zero_range)) {
        ret = do_fallocate(s->fd, FALLOC_FL_ZERO_RANGE, offset, bytes);
        if (ret == 0) {
            grow_size(bs, end);
            return TRUE;
        }
        if (ret == -ENOTSUP || ret == -EINVAL)
            g_atomic_int_set(&s->has_zero_range, 0);
        else
            return vmm_set_errno(error, -ret, "%s: zeroing at offset %" G_GUINT64_FORMAT, bs->filename, offset);
    }
    /* No ZERO_RANGE (tmpfs, old kernels): punch, then allocate back */
    if (g_atomic_int_get(&s->has_punch)) {
        ret = offset < eof ? do_fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset,
                                          MIN(end, eof) - offset)
                           : 0;
        if (ret == 0)
            ret = do_fallocate(s->fd, 0, offset, bytes);
        if (ret == 0) {
            grow_size(bs, end);
            return TRUE;
        }
    }
    if (flags & VMM_BDRV_REQ_NO_FALLBACK) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED, "%s: no fast way to write zeroes (%s)",
                    bs->filename, g_strerror(-ret));
        return FALSE;
    }
    return write_zero_buffers(bs, offset, bytes, error);
}

static gboolean file_pwrite_zeroes(VmmBlockDev *bs, guint64 offset, guint64 bytes, int flags, GError **error)
{
    FileState *s = bs->opaque;
    gboolean ok;

    if (s->is_block_dev) {
        guint64 range[2] = {offset, bytes};
        if (flags & VMM_BDRV_REQ_NO_FALLBACK) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                        "%s: no fast way to write zeroes on a block device", bs->filename);
            return FALSE;
        }
        ok = ioctl(s->fd, BLKZEROOUT, range) == 0 || write_zero_buffers(bs, offset, bytes, error);
    } else {
        ok = zeroes_regular(bs, offset, bytes, flags, error);
    }
    if (ok && (flags & VMM_BDRV_REQ_FUA) && !s->no_flush)
        ok = file_flush(bs, error);
    return ok;
}

/* Reserves the blocks of the range (fallocate mode 0: data already there
 * stays), which may grow the file; where that does not pay off or work,
 * there is nothing to do: the range reads the same either way. */
static gboolean file_allocate(VmmBlockDev *bs, guint64 offset, guint64 bytes, GError **error)
{
    FileState *s = bs->opaque;

    if (s->is_block_dev || !g_atomic_int_get(&s->has_falloc))
        return TRUE;
    int ret = do_fallocate(s->fd, 0, offset, bytes);
    if (ret == -ENOTSUP || ret == -EINVAL) {
        g_atomic_int_set(&s->has_falloc, 0);
        return TRUE;
    }
    if (ret < 0)
        return vmm_set_errno(error, -ret, "%s: reserving %" G_GUINT64_FORMAT " bytes at offset %" G_GUINT64_FORMAT,
                             bs->filename, bytes, offset);
    grow_size(bs, offset + bytes);
    return TRUE;
}

static gboolean file_pdiscard(VmmBlockDev *bs, guint64 offset, guint64 bytes, GError **error)
{
    FileState *s = bs->opaque;

    if (s->is_block_dev) {
        guint64 range[2] = {offset, bytes};
        if (ioctl(s->fd, BLKDISCARD, range) < 0 && errno != EOPNOTSUPP && errno != ENOTTY)
            return vmm_set_errno(error, errno, "%s: discard at offset %" G_GUINT64_FORMAT, bs->filename, offset);
        return TRUE;
    }
    int ret = do_fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, bytes);
    if (ret && ret != -ENOTSUP && ret != -EINVAL)
        return vmm_set_errno(error, -ret, "%s: discard at offset %" G_GUINT64_FORMAT, bs->filename, offset);
    return TRUE; /* discard is advisory */
}

static gboolean file_flush(VmmBlockDev *bs, GError **error)
{
    FileState *s = bs->opaque;
    int inconsistent = g_atomic_int_get(&s->page_cache_inconsistent);

    if (s->no_flush)
        return TRUE;
    if (inconsistent)
        return vmm_set_errno(error, inconsistent, "%s: flush (an earlier flush failed)", bs->filename);
    while (fdatasync(s->fd) < 0) {
        if (errno == EINTR)
            continue;
        /* After a failed fdatasync Linux may have marked dirty pages clean:
         * nothing written since the last good flush can be trusted, so
         * every later flush fails too (as QEMU does). */
        if (!(s->open_flags & O_DIRECT))
            g_atomic_int_set(&s->page_cache_inconsistent, errno);
        return vmm_set_errno(error, errno, "%s: flush", bs->filename);
    }
    return TRUE;
}

static int file_block_status(VmmBlockDev *bs, guint64 offset, guint64 bytes, guint64 *pnum,
                             guint64 *map, VmmBlockDev **file, GError **error)
{
    FileState *s = bs->opaque;
    struct stat st;

    *map = offset;
    *file = bs;
    *pnum = bytes;
    if (s->is_block_dev)
        return VMM_BLOCK_DATA | VMM_BLOCK_OFFSET_VALID;
    if (fstat(s->fd, &st) < 0) {
        vmm_set_errno(error, errno, "%s: Could not stat file", bs->filename);
        return -1;
    }
    if (offset >= (guint64)st.st_size)
        return VMM_BLOCK_ZERO | VMM_BLOCK_OFFSET_VALID; /* the sector tail past EOF */
    off_t data = lseek(s->fd, (off_t)offset, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) /* in the trailing hole */
            return VMM_BLOCK_ZERO | VMM_BLOCK_OFFSET_VALID;
        return VMM_BLOCK_DATA | VMM_BLOCK_OFFSET_VALID; /* cannot tell: data */
    }
    if ((guint64)data > offset) {
        *pnum = MIN(bytes, (guint64)data - offset);
        return VMM_BLOCK_ZERO | VMM_BLOCK_OFFSET_VALID;
    }
    off_t hole = lseek(s->fd, (off_t)offset, SEEK_HOLE);
    if (hole > (off_t)offset)
        *pnum = MIN(bytes, (guint64)hole - offset);
    return VMM_BLOCK_DATA | VMM_BLOCK_OFFSET_VALID;
}

/* ---------------------------------------------------------------------------
 * Sizes
 * ------------------------------------------------------------------------- */

/* QEMU writes the first block of a new empty file so that O_DIRECT
 * alignment probing finds allocated blocks (and "disk size" shows 4 KiB). */
static void allocate_first_block(int fd, guint64 max_size)
{
    size_t len = (size_t)MIN(max_size, (guint64)MAX((long)MAX_BLOCKSIZE, sysconf(_SC_PAGESIZE)));
    void *buf = NULL;
    if (!len || posix_memalign(&buf, MAX_BLOCKSIZE, len))
        return;
    memset(buf, 0, len);
    ssize_t n;
    do {
        n = pwrite(fd, buf, len, 0);
    } while (n < 0 && errno == EINTR);
    free(buf);
}

static gboolean write_zeroes_buffered(int fd, const char *filename, guint64 from, guint64 to, GError **error)
{
    g_autofree guint8 *zero = g_malloc0(65536);
    for (guint64 cur = from; cur < to;) {
        ssize_t n = pwrite(fd, zero, (size_t)MIN((guint64)65536, to - cur), (off_t)cur);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return vmm_set_errno(error, n < 0 ? errno : ENOSPC, "%s: Could not write zeros for preallocation",
                                 filename);
        cur += (guint64)n;
    }
    if (fsync(fd) < 0)
        return vmm_set_errno(error, errno, "%s: Could not flush file to disk", filename);
    return TRUE;
}

/* QEMU's handle_aiocb_truncate for regular files. FD may be an O_DIRECT
 * descriptor: "full" then writes through a buffered one. */
static gboolean truncate_regular(int fd, const char *filename, guint64 size, VmmPrealloc prealloc,
                                 GError **error)
{
    struct stat st;

    if (fstat(fd, &st) < 0)
        return vmm_set_errno(error, errno, "%s: Could not stat file", filename);
    guint64 current = (guint64)st.st_size;
    if (prealloc != VMM_PREALLOC_OFF && size < current) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: Cannot use preallocation for shrinking files",
                    filename);
        return FALSE;
    }
    switch (prealloc) {
    case VMM_PREALLOC_OFF:
        if (ftruncate(fd, (off_t)size) < 0)
            return vmm_set_errno(error, errno, "%s: Failed to resize the file to %" G_GUINT64_FORMAT " bytes",
                                 filename, size);
        if (current == 0 && size > 0)
            allocate_first_block(fd, size);
        return TRUE;
    case VMM_PREALLOC_FALLOC:
        if (size > current) {
            int ret = posix_fallocate(fd, (off_t)current, (off_t)(size - current));
            if (ret)
                return vmm_set_errno(error, ret, "%s: Could not preallocate new data", filename);
            /* Reads of fallocated blocks succeed at any alignment, which
             * would fool O_DIRECT alignment probing: as QEMU, write block 0. */
            if (current == 0)
                allocate_first_block(fd, size);
        }
        return TRUE;
    case VMM_PREALLOC_FULL: {
        if (ftruncate(fd, (off_t)size) < 0)
            return vmm_set_errno(error, errno, "%s: Could not resize file", filename);
        int wfd = fd;
        if (fcntl(fd, F_GETFL) & O_DIRECT) {
            g_autofree char *proc = g_strdup_printf("/proc/self/fd/%d", fd);
            wfd = open(proc, O_WRONLY | O_CLOEXEC);
            if (wfd < 0)
                return vmm_set_errno(error, errno, "%s: Could not reopen for preallocation", filename);
        }
        gboolean ok = write_zeroes_buffered(wfd, filename, current, size, error);
        if (wfd != fd)
            close(wfd);
        return ok;
    }
    default:
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED, "%s: Unsupported preallocation mode: %s", filename,
                    vmm_prealloc_name(prealloc));
        return FALSE;
    }
}

static gboolean file_truncate(VmmBlockDev *bs, guint64 size, gboolean exact, VmmPrealloc prealloc,
                              gboolean shrink_allowed, GError **error)
{
    FileState *s = bs->opaque;
    struct stat st;

    if (fstat(s->fd, &st) < 0)
        return vmm_set_errno(error, errno, "%s: Could not stat file", bs->filename);
    if (s->is_block_dev) {
        guint64 dev = vmm_block_size(bs);
        if (size > dev || (exact && size != dev)) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED, "%s: Cannot %s device files", bs->filename,
                        size > dev ? "grow" : "resize");
            return FALSE;
        }
        return TRUE;
    }
    if (size < (guint64)st.st_size && !shrink_allowed) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: shrinking from %" G_GUINT64_FORMAT " to %" G_GUINT64_FORMAT " bytes was not allowed",
                    bs->filename, (guint64)st.st_size, size);
        return FALSE;
    }
    if (!truncate_regular(s->fd, bs->filename, size, prealloc, error))
        return FALSE;
    return refresh_size(bs, error);
}

static gint64 file_allocated_file_size(VmmBlockDev *bs)
{
    FileState *s = bs->opaque;
    struct stat st;
    if (fstat(s->fd, &st) < 0)
        return -1;
    return (gint64)st.st_blocks * 512;
}

static gboolean file_has_zero_init(VmmBlockDev *bs)
{
    FileState *s = bs->opaque;
    return !s->is_block_dev;
}

/* ---------------------------------------------------------------------------
 * Creating
 * ------------------------------------------------------------------------- */

static void set_nocow(int fd)
{
    int attr;
    /* Only empty files take NOCOW; errors just leave COW on (as QEMU). */
    if (ioctl(fd, FS_IOC_GETFLAGS, &attr) == 0) {
        attr |= FS_NOCOW_FL;
        (void)ioctl(fd, FS_IOC_SETFLAGS, &attr);
    }
}

static void set_extent_size_hint(int fd, guint64 hint, gboolean explicit_hint, const char *filename)
{
#ifdef FS_IOC_FSGETXATTR
    struct fsxattr attr;
    int ret = ioctl(fd, FS_IOC_FSGETXATTR, &attr);
    if (ret == 0 && attr.fsx_xflags & FS_XFLAG_EXTSIZE && attr.fsx_extsize == hint)
        return;
    if (ret == 0) {
        attr.fsx_xflags |= FS_XFLAG_EXTSIZE;
        attr.fsx_extsize = (guint32)hint;
        ret = ioctl(fd, FS_IOC_FSSETXATTR, &attr);
    }
    /* Most file systems have no extent size hints: only an explicit
     * request deserves a warning. */
    if (ret < 0 && explicit_hint && errno != ENOTTY && errno != EOPNOTSUPP && errno != EINVAL)
        vmm_warn("%s: Failed to set extent size hint: %s", filename, g_strerror(errno));
#else
    (void)fd;
    (void)hint;
    (void)explicit_hint;
    (void)filename;
#endif
}

static gboolean file_create(const char *filename, VmmBlockDev *file, JsonObject *opts, GError **error)
{
    const char *path = strip_file_prefix(filename);
    VmmPrealloc prealloc = VMM_PREALLOC_OFF;
    const char *pstr = vmm_opts_get_string(opts, "preallocation", NULL);
    guint64 size, hint;
    gboolean nocow, ok = FALSE;

    (void)file;
    if ((pstr && !vmm_parse_prealloc(pstr, &prealloc, error)) ||
        !vmm_block_opt_size(opts, "size", 0, &size, error) ||
        !vmm_block_opt_size(opts, "extent_size_hint", DEFAULT_EXTENT_SIZE_HINT, &hint, error) ||
        !vmm_block_opt_bool(opts, "nocow", FALSE, &nocow, error))
        return FALSE;
    if (hint > G_MAXUINT32) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: Extent size hint is too large", filename);
        return FALSE;
    }
    if (prealloc == VMM_PREALLOC_METADATA) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED, "%s: Unsupported preallocation mode: metadata",
                    filename);
        return FALSE;
    }
    int fd;
    /* blockd in a VM: a snapshot overlay is an fd from vmmd (blockd/preopen.h). */
    if (!vmm_block_preopen_open(path, O_RDWR, &fd))
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return vmm_set_errno(error, errno, "Could not create '%s'", path);

    /* Take the locks QEMU's raw_co_create takes before clearing the file,
     * so an image in use is not truncated under its user. */
    FileState s = {.fd = fd};
    guint perm = VMM_BLK_PERM_WRITE | VMM_BLK_PERM_RESIZE;
    guint shared = VMM_BLK_PERM_ALL & ~(guint)VMM_BLK_PERM_RESIZE;
    s.posix_locks = !ofd_locks_available();
    if (!apply_lock_bytes(&s, perm, ~shared & VMM_BLK_PERM_ALL, FALSE, path, error) ||
        !check_lock_bytes(&s, perm, shared, path, error))
        goto out;
    if (nocow)
        set_nocow(fd);
    if (hint)
        set_extent_size_hint(fd, hint, vmm_opts_has(opts, "extent_size_hint"), path);
    if (ftruncate(fd, 0) < 0) {
        vmm_set_errno(error, errno, "%s: Could not clear file", path);
        goto out;
    }
    ok = truncate_regular(fd, path, size, prealloc, error);
out:
    close(fd); /* drops the locks */
    return ok;
}

const VmmBlockDriver vmm_file_driver = {
    .format_name = "file",
    .is_protocol = TRUE,
    .create_opts = file_create_opts,
    .open_opts = file_open_opts,
    .open = file_open,
    .close = file_close,
    .create = file_create,
    .pread = file_pread,
    .map_host = file_map_host,
    .pwrite = file_pwrite,
    .pwrite_zeroes = file_pwrite_zeroes,
    .pdiscard = file_pdiscard,
    .allocate = file_allocate,
    .flush = file_flush,
    .block_status = file_block_status,
    .truncate = file_truncate,
    .allocated_file_size = file_allocated_file_size,
    .has_zero_init = file_has_zero_init,
    .set_perm = file_set_perm,
    .supported_write_flags = VMM_BDRV_REQ_FUA,
};
