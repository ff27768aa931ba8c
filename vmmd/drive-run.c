/* The VM's disks at run time: see drive-run.h. */
#include "vmmd/drive-run.h"
#include "vmmd/drive-files.h"
#include "vmmd/memory-backend.h"
#include "vmmd/vm-options.h"
#include "vmmd/vm.h"
#include "common/error.h"
#include "common/fdpass.h"
#include "common/log.h"
#include "proto/control.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct DriveRuntime DriveRuntime;

typedef struct {
    DriveRuntime *rt;
    VmmBlkDevice *dev;
    VmmDrive *drive;
    int client_fd;           /* our end of the current socketpair, until vcpu-worker has it */
    guint blockd_gen;        /* blockd incarnation the current connection belongs to */
    gboolean adding;         /* drive-add in flight */
    gboolean served;         /* blockd serves it (current incarnation) */
    gboolean attached;       /* vcpu-worker's NBD client completed its handshake */
    gboolean ever_attached;  /* failures after this do not stop vmmd */
    gboolean worker_has_it;  /* the current vcpu-worker attached it: new ends are reconnects */
    guint64 size;
    char *format;            /* as blockd opened it */
    char *backing_file;
    gint64 backing_depth;
    char *io_status;         /* "ok", "failed", "nospace" */
} DriveRt;

struct DriveRuntime {
    Vmmd *d;
    GPtrArray *drives;       /* DriveRt*, device order */
    guint blockd_gen;
    gboolean failed;
    gboolean stopping;       /* an I/O error's vm-stop is on its way: one STOP, as in QEMU */
};

static void drive_rt_free(gpointer p)
{
    DriveRt *r = p;
    if (r->client_fd >= 0)
        close(r->client_fd);
    g_free(r->format);
    g_free(r->backing_file);
    g_free(r->io_status);
    g_free(r);
}

static DriveRuntime *runtime(Vmmd *d)
{
    if (d->drive_rt)
        return d->drive_rt;
    DriveRuntime *rt = g_new0(DriveRuntime, 1);
    rt->d = d;
    rt->drives = g_ptr_array_new_with_free_func(drive_rt_free);
    const VmmDriveSet *set = d->config->vm ? &d->config->vm->drives : NULL;
    for (guint i = 0; set && i < set->devices->len; i++) {
        DriveRt *r = g_new0(DriveRt, 1);
        r->rt = rt;
        r->dev = set->devices->pdata[i];
        r->drive = vmm_drive_find(set, r->dev->drive);
        r->client_fd = -1;
        r->io_status = g_strdup("ok");
        g_ptr_array_add(rt->drives, r);
    }
    d->drive_rt = rt;
    return rt;
}

void vmm_drives_free(Vmmd *d)
{
    DriveRuntime *rt = d->drive_rt;
    if (!rt)
        return;
    g_ptr_array_unref(rt->drives);
    g_free(rt);
    d->drive_rt = NULL;
}

static gboolean helper_running(VmmHelperProc *hp)
{
    return hp && g_str_equal(vmm_helper_proc_state(hp), "running");
}

/* A drive that cannot be set up at start stops vmmd, as QEMU exits on it. */
static void drive_failed(DriveRt *r, const char *why)
{
    Vmmd *d = r->rt->d;
    vmm_error("%s: %s", r->drive->option, why);
    if (!r->ever_attached && !r->rt->failed) {
        r->rt->failed = TRUE;
        d->exit_code = 1;
        vmmd_request_quit(d, "host-error");
    }
}

gboolean vmm_drives_ready(Vmmd *d)
{
    DriveRuntime *rt = runtime(d);
    for (guint i = 0; i < rt->drives->len; i++) {
        DriveRt *r = rt->drives->pdata[i];
        if (!r->attached)
            return FALSE;
    }
    return TRUE;
}

/* ---- vcpu-worker: drive-attach / drive-reconnect ------------------------ */

