/* common/iov.c: consuming a short transfer from an iovec array, and Unix
 * socket buffer sizes. */
#include "common/iov.h"

#include <glib.h>
#include <sys/socket.h>
#include <unistd.h>

static void test_consume(void)
{
    char a[4], b[8], c[2];
    struct iovec v[3] = { { a, 4 }, { b, 8 }, { c, 2 } };
    struct iovec *iov = v;
    unsigned n = 3;

    n = vmm_iov_consume(&iov, n, 0);
    g_assert_cmpuint(n, ==, 3);
    g_assert_true(iov == v && iov->iov_len == 4);
    n = vmm_iov_consume(&iov, n, 6);         /* all of a, 2 of b */
    g_assert_cmpuint(n, ==, 2);
    g_assert_true(iov == v + 1);
    g_assert_true(iov->iov_base == b + 2);
    g_assert_cmpuint(iov->iov_len, ==, 6);
    n = vmm_iov_consume(&iov, n, 6);         /* the rest of b exactly */
    g_assert_cmpuint(n, ==, 1);
    g_assert_true(iov == v + 2 && iov->iov_base == c && iov->iov_len == 2);
    n = vmm_iov_consume(&iov, n, 2);
    g_assert_cmpuint(n, ==, 0);
}

static void test_socket_buffers(void)
{
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), ==, 0);
    int before = 0, after = 0;
    socklen_t len = sizeof(before);
    g_assert_cmpint(getsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &before, &len), ==, 0);
    vmm_unix_socket_set_buffers(sv[0], before * 2);
    len = sizeof(after);
    g_assert_cmpint(getsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &after, &len), ==, 0);
    g_assert_cmpint(after, >, before);
    close(sv[0]);
    close(sv[1]);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/iov/consume", test_consume);
    g_test_add_func("/iov/unix-socket-buffers", test_socket_buffers);
    return g_test_run();
}
