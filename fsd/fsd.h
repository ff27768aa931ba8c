/* fsd's 9P2000.L server: one export (a host directory served under a security
 * model), connections that carry 9P messages to it, and the fids and nodes
 * that name what a connection has walked to. The transport (Unix/TCP sockets
 * on a libuv loop, or a socketpair from vmmd) is fsd/9p-transport.c; the
 * codec is fsd/9p-wire.c. docs/fsd.md describes the whole. */
#pragma once
#include "fsd/9p-wire.h"

#include <glib.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef enum {
    FSD_SM_PASSTHROUGH,   /* real ownership and modes (needs privileges) */
    FSD_SM_MAPPED_XATTR,  /* credentials in user.virtfs.* xattrs */
    FSD_SM_MAPPED_FILE,   /* credentials in .virtfs_metadata/NAME files */
    FSD_SM_NONE,          /* passthrough, chown failures ignored */
} FsdModel;

/* Parses QEMU's security_model names ("mapped" is mapped-xattr). */
gboolean fsd_model_parse(const char *s, FsdModel *out, GError **error);
const char *fsd_model_name(FsdModel m);

/* ---- throttling (fsd/throttle.c): QEMU's -fsdev throttling.* ---- */
typedef enum {
    FSD_THR_BPS_TOTAL, FSD_THR_BPS_READ, FSD_THR_BPS_WRITE,
    FSD_THR_OPS_TOTAL, FSD_THR_OPS_READ, FSD_THR_OPS_WRITE,
    FSD_THR_N,
} FsdThrottleBucket;

typedef struct {
    guint64 avg[FSD_THR_N];   /* per second; 0 = unlimited */
    guint64 max[FSD_THR_N];   /* burst: bucket size; 0 = avg / 10 */
    guint64 iops_size;        /* a request of N bytes counts N / iops_size ops */
} FsdThrottleConfig;

typedef struct FsdThrottle FsdThrottle;
/* Sets KEY ("bps-total", "iops-read-max", "iops-size", with or without a
 * "throttling." prefix) to VALUE. */
gboolean fsd_throttle_config_set(FsdThrottleConfig *c, const char *key, guint64 value, GError **error);
/* QEMU's consistency rules: total with read/write is an error, max < avg. */
gboolean fsd_throttle_config_check(const FsdThrottleConfig *c, GError **error);
gboolean fsd_throttle_config_enabled(const FsdThrottleConfig *c);
FsdThrottle *fsd_throttle_new(const FsdThrottleConfig *c);
void fsd_throttle_free(FsdThrottle *t);
/* Waits until a request of BYTES may go, then charges it. Returns FALSE
 * (nothing charged) if *CANCELLED became TRUE while waiting. */
gboolean fsd_throttle_wait(FsdThrottle *t, gboolean is_write, guint64 bytes, const gint *cancelled);

/* ---- the export ---- */
typedef struct {
    char *path;
    char *tag;              /* attach accepts aname "", "/", PATH or TAG */
    FsdModel model;
    gboolean readonly;
    gboolean writeout_immediate;
    mode_t fmode, dmode;    /* mapped models: host modes of new files/dirs */
    guint32 max_msize;
    guint threads;          /* worker pool size */
    FsdThrottleConfig throttle;
} FsdExportConfig;

void fsd_export_config_init(FsdExportConfig *c);   /* QEMU's defaults */
void fsd_export_config_clear(FsdExportConfig *c);

typedef struct FsdExport FsdExport;
/* Opens the export directory. */
FsdExport *fsd_export_new(const FsdExportConfig *c, GError **error);
void fsd_export_free(FsdExport *e);
int fsd_export_rootfd(FsdExport *e);

/* ---- connections (fsd/9p-server.c) ---- */
typedef struct FsdConn FsdConn;
typedef struct VmmSplicePipe VmmSplicePipe;
/* Called from any thread with one complete reply in NIOV pieces (a head and
 * the data of an Rread or Rreaddir, so the data is not copied on its way)
 * and, when PIPE is not NULL, PIPED more bytes of it in PIPE (an Rread's
 * data spliced from the file, VMM_SPLICE=1), which the callee moves on or
 * reads out before it returns. Must not block for long (queue it). Replies
 * to different tags may come in any order. */
typedef void (*FsdSendFunc)(FsdConn *c, const struct iovec *iov, unsigned niov, VmmSplicePipe *pipe, gsize piped,
                            gpointer user);

FsdConn *fsd_conn_new(FsdExport *e, FsdSendFunc send, gpointer user);
/* The guest's RAM as fsd maps it (SIZE bytes at BASE), for a VM's own
 * connection: Tread.vmm and Twrite.vmm (proto/9p.h) then move data straight
 * between files and guest memory. Call before the first message. */
void fsd_conn_set_guest_memory(FsdConn *c, guint8 *base, guint64 size);
/* With ON, a quick request runs on the thread that hands it in, before
 * fsd_conn_receive*() returns, instead of going through the worker pool:
 * it saves the pool's handoff (a futex wake, a context switch and the
 * worker's timed wait), which under virtualisation is a good part of such
 * a request's cost. Quick: walk, getattr, clunk, statfs, readlink, the
 * namespace changes, locks, xattrs, setattr and lopen without a truncate,
 * and reads and writes of up to 64 KiB when neither throttling nor
 * writeout=immediate can make them wait. fsync, readdir, truncates and
 * bigger I/O always go to the pool. The transport turns it on while this
 * is its only connection, so that a slow filesystem call of one client
 * never holds up another's. Off by default. */
void fsd_conn_set_run_inline(FsdConn *c, gboolean on);
/* Largest message this connection accepts now (msize once negotiated). */
guint32 fsd_conn_msize(FsdConn *c);
/* One complete message (LEN = its size field) from the peer. The buffer is
 * copied. Malformed messages get an Rlerror; nothing here fails. */
void fsd_conn_receive(FsdConn *c, const guint8 *msg, gsize len);
/* The same, taking MSG (g_malloc'd) instead of copying it. */
void fsd_conn_receive_take(FsdConn *c, guint8 *msg, gsize len);
/* The size field said SIZE, more than msize: answer Rlerror(EMSGSIZE) for
 * TAG (the caller discards the body). */
void fsd_conn_refuse_oversize(FsdConn *c, guint8 type, guint16 tag, guint32 size);
/* The peer went away: pending requests are dropped, no more sends; the
 * connection is freed once the last request is done. */
void fsd_conn_close(FsdConn *c);
/* Requests in flight (for tests). */
guint fsd_conn_pending(FsdConn *c);
