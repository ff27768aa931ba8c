/* systemd's readiness notification, watchdog and socket-activation protocols,
 * implemented from sd_notify(3) and sd_listen_fds(3) without libsystemd. */
#include "common/sdnotify.h"
#include "common/error.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Fills ADDR from NOTIFY_SOCKET: "/path" or "@name" for the abstract
 * namespace (the '@' stands for the leading NUL byte). */
static gboolean notify_address(const char *name, struct sockaddr_un *addr, socklen_t *len,
                               GError **error)
{
    size_t n = strlen(name);

    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    if (name[0] != '/' && name[0] != '@') {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                    "NOTIFY_SOCKET '%s': not an absolute path or '@' abstract name", name);
        return FALSE;
    }
    if (n >= sizeof(addr->sun_path) || n < 2) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "NOTIFY_SOCKET '%s': length %zu out of range 2..%zu", name, n,
                    sizeof(addr->sun_path) - 1);
        return FALSE;
    }
    memcpy(addr->sun_path, name, n);
    if (name[0] == '@') {
        addr->sun_path[0] = '\0';
        *len = offsetof(struct sockaddr_un, sun_path) + n; /* no trailing NUL */
    } else {
        *len = offsetof(struct sockaddr_un, sun_path) + n + 1;
    }
    return TRUE;
}

gboolean vmm_sd_notify(const char *state, GError **error)
{
    const char *name = g_getenv("NOTIFY_SOCKET");
    struct sockaddr_un addr;
    socklen_t addr_len;
    size_t len = strlen(state);
    ssize_t sent;
    int fd, saved_errno;

    if (!name || !*name)
        return TRUE; /* not started by systemd with Type=notify */
    if (!notify_address(name, &addr, &addr_len, error))
        return FALSE;

    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return vmm_set_errno(error, errno, "NOTIFY_SOCKET '%s': socket", name);
    do {
        sent = sendto(fd, state, len, MSG_NOSIGNAL, (struct sockaddr *)&addr, addr_len);
    } while (sent < 0 && errno == EINTR);
    saved_errno = errno;
    close(fd);

    if (sent < 0)
        return vmm_set_errno(error, saved_errno, "NOTIFY_SOCKET '%s': send", name);
    if ((size_t)sent != len) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_IO,
                    "NOTIFY_SOCKET '%s': sent %zd of %zu bytes", name, sent, len);
        return FALSE;
    }
    return TRUE;
}

gboolean vmm_sd_notifyf(GError **error, const char *fmt, ...)
{
    g_autofree char *state = NULL;
    va_list ap;

    va_start(ap, fmt);
    state = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    return vmm_sd_notify(state, error);
}

/* A whole decimal number, nothing else around it. */
static gboolean parse_env_u64(const char *name, guint64 max, guint64 *out)
{
    const char *value = g_getenv(name);

    if (!value || !*value)
        return FALSE;
    return g_ascii_string_to_unsigned(value, 10, 0, max, out, NULL);
}

/* The variables are meant for the process systemd started; a child that
 * inherited them must not act on them. */
static gboolean env_pid_is_ours(const char *name, gboolean absent_is_ours)
{
    guint64 pid;

    if (!g_getenv(name))
        return absent_is_ours;
    if (!parse_env_u64(name, G_MAXINT32, &pid))
        return FALSE;
    return pid == (guint64)getpid();
}

guint64 vmm_sd_watchdog_usec(void)
{
    guint64 usec;

    if (!parse_env_u64("WATCHDOG_USEC", G_MAXUINT64 - 1, &usec) || usec == 0)
        return 0;
    if (!env_pid_is_ours("WATCHDOG_PID", TRUE))
        return 0;
    return usec;
}

static void unset_listen_env(void)
{
    g_unsetenv("LISTEN_PID");
    g_unsetenv("LISTEN_FDS");
    g_unsetenv("LISTEN_FDNAMES");
}

static int set_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFD);

    if (flags < 0)
        return -errno;
    if (!(flags & FD_CLOEXEC) && fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
        return -errno;
    return 0;
}

/* LISTEN_FDNAMES split on ':'; systemd names unnamed fds "unknown". */
static char **listen_fd_names(int n)
{
    const char *env = g_getenv("LISTEN_FDNAMES");
    char **names;

    if (env)
        return g_strsplit(env, ":", -1);
    names = g_new0(char *, n + 1);
    for (int i = 0; i < n; i++)
        names[i] = g_strdup("unknown");
    return names;
}

/* Like sd_listen_fds_with_names(): 0 when the fds are not for us, a negative
 * errno when the variables are malformed or an fd is unusable. */
static int collect_listen_fds(char ***names)
{
    guint64 n;
    g_auto(GStrv) fd_names = NULL;

    if (!g_getenv("LISTEN_FDS") || !env_pid_is_ours("LISTEN_PID", FALSE))
        return 0;
    if (!parse_env_u64("LISTEN_FDS", INT_MAX - VMM_SD_LISTEN_FDS_START, &n))
        return -EINVAL;
    for (int fd = VMM_SD_LISTEN_FDS_START; fd < VMM_SD_LISTEN_FDS_START + (int)n; fd++) {
        int r = set_cloexec(fd);
        if (r < 0)
            return r;
    }
    if (names) {
        fd_names = listen_fd_names((int)n);
        if (g_strv_length(fd_names) != n)
            return -EINVAL;
        *names = g_steal_pointer(&fd_names);
    }
    return (int)n;
}

int vmm_sd_listen_fds(gboolean unset_env, char ***names)
{
    int n;

    if (names)
        *names = NULL;
    n = collect_listen_fds(names);
    if (unset_env)
        unset_listen_env();
    return n;
}
