/* security_model=passthrough and none: objects carry the guest's ownership
 * and modes for real. none is passthrough where a failed chown of a new
 * object is ignored (QEMU's rule), for a server without CAP_CHOWN. */
#include "fsd/fsd-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int fsd_open_beneath(int dirfd, const char *name, int flags, mode_t mode);

int fsd_pt_set_cred(FsdExport *e, int dirfd, const char *name, const FsdCred *cred)
{
    if (fchownat(dirfd, name, cred->uid, cred->gid, AT_SYMLINK_NOFOLLOW) < 0 && e->cfg.model != FSD_SM_NONE)
        return -errno;
    if (cred->mode == FSD_CRED_UNSET || S_ISLNK(cred->mode))
        return 0;
    /* chmod through an O_PATH descriptor of exactly the new object: a name
     * swapped for a symlink meanwhile is not followed. */
    int fd = fsd_open_beneath(dirfd, name, O_PATH, 0);
    if (fd < 0)
        return -errno;
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) < 0) {
        rc = -errno;
    } else if (!S_ISLNK(st.st_mode)) {
        char path[FSD_FD_PATH_MAX];
        fsd_fd_path(fd, path);
        if (fchmodat(AT_FDCWD, path, cred->mode & 07777, 0) < 0)
            rc = -errno;
    }
    close(fd);
    return rc;
}

/* The new object is open as FD: ownership and mode go to exactly it, with no
 * name to resolve again. The chmod comes after the chown, which clears the
 * set-id bits, and sets what the umask took off at the create. */
int fsd_pt_set_cred_fd(FsdExport *e, int fd, const FsdCred *cred)
{
    if (fchown(fd, cred->uid, cred->gid) < 0 && e->cfg.model != FSD_SM_NONE)
        return -errno;
    if (cred->mode == FSD_CRED_UNSET)
        return 0;
    return fchmod(fd, cred->mode & 07777) < 0 ? -errno : 0;
}
