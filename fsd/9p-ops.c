/* The 9P2000.L operations, one function per message, as the Linux v9fs client
 * uses them. Every name is one component opened beneath its directory's
 * O_PATH descriptor (fsd/node.c); errors are the host's errno, sent back as
 * Rlerror. */
#include "fsd/9p-server.h"
#include "common/iov.h"
#include "common/log.h"
#include "common/splice.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#define NAME_MAX_9P 255

/* ---- helpers ---- */

/* A name that may be created or removed: one component, not "." or "..",
 * not the model's hidden metadata. */
static int check_new_name(FsdExport *e, const char *name)
{
    if (!name || !*name || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return -EINVAL;
    if (strlen(name) > NAME_MAX_9P)
        return -ENAMETOOLONG;
    if (fsd_model_hides(e, name))
        return -EINVAL;
    return 0;
}

static int check_walk_name(const char *name)
{
    if (!*name || strchr(name, '/'))
        return -EINVAL;
    if (strlen(name) > NAME_MAX_9P)
        return -ENAMETOOLONG;
    return 0;
}

static void stat_to_qid(FsdExport *e, const struct stat *st, P9Qid *q)
{
    q->type = S_ISDIR(st->st_mode) ? P9_QTDIR : S_ISLNK(st->st_mode) ? P9_QTSYMLINK : P9_QTFILE;
    q->version = 0;
    q->path = st->st_ino;
    /* Objects on another file system under the export: keep their qids
     * apart from the export's own inode numbers. */
    if (st->st_dev != e->root_dev)
        q->path ^= (guint64)st->st_dev << 48;
}

/* A qid is the type and the inode: the node has both from its lookup (an
 * inode's identity and type never change), so a walk costs no further
 * stat, where QEMU stats (and under mapped-xattr reads four xattrs) for
 * each name. */
static int node_qid(FsdExport *e, FsdNode *n, P9Qid *q)
{
    struct stat st = { .st_ino = n->ino, .st_dev = n->dev };
    int rc = fsd_model_type(e, n, &st.st_mode);
    if (rc == 0)
        stat_to_qid(e, &st, q);
    return rc;
}

static int qid_at(FsdExport *e, int dirfd, const char *name, P9Qid *q)
{
    struct stat st;
    int rc = fsd_model_statat(e, dirfd, name, &st);
    if (rc == 0)
        stat_to_qid(e, &st, q);
    return rc;
}

static int dotl_to_host_flags(guint32 f)
{
    static const struct { guint32 dotl; int host; } map[] = {
        { P9_DOTL_TRUNC, O_TRUNC }, { P9_DOTL_APPEND, O_APPEND }, { P9_DOTL_NONBLOCK, O_NONBLOCK },
        { P9_DOTL_DSYNC, O_DSYNC }, { P9_DOTL_SYNC, O_SYNC }, { P9_DOTL_LARGEFILE, O_LARGEFILE },
        { P9_DOTL_DIRECTORY, O_DIRECTORY },
    };
    int flags;
    switch (f & P9_DOTL_ACCMODE) {
    case P9_DOTL_WRONLY: flags = O_WRONLY; break;
    case P9_DOTL_RDWR: flags = O_RDWR; break;
    default: flags = O_RDONLY; break;
    }
    /* O_DIRECT is dropped (the server's buffers are not aligned for it),
     * as are O_NOATIME, O_ASYNC and O_NOCTTY; O_NOFOLLOW is always on. */
    for (gsize i = 0; i < G_N_ELEMENTS(map); i++) {
        if (f & map[i].dotl)
            flags |= map[i].host;
    }
    return flags | O_NOCTTY;
}

static gboolean flags_write(int flags)
{
    return (flags & O_ACCMODE) != O_RDONLY || (flags & (O_TRUNC | O_APPEND));
}

/* Fetches fid NUM into VAR or fails the operation with EBADF. */
#define GET_FID(var, num)                         \
    g_autoptr(Fid) var = fsd_conn_fid(c, (num)); \
    if (!var)                                     \
        return -EBADF

/* Opens the object NODE names for I/O, checking that the name still leads to
 * the same inode. */
static int reopen_node(FsdNode *n, int flags)
{
    if (n->host_type == S_IFDIR) {
        int dfd = openat(n->fd, ".", (flags & ~(O_TRUNC | O_APPEND | O_ACCMODE)) | O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        return dfd < 0 ? -errno : dfd;
    }
    int fd = fsd_open_beneath(fsd_node_dirfd(n), fsd_node_name(n), flags, 0);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_dev != n->dev || st.st_ino != n->ino) {
        close(fd);
        return -ESTALE;
    }
    return fd;
}

/* ---- session ---- */

static int op_attach(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    FsdExport *e = c->e;
    const char *aname = in->aname;
    if (*aname && strcmp(aname, "/") != 0 && g_strcmp0(aname, e->cfg.tag) != 0 &&
        g_strcmp0(aname, e->cfg.path) != 0)
        return -ENOENT;
    if (fsd_conn_fid_exists(c, in->fid))
        return -EEXIST;
    FsdNode *root = fsd_node_new_root(e, NULL);
    if (!root)
        return -EIO;
    int rc = node_qid(e, root, &out->qid);
    guint32 uid = in->n_uname == P9_NONUNAME ? 65534 : in->n_uname;
    g_autoptr(Fid) f = fsd_fid_new(in->fid, uid, root);
    if (rc == 0)
        rc = fsd_conn_fid_add(c, f);
    return rc;
}

static int op_walk(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    FsdExport *e = c->e;
    GET_FID(fid, in->fid);
    if (in->fid2 != in->fid && fsd_conn_fid_exists(c, in->fid2))
        return -EEXIST;
    FsdNode *cur = fsd_fid_node(fid);
    guint i;
    int rc = 0;
    for (i = 0; i < in->nwname; i++) {
        FsdNode *next = NULL;
        rc = check_walk_name(in->wnames[i]);
        if (rc == 0)
            rc = fsd_node_lookup(e, cur, in->wnames[i], &next);
        if (rc == 0) {
            rc = node_qid(e, next, &out->wqids[i]);
            if (rc < 0)
                fsd_node_unref(next);
        }
        if (rc < 0)
            break;
        fsd_node_unref(cur);
        cur = next;
    }
    out->nwqid = (guint16)i;
    if (i < in->nwname) {
        fsd_node_unref(cur);
        /* The first name failed: an error. A later one: the qids so far,
         * and newfid is not made (the spec's partial walk). */
        return i == 0 ? rc : 0;
    }
    if (in->fid2 == in->fid) {
        fsd_fid_set_node(fid, cur);
        return 0;
    }
    g_autoptr(Fid) nf = fsd_fid_new(in->fid2, fid->uid, cur);
    return fsd_conn_fid_add(c, nf);
}

static int op_clunk(FsdConn *c, P9Fcall *in, P9Fcall *out);

/* ---- opening and creating ---- */

static int op_lopen(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    FsdExport *e = c->e;
    GET_FID(fid, in->fid);
    g_autoptr(FsdNode) n = fsd_fid_node(fid);
    int flags = dotl_to_host_flags(in->flags);
    if (e->cfg.readonly && flags_write(flags))
        return -EROFS;
    int rc = node_qid(e, n, &out->qid);
    if (rc < 0)
        return rc;
    switch (n->host_type) {
    case S_IFDIR:
        if ((flags & O_ACCMODE) != O_RDONLY)
            return -EISDIR;
        break;
    case S_IFREG:
        break;
    case S_IFIFO:
        /* A fifo without a peer must not hold a worker forever. */
        flags |= O_NONBLOCK;
        break;
    case S_IFLNK:
        return -ELOOP;
    default:
        /* Device nodes and sockets are never opened on the host: the guest's
         * kernel handles its special files itself. */
        return -ENXIO;
    }
    int fd = reopen_node(n, flags);
    if (fd < 0)
        return fd;
    g_mutex_lock(&fid->lock);
    if (fid->kind != FID_PATH) {
        g_mutex_unlock(&fid->lock);
        close(fd);
        return -EINVAL;
    }
    fid->fd = fd;
    fid->kind = n->host_type == S_IFDIR ? FID_DIR : FID_FILE;
    fid->dir_pos = 0;
    g_mutex_unlock(&fid->lock);
    out->iounit = 0;
    return 0;
}

static FsdCred new_cred(Fid *fid, guint32 gid, guint32 mode)
{
    return (FsdCred){ fid->uid, gid, mode, FSD_RDEV_UNSET };
}

/* Credentials on a new DIRFD/NAME (open as FD, or -1); on failure the
 * object goes again. */
static int finish_create(FsdExport *e, int dirfd, const char *name, int fd, const FsdCred *cred, gboolean is_dir)
{
    int rc = fsd_model_post_create(e, dirfd, name, fd, cred);
    if (rc < 0) {
        int keep = errno;
        unlinkat(dirfd, name, is_dir ? AT_REMOVEDIR : 0);
        fsd_model_after_unlink(e, dirfd, name);
        errno = keep;
    }
    return rc;
}

static int op_lcreate(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    FsdExport *e = c->e;
    GET_FID(fid, in->fid);
    if (e->cfg.readonly)
        return -EROFS;
    int rc = check_new_name(e, in->name);
    if (rc < 0)
        return rc;
    g_autoptr(FsdNode) dir = fsd_fid_node(fid);
    if (dir->host_type != S_IFDIR)
        return -ENOTDIR;
    gboolean mapped = fsd_model_is_mapped(e->cfg.model);
    int flags = dotl_to_host_flags(in->flags) & ~O_DIRECTORY;
    int fd = fsd_open_beneath(dir->fd, in->name, flags | O_CREAT | O_EXCL,
                              mapped ? e->cfg.fmode : (in->mode & 07777));
    gboolean created = fd >= 0;
    if (fd < 0 && errno == EEXIST && !(in->flags & P9_DOTL_EXCL))
        fd = fsd_open_beneath(dir->fd, in->name, flags & ~O_TRUNC, 0);
    if (fd < 0)
        return -errno;
    if (created) {
        FsdCred cred = new_cred(fid, in->gid, mapped ? ((in->mode & 07777) | S_IFREG) : (in->mode & 07777));
        rc = finish_create(e, dir->fd, in->name, fd, &cred, FALSE);
    } else if (flags & O_TRUNC) {
        rc = ftruncate(fd, 0) < 0 ? -errno : 0;
    }
    FsdNode *n = NULL;
    if (rc == 0)
        rc = fsd_node_lookup(e, dir, in->name, &n);
    if (rc == 0)
        rc = node_qid(e, n, &out->qid);
    if (rc < 0) {
        close(fd);
        fsd_node_unref(n);
        return rc;
    }
    g_mutex_lock(&fid->lock);
    if (fid->kind != FID_PATH) {
        g_mutex_unlock(&fid->lock);
        close(fd);
        fsd_node_unref(n);
        return -EINVAL;
    }
    FsdNode *old = fid->node;
    fid->node = n;
    fid->fd = fd;
    fid->kind = FID_FILE;
    g_mutex_unlock(&fid->lock);
    fsd_node_unref(old);
    out->iounit = 0;
    return 0;
}

static int op_mkdir(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    FsdExport *e = c->e;
    GET_FID(fid, in->fid);
    if (e->cfg.readonly)
        return -EROFS;
    int rc = check_new_name(e, in->name);
    if (rc < 0)
        return rc;
    g_autoptr(FsdNode) dir = fsd_fid_node(fid);
    gboolean mapped = fsd_model_is_mapped(e->cfg.model);
    if (mkdirat(dir->fd, in->name, mapped ? e->cfg.dmode : (in->mode & 07777)) < 0)
        return -errno;
    FsdCred cred = new_cred(fid, in->gid, mapped ? ((in->mode & 07777) | S_IFDIR) : (in->mode & 07777));
    rc = finish_create(e, dir->fd, in->name, -1, &cred, TRUE);
    return rc < 0 ? rc : qid_at(e, dir->fd, in->name, &out->qid);
}

static int op_mknod(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    FsdExport *e = c->e;
    GET_FID(fid, in->fid);
    if (e->cfg.readonly)
        return -EROFS;
    int rc = check_new_name(e, in->name);
    if (rc < 0)
        return rc;
    mode_t type = in->mode & S_IFMT;
    if (type != S_IFREG && type != S_IFCHR && type != S_IFBLK && type != S_IFIFO && type != S_IFSOCK)
        return -EINVAL;
    g_autoptr(FsdNode) dir = fsd_fid_node(fid);
    dev_t rdev = makedev(in->major, in->minor);
    FsdCred cred = new_cred(fid, in->gid, in->mode & 07777);
    if (fsd_model_is_mapped(e->cfg.model)) {
        /* As QEMU: a regular file stands in for the node, the mode and the
         * device number live in the metadata; nothing to open by mistake. */
        if (mknodat(dir->fd, in->name, e->cfg.fmode | S_IFREG, 0) < 0)
            return -errno;
        cred.mode = in->mode;
        cred.rdev = rdev;
    } else if (mknodat(dir->fd, in->name, in->mode, rdev) < 0) {
        return -errno;
    }
    rc = finish_create(e, dir->fd, in->name, -1, &cred, FALSE);
    return rc < 0 ? rc : qid_at(e, dir->fd, in->name, &out->qid);
}

static int write_all(int fd, const char *s, gsize n)
{
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? -errno : -EIO;
        s += w;
        n -= (gsize)w;
    }
    return 0;
}

