/* The nbd driver against a scripted in-process NBD server (a thread on a Unix
 * socket in a temp dir), for the cases real servers do not produce on demand:
 * a fixed-newstyle server without NBD_OPT_GO (EXPORT_NAME fallback), replies
 * out of order with data and hole chunks, tight block size limits (requests
 * split), error chunks with messages, protocol violations (a reply for an
 * unknown cookie), and a connection dropped mid-request (reconnect-delay, or a
 * clear error without it). */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "blockd/nbd-uri.h"
#include "common/bytes.h"
#include "common/error.h"
#include "proto/nbd.h"

#define EXPORT_SIZE (1024 * 1024)

/* Big-endian fields at any alignment. */
#define ZERO_START (512 * 1024)   /* [ZERO_START, EXPORT_SIZE) reads as a hole */

typedef struct {
    gboolean no_go;           /* answer GO with ERR_UNSUP */
    gboolean no_structured;
    guint32 max_block;        /* 0: send no NBD_INFO_BLOCK_SIZE */
    guint batch;              /* collect this many requests, then reply in reverse */
    gboolean bad_cookie;      /* answer the first read with a wrong cookie */
    gboolean error_chunk;     /* answer writes with an ENOSPC error chunk */
    guint drop_after;         /* close the first connection after N requests (no reply) */
    guint connections;        /* how many connections to accept */

    char *dir, *path;
    int listen_fd;
    GThread *thread;
    guint8 *data;
    guint requests;           /* transmission requests seen */
    guint too_big;            /* requests over max_block */
    guint accepted;
} FakeServer;

static gboolean rd(int fd, void *buf, gsize len)
{
    guint8 *p = buf;
    while (len > 0) {
        gssize n = read(fd, p, len);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) {
                continue;
            }
            return FALSE;
        }
        p += n;
        len -= n;
    }
    return TRUE;
}

static gboolean wr(int fd, const void *buf, gsize len)
{
    const guint8 *p = buf;
    while (len > 0) {
        gssize n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) {
                continue;
            }
            return FALSE;
        }
        p += n;
        len -= n;
    }
    return TRUE;
}

static gboolean opt_reply(int fd, guint32 opt, guint32 type, const void *data, guint32 len)
{
    guint8 h[20];
    put_be64(h, NBD_OPT_REPLY_MAGIC);
    put_be32((h + 8), opt);
    put_be32((h + 12), type);
    put_be32((h + 16), len);
    return wr(fd, h, 20) && wr(fd, data, len);
}

static gboolean send_export_info(FakeServer *s, int fd, guint32 opt)
{
    guint8 info[12];
    guint16 flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_WRITE_ZEROES;
    put_be16(info, NBD_INFO_EXPORT);
    put_be64((info + 2), EXPORT_SIZE);
    put_be16((info + 10), flags);
    if (!opt_reply(fd, opt, NBD_REP_INFO, info, 12)) {
        return FALSE;
    }
    if (s->max_block) {
        guint8 bs[14];
        put_be16(bs, NBD_INFO_BLOCK_SIZE);
        put_be32((bs + 2), 1);
        put_be32((bs + 6), MIN(4096u, s->max_block));
        put_be32((bs + 10), s->max_block);
        if (!opt_reply(fd, opt, NBD_REP_INFO, bs, 14)) {
            return FALSE;
        }
    }
    return opt_reply(fd, opt, NBD_REP_ACK, NULL, 0);
}

