/* Opening a drive's images for blockd: see drive-files.h. vmmd reads no more
 * of an image than the qcow2 header fields that name its backing file. */
#include "vmmd/drive-files.h"
#include "common/bytes.h"
#include "common/error.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#define QCOW2_MAGIC 0x514649fbU
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acaU
#define QCOW2_INCOMPAT_DATA_FILE (1ULL << 2)
#define HEADER_READ 65536

void vmm_drive_files_init(VmmDriveFiles *f)
{
    memset(f, 0, sizeof(*f));
    for (guint i = 0; i < VMM_DRIVE_MAX_FILES; i++)
        f->fds[i] = -1;
    f->overlay_fd = -1;
}

void vmm_drive_files_clear(VmmDriveFiles *f)
{
    for (guint i = 0; i < f->n; i++) {
        g_free(f->paths[i]);
        if (f->fds[i] >= 0)
            close(f->fds[i]);
    }
    if (f->overlay_fd >= 0)
        close(f->overlay_fd);
    g_free(f->format);
    g_free(f->backing_file);
    vmm_drive_files_init(f);
}

/* QEMU's path_has_protocol: "nbd:x" is a protocol, "./a:b" is not. */
static gboolean has_protocol(const char *path)
{
    const char *p = path + strcspn(path, ":/");
    return *p == ':';
}

char *vmm_drive_resolve_backing(const char *image, const char *backing)
{
    if (!image || backing[0] == '/' || has_protocol(backing) || g_str_has_prefix(image, "json:"))
        return g_strdup(backing);
    const char *slash = strrchr(image, '/');
    if (!slash)
        return g_strdup(backing);
    return g_strdup_printf("%.*s%s", (int)(slash - image + 1), image, backing);
}

static gssize read_at(int fd, void *buf, gsize len, off_t off)
{
    gsize done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, off + (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        done += (gsize)n;
    }
    return (gssize)done;
}

/* The backing format header extension, if any, in HDR[START..LEN). */
static char *find_backing_format(const guint8 *hdr, gsize len, gsize start)
{
    gsize off = start;
    while (off + 8 <= len) {
        guint32 type = get_be32(hdr + off), elen = get_be32(hdr + off + 4);
        if (type == 0 || elen > len - off - 8)
            break;
        if (type == QCOW2_EXT_BACKING_FORMAT)
            return g_strndup((const char *)hdr + off + 8, elen);
        off += 8 + (((gsize)elen + 7) & ~(gsize)7);
    }
    return NULL;
}

gboolean vmm_drive_qcow2_backing(int fd, const char *name, gboolean *is_qcow2, char **backing,
                                 char **backing_fmt, GError **error)
{
    g_autofree guint8 *hdr = g_malloc0(HEADER_READ);
    *is_qcow2 = FALSE;
    *backing = *backing_fmt = NULL;
    gssize len = read_at(fd, hdr, HEADER_READ, 0);
    if (len < 0)
        return vmm_set_errno(error, errno, "Could not read image header of '%s'", name);
    if (len < 72 || get_be32(hdr) != QCOW2_MAGIC)
        return TRUE;
    *is_qcow2 = TRUE;
    guint32 version = get_be32(hdr + 4);
    guint64 boff = get_be64(hdr + 8);
    guint32 bsize = get_be32(hdr + 16);
    gsize ext_start = 72;
    if (version >= 3 && len >= 104) {
        if (get_be64(hdr + 72) & QCOW2_INCOMPAT_DATA_FILE) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                        "'%s' keeps its data in an external data file, which VM drives do not "
                        "support", name);
            return FALSE;
        }
        ext_start = get_be32(hdr + 100);
    }
    if (boff == 0 || bsize == 0)
        return TRUE;
    if (bsize > 1023) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "'%s': backing file name too long", name);
        return FALSE;
    }
    char buf[1024];
    if (read_at(fd, buf, bsize, (off_t)boff) != (gssize)bsize) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "'%s': could not read the backing file name", name);
        return FALSE;
    }
    *backing = g_strndup(buf, bsize);
    *backing_fmt = find_backing_format(hdr, (gsize)len, ext_start);
    return TRUE;
}

