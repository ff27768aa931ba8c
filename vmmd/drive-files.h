/* vmmd opens a drive's images for blockd, which has no filesystem access in
 * a VM: the top image (read-write unless the drive is read-only or in
 * snapshot mode) and, for qcow2, every backing file (read-only), named as
 * blockd's block layer will ask for them (vmm_block_resolve_backing), plus an
 * unlinked temporary file for the overlay of snapshot=on. */
#pragma once
#include "vmmd/drive.h"

#define VMM_DRIVE_MAX_FILES 14   /* 16 fds per message: the socket, the overlay */

typedef struct {
    char *paths[VMM_DRIVE_MAX_FILES]; /* top (absolute), then the backing chain */
    int fds[VMM_DRIVE_MAX_FILES];
    guint n;
    char *format;             /* the top's format: given, or probed (qcow2 or raw) */
    gboolean probed;          /* blockd probes it too (format not sent) */
    char *backing_file;       /* the top's backing file name as its header writes it */
    int overlay_fd;           /* snapshot=on: an unlinked temporary file; else -1 */
} VmmDriveFiles;

void vmm_drive_files_init(VmmDriveFiles *f);
void vmm_drive_files_clear(VmmDriveFiles *f);
/* Errors read like QEMU's: "Could not open '/x': No such file or directory". */
gboolean vmm_drive_files_open(const VmmDrive *d, VmmDriveFiles *f, GError **error);

/* The block layer's rule (blockd/block.c): relative to the directory of the
 * image that names it; absolute names and protocols as they are. */
char *vmm_drive_resolve_backing(const char *image, const char *backing);

/* Reads the qcow2 header of FD: FALSE (no error) if it is not qcow2.
 * *BACKING and *BACKING_FMT (g_free) are NULL when absent. */
gboolean vmm_drive_qcow2_backing(int fd, const char *name, gboolean *is_qcow2, char **backing,
                                 char **backing_fmt, GError **error);
