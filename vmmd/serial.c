/* COM1's backend on vmmd's side: see serial.h. */
#include "vmmd/serial.h"
#include "vmmd/vm.h"
#include "vmmd/vm-options.h"
#include "common/error.h"
#include "common/log.h"
#include "proto/control.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

typedef struct VmmSerialRun {
    Vmmd *d;
    VmmSerialConfig cfg;        /* path borrowed from the config */
    const char *what;           /* "-serial stdio" ..., for messages */
    int in_fd, out_fd;          /* stdio and file */
    int sock_fd;                /* a socket not yet handed over, or -1 */
    uv_pipe_t *listener;        /* server=on */
    gboolean client_seen;       /* wait=on is satisfied */
    VmmHelperProc *waiting_hp;  /* the guest's start waits for a client */
    gboolean unlink_at_exit;
} VmmSerialRun;

/* The terminal is the process's, not the VM's: its saved state is too. */
static struct termios saved_tty;
static gboolean tty_raw;

static void restore_tty(void)
{
    if (tty_raw)
        tcsetattr(STDIN_FILENO, TCSANOW, &saved_tty);
    tty_raw = FALSE;
}

/* Raw input, as QEMU's stdio chardev with signal=on: no echo, no line
 * editing, but Ctrl-C still signals vmmd; output processing stays on so
 * vmmd's own messages keep their line breaks. */
static void make_tty_raw(void)
{
    struct termios t;
    if (tty_raw || !isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &saved_tty) < 0)
        return;
    t = saved_tty;
    t.c_iflag &= ~(tcflag_t)(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
    t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL | ICANON | IEXTEN);
    t.c_cflag &= ~(tcflag_t)(CSIZE | PARENB);
    t.c_cflag |= CS8;
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    if (tcsetattr(STDIN_FILENO, TCSANOW, &t) == 0) {
        static gboolean registered;
        tty_raw = TRUE;
        if (!registered)
            atexit(restore_tty);
        registered = TRUE;
    }
}

static int dup_cloexec(int fd, const char *what, GError **error)
{
    int r = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (r < 0)
        vmm_set_errno(error, errno, "%s: dup", what);
    return r;
}

/* ---- Sockets ---------------------------------------------------------------- */

static VmmChannel *worker_channel(Vmmd *d, VmmHelperProc *hp)
{
    if (!hp)
        hp = vmm_supervisor_find(d, "vcpu-worker");
    VmmChannel *ch = hp ? vmm_helper_proc_channel(hp) : NULL;
    return ch && vmm_channel_is_ready(ch) ? ch : NULL;
}

static void on_attached(VmmChannel *ch, JsonObject *result, const GError *error, int *fds,
                        guint nfds, gpointer user)
{
    if (error)
        vmm_warn("serial: vcpu-worker refused the backend: %s", error->message);
}

static gboolean send_attach(VmmSerialRun *r, VmmChannel *ch, GError **error)
{
    JsonObject *args = json_object_new();
    int fds[2];
    guint nfds = 0;
    if (r->sock_fd >= 0) {
        json_object_set_boolean_member(args, "socket", TRUE);
        fds[nfds++] = r->sock_fd;
    } else {
        if (r->in_fd >= 0) {
            json_object_set_boolean_member(args, "input", TRUE);
            fds[nfds++] = r->in_fd;
        }
        if (r->out_fd >= 0) {
            json_object_set_boolean_member(args, "output", TRUE);
            fds[nfds++] = r->out_fd;
        }
    }
    if (!vmm_channel_call(ch, VMM_CMD_SERIAL_ATTACH, args, fds, nfds, on_attached, r, error))
        return FALSE;
    /* The channel sent copies: a socket is vcpu-worker's alone from now on. */
    if (r->sock_fd >= 0)
        close(r->sock_fd);
    r->sock_fd = -1;
    return TRUE;
}

static void free_handle(uv_handle_t *h)
{
    g_free(h);
}

static void on_connection(uv_stream_t *server, int status)
{
    VmmSerialRun *r = server->data;
    if (status < 0) {
        vmm_warn("%s: accept: %s", r->what, uv_strerror(status));
        return;
    }
    uv_pipe_t *client = g_new0(uv_pipe_t, 1);
    uv_pipe_init(server->loop, client, 0);
    uv_os_fd_t fd = -1;
    g_autoptr(GError) err = NULL;
    if (uv_accept(server, (uv_stream_t *)client) == 0 && uv_fileno((uv_handle_t *)client, &fd) == 0) {
        int mine = dup_cloexec(fd, r->what, &err);
        if (mine >= 0) {
            if (r->sock_fd >= 0)
                close(r->sock_fd);      /* a client that never got through */
            r->sock_fd = mine;
            vmm_info("%s: a client connected", r->what);
        }
    }
    uv_close((uv_handle_t *)client, free_handle);
    if (r->sock_fd < 0)
        return;
    r->client_seen = TRUE;
    if (r->waiting_hp) {
        VmmHelperProc *hp = r->waiting_hp;
        r->waiting_hp = NULL;
        vmm_vm_start(r->d, hp);         /* attaches the socket first */
        return;
    }
    VmmChannel *ch = r->d->guest_state == VMM_GUEST_NONE ? NULL : worker_channel(r->d, NULL);
    if (ch && !send_attach(r, ch, &err))
        vmm_warn("%s: %s", r->what, err->message);
}

