/* The security models behind one set of hooks the server calls: how an
 * object's attributes look to the guest, what a create, chmod or chown does
 * on the host, which names are hidden and which xattrs the guest may touch. */
#include "fsd/fsd-internal.h"
#include "common/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char *const model_names[] = {
    [FSD_SM_PASSTHROUGH] = "passthrough",
    [FSD_SM_MAPPED_XATTR] = "mapped-xattr",
    [FSD_SM_MAPPED_FILE] = "mapped-file",
    [FSD_SM_NONE] = "none",
};

gboolean fsd_model_parse(const char *s, FsdModel *out, GError **error)
{
    if (g_strcmp0(s, "mapped") == 0) {
        *out = FSD_SM_MAPPED_XATTR;
        return TRUE;
    }
    for (gsize i = 0; i < G_N_ELEMENTS(model_names); i++) {
        if (g_strcmp0(s, model_names[i]) == 0) {
            *out = (FsdModel)i;
            return TRUE;
        }
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                "invalid security_model property '%s' (valid: passthrough, mapped-xattr, mapped-file, none)",
                s ? s : "");
    return FALSE;
}

const char *fsd_model_name(FsdModel m)
{
    return model_names[m];
}

static void proc_path_at(int dirfd, const char *name, char *buf, gsize size)
{
    if (strcmp(name, ".") == 0)
        fsd_fd_path(dirfd, buf);
    else
        snprintf(buf, size, "/proc/self/fd/%d/%s", dirfd, name);
}

static void overlay(FsdExport *e, int dirfd, const char *name, struct stat *st)
{
    if (e->cfg.model == FSD_SM_MAPPED_XATTR) {
        /* Host symlinks (made outside fsd) cannot carry user xattrs. */
        if (S_ISLNK(st->st_mode))
            return;
        char path[PATH_MAX + 64];
        proc_path_at(dirfd, name, path, sizeof(path));
        fsd_mx_overlay(path, strcmp(name, ".") == 0, st);
    } else if (e->cfg.model == FSD_SM_MAPPED_FILE) {
        fsd_mf_overlay(dirfd, name, st);
    }
}

