/* Images handed over as open file descriptors. Inside a VM, blockd has no
 * filesystem access: vmmd opens every image of a drive (the top image and its
 * backing chain) and passes the fds with "drive-add". The file driver asks
 * this table before it opens or creates a path; in strict mode a path that is
 * not in the table is refused instead of opened, so a sandboxed blockd never
 * makes a call its seccomp filter would kill it for. */
#pragma once
#include <glib.h>

/* Registers FD (ownership passes to the table) as the image at PATH, the name
 * the block layer will open it by (a backing file: as vmm_block_resolve_backing
 * gives it). A later entry for the same PATH replaces the earlier one. */
void vmm_block_preopen_add(const char *path, int fd);
void vmm_block_preopen_remove(const char *path);
void vmm_block_preopen_clear(void);
/* Refuse paths that are not in the table (blockd in a VM). */
void vmm_block_preopen_set_strict(gboolean strict);
gboolean vmm_block_preopen_is_strict(void);

/* TRUE when the table decides for PATH: *FD is then a new descriptor for it
 * (close-on-exec, O_DIRECT added if OFLAGS asks), or -1 with errno EACCES
 * (read-write wanted of a read-only entry, or PATH not handed over in strict
 * mode). FALSE: open PATH as usual. */
gboolean vmm_block_preopen_open(const char *path, int oflags, int *fd);