static int op_symlink(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    FsdExport *e = c->e;
    GET_FID(fid, in->fid);
    if (e->cfg.readonly)
        return -EROFS;
    int rc = check_new_name(e, in->name);
    if (rc < 0)
        return rc;
    if (!*in->name2 || strlen(in->name2) >= PATH_MAX)
        return -EINVAL;
    g_autoptr(FsdNode) dir = fsd_fid_node(fid);
    FsdCred cred = new_cred(fid, in->gid, 0777 | S_IFLNK);
    if (fsd_model_is_mapped(e->cfg.model)) {
        /* A regular file holding the target, as QEMU keeps symlinks. */
        int fd = fsd_open_beneath(dir->fd, in->name, O_CREAT | O_EXCL | O_WRONLY, e->cfg.fmode);
        if (fd < 0)
            return -errno;
        rc = write_all(fd, in->name2, strlen(in->name2));
        close(fd);
        if (rc < 0) {
            unlinkat(dir->fd, in->name, 0);
            return rc;
        }
    } else if (symlinkat(in->name2, dir->fd, in->name) < 0) {
        return -errno;
    }
    rc = finish_create(e, dir->fd, in->name, -1, &cred, FALSE);
    return rc < 0 ? rc : qid_at(e, dir->fd, in->name, &out->qid);
}

