/* vcpu-worker's NBD backend (vcpu-worker/blk-nbd.c) against blockd's own NBD
 * server engine over a socketpair, exporting a raw file in a temp directory
 * (as blockd serves a drive in a VM), and against a scripted server that dies
 * with requests in flight, to check that they are sent again and complete on
 * the next connection without an error. */
#include "vcpu-worker/blk-nbd.h"
#include "blockd/block.h"
#include "blockd/nbd-server.h"
#include "common/bytes.h"
#include "proto/nbd.h"
#include "virtio-driver.h"

#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define MiB (1024 * 1024)
#define EXPORT_SIZE (48 * MiB)
#define TIMEOUT_US (20 * G_USEC_PER_SEC)

/* What the test hands the backend as a request: completion recorded here. */
typedef struct {
    gint done;
    int ret;
} TestReq;

static GMutex done_lock;
static GCond done_cond;

static void test_complete(VmmBlkRequest *req, int ret)
{
    TestReq *t = (TestReq *)req;
    g_mutex_lock(&done_lock);
    t->ret = ret;
    g_atomic_int_inc(&t->done);
    g_cond_broadcast(&done_cond);
    g_mutex_unlock(&done_lock);
}

/* Waits (bounded) until every one of N requests completed exactly once. */
static void wait_done(TestReq *reqs, guint n)
{
    gint64 deadline = g_get_monotonic_time() + TIMEOUT_US;
    g_mutex_lock(&done_lock);
    for (guint i = 0; i < n;) {
        if (g_atomic_int_get(&reqs[i].done)) {
            i++;
            continue;
        }
        if (!g_cond_wait_until(&done_cond, &done_lock, deadline))
            g_error("request %u did not complete in time", i);
    }
    g_mutex_unlock(&done_lock);
    for (guint i = 0; i < n; i++)
        g_assert_cmpint(reqs[i].done, ==, 1);
}

typedef struct {
    char *dir, *path;
    NbdServer *server;
    VmmBlkNbd *client;
} Fixture;

static VmmBlockDev *open_image(const char *path, gboolean ro)
{
    g_autoptr(GError) err = NULL;
    VmmBlockDev *bs = vmm_block_open(path, "raw", NULL, ro ? 0 : VMM_BDRV_O_RDWR, &err);
    g_assert_no_error(err);
    return bs;
}

/* A server exporting the image as NAME, and a socket connected to it. */
static int serve(Fixture *f, const char *name, gboolean ro)
{
    g_autoptr(GError) err = NULL;
    VmmBlockDev *bs = open_image(f->path, ro);
    f->server = nbd_server_new();
    NbdExportConfig cfg = { .name = name, .bs = bs, .read_only = ro };
    NbdExport *exp = nbd_export_new(&cfg, &err);
    g_assert_no_error(err);
    g_assert_true(nbd_server_add_export(f->server, exp, &err));
    nbd_export_unref(exp);
    vmm_block_unref(bs);
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
    g_assert_true(nbd_server_serve_fd(f->server, sv[0], &err));
    return sv[1];
}

