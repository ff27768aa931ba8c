/* The VM's 9p exports on vmmd's command line: -fsdev, -device
 * virtio-9p-device and -virtfs, with QEMU 7.2's syntax and messages
 * (docs/fsdev.md). Parsing only: vmmd/fsdev-run.c opens the export
 * directories and hands them to fsd and the sockets to vcpu-worker.
 *
 * Every export is served by fsd (DESIGN.md): "-fsdev local,path=" makes
 * vmmd's own fsd serve PATH; socket=PATH or sock_fd=N (also QEMU's "proxy"
 * fsdriver spelling) name an fsd that already runs, which vcpu-worker then
 * talks to directly. */
#pragma once
#include <glib.h>
#include <sys/types.h>

/* QEMU's virtio-9p limit on the mount tag (observed on 7.2: 31 bytes). */
#define VMM_9P_MAX_TAG_LEN 31

/* The throttling keys (QEMU's -fsdev throttling.*), in this order. */
typedef enum {
    VMM_FSDEV_THR_BPS_TOTAL, VMM_FSDEV_THR_BPS_READ, VMM_FSDEV_THR_BPS_WRITE,
    VMM_FSDEV_THR_IOPS_TOTAL, VMM_FSDEV_THR_IOPS_READ, VMM_FSDEV_THR_IOPS_WRITE,
    VMM_FSDEV_THR_BPS_TOTAL_MAX, VMM_FSDEV_THR_BPS_READ_MAX, VMM_FSDEV_THR_BPS_WRITE_MAX,
    VMM_FSDEV_THR_IOPS_TOTAL_MAX, VMM_FSDEV_THR_IOPS_READ_MAX, VMM_FSDEV_THR_IOPS_WRITE_MAX,
    VMM_FSDEV_THR_IOPS_SIZE,
    VMM_FSDEV_THR_N,
} VmmFsdevThrottleKey;

/* "bps-total", ..., "iops-size" (without the "throttling." prefix). */
const char *vmm_fsdev_throttle_key_name(VmmFsdevThrottleKey k);

typedef struct {
    char *id;
    char *option;              /* "-fsdev VALUE" or "-virtfs VALUE", for messages */
    char *driver;              /* "local" or "proxy" */
    char *path;                /* the export (local without socket/sock_fd) */
    char *security_model;      /* passthrough | mapped-xattr | mapped-file | none */
    gboolean readonly;
    gboolean writeout_immediate;
    gboolean fmode_set, dmode_set;
    mode_t fmode, dmode;       /* QEMU's defaults 0600 / 0700 */
    char *multidevs;           /* remap | forbid | warn, or NULL */
    char *socket;              /* socket=PATH: a running fsd's Unix socket */
    int sock_fd;               /* sock_fd=N: vmmd's fd N, a socket to a running fsd; -1 */
    guint64 throttle[VMM_FSDEV_THR_N]; /* 0: not set */
    gboolean in_use;           /* a device refers to it */
} VmmFsdev;

typedef struct {
    char *id;                  /* -device id=, or NULL */
    char *option;              /* "-device VALUE" or "-virtfs VALUE", for messages */
    char *fsdev;               /* the fsdev's id */
    char *mount_tag;
    guint index;               /* order among the virtio-9p devices */
} VmmFsDevice;

typedef struct {
    GPtrArray *fsdevs;         /* VmmFsdev*, command-line order */
    GPtrArray *devices;        /* VmmFsDevice*, command-line order */
} VmmFsdevSet;

void vmm_fsdev_set_init(VmmFsdevSet *set);
void vmm_fsdev_set_clear(VmmFsdevSet *set);

/* -fsdev VALUE, -virtfs VALUE, -device virtio-9p-device,... Errors carry
 * QEMU's text, prefixed with the option and its value as QEMU prints them. */
gboolean vmm_fsdev_parse(VmmFsdevSet *set, const char *value, GError **error);
gboolean vmm_virtfs_parse(VmmFsdevSet *set, const char *value, GError **error);
/* TRUE if DRIVER is a -device model handled here (virtio-9p-device). */
gboolean vmm_fsdev_device_is_9p(const char *driver);
gboolean vmm_9p_device_parse(VmmFsdevSet *set, const char *value, GError **error);
/* Whole-command-line checks (nothing yet beyond what parsing checks). */
gboolean vmm_fsdevs_finish(VmmFsdevSet *set, GError **error);

VmmFsdev *vmm_fsdev_find(const VmmFsdevSet *set, const char *id);
/* Whether the fsdev is an fsd that already runs (socket= or sock_fd=). */
gboolean vmm_fsdev_is_external(const VmmFsdev *f);