int fsd_model_stat(FsdExport *e, FsdNode *n, struct stat *st)
{
    if (fstatat(n->fd, "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
        return -errno;
    if (e->cfg.model == FSD_SM_MAPPED_XATTR) {
        if (!S_ISLNK(st->st_mode)) {
            char path[FSD_FD_PATH_MAX];
            fsd_fd_path(n->fd, path);
            fsd_mx_overlay(path, TRUE, st);
        }
    } else if (e->cfg.model == FSD_SM_MAPPED_FILE) {
        fsd_mf_overlay(fsd_node_dirfd(n), fsd_node_name(n), st);
    }
    return 0;
}

int fsd_model_type(FsdExport *e, FsdNode *n, mode_t *type)
{
    if (!fsd_model_is_mapped(e->cfg.model) || n->host_type != S_IFREG) {
        *type = n->host_type;
        return 0;
    }
    if (e->cfg.model == FSD_SM_MAPPED_XATTR) {
        char path[FSD_FD_PATH_MAX];
        fsd_fd_path(n->fd, path);
        *type = fsd_mx_type(path, n->host_type);
        return 0;
    }
    struct stat st;
    int rc = fsd_model_stat(e, n, &st);
    if (rc == 0)
        *type = st.st_mode & S_IFMT;
    return rc;
}

int fsd_model_statat(FsdExport *e, int dirfd, const char *name, struct stat *st)
{
    if (fstatat(dirfd, name, st, AT_SYMLINK_NOFOLLOW) < 0)
        return -errno;
    overlay(e, dirfd, name, st);
    return 0;
}

int fsd_model_post_create(FsdExport *e, int dirfd, const char *name, int fd, const FsdCred *cred)
{
    switch (e->cfg.model) {
    case FSD_SM_MAPPED_XATTR: {
        if (fd >= 0)
            return fsd_mx_store_fd(fd, cred);
        char path[PATH_MAX + 64];
        proc_path_at(dirfd, name, path, sizeof(path));
        return fsd_mx_store(path, FALSE, cred);
    }
    case FSD_SM_MAPPED_FILE:
        return fsd_mf_store(dirfd, name, cred);
    case FSD_SM_PASSTHROUGH:
    case FSD_SM_NONE:
        break;
    }
    return fd >= 0 ? fsd_pt_set_cred_fd(e, fd, cred) : fsd_pt_set_cred(e, dirfd, name, cred);
}

int fsd_model_chmod(FsdExport *e, FsdNode *n, mode_t mode)
{
    if (fsd_model_is_mapped(e->cfg.model)) {
        struct stat st;
        int rc = fsd_model_stat(e, n, &st);
        if (rc < 0)
            return rc;
        FsdCred cred = { FSD_CRED_UNSET, FSD_CRED_UNSET, (st.st_mode & S_IFMT) | (mode & 07777), FSD_RDEV_UNSET };
        if (e->cfg.model == FSD_SM_MAPPED_FILE)
            return fsd_mf_store(fsd_node_dirfd(n), fsd_node_name(n), &cred);
        char path[PATH_MAX + 64];
        gboolean follow;
        fsd_node_proc_path(n, path, sizeof(path), &follow);
        return fsd_mx_store(path, follow, &cred);
    }
    if (n->host_type == S_IFLNK)
        return -EOPNOTSUPP;
    char path[FSD_FD_PATH_MAX];
    fsd_fd_path(n->fd, path);
    return fchmodat(AT_FDCWD, path, mode & 07777, 0) < 0 ? -errno : 0;
}

int fsd_model_chown(FsdExport *e, FsdNode *n, guint32 uid, guint32 gid)
{
    if (fsd_model_is_mapped(e->cfg.model) && (uid != FSD_CRED_UNSET || gid != FSD_CRED_UNSET)) {
        FsdCred cred = { uid, gid, FSD_CRED_UNSET, FSD_RDEV_UNSET };
        if (e->cfg.model == FSD_SM_MAPPED_FILE)
            return fsd_mf_store(fsd_node_dirfd(n), fsd_node_name(n), &cred);
        char path[PATH_MAX + 64];
        gboolean follow;
        fsd_node_proc_path(n, path, sizeof(path), &follow);
        return fsd_mx_store(path, follow, &cred);
    }
    return fchownat(n->fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
}

gboolean fsd_model_hides(FsdExport *e, const char *name)
{
    return e->cfg.model == FSD_SM_MAPPED_FILE &&
           (strcmp(name, FSD_MF_META_DIR) == 0 || strcmp(name, FSD_MF_META_ROOT) == 0);
}

int fsd_model_after_rename(FsdExport *e, int olddir, const char *oldname, int newdir, const char *newname)
{
    if (e->cfg.model != FSD_SM_MAPPED_FILE)
        return 0;
    return fsd_mf_rename(olddir, oldname, newdir, newname);
}

int fsd_model_after_link(FsdExport *e, int olddir, const char *oldname, int newdir, const char *newname)
{
    if (e->cfg.model != FSD_SM_MAPPED_FILE)
        return 0;
    return fsd_mf_link(olddir, oldname, newdir, newname);
}

int fsd_model_before_unlink(FsdExport *e, int dirfd, const char *name, gboolean is_dir)
{
    if (e->cfg.model != FSD_SM_MAPPED_FILE)
        return 0;
    return fsd_mf_before_unlink(dirfd, name, is_dir);
}

void fsd_model_after_unlink(FsdExport *e, int dirfd, const char *name)
{
    if (e->cfg.model == FSD_SM_MAPPED_FILE)
        fsd_mf_after_unlink(dirfd, name);
}

#define VIRTFS_PREFIX "user.virtfs."

static gboolean is_posix_acl(const char *name)
{
    return strcmp(name, "system.posix_acl_access") == 0 || strcmp(name, "system.posix_acl_default") == 0;
}

/* mapped-xattr as QEMU's mapped_xattr_ops: user.* passes except the
 * model's own user.virtfs.*, POSIX ACLs are kept under user.virtfs., every
 * other namespace is refused. */
char *fsd_model_xattr_name(FsdExport *e, const char *guest, gboolean for_write, int *err)
{
    if (e->cfg.model != FSD_SM_MAPPED_XATTR)
        return g_strdup(guest);
    if (g_str_has_prefix(guest, VIRTFS_PREFIX)) {
        *err = for_write ? EACCES : ENODATA;
        return NULL;
    }
    if (is_posix_acl(guest))
        return g_strconcat(VIRTFS_PREFIX, guest, NULL);
    if (g_str_has_prefix(guest, "user."))
        return g_strdup(guest);
    *err = EOPNOTSUPP;
    return NULL;
}

GByteArray *fsd_model_xattr_list(FsdExport *e, const char *list, gsize len)
{
    GByteArray *out = g_byte_array_new();
    for (gsize pos = 0; pos < len;) {
        const char *name = list + pos;
        gsize n = strnlen(name, len - pos);
        pos += n + 1;
        const char *shown = name;
        if (e->cfg.model == FSD_SM_MAPPED_XATTR) {
            if (g_str_has_prefix(name, VIRTFS_PREFIX)) {
                shown = name + strlen(VIRTFS_PREFIX);
                if (!is_posix_acl(shown))
                    continue;
            } else if (!g_str_has_prefix(name, "user.")) {
                continue;
            }
        }
        g_byte_array_append(out, (const guint8 *)shown, (guint)strlen(shown) + 1);
    }
    return out;
}
