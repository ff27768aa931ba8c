/* Tests for common/sdnotify.c against sockets and environments built the way
 * systemd builds them (sd_notify(3), sd_listen_fds(3)). */
#include "common/error.h"
#include "common/sdnotify.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define RECV_TIMEOUT_MS 5000

/* A datagram socket standing in for systemd's notification socket. */
typedef struct {
    int fd;
    char *dir;  /* temp dir holding a path socket, or NULL */
    char *name; /* NOTIFY_SOCKET value */
} Listener;

static int bind_dgram(const struct sockaddr_un *addr, socklen_t len)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(bind(fd, (const struct sockaddr *)addr, len), ==, 0);
    return fd;
}

static void listener_open_path(Listener *l)
{
    g_autoptr(GError) error = NULL;
    struct sockaddr_un addr = { .sun_family = AF_UNIX };

    l->dir = g_dir_make_tmp("test-sdnotify-XXXXXX", &error);
    g_assert_no_error(error);
    l->name = g_build_filename(l->dir, "notify", NULL);
    g_assert_cmpuint(strlen(l->name), <, sizeof(addr.sun_path));
    strcpy(addr.sun_path, l->name);
    l->fd = bind_dgram(&addr, sizeof(addr));
}

static void listener_open_abstract(Listener *l)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    size_t n;

    l->dir = NULL;
    l->name = g_strdup_printf("@vmm-test-sdnotify-%d-%08x", (int)getpid(), g_random_int());
    n = strlen(l->name);
    memcpy(addr.sun_path, l->name, n);
    addr.sun_path[0] = '\0';
    l->fd = bind_dgram(&addr, offsetof(struct sockaddr_un, sun_path) + n);
}

static void listener_close(Listener *l)
{
    close(l->fd);
    if (l->dir) {
        unlink(l->name);
        rmdir(l->dir);
        g_free(l->dir);
    }
    g_free(l->name);
}

/* The next datagram, or NULL if none arrives within TIMEOUT_MS. */
static GBytes *listener_recv(Listener *l, int timeout_ms)
{
    struct pollfd pfd = { .fd = l->fd, .events = POLLIN };
    char buf[4096];
    ssize_t n;

    if (poll(&pfd, 1, timeout_ms) != 1)
        return NULL;
    n = recv(l->fd, buf, sizeof(buf), MSG_DONTWAIT);
    g_assert_cmpint(n, >=, 0);
    return g_bytes_new(buf, n);
}

static void assert_datagram(GBytes *got, const char *expected)
{
    g_assert_nonnull(got);
    g_assert_cmpmem(g_bytes_get_data(got, NULL), g_bytes_get_size(got), expected, strlen(expected));
}

static void check_notify_reaches(Listener *l)
{
    g_autoptr(GError) error = NULL;
    g_autoptr(GBytes) first = NULL;
    g_autoptr(GBytes) second = NULL;

    g_setenv("NOTIFY_SOCKET", l->name, TRUE);
    g_assert_true(vmm_sd_notify("READY=1\nSTATUS=hi", &error));
    g_assert_no_error(error);
    first = listener_recv(l, RECV_TIMEOUT_MS);
    assert_datagram(first, "READY=1\nSTATUS=hi");

    g_assert_true(vmm_sd_notifyf(&error, "STATUS=%d guests\nWATCHDOG=1", 3));
    g_assert_no_error(error);
    second = listener_recv(l, RECV_TIMEOUT_MS);
    assert_datagram(second, "STATUS=3 guests\nWATCHDOG=1");
    g_unsetenv("NOTIFY_SOCKET");
}

static void test_notify_path(void)
{
    Listener l;

    listener_open_path(&l);
    check_notify_reaches(&l);
    listener_close(&l);
}

static void test_notify_abstract(void)
{
    Listener l;

    listener_open_abstract(&l);
    check_notify_reaches(&l);
    listener_close(&l);
}

static void test_notify_without_socket(void)
{
    Listener l;
    g_autoptr(GError) error = NULL;
    g_autoptr(GBytes) got = NULL;

    listener_open_path(&l);
    g_unsetenv("NOTIFY_SOCKET");
    g_assert_true(vmm_sd_notify("READY=1", &error));
    g_assert_no_error(error);
    g_setenv("NOTIFY_SOCKET", "", TRUE);
    g_assert_true(vmm_sd_notify("READY=1", &error));
    g_assert_no_error(error);
    g_unsetenv("NOTIFY_SOCKET");
    /* Nothing may have gone out; the send would have been synchronous. */
    got = listener_recv(&l, 0);
    g_assert_null(got);
    listener_close(&l);
}