static void fixture_setup(Fixture *f, gconstpointer data)
{
    f->dir = g_dir_make_tmp("blk-nbd-XXXXXX", NULL);
    f->path = g_build_filename(f->dir, "disk.raw", NULL);
    int fd = open(f->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(ftruncate(fd, EXPORT_SIZE), ==, 0);
    close(fd);
    f->client = vmm_blk_nbd_new("d0");
    vmm_blk_nbd_set_complete(f->client, test_complete);
}

static void fixture_teardown(Fixture *f, gconstpointer data)
{
    vmm_blk_nbd_free(f->client);
    if (f->server)
        nbd_server_free(f->server);
    g_unlink(f->path);
    g_rmdir(f->dir);
    g_free(f->path);
    g_free(f->dir);
}

static void file_read(Fixture *f, guint64 off, void *buf, gsize len)
{
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    g_assert_cmpint(pread(fd, buf, len, (off_t)off), ==, (gssize)len);
    close(fd);
}

static void fill(guint8 *buf, gsize len, guint seed)
{
    for (gsize i = 0; i < len; i++)
        buf[i] = (guint8)(seed * 31 + i * 7 + (i >> 9));
}

static void do_write(Fixture *f, TestReq *t, guint64 off, void *buf, gsize len)
{
    /* Two pieces, as a guest's scattered buffers come. */
    struct iovec iov[2] = { { buf, len / 2 }, { (guint8 *)buf + len / 2, len - len / 2 } };
    vmm_blk_nbd_ops.write(f->client, off, iov, 2, (VmmBlkRequest *)t);
}

static void do_read(Fixture *f, TestReq *t, guint64 off, void *buf, gsize len)
{
    struct iovec iov[2] = { { buf, len / 3 }, { (guint8 *)buf + len / 3, len - len / 3 } };
    vmm_blk_nbd_ops.read(f->client, off, iov, 2, (VmmBlkRequest *)t);
}

static void test_handshake(Fixture *f, gconstpointer data)
{
    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_blk_nbd_connect(f->client, serve(f, "d0", FALSE), &err));
    g_assert_no_error(err);
    g_assert_true(vmm_blk_nbd_connected(f->client));
    g_assert_cmpuint(vmm_blk_nbd_size(f->client), ==, EXPORT_SIZE);
    g_assert_false(vmm_blk_nbd_read_only(f->client));
    guint16 flags = vmm_blk_nbd_flags(f->client);
    g_assert_true(flags & NBD_FLAG_SEND_FLUSH);
    g_assert_true(flags & NBD_FLAG_SEND_TRIM);
    g_assert_true(flags & NBD_FLAG_SEND_WRITE_ZEROES);
}

static void test_wrong_export(Fixture *f, gconstpointer data)
{
    g_autoptr(GError) err = NULL;
    VmmBlkNbd *other = vmm_blk_nbd_new("nope");
    g_assert_false(vmm_blk_nbd_connect(other, serve(f, "d0", FALSE), &err));
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(err->message, "drive 'nope': blockd refused the export"));
    vmm_blk_nbd_free(other);
}

/* 64 writes in flight, then 64 reads in flight, checked against the file. */
static void test_many_in_flight(Fixture *f, gconstpointer data)
{
    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_blk_nbd_connect(f->client, serve(f, "d0", FALSE), &err));
    enum { N = 64, LEN = 64 * 1024 };
    g_autofree guint8 *wbuf = g_malloc(N * LEN), *rbuf = g_malloc0(N * LEN), *fbuf = g_malloc(LEN);
    TestReq w[N] = { 0 }, r[N] = { 0 };
    for (guint i = 0; i < N; i++) {
        fill(wbuf + i * LEN, LEN, i);
        do_write(f, &w[i], (guint64)i * 2 * LEN, wbuf + i * LEN, LEN);
    }
    wait_done(w, N);
    for (guint i = 0; i < N; i++) {
        g_assert_cmpint(w[i].ret, ==, 0);
        do_read(f, &r[i], (guint64)i * 2 * LEN, rbuf + i * LEN, LEN);
    }
    wait_done(r, N);
    for (guint i = 0; i < N; i++) {
        g_assert_cmpint(r[i].ret, ==, 0);
        file_read(f, (guint64)i * 2 * LEN, fbuf, LEN);
        g_assert_cmpmem(fbuf, LEN, wbuf + i * LEN, LEN);
    }
    g_assert_cmpmem(rbuf, N * LEN, wbuf, N * LEN);
    g_assert_cmpuint(vmm_blk_nbd_in_flight(f->client), ==, 0);
}

/* Over the server's 32 MiB limit: split in pieces, one completion. */
static void test_split(Fixture *f, gconstpointer data)
{
    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_blk_nbd_connect(f->client, serve(f, "d0", FALSE), &err));
    gsize len = 40 * MiB;
    g_autofree guint8 *wbuf = g_malloc(len), *rbuf = g_malloc0(len), *fbuf = g_malloc(len);
    fill(wbuf, len, 7);
    TestReq t[2] = { 0 };
    do_write(f, &t[0], 4096, wbuf, len);
    wait_done(&t[0], 1);
    g_assert_cmpint(t[0].ret, ==, 0);
    do_read(f, &t[1], 4096, rbuf, len);
    wait_done(&t[1], 1);
    g_assert_cmpint(t[1].ret, ==, 0);
    g_assert_true(memcmp(rbuf, wbuf, len) == 0);
    file_read(f, 4096, fbuf, len);
    g_assert_true(memcmp(fbuf, wbuf, len) == 0);
}

