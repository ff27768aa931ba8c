/* fsd's server core without sockets: messages go into an FsdConn, replies
 * come out of its send callback. Also the throttling options and buckets,
 * and the security model names. (The full workflow over a socket is
 * tests/interop/fsd-9p-test.c.) */
#include "fsd/fsd.h"
#include "fsd/fsd-internal.h"   /* the export's pool, frozen in run-inline */
#include "common/error.h"
#include "common/splice.h"

#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <string.h>

typedef struct {
    GAsyncQueue *replies;   /* GBytes */
    GThread *sender;        /* the thread that sent the last reply */
} Sink;

static void sink_send(FsdConn *c, const struct iovec *iov, unsigned niov, VmmSplicePipe *pipe, gsize piped,
                      gpointer user)
{
    Sink *s = user;
    GByteArray *b = g_byte_array_new();
    for (unsigned i = 0; i < niov; i++)
        g_byte_array_append(b, iov[i].iov_base, (guint)iov[i].iov_len);
    if (pipe) {
        guint at = b->len;
        g_byte_array_set_size(b, at + (guint)piped);
        g_assert_true(vmm_splice_pipe_read(pipe, b->data + at, piped));
    }
    s->sender = g_thread_self();
    g_async_queue_push(s->replies, g_byte_array_free_to_bytes(b));
}

typedef struct {
    char *dir;
    FsdExport *e;
    FsdConn *c;
    Sink sink;
} Fixture;

static void fixture_setup(Fixture *f, const char *model)
{
    f->dir = g_dir_make_tmp("fsd-unit-XXXXXX", NULL);
    g_assert_nonnull(f->dir);
    FsdExportConfig cfg;
    fsd_export_config_init(&cfg);
    cfg.path = g_strdup(f->dir);
    g_assert_true(fsd_model_parse(model, &cfg.model, NULL));
    cfg.threads = 4;
    GError *err = NULL;
    f->e = fsd_export_new(&cfg, &err);
    g_assert_no_error(err);
    fsd_export_config_clear(&cfg);
    f->sink.replies = g_async_queue_new_full((GDestroyNotify)g_bytes_unref);
    f->c = fsd_conn_new(f->e, sink_send, &f->sink);
}

static void fixture_teardown(Fixture *f)
{
    fsd_conn_close(f->c);
    fsd_export_free(f->e);   /* waits for the workers */
    g_async_queue_unref(f->sink.replies);
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", f->dir);
    g_assert_cmpint(system(cmd), ==, 0);
    g_free(f->dir);
}

static void send_fcall(Fixture *f, P9Fcall *m)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_assert_true(p9_encode(m, G_MAXUINT32, b, NULL));
    fsd_conn_receive(f->c, b->data, b->len);
}

/* The next reply; R's strings are freed with p9_fcall_clear. */
static GBytes *next_reply(Fixture *f, P9Fcall *r)
{
    GBytes *b = g_async_queue_timeout_pop(f->sink.replies, 10 * G_USEC_PER_SEC);
    g_assert_nonnull(b);
    gsize len;
    const guint8 *data = g_bytes_get_data(b, &len);
    g_assert_true(p9_decode(data, len, r, NULL));
    return b;
}

static int call(Fixture *f, P9Fcall *m, P9Fcall *r)
{
    send_fcall(f, m);
    g_autoptr(GBytes) b G_GNUC_UNUSED = next_reply(f, r);
    g_assert_cmpuint(r->tag, ==, m->tag);
    if (r->type == P9_RLERROR)
        return (int)r->ecode;
    g_assert_cmpuint(r->type, ==, m->type + 1);
    return 0;
}

