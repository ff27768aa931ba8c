/* Nodes: O_PATH descriptors of what fids point at, opened one component at a
 * time beneath the export with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|
 * RESOLVE_NO_MAGICLINKS): a name is never a path, a symlink is never
 * followed, and ".." is answered from the node tree, never by the host. */
#include "fsd/fsd-internal.h"
#include "common/error.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int open_beneath(int dirfd, const char *name, int flags, mode_t mode)
{
    struct open_how how = {
        .flags = (guint64)(flags | O_NOFOLLOW | O_CLOEXEC),
        .mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    int fd;
    do {
        fd = (int)syscall(SYS_openat2, dirfd, name, &how, sizeof(how));
    } while (fd < 0 && errno == EAGAIN);
    if (fd < 0 && errno == ENOSYS) {
        /* Kernels before 5.6: NAME is one validated component and
         * O_NOFOLLOW covers the last (only) one. */
        fd = openat(dirfd, name, flags | O_NOFOLLOW | O_CLOEXEC, mode);
    }
    return fd;
}

/* Exported for the server's opens and creates. */
int fsd_open_beneath(int dirfd, const char *name, int flags, mode_t mode);
int fsd_open_beneath(int dirfd, const char *name, int flags, mode_t mode)
{
    return open_beneath(dirfd, name, flags, mode);
}

static FsdNode *node_from_fd(int fd, FsdNode *parent, const char *name)
{
    struct stat st;
    if (fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
        return NULL;
    FsdNode *n = g_new0(FsdNode, 1);
    n->ref = 1;
    n->fd = fd;
    n->parent = parent ? fsd_node_ref(parent) : NULL;
    n->name = g_strdup(name);
    n->dev = st.st_dev;
    n->ino = st.st_ino;
    n->host_type = st.st_mode & S_IFMT;
    return n;
}

FsdNode *fsd_node_new_root(FsdExport *e, GError **error)
{
    int fd = fcntl(e->rootfd, F_DUPFD_CLOEXEC, 3);
    if (fd < 0) {
        vmm_set_errno(error, errno, "export '%s': dup", e->cfg.path);
        return NULL;
    }
    FsdNode *n = node_from_fd(fd, NULL, ".");
    if (!n) {
        vmm_set_errno(error, errno, "export '%s': stat", e->cfg.path);
        close(fd);
    }
    return n;
}

int fsd_node_lookup(FsdExport *e, FsdNode *parent, const char *name, FsdNode **out)
{
    if (strcmp(name, "..") == 0) {
        *out = fsd_node_ref(parent->parent ? parent->parent : parent);
        return 0;
    }
    if (strcmp(name, ".") == 0) {
        *out = fsd_node_ref(parent);
        return 0;
    }
    if (parent->host_type != S_IFDIR)
        return -ENOTDIR;
    if (fsd_model_hides(e, name))
        return -ENOENT;
    int fd = open_beneath(parent->fd, name, O_PATH, 0);
    if (fd < 0)
        return -errno;
    FsdNode *n = node_from_fd(fd, parent, name);
    if (!n) {
        int err = errno;
        close(fd);
        return -err;
    }
    *out = n;
    return 0;
}

FsdNode *fsd_node_ref(FsdNode *n)
{
    g_atomic_int_inc(&n->ref);
    return n;
}

void fsd_node_unref(FsdNode *n)
{
    while (n && g_atomic_int_dec_and_test(&n->ref)) {
        FsdNode *parent = n->parent;
        close(n->fd);
        g_free(n->name);
        g_free(n);
        n = parent;
    }
}

FsdNode *fsd_node_moved(FsdNode *n, FsdNode *newdir, const char *newname)
{
    FsdNode *m = g_new0(FsdNode, 1);
    m->ref = 1;
    m->fd = fcntl(n->fd, F_DUPFD_CLOEXEC, 3);
    if (m->fd < 0) {
        g_free(m);
        return fsd_node_ref(n);
    }
    m->parent = fsd_node_ref(newdir);
    m->name = g_strdup(newname);
    m->dev = n->dev;
    m->ino = n->ino;
    m->host_type = n->host_type;
    return m;
}

void fsd_node_proc_path(const FsdNode *n, char *buf, gsize size, gboolean *follow)
{
    if (n->host_type == S_IFLNK && n->parent) {
        snprintf(buf, size, "/proc/self/fd/%d/%s", n->parent->fd, n->name);
        *follow = FALSE;
    } else {
        fsd_fd_path(n->fd, buf);
        *follow = TRUE;
    }
}

void fsd_fd_path(int fd, char buf[FSD_FD_PATH_MAX])
{
    snprintf(buf, FSD_FD_PATH_MAX, "/proc/self/fd/%d", fd);
}
