/* common/splice: file ranges to a socket by splice, with the header in
 * front, zeroes past the end of the file and ranges larger than the pipe. */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/splice.h"

#define FILE_BYTES (3 * 1024 * 1024 + 1234)

typedef struct {
    int fd;
    gsize len;
    guint8 *buf;
} Reader;

static gpointer read_all(gpointer data)
{
    Reader *r = data;
    gsize done = 0;
    while (done < r->len) {
        ssize_t n = read(r->fd, r->buf + done, r->len - done);
        if (n <= 0)
            break;
        done += (gsize)n;
    }
    r->len = done;
    return NULL;
}

static int make_file(guint8 **content, char **path)
{
    *path = g_build_filename(g_get_tmp_dir(), "test-splice-XXXXXX", NULL);
    int fd = g_mkstemp(*path);
    g_assert_cmpint(fd, >=, 0);
    *content = g_malloc(FILE_BYTES);
    for (gsize i = 0; i < FILE_BYTES; i++)
        (*content)[i] = (guint8)(i * 7 + i / 4096);
    g_assert_cmpint(write(fd, *content, FILE_BYTES), ==, FILE_BYTES);
    return fd;
}

static VmmSplicePipe *new_pipe(void)
{
    g_autoptr(GError) err = NULL;
    VmmSplicePipe *p = vmm_splice_pipe_new(&err);
    g_assert_no_error(err);
    return p;
}

static void drop_file(int fd, char *path, guint8 *content)
{
    close(fd);
    g_unlink(path);
    g_free(path);
    g_free(content);
}

/* Sends [OFFSET, OFFSET+LEN) of the file after a 16-byte header and checks
 * what arrives: the header, the file's bytes, zeroes past its end. */
static void check_range(int fd, const guint8 *content, guint64 offset, guint64 len)
{
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
    guint8 hdr[16];
    memset(hdr, 0xab, sizeof(hdr));
    Reader r = { sv[1], sizeof(hdr) + len, g_malloc(sizeof(hdr) + len) };
    GThread *t = g_thread_new("reader", read_all, &r);

    VmmSplicePipe *p = new_pipe();
    gssize filled = vmm_splice_fill(p, fd, offset, len);
    g_assert_cmpint(filled, >=, 0);
    struct iovec iov = { hdr, sizeof(hdr) };
    g_assert_true(vmm_splice_send(p, sv[0], &iov, 1, fd, offset, len, (gsize)filled));
    g_assert_true(vmm_splice_pipe_reusable(p));
    close(sv[0]);
    g_thread_join(t);

    g_assert_cmpuint(r.len, ==, sizeof(hdr) + len);
    g_assert_cmpmem(r.buf, sizeof(hdr), hdr, sizeof(hdr));
    for (guint64 i = 0; i < len; i++) {
        guint8 want = offset + i < FILE_BYTES ? content[offset + i] : 0;
        if (r.buf[sizeof(hdr) + i] != want)
            g_error("byte %" G_GUINT64_FORMAT " of the range at %" G_GUINT64_FORMAT ": 0x%02x, want 0x%02x", i,
                    offset, r.buf[sizeof(hdr) + i], want);
    }
    g_free(r.buf);
    close(sv[1]);
    vmm_splice_pipe_free(p);
}

static void test_ranges(void)
{
    guint8 *content;
    char *path;
    int fd = make_file(&content, &path);
    check_range(fd, content, 0, 65536);
    check_range(fd, content, 4096, 1024 * 1024);            /* one full pipe */
    check_range(fd, content, 1000, 1024 * 1024);            /* unaligned: one slot more */
    check_range(fd, content, 12345, 2 * 1024 * 1024 + 77);  /* more than a pipe */
    check_range(fd, content, FILE_BYTES - 5000, 70000);     /* past the end: zeroes */
    check_range(fd, content, FILE_BYTES + 4096, 8192);      /* wholly past the end */
    drop_file(fd, path, content);
}

/* A file opened write-only cannot be read: the error comes from the fill,
 * before anything was sent, so a server can still answer with an error. */