static int op_readlink(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    FsdExport *e = c->e;
    GET_FID(fid, in->fid);
    g_autoptr(FsdNode) n = fsd_fid_node(fid);
    struct stat st;
    int rc = fsd_model_stat(e, n, &st);
    if (rc < 0)
        return rc;
    if (!S_ISLNK(st.st_mode))
        return -EINVAL;
    g_autofree char *buf = g_malloc(PATH_MAX);
    ssize_t len;
    if (n->host_type == S_IFLNK) {
        len = readlinkat(n->fd, "", buf, PATH_MAX - 1);
    } else {
        int fd = reopen_node(n, O_RDONLY | O_NONBLOCK);
        if (fd < 0)
            return fd;
        len = pread(fd, buf, PATH_MAX - 1, 0);
        close(fd);
    }
    if (len < 0)
        return -errno;
    out->name = g_strndup(buf, (gsize)len);
    return 0;
}

/* ---- names: link, rename, unlink ---- */

static int op_link(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    FsdExport *e = c->e;
    GET_FID(dfid, in->fid);
    GET_FID(sfid, in->fid2);
    if (e->cfg.readonly)
        return -EROFS;
    int rc = check_new_name(e, in->name);
    if (rc < 0)
        return rc;
    g_autoptr(FsdNode) dir = fsd_fid_node(dfid);
    g_autoptr(FsdNode) src = fsd_fid_node(sfid);
    if (!src->parent)
        return -EPERM;
    if (linkat(fsd_node_dirfd(src), fsd_node_name(src), dir->fd, in->name, 0) < 0)
        return -errno;
    rc = fsd_model_after_link(e, fsd_node_dirfd(src), fsd_node_name(src), dir->fd, in->name);
    if (rc < 0)
        unlinkat(dir->fd, in->name, 0);
    return rc;
}

