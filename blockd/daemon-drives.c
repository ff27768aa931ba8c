/* A VM's drives in helper mode: "drive-add" opens the drive's node from the
 * image fds vmmd hands over (never by path: blockd/preopen.h) and serves it
 * over NBD on the socketpair end that came with them, export name = drive id.
 *
 *   drive-add {id, format?, read-only?, share-rw?, snapshot?, options?{...},
 *              files: [top, backing, ...], guest-memory?: SIZE}
 *   fds: [NBD socket, one per file in order, the snapshot overlay if snapshot,
 *         the guest's RAM if guest-memory]
 *   -> {"size", "format", "read-only", "backing-depth"}
 *
 * With guest-memory, blockd maps the guest's RAM (the fd vcpu-worker maps,
 * SIZE bytes, shared) and vcpu-worker may move the drive's data through it
 * (NBD_OPT_VMM_GUEST_MEMORY, proto/nbd.h) instead of through the socket.
 * One VM per blockd: the first mapping serves every drive and every later
 * connection.
 *
 * A drive-add for an export that exists (vcpu-worker restarted and needs a
 * new connection) only serves the new socket; the image fds are closed. */
#include "blockd/daemon.h"
#include "blockd/preopen.h"
#include "common/error.h"
#include "common/guest-ram.h"
#include "common/log.h"
#include "proto/control.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

static void close_all(int *fds, guint n)
{
    for (guint i = 0; i < n; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
        fds[i] = -1;
    }
}

/* The name the overlay of drive ID is registered under: a path no image has. */
static char *overlay_key(const char *id)
{
    return g_strdup_printf("/vmmd-drive-overlay/%s.qcow2", id);
}

/* snapshot=on: BASE read-only under a qcow2 overlay created on the fd vmmd
 * passed (an unlinked temporary file), as block.c's -snapshot does with a
 * file of its own, which a sandboxed blockd cannot create. */
static VmmBlockDev *open_overlay(const char *id, VmmBlockDev *base, int flags, GError **error)
{
    g_autofree char *key = overlay_key(id);
    g_autoptr(JsonObject) copts = json_object_new();
    json_object_set_int_member(copts, "size", (gint64)vmm_block_size(base));
    json_object_set_string_member(copts, "backing_file", base->filename);
    json_object_set_string_member(copts, "backing_fmt", vmm_block_format_name(base) ? vmm_block_format_name(base) : "raw");
    if (!vmm_block_create(key, "qcow2", copts, error))
        return NULL;
    VmmBlockDev *overlay = vmm_block_open(key, "qcow2", NULL,
                                          (flags | VMM_BDRV_O_RDWR | VMM_BDRV_O_NO_BACKING) &
                                              ~VMM_BDRV_O_SNAPSHOT, error);
    if (!overlay)
        return NULL;
    overlay->open_flags &= ~VMM_BDRV_O_NO_BACKING;
    overlay->backing = vmm_block_ref(base);
    return overlay;
}

static VmmBlockDev *open_drive_node(JsonObject *a, const char *id, const char *top, gboolean overlay,
                                    GError **error)
{
    gboolean ro = json_object_get_boolean_member_with_default(a, "read-only", FALSE);
    gboolean snapshot = json_object_get_boolean_member_with_default(a, "snapshot", FALSE);
    int flags = (ro || snapshot ? 0 : VMM_BDRV_O_RDWR) |
                (json_object_get_boolean_member_with_default(a, "share-rw", FALSE) ? VMM_BDRV_O_SHARE_RW : 0);
    JsonObject *opts = json_object_has_member(a, "options") ? json_object_get_object_member(a, "options") : NULL;
    const char *format = json_object_get_string_member_with_default(a, "format", NULL);
    VmmBlockDev *bs = vmm_block_open(top, format, opts, flags, error);
    if (!bs || !snapshot)
        return bs;
    if (!overlay) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "snapshot=on needs the overlay fd from vmmd");
        vmm_block_unref(bs);
        return NULL;
    }
    VmmBlockDev *top_node = open_overlay(id, bs, flags, error);
    vmm_block_unref(bs);
    return top_node;
}

static guint backing_depth(VmmBlockDev *bs)
{
    guint n = 0;
    for (VmmBlockDev *b = bs->backing; b; b = b->backing)
        n++;
    return n;
}

static JsonObject *describe(VmmBlockDev *bs, gboolean snapshot)
{
    JsonObject *r = json_object_new();
    /* The overlay of snapshot=on is not one of the user's images. */
    if (snapshot && bs->backing)
        bs = bs->backing;
    json_object_set_int_member(r, "size", (gint64)vmm_block_size(bs));
    const char *fmt = vmm_block_format_name(bs);
    json_object_set_string_member(r, "format", fmt ? fmt : "raw");
    json_object_set_boolean_member(r, "read-only", bs->read_only);
    json_object_set_int_member(r, "backing-depth", (gint64)backing_depth(bs));
    return r;
}