static void test_fill_error(void)
{
    guint8 *content;
    char *path;
    int fd = make_file(&content, &path);
    int wfd = open(path, O_WRONLY | O_CLOEXEC);
    g_assert_cmpint(wfd, >=, 0);
    VmmSplicePipe *p = new_pipe();
    g_assert_cmpint(vmm_splice_fill(p, wfd, 0, 65536), ==, -1);
    g_assert_cmpint(errno, ==, EBADF);
    g_assert_true(vmm_splice_pipe_reusable(p));
    vmm_splice_pipe_free(p);
    close(wfd);
    drop_file(fd, path, content);
}

/* The peer went away: the send fails and the pipe is not used again. */
static void test_send_error(void)
{
    guint8 *content;
    char *path;
    int fd = make_file(&content, &path);
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
    close(sv[1]);
    VmmSplicePipe *p = new_pipe();
    gssize filled = vmm_splice_fill(p, fd, 0, 1024 * 1024);
    g_assert_cmpint(filled, >, 0);
    guint8 hdr[4] = { 0 };
    struct iovec iov = { hdr, sizeof(hdr) };
    g_assert_false(vmm_splice_send(p, sv[0], &iov, 1, fd, 0, 1024 * 1024, (gsize)filled));
    g_assert_false(vmm_splice_pipe_reusable(p));
    vmm_splice_pipe_free(p);
    close(sv[0]);
    drop_file(fd, path, content);
}

static gpointer read_header_and_close(gpointer data)
{
    int fd = GPOINTER_TO_INT(data);
    guint8 hdr[4];
    g_assert_cmpint(read(fd, hdr, sizeof(hdr)), ==, sizeof(hdr));
    close(fd);
    return NULL;
}

/* The peer goes after the header: splice, which has no MSG_NOSIGNAL, must
 * not kill the process with SIGPIPE (this test runs with the default
 * disposition), and no SIGPIPE is left pending. */
static void test_peer_gone_mid_reply(void)
{
    guint8 *content;
    char *path;
    int fd = make_file(&content, &path);
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
    GThread *t = g_thread_new("reader", read_header_and_close, GINT_TO_POINTER(sv[1]));
    VmmSplicePipe *p = new_pipe();
    gssize filled = vmm_splice_fill(p, fd, 0, 1024 * 1024);
    guint8 hdr[4] = { 0 };
    struct iovec iov = { hdr, sizeof(hdr) };
    g_assert_false(vmm_splice_send(p, sv[0], &iov, 1, fd, 0, FILE_BYTES, (gsize)filled));
    g_thread_join(t);
    sigset_t pending;
    sigpending(&pending);
    g_assert_false(sigismember(&pending, SIGPIPE));
    vmm_splice_pipe_free(p);
    close(sv[0]);
    drop_file(fd, path, content);
}

/* Memory by reference: pieces of odd sizes and alignments, more than a pipe. */
static void test_send_iov(void)
{
    gsize total = 0, sizes[] = { 4096, 100, 1024 * 1024 + 3, 8192, 1, 700000 };
    struct iovec iov[G_N_ELEMENTS(sizes)];
    guint8 *mem = g_malloc(4 * 1024 * 1024);
    for (gsize i = 0; i < 4 * 1024 * 1024; i++)
        mem[i] = (guint8)(i * 13 + i / 4096);
    gsize at = 17;
    for (guint i = 0; i < G_N_ELEMENTS(sizes); i++) {
        iov[i] = (struct iovec){ mem + at, sizes[i] };
        at += sizes[i] + 333;
        total += sizes[i];
    }
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
    guint8 hdr[28];
    memset(hdr, 0x5a, sizeof(hdr));
    Reader r = { sv[1], sizeof(hdr) + total, g_malloc(sizeof(hdr) + total) };
    GThread *t = g_thread_new("reader", read_all, &r);
    VmmSplicePipe *p = new_pipe();
    struct iovec h = { hdr, sizeof(hdr) };
    g_assert_true(vmm_splice_send_iov(p, sv[0], &h, 1, iov, G_N_ELEMENTS(iov)));
    g_assert_true(vmm_splice_pipe_reusable(p));
    g_thread_join(t);
    g_assert_cmpuint(r.len, ==, sizeof(hdr) + total);
    g_assert_cmpmem(r.buf, sizeof(hdr), hdr, sizeof(hdr));
    gsize pos = sizeof(hdr);
    for (guint i = 0; i < G_N_ELEMENTS(iov); i++) {
        g_assert_cmpmem(r.buf + pos, iov[i].iov_len, iov[i].iov_base, iov[i].iov_len);
        pos += iov[i].iov_len;
    }
    vmm_splice_pipe_free(p);
    close(sv[0]);
    close(sv[1]);
    g_free(r.buf);
    g_free(mem);
}