static void test_flush_trim_zeroes(Fixture *f, gconstpointer data)
{
    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_blk_nbd_connect(f->client, serve(f, "d0", FALSE), &err));
    guint8 buf[8192], zero[8192] = { 0 }, back[8192];
    memset(buf, 0xab, sizeof(buf));
    TestReq t[5] = { 0 };
    do_write(f, &t[0], 0, buf, sizeof(buf));
    do_write(f, &t[1], 1 * MiB, buf, sizeof(buf));
    wait_done(t, 2);
    vmm_blk_nbd_ops.write_zeroes(f->client, 0, sizeof(buf), false, (VmmBlkRequest *)&t[2]);
    vmm_blk_nbd_ops.discard(f->client, 1 * MiB, sizeof(buf), (VmmBlkRequest *)&t[3]);
    vmm_blk_nbd_ops.flush(f->client, (VmmBlkRequest *)&t[4]);
    wait_done(t + 2, 3);
    for (guint i = 0; i < 5; i++)
        g_assert_cmpint(t[i].ret, ==, 0);
    file_read(f, 0, back, sizeof(back));
    g_assert_cmpmem(back, sizeof(back), zero, sizeof(zero));
}

static void test_read_only(Fixture *f, gconstpointer data)
{
    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_blk_nbd_connect(f->client, serve(f, "d0", TRUE), &err));
    g_assert_true(vmm_blk_nbd_read_only(f->client));
    guint8 buf[4096] = { 1 };
    TestReq t = { 0 };
    do_write(f, &t, 0, buf, sizeof(buf));
    wait_done(&t, 1);
    g_assert_cmpint(t.ret, ==, -EPERM);
}

/* A read past the end: the server's error reaches the caller as -errno. */
static void test_server_error(Fixture *f, gconstpointer data)
{
    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_blk_nbd_connect(f->client, serve(f, "d0", FALSE), &err));
    guint8 buf[4096];
    TestReq t = { 0 };
    do_read(f, &t, EXPORT_SIZE, buf, sizeof(buf));
    wait_done(&t, 1);
    g_assert_cmpint(t.ret, ==, -EINVAL);
    /* The connection is still good. */
    TestReq u = { 0 };
    do_read(f, &u, 0, buf, sizeof(buf));
    wait_done(&u, 1);
    g_assert_cmpint(u.ret, ==, 0);
}

/* ---- Data through guest memory (NBD_OPT_VMM_GUEST_MEMORY) --------------------- */

#define RAM_SIZE (64 * MiB)

/* One memfd mapped twice, as vcpu-worker and blockd map the guest's RAM: at
 * different addresses, so that only offsets can work between them. */
typedef struct {
    guint8 *client, *server;
} TwoViews;

static void two_views(TwoViews *v)
{
    int fd = memfd_create("test-ram", MFD_CLOEXEC);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(ftruncate(fd, RAM_SIZE), ==, 0);
    v->client = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    v->server = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    g_assert_true(v->client != MAP_FAILED && v->server != MAP_FAILED && v->client != v->server);
    close(fd);
}

static void two_views_free(TwoViews *v)
{
    munmap(v->client, RAM_SIZE);
    munmap(v->server, RAM_SIZE);
}

/* As serve(), with the server given the guest's RAM. */
static int serve_with_ram(Fixture *f, guint8 *ram)
{
    g_autoptr(GError) err = NULL;
    int fd = serve(f, "d0", FALSE);
    /* serve() started a connection without RAM on the other end: a second
     * socketpair for the same export, this one with it. */
    close(fd);
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
    NbdGuestMemory mem = { ram, RAM_SIZE };
    g_assert_true(nbd_server_serve_fd_guest(f->server, sv[0], &mem, &err));
    return sv[1];
}

/* Writes from scattered guest pages (out of order, some adjacent), reads into
 * others, many in flight, and one request from a buffer outside guest RAM
 * (through the socket): the file and the buffers agree. */