static gboolean listen_unix(VmmSerialRun *r, GError **error)
{
    struct stat st;
    /* QEMU replaces a socket file left by an earlier run; anything else stays. */
    if (lstat(r->cfg.path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(r->cfg.path);
    r->listener = g_new0(uv_pipe_t, 1);
    uv_pipe_init(r->d->loop, r->listener, 0);
    r->listener->data = r;
    int e = uv_pipe_bind(r->listener, r->cfg.path);
    if (e == 0) {
        r->unlink_at_exit = TRUE;
        e = uv_listen((uv_stream_t *)r->listener, 1, on_connection);
    }
    if (e < 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_FAILED, "%s: Failed to bind socket to %s: %s",
                    r->what, r->cfg.path, uv_strerror(e));
        return FALSE;
    }
    return TRUE;
}

static gboolean connect_unix(VmmSerialRun *r, GError **error)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(r->cfg.path) >= sizeof(sa.sun_path)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: socket path too long", r->what);
        return FALSE;
    }
    strcpy(sa.sun_path, r->cfg.path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return vmm_set_errno(error, errno, "%s: socket", r->what);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return vmm_set_errno(error, e, "%s: Failed to connect to '%s'", r->what, r->cfg.path);
    }
    r->sock_fd = fd;
    r->client_seen = TRUE;
    return TRUE;
}

/* ---- Life cycle ------------------------------------------------------------- */

static const char *describe(const VmmSerialConfig *c)
{
    switch (c->kind) {
    case VMM_SERIAL_STDIO: return "serial stdio";
    case VMM_SERIAL_NULL: return "serial null";
    case VMM_SERIAL_FILE: return "serial file";
    case VMM_SERIAL_UNIX: return "serial unix socket";
    }
    return "serial";
}

gboolean vmm_serial_backend_open(Vmmd *d, GError **error)
{
    if (d->serial_rt)
        return TRUE;
    const VmmVmConfig *vm = d->config->vm;
    static const VmmSerialConfig stdio_cfg = { .kind = VMM_SERIAL_STDIO };
    /* The first -serial is COM1's; without one, stdio, as with -nographic. */
    const VmmSerialConfig *cfg = vm && vm->serials->len ? vm->serials->pdata[0] : &stdio_cfg;
    VmmSerialRun *r = g_new0(VmmSerialRun, 1);
    r->d = d;
    r->cfg = *cfg;
    r->what = describe(cfg);
    r->in_fd = r->out_fd = r->sock_fd = -1;
    d->serial_rt = r;
    switch (cfg->kind) {
    case VMM_SERIAL_STDIO:
        r->in_fd = dup_cloexec(STDIN_FILENO, r->what, error);
        r->out_fd = r->in_fd >= 0 ? dup_cloexec(STDOUT_FILENO, r->what, error) : -1;
        if (r->out_fd < 0)
            return FALSE;
        make_tty_raw();
        return TRUE;
    case VMM_SERIAL_NULL:
        return TRUE;
    case VMM_SERIAL_FILE:
        r->out_fd = open(cfg->path, O_WRONLY | O_CREAT | O_CLOEXEC |
                         (cfg->append ? O_APPEND : O_TRUNC), 0666);
        return r->out_fd >= 0 ||
               vmm_set_errno(error, errno, "-serial file:%s: Could not open '%s'", cfg->path,
                             cfg->path);
    case VMM_SERIAL_UNIX:
        return cfg->server ? listen_unix(r, error) : connect_unix(r, error);
    }
    return TRUE;
}

gboolean vmm_serial_backend_ready(Vmmd *d, VmmHelperProc *hp)
{
    VmmSerialRun *r = d->serial_rt;
    if (!r || r->cfg.kind != VMM_SERIAL_UNIX || !r->cfg.server || !r->cfg.wait || r->client_seen)
        return TRUE;
    if (!r->waiting_hp)
        vmm_notice("%s: waiting for a client on %s before starting the guest", r->what, r->cfg.path);
    r->waiting_hp = hp;
    return FALSE;
}

gboolean vmm_serial_backend_attach(Vmmd *d, VmmHelperProc *hp, GError **error)
{
    VmmSerialRun *r = d->serial_rt;
    VmmChannel *ch = worker_channel(d, hp);
    if (!r || !ch)
        return TRUE;
    return send_attach(r, ch, error);
}

void vmm_serial_backend_close(Vmmd *d)
{
    VmmSerialRun *r = d->serial_rt;
    if (!r)
        return;
    d->serial_rt = NULL;
    int fds[3] = { r->in_fd, r->out_fd, r->sock_fd };
    for (guint i = 0; i < 3; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
    }
    if (r->listener)
        uv_close((uv_handle_t *)r->listener, free_handle);
    if (r->unlink_at_exit)
        unlink(r->cfg.path);
    restore_tty();
    g_free(r);
}
