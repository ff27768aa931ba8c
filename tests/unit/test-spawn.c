#include "common/spawn.h"
#include "common/error.h"

#include <fcntl.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs a shell in the child that lists which of fds 3..20 it has and prints
 * the first line of fd 3 and 5; the map puts a pipe's read end at 5 and
 * another at 3, with unrelated fds left open in the parent. */
static void test_fd_map(void)
{
    int out[2], a[2], b[2];
    g_assert_cmpint(pipe2(out, O_CLOEXEC), ==, 0);
    g_assert_cmpint(pipe2(a, O_CLOEXEC), ==, 0);
    g_assert_cmpint(pipe(b), ==, 0); /* deliberately not close-on-exec */
    g_assert_cmpint(write(a[1], "alpha\n", 6), ==, 6);
    g_assert_cmpint(write(b[1], "beta\n", 5), ==, 5);
    close(a[1]);
    close(b[1]);
    const char *argv[] = {
        "/bin/sh", "-c",
        "for fd in 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do "
        "[ -e /proc/self/fd/$fd ] && echo have $fd; done; "
        "read x <&3; echo 3=$x; read y <&5; echo 5=$y",
        NULL,
    };
    VmmFdMap map[] = { { b[0], 3 }, { a[0], 5 }, { out[1], 1 } };
    g_autoptr(GError) err = NULL;
    pid_t pid = vmm_spawn(argv, NULL, map, G_N_ELEMENTS(map), FALSE, &err);
    g_assert_no_error(err);
    g_assert_cmpint(pid, >, 0);
    close(out[1]);
    char buf[512] = { 0 };
    gsize got = 0;
    ssize_t n;
    alarm(10);
    while ((n = read(out[0], buf + got, sizeof(buf) - 1 - got)) > 0)
        got += n;
    int status;
    g_assert_cmpint(waitpid(pid, &status, 0), ==, pid);
    alarm(0);
    g_assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    g_assert_cmpstr(buf, ==, "have 3\nhave 5\n3=beta\n5=alpha\n");
    close(out[0]);
    close(a[0]);
    close(b[0]);
}

static void test_exec_failure(void)
{
    const char *argv[] = { "/nonexistent/helper", NULL };
    g_autoptr(GError) err = NULL;
    pid_t pid = vmm_spawn(argv, NULL, NULL, 0, FALSE, &err);
    g_assert_cmpint(pid, ==, -1);
    g_assert_error(err, VMM_ERROR, VMM_ERROR_IO);
    g_assert_nonnull(strstr(err->message, "/nonexistent/helper"));
    g_assert_nonnull(strstr(err->message, "No such file"));
}

static void test_describe(void)
{
    g_autofree char *a = vmm_describe_wait_status(3 << 8);
    g_autofree char *b = vmm_describe_wait_status(SIGSYS);
    g_assert_cmpstr(a, ==, "exited with status 3");
    g_assert_cmpstr(b, ==, "killed by signal 31 (SIGSYS)");
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/spawn/fd-map", test_fd_map);
    g_test_add_func("/spawn/exec-failure", test_exec_failure);
    g_test_add_func("/spawn/describe-status", test_describe);
    return g_test_run();
}