static void start(Fixture *f)
{
    P9Fcall v = { .type = P9_TVERSION, .tag = P9_NOTAG, .msize = 1 << 30, .version = (char *)"9P2000.L" };
    P9Fcall r;
    g_assert_cmpint(call(f, &v, &r), ==, 0);
    /* offered less than asked: the server's limit */
    g_assert_cmpuint(r.msize, ==, 1024 * 1024);
    g_assert_cmpuint(fsd_conn_msize(f->c), ==, 1024 * 1024);
    p9_fcall_clear(&r);
    P9Fcall a = { .type = P9_TATTACH, .tag = 1, .fid = 0, .fid2 = P9_NOFID, .uname = (char *)"u",
                  .aname = (char *)"", .n_uname = 0 };
    g_assert_cmpint(call(f, &a, &r), ==, 0);
    g_assert_cmpuint(r.qid.type, ==, P9_QTDIR);
    p9_fcall_clear(&r);
}

static void test_session(void)
{
    Fixture f;
    fixture_setup(&f, "passthrough");
    start(&f);
    P9Fcall r;
    P9Fcall mk = { .type = P9_TMKDIR, .tag = 2, .fid = 0, .name = (char *)"sub", .mode = 0755 };
    g_assert_cmpint(call(&f, &mk, &r), ==, 0);
    p9_fcall_clear(&r);
    P9Fcall w = { .type = P9_TWALK, .tag = 3, .fid = 0, .fid2 = 1, .nwname = 2,
                  .wnames = { (char *)"sub", (char *)"missing" } };
    g_assert_cmpint(call(&f, &w, &r), ==, 0);
    g_assert_cmpuint(r.nwqid, ==, 1);          /* a partial walk */
    p9_fcall_clear(&r);
    P9Fcall cl = { .type = P9_TCLUNK, .tag = 4, .fid = 1 };
    g_assert_cmpint(call(&f, &cl, &r), ==, EBADF);   /* newfid was not made */
    p9_fcall_clear(&r);
    /* a new version forgets every fid */
    P9Fcall v = { .type = P9_TVERSION, .tag = P9_NOTAG, .msize = 8192, .version = (char *)"9P2000.L" };
    g_assert_cmpint(call(&f, &v, &r), ==, 0);
    g_assert_cmpuint(r.msize, ==, 8192);
    p9_fcall_clear(&r);
    P9Fcall ga = { .type = P9_TGETATTR, .tag = 5, .fid = 0, .mask = P9_GETATTR_BASIC };
    g_assert_cmpint(call(&f, &ga, &r), ==, EBADF);
    p9_fcall_clear(&r);
    /* too small an msize */
    P9Fcall v2 = { .type = P9_TVERSION, .tag = P9_NOTAG, .msize = 512, .version = (char *)"9P2000.L" };
    g_assert_cmpint(call(&f, &v2, &r), ==, EMSGSIZE);
    p9_fcall_clear(&r);
    fixture_teardown(&f);
}

static void test_many_in_flight(void)
{
    Fixture f;
    fixture_setup(&f, "mapped-xattr");
    start(&f);
    /* 200 getattrs at once, tags 100..299: every one answered once */
    for (guint16 tag = 100; tag < 300; tag++) {
        P9Fcall ga = { .type = P9_TGETATTR, .tag = tag, .fid = 0, .mask = P9_GETATTR_BASIC };
        send_fcall(&f, &ga);
    }
    g_autoptr(GHashTable) seen = g_hash_table_new(g_direct_hash, g_direct_equal);
    for (int i = 0; i < 200; i++) {
        P9Fcall r;
        g_autoptr(GBytes) b G_GNUC_UNUSED = next_reply(&f, &r);
        g_assert_cmpuint(r.type, ==, P9_RGETATTR);
        g_assert_true(g_hash_table_add(seen, GUINT_TO_POINTER(r.tag)));
        p9_fcall_clear(&r);
    }
    g_assert_cmpuint(fsd_conn_pending(f.c), ==, 0);
    /* a tag already in flight is refused, the first keeps going */
    P9Fcall fl = { .type = P9_TFLUSH, .tag = 7, .oldtag = 999 };
    P9Fcall r;
    g_assert_cmpint(call(&f, &fl, &r), ==, 0);
    g_assert_cmpuint(r.type, ==, P9_RFLUSH);
    p9_fcall_clear(&r);
    fixture_teardown(&f);
}

