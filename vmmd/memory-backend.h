/* Guest RAM on the host: vmmd creates it (a memfd, or the file of a
 * memory-backend-file) and owns its fd; vcpu-worker maps what it is handed,
 * shared or private as the backend says. vmmd also performs discard-data at
 * a clean exit (spec-checklist decision 18). */
#pragma once
#include <glib.h>
#include <json-glib/json-glib.h>

#include "vmmd/vm-options.h"

typedef struct VmmGuestRam {
    int fd;                    /* -1 when closed */
    guint64 size;
    char *id;                  /* the -object id, or NULL for plain -m */
    const char *type;          /* "memory-backend-memfd", "memory-backend-file" */
    gboolean share;            /* MAP_SHARED (else the guest's writes stay private) */
    gboolean prealloc;
    gboolean discard_data;
    gboolean merge, dump;      /* -machine mem-merge, dump-guest-core */
} VmmGuestRam;

/* Creates or opens the guest's RAM for VM: -machine memory-backend=ID's
 * object, or an anonymous memfd of -m's size. Errors name the object and the
 * file, in QEMU's words ("can't open backing store PATH for guest RAM: ..."). */
gboolean vmm_guest_ram_open(const VmmVmConfig *vm, VmmGuestRam *ram, GError **error);
/* Adds what vcpu-worker needs to map RAM to vm-start's ARGS: ram-size,
 * ram-share, ram-prealloc, mem-merge, dump-guest-core. */
void vmm_guest_ram_describe(const VmmGuestRam *ram, JsonObject *args);
/* Closes the fd; on a clean exit with discard-data=on (and a shared mapping,
 * the only case in which the guest's writes reach the file) punches the file's
 * pages out first, so they are not written back for nothing. */
void vmm_guest_ram_release(VmmGuestRam *ram, gboolean clean_exit);
/* QMP query-memdev's entry for RAM (QEMU 7.2's MemdevInfo). */
JsonObject *vmm_guest_ram_memdev_info(const VmmGuestRam *ram);