static gboolean add_drive(BlockdExports *e, JsonObject *a, int *fds, guint nfds, JsonObject **result,
                          GError **error)
{
    NbdServer *server = blockd_exports_server(e);
    const char *id = json_object_get_string_member_with_default(a, "id", NULL);
    JsonArray *files = json_object_has_member(a, "files") ? json_object_get_array_member(a, "files") : NULL;
    gboolean overlay = json_object_get_boolean_member_with_default(a, "snapshot", FALSE);
    gint64 mem_size = json_object_get_int_member_with_default(a, "guest-memory", 0);
    guint nfiles = files ? json_array_get_length(files) : 0;

    if (!id || nfiles == 0 || fds[0] < 0 || mem_size < 0 ||
        nfds != 1 + nfiles + (overlay ? 1 : 0) + (mem_size ? 1 : 0)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "drive-add: needs 'id', 'files' and the fds [socket, one per file%s%s]",
                    overlay ? ", overlay" : "", mem_size ? ", guest memory" : "");
        return FALSE;
    }
    NbdGuestMemory guest = { NULL, (guint64)mem_size };
    if (mem_size) {
        guest.base = vmm_guest_ram_adopt(fds[nfds - 1], guest.size, "drive data");
        fds[--nfds] = -1;
    }
    const NbdGuestMemory *mem = guest.base ? &guest : NULL;
    g_autoptr(NbdExport) existing = nbd_server_find_export(server, id);
    if (existing) {
        close_all(fds + 1, nfds - 1);
        int sock = fds[0];
        fds[0] = -1;
        if (!nbd_server_serve_fd_guest(server, sock, mem, error))
            return FALSE;
        *result = describe(nbd_export_blockdev(existing), overlay);
        return TRUE;
    }
    for (guint i = 0; i < nfiles; i++) {
        vmm_block_preopen_add(json_array_get_string_element(files, i), fds[1 + i]);
        fds[1 + i] = -1;
    }
    if (overlay) {
        g_autofree char *key = overlay_key(id);
        vmm_block_preopen_add(key, fds[nfds - 1]);
        fds[nfds - 1] = -1;
    }
    VmmBlockDev *bs = open_drive_node(a, id, json_array_get_string_element(files, 0), overlay, error);
    if (!bs)
        return FALSE;
    NbdExportConfig cfg = { .name = id, .bs = bs, .read_only = bs->read_only };
    NbdExport *exp = nbd_export_new(&cfg, error);
    gboolean ok = exp && nbd_server_add_export(server, exp, error);
    if (ok) {
        int sock = fds[0];
        fds[0] = -1;
        ok = nbd_server_serve_fd_guest(server, sock, mem, error);
        if (!ok)
            nbd_server_remove_export(server, id, TRUE, NULL);
    }
    if (ok) {
        *result = describe(bs, overlay);
        vmm_info("drive '%s': %s (%s%s) served over NBD", id, json_array_get_string_element(files, 0),
                 vmm_block_format_name(bs) ? vmm_block_format_name(bs) : "raw",
                 bs->read_only ? ", read-only" : "");
    }
    if (exp)
        nbd_export_unref(exp);
    vmm_block_unref(bs);
    return ok;
}

gboolean blockd_drives_handle(BlockdExports *e, VmmChannelRequest *req)
{
    if (!g_str_equal(vmm_channel_request_command(req), VMM_CMD_DRIVE_ADD))
        return FALSE;
    JsonObject *a = vmm_channel_request_args(req);
    int fds[16];
    guint nfds = MIN(vmm_channel_request_nfds(req), G_N_ELEMENTS(fds));
    for (guint i = 0; i < nfds; i++)
        fds[i] = vmm_channel_request_take_fd(req, i);
    g_autoptr(GError) err = NULL;
    JsonObject *result = NULL;
    if (add_drive(e, a, nfds ? fds : (int[]){ -1 }, nfds, &result, &err)) {
        vmm_channel_reply(req, result, NULL, 0);
    } else {
        const char *id = json_object_get_string_member_with_default(a, "id", "?");
        vmm_channel_reply_error(req, "GenericError", "drive '%s': %s", id, err->message);
    }
    close_all(fds, nfds);
    return TRUE;
}

/* Before the sandbox: what the file driver would otherwise find out by
 * opening /dev/null later (OFD lock support). */
void blockd_drives_prepare(void)
{
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET };
    gboolean ofd = fd >= 0 && (fcntl(fd, F_OFD_GETLK, &fl) == 0 || errno != EINVAL);
    if (fd >= 0)
        close(fd);
    vmm_block_file_set_ofd_available(ofd);
    vmm_block_preopen_set_strict(TRUE);
}