/* The thread that answered M, which must succeed. */
static GThread *answered_by(Fixture *f, P9Fcall *m)
{
    P9Fcall r;
    g_assert_cmpint(call(f, m, &r), ==, 0);
    p9_fcall_clear(&r);
    return f->sink.sender;
}

/* Quick requests of a connection told so run on the caller's thread, the
 * rest on the pool; without it everything goes to the pool. */
static void test_run_inline(void)
{
    Fixture f;
    fixture_setup(&f, "passthrough");
    start(&f);
    GThread *self = g_thread_self();
    fsd_conn_set_run_inline(f.c, TRUE);
    P9Fcall ga = { .type = P9_TGETATTR, .tag = 2, .fid = 0, .mask = P9_GETATTR_BASIC };
    g_assert_true(answered_by(&f, &ga) == self);
    P9Fcall mk = { .type = P9_TMKDIR, .tag = 3, .fid = 0, .name = (char *)"d", .mode = 0755 };
    g_assert_true(answered_by(&f, &mk) == self);
    P9Fcall w = { .type = P9_TWALK, .tag = 4, .fid = 0, .fid2 = 1, .nwname = 1, .wnames = { (char *)"d" } };
    g_assert_true(answered_by(&f, &w) == self);
    P9Fcall op = { .type = P9_TLOPEN, .tag = 5, .fid = 1, .flags = P9_DOTL_RDONLY };
    g_assert_true(answered_by(&f, &op) == self);
    P9Fcall rd = { .type = P9_TREADDIR, .tag = 6, .fid = 1, .offset = 0, .count = 4096 };
    g_assert_true(answered_by(&f, &rd) != self);
    P9Fcall cl = { .type = P9_TCLUNK, .tag = 7, .fid = 1 };
    g_assert_true(answered_by(&f, &cl) == self);

    /* A file: small I/O is quick, and so is big I/O while nothing else is
     * in flight; a truncating open is not. */
    g_autofree char *path = g_build_filename(f.dir, "file", NULL);
    g_autofree guint8 *big = g_malloc0(256 * 1024);
    g_assert_true(g_file_set_contents(path, (const char *)big, 256 * 1024, NULL));
    P9Fcall wf = { .type = P9_TWALK, .tag = 8, .fid = 0, .fid2 = 2, .nwname = 1, .wnames = { (char *)"file" } };
    g_assert_true(answered_by(&f, &wf) == self);
    P9Fcall ot = { .type = P9_TLOPEN, .tag = 9, .fid = 2, .flags = P9_DOTL_RDWR | P9_DOTL_TRUNC };
    g_assert_true(answered_by(&f, &ot) != self);
    P9Fcall wr = { .type = P9_TWRITE, .tag = 10, .fid = 2, .offset = 0, .count = 4096, .data = big };
    g_assert_true(answered_by(&f, &wr) == self);
    P9Fcall wb = { .type = P9_TWRITE, .tag = 11, .fid = 2, .offset = 0, .count = 256 * 1024, .data = big };
    g_assert_true(answered_by(&f, &wb) == self);
    P9Fcall rs = { .type = P9_TREAD, .tag = 12, .fid = 2, .offset = 0, .count = 64 * 1024 };
    g_assert_true(answered_by(&f, &rs) == self);
    P9Fcall rb = { .type = P9_TREAD, .tag = 13, .fid = 2, .offset = 0, .count = 128 * 1024 };
    g_assert_true(answered_by(&f, &rb) == self);
    P9Fcall tr = { .type = P9_TSETATTR, .tag = 14, .fid = 2, .setattr = { .valid = P9_ATTR_SIZE, .size = 1 } };
    g_assert_true(answered_by(&f, &tr) != self);
    P9Fcall ch = { .type = P9_TSETATTR, .tag = 15, .fid = 2, .setattr = { .valid = P9_ATTR_MODE, .mode = 0600 } };
    g_assert_true(answered_by(&f, &ch) == self);
    P9Fcall fs = { .type = P9_TFSYNC, .tag = 16, .fid = 2 };
    g_assert_true(answered_by(&f, &fs) != self);

    /* Big I/O beside a request in flight goes to the pool. The pool is
     * frozen so that an fsync stays in flight: a worker still idle from
     * before may take one, so fsyncs go until one stays queued. */
    g_thread_pool_set_max_threads(f.e->pool, 0, NULL);
    guint16 tag = 100;
    for (gint64 end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;;) {
        g_assert_cmpint(g_get_monotonic_time(), <, end);
        P9Fcall sy = { .type = P9_TFSYNC, .tag = tag++, .fid = 2 };
        send_fcall(&f, &sy);
        g_usleep(20000);
        if (g_thread_pool_unprocessed(f.e->pool) == 1)
            break;
        P9Fcall r;
        g_autoptr(GBytes) b G_GNUC_UNUSED = next_reply(&f, &r);
        p9_fcall_clear(&r);
    }
    P9Fcall rq = { .type = P9_TREAD, .tag = tag, .fid = 2, .offset = 0, .count = 128 * 1024 };
    send_fcall(&f, &rq);
    g_assert_cmpint(g_async_queue_length(f.sink.replies), ==, 0);   /* not answered inline */
    g_assert_cmpuint(g_thread_pool_unprocessed(f.e->pool), ==, 2);
    g_thread_pool_set_max_threads(f.e->pool, 4, NULL);
    for (int i = 0; i < 2; i++) {
        P9Fcall r;
        g_autoptr(GBytes) b G_GNUC_UNUSED = next_reply(&f, &r);
        g_assert_true(f.sink.sender != self);
        g_assert_cmpuint(r.type, ==, r.tag == tag ? P9_RREAD : P9_RFSYNC);
        p9_fcall_clear(&r);
    }

    fsd_conn_set_run_inline(f.c, FALSE);
    g_assert_true(answered_by(&f, &ga) != self);
    fixture_teardown(&f);
}