static int open_image(const char *path, gboolean rw, gboolean direct, GError **error)
{
    int oflags = O_CLOEXEC | (rw ? O_RDWR : O_RDONLY) | (direct ? O_DIRECT : 0);
    int fd;
    do {
        fd = open(path, oflags);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        vmm_set_errno(error, errno == EROFS ? EACCES : errno, "Could not open '%s'", path);
    return fd;
}

/* The overlay of snapshot=on: an unlinked file where QEMU puts its own
 * ($TMPDIR, else /var/tmp), so it is gone whatever happens to the VM. */
static int open_overlay(GError **error)
{
    const char *dir = g_getenv("TMPDIR");
    if (!dir || !*dir)
        dir = "/var/tmp";
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0)
        return fd;
    g_autofree char *path = g_build_filename(dir, "vl.XXXXXX", NULL);
    fd = g_mkstemp_full(path, O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0)
        return vmm_set_errno(error, errno, "Could not get temporary filename in %s", dir), -1;
    unlink(path);
    return fd;
}

static gboolean add_file(VmmDriveFiles *f, char *path, int fd, GError **error)
{
    if (f->n == VMM_DRIVE_MAX_FILES) {
        g_free(path);
        close(fd);
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "the backing chain is longer than %d images (or loops)", VMM_DRIVE_MAX_FILES - 1);
        return FALSE;
    }
    f->paths[f->n] = path;
    f->fds[f->n] = fd;
    f->n++;
    return TRUE;
}

/* Opens the backing chain below image I; FORMAT is image I's format. */
static gboolean open_chain(const VmmDrive *d, VmmDriveFiles *f, const char *format, GError **error)
{
    for (;;) {
        guint i = f->n - 1;
        gboolean is_qcow2;
        g_autofree char *backing = NULL, *backing_fmt = NULL;
        if (format && !g_str_equal(format, "qcow2"))
            return TRUE;
        if (!vmm_drive_qcow2_backing(f->fds[i], f->paths[i], &is_qcow2, &backing, &backing_fmt, error))
            return FALSE;
        if (!backing)
            return TRUE;
        if (i == 0)
            f->backing_file = g_strdup(backing);
        if (has_protocol(backing) || g_str_has_prefix(backing, "json:")) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                        "'%s' has the backing file '%s', which is not a local file: vmmd hands "
                        "blockd only local images", f->paths[i], backing);
            return FALSE;
        }
        char *path = vmm_drive_resolve_backing(f->paths[i], backing);
        int fd = open_image(path, FALSE, d->cache_direct, error);
        if (fd < 0) {
            g_prefix_error(error, "Could not open backing file: ");
            g_free(path);
            return FALSE;
        }
        if (!add_file(f, path, fd, error))
            return FALSE;
        if (backing_fmt && !g_str_equal(backing_fmt, "qcow2") && !g_str_equal(backing_fmt, "raw")) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED, "Unknown driver '%s'", backing_fmt);
            return FALSE;
        }
        /* No format in the header: blockd probes it, and so do we. */
        format = backing_fmt ? g_intern_string(backing_fmt) : NULL;
    }
}

gboolean vmm_drive_files_open(const VmmDrive *d, VmmDriveFiles *f, GError **error)
{
    gboolean rw = !d->read_only && !d->snapshot;
    char *top = g_canonicalize_filename(d->filename, NULL);
    int fd = open_image(top, rw, d->cache_direct, error);
    if (fd < 0) {
        g_free(top);
        return FALSE;
    }
    add_file(f, top, fd, NULL);
    if (d->format) {
        f->format = g_strdup(d->format);
    } else {
        gboolean is_qcow2;
        g_autofree char *b = NULL, *bf = NULL;
        if (!vmm_drive_qcow2_backing(fd, top, &is_qcow2, &b, &bf, error))
            return FALSE;
        f->format = g_strdup(is_qcow2 ? "qcow2" : "raw");
        f->probed = TRUE;
    }
    if (!open_chain(d, f, f->format, error))
        return FALSE;
    if (d->snapshot && (f->overlay_fd = open_overlay(error)) < 0)
        return FALSE;
    return TRUE;
}