static void test_guest_memory(Fixture *f, gconstpointer data)
{
    g_autoptr(GError) err = NULL;
    TwoViews v;
    two_views(&v);
    vmm_blk_nbd_set_guest_memory(f->client, v.client, RAM_SIZE);
    g_assert_true(vmm_blk_nbd_connect(f->client, serve_with_ram(f, v.server), &err));
    g_assert_true(vmm_blk_nbd_guest_memory(f->client));
    enum { N = 32, PAGES = 64, PAGE = 4096, LEN = PAGES * PAGE };
    /* Request i's page j lives at guest page (i * PAGES + perm(j)) of the
     * first half of RAM (pairs of adjacent pages, pairs in reverse order);
     * its read lands in the same layout in the second half. */
    static struct iovec wiov[N][PAGES], riov[N][PAGES];
    g_autofree guint8 *expect = g_malloc(N * LEN), *fbuf = g_malloc(LEN);
    TestReq w[N] = { 0 }, r[N] = { 0 };
    for (guint i = 0; i < N; i++) {
        for (guint j = 0; j < PAGES; j++) {
            guint page = i * PAGES + (PAGES - 2 - (j & ~1u)) + (j & 1u);
            wiov[i][j] = (struct iovec){ v.client + (gsize)page * PAGE, PAGE };
            riov[i][j] = (struct iovec){ v.client + RAM_SIZE / 2 + (gsize)page * PAGE, PAGE };
            fill(wiov[i][j].iov_base, PAGE, i * PAGES + j);
            memcpy(expect + (gsize)i * LEN + (gsize)j * PAGE, wiov[i][j].iov_base, PAGE);
        }
        vmm_blk_nbd_ops.write(f->client, (guint64)i * LEN, wiov[i], PAGES, (VmmBlkRequest *)&w[i]);
    }
    wait_done(w, N);
    for (guint i = 0; i < N; i++) {
        g_assert_cmpint(w[i].ret, ==, 0);
        vmm_blk_nbd_ops.read(f->client, (guint64)i * LEN, riov[i], PAGES, (VmmBlkRequest *)&r[i]);
    }
    wait_done(r, N);
    for (guint i = 0; i < N; i++) {
        g_assert_cmpint(r[i].ret, ==, 0);
        file_read(f, (guint64)i * LEN, fbuf, LEN);
        g_assert_cmpmem(fbuf, LEN, expect + (gsize)i * LEN, LEN);
        for (guint j = 0; j < PAGES; j++)
            g_assert_cmpmem(riov[i][j].iov_base, PAGE, expect + (gsize)i * LEN + (gsize)j * PAGE, PAGE);
    }
    /* Not guest memory: the data crosses the socket, on the same connection. */
    guint8 outside[PAGE], back[PAGE] = { 0 };
    fill(outside, PAGE, 99);
    TestReq o[2] = { 0 };
    do_write(f, &o[0], 0, outside, PAGE);
    wait_done(&o[0], 1);
    do_read(f, &o[1], 0, back, PAGE);
    wait_done(&o[1], 1);
    g_assert_cmpint(o[0].ret, ==, 0);
    g_assert_cmpint(o[1].ret, ==, 0);
    g_assert_cmpmem(back, PAGE, outside, PAGE);
    two_views_free(&v);
}

/* A read-only export takes guest-memory reads too (the image's zeroes land
 * over what guest memory held). */
static void test_guest_memory_ro(Fixture *f, gconstpointer data)
{
    g_autoptr(GError) err = NULL;
    TwoViews v;
    two_views(&v);
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
    VmmBlockDev *bs = open_image(f->path, TRUE);
    f->server = nbd_server_new();
    NbdExportConfig cfg = { .name = "d0", .bs = bs, .read_only = TRUE };
    NbdExport *exp = nbd_export_new(&cfg, &err);
    g_assert_true(nbd_server_add_export(f->server, exp, &err));
    nbd_export_unref(exp);
    vmm_block_unref(bs);
    NbdGuestMemory mem = { v.server, RAM_SIZE };
    g_assert_true(nbd_server_serve_fd_guest(f->server, sv[0], &mem, &err));
    vmm_blk_nbd_set_guest_memory(f->client, v.client, RAM_SIZE);
    g_assert_true(vmm_blk_nbd_connect(f->client, sv[1], &err));
    g_assert_true(vmm_blk_nbd_guest_memory(f->client));
    memset(v.client, 0xaa, 8192);
    struct iovec iov = { v.client, 8192 };
    TestReq t[2] = { 0 };
    vmm_blk_nbd_ops.read(f->client, EXPORT_SIZE - 8192, &iov, 1, (VmmBlkRequest *)&t[0]);
    wait_done(&t[0], 1);
    g_assert_cmpint(t[0].ret, ==, 0);
    for (guint i = 0; i < 8192; i++)
        g_assert_cmpuint(v.client[i], ==, 0);
    two_views_free(&v);
}

