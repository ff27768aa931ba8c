/* Guest RAM on the host: see memory-backend.h. */
#include "vmmd/memory-backend.h"
#include "common/error.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

static int open_memfd(guint64 size, const char *what, GError **error)
{
    int fd = memfd_create("guest-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        vmm_set_errno(error, errno, "%s: memfd_create", what);
        return -1;
    }
    if (ftruncate(fd, (off_t)size) < 0) {
        vmm_set_errno(error, errno, "%s: ftruncate to %" G_GUINT64_FORMAT " bytes", what, size);
        close(fd);
        return -1;
    }
    /* Every helper mapping it may rely on its size: a shrunk memfd would
     * SIGBUS blockd or fsd (which map it too) instead of failing cleanly. */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
        vmm_debug("%s: sealing its size: %s", what, g_strerror(errno));
    return fd;
}

/* mem-path is a directory (a hugetlbfs mount, say): a file of our own in it,
 * unlinked at once, as QEMU does; or a file, created if missing and kept. */
static int open_backing_store(const char *path, guint64 size, GError **error)
{
    int fd;
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        g_autofree char *tmpl = g_build_filename(path, "vmmd_back_mem.XXXXXX", NULL);
        fd = mkostemp(tmpl, O_CLOEXEC);
        if (fd >= 0)
            unlink(tmpl);
    } else {
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    }
    if (fd < 0 || fstat(fd, &st) < 0) {
        vmm_set_errno(error, errno, "can't open backing store %s for guest RAM", path);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    /* An empty file is sized for the guest; a smaller non-empty one is
     * somebody's data, which QEMU refuses to grow. */
    if (st.st_size > 0 && (guint64)st.st_size < size) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "backing store size 0x%" G_GINT64_MODIFIER "x does not match 'size' option 0x%"
                    G_GINT64_MODIFIER "x", (guint64)st.st_size, size);
        close(fd);
        return -1;
    }
    if (st.st_size == 0 && ftruncate(fd, (off_t)size) < 0) {
        vmm_set_errno(error, errno, "can't resize backing store %s to %" G_GUINT64_FORMAT " bytes",
                      path, size);
        close(fd);
        return -1;
    }
    return fd;
}

static gboolean open_object(const VmmObjectConfig *o, VmmGuestRam *ram, GError **error)
{
    ram->id = g_strdup(o->id);
    ram->size = o->size;
    ram->share = o->share;
    ram->prealloc = o->prealloc;
    ram->discard_data = o->discard_data;
    if (o->kind == VMM_OBJECT_MEMORY_MEMFD) {
        g_autofree char *what = g_strdup_printf("memory-backend-memfd '%s'", o->id);
        ram->type = "memory-backend-memfd";
        ram->fd = open_memfd(o->size, what, error);
    } else {
        ram->type = "memory-backend-file";
        ram->fd = open_backing_store(o->mem_path, o->size, error);
    }
    return ram->fd >= 0;
}

gboolean vmm_guest_ram_open(const VmmVmConfig *vm, VmmGuestRam *ram, GError **error)
{
    memset(ram, 0, sizeof(*ram));
    ram->fd = -1;
    ram->merge = vm->machine.mem_merge;
    ram->dump = vm->machine.dump_guest_core;
    const char *backend = vm->machine.memory_backend;
    if (backend) {
        const VmmObjectConfig *o = vmm_vm_config_find_object(vm, backend);
        if (!o) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Memory backend '%s' not found", backend);
            return FALSE;
        }
        return open_object(o, ram, error);
    }
    /* Plain -m: QEMU's "microvm.ram"; a memfd that vmmd keeps, so that the
     * guest's memory outlives a vcpu-worker restart. */
    ram->id = g_strdup_printf("%s.ram", vm->machine.type ? vm->machine.type->family : "microvm");
    ram->type = "memory-backend-memfd";
    ram->size = vm->ram_size;
    ram->share = TRUE;
    ram->fd = open_memfd(vm->ram_size, "guest RAM", error);
    return ram->fd >= 0;
}

void vmm_guest_ram_describe(const VmmGuestRam *ram, JsonObject *args)
{
    json_object_set_int_member(args, "ram-size", (gint64)ram->size);
    json_object_set_boolean_member(args, "ram-share", ram->share);
    json_object_set_boolean_member(args, "ram-prealloc", ram->prealloc);
    json_object_set_boolean_member(args, "mem-merge", ram->merge);
    json_object_set_boolean_member(args, "dump-guest-core", ram->dump);
}

void vmm_guest_ram_release(VmmGuestRam *ram, gboolean clean_exit)
{
    if (ram->fd >= 0 && clean_exit && ram->discard_data && ram->share &&
        fallocate(ram->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)ram->size) < 0)
        vmm_warn("%s '%s': discard-data: punching out the guest's pages: %s", ram->type,
                    ram->id, g_strerror(errno));
    if (ram->fd >= 0)
        close(ram->fd);
    ram->fd = -1;
    g_clear_pointer(&ram->id, g_free);
}

JsonObject *vmm_guest_ram_memdev_info(const VmmGuestRam *ram)
{
    JsonObject *o = json_object_new();
    if (ram->id)
        json_object_set_string_member(o, "id", ram->id);
    json_object_set_int_member(o, "size", (gint64)ram->size);
    json_object_set_boolean_member(o, "merge", ram->merge);
    json_object_set_boolean_member(o, "dump", ram->dump);
    json_object_set_boolean_member(o, "prealloc", ram->prealloc);
    json_object_set_boolean_member(o, "share", ram->share);
    json_object_set_boolean_member(o, "reserve", TRUE);
    json_object_set_array_member(o, "host-nodes", json_array_new());
    json_object_set_string_member(o, "policy", "default");
    return o;
}
