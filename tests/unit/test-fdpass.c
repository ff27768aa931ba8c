/* vmm_send_with_fds / vmm_recv_with_fds over SOCK_SEQPACKET socketpairs. */
#include "common/error.h"
#include "common/fdpass.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    int sv[2];
} Pair;

static void pair_open(Pair *p, gboolean nonblocking)
{
    int type = SOCK_SEQPACKET | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0);
    g_assert_cmpint(socketpair(AF_UNIX, type, 0, p->sv), ==, 0);
}

static void pair_close(Pair *p)
{
    vmm_close_fds(p->sv, 2);
}

static guint count_open_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    g_assert_nonnull(dir);
    guint n = 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (e->d_name[0] != '.')
            n++;
    }
    closedir(dir);
    return n;
}

/* Opens N distinct files to pass around: the ends of pipes. */
static void open_pipes(int *fds, guint n)
{
    for (guint i = 0; i < n; i += 2) {
        int p[2];
        g_assert_cmpint(pipe2(p, O_CLOEXEC), ==, 0);
        fds[i] = p[0];
        if (i + 1 < n)
            fds[i + 1] = p[1];
        else
            close(p[1]);
    }
}

static void assert_same_file(int a, int b)
{
    struct stat sa, sb;
    g_assert_cmpint(fstat(a, &sa), ==, 0);
    g_assert_cmpint(fstat(b, &sb), ==, 0);
    g_assert_cmpuint(sa.st_dev, ==, sb.st_dev);
    g_assert_cmpuint(sa.st_ino, ==, sb.st_ino);
}

static void send_three_fds(int from, int to)
{
    int sent[3];
    /* Three distinct files: a pipe's two ends are one inode, so use a pipe
     * end, a socket and /dev/null. */
    int p[2];
    g_assert_cmpint(pipe2(p, O_CLOEXEC), ==, 0);
    close(p[1]);
    sent[0] = p[0];
    sent[1] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sent[2] = open("/dev/null", O_RDONLY | O_CLOEXEC);
    g_assert_cmpint(sent[1], >=, 0);
    g_assert_cmpint(sent[2], >=, 0);

    g_autoptr(GError) error = NULL;
    gssize n = vmm_send_with_fds(from, "three", 5, sent, 3, &error);
    g_assert_no_error(error);
    g_assert_cmpint(n, ==, 5);

    char buf[16];
    int got[VMM_MAX_FDS];
    guint nfds = 99;
    n = vmm_recv_with_fds(to, buf, sizeof(buf), got, VMM_MAX_FDS, &nfds, &error);
    g_assert_no_error(error);
    g_assert_cmpint(n, ==, 5);
    g_assert_cmpmem(buf, 5, "three", 5);
    g_assert_cmpuint(nfds, ==, 3);
    for (guint i = 0; i < 3; i++) {
        for (guint j = 0; j < 3; j++)
            g_assert_cmpint(got[i], !=, sent[j]);
        for (guint j = 0; j < i; j++)
            g_assert_cmpint(got[i], !=, got[j]);
        assert_same_file(got[i], sent[i]);
        int flags = fcntl(got[i], F_GETFD);
        g_assert_cmpint(flags, >=, 0);
        g_assert_true(flags & FD_CLOEXEC);
    }
    vmm_close_fds(got, 3);
    for (guint i = 0; i < 3; i++)
        g_assert_cmpint(got[i], ==, -1);
    vmm_close_fds(sent, 3);
}

static void test_three_fds_both_ways(void)
{
    Pair p;
    pair_open(&p, FALSE);
    guint before = count_open_fds();
    send_three_fds(p.sv[0], p.sv[1]);
    send_three_fds(p.sv[1], p.sv[0]);
    g_assert_cmpuint(count_open_fds(), ==, before);
    pair_close(&p);
}

static void test_no_fds(void)
{
    Pair p;
    pair_open(&p, FALSE);
    g_autoptr(GError) error = NULL;
    g_assert_cmpint(vmm_send_with_fds(p.sv[0], "hi", 2, NULL, 0, &error), ==, 2);
    g_assert_no_error(error);
    char buf[8];
    int got[2] = { -1, -1 };
    guint nfds = 99;
    g_assert_cmpint(vmm_recv_with_fds(p.sv[1], buf, sizeof(buf), got, 2, &nfds, &error), ==, 2);
    g_assert_no_error(error);
    g_assert_cmpuint(nfds, ==, 0);
    pair_close(&p);
}

/* Five fds against room for MAX: an error, and none of the five left open. */
static void check_too_many_fds(guint max_fds)
{
    Pair p;
    pair_open(&p, FALSE);
    int sent[5];
    open_pipes(sent, 5);
    g_autoptr(GError) error = NULL;
    g_assert_cmpint(vmm_send_with_fds(p.sv[0], "five", 4, sent, 5, &error), ==, 4);
    g_assert_no_error(error);
    vmm_close_fds(sent, 5);

    guint before = count_open_fds();
    char buf[16];
    int got[VMM_MAX_FDS];
    guint nfds = 99;
    gssize n = vmm_recv_with_fds(p.sv[1], buf, sizeof(buf), got, max_fds, &nfds, &error);
    g_assert_cmpint(n, ==, -1);
    g_assert_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL);
    g_assert_cmpuint(nfds, ==, 0);
    g_assert_cmpuint(count_open_fds(), ==, before);
    pair_close(&p);
}

