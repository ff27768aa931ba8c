/* The VM's 9p exports at run time: see fsdev-run.h. */
#include "vmmd/fsdev-run.h"
#include "vmmd/fsdev.h"
#include "vmmd/memory-backend.h"
#include "vmmd/vm-options.h"
#include "vmmd/vm.h"
#include "common/error.h"
#include "common/log.h"
#include "proto/control.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

typedef struct FsdevRuntime FsdevRuntime;

typedef struct {
    FsdevRuntime *rt;
    VmmFsDevice *dev;
    VmmFsdev *fsdev;
    char *key;               /* the device's name between vmmd and vcpu-worker */
    int client_fd;           /* our end of the current connection, until vcpu-worker has it */
    gboolean served;         /* fsd serves the other end (or it is an outside fsd's) */
    gboolean attached;       /* vcpu-worker's probe got an Rversion */
    gboolean ever_attached;  /* failures after this do not stop vmmd */
    gboolean worker_has_it;  /* the current vcpu-worker attached it: new ends are reconnects */
    gboolean guest_memory;   /* fsd maps the guest's RAM for this connection (Tread.vmm/Twrite.vmm) */
} FsRt;

struct FsdevRuntime {
    Vmmd *d;
    GPtrArray *devs;         /* FsRt*, device order */
    gboolean failed;
};

static void fs_rt_free(gpointer p)
{
    FsRt *r = p;
    if (r->client_fd >= 0)
        close(r->client_fd);
    g_free(r->key);
    g_free(r);
}

static FsdevRuntime *runtime(Vmmd *d)
{
    if (d->fsdev_rt)
        return d->fsdev_rt;
    FsdevRuntime *rt = g_new0(FsdevRuntime, 1);
    rt->d = d;
    rt->devs = g_ptr_array_new_with_free_func(fs_rt_free);
    const VmmFsdevSet *set = d->config->vm ? &d->config->vm->fsdevs : NULL;
    for (guint i = 0; set && i < set->devices->len; i++) {
        FsRt *r = g_new0(FsRt, 1);
        r->rt = rt;
        r->dev = set->devices->pdata[i];
        r->fsdev = vmm_fsdev_find(set, r->dev->fsdev);
        r->key = r->dev->id ? g_strdup(r->dev->id) : g_strdup_printf("%s.%u", r->fsdev->id, r->dev->index);
        r->client_fd = -1;
        g_ptr_array_add(rt->devs, r);
    }
    d->fsdev_rt = rt;
    return rt;
}

void vmm_fsdevs_free(Vmmd *d)
{
    FsdevRuntime *rt = d->fsdev_rt;
    if (!rt)
        return;
    g_ptr_array_unref(rt->devs);
    g_free(rt);
    d->fsdev_rt = NULL;
}

static gboolean helper_running(VmmHelperProc *hp)
{
    return hp && g_str_equal(vmm_helper_proc_state(hp), "running");
}

/* A device that cannot be set up at start stops vmmd, as QEMU exits on it;
 * the text is QEMU's realize error. */
static void device_failed(FsRt *r, const char *why)
{
    Vmmd *d = r->rt->d;
    vmm_error("%s: cannot initialize fsdev '%s': %s", r->dev->option, r->fsdev->id, why);
    if (!r->ever_attached && !r->rt->failed) {
        r->rt->failed = TRUE;
        d->exit_code = 1;
        vmmd_request_quit(d, "host-error");
    }
}

gboolean vmm_fsdevs_ready(Vmmd *d)
{
    FsdevRuntime *rt = runtime(d);
    for (guint i = 0; i < rt->devs->len; i++) {
        if (!((FsRt *)rt->devs->pdata[i])->attached)
            return FALSE;
    }
    return TRUE;
}

/* ---- vcpu-worker: fsdev-attach / fsdev-reconnect ------------------------- */

static void on_attached(VmmChannel *ch, JsonObject *result, const GError *error, int *fds,
                        guint nfds, gpointer user)
{
    FsRt *r = user;
    if (error) {
        g_autofree char *why = g_strdup_printf("vcpu-worker could not reach fsd: %s", error->message);
        device_failed(r, why);
        return;
    }
    gboolean again = r->worker_has_it;
    r->attached = r->ever_attached = r->worker_has_it = TRUE;
    if (again)
        vmm_notice("fsdev '%s': vcpu-worker reconnected to fsd (mount tag '%s')", r->fsdev->id,
                   r->dev->mount_tag);
    else
        vmm_notice("fsdev '%s': vcpu-worker connected to fsd (mount tag '%s', msize %" G_GINT64_FORMAT ")",
                   r->fsdev->id, r->dev->mount_tag, json_object_get_int_member_with_default(result, "msize", -1));
    vmm_vm_start_waiting(r->rt->d);
}