static void on_attached(VmmChannel *ch, JsonObject *result, const GError *error, int *fds,
                        guint nfds, gpointer user)
{
    DriveRt *r = user;
    if (error) {
        g_autofree char *why = g_strdup_printf("vcpu-worker could not connect to blockd: %s",
                                               error->message);
        drive_failed(r, why);
        return;
    }
    gboolean again = r->worker_has_it;
    r->attached = r->ever_attached = r->worker_has_it = TRUE;
    if (again)
        vmm_notice("drive '%s': vcpu-worker reconnected to the restarted blockd", r->drive->id);
    else
        vmm_notice("drive '%s': vcpu-worker completed the NBD handshake with blockd (%" G_GINT64_FORMAT
                   " bytes)", r->drive->id, json_object_get_int_member_with_default(result, "size", -1));
    vmm_vm_start_waiting(r->rt->d);
}

static JsonObject *attach_args(DriveRt *r)
{
    JsonObject *a = json_object_new();
    json_object_set_string_member(a, "id", r->drive->id);
    if (r->dev->serial)
        json_object_set_string_member(a, "serial", r->dev->serial);
    json_object_set_boolean_member(a, "read-only", r->dev->read_only);
    json_object_set_boolean_member(a, "writeback", r->dev->writeback);
    json_object_set_boolean_member(a, "discard", g_strcmp0(r->drive->discard, "unmap") == 0 ||
                                                     g_strcmp0(r->drive->discard, "on") == 0);
    json_object_set_string_member(a, "werror", vmm_drive_error_action_name(r->dev->werror));
    json_object_set_string_member(a, "rerror", vmm_drive_error_action_name(r->dev->rerror));
    json_object_set_int_member(a, "index", r->dev->index);
    return a;
}

/* Hands our socketpair end to vcpu-worker when both sides are ready. */
static void give_to_worker(DriveRt *r)
{
    Vmmd *d = r->rt->d;
    VmmHelperProc *hp = vmm_supervisor_find(d, "vcpu-worker");
    /* Only once blockd serves the export: the client's handshake needs it. */
    if (r->client_fd < 0 || !r->served || !helper_running(hp) || d->quitting)
        return;
    g_autoptr(GError) err = NULL;
    gboolean reconnect = r->worker_has_it;
    JsonObject *args = reconnect ? json_object_new() : attach_args(r);
    if (reconnect)
        json_object_set_string_member(args, "id", r->drive->id);
    r->attached = FALSE;
    if (!vmm_channel_call(vmm_helper_proc_channel(hp), reconnect ? VMM_CMD_DRIVE_RECONNECT : VMM_CMD_DRIVE_ATTACH,
                          args, &r->client_fd, 1, on_attached, r, &err)) {
        drive_failed(r, err->message);
        return;
    }
    close(r->client_fd);
    r->client_fd = -1;
}

/* ---- blockd: drive-add ----------------------------------------------------- */

/* blockd's text is QEMU's ("Could not open ...", "Block format ..."): the
 * command, drive and error class around it are left out. */
static char *blockd_message(const char *msg)
{
    const char *inner = strstr(msg, "': ");
    if (g_str_has_prefix(msg, "drive-add: drive '") && inner)
        msg = inner + 3;
    char *s = g_strdup(msg);
    if (g_str_has_suffix(s, " (GenericError)"))
        s[strlen(s) - strlen(" (GenericError)")] = '\0';
    return s;
}

static void on_drive_added(VmmChannel *ch, JsonObject *result, const GError *error, int *fds,
                           guint nfds, gpointer user)
{
    DriveRt *r = user;
    r->adding = FALSE;
    if (error) {
        if (r->client_fd >= 0)
            close(r->client_fd);
        r->client_fd = -1;
        g_autofree char *msg = blockd_message(error->message);
        drive_failed(r, msg);
        return;
    }
    r->served = TRUE;
    r->size = (guint64)json_object_get_int_member_with_default(result, "size", 0);
    g_free(r->format);
    r->format = g_strdup(json_object_get_string_member_with_default(result, "format", "raw"));
    r->backing_depth = json_object_get_int_member_with_default(result, "backing-depth", 0);
    give_to_worker(r);
}

