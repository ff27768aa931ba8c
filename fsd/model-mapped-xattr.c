/* security_model=mapped-xattr: the guest's uid, gid, mode (with the file
 * type) and device number live in the host object's user.virtfs.uid, .gid,
 * .mode (32-bit little-endian each) and .rdev (64-bit little-endian) xattrs,
 * exactly as QEMU's hw/9pfs/9p-local.c stores them, so that an export moves
 * between QEMU and fsd unchanged. Host objects belong to fsd's uid. */
#include "fsd/fsd-internal.h"

#include <errno.h>
#include <sys/xattr.h>

static ssize_t get_attr(const char *path, gboolean follow, const char *name, void *v, gsize n)
{
    return follow ? getxattr(path, name, v, n) : lgetxattr(path, name, v, n);
}

/* Where metadata is written: an open descriptor of the object (FD >= 0) or
 * a path, followed or not. */
typedef struct {
    int fd;
    const char *path;
    gboolean follow;
} Target;

static int set_attr(const Target *t, const char *name, const void *v, gsize n)
{
    int rc = t->fd >= 0 ? fsetxattr(t->fd, name, v, n, 0)
             : t->follow ? setxattr(t->path, name, v, n, 0) : lsetxattr(t->path, name, v, n, 0);
    return rc < 0 ? -errno : 0;
}

void fsd_mx_overlay(const char *path, gboolean follow, struct stat *st)
{
    guint32 v32;
    guint64 v64;
    if (get_attr(path, follow, "user.virtfs.uid", &v32, sizeof(v32)) == sizeof(v32))
        st->st_uid = GUINT32_FROM_LE(v32);
    if (get_attr(path, follow, "user.virtfs.gid", &v32, sizeof(v32)) == sizeof(v32))
        st->st_gid = GUINT32_FROM_LE(v32);
    if (get_attr(path, follow, "user.virtfs.mode", &v32, sizeof(v32)) == sizeof(v32))
        st->st_mode = GUINT32_FROM_LE(v32);
    if (get_attr(path, follow, "user.virtfs.rdev", &v64, sizeof(v64)) == sizeof(v64))
        st->st_rdev = GUINT64_FROM_LE(v64);
}

mode_t fsd_mx_type(const char *path, mode_t host_type)
{
    guint32 v32;
    if (get_attr(path, TRUE, "user.virtfs.mode", &v32, sizeof(v32)) == sizeof(v32))
        return GUINT32_FROM_LE(v32) & S_IFMT;
    return host_type;
}

static int store(const Target *t, const FsdCred *cred)
{
    int rc = 0;
    if (cred->uid != FSD_CRED_UNSET) {
        guint32 v = GUINT32_TO_LE(cred->uid);
        rc = set_attr(t, "user.virtfs.uid", &v, sizeof(v));
    }
    if (rc == 0 && cred->gid != FSD_CRED_UNSET) {
        guint32 v = GUINT32_TO_LE(cred->gid);
        rc = set_attr(t, "user.virtfs.gid", &v, sizeof(v));
    }
    if (rc == 0 && cred->mode != FSD_CRED_UNSET) {
        guint32 v = GUINT32_TO_LE(cred->mode);
        rc = set_attr(t, "user.virtfs.mode", &v, sizeof(v));
    }
    if (rc == 0 && cred->rdev != FSD_RDEV_UNSET) {
        guint64 v = GUINT64_TO_LE(cred->rdev);
        rc = set_attr(t, "user.virtfs.rdev", &v, sizeof(v));
    }
    return rc;
}

int fsd_mx_store(const char *path, gboolean follow, const FsdCred *cred)
{
    return store(&(Target){ .fd = -1, .path = path, .follow = follow }, cred);
}

int fsd_mx_store_fd(int fd, const FsdCred *cred)
{
    return store(&(Target){ .fd = fd }, cred);
}
