/* The VM's disks on vmmd's command line: -drive, -blockdev, -device
 * virtio-blk-device and -snapshot, with QEMU 7.2's syntax and messages
 * (docs/drives.md). Parsing only: vmmd/drive-files.c opens the images and
 * vmmd/drive-run.c hands them to blockd and vcpu-worker.
 *
 * Keys split as DESIGN.md says: block-layer keys (file, format, snapshot,
 * cache.*, aio, discard, detect-zeroes, driver options) become the options of
 * a blockd node; device keys (if, media, serial, werror, rerror) belong to the
 * virtio-blk device in vcpu-worker. */
#pragma once
#include <glib.h>
#include <json-glib/json-glib.h>

typedef enum {
    VMM_DRIVE_IF_NONE,
    VMM_DRIVE_IF_VIRTIO,
} VmmDriveIf;

/* QEMU's BlockdevOnError; "auto" (a device's: the drive's action) is not a
 * -drive value. */
typedef enum {
    VMM_DRIVE_ERROR_REPORT,
    VMM_DRIVE_ERROR_IGNORE,
    VMM_DRIVE_ERROR_STOP,
    VMM_DRIVE_ERROR_ENOSPC,
    VMM_DRIVE_ERROR_AUTO,
} VmmDriveErrorAction;

typedef struct {
    char *id;                /* -drive id= (or QEMU's "none0"/"virtio0" name), -blockdev node-name= */
    char *option;            /* "-drive VALUE" as given, for messages */
    gboolean from_blockdev;  /* -blockdev: no device defaults, no legacy keys */
    char *filename;          /* the top image, as given */
    char *format;            /* "qcow2", "raw", or NULL: probe */
    VmmDriveIf iface;
    gboolean read_only;
    gboolean snapshot;       /* snapshot=on, or -snapshot */
    gboolean media_cdrom;    /* media=cdrom (read-only disk on virtio-blk) */
    /* cache=: QEMU's three flags */
    gboolean cache_writeback, cache_direct, cache_no_flush;
    char *aio;               /* threads | native | io_uring */
    char *discard;           /* ignore | unmap */
    char *detect_zeroes;     /* off | on | unmap */
    VmmDriveErrorAction werror, rerror;
    char *serial;            /* deprecated -drive serial= */
    /* Everything blockd's vmm_block_open() gets as options besides the
     * filename and format: driver options, "file": {...}, cache, ... */
    JsonObject *block_options;
    gboolean in_use;         /* a device claimed it */
} VmmDrive;

typedef struct {
    char *id;                /* -device id=, or NULL */
    char *drive;             /* the drive's id (or node-name) */
    char *serial;            /* serial=, or the drive's deprecated one */
    gboolean share_rw;
    VmmDriveErrorAction werror, rerror; /* from the drive (-blockdev: QEMU's defaults) */
    gboolean read_only;      /* the drive's, or a -blockdev read-only=on */
    gboolean writeback;      /* the write cache starts on (cache= of the drive) */
    guint index;             /* virtio-mmio transport order */
} VmmBlkDevice;

typedef struct {
    GPtrArray *drives;       /* VmmDrive*, command-line order */
    GPtrArray *devices;      /* VmmBlkDevice*, after vmm_drives_finish */
    gboolean snapshot;       /* -snapshot */
    guint if_count[2];       /* drives per interface, for QEMU's default ids */
} VmmDriveSet;

void vmm_drive_set_init(VmmDriveSet *set);
void vmm_drive_set_clear(VmmDriveSet *set);

/* -drive VALUE, -blockdev VALUE, -device virtio-blk-device,... Errors carry
 * QEMU's text, prefixed with the option and its value as QEMU prints them. */
gboolean vmm_drive_parse(VmmDriveSet *set, const char *value, GError **error);
gboolean vmm_blockdev_parse(VmmDriveSet *set, const char *value, GError **error);
/* TRUE if DRIVER is a -device model handled here (virtio-blk-device). */
gboolean vmm_drive_device_is_block(const char *driver);
gboolean vmm_blk_device_parse(VmmDriveSet *set, const char *value, GError **error);

/* Whole-command-line checks: -device drive= references, drives used twice,
 * devices for if=virtio drives, -snapshot applied; fills set->devices. */
gboolean vmm_drives_finish(VmmDriveSet *set, GError **error);

VmmDrive *vmm_drive_find(const VmmDriveSet *set, const char *id);
const char *vmm_drive_error_action_name(VmmDriveErrorAction a);
/* QEMU's "cache" object of query-block and its mode name ("writeback", ...). */
const char *vmm_drive_cache_mode(const VmmDrive *d);