/* Proof that the data went through guest memory and not the socket: the
 * server is given a different memfd than the client's (never so in a VM), so
 * the file gets what the server's view holds, and a read lands there. */
static void test_guest_memory_no_payload(Fixture *f, gconstpointer data)
{
    g_autoptr(GError) err = NULL;
    TwoViews mine, other;
    two_views(&mine);
    two_views(&other);
    vmm_blk_nbd_set_guest_memory(f->client, mine.client, RAM_SIZE);
    g_assert_true(vmm_blk_nbd_connect(f->client, serve_with_ram(f, other.server), &err));
    memset(mine.client, 0x11, 65536);
    memset(other.client, 0x22, 65536);
    struct iovec iov = { mine.client, 65536 };
    TestReq t[2] = { 0 };
    vmm_blk_nbd_ops.write(f->client, 0, &iov, 1, (VmmBlkRequest *)&t[0]);
    wait_done(&t[0], 1);
    g_assert_cmpint(t[0].ret, ==, 0);
    guint8 fbuf[65536];
    file_read(f, 0, fbuf, sizeof(fbuf));
    for (gsize i = 0; i < sizeof(fbuf); i++)
        g_assert_cmpuint(fbuf[i], ==, 0x22);
    memset(other.client, 0, 65536);
    vmm_blk_nbd_ops.read(f->client, 0, &iov, 1, (VmmBlkRequest *)&t[1]);
    wait_done(&t[1], 1);
    g_assert_cmpint(t[1].ret, ==, 0);
    for (gsize i = 0; i < 65536; i++)
        g_assert_cmpuint(other.client[i], ==, 0x22);
    g_assert_cmpuint(mine.client[0], ==, 0x11);
    two_views_free(&mine);
    two_views_free(&other);
}

/* The client has guest RAM but the server was given none: data through the
 * socket, as before. */
static void test_guest_memory_refused(Fixture *f, gconstpointer data)
{
    g_autoptr(GError) err = NULL;
    TwoViews v;
    two_views(&v);
    vmm_blk_nbd_set_guest_memory(f->client, v.client, RAM_SIZE);
    g_assert_true(vmm_blk_nbd_connect(f->client, serve(f, "d0", FALSE), &err));
    g_assert_false(vmm_blk_nbd_guest_memory(f->client));
    fill(v.client, 65536, 5);
    struct iovec wiov = { v.client, 65536 }, riov = { v.client + 65536, 65536 };
    TestReq t[2] = { 0 };
    vmm_blk_nbd_ops.write(f->client, 65536, &wiov, 1, (VmmBlkRequest *)&t[0]);
    wait_done(&t[0], 1);
    vmm_blk_nbd_ops.read(f->client, 65536, &riov, 1, (VmmBlkRequest *)&t[1]);
    wait_done(&t[1], 1);
    g_assert_cmpint(t[0].ret, ==, 0);
    g_assert_cmpint(t[1].ret, ==, 0);
    g_assert_cmpmem(v.client, 65536, v.client + 65536, 65536);
    two_views_free(&v);
}

/* ---- A server that dies with requests in flight ------------------------------ */

typedef struct {
    int fd;
    guint64 size;
    guint take;          /* requests to read and leave unanswered before closing */
} DyingServer;

static gboolean read_n(int fd, void *buf, gsize len)
{
    gsize done = 0;
    while (done < len) {
        ssize_t n = read(fd, (char *)buf + done, len - done);
        if (n <= 0)
            return FALSE;
        done += (gsize)n;
    }
    return TRUE;
}