static void test_garbage_answered(void)
{
    Fixture f;
    fixture_setup(&f, "mapped-file");
    start(&f);
    /* every prefix of a valid Tlcreate gets an Rlerror, never a crash */
    P9Fcall m = { .type = P9_TLCREATE, .tag = 9, .fid = 0, .name = (char *)"x", .flags = 2, .mode = 0644 };
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_assert_true(p9_encode(&m, G_MAXUINT32, b, NULL));
    for (guint len = 0; len < b->len; len++) {
        guint8 *copy = g_memdup2(b->data, len ? len : 1);
        if (len >= 4) {
            guint32 le = GUINT32_TO_LE(len);
            memcpy(copy, &le, 4);
        }
        fsd_conn_receive(f.c, copy, len);
        g_free(copy);
        P9Fcall r;
        g_autoptr(GBytes) reply G_GNUC_UNUSED = next_reply(&f, &r);
        g_assert_cmpuint(r.type, ==, P9_RLERROR);
        g_assert_cmpuint(r.ecode, ==, EINVAL);
        p9_fcall_clear(&r);
    }
    fsd_conn_refuse_oversize(f.c, P9_TWRITE, 33, 1 << 30);
    P9Fcall r;
    g_autoptr(GBytes) reply G_GNUC_UNUSED = next_reply(&f, &r);
    g_assert_cmpuint(r.tag, ==, 33);
    g_assert_cmpuint(r.ecode, ==, EMSGSIZE);
    fixture_teardown(&f);
}