/* Hands our end to vcpu-worker once the server side is ready. */
static void give_to_worker(FsRt *r)
{
    Vmmd *d = r->rt->d;
    VmmHelperProc *hp = vmm_supervisor_find(d, "vcpu-worker");
    if (r->client_fd < 0 || !r->served || !helper_running(hp) || d->quitting)
        return;
    g_autoptr(GError) err = NULL;
    gboolean reconnect = r->worker_has_it;
    JsonObject *args = json_object_new();
    json_object_set_string_member(args, "device", r->key);
    if (!reconnect) {
        json_object_set_string_member(args, "fsdev", r->fsdev->id);
        json_object_set_string_member(args, "mount-tag", r->dev->mount_tag);
    }
    json_object_set_boolean_member(args, "guest-memory", r->guest_memory);
    r->attached = FALSE;
    if (!vmm_channel_call(vmm_helper_proc_channel(hp), reconnect ? VMM_CMD_FSDEV_RECONNECT : VMM_CMD_FSDEV_ATTACH,
                          args, &r->client_fd, 1, on_attached, r, &err)) {
        device_failed(r, err->message);
        return;
    }
    close(r->client_fd);
    r->client_fd = -1;
}

/* ---- An fsd that runs already: socket= or sock_fd= --------------------------- */

static int connect_unix(const char *path, GError **error)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "failed to connect to '%s': path too long", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        /* QEMU's proxy driver: "failed to connect to '%s'". */
        vmm_set_errno(error, errno, "failed to connect to '%s'", path);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static int dup_sock_fd(int n, GError **error)
{
    struct stat st;
    if (fstat(n, &st) < 0)
        return vmm_set_errno(error, errno, "sock_fd=%d", n), -1;
    if (!S_ISSOCK(st.st_mode)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "sock_fd=%d is not a socket", n);
        return -1;
    }
    int fd = fcntl(n, F_DUPFD_CLOEXEC, 3);
    if (fd < 0)
        vmm_set_errno(error, errno, "sock_fd=%d: dup", n);
    return fd;
}

static void connect_external(FsRt *r)
{
    g_autoptr(GError) err = NULL;
    if (r->fsdev->sock_fd >= 0 && r->ever_attached) {
        device_failed(r, "sock_fd= carries one connection, which is gone: the device stays disconnected");
        return;
    }
    int fd = r->fsdev->socket ? connect_unix(r->fsdev->socket, &err) : dup_sock_fd(r->fsdev->sock_fd, &err);
    if (fd < 0) {
        device_failed(r, err->message);
        return;
    }
    if (r->client_fd >= 0)
        close(r->client_fd);
    r->client_fd = fd;
    r->served = TRUE;
    give_to_worker(r);
}

/* ---- vmmd's fsd: fsdev-add ---------------------------------------------------- */

static void on_fsdev_added(VmmChannel *ch, JsonObject *result, const GError *error, int *fds,
                           guint nfds, gpointer user)
{
    FsRt *r = user;
    if (error) {
        if (r->client_fd >= 0)
            close(r->client_fd);
        r->client_fd = -1;
        device_failed(r, error->message);
        return;
    }
    r->served = TRUE;
    r->guest_memory = json_object_get_boolean_member_with_default(result, "guest-memory", FALSE);
    give_to_worker(r);
}

static JsonObject *fsdev_add_args(FsRt *r)
{
    const VmmFsdev *f = r->fsdev;
    JsonObject *a = json_object_new();
    json_object_set_string_member(a, "id", f->id);
    json_object_set_string_member(a, "path", f->path);
    json_object_set_string_member(a, "tag", r->dev->mount_tag);
    json_object_set_string_member(a, "security-model", f->security_model);
    json_object_set_boolean_member(a, "readonly", f->readonly);
    json_object_set_boolean_member(a, "writeout-immediate", f->writeout_immediate);
    if (f->fmode_set)
        json_object_set_int_member(a, "fmode", f->fmode);
    if (f->dmode_set)
        json_object_set_int_member(a, "dmode", f->dmode);
    JsonObject *t = json_object_new();
    for (guint i = 0; i < VMM_FSDEV_THR_N; i++) {
        if (f->throttle[i])
            json_object_set_int_member(t, vmm_fsdev_throttle_key_name(i), (gint64)f->throttle[i]);
    }
    json_object_set_object_member(a, "throttling", t);
    return a;
}

/* Opens the export, makes the socketpair and sends fsdev-add. */
static void add_to_fsd(FsRt *r, VmmHelperProc *fsd)
{
    g_autoptr(GError) err = NULL;
    int dirfd = open(r->fsdev->path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        /* QEMU's local driver: "failed to open '%s'". */
        vmm_set_errno(&err, errno, "failed to open '%s'", r->fsdev->path);
        device_failed(r, err->message);
        return;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        vmm_set_errno(&err, errno, "socketpair");
        close(dirfd);
        device_failed(r, err->message);
        return;
    }
    if (r->client_fd >= 0)
        close(r->client_fd);
    r->client_fd = sv[0];
    r->served = FALSE;
    r->guest_memory = FALSE;
    int fds[3] = { sv[1], dirfd, -1 };
    guint nfds = 2;
    JsonObject *args = fsdev_add_args(r);
    /* The guest's RAM where fsd would see what vcpu-worker sees (docs/fsd.md). */
    const VmmGuestRam *ram = r->rt->d->guest_ram;
    if (ram && ram->fd >= 0 && ram->share) {
        fds[nfds++] = ram->fd;
        json_object_set_int_member(args, "guest-memory", (gint64)ram->size);
    }
    if (!vmm_channel_call(vmm_helper_proc_channel(fsd), VMM_CMD_FSDEV_ADD, args, fds, nfds,
                          on_fsdev_added, r, &err))
        device_failed(r, err->message);
    /* The channel sent duplicates: fsd holds the export from now on. */
    close(sv[1]);
    close(dirfd);
}

