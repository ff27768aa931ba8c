/* Mapping the guest's RAM (the memfd or memory-backend-file vmmd made) in the
 * processes that touch it: vcpu-worker, and blockd and fsd, which move disk
 * and 9P data straight between files and guest memory. */
#pragma once
#include <glib.h>

/* FD's first SIZE bytes, read-write, with FLAGS (MAP_SHARED or MAP_PRIVATE,
 * maybe MAP_POPULATE), at an address aligned to 2 MiB and advised
 * MADV_HUGEPAGE: a transparent huge page of the file is then mapped whole
 * (one fault and one TLB entry per 2 MiB) wherever the host allows huge pages
 * for shmem. MAP_FAILED with errno on failure (EINVAL for a file shorter than
 * SIZE). */
void *vmm_guest_ram_map(int fd, guint64 size, int flags);

/* For a helper that moves a VM's data straight in guest RAM (blockd, fsd;
 * one VM per process): maps FD (taken, closed here) of SIZE bytes shared the
 * first time, kept for the process's life and left out of its core dumps,
 * and returns it; later calls with the same SIZE return that mapping. NULL,
 * logged with WHAT ("drive data", "9P data") going through the socket
 * instead, when it cannot be mapped or is not the RAM mapped first. */
guint8 *vmm_guest_ram_adopt(int fd, guint64 size, const char *what);