static void test_notify_errors(void)
{
    g_autofree char *long_name = g_strnfill(200, 'x');
    g_autofree char *too_long = g_strconcat("/", long_name, NULL);
    g_autofree char *dir = NULL;
    g_autofree char *missing = NULL;
    g_autoptr(GError) error = NULL;

    g_setenv("NOTIFY_SOCKET", "relative/path", TRUE);
    g_assert_false(vmm_sd_notify("READY=1", &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED);
    g_assert_nonnull(strstr(error->message, "relative/path"));
    g_clear_error(&error);

    g_setenv("NOTIFY_SOCKET", too_long, TRUE);
    g_assert_false(vmm_sd_notify("READY=1", &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_INVALID);
    g_clear_error(&error);

    g_setenv("NOTIFY_SOCKET", "@", TRUE);
    g_assert_false(vmm_sd_notify("READY=1", &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_INVALID);
    g_clear_error(&error);

    dir = g_dir_make_tmp("test-sdnotify-XXXXXX", &error);
    g_assert_no_error(error);
    missing = g_build_filename(dir, "nobody-listens", NULL);
    g_setenv("NOTIFY_SOCKET", missing, TRUE);
    g_assert_false(vmm_sd_notify("READY=1", &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_IO);
    g_assert_nonnull(strstr(error->message, missing));
    g_clear_error(&error);
    rmdir(dir);
    g_unsetenv("NOTIFY_SOCKET");
}

static void set_pid_env(const char *name, pid_t pid)
{
    g_autofree char *value = g_strdup_printf("%d", (int)pid);
    g_setenv(name, value, TRUE);
}

static void test_watchdog(void)
{
    g_unsetenv("WATCHDOG_USEC");
    g_unsetenv("WATCHDOG_PID");
    g_assert_cmpuint(vmm_sd_watchdog_usec(), ==, 0);

    g_setenv("WATCHDOG_USEC", "30000000", TRUE);
    g_assert_cmpuint(vmm_sd_watchdog_usec(), ==, 30000000);

    set_pid_env("WATCHDOG_PID", getpid());
    g_assert_cmpuint(vmm_sd_watchdog_usec(), ==, 30000000);

    /* Inherited from a parent that systemd watches: not ours. */
    set_pid_env("WATCHDOG_PID", getpid() + 1);
    g_assert_cmpuint(vmm_sd_watchdog_usec(), ==, 0);
    g_setenv("WATCHDOG_PID", "self", TRUE);
    g_assert_cmpuint(vmm_sd_watchdog_usec(), ==, 0);
    g_unsetenv("WATCHDOG_PID");

    static const char *bad[] = { "0", "", "abc", "12x", "-5", " 7", "99999999999999999999999" };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_setenv("WATCHDOG_USEC", bad[i], TRUE);
        g_assert_cmpuint(vmm_sd_watchdog_usec(), ==, 0);
    }
    g_unsetenv("WATCHDOG_USEC");
}

/* Runs in a subprocess of its own (g_test_trap_subprocess), so that it can take
 * fds 3 and 4 and LISTEN_PID can name it, as systemd would arrange. */
static int listening_socket_at(int target)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    g_autofree char *name = g_strdup_printf("@vmm-test-listen-%d-%d-%08x", (int)getpid(), target,
                                            g_random_int());
    size_t n = strlen(name);

    g_assert_cmpint(fd, >=, 0);
    memcpy(addr.sun_path, name, n);
    addr.sun_path[0] = '\0';
    g_assert_cmpint(bind(fd, (struct sockaddr *)&addr, offsetof(struct sockaddr_un, sun_path) + n),
                    ==, 0);
    g_assert_cmpint(listen(fd, 4), ==, 0);
    /* dup2 leaves the new fd without FD_CLOEXEC, as after systemd's exec. */
    if (fd != target) {
        g_assert_cmpint(dup2(fd, target), ==, target);
        close(fd);
    }
    g_assert_cmpint(fcntl(target, F_GETFD) & FD_CLOEXEC, ==, 0);
    return target;
}

static void assert_listening(int fd)
{
    int accepting = 0;
    socklen_t len = sizeof(accepting);

    g_assert_cmpint(getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len), ==, 0);
    g_assert_cmpint(accepting, ==, 1);
    g_assert_cmpint(fcntl(fd, F_GETFD) & FD_CLOEXEC, ==, FD_CLOEXEC);
}

static void test_listen_fds_child(void)
{
    char **names = NULL;

    listening_socket_at(3);
    set_pid_env("LISTEN_PID", getpid());
    g_setenv("LISTEN_FDS", "1", TRUE);
    g_setenv("LISTEN_FDNAMES", "ctl", TRUE);

    g_assert_cmpint(vmm_sd_listen_fds(TRUE, &names), ==, 1);
    g_assert_nonnull(names);
    g_assert_cmpuint(g_strv_length(names), ==, 1);
    g_assert_cmpstr(names[0], ==, "ctl");
    assert_listening(VMM_SD_LISTEN_FDS_START);
    g_assert_null(g_getenv("LISTEN_PID"));
    g_assert_null(g_getenv("LISTEN_FDS"));
    g_assert_null(g_getenv("LISTEN_FDNAMES"));
    g_strfreev(names);

    /* Once unset, a second call finds nothing. */
    g_assert_cmpint(vmm_sd_listen_fds(FALSE, &names), ==, 0);
    g_strfreev(names);
}

static void test_listen_fds_two_child(void)
{
    char **names = NULL;

    listening_socket_at(3);
    listening_socket_at(4);
    set_pid_env("LISTEN_PID", getpid());
    g_setenv("LISTEN_FDS", "2", TRUE);
    g_unsetenv("LISTEN_FDNAMES");

    /* Without LISTEN_FDNAMES every fd is "unknown"; env stays without UNSET_ENV. */
    g_assert_cmpint(vmm_sd_listen_fds(FALSE, &names), ==, 2);
    g_assert_cmpuint(g_strv_length(names), ==, 2);
    g_assert_cmpstr(names[0], ==, "unknown");
    g_assert_cmpstr(names[1], ==, "unknown");
    g_strfreev(names);
    assert_listening(3);
    assert_listening(4);
    g_assert_cmpstr(g_getenv("LISTEN_FDS"), ==, "2");

    g_setenv("LISTEN_FDNAMES", "a:b", TRUE);
    g_assert_cmpint(vmm_sd_listen_fds(FALSE, NULL), ==, 2);
    g_assert_cmpint(vmm_sd_listen_fds(FALSE, &names), ==, 2);
    g_assert_cmpstr(names[0], ==, "a");
    g_assert_cmpstr(names[1], ==, "b");
    g_strfreev(names);

    /* As sd_listen_fds_with_names(): a name count that disagrees is -EINVAL. */
    g_setenv("LISTEN_FDNAMES", "a:b:c", TRUE);
    g_assert_cmpint(vmm_sd_listen_fds(FALSE, &names), ==, -EINVAL);
    g_assert_null(names);

    /* An fd that is not open is an error, not a socket to serve. */
    g_setenv("LISTEN_FDS", "3", TRUE);
    close(5);
    g_assert_cmpint(vmm_sd_listen_fds(TRUE, NULL), ==, -EBADF);
    g_assert_null(g_getenv("LISTEN_PID"));
}

static void run_in_subprocess(const char *path)
{
    g_test_trap_subprocess(path, 20 * G_USEC_PER_SEC, G_TEST_SUBPROCESS_INHERIT_STDERR);
    g_test_trap_assert_passed();
}

static void test_listen_fds(void)
{
    run_in_subprocess("/sdnotify/listen-fds/subprocess");
}

static void test_listen_fds_two(void)
{
    run_in_subprocess("/sdnotify/listen-fds-two/subprocess");
}

/* LISTEN_PID of another process (we inherited the variables) means none are
 * ours; no fd is touched, so this can run in the test process itself. */
static void test_listen_fds_not_ours(void)
{
    char **names = NULL;

    set_pid_env("LISTEN_PID", getpid() + 1);
    g_setenv("LISTEN_FDS", "1", TRUE);
    g_setenv("LISTEN_FDNAMES", "ctl", TRUE);
    g_assert_cmpint(vmm_sd_listen_fds(FALSE, &names), ==, 0);
    g_assert_null(names);
    g_assert_cmpstr(g_getenv("LISTEN_FDS"), ==, "1");

    g_unsetenv("LISTEN_PID");
    g_assert_cmpint(vmm_sd_listen_fds(FALSE, &names), ==, 0);
    g_setenv("LISTEN_PID", "garbage", TRUE);
    g_assert_cmpint(vmm_sd_listen_fds(FALSE, &names), ==, 0);

    /* Ours, but LISTEN_FDS malformed: an error that touches no fd. */
    set_pid_env("LISTEN_PID", getpid());
    g_setenv("LISTEN_FDS", "one", TRUE);
    g_assert_cmpint(vmm_sd_listen_fds(FALSE, &names), ==, -EINVAL);

    /* UNSET_ENV clears the variables even when they were not for us. */
    set_pid_env("LISTEN_PID", getpid() + 1);
    g_assert_cmpint(vmm_sd_listen_fds(TRUE, &names), ==, 0);
    g_assert_null(g_getenv("LISTEN_PID"));
    g_assert_null(g_getenv("LISTEN_FDS"));
    g_assert_null(g_getenv("LISTEN_FDNAMES"));
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/sdnotify/notify-path", test_notify_path);
    g_test_add_func("/sdnotify/notify-abstract", test_notify_abstract);
    g_test_add_func("/sdnotify/notify-without-socket", test_notify_without_socket);
    g_test_add_func("/sdnotify/notify-errors", test_notify_errors);
    g_test_add_func("/sdnotify/watchdog", test_watchdog);
    g_test_add_func("/sdnotify/listen-fds", test_listen_fds);
    g_test_add_func("/sdnotify/listen-fds/subprocess", test_listen_fds_child);
    g_test_add_func("/sdnotify/listen-fds-two", test_listen_fds_two);
    g_test_add_func("/sdnotify/listen-fds-two/subprocess", test_listen_fds_two_child);
    g_test_add_func("/sdnotify/listen-fds-not-ours", test_listen_fds_not_ours);
    return g_test_run();
}