static void test_ctrunc_max2(void)
{
    check_too_many_fds(2);
}

/* 1 fd fits CMSG_SPACE's padding for 2: the kernel would not flag it. */
static void test_ctrunc_max1(void)
{
    check_too_many_fds(1);
}

static void test_ctrunc_max0(void)
{
    check_too_many_fds(0);
}

static void test_msg_trunc(void)
{
    Pair p;
    pair_open(&p, FALSE);
    char big[100];
    memset(big, 'x', sizeof(big));
    int sent[2];
    open_pipes(sent, 2);
    g_autoptr(GError) error = NULL;
    g_assert_cmpint(vmm_send_with_fds(p.sv[0], big, sizeof(big), sent, 2, &error), ==, 100);
    g_assert_no_error(error);
    vmm_close_fds(sent, 2);

    guint before = count_open_fds();
    char buf[10];
    int got[VMM_MAX_FDS];
    guint nfds = 99;
    gssize n = vmm_recv_with_fds(p.sv[1], buf, sizeof(buf), got, VMM_MAX_FDS, &nfds, &error);
    g_assert_cmpint(n, ==, -1);
    g_assert_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG);
    g_assert_nonnull(strstr(error->message, "exceeded 10 bytes"));
    g_assert_nonnull(strstr(error->message, "100"));
    g_assert_cmpuint(nfds, ==, 0);
    g_assert_cmpuint(count_open_fds(), ==, before);

    /* The stream goes on with the next message. */
    g_clear_error(&error);
    g_assert_cmpint(vmm_send_with_fds(p.sv[0], "ok", 2, NULL, 0, &error), ==, 2);
    g_assert_cmpint(vmm_recv_with_fds(p.sv[1], buf, sizeof(buf), got, 0, &nfds, &error), ==, 2);
    g_assert_no_error(error);
    pair_close(&p);
}

static void test_would_block(void)
{
    Pair p;
    pair_open(&p, TRUE);
    g_autoptr(GError) error = NULL;
    char buf[64];
    int got[1];
    guint nfds = 99;
    g_assert_cmpint(vmm_recv_with_fds(p.sv[1], buf, sizeof(buf), got, 1, &nfds, &error), ==, -1);
    g_assert_error(error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK);
    g_assert_cmpuint(nfds, ==, 0);
    g_clear_error(&error);

    /* Fill the socket until the send side would block; bounded so that a
     * socket that never fills fails the test instead of hanging it. */
    char chunk[4096] = { 0 };
    gboolean blocked = FALSE;
    for (int i = 0; i < 100000 && !blocked; i++) {
        if (vmm_send_with_fds(p.sv[0], chunk, sizeof(chunk), NULL, 0, &error) < 0) {
            g_assert_error(error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK);
            blocked = TRUE;
        }
    }
    g_assert_true(blocked);
    pair_close(&p);
}

static void test_eof(void)
{
    Pair p;
    pair_open(&p, FALSE);
    close(p.sv[0]);
    p.sv[0] = -1;
    g_autoptr(GError) error = NULL;
    char buf[8];
    int got[1];
    guint nfds = 99;
    g_assert_cmpint(vmm_recv_with_fds(p.sv[1], buf, sizeof(buf), got, 1, &nfds, &error), ==, 0);
    g_assert_no_error(error);
    g_assert_cmpuint(nfds, ==, 0);

    /* Sending to a gone peer: no SIGPIPE, a VMM_ERROR_CLOSED error. */
    g_assert_cmpint(vmm_send_with_fds(p.sv[1], "x", 1, NULL, 0, &error), ==, -1);
    g_assert_error(error, VMM_ERROR, VMM_ERROR_CLOSED);
    pair_close(&p);
}

static void test_too_many_to_send(void)
{
    Pair p;
    pair_open(&p, FALSE);
    int fds[VMM_MAX_FDS + 1];
    for (guint i = 0; i < G_N_ELEMENTS(fds); i++)
        fds[i] = p.sv[0];
    g_autoptr(GError) error = NULL;
    g_assert_cmpint(vmm_send_with_fds(p.sv[0], "x", 1, fds, G_N_ELEMENTS(fds), &error), ==, -1);
    g_assert_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG);
    pair_close(&p);
}

static void test_bad_socket(void)
{
    g_autoptr(GError) error = NULL;
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    g_assert_cmpint(vmm_send_with_fds(fd, "x", 1, NULL, 0, &error), ==, -1);
    g_assert_error(error, VMM_ERROR, VMM_ERROR_IO);
    g_assert_nonnull(strstr(error->message, g_strerror(ENOTSOCK)));
    close(fd);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/fdpass/three-fds-both-ways", test_three_fds_both_ways);
    g_test_add_func("/fdpass/no-fds", test_no_fds);
    g_test_add_func("/fdpass/ctrunc-max2", test_ctrunc_max2);
    g_test_add_func("/fdpass/ctrunc-max1", test_ctrunc_max1);
    g_test_add_func("/fdpass/ctrunc-max0", test_ctrunc_max0);
    g_test_add_func("/fdpass/msg-trunc", test_msg_trunc);
    g_test_add_func("/fdpass/would-block", test_would_block);
    g_test_add_func("/fdpass/eof", test_eof);
    g_test_add_func("/fdpass/too-many-to-send", test_too_many_to_send);
    g_test_add_func("/fdpass/bad-socket", test_bad_socket);
    return g_test_run();
}
