/* Shared by the server core (9p-server.c) and the operations (9p-ops.c). */
#pragma once
#include "fsd/fsd-internal.h"

typedef enum {
    FID_PATH,          /* walked to, not open */
    FID_FILE,          /* lopen/lcreate of a non-directory */
    FID_DIR,           /* lopen of a directory */
    FID_XATTR_READ,    /* xattrwalk: a value or name list to read */
    FID_XATTR_WRITE,   /* xattrcreate: a value to write, set at clunk */
} FidKind;

typedef struct {
    gint ref;
    guint32 num;
    guint32 uid;            /* the attach's n_uname: owner of what it creates */
    GMutex lock;            /* node, kind, fd, xattr state, readdir position */
    FsdNode *node;
    FidKind kind;
    int fd;
    guint64 dir_pos;        /* readdir: where the descriptor stands */
    GByteArray *xattr;
    char *xattr_name;       /* host name for FID_XATTR_WRITE */
    guint64 xattr_copied;
    int xattr_flags;
} Fid;

typedef struct FsdConn FsdConn;
typedef struct {
    FsdConn *conn;
    guint8 *buf;
    gsize len;
    P9Fcall in;
    guint16 tag;
    guint generation;
    gint cancelled;
    gboolean started;
    GArray *flushes;        /* tags of Tflush waiting for this request */
    VmmSplicePipe *pipe;    /* an Rread's data, spliced from the file (the worker's pipe) */
    struct iovec *segs;     /* Tread.vmm/Twrite.vmm: the data's place in guest RAM */
    guint nsegs;
    guint64 seg_bytes;      /* what SEGS add up to */
} Req;

struct FsdConn {
    gint ref;
    FsdExport *e;
    FsdSendFunc send;
    gpointer user;
    GMutex lock;
    GHashTable *fids;       /* num -> Fid (one reference) */
    GHashTable *pending;    /* tag -> Req */
    guint32 msize;
    guint generation;       /* a Tversion or close starts a new one */
    gboolean closed;
    guint running;          /* requests started and not finished (lock) */
    GCond idle;             /* running fell to 0 */
    guint idle_waiters;     /* threads waiting on IDLE (lock) */
    guint8 *mem;            /* the guest's RAM (a VM's connection only), set before the first message */
    guint64 mem_size;
    gint run_inline;        /* atomic: quick requests run on the receiving thread */
};

Fid *fsd_fid_new(guint32 num, guint32 uid, FsdNode *node);
void fsd_fid_unref(Fid *f);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Fid, fsd_fid_unref)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FsdNode, fsd_node_unref)
/* A reference to fid NUM, or NULL. */
Fid *fsd_conn_fid(FsdConn *c, guint32 num);
gboolean fsd_conn_fid_exists(FsdConn *c, guint32 num);
/* Adds F (taking a reference of its own); -EEXIST if the number is used. */
int fsd_conn_fid_add(FsdConn *c, Fid *f);
/* Takes fid NUM out of the table; the caller owns the table's reference. */
Fid *fsd_conn_fid_remove(FsdConn *c, guint32 num);
FsdNode *fsd_fid_node(Fid *f);
void fsd_fid_set_node(Fid *f, FsdNode *n);   /* takes N's reference */
/* Fids that named PDEV:PINO/OLDNAME now name NEWDIR/NEWNAME. */
void fsd_conn_fix_renamed(FsdConn *c, dev_t pdev, ino_t pino, const char *oldname,
                          FsdNode *newdir, const char *newname);

/* Runs R; fills OUT (its data, if any, is a g_malloc'd buffer the caller
 * frees). 0 or -errno. */
int fsd_ops_dispatch(FsdConn *c, Req *r, P9Fcall *out);
/* The calling worker's pipe for spliced reads (one per thread, made on
 * first use), or NULL when splicing is off or no pipe can be had. */
VmmSplicePipe *fsd_worker_pipe(void);
int fsd_open_beneath(int dirfd, const char *name, int flags, mode_t mode);