static JsonObject *drive_add_args(DriveRt *r, const VmmDriveFiles *f)
{
    JsonObject *a = json_object_new();
    json_object_set_string_member(a, "id", r->drive->id);
    if (!f->probed)
        json_object_set_string_member(a, "format", f->format);
    json_object_set_boolean_member(a, "read-only", r->drive->read_only);
    json_object_set_boolean_member(a, "share-rw", r->dev->share_rw);
    json_object_set_boolean_member(a, "snapshot", r->drive->snapshot);
    if (r->drive->block_options)
        json_object_set_object_member(a, "options", json_object_ref(r->drive->block_options));
    JsonArray *files = json_array_new();
    for (guint i = 0; i < f->n; i++)
        json_array_add_string_element(files, f->paths[i]);
    json_object_set_array_member(a, "files", files);
    return a;
}

/* Opens the images, makes the socketpair and sends drive-add. */
static void add_to_blockd(DriveRt *r, VmmHelperProc *blockd)
{
    VmmDriveFiles f;
    g_autoptr(GError) err = NULL;
    int sv[2] = { -1, -1 };
    vmm_drive_files_init(&f);
    if (!vmm_drive_files_open(r->drive, &f, &err)) {
        drive_failed(r, err->message);
        vmm_drive_files_clear(&f);
        return;
    }
    g_free(r->backing_file);
    r->backing_file = g_strdup(f.backing_file);
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        vmm_set_errno(&err, errno, "socketpair");
        drive_failed(r, err->message);
        vmm_drive_files_clear(&f);
        return;
    }
    int fds[VMM_DRIVE_MAX_FILES + 3];
    guint nfds = 0;
    fds[nfds++] = sv[1];
    for (guint i = 0; i < f.n; i++)
        fds[nfds++] = f.fds[i];
    if (f.overlay_fd >= 0)
        fds[nfds++] = f.overlay_fd;
    JsonObject *args = drive_add_args(r, &f);
    /* The guest's RAM, where blockd sees what vcpu-worker sees (a private
     * mapping keeps the guest's writes to itself) and the message has room. */
    const VmmGuestRam *ram = r->rt->d->guest_ram;
    if (ram && ram->fd >= 0 && ram->share && nfds < G_N_ELEMENTS(fds) && nfds < VMM_MAX_FDS) {
        fds[nfds++] = ram->fd;
        json_object_set_int_member(args, "guest-memory", (gint64)ram->size);
    }
    if (r->client_fd >= 0)
        close(r->client_fd);
    r->client_fd = sv[0];
    r->served = FALSE;
    r->adding = TRUE;
    r->blockd_gen = r->rt->blockd_gen;
    if (!vmm_channel_call(vmm_helper_proc_channel(blockd), VMM_CMD_DRIVE_ADD, args, fds, nfds, on_drive_added,
                          r, &err)) {
        r->adding = FALSE;
        drive_failed(r, err->message);
    }
    /* The channel sent duplicates: blockd holds the images from now on. */
    close(sv[1]);
    vmm_drive_files_clear(&f);
}

static void add_all(DriveRuntime *rt, VmmHelperProc *blockd)
{
    for (guint i = 0; i < rt->drives->len; i++)
        add_to_blockd(rt->drives->pdata[i], blockd);
}

void vmm_drives_helper_up(Vmmd *d, VmmHelperProc *hp, gboolean restarted)
{
    DriveRuntime *rt = runtime(d);
    const char *role = vmm_helper_proc_role(hp);
    if (rt->drives->len == 0 || d->quitting)
        return;
    VmmHelperProc *blockd = vmm_supervisor_find(d, "blockd");
    if (g_str_equal(role, "blockd")) {
        rt->blockd_gen++;
        if (restarted)
            vmm_notice("blockd restarted: serving the %u drive(s) again", rt->drives->len);
        add_all(rt, hp);
    } else if (g_str_equal(role, "vcpu-worker")) {
        if (!blockd) {
            DriveRt *r = rt->drives->pdata[0];
            drive_failed(r, "drives are served by blockd, which is not among the helpers (-helpers)");
            return;
        }
        if (restarted) {
            /* A new vcpu-worker: fresh connections to the same exports. */
            for (guint i = 0; i < rt->drives->len; i++) {
                DriveRt *r = rt->drives->pdata[i];
                r->attached = r->worker_has_it = FALSE;
            }
            if (helper_running(blockd))
                add_all(rt, blockd);
            return;
        }
        for (guint i = 0; i < rt->drives->len; i++)
            give_to_worker(rt->drives->pdata[i]);
    }
}