static int do_rename(FsdConn *c, FsdNode *olddir, const char *oldname, FsdNode *newdir, const char *newname)
{
    FsdExport *e = c->e;
    if (renameat(olddir->fd, oldname, newdir->fd, newname) < 0)
        return -errno;
    int rc = fsd_model_after_rename(e, olddir->fd, oldname, newdir->fd, newname);
    if (rc < 0) {
        renameat(newdir->fd, newname, olddir->fd, oldname);
        return rc;
    }
    fsd_conn_fix_renamed(c, olddir->dev, olddir->ino, oldname, newdir, newname);
    return 0;
}

static int op_rename(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    FsdExport *e = c->e;
    GET_FID(fid, in->fid);
    GET_FID(dfid, in->fid2);
    if (e->cfg.readonly)
        return -EROFS;
    int rc = check_new_name(e, in->name);
    if (rc < 0)
        return rc;
    g_autoptr(FsdNode) n = fsd_fid_node(fid);
    g_autoptr(FsdNode) dir = fsd_fid_node(dfid);
    if (!n->parent)
        return -EBUSY;
    return do_rename(c, n->parent, n->name, dir, in->name);
}

static int op_renameat(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    FsdExport *e = c->e;
    GET_FID(ofid, in->fid);
    GET_FID(nfid, in->fid2);
    if (e->cfg.readonly)
        return -EROFS;
    int rc = check_new_name(e, in->name);
    if (rc == 0)
        rc = check_new_name(e, in->name2);
    if (rc < 0)
        return rc;
    g_autoptr(FsdNode) odir = fsd_fid_node(ofid);
    g_autoptr(FsdNode) ndir = fsd_fid_node(nfid);
    return do_rename(c, odir, in->name, ndir, in->name2);
}

static int unlink_at(FsdExport *e, int dirfd, const char *name, gboolean is_dir)
{
    int rc = fsd_model_before_unlink(e, dirfd, name, is_dir);
    if (rc < 0)
        return rc;
    if (unlinkat(dirfd, name, is_dir ? AT_REMOVEDIR : 0) < 0)
        return -errno;
    fsd_model_after_unlink(e, dirfd, name);
    return 0;
}

static int op_unlinkat(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    FsdExport *e = c->e;
    GET_FID(fid, in->fid);
    if (e->cfg.readonly)
        return -EROFS;
    int rc = check_new_name(e, in->name);
    if (rc < 0)
        return rc;
    if (in->flags & ~(guint32)P9_DOTL_AT_REMOVEDIR)
        return -EINVAL;
    g_autoptr(FsdNode) dir = fsd_fid_node(fid);
    return unlink_at(e, dir->fd, in->name, (in->flags & P9_DOTL_AT_REMOVEDIR) != 0);
}

static int op_remove(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    FsdExport *e = c->e;
    GET_FID(fid, in->fid);
    g_autoptr(FsdNode) n = fsd_fid_node(fid);
    int rc;
    if (e->cfg.readonly)
        rc = -EROFS;
    else if (!n->parent)
        rc = -EBUSY;
    else
        rc = unlink_at(e, n->parent->fd, n->name, n->host_type == S_IFDIR);
    /* Tremove clunks the fid whatever happened. */
    int crc = op_clunk(c, in, out);
    return rc < 0 ? rc : crc;
}

/* ---- attributes ---- */

static int op_getattr(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    FsdExport *e = c->e;
    GET_FID(fid, in->fid);
    g_autoptr(FsdNode) n = fsd_fid_node(fid);
    struct stat st;
    int rc = fsd_model_stat(e, n, &st);
    if (rc < 0)
        return rc;
    stat_to_qid(e, &st, &out->qid);
    out->mask = P9_GETATTR_BASIC;
    out->attr = (P9Attr){
        .mode = st.st_mode, .uid = st.st_uid, .gid = st.st_gid,
        .nlink = st.st_nlink, .rdev = st.st_rdev, .size = (guint64)st.st_size,
        .blksize = (guint64)st.st_blksize, .blocks = (guint64)st.st_blocks,
        .atime_sec = (guint64)st.st_atim.tv_sec, .atime_nsec = (guint64)st.st_atim.tv_nsec,
        .mtime_sec = (guint64)st.st_mtim.tv_sec, .mtime_nsec = (guint64)st.st_mtim.tv_nsec,
        .ctime_sec = (guint64)st.st_ctim.tv_sec, .ctime_nsec = (guint64)st.st_ctim.tv_nsec,
    };
    return 0;
}