static gpointer dying_server(gpointer data)
{
    DyingServer *s = data;
    guint8 greet[18];
    put_be64(greet, NBD_MAGIC);
    put_be64(greet + 8, NBD_IHAVEOPT);
    put_be16(greet + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    g_assert_cmpint(write(s->fd, greet, sizeof(greet)), ==, sizeof(greet));
    guint8 cflags[4], opt[16];
    g_assert_true(read_n(s->fd, cflags, 4) && read_n(s->fd, opt, 16));
    /* Asked to move data through guest memory, it answers as a server that
     * knows no such option. */
    g_assert_cmpuint(get_be32(opt + 8), ==, NBD_OPT_VMM_GUEST_MEMORY);
    g_assert_cmpuint(get_be32(opt + 12), ==, 0);
    guint8 unsup[20];
    put_be64(unsup, NBD_OPT_REPLY_MAGIC);
    put_be32(unsup + 8, NBD_OPT_VMM_GUEST_MEMORY);
    put_be32(unsup + 12, NBD_REP_ERR_UNSUP);
    put_be32(unsup + 16, 0);
    g_assert_cmpint(write(s->fd, unsup, sizeof(unsup)), ==, sizeof(unsup));
    g_assert_true(read_n(s->fd, opt, 16));
    g_assert_cmpuint(get_be32(opt + 8), ==, NBD_OPT_GO);
    g_autofree guint8 *odata = g_malloc(get_be32(opt + 12));
    g_assert_true(read_n(s->fd, odata, get_be32(opt + 12)));
    guint8 rep[20 + 12 + 20];
    put_be64(rep, NBD_OPT_REPLY_MAGIC);
    put_be32(rep + 8, NBD_OPT_GO);
    put_be32(rep + 12, NBD_REP_INFO);
    put_be32(rep + 16, 12);
    put_be16(rep + 20, NBD_INFO_EXPORT);
    put_be64(rep + 22, s->size);
    put_be16(rep + 30, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_TRIM |
                           NBD_FLAG_SEND_WRITE_ZEROES);
    put_be64(rep + 32, NBD_OPT_REPLY_MAGIC);
    put_be32(rep + 40, NBD_OPT_GO);
    put_be32(rep + 44, NBD_REP_ACK);
    put_be32(rep + 48, 0);
    g_assert_cmpint(write(s->fd, rep, sizeof(rep)), ==, sizeof(rep));
    for (guint i = 0; i < s->take; i++) {
        guint8 req[NBD_REQUEST_SIZE];
        if (!read_n(s->fd, req, sizeof(req)))
            break;
        if (get_be16(req + 6) == NBD_CMD_WRITE) {
            g_autofree guint8 *payload = g_malloc(get_be32(req + 24));
            if (!read_n(s->fd, payload, get_be32(req + 24)))
                break;
        }
    }
    close(s->fd);   /* blockd died: nothing answered */
    return NULL;
}

static void test_reconnect_resends(Fixture *f, gconstpointer data)
{
    g_autoptr(GError) err = NULL;
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
    enum { N = 8, LEN = 4096 };
    DyingServer ds = { .fd = sv[0], .size = EXPORT_SIZE, .take = N };
    GThread *th = g_thread_new("dying-server", dying_server, &ds);
    g_assert_true(vmm_blk_nbd_connect(f->client, sv[1], &err));
    g_assert_no_error(err);
    g_autofree guint8 *wbuf = g_malloc(N * LEN);
    TestReq w[N + 2] = { 0 };
    for (guint i = 0; i < N; i++) {
        fill(wbuf + i * LEN, LEN, 100 + i);
        do_write(f, &w[i], (guint64)i * LEN, wbuf + i * LEN, LEN);
    }
    g_thread_join(th);
    /* The connection is gone; nothing completed, nothing failed. */
    for (gint64 end = g_get_monotonic_time() + TIMEOUT_US; vmm_blk_nbd_connected(f->client);) {
        g_assert_cmpint(g_get_monotonic_time(), <, end);
        g_usleep(1000);
    }
    for (guint i = 0; i < N; i++)
        g_assert_cmpint(g_atomic_int_get(&w[i].done), ==, 0);
    /* Requests made while there is no blockd wait too. */
    vmm_blk_nbd_ops.flush(f->client, (VmmBlkRequest *)&w[N]);
    guint8 late[LEN];
    fill(late, LEN, 999);
    do_write(f, &w[N + 1], 1 * MiB, late, LEN);
    g_usleep(50 * 1000);
    g_assert_cmpint(g_atomic_int_get(&w[N].done), ==, 0);
    g_assert_cmpuint(vmm_blk_nbd_in_flight(f->client), ==, N + 2);

    /* The restarted blockd: everything is sent again and succeeds. */
    g_assert_true(vmm_blk_nbd_connect(f->client, serve(f, "d0", FALSE), &err));
    g_assert_no_error(err);
    wait_done(w, N + 2);
    for (guint i = 0; i < N + 2; i++)
        g_assert_cmpint(w[i].ret, ==, 0);
    g_autofree guint8 *fbuf = g_malloc(N * LEN);
    file_read(f, 0, fbuf, N * LEN);
    g_assert_cmpmem(fbuf, N * LEN, wbuf, N * LEN);
    file_read(f, 1 * MiB, fbuf, LEN);
    g_assert_cmpmem(fbuf, LEN, late, LEN);
}

/* A restarted server must show the same disk. */
static void test_reconnect_size_changed(Fixture *f, gconstpointer data)
{
    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_blk_nbd_connect(f->client, serve(f, "d0", FALSE), &err));
    nbd_server_free(f->server);
    f->server = NULL;
    int fd = open(f->path, O_RDWR | O_CLOEXEC);
    g_assert_cmpint(ftruncate(fd, EXPORT_SIZE / 2), ==, 0);
    close(fd);
    g_assert_false(vmm_blk_nbd_connect(f->client, serve(f, "d0", FALSE), &err));
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(err->message, "it was"));
}