/* ---- Events and QMP --------------------------------------------------------- */

static DriveRt *find_rt(DriveRuntime *rt, const char *id)
{
    for (guint i = 0; id && i < rt->drives->len; i++) {
        DriveRt *r = rt->drives->pdata[i];
        if (g_str_equal(r->drive->id, id))
            return r;
    }
    return NULL;
}

/* QEMU's blk_iostatus_is_enabled(): a device that may stop on errors keeps an
 * I/O status; only then do query-block's "io-status" and BLOCK_IO_ERROR's
 * "nospace" appear. */
static gboolean io_status_enabled(const DriveRt *r)
{
    return r->dev->werror == VMM_DRIVE_ERROR_ENOSPC || r->dev->werror == VMM_DRIVE_ERROR_STOP ||
           r->dev->rerror == VMM_DRIVE_ERROR_STOP;
}

static void set_io_status(DriveRt *r, const char *status)
{
    g_free(r->io_status);
    r->io_status = g_strdup(status);
}

static void on_io_error_stopped(Vmmd *d, const GError *error, gpointer user)
{
    DriveRuntime *rt = user;
    rt->stopping = FALSE;
    if (error)
        vmm_warn("cannot stop the VM after an I/O error: %s", error->message);
}

/* QEMU's blk_error_action() for "stop": the I/O status first (kept from the
 * first error until cont), then BLOCK_IO_ERROR, then the VM stops in
 * "io-error" with STOP. Errors while the VM is stopped (or stopping) stop
 * nothing more: vmm_vm_stop() leaves a stopped VM as it is. */
static void stop_for_io_error(DriveRt *r, gboolean nospace, JsonObject *ev)
{
    DriveRuntime *rt = r->rt;
    if (g_str_equal(r->io_status, "ok"))
        set_io_status(r, nospace ? "nospace" : "failed");
    vmm_qmp_emit(rt->d, "BLOCK_IO_ERROR", ev);
    if (rt->stopping)
        return;
    rt->stopping = TRUE;
    vmm_notice("drive '%s': I/O error with action stop: the VM stops until cont", r->drive->id);
    vmm_vm_stop(rt->d, "io-error", on_io_error_stopped, rt);
}

/* vcpu-worker: {"id","operation":"read"|"write","action","errno":N,"reason"};
 * ACTION is the one taken (enospc already resolved to stop or report). */
gboolean vmm_drives_handle_event(Vmmd *d, const char *name, JsonObject *data)
{
    if (!g_str_equal(name, VMM_EVENT_DRIVE_IO_ERROR))
        return FALSE;
    DriveRt *r = find_rt(runtime(d), json_object_get_string_member_with_default(data, "id", NULL));
    if (!r)
        return TRUE;
    const char *action = json_object_get_string_member_with_default(data, "action", "report");
    gboolean nospace = json_object_get_int_member_with_default(data, "errno", 0) == ENOSPC;
    JsonObject *ev = json_object_new();
    json_object_set_string_member(ev, "device", r->drive->from_blockdev ? "" : r->drive->id);
    json_object_set_string_member(ev, "node-name", r->drive->id);
    json_object_set_string_member(ev, "operation",
                                  json_object_get_string_member_with_default(data, "operation", "write"));
    json_object_set_string_member(ev, "action", action);
    if (io_status_enabled(r))
        json_object_set_boolean_member(ev, "nospace", nospace);
    json_object_set_string_member(ev, "reason", json_object_get_string_member_with_default(data, "reason", ""));
    if (g_str_equal(action, "stop"))
        stop_for_io_error(r, nospace, ev);
    else
        vmm_qmp_emit(d, "BLOCK_IO_ERROR", ev);
    return TRUE;
}