static void test_throttle_config(void)
{
    FsdThrottleConfig c = { 0 };
    GError *err = NULL;
    g_assert_true(fsd_throttle_config_set(&c, "throttling.bps-read", 100, &err));
    g_assert_true(fsd_throttle_config_set(&c, "bps-read-max", 200, &err));
    g_assert_true(fsd_throttle_config_set(&c, "iops-size", 4096, &err));
    g_assert_true(fsd_throttle_config_check(&c, &err));
    g_assert_true(fsd_throttle_config_enabled(&c));
    g_assert_false(fsd_throttle_config_set(&c, "bps-sideways", 1, &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_INVALID);
    g_clear_error(&err);
    c.avg[FSD_THR_BPS_TOTAL] = 5;
    g_assert_false(fsd_throttle_config_check(&c, &err));
    g_clear_error(&err);
    FsdThrottleConfig d = { 0 };
    d.avg[FSD_THR_OPS_WRITE] = 100;
    d.max[FSD_THR_OPS_WRITE] = 10;
    g_assert_false(fsd_throttle_config_check(&d, &err));
    g_clear_error(&err);
}

static void test_throttle_iops(void)
{
    /* 200 writes/s, bucket 20: 60 writes take about (60-20)/200 = 0.2 s */
    FsdThrottleConfig c = { 0 };
    c.avg[FSD_THR_OPS_WRITE] = 200;
    FsdThrottle *t = fsd_throttle_new(&c);
    gint64 start = g_get_monotonic_time();
    for (int i = 0; i < 60; i++)
        g_assert_true(fsd_throttle_wait(t, TRUE, 512, NULL));
    double secs = (double)(g_get_monotonic_time() - start) / G_USEC_PER_SEC;
    g_test_message("60 writes at 200/s took %.3f s", secs);
    g_assert_cmpfloat(secs, >=, 0.15);
    /* reads are not limited here */
    start = g_get_monotonic_time();
    for (int i = 0; i < 1000; i++)
        g_assert_true(fsd_throttle_wait(t, FALSE, 512, NULL));
    g_assert_cmpint(g_get_monotonic_time() - start, <, G_USEC_PER_SEC);
    fsd_throttle_free(t);
    /* 1000 bytes/s after 100000 bytes: the next waits 100 s, unless cancelled */
    FsdThrottleConfig b = { 0 };
    b.avg[FSD_THR_BPS_WRITE] = 1000;
    t = fsd_throttle_new(&b);
    g_assert_true(fsd_throttle_wait(t, TRUE, 100000, NULL));
    gint cancelled = 1;
    start = g_get_monotonic_time();
    g_assert_false(fsd_throttle_wait(t, TRUE, 1, &cancelled));
    g_assert_cmpint(g_get_monotonic_time() - start, <, G_USEC_PER_SEC);
    fsd_throttle_free(t);
}

static void test_model_names(void)
{
    FsdModel m;
    g_assert_true(fsd_model_parse("mapped", &m, NULL));
    g_assert_cmpint(m, ==, FSD_SM_MAPPED_XATTR);
    g_assert_true(fsd_model_parse("none", &m, NULL));
    g_assert_cmpstr(fsd_model_name(m), ==, "none");
    GError *err = NULL;
    g_assert_false(fsd_model_parse("mapped-ish", &m, &err));
    g_assert_nonnull(strstr(err->message, "invalid security_model"));
    g_clear_error(&err);
}

/* Treads of a 300 KiB file, whole and at its end, with the data spliced
 * into the worker's pipe (VMM_SPLICE=1) and without: the same bytes. */
static void read_file_checked(gboolean spliced)
{
    vmm_splice_force(spliced);
    Fixture f;
    fixture_setup(&f, "passthrough");
    gsize size = 300 * 1024;
    g_autofree guint8 *want = g_malloc(size);
    for (gsize i = 0; i < size; i++)
        want[i] = (guint8)(i * 7 + i / 4096);
    g_autofree char *path = g_build_filename(f.dir, "big", NULL);
    g_assert_true(g_file_set_contents(path, (const char *)want, (gssize)size, NULL));
    start(&f);
    P9Fcall r;
    P9Fcall w = { .type = P9_TWALK, .tag = 2, .fid = 0, .fid2 = 1, .nwname = 1, .wnames = { (char *)"big" } };
    g_assert_cmpint(call(&f, &w, &r), ==, 0);
    p9_fcall_clear(&r);
    P9Fcall o = { .type = P9_TLOPEN, .tag = 3, .fid = 1, .flags = 0 };
    g_assert_cmpint(call(&f, &o, &r), ==, 0);
    p9_fcall_clear(&r);
    const struct { guint64 offset; guint32 count, got; } reads[] = {
        { 0, 256 * 1024, 256 * 1024 },
        { 200 * 1024, 256 * 1024, 100 * 1024 },   /* short: the end of the file */
        { 4097, 70000, 70000 },                   /* unaligned */
        { size, 128 * 1024, 0 },
    };
    for (gsize i = 0; i < G_N_ELEMENTS(reads); i++) {
        P9Fcall rd = { .type = P9_TREAD, .tag = 4, .fid = 1, .offset = reads[i].offset, .count = reads[i].count };
        send_fcall(&f, &rd);
        g_autoptr(GBytes) b G_GNUC_UNUSED = next_reply(&f, &r);
        g_assert_cmpuint(r.type, ==, P9_RREAD);
        g_assert_cmpuint(r.count, ==, reads[i].got);
        g_assert_true(r.count == 0 || memcmp(r.data, want + reads[i].offset, r.count) == 0);
        p9_fcall_clear(&r);
    }
    fixture_teardown(&f);
    vmm_splice_force(-1);
}

static void test_read(void)
{
    read_file_checked(FALSE);
}

static void test_read_spliced(void)
{
    read_file_checked(TRUE);
}

/* ---- Tread.vmm / Twrite.vmm (proto/9p.h) ---- */

#define RAM (256 * 1024)

/* A segment list of (offset, length) pairs, as vcpu-worker sends it. */
static GByteArray *segments(const guint64 *pairs, guint n)
{
    GByteArray *b = g_byte_array_new();
    for (guint i = 0; i < n; i++) {
        guint8 e[P9_VMM_SEGMENT_SIZE];
        guint64 at = GUINT64_TO_LE(pairs[2 * i]);
        guint32 len = GUINT32_TO_LE((guint32)pairs[2 * i + 1]);
        memcpy(e, &at, 8);
        memcpy(e + 8, &len, 4);
        g_byte_array_append(b, e, sizeof(e));
    }
    return b;
}

static int vmm_io(Fixture *f, guint8 type, guint32 fid, guint64 offset, const guint64 *pairs, guint n,
                  guint32 *count)
{
    g_autoptr(GByteArray) list = segments(pairs, n);
    P9Fcall m = { .type = type, .tag = 9, .fid = fid, .offset = offset, .count = list->len, .data = list->data };
    P9Fcall r;
    int rc = call(f, &m, &r);
    if (!rc)
        *count = r.count;
    p9_fcall_clear(&r);
    return rc;
}

static void test_guest_memory(void)
{
    Fixture f;
    fixture_setup(&f, "passthrough");
    g_autofree guint8 *ram = g_malloc0(RAM);
    start(&f);
    P9Fcall r;
    P9Fcall w = { .type = P9_TWALK, .tag = 2, .fid = 0, .fid2 = 1, .nwname = 0 };
    g_assert_cmpint(call(&f, &w, &r), ==, 0);
    p9_fcall_clear(&r);
    P9Fcall cr = { .type = P9_TLCREATE, .tag = 3, .fid = 1, .name = (char *)"f", .flags = 2, .mode = 0644 };
    g_assert_cmpint(call(&f, &cr, &r), ==, 0);
    p9_fcall_clear(&r);
    guint32 n = 0;
    const guint64 two[] = { 8192, 4096, 0, 100 };
    /* Without guest RAM (any connection but a VM's own) the types are unknown. */
    g_assert_cmpint(vmm_io(&f, P9_TWRITE_VMM, 1, 0, two, 2, &n), ==, EOPNOTSUPP);

    fsd_conn_set_guest_memory(f.c, ram, RAM);
    for (guint i = 0; i < RAM; i++)
        ram[i] = (guint8)(i * 7 + i / 4096);
    g_assert_cmpint(vmm_io(&f, P9_TWRITE_VMM, 1, 10, two, 2, &n), ==, 0);
    g_assert_cmpuint(n, ==, 4196);
    g_autofree char *path = g_build_filename(f.dir, "f", NULL);
    g_autofree gchar *got = NULL;
    gsize len = 0;
    g_assert_true(g_file_get_contents(path, &got, &len, NULL));
    g_assert_cmpuint(len, ==, 10 + 4196);
    g_assert_cmpmem(got + 10, 4096, ram + 8192, 4096);
    g_assert_cmpmem(got + 10 + 4096, 100, ram, 100);

    /* A read lands in its pieces, up to the end of the file. */
    const guint64 dest[] = { 100000, 3000, 50000, 5000 };
    g_assert_cmpint(vmm_io(&f, P9_TREAD_VMM, 1, 10, dest, 2, &n), ==, 0);
    g_assert_cmpuint(n, ==, 4196);
    g_assert_cmpmem(ram + 100000, 3000, got + 10, 3000);
    g_assert_cmpmem(ram + 50000, 1196, got + 10 + 3000, 1196);

    /* Lists that leave RAM, are empty, or are not whole entries. */
    const guint64 outside[] = { RAM - 10, 20 };
    const guint64 wrap[] = { G_MAXUINT64 - 5, 10 };
    const guint64 zero[] = { 0, 0 };
    g_assert_cmpint(vmm_io(&f, P9_TWRITE_VMM, 1, 0, outside, 1, &n), ==, EINVAL);
    g_assert_cmpint(vmm_io(&f, P9_TREAD_VMM, 1, 0, wrap, 1, &n), ==, EINVAL);
    g_assert_cmpint(vmm_io(&f, P9_TWRITE_VMM, 1, 0, zero, 1, &n), ==, EINVAL);
    g_assert_cmpint(vmm_io(&f, P9_TWRITE_VMM, 1, 0, NULL, 0, &n), ==, EINVAL);
    P9Fcall odd = { .type = P9_TWRITE_VMM, .tag = 9, .fid = 1, .count = 5, .data = (const guint8 *)"12345" };
    g_assert_cmpint(call(&f, &odd, &r), ==, EINVAL);
    p9_fcall_clear(&r);
    /* A fid that is not open, and a directory. */
    g_assert_cmpint(vmm_io(&f, P9_TREAD_VMM, 7, 0, dest, 1, &n), ==, EBADF);
    g_assert_cmpint(vmm_io(&f, P9_TREAD_VMM, 0, 0, dest, 1, &n), ==, EBADF);
    fixture_teardown(&f);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/9p-server/session", test_session);
    g_test_add_func("/9p-server/many-in-flight", test_many_in_flight);
    g_test_add_func("/9p-server/run-inline", test_run_inline);
    g_test_add_func("/9p-server/read", test_read);
    g_test_add_func("/9p-server/read-spliced", test_read_spliced);
    g_test_add_func("/9p-server/guest-memory", test_guest_memory);
    g_test_add_func("/9p-server/garbage", test_garbage_answered);
    g_test_add_func("/9p-server/throttle-config", test_throttle_config);
    g_test_add_func("/9p-server/throttle-iops", test_throttle_iops);
    g_test_add_func("/9p-server/model-names", test_model_names);
    return g_test_run();
}