typedef struct {
    int sock;
    const guint8 *mem;
    gsize len;
    gboolean by_reference;
} Sender;

static gpointer send_mem(gpointer data)
{
    Sender *snd = data;
    struct iovec hdr = { (void *)snd->mem, 0 };
    if (snd->by_reference) {
        VmmSplicePipe *p = new_pipe();
        struct iovec iov = { (void *)snd->mem, snd->len };
        g_assert_true(vmm_splice_send_iov(p, snd->sock, &hdr, 0, &iov, 1));
        vmm_splice_pipe_free(p);
    } else {
        g_assert_cmpint(write(snd->sock, snd->mem, snd->len), ==, (gssize)snd->len);
    }
    return NULL;
}

/* Socket to pipes to file: what the sender sent, by reference or by copy,
 * lands in the file at the offset, over as many pipes as it takes. */
static void check_recv_to_file(gboolean by_reference)
{
    gsize len = 2 * 1024 * 1024 + 4096 * 3 + 100;
    guint8 *mem = g_malloc(len);
    for (gsize i = 0; i < len; i++)
        mem[i] = (guint8)(i * 31 + i / 4096);
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
    Sender snd = { sv[0], mem, len, by_reference };
    GThread *t = g_thread_new("sender", send_mem, &snd);
    g_autofree char *path = g_build_filename(g_get_tmp_dir(), "test-splice-recv-XXXXXX", NULL);
    int fd = g_mkstemp(path);
    g_assert_cmpint(fd, >=, 0);
    guint64 at = 5000;
    gsize got = 0;
    while (got < len) {
        VmmSplicePipe *p = new_pipe();
        gssize n = vmm_splice_recv(p, sv[1], len - got);
        g_assert_cmpint(n, >=, 0);
        g_assert_cmpuint(vmm_splice_pipe_held(p), ==, (gsize)n);
        g_assert_true(vmm_splice_drain_to_file(p, fd, at + got));
        g_assert_true(vmm_splice_pipe_reusable(p));
        got += (gsize)n;
        vmm_splice_pipe_free(p);
    }
    g_thread_join(t);
    guint8 *back = g_malloc(len);
    g_assert_cmpint(pread(fd, back, len, (off_t)at), ==, (gssize)len);
    g_assert_cmpmem(back, len, mem, len);
    /* The sender is done: the next receive finds the end of the stream. */
    close(sv[0]);
    VmmSplicePipe *p = new_pipe();
    g_assert_cmpint(vmm_splice_recv(p, sv[1], 10), ==, -1);
    g_assert_cmpint(errno, ==, ECONNRESET);
    vmm_splice_pipe_free(p);
    close(sv[1]);
    close(fd);
    g_unlink(path);
    g_free(back);
    g_free(mem);
}

static void test_recv_by_reference(void) { check_recv_to_file(TRUE); }
static void test_recv_by_copy(void) { check_recv_to_file(FALSE); }

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/splice/ranges", test_ranges);
    g_test_add_func("/splice/fill-error", test_fill_error);
    g_test_add_func("/splice/send-error", test_send_error);
    g_test_add_func("/splice/peer-gone-mid-reply", test_peer_gone_mid_reply);
    g_test_add_func("/splice/send-iov", test_send_iov);
    g_test_add_func("/splice/recv-by-reference", test_recv_by_reference);
    g_test_add_func("/splice/recv-by-copy", test_recv_by_copy);
    return g_test_run();
}