void vmm_drives_cont(Vmmd *d)
{
    DriveRuntime *rt = runtime(d);
    for (guint i = 0; i < rt->drives->len; i++)
        set_io_status(rt->drives->pdata[i], "ok");
}

static JsonObject *cache_object(const VmmDrive *drv)
{
    JsonObject *c = json_object_new();
    json_object_set_boolean_member(c, "no-flush", drv->cache_no_flush);
    json_object_set_boolean_member(c, "direct", drv->cache_direct);
    json_object_set_boolean_member(c, "writeback", drv->cache_writeback);
    return c;
}

static JsonObject *inserted_object(const VmmDrive *drv, DriveRt *r)
{
    JsonObject *o = json_object_new();
    const char *format = r && r->format ? r->format : drv->format ? drv->format : "raw";
    json_object_set_string_member(o, "file", drv->filename);
    json_object_set_string_member(o, "node-name", drv->id);
    json_object_set_boolean_member(o, "ro", drv->read_only);
    json_object_set_string_member(o, "drv", format);
    json_object_set_int_member(o, "backing_file_depth", r ? r->backing_depth : 0);
    if (r && r->backing_file)
        json_object_set_string_member(o, "backing_file", r->backing_file);
    json_object_set_boolean_member(o, "encrypted", FALSE);
    json_object_set_string_member(o, "detect_zeroes", drv->detect_zeroes ? drv->detect_zeroes : "off");
    static const char *const zero_keys[] = { "bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr",
                                            "write_threshold" };
    for (guint i = 0; i < G_N_ELEMENTS(zero_keys); i++)
        json_object_set_int_member(o, zero_keys[i], 0);
    json_object_set_object_member(o, "cache", cache_object(drv));
    JsonObject *image = json_object_new();
    json_object_set_string_member(image, "filename", drv->filename);
    json_object_set_string_member(image, "format", format);
    if (r && r->served)
        json_object_set_int_member(image, "virtual-size", (gint64)r->size);
    json_object_set_boolean_member(image, "dirty-flag", FALSE);
    json_object_set_object_member(o, "image", image);
    return o;
}

/* QEMU's qdev path: /machine/peripheral/ID for -device id=, else anonymous. */
static char *qdev_path(const VmmBlkDevice *dev, guint *anon)
{
    if (dev->id)
        return g_strdup_printf("/machine/peripheral/%s", dev->id);
    return g_strdup_printf("/machine/peripheral-anon/device[%u]", (*anon)++);
}

JsonArray *vmm_drives_query_block(Vmmd *d)
{
    DriveRuntime *rt = runtime(d);
    JsonArray *list = json_array_new();
    const VmmDriveSet *set = d->config->vm ? &d->config->vm->drives : NULL;
    guint anon = 0;
    for (guint i = 0; set && i < set->drives->len; i++) {
        VmmDrive *drv = set->drives->pdata[i];
        DriveRt *r = NULL;
        for (guint j = 0; j < rt->drives->len; j++) {
            if (((DriveRt *)rt->drives->pdata[j])->drive == drv)
                r = rt->drives->pdata[j];
        }
        JsonObject *o = json_object_new();
        json_object_set_string_member(o, "device", drv->from_blockdev ? "" : drv->id);
        if (r) {
            g_autofree char *qdev = qdev_path(r->dev, &anon);
            json_object_set_string_member(o, "qdev", qdev);
            if (io_status_enabled(r))
                json_object_set_string_member(o, "io-status", r->io_status);
        }
        json_object_set_boolean_member(o, "locked", FALSE);
        json_object_set_boolean_member(o, "removable", r == NULL);
        json_object_set_string_member(o, "type", "unknown");
        if (drv->filename)
            json_object_set_object_member(o, "inserted", inserted_object(drv, r));
        /* vmmd's own: whether vcpu-worker's NBD client is connected to blockd. */
        if (r)
            json_object_set_boolean_member(o, "x-nbd-connected", r->attached);
        json_array_add_object_element(list, o);
    }
    return list;
}