/* Requests still waiting when the backend goes away fail instead of hanging. */
static void test_free_fails_waiting(Fixture *f, gconstpointer data)
{
    g_autoptr(GError) err = NULL;
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
    DyingServer ds = { .fd = sv[0], .size = EXPORT_SIZE, .take = 1 };
    GThread *th = g_thread_new("dying-server", dying_server, &ds);
    g_assert_true(vmm_blk_nbd_connect(f->client, sv[1], &err));
    TestReq t = { 0 };
    vmm_blk_nbd_ops.flush(f->client, (VmmBlkRequest *)&t);
    g_thread_join(th);
    vmm_blk_nbd_free(f->client);
    f->client = NULL;
    wait_done(&t, 1);
    g_assert_cmpint(t.ret, ==, -EIO);
}


/* ---- The whole data path: a guest's virtio-blk requests through the NBD
 * backend to blockd's server and the image file. ---------------------------- */

#define E2E_FEATURES ((1ULL << VIRTIO_F_VERSION_1) | (1ULL << VIRTIO_BLK_F_FLUSH) | \
                      (1ULL << VIRTIO_BLK_F_BLK_SIZE) | (1ULL << VIRTIO_BLK_F_SEG_MAX))

/* One request: header, DATA (LEN bytes, device-writable for IN), status. */
static uint16_t e2e_submit(TestDriver *td, uint32_t type, uint64_t sector, uint64_t data, uint32_t len,
                           uint64_t status)
{
    uint64_t hdr = td_alloc(td, 16);
    uint8_t h[16] = { 0 };
    uint32_t t = GUINT32_TO_LE(type);
    uint64_t sec = GUINT64_TO_LE(sector);
    memcpy(h, &t, 4);
    memcpy(h + 8, &sec, 8);
    memcpy(td_host(td, hdr), h, 16);
    *(uint8_t *)td_host(td, status) = 0xee;
    TdBuf bufs[3];
    unsigned n = 0;
    bufs[n++] = (TdBuf){ hdr, 16, false };
    if (len)
        bufs[n++] = (TdBuf){ data, len, type == VIRTIO_BLK_T_IN };
    bufs[n++] = (TdBuf){ status, 1, true };
    uint16_t head = td_add_chain(td, 0, bufs, n);
    td_submit(td, 0, head);
    return head;
}

/* Waits (bounded) for the next used entry, which completes on the reader thread. */
static void e2e_wait_used(TestDriver *td, uint16_t head, uint64_t status, uint8_t want)
{
    uint32_t id, len;
    gint64 end = g_get_monotonic_time() + TIMEOUT_US;
    while (!td_get_used(td, 0, &id, &len)) {
        if (g_get_monotonic_time() > end)
            g_error("request %u not used in time", head);
        g_usleep(1000);
    }
    g_assert_cmpuint(id, ==, head);
    g_assert_cmpuint(*(uint8_t *)td_host(td, status), ==, want);
}

