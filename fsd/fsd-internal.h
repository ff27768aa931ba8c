/* What the server's files share: the export's state, nodes and fids, and the
 * security models' hooks. Not for use outside fsd/. */
#pragma once
#include "fsd/fsd.h"

#include <stdint.h>

struct FsdExport {
    FsdExportConfig cfg;
    int rootfd;               /* O_PATH|O_DIRECTORY of the export */
    dev_t root_dev;
    FsdThrottle *throttle;    /* NULL when throttling is off */
    GThreadPool *pool;
};

/* Where a fid points: an O_PATH descriptor of the object, and for operations
 * by name (unlink, rename, mapped-file metadata) its directory and name.
 * Immutable once made and shared by reference; a rename makes a new node for
 * the fids that followed the object. The root's directory is itself, "." */
typedef struct FsdNode FsdNode;
struct FsdNode {
    gint ref;
    int fd;                   /* O_PATH|O_NOFOLLOW */
    FsdNode *parent;          /* NULL for the export root */
    char *name;               /* "." for the root */
    dev_t dev;
    ino_t ino;
    mode_t host_type;         /* S_IFMT of the host object */
};

FsdNode *fsd_node_new_root(FsdExport *e, GError **error);
/* Opens NAME (one component, validated by the caller) beneath PARENT without
 * following symlinks or leaving the export. -errno on failure. */
int fsd_node_lookup(FsdExport *e, FsdNode *parent, const char *name, FsdNode **out);
FsdNode *fsd_node_ref(FsdNode *n);
void fsd_node_unref(FsdNode *n);
static inline int fsd_node_dirfd(const FsdNode *n) { return n->parent ? n->parent->fd : n->fd; }
static inline const char *fsd_node_name(const FsdNode *n) { return n->parent ? n->name : "."; }
/* A node for the same object under a new directory and name (rename). */
FsdNode *fsd_node_moved(FsdNode *n, FsdNode *newdir, const char *newname);
/* "/proc/self/fd/N" (or ".../N/NAME" for a symlink, with *FOLLOW FALSE):
 * a path for the calls that have no descriptor form for O_PATH fds. */
void fsd_node_proc_path(const FsdNode *n, char *buf, gsize size, gboolean *follow);
/* "/proc/self/fd/FD" in BUF: the same for a descriptor known not to be a symlink. */
#define FSD_FD_PATH_MAX 32
void fsd_fd_path(int fd, char buf[FSD_FD_PATH_MAX]);

/* ---- security models (fsd/model-*.c) ---- */

/* Credentials of a new object or a change; -1 (all ones) = leave as is. */
typedef struct {
    guint32 uid, gid, mode;
    guint64 rdev;
} FsdCred;
#define FSD_CRED_UNSET ((guint32)-1)
#define FSD_RDEV_UNSET ((guint64)-1)

/* The node's attributes as the guest sees them (lstat + the model's
 * overlay). -errno. */
int fsd_model_stat(FsdExport *e, FsdNode *n, struct stat *st);
/* The file type (S_IFMT bits) the guest sees for the node: the host's,
 * which the node knows, except where a mapped model keeps another in its
 * metadata (a guest symlink or device stored as a regular file). -errno. */
int fsd_model_type(FsdExport *e, FsdNode *n, mode_t *type);
/* Stats DIRFD/NAME the same way (readdir entries, new objects). */
int fsd_model_statat(FsdExport *e, int dirfd, const char *name, struct stat *st);
/* After creating DIRFD/NAME: the creds the guest asked for. FD: the new
 * object open (not O_PATH), which then takes them directly, or -1. -errno;
 * the caller removes the object on failure. */
int fsd_model_post_create(FsdExport *e, int dirfd, const char *name, int fd, const FsdCred *cred);
int fsd_model_chmod(FsdExport *e, FsdNode *n, mode_t mode);
int fsd_model_chown(FsdExport *e, FsdNode *n, guint32 uid, guint32 gid);
/* Names the guest never sees (mapped-file's metadata). */
gboolean fsd_model_hides(FsdExport *e, const char *name);
/* Keeping metadata in step with the object (mapped-file). Best effort after
 * the host operation succeeded; -errno. */
int fsd_model_after_rename(FsdExport *e, int olddir, const char *oldname, int newdir, const char *newname);
int fsd_model_after_link(FsdExport *e, int olddir, const char *oldname, int newdir, const char *newname);
/* Before unlinkat (mapped-file: the directory's own metadata dir), and after. */
int fsd_model_before_unlink(FsdExport *e, int dirfd, const char *name, gboolean is_dir);
void fsd_model_after_unlink(FsdExport *e, int dirfd, const char *name);
/* Guest xattr name -> host name (NULL + *ERR: refused); list filtering. */
char *fsd_model_xattr_name(FsdExport *e, const char *guest, gboolean for_write, int *err);
/* Rewrites a host listxattr(2) buffer into what the guest may see. */
GByteArray *fsd_model_xattr_list(FsdExport *e, const char *list, gsize len);

/* model-mapped-xattr.c */
void fsd_mx_overlay(const char *path, gboolean follow, struct stat *st);
/* The stored mode's file type, or HOST_TYPE when none is stored. */
mode_t fsd_mx_type(const char *path, mode_t host_type);
int fsd_mx_store(const char *path, gboolean follow, const FsdCred *cred);
int fsd_mx_store_fd(int fd, const FsdCred *cred);
/* model-mapped-file.c */
#define FSD_MF_META_DIR ".virtfs_metadata"
#define FSD_MF_META_ROOT ".virtfs_metadata_root"
void fsd_mf_overlay(int dirfd, const char *name, struct stat *st);
int fsd_mf_store(int dirfd, const char *name, const FsdCred *cred);
int fsd_mf_rename(int olddir, const char *oldname, int newdir, const char *newname);
int fsd_mf_link(int olddir, const char *oldname, int newdir, const char *newname);
int fsd_mf_before_unlink(int dirfd, const char *name, gboolean is_dir);
void fsd_mf_after_unlink(int dirfd, const char *name);
/* model-passthrough.c (passthrough and none) */
int fsd_pt_set_cred(FsdExport *e, int dirfd, const char *name, const FsdCred *cred);
int fsd_pt_set_cred_fd(FsdExport *e, int fd, const FsdCred *cred);

static inline gboolean fsd_model_is_mapped(FsdModel m)
{
    return m == FSD_SM_MAPPED_XATTR || m == FSD_SM_MAPPED_FILE;
}
