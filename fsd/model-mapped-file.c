/* security_model=mapped-file: the guest's uid, gid, mode and device number
 * of DIR/NAME live in DIR/.virtfs_metadata/NAME (the export root's own in
 * .virtfs_metadata_root), one "virtfs.KEY=DECIMAL" line each, as QEMU's
 * hw/9pfs/9p-local.c writes them. The metadata follows its object through
 * rename, link and unlink, and the guest never sees it. */
#include "fsd/fsd-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    gint64 uid, gid, mode, rdev;  /* -1: absent */
} MetaValues;

static int open_meta_dir(int dirfd, gboolean create)
{
    if (create && mkdirat(dirfd, FSD_MF_META_DIR, 0700) < 0 && errno != EEXIST)
        return -1;
    return openat(dirfd, FSD_MF_META_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

static gboolean is_root(const char *name)
{
    return strcmp(name, ".") == 0;
}

/* The metadata file of DIRFD/NAME opened with FLAGS; -1 with errno. */
static int open_meta_file(int dirfd, const char *name, int flags)
{
    if (is_root(name))
        return openat(dirfd, FSD_MF_META_ROOT, flags | O_NOFOLLOW | O_CLOEXEC, 0600);
    int mdir = open_meta_dir(dirfd, (flags & O_CREAT) != 0);
    if (mdir < 0)
        return -1;
    int fd = openat(mdir, name, flags | O_NOFOLLOW | O_CLOEXEC, 0600);
    int err = errno;
    close(mdir);
    errno = err;
    return fd;
}

static void parse_meta(const char *text, MetaValues *v)
{
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    for (char **l = lines; *l; l++) {
        if (g_str_has_prefix(*l, "virtfs.uid="))
            v->uid = (guint32)atoi(*l + 11);
        else if (g_str_has_prefix(*l, "virtfs.gid="))
            v->gid = (guint32)atoi(*l + 11);
        else if (g_str_has_prefix(*l, "virtfs.mode="))
            v->mode = (guint32)atoi(*l + 12);
        else if (g_str_has_prefix(*l, "virtfs.rdev="))
            v->rdev = (guint32)atoi(*l + 12);
    }
}

static gboolean read_meta(int dirfd, const char *name, MetaValues *v)
{
    *v = (MetaValues){ -1, -1, -1, -1 };
    int fd = open_meta_file(dirfd, name, O_RDONLY);
    if (fd < 0)
        return FALSE;
    char buf[1024];
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    close(fd);
    if (n < 0)
        return FALSE;
    buf[n] = '\0';
    parse_meta(buf, v);
    return TRUE;
}

void fsd_mf_overlay(int dirfd, const char *name, struct stat *st)
{
    MetaValues v;
    if (!read_meta(dirfd, name, &v))
        return;
    if (v.uid >= 0)
        st->st_uid = (uid_t)v.uid;
    if (v.gid >= 0)
        st->st_gid = (gid_t)v.gid;
    if (v.mode >= 0)
        st->st_mode = (mode_t)v.mode;
    if (v.rdev >= 0)
        st->st_rdev = (dev_t)v.rdev;
}

int fsd_mf_store(int dirfd, const char *name, const FsdCred *cred)
{
    MetaValues v;
    read_meta(dirfd, name, &v);
    if (cred->uid != FSD_CRED_UNSET)
        v.uid = cred->uid;
    if (cred->gid != FSD_CRED_UNSET)
        v.gid = cred->gid;
    if (cred->mode != FSD_CRED_UNSET)
        v.mode = cred->mode;
    if (cred->rdev != FSD_RDEV_UNSET)
        v.rdev = (guint32)cred->rdev;
    GString *text = g_string_new(NULL);
    /* QEMU prints them as %d */
    if (v.uid >= 0)
        g_string_append_printf(text, "virtfs.uid=%d\n", (int)v.uid);
    if (v.gid >= 0)
        g_string_append_printf(text, "virtfs.gid=%d\n", (int)v.gid);
    if (v.mode >= 0)
        g_string_append_printf(text, "virtfs.mode=%d\n", (int)v.mode);
    if (v.rdev >= 0)
        g_string_append_printf(text, "virtfs.rdev=%d\n", (int)v.rdev);
    int fd = open_meta_file(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC);
    int rc = 0;
    if (fd < 0) {
        rc = -errno;
    } else {
        if (fchmod(fd, 0600) < 0 || write(fd, text->str, text->len) != (ssize_t)text->len)
            rc = errno ? -errno : -EIO;
        close(fd);
    }
    g_string_free(text, TRUE);
    return rc;
}

typedef int (*MetaMoveFunc)(int, const char *, int, const char *);

static int move_meta(int olddir, const char *oldname, int newdir, const char *newname, MetaMoveFunc fn)
{
    int omd = open_meta_dir(olddir, FALSE);
    if (omd < 0)
        return errno == ENOENT ? 0 : -errno;
    int nmd = open_meta_dir(newdir, TRUE);
    if (nmd < 0) {
        int err = errno;
        close(omd);
        return -err;
    }
    int rc = fn(omd, oldname, nmd, newname) < 0 && errno != ENOENT ? -errno : 0;
    close(omd);
    close(nmd);
    return rc;
}

static int do_rename(int a, const char *an, int b, const char *bn)
{
    return renameat(a, an, b, bn);
}

static int do_link(int a, const char *an, int b, const char *bn)
{
    return linkat(a, an, b, bn, 0);
}

int fsd_mf_rename(int olddir, const char *oldname, int newdir, const char *newname)
{
    return move_meta(olddir, oldname, newdir, newname, do_rename);
}

int fsd_mf_link(int olddir, const char *oldname, int newdir, const char *newname)
{
    return move_meta(olddir, oldname, newdir, newname, do_link);
}

int fsd_mf_before_unlink(int dirfd, const char *name, gboolean is_dir)
{
    if (!is_dir)
        return 0;
    int fd = openat(dirfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    /* Fails with ENOTEMPTY while the directory still has entries with
     * metadata: the unlink would fail anyway, and nothing is lost. */
    int rc = unlinkat(fd, FSD_MF_META_DIR, AT_REMOVEDIR) < 0 && errno != ENOENT ? -errno : 0;
    close(fd);
    return rc;
}

void fsd_mf_after_unlink(int dirfd, const char *name)
{
    int mdir = open_meta_dir(dirfd, FALSE);
    if (mdir < 0)
        return;
    (void)unlinkat(mdir, name, 0);
    close(mdir);
}