static int set_times(FsdNode *n, const P9SetAttr *a)
{
    struct timespec ts[2] = { { 0, UTIME_OMIT }, { 0, UTIME_OMIT } };
    if (a->valid & P9_ATTR_ATIME)
        ts[0] = (a->valid & P9_ATTR_ATIME_SET) ? (struct timespec){ (time_t)a->atime_sec, (long)a->atime_nsec }
                                               : (struct timespec){ 0, UTIME_NOW };
    if (a->valid & P9_ATTR_MTIME)
        ts[1] = (a->valid & P9_ATTR_MTIME_SET) ? (struct timespec){ (time_t)a->mtime_sec, (long)a->mtime_nsec }
                                               : (struct timespec){ 0, UTIME_NOW };
    if (utimensat(n->fd, "", ts, AT_EMPTY_PATH) == 0)
        return 0;
    if (errno != EINVAL && errno != EBADF)
        return -errno;
    /* Kernels without AT_EMPTY_PATH here: by name, not following. */
    return utimensat(fsd_node_dirfd(n), fsd_node_name(n), ts, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
}

static int truncate_node(FsdNode *n, guint64 size)
{
    if (n->host_type == S_IFDIR)
        return -EISDIR;
    if (n->host_type != S_IFREG)
        return -EINVAL;
    if (size > G_MAXINT64)
        return -EFBIG;
    int fd = reopen_node(n, O_WRONLY | O_NONBLOCK);
    if (fd < 0)
        return fd;
    int rc = ftruncate(fd, (off_t)size) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

static int op_setattr(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    FsdExport *e = c->e;
    GET_FID(fid, in->fid);
    if (e->cfg.readonly)
        return -EROFS;
    g_autoptr(FsdNode) n = fsd_fid_node(fid);
    const P9SetAttr *a = &in->setattr;
    int rc = 0;
    if (a->valid & P9_ATTR_MODE)
        rc = fsd_model_chmod(e, n, a->mode);
    if (rc == 0 && (a->valid & (P9_ATTR_ATIME | P9_ATTR_MTIME)))
        rc = set_times(n, a);
    if (rc == 0 && (a->valid & (P9_ATTR_UID | P9_ATTR_GID)))
        rc = fsd_model_chown(e, n, (a->valid & P9_ATTR_UID) ? a->uid : FSD_CRED_UNSET,
                             (a->valid & P9_ATTR_GID) ? a->gid : FSD_CRED_UNSET);
    if (rc == 0 && (a->valid & P9_ATTR_SIZE))
        rc = truncate_node(n, a->size);
    return rc;
}

static int op_statfs(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    GET_FID(fid, in->fid);
    g_autoptr(FsdNode) n = fsd_fid_node(fid);
    struct statfs s;
    if (fstatfs(n->fd, &s) < 0)
        return -errno;
    guint64 fsid;
    memcpy(&fsid, &s.f_fsid, sizeof(fsid));
    out->statfs = (P9Statfs){
        .type = (guint32)s.f_type, .bsize = (guint32)s.f_bsize,
        .blocks = s.f_blocks, .bfree = s.f_bfree, .bavail = s.f_bavail,
        .files = s.f_files, .ffree = s.f_ffree, .fsid = fsid, .namelen = (guint32)s.f_namelen,
    };
    return 0;
}

/* ---- I/O ---- */

static guint32 max_payload(FsdConn *c)
{
    return c->msize - P9_HDRSZ - 4;
}

/* Reads this long or longer go into the worker's pipe by splice (page
 * references, no copy) when splicing is on; the transport moves them on. */
#define SPLICE_MIN_READ (64 * 1024)

static gboolean read_spliced(Req *r, int fd, guint32 count, P9Fcall *out)
{
    if (count < SPLICE_MIN_READ)
        return FALSE;
    VmmSplicePipe *p = fsd_worker_pipe();
    if (!p)
        return FALSE;
    gssize n = vmm_splice_fill(p, fd, r->in.offset, count);
    if (n < 0)
        return FALSE;   /* a file splice cannot read (or an error pread reports) */
    out->data = NULL;
    out->count = (guint32)n;
    r->pipe = p;
    return TRUE;
}

/* ---- Data in guest RAM (Tread.vmm, Twrite.vmm) ---- */

/* preadv/pwritev of the first COUNT bytes of R's segments at OFFSET of FD; a
 * read stops at the end of the file. The bytes moved (what was moved before
 * a failure, as pread reports), or -errno. */
static gssize segs_io(const Req *r, int fd, guint64 offset, guint64 count, gboolean write)
{
    g_autofree struct iovec *iov = g_new(struct iovec, MAX(r->nsegs, 1u));
    guint n = vmm_iov_slice(r->segs, r->nsegs, 0, count, iov, r->nsegs);
    guint64 done;
    int err = vmm_iov_pio(fd, offset, iov, n, write, &done);
    return err && !done ? -err : (gssize)done;
}

static int op_read(FsdConn *c, Req *r, P9Fcall *out)
{
    P9Fcall *in = &r->in;
    GET_FID(fid, in->fid);
    guint32 count = r->segs ? (guint32)MIN(r->seg_bytes, (guint64)max_payload(c)) : MIN(in->count, max_payload(c));
    g_mutex_lock(&fid->lock);
    FidKind kind = fid->kind;
    if (kind == FID_XATTR_READ) {
        guint64 len = fid->xattr->len;
        guint64 off = MIN(in->offset, len);
        guint32 n = (guint32)MIN((guint64)count, len - off);
        if (r->segs)
            vmm_iov_from_buf(r->segs, r->nsegs, 0, fid->xattr->data + off, n);
        else
            out->data = g_memdup2(fid->xattr->data + off, n ? n : 1);
        out->count = n;
        g_mutex_unlock(&fid->lock);
        return 0;
    }
    int fd = fid->fd;
    g_mutex_unlock(&fid->lock);
    if (kind == FID_DIR)
        return -EISDIR;
    if (kind != FID_FILE)
        return -EBADF;
    if (in->offset > G_MAXINT64)
        return -EINVAL;
    if (r->segs) {
        gssize n = segs_io(r, fd, in->offset, count, FALSE);
        if (n < 0)
            return (int)n;
        out->count = (guint32)n;
        return 0;
    }
    if (read_spliced(r, fd, count, out))
        return 0;
    guint8 *buf = g_malloc(count ? count : 1);
    ssize_t n;
    do {
        n = pread(fd, buf, count, (off_t)in->offset);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        int err = errno;
        g_free(buf);
        return -err;
    }
    out->data = buf;
    out->count = (guint32)n;
    return 0;
}

static int xattr_write(Fid *fid, const Req *r, guint64 count, P9Fcall *out)
{
    const P9Fcall *in = &r->in;
    guint64 size = fid->xattr->len;
    if (in->offset > size || count > size - in->offset)
        return -ENOSPC;
    if (r->segs)
        vmm_iov_to_buf(r->segs, r->nsegs, 0, fid->xattr->data + in->offset, count);
    else
        memcpy(fid->xattr->data + in->offset, in->data, count);
    fid->xattr_copied = MAX(fid->xattr_copied, in->offset + count);
    out->count = (guint32)count;
    return 0;
}

static int op_write(FsdConn *c, Req *r, P9Fcall *out)
{
    FsdExport *e = c->e;
    P9Fcall *in = &r->in;
    GET_FID(fid, in->fid);
    /* A Twrite.vmm's data is what its segments name (proto/9p.h). */
    guint64 count = r->segs ? r->seg_bytes : in->count;
    if (count > G_MAXUINT32)
        return -EINVAL;
    g_mutex_lock(&fid->lock);
    FidKind kind = fid->kind;
    if (kind == FID_XATTR_WRITE) {
        int rc = xattr_write(fid, r, count, out);
        g_mutex_unlock(&fid->lock);
        return rc;
    }
    int fd = fid->fd;
    g_mutex_unlock(&fid->lock);
    if (kind == FID_DIR)
        return -EISDIR;
    if (kind != FID_FILE)
        return -EBADF;
    if (e->cfg.readonly)
        return -EROFS;
    if (in->offset > G_MAXINT64)
        return -EINVAL;
    ssize_t n;
    if (r->segs) {
        n = segs_io(r, fd, in->offset, count, TRUE);
        if (n < 0)
            return (int)n;
    } else {
        do {
            n = pwrite(fd, in->data, in->count, (off_t)in->offset);
        } while (n < 0 && errno == EINTR);
        if (n < 0)
            return -errno;
    }
    if (e->cfg.writeout_immediate && n > 0 && fdatasync(fd) < 0)
        return -errno;
    out->count = (guint32)n;
    return 0;
}

static guint8 dirent_type(FsdExport *e, guint8 d_type)
{
    /* Under the mapped models the host type is not the guest's (a symlink
     * is a regular file): the client must ask, as QEMU makes it. */
    return fsd_model_is_mapped(e->cfg.model) ? DT_UNKNOWN : d_type;
}

static guint8 qid_type_of_dirent(guint8 d_type)
{
    return d_type == DT_DIR ? P9_QTDIR : d_type == DT_LNK ? P9_QTSYMLINK : P9_QTFILE;
}

struct linux_dirent64 {
    guint64 d_ino;
    gint64 d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* Fills BUF[0..CAP) with entries from FD's current position. Returns the
 * bytes used; *NEXT is the offset after the last entry taken. */
static int fill_dirents(FsdExport *e, int fd, guint8 *buf, gsize cap, gsize *used, guint64 *next)
{
    char dents[32768];
    *used = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, fd, dents, sizeof(dents));
        if (n < 0)
            return -errno;
        if (n == 0)
            return 0;
        for (long pos = 0; pos < n;) {
            struct linux_dirent64 *d = (struct linux_dirent64 *)(void *)(dents + pos);
            pos += d->d_reclen;
            if (fsd_model_hides(e, d->d_name)) {
                *next = (guint64)d->d_off;
                continue;
            }
            P9Qid q = { qid_type_of_dirent(d->d_type), 0, d->d_ino };
            if (!p9_dirent_put(buf, cap, used, &q, (guint64)d->d_off, dirent_type(e, d->d_type), d->d_name)) {
                /* Full: the next Treaddir starts at this entry. */
                if (lseek(fd, (off_t)*next, SEEK_SET) < 0)
                    return -errno;
                return 0;
            }
            *next = (guint64)d->d_off;
        }
    }
}

static int op_readdir(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    FsdExport *e = c->e;
    GET_FID(fid, in->fid);
    guint32 count = MIN(in->count, max_payload(c));
    g_mutex_lock(&fid->lock);
    if (fid->kind != FID_DIR) {
        g_mutex_unlock(&fid->lock);
        return fid->kind == FID_FILE ? -ENOTDIR : -EBADF;
    }
    int rc = 0;
    /* The kernel's d_off cookies are seek positions: any offset a previous
     * reply handed out resumes there, on this fid or after a reopen. */
    if (in->offset != fid->dir_pos && lseek(fid->fd, (off_t)in->offset, SEEK_SET) < 0)
        rc = -errno;
    guint8 *buf = g_malloc(count ? count : 1);
    gsize used = 0;
    guint64 next = in->offset;
    if (rc == 0)
        rc = fill_dirents(e, fid->fd, buf, count, &used, &next);
    fid->dir_pos = rc == 0 ? next : G_MAXUINT64;
    g_mutex_unlock(&fid->lock);
    if (rc < 0) {
        g_free(buf);
        return rc;
    }
    out->data = buf;
    out->count = (guint32)used;
    return 0;
}

static int op_fsync(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    GET_FID(fid, in->fid);
    g_mutex_lock(&fid->lock);
    int fd = fid->fd;
    FidKind kind = fid->kind;
    g_mutex_unlock(&fid->lock);
    if (kind != FID_FILE && kind != FID_DIR)
        return -EBADF;
    int rc = in->datasync ? fdatasync(fd) : fsync(fd);
    return rc < 0 ? -errno : 0;
}

/* ---- locks ---- */

static int lock_fd(FsdConn *c, Fid *fid)
{
    g_mutex_lock(&fid->lock);
    int fd = fid->kind == FID_FILE ? fid->fd : -1;
    g_mutex_unlock(&fid->lock);
    return fd;
}

static gboolean lock_to_flock(guint8 type, guint64 start, guint64 length, struct flock *fl)
{
    static const short types[] = { F_RDLCK, F_WRLCK, F_UNLCK };
    if (type > P9_LOCK_TYPE_UNLCK || start > G_MAXINT64 || length > G_MAXINT64)
        return FALSE;
    *fl = (struct flock){ .l_type = types[type], .l_whence = SEEK_SET,
                          .l_start = (off_t)start, .l_len = (off_t)length };
    return TRUE;
}

/* POSIX locks as open-file-description locks on the fid's own descriptor:
 * two fids conflict as two processes would. A lock that would block answers
 * BLOCKED and the client retries (QEMU's answer; the client never waits in
 * the server). */
static int op_lock(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    GET_FID(fid, in->fid);
    int fd = lock_fd(c, fid);
    if (fd < 0)
        return -EBADF;
    struct flock fl;
    if (!lock_to_flock(in->lock_type, in->lock_start, in->lock_length, &fl)) {
        out->lock_status = P9_LOCK_ERROR;
        return 0;
    }
    if (fcntl(fd, F_OFD_SETLK, &fl) == 0)
        out->lock_status = P9_LOCK_SUCCESS;
    else if (errno == EAGAIN || errno == EACCES)
        out->lock_status = P9_LOCK_BLOCKED;
    else
        out->lock_status = P9_LOCK_ERROR;
    return 0;
}

static int op_getlock(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    GET_FID(fid, in->fid);
    int fd = lock_fd(c, fid);
    if (fd < 0)
        return -EBADF;
    struct flock fl;
    if (!lock_to_flock(in->lock_type, in->lock_start, in->lock_length, &fl) || fl.l_type == F_UNLCK)
        return -EINVAL;
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return -errno;
    out->client_id = g_strdup(in->client_id);
    if (fl.l_type == F_UNLCK) {
        out->lock_type = P9_LOCK_TYPE_UNLCK;
        out->lock_start = in->lock_start;
        out->lock_length = in->lock_length;
        out->proc_id = in->proc_id;
    } else {
        out->lock_type = fl.l_type == F_RDLCK ? P9_LOCK_TYPE_RDLCK : P9_LOCK_TYPE_WRLCK;
        out->lock_start = (guint64)fl.l_start;
        out->lock_length = (guint64)fl.l_len;
        out->proc_id = fl.l_pid > 0 ? (guint32)fl.l_pid : 0;
    }
    return 0;
}

/* ---- xattrs ---- */

static ssize_t node_getxattr(FsdNode *n, const char *name, void *buf, gsize size)
{
    char path[PATH_MAX + 64];
    gboolean follow;
    fsd_node_proc_path(n, path, sizeof(path), &follow);
    if (!name)
        return follow ? listxattr(path, buf, size) : llistxattr(path, buf, size);
    return follow ? getxattr(path, name, buf, size) : lgetxattr(path, name, buf, size);
}

/* The value of NAME (or the name list for NULL), sized by asking first. */
static int read_xattr(FsdNode *n, const char *name, GByteArray **out)
{
    for (int tries = 0; tries < 8; tries++) {
        ssize_t size = node_getxattr(n, name, NULL, 0);
        if (size < 0)
            return -errno;
        if (size > P9_XATTR_SIZE_MAX * 16)
            return -E2BIG;
        GByteArray *b = g_byte_array_sized_new((guint)size + 1);
        g_byte_array_set_size(b, (guint)size);
        ssize_t got = size ? node_getxattr(n, name, b->data, (gsize)size) : 0;
        if (got >= 0) {
            g_byte_array_set_size(b, (guint)got);
            *out = b;
            return 0;
        }
        int err = errno;
        g_byte_array_unref(b);
        if (err != ERANGE)
            return -err;
    }
    return -EAGAIN;
}

static int op_xattrwalk(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    FsdExport *e = c->e;
    GET_FID(fid, in->fid);
    if (fsd_conn_fid_exists(c, in->fid2))
        return -EEXIST;
    FsdNode *n = fsd_fid_node(fid);
    GByteArray *value = NULL;
    int rc;
    if (!*in->name) {
        GByteArray *raw = NULL;
        rc = read_xattr(n, NULL, &raw);
        if (rc == 0) {
            value = fsd_model_xattr_list(e, (const char *)raw->data, raw->len);
            g_byte_array_unref(raw);
        }
    } else {
        int err = 0;
        g_autofree char *host = fsd_model_xattr_name(e, in->name, FALSE, &err);
        rc = host ? read_xattr(n, host, &value) : -err;
    }
    if (rc < 0) {
        fsd_node_unref(n);
        return rc;
    }
    g_autoptr(Fid) nf = fsd_fid_new(in->fid2, fid->uid, n);
    nf->kind = FID_XATTR_READ;
    nf->xattr = value;
    out->xattr_size = value->len;
    return fsd_conn_fid_add(c, nf);
}

static int op_xattrcreate(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    FsdExport *e = c->e;
    GET_FID(fid, in->fid);
    if (e->cfg.readonly)
        return -EROFS;
    if (in->xattr_size > P9_XATTR_SIZE_MAX)
        return -E2BIG;
    if (in->flags & ~(guint32)(P9_XATTR_CREATE | P9_XATTR_REPLACE))
        return -EINVAL;
    int err = 0;
    char *host = fsd_model_xattr_name(e, in->name, TRUE, &err);
    if (!host)
        return -err;
    g_mutex_lock(&fid->lock);
    if (fid->kind != FID_PATH) {
        g_mutex_unlock(&fid->lock);
        g_free(host);
        return -EINVAL;
    }
    fid->kind = FID_XATTR_WRITE;
    fid->xattr = g_byte_array_sized_new((guint)in->xattr_size + 1);
    g_byte_array_set_size(fid->xattr, (guint)in->xattr_size);
    memset(fid->xattr->data, 0, in->xattr_size);
    fid->xattr_name = host;
    fid->xattr_copied = 0;
    fid->xattr_flags = (int)in->flags;
    g_mutex_unlock(&fid->lock);
    return 0;
}

/* The value written through an xattrcreate fid takes effect at its clunk;
 * a value of size 0 removes the attribute (QEMU's rule: that is how the
 * client's removexattr arrives). */
static int commit_xattr(Fid *fid)
{
    if (fid->xattr_copied != fid->xattr->len)
        return -EINVAL;
    char path[PATH_MAX + 64];
    gboolean follow;
    fsd_node_proc_path(fid->node, path, sizeof(path), &follow);
    int rc;
    if (fid->xattr->len == 0) {
        rc = follow ? removexattr(path, fid->xattr_name) : lremovexattr(path, fid->xattr_name);
        /* Removing an ACL that is not there succeeds on a local file system
         * (cp -a does it for every file): the same here, as QEMU. */
        if (rc < 0 && errno == ENODATA && (g_str_has_suffix(fid->xattr_name, "system.posix_acl_access") ||
                                           g_str_has_suffix(fid->xattr_name, "system.posix_acl_default")))
            rc = 0;
    }
    else if (follow)
        rc = setxattr(path, fid->xattr_name, fid->xattr->data, fid->xattr->len, fid->xattr_flags);
    else
        rc = lsetxattr(path, fid->xattr_name, fid->xattr->data, fid->xattr->len, fid->xattr_flags);
    return rc < 0 ? -errno : 0;
}

static int op_clunk(FsdConn *c, P9Fcall *in, P9Fcall *out)
{
    g_autoptr(Fid) fid = fsd_conn_fid_remove(c, in->fid);
    if (!fid)
        return -EBADF;
    int rc = 0;
    g_mutex_lock(&fid->lock);
    if (fid->kind == FID_XATTR_WRITE)
        rc = commit_xattr(fid);
    g_mutex_unlock(&fid->lock);
    return rc;
}

int fsd_ops_dispatch(FsdConn *c, Req *r, P9Fcall *out)
{
    P9Fcall *in = &r->in;
    switch (in->type) {
    case P9_TATTACH: return op_attach(c, in, out);
    case P9_TWALK: return op_walk(c, in, out);
    case P9_TLOPEN: return op_lopen(c, in, out);
    case P9_TLCREATE: return op_lcreate(c, in, out);
    case P9_TMKDIR: return op_mkdir(c, in, out);
    case P9_TMKNOD: return op_mknod(c, in, out);
    case P9_TSYMLINK: return op_symlink(c, in, out);
    case P9_TREADLINK: return op_readlink(c, in, out);
    case P9_TLINK: return op_link(c, in, out);
    case P9_TRENAME: return op_rename(c, in, out);
    case P9_TRENAMEAT: return op_renameat(c, in, out);
    case P9_TUNLINKAT: return op_unlinkat(c, in, out);
    case P9_TREMOVE: return op_remove(c, in, out);
    case P9_TGETATTR: return op_getattr(c, in, out);
    case P9_TSETATTR: return op_setattr(c, in, out);
    case P9_TSTATFS: return op_statfs(c, in, out);
    case P9_TREAD:
    case P9_TREAD_VMM: return op_read(c, r, out);
    case P9_TWRITE:
    case P9_TWRITE_VMM: return op_write(c, r, out);
    case P9_TREADDIR: return op_readdir(c, in, out);
    case P9_TFSYNC: return op_fsync(c, in, out);
    case P9_TLOCK: return op_lock(c, in, out);
    case P9_TGETLOCK: return op_getlock(c, in, out);
    case P9_TXATTRWALK: return op_xattrwalk(c, in, out);
    case P9_TXATTRCREATE: return op_xattrcreate(c, in, out);
    case P9_TCLUNK: return op_clunk(c, in, out);
    case P9_TAUTH: return -EOPNOTSUPP;  /* no authentication: attach directly */
    default: return -EOPNOTSUPP;
    }
}