static void test_virtio_blk_end_to_end(Fixture *f, gconstpointer data)
{
    g_autoptr(GError) err = NULL;
    /* The default completion: the virtio-blk device's. */
    VmmBlkNbd *nbd = vmm_blk_nbd_new("d0");
    g_assert_true(vmm_blk_nbd_connect(nbd, serve(f, "d0", FALSE), &err));
    TestDriver td;
    td_init(&td);
    VmmVirtioBlkConfig cfg;
    vmm_virtio_blk_config_init(&cfg);
    cfg.id = "d0";
    cfg.capacity = vmm_blk_nbd_size(nbd) / 512;
    VmmVirtioBlk *blk = vmm_virtio_blk_new(&cfg, &td.mem, &vmm_blk_nbd_ops, nbd, &err);
    g_assert_no_error(err);
    td_attach(&td, vmm_virtio_blk_transport(blk));
    td_bring_up(&td, E2E_FEATURES, 1, 64);

    enum { LEN = 8192 };
    uint64_t buf = td_alloc(&td, LEN), back = td_alloc(&td, LEN), st = td_alloc(&td, 1);
    fill(td_host(&td, buf), LEN, 42);
    uint16_t h = e2e_submit(&td, VIRTIO_BLK_T_OUT, 16, buf, LEN, st);
    e2e_wait_used(&td, h, st, VIRTIO_BLK_S_OK);
    h = e2e_submit(&td, VIRTIO_BLK_T_FLUSH, 0, 0, 0, st);
    e2e_wait_used(&td, h, st, VIRTIO_BLK_S_OK);
    guint8 fbuf[LEN];
    file_read(f, 16 * 512, fbuf, LEN);
    g_assert_cmpmem(fbuf, LEN, td_host(&td, buf), LEN);
    h = e2e_submit(&td, VIRTIO_BLK_T_IN, 16, back, LEN, st);
    e2e_wait_used(&td, h, st, VIRTIO_BLK_S_OK);
    g_assert_cmpmem(td_host(&td, back), LEN, td_host(&td, buf), LEN);

    /* blockd goes away; a guest write waits, then completes on the next
     * connection without the guest seeing an error. */
    nbd_server_free(f->server);
    f->server = NULL;
    for (gint64 end = g_get_monotonic_time() + TIMEOUT_US; vmm_blk_nbd_connected(nbd);) {
        g_assert_cmpint(g_get_monotonic_time(), <, end);
        g_usleep(1000);
    }
    fill(td_host(&td, buf), LEN, 43);
    h = e2e_submit(&td, VIRTIO_BLK_T_OUT, 64, buf, LEN, st);
    g_usleep(20 * 1000);
    g_assert_cmpuint(*(uint8_t *)td_host(&td, st), ==, 0xee);
    g_assert_cmpuint(vmm_virtio_blk_in_flight(blk), ==, 1);
    g_assert_true(vmm_blk_nbd_connect(nbd, serve(f, "d0", FALSE), &err));
    g_assert_no_error(err);
    e2e_wait_used(&td, h, st, VIRTIO_BLK_S_OK);
    file_read(f, 64 * 512, fbuf, LEN);
    g_assert_cmpmem(fbuf, LEN, td_host(&td, buf), LEN);

    vmm_blk_nbd_free(nbd);
    vmm_virtio_blk_free(blk);
    td_destroy(&td);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
#define ADD(name, fn) g_test_add("/blk-nbd/" name, Fixture, NULL, fixture_setup, fn, fixture_teardown)
    ADD("handshake", test_handshake);
    ADD("wrong-export", test_wrong_export);
    ADD("many-in-flight", test_many_in_flight);
    ADD("split", test_split);
    ADD("flush-trim-zeroes", test_flush_trim_zeroes);
    ADD("read-only", test_read_only);
    ADD("server-error", test_server_error);
    ADD("reconnect-resends", test_reconnect_resends);
    ADD("reconnect-size-changed", test_reconnect_size_changed);
    ADD("free-fails-waiting", test_free_fails_waiting);
    ADD("virtio-blk-end-to-end", test_virtio_blk_end_to_end);
    ADD("guest-memory", test_guest_memory);
    ADD("guest-memory-read-only", test_guest_memory_ro);
    ADD("guest-memory-refused", test_guest_memory_refused);
    ADD("guest-memory-no-payload", test_guest_memory_no_payload);
    return g_test_run();
}