/* Option haggling; TRUE when transmission starts. */
static gboolean serve_options(FakeServer *s, int fd, gboolean *structured)
{
    guint8 hello[18];
    put_be64(hello, NBD_MAGIC);
    put_be64((hello + 8), NBD_IHAVEOPT);
    put_be16((hello + 16), NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    guint32 cflags;
    if (!wr(fd, hello, sizeof(hello)) || !rd(fd, &cflags, 4)) {
        return FALSE;
    }
    for (;;) {
        guint8 h[16];
        if (!rd(fd, h, 16)) {
            return FALSE;
        }
        guint32 opt = get_be32((h + 8));
        guint32 len = get_be32((h + 12));
        g_autofree guint8 *data = g_malloc(len + 1);
        if (len > 65536 || !rd(fd, data, len)) {
            return FALSE;
        }
        switch (opt) {
        case NBD_OPT_STRUCTURED_REPLY:
            *structured = !s->no_structured;
            if (!opt_reply(fd, opt, s->no_structured ? NBD_REP_ERR_UNSUP : NBD_REP_ACK, NULL, 0)) {
                return FALSE;
            }
            break;
        case NBD_OPT_SET_META_CONTEXT: {
            guint8 ctx[4 + sizeof(NBD_META_BASE_ALLOCATION)];
            put_be32(ctx, 7);
            memcpy(ctx + 4, NBD_META_BASE_ALLOCATION, strlen(NBD_META_BASE_ALLOCATION));
            if (!opt_reply(fd, opt, NBD_REP_META_CONTEXT, ctx, 4 + strlen(NBD_META_BASE_ALLOCATION)) ||
                !opt_reply(fd, opt, NBD_REP_ACK, NULL, 0)) {
                return FALSE;
            }
            break;
        }
        case NBD_OPT_GO:
            if (s->no_go) {
                const char *msg = "GO? never heard of it";
                if (!opt_reply(fd, opt, NBD_REP_ERR_UNSUP, msg, strlen(msg))) {
                    return FALSE;
                }
                break;
            }
            return send_export_info(s, fd, opt);
        case NBD_OPT_EXPORT_NAME: {
            guint8 r[10];
            put_be64(r, EXPORT_SIZE);
            put_be16((r + 8), NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH);
            return wr(fd, r, 10);
        }
        default:
            if (!opt_reply(fd, opt, NBD_REP_ERR_UNSUP, NULL, 0)) {
                return FALSE;
            }
        }
    }
}

typedef struct {
    guint16 flags, type;
    guint64 cookie, offset;
    guint32 len;
} FakeReq;

static gboolean chunk(int fd, guint16 flags, guint16 type, guint64 cookie, const void *p1,
                      guint32 l1, const void *p2, guint32 l2)
{
    guint8 h[20];
    put_be32(h, NBD_STRUCTURED_REPLY_MAGIC);
    put_be16((h + 4), flags);
    put_be16((h + 6), type);
    put_be64((h + 8), cookie);
    put_be32((h + 16), l1 + l2);
    return wr(fd, h, 20) && wr(fd, p1, l1) && wr(fd, p2, l2);
}

static gboolean simple(int fd, guint32 err, guint64 cookie, const void *data, guint32 len)
{
    guint8 h[16];
    put_be32(h, NBD_SIMPLE_REPLY_MAGIC);
    put_be32((h + 4), err);
    put_be64((h + 8), cookie);
    return wr(fd, h, 16) && wr(fd, data, len);
}

/* A structured read reply: the hole part first, then data, then NONE+DONE. */
static gboolean reply_read_structured(FakeServer *s, int fd, const FakeReq *r)
{
    guint64 end = r->offset + r->len;
    guint64 split = CLAMP(ZERO_START, r->offset, end);
    if (split < end) {
        guint8 hole[12];
        put_be64(hole, split);
        put_be32((hole + 8), end - split);
        if (!chunk(fd, 0, NBD_REPLY_TYPE_OFFSET_HOLE, r->cookie, hole, 12, NULL, 0)) {
            return FALSE;
        }
    }
    if (r->offset < split) {
        guint64 off = GUINT64_TO_BE(r->offset);
        if (!chunk(fd, 0, NBD_REPLY_TYPE_OFFSET_DATA, r->cookie, &off, 8, s->data + r->offset,
                   split - r->offset)) {
            return FALSE;
        }
    }
    return chunk(fd, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, r->cookie, NULL, 0, NULL, 0);
}

static gboolean reply(FakeServer *s, int fd, const FakeReq *r, gboolean structured)
{
    if (s->max_block && r->len > s->max_block) {
        s->too_big++;
        return simple(fd, NBD_EINVAL, r->cookie, NULL, 0);
    }
    if (r->offset + r->len > EXPORT_SIZE) {
        return simple(fd, NBD_EINVAL, r->cookie, NULL, 0);
    }
    switch (r->type) {
    case NBD_CMD_READ:
        if (s->bad_cookie) {
            return simple(fd, 0, r->cookie + 1000, s->data + r->offset, r->len);
        }
        return structured ? reply_read_structured(s, fd, r)
                          : simple(fd, 0, r->cookie, s->data + r->offset, r->len);
    case NBD_CMD_WRITE:
        if (s->error_chunk) {
            const char *msg = "quota exceeded for tenant 42";
            guint8 e[6];
            put_be32(e, NBD_ENOSPC);
            put_be16((e + 4), strlen(msg));
            return chunk(fd, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, r->cookie, e, 6, msg,
                         strlen(msg));
        }
        return simple(fd, 0, r->cookie, NULL, 0);
    case NBD_CMD_BLOCK_STATUS: {
        guint8 d[12];
        gboolean hole = r->offset >= ZERO_START;
        guint64 end = hole ? EXPORT_SIZE : ZERO_START;
        put_be32(d, 7);
        put_be32((d + 4), MIN(end - r->offset, r->len));
        put_be32((d + 8), hole ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0);
        return chunk(fd, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, r->cookie, d, 12, NULL, 0);
    }
    default:
        return simple(fd, 0, r->cookie, NULL, 0);
    }
}

static gboolean wait_readable(int fd, int ms)
{
    fd_set set;
    FD_ZERO(&set);
    FD_SET(fd, &set);
    struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
    return select(fd + 1, &set, NULL, NULL, &tv) > 0;
}

static void serve_connection(FakeServer *s, int fd, gboolean first)
{
    gboolean structured = FALSE;
    if (!serve_options(s, fd, &structured)) {
        return;
    }
    GArray *pending = g_array_new(FALSE, FALSE, sizeof(FakeReq));
    for (;;) {
        guint8 h[NBD_REQUEST_SIZE];
        /* With a batch, a short wait ends it so that nothing waits forever. */
        if (s->batch && pending->len > 0 && !wait_readable(fd, 2000)) {
            goto flush;
        }
        if (!rd(fd, h, sizeof(h))) {
            break;
        }
        FakeReq r = {
            .flags = get_be16((h + 4)),
            .type = get_be16((h + 6)),
            .cookie = get_be64((h + 8)),
            .offset = get_be64((h + 16)),
            .len = get_be32((h + 24)),
        };
        if (r.type == NBD_CMD_DISC) {
            break;
        }
        if (r.type == NBD_CMD_WRITE) {
            g_autofree guint8 *buf = g_malloc(r.len);
            if (!rd(fd, buf, r.len)) {
                break;
            }
            if (r.offset + r.len <= EXPORT_SIZE && !s->error_chunk) {
                memcpy(s->data + r.offset, buf, r.len);
            }
        }
        s->requests++;
        if (first && s->drop_after && s->requests >= s->drop_after) {
            break; /* drop the connection with this request unanswered */
        }
        g_array_append_val(pending, r);
        if (s->batch && pending->len < s->batch) {
            continue;
        }
    flush:
        for (guint i = pending->len; i > 0; i--) {
            if (!reply(s, fd, &g_array_index(pending, FakeReq, i - 1), structured)) {
                goto out;
            }
        }
        g_array_set_size(pending, 0);
    }
out:
    g_array_free(pending, TRUE);
}

static gpointer server_main(gpointer p)
{
    FakeServer *s = p;
    for (guint i = 0; i < s->connections; i++) {
        if (!wait_readable(s->listen_fd, 10000)) {
            break;
        }
        int fd = accept(s->listen_fd, NULL, NULL);
        if (fd < 0) {
            break;
        }
        s->accepted++;
        serve_connection(s, fd, i == 0);
        close(fd);
    }
    return NULL;
}

static void server_start(FakeServer *s)
{
    s->dir = g_dir_make_tmp("test-nbd-client-XXXXXX", NULL);
    g_assert_nonnull(s->dir);
    s->path = g_build_filename(s->dir, "sock", NULL);
    s->data = g_malloc0(EXPORT_SIZE);
    for (guint i = 0; i < ZERO_START; i++) {
        s->data[i] = (guint8)(i * 7 + i / 4096);
    }
    if (!s->connections) {
        s->connections = 1;
    }
    s->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_strlcpy(sa.sun_path, s->path, sizeof(sa.sun_path));
    g_assert_cmpint(bind(s->listen_fd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    g_assert_cmpint(listen(s->listen_fd, 4), ==, 0);
    s->thread = g_thread_new("fake-nbd", server_main, s);
}

static void server_stop(FakeServer *s)
{
    /* Unblocks an accept that will never come. */
    shutdown(s->listen_fd, SHUT_RDWR);
    g_thread_join(s->thread);
    close(s->listen_fd);
    unlink(s->path);
    rmdir(s->dir);
    g_free(s->path);
    g_free(s->dir);
    g_free(s->data);
}

static VmmBlockDev *open_dev(FakeServer *s, const char *extra_json, gboolean rw, GError **error)
{
    g_autofree char *json = g_strdup_printf(
        "{\"server\":{\"type\":\"unix\",\"path\":\"%s\"}%s%s}", s->path,
        extra_json ? "," : "", extra_json ? extra_json : "");
    g_autoptr(JsonParser) p = json_parser_new();
    g_assert_true(json_parser_load_from_data(p, json, -1, NULL));
    VmmBlockDev *bs = g_new0(VmmBlockDev, 1);
    bs->drv = &vmm_nbd_driver;
    bs->refcnt = 1;
    if (!vmm_nbd_driver.open(bs, json_node_get_object(json_parser_get_root(p)),
                             rw ? VMM_BDRV_O_RDWR : 0, error)) {
        g_free(bs->filename);
        g_free(bs);
        return NULL;
    }
    return bs;
}

static void close_dev(VmmBlockDev *bs)
{
    vmm_nbd_driver.close(bs);
    g_free(bs->filename);
    g_free(bs);
}

static void expect_content(FakeServer *s, const guint8 *buf, guint64 off, guint64 len)
{
    for (guint64 i = 0; i < len; i++) {
        guint8 want = off + i < ZERO_START ? s->data[off + i] : 0;
        if (buf[i] != want) {
            g_error("byte at %" G_GUINT64_FORMAT ": 0x%02x, expected 0x%02x", off + i, buf[i], want);
        }
    }
}

static void test_export_name_fallback(void)
{
    FakeServer s = { .no_go = TRUE, .no_structured = TRUE };
    server_start(&s);
    GError *err = NULL;
    VmmBlockDev *bs = open_dev(&s, NULL, FALSE, &err);
    g_assert_no_error(err);
    VmmNbdInfo info;
    g_assert_true(vmm_nbd_get_info(bs, &info));
    g_assert_false(info.used_go);
    g_assert_false(info.structured_replies);
    g_assert_cmpuint(bs->size, ==, EXPORT_SIZE);
    g_autofree guint8 *buf = g_malloc(8192);
    g_assert_true(vmm_nbd_driver.pread(bs, 4096, 8192, buf, 0, &err));
    g_assert_no_error(err);
    expect_content(&s, buf, 4096, 8192);
    /* No base:allocation: everything is data. */
    guint64 pnum = 0;
    int st = vmm_nbd_driver.block_status(bs, 0, EXPORT_SIZE, &pnum, NULL, NULL, &err);
    g_assert_cmpint(st & VMM_BLOCK_DATA, !=, 0);
    g_assert_cmpuint(pnum, ==, EXPORT_SIZE);
    close_dev(bs);
    server_stop(&s);
}

typedef struct {
    VmmBlockDev *bs;
    FakeServer *s;
    guint64 off, len;
    gboolean ok;
} ReadJob;

static gpointer read_job(gpointer p)
{
    ReadJob *j = p;
    g_autofree guint8 *buf = g_malloc(j->len);
    GError *err = NULL;
    j->ok = vmm_nbd_driver.pread(j->bs, j->off, j->len, buf, 0, &err);
    if (!j->ok) {
        g_printerr("read failed: %s\n", err->message);
        g_error_free(err);
        return NULL;
    }
    expect_content(j->s, buf, j->off, j->len);
    return NULL;
}

static void test_out_of_order_holes(void)
{
    FakeServer s = { .batch = 4 };
    server_start(&s);
    GError *err = NULL;
    VmmBlockDev *bs = open_dev(&s, NULL, FALSE, &err);
    g_assert_no_error(err);
    /* Four reads in flight at once; the server answers them in reverse, each
     * straddling or inside the hole as chunks. */
    ReadJob jobs[4] = {
        { bs, &s, 0, 65536 }, { bs, &s, ZERO_START - 4096, 16384 },
        { bs, &s, ZERO_START + 8192, 4096 }, { bs, &s, 100000, 300000 },
    };
    GThread *th[4];
    for (int i = 0; i < 4; i++) {
        th[i] = g_thread_new("reader", read_job, &jobs[i]);
    }
    for (int i = 0; i < 4; i++) {
        g_thread_join(th[i]);
        g_assert_true(jobs[i].ok);
    }
    /* base:allocation: data, then a hole reading as zero. */
    guint64 pnum = 0;
    int st = vmm_nbd_driver.block_status(bs, 0, EXPORT_SIZE, &pnum, NULL, NULL, &err);
    g_assert_no_error(err);
    g_assert_cmpint(st & (VMM_BLOCK_DATA | VMM_BLOCK_ZERO), ==, VMM_BLOCK_DATA);
    g_assert_cmpuint(pnum, ==, ZERO_START);
    st = vmm_nbd_driver.block_status(bs, ZERO_START, 4096, &pnum, NULL, NULL, &err);
    g_assert_cmpint(st & (VMM_BLOCK_DATA | VMM_BLOCK_ZERO), ==, VMM_BLOCK_ZERO);
    g_assert_cmpuint(pnum, ==, 4096);
    close_dev(bs);
    server_stop(&s);
}

static void test_max_block_split(void)
{
    FakeServer s = { .max_block = 4096 };
    server_start(&s);
    GError *err = NULL;
    VmmBlockDev *bs = open_dev(&s, NULL, TRUE, &err);
    g_assert_no_error(err);
    g_autofree guint8 *buf = g_malloc(65536);
    memset(buf, 0x5a, 65536);
    g_assert_true(vmm_nbd_driver.pwrite(bs, 0, 65536, buf, 0, &err));
    g_assert_no_error(err);
    g_assert_true(vmm_nbd_driver.pwrite_zeroes(bs, 65536, 65536, 0, &err));
    g_assert_no_error(err);
    g_assert_true(vmm_nbd_driver.pread(bs, 0, 65536, buf, 0, &err));
    g_assert_no_error(err);
    for (int i = 0; i < 65536; i++) {
        g_assert_cmpint(buf[i], ==, 0x5a);
    }
    g_assert_cmpuint(s.too_big, ==, 0);
    g_assert_cmpuint(s.requests, >=, 16 * 3);
    close_dev(bs);
    server_stop(&s);
}

static void test_error_chunk(void)
{
    FakeServer s = { .error_chunk = TRUE };
    server_start(&s);
    GError *err = NULL;
    VmmBlockDev *bs = open_dev(&s, NULL, TRUE, &err);
    g_assert_no_error(err);
    guint8 buf[512] = { 0 };
    g_assert_false(vmm_nbd_driver.pwrite(bs, 0, sizeof(buf), buf, 0, &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_IO);
    g_assert_nonnull(strstr(err->message, s.path));
    g_assert_nonnull(strstr(err->message, "write of 512 bytes at offset 0 failed"));
    g_assert_nonnull(strstr(err->message, g_strerror(ENOSPC)));
    g_assert_nonnull(strstr(err->message, "quota exceeded for tenant 42"));
    g_clear_error(&err);
    close_dev(bs);
    server_stop(&s);
}

static void test_unknown_cookie(void)
{
    FakeServer s = { .bad_cookie = TRUE };
    server_start(&s);
    GError *err = NULL;
    VmmBlockDev *bs = open_dev(&s, NULL, FALSE, &err);
    g_assert_no_error(err);
    guint8 buf[512];
    g_assert_false(vmm_nbd_driver.pread(bs, 0, sizeof(buf), buf, 0, &err));
    g_assert_nonnull(strstr(err->message, "unknown cookie"));
    g_assert_nonnull(strstr(err->message, s.path));
    g_clear_error(&err);
    /* The connection is gone; later requests fail at once and say so. */
    g_assert_false(vmm_nbd_driver.pread(bs, 0, sizeof(buf), buf, 0, &err));
    g_assert_nonnull(strstr(err->message, "not connected"));
    g_clear_error(&err);
    close_dev(bs);
    server_stop(&s);
}

static void test_drop_with_reconnect(void)
{
    FakeServer s = { .drop_after = 1, .connections = 2 };
    server_start(&s);
    GError *err = NULL;
    VmmBlockDev *bs = open_dev(&s, "\"reconnect-delay\":5", FALSE, &err);
    g_assert_no_error(err);
    g_autofree guint8 *buf = g_malloc(4096);
    g_assert_true(vmm_nbd_driver.pread(bs, 8192, 4096, buf, 0, &err));
    g_assert_no_error(err);
    expect_content(&s, buf, 8192, 4096);
    VmmNbdInfo info;
    g_assert_true(vmm_nbd_get_info(bs, &info));
    g_assert_cmpuint(info.connects, ==, 2);
    g_assert_cmpuint(s.accepted, ==, 2);
    close_dev(bs);
    server_stop(&s);
}

static void test_drop_without_reconnect(void)
{
    FakeServer s = { .drop_after = 1 };
    server_start(&s);
    GError *err = NULL;
    VmmBlockDev *bs = open_dev(&s, NULL, FALSE, &err);
    g_assert_no_error(err);
    guint8 buf[4096];
    g_assert_false(vmm_nbd_driver.pread(bs, 0, sizeof(buf), buf, 0, &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_IO);
    g_assert_nonnull(strstr(err->message, "connection to the server lost"));
    g_assert_nonnull(strstr(err->message, s.path));
    g_clear_error(&err);
    close_dev(bs);
    server_stop(&s);
}

static void test_connect_refused(void)
{
    g_autofree char *dir = g_dir_make_tmp("test-nbd-client-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(dir, "none.sock", NULL);
    FakeServer s = { .path = path };
    GError *err = NULL;
    g_assert_null(open_dev(&s, NULL, FALSE, &err));
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(err->message, path));
    g_assert_nonnull(strstr(err->message, "cannot connect"));
    g_clear_error(&err);
    rmdir(dir);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/nbd-client/export-name-fallback", test_export_name_fallback);
    g_test_add_func("/nbd-client/out-of-order-holes", test_out_of_order_holes);
    g_test_add_func("/nbd-client/max-block-split", test_max_block_split);
    g_test_add_func("/nbd-client/error-chunk", test_error_chunk);
    g_test_add_func("/nbd-client/unknown-cookie", test_unknown_cookie);
    g_test_add_func("/nbd-client/drop-with-reconnect", test_drop_with_reconnect);
    g_test_add_func("/nbd-client/drop-without-reconnect", test_drop_without_reconnect);
    g_test_add_func("/nbd-client/connect-refused", test_connect_refused);
    return g_test_run();
}