static void connect_all(FsdevRuntime *rt, VmmHelperProc *fsd, gboolean external)
{
    for (guint i = 0; i < rt->devs->len; i++) {
        FsRt *r = rt->devs->pdata[i];
        if (vmm_fsdev_is_external(r->fsdev) != external)
            continue;
        if (external)
            connect_external(r);
        else if (fsd && helper_running(fsd))
            add_to_fsd(r, fsd);
    }
}

static gboolean needs_fsd(FsdevRuntime *rt)
{
    for (guint i = 0; i < rt->devs->len; i++) {
        if (!vmm_fsdev_is_external(((FsRt *)rt->devs->pdata[i])->fsdev))
            return TRUE;
    }
    return FALSE;
}

void vmm_fsdevs_helper_up(Vmmd *d, VmmHelperProc *hp, gboolean restarted)
{
    FsdevRuntime *rt = runtime(d);
    const char *role = vmm_helper_proc_role(hp);
    if (rt->devs->len == 0 || d->quitting)
        return;
    VmmHelperProc *fsd = vmm_supervisor_find(d, "fsd");
    if (g_str_equal(role, "fsd")) {
        if (restarted)
            vmm_notice("fsd restarted: serving the 9p exports again");
        connect_all(rt, hp, FALSE);
    } else if (g_str_equal(role, "vcpu-worker")) {
        if (!fsd && needs_fsd(rt)) {
            device_failed(rt->devs->pdata[0], "9p exports are served by fsd, which is not among the helpers (-helpers)");
            return;
        }
        if (restarted) {
            /* A new vcpu-worker: fresh connections to the same exports. */
            for (guint i = 0; i < rt->devs->len; i++) {
                FsRt *r = rt->devs->pdata[i];
                r->attached = r->worker_has_it = FALSE;
            }
            connect_all(rt, fsd, FALSE);
        } else {
            for (guint i = 0; i < rt->devs->len; i++)
                give_to_worker(rt->devs->pdata[i]);
        }
        connect_all(rt, NULL, TRUE);
    }
}

/* ---- Events ------------------------------------------------------------------------ */

static FsRt *find_rt(FsdevRuntime *rt, const char *key)
{
    for (guint i = 0; key && i < rt->devs->len; i++) {
        FsRt *r = rt->devs->pdata[i];
        if (g_str_equal(r->key, key))
            return r;
    }
    return NULL;
}

/* vcpu-worker: {"device","fsdev","reason","failed"}. An outside fsd behind
 * socket=PATH may be back already: connect again once. */
gboolean vmm_fsdevs_handle_event(Vmmd *d, const char *name, JsonObject *data)
{
    if (!g_str_equal(name, VMM_EVENT_FSDEV_DISCONNECTED))
        return FALSE;
    FsRt *r = find_rt(runtime(d), json_object_get_string_member_with_default(data, "device", NULL));
    if (!r)
        return TRUE;
    const char *reason = json_object_get_string_member_with_default(data, "reason", "");
    gint64 failed = json_object_get_int_member_with_default(data, "failed", 0);
    vmm_warn("fsdev '%s': vcpu-worker lost its connection to fsd (%s); %" G_GINT64_FORMAT
             " request(s) failed with EIO, the guest must mount '%s' again", r->fsdev->id, reason, failed,
             r->dev->mount_tag);
    JsonObject *ev = json_object_new();
    json_object_set_string_member(ev, "device", r->dev->id ? r->dev->id : "");
    json_object_set_string_member(ev, "fsdev", r->fsdev->id);
    json_object_set_string_member(ev, "mount-tag", r->dev->mount_tag);
    json_object_set_string_member(ev, "reason", reason);
    json_object_set_int_member(ev, "failed-requests", failed);
    vmm_qmp_emit(d, "FSDEV_IO_ERROR", ev);
    r->attached = FALSE;
    if (r->fsdev->socket && !d->quitting)
        connect_external(r);
    return TRUE;
}

gboolean vmm_fsdev_needs_passthrough(Vmmd *d)
{
    const VmmVmConfig *vm = d->config->vm;
    for (guint i = 0; vm && i < vm->fsdevs.fsdevs->len; i++) {
        const VmmFsdev *f = vm->fsdevs.fsdevs->pdata[i];
        gboolean served_here = f->path && !f->socket && f->sock_fd < 0;
        if (served_here && f->security_model &&
            (g_str_equal(f->security_model, "passthrough") || g_str_equal(f->security_model, "none")))
            return TRUE;
    }
    return FALSE;
}
