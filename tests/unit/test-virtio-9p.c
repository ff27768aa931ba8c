/* Tests for vcpu-worker/virtio-9p.c: the test driver (virtio-driver.h) puts
 * 9P T-messages on the device's queue in a memory buffer standing in for
 * guest RAM; the test plays the 9P server on the other end of a socketpair
 * (and, at the end, fsd's real server engine serves a temporary directory).
 * Covered: identification and the mount tag in config space, forwarding with
 * the device's own wire tags, many requests answered out of order, replies
 * scattered over several buffers, flush, Tversion aborting what was
 * outstanding, a reset with requests in flight, malformed requests, a reply
 * too big for its buffers, the server dying (EIO, the lost hook, no hang),
 * a new connection (only a new session is forwarded), and the probe. */
#include "common/error.h"
#include "common/splice.h"
#include "fsd/9p-transport.h"
#include "proto/9p.h"
#include "vcpu-worker/virtio-9p.h"
#include "tests/unit/virtio-driver.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#define FEATURES ((1ULL << VIRTIO_F_VERSION_1) | (1ULL << VIRTIO_RING_F_EVENT_IDX) | \
                  (1ULL << VIRTIO_RING_F_INDIRECT_DESC) | (1ULL << VIRTIO_9P_F_MOUNT_TAG))
#define WAIT_US (10 * G_USEC_PER_SEC)
#define IN_SIZE 8192

typedef struct {
    TestDriver td;
    VmmVirtio9p *p;
    int srv;                 /* the test's end: it plays the server */
    gint lost_calls;
    gint lost_failed;
} Fixture;

static void on_lost(void *opaque, const char *reason, unsigned failed)
{
    Fixture *f = opaque;
    g_atomic_int_add(&f->lost_failed, (gint)failed);
    g_atomic_int_inc(&f->lost_calls);
}

static int connect_new(Fixture *f)
{
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
    vmm_virtio_9p_connect(f->p, sv[0], false);
    return sv[1];
}

static void fixture_init(Fixture *f, const char *tag)
{
    memset(f, 0, sizeof(*f));
    td_init(&f->td);
    f->p = vmm_virtio_9p_new("fs0", tag, &f->td.mem);
    vmm_virtio_9p_set_lost_hook(f->p, on_lost, f);
    td_attach(&f->td, vmm_virtio_9p_transport(f->p));
    td_bring_up(&f->td, FEATURES, 1, 64);
    f->srv = connect_new(f);
}

static void fixture_destroy(Fixture *f)
{
    vmm_virtio_9p_free(f->p);
    if (f->srv >= 0)
        close(f->srv);
    td_destroy(&f->td);
}

static void put32(guint8 *b, guint32 v) { v = GUINT32_TO_LE(v); memcpy(b, &v, 4); }
static void put16(guint8 *b, guint16 v) { v = GUINT16_TO_LE(v); memcpy(b, &v, 2); }
static guint32 get32(const guint8 *b) { guint32 v; memcpy(&v, b, 4); return GUINT32_FROM_LE(v); }
static guint16 get16(const guint8 *b) { guint16 v; memcpy(&v, b, 2); return GUINT16_FROM_LE(v); }

/* A message of SIZE bytes: header, then BODY. */
static guint8 *make_msg(guint8 type, guint16 tag, const void *body, guint32 body_len, guint32 *size)
{
    *size = P9_HDRSZ + body_len;
    guint8 *m = g_malloc(*size);
    put32(m, *size);
    m[4] = type;
    put16(m + 5, tag);
    if (body_len)
        memcpy(m + P9_HDRSZ, body, body_len);
    return m;
}

typedef struct {
    uint16_t head;
    uint64_t in_gpa;
} Pending;

/* Puts MSG in guest RAM and submits it with IN_LEN writable bytes (split in
 * two buffers at SPLIT when SPLIT > 0). */
static Pending submit_msg(Fixture *f, const guint8 *msg, guint32 len, guint32 in_len, guint32 split)
{
    uint64_t out = td_alloc(&f->td, len), in = td_alloc(&f->td, in_len);
    memcpy(td_host(&f->td, out), msg, len);
    memset(td_host(&f->td, in), 0xee, in_len);
    TdBuf bufs[3] = { { out, len, false } };
    unsigned n = 1;
    if (split && split < in_len) {
        bufs[n++] = (TdBuf){ in, split, true };
        bufs[n++] = (TdBuf){ in + split, in_len - split, true };
    } else if (in_len) {
        bufs[n++] = (TdBuf){ in, in_len, true };
    }
    uint16_t head = td_add_chain(&f->td, 0, bufs, n);
    td_submit(&f->td, 0, head);
    return (Pending){ head, in };
}

static Pending submit(Fixture *f, guint8 type, guint16 tag, const void *body, guint32 body_len)
{
    guint32 size;
    g_autofree guint8 *m = make_msg(type, tag, body, body_len, &size);
    return submit_msg(f, m, size, IN_SIZE, 0);
}

/* The test's server: reads one message (bounded wait). */
static guint8 *srv_read(int fd, guint32 *size)
{
    guint8 hdr[4];
    guint8 *m = NULL;
    for (guint got = 0, want = 4; got < want;) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        g_assert_cmpint(poll(&p, 1, 10000), ==, 1);
        ssize_t n = read(fd, (m ? m : hdr) + got, want - got);
        g_assert_cmpint(n, >, 0);
        got += (guint)n;
        if (!m && got == 4) {
            want = get32(hdr);
            g_assert_cmpuint(want, >=, P9_HDRSZ);
            m = g_malloc(want);
            memcpy(m, hdr, 4);
        }
    }
    *size = get32(m);
    return m;
}

static void srv_write(int fd, const guint8 *m, guint32 len)
{
    g_assert_cmpint(write(fd, m, len), ==, (ssize_t)len);
}

static void srv_reply(int fd, guint8 type, guint16 wire_tag, const void *body, guint32 body_len)
{
    guint32 size;
    g_autofree guint8 *m = make_msg(type, wire_tag, body, body_len, &size);
    srv_write(fd, m, size);
}

/* Waits (bounded) for the next used entry. */
static void wait_used(Fixture *f, uint32_t *id, uint32_t *len)
{
    gint64 end = g_get_monotonic_time() + WAIT_US;
    while (!td_get_used(&f->td, 0, id, len)) {
        g_assert_cmpint(g_get_monotonic_time(), <, end);
        g_usleep(1000);
    }
}

static void assert_no_used(Fixture *f)
{
    g_usleep(20000);
    g_assert_cmpuint(td_used_idx(&f->td, 0), ==, f->td.q[0].last_used);
}

static void assert_rlerror(Fixture *f, Pending p, guint16 tag, guint32 err)
{
    uint32_t id, len;
    wait_used(f, &id, &len);
    g_assert_cmpuint(id, ==, p.head);
    g_assert_cmpuint(len, ==, 11);
    const guint8 *r = td_host(&f->td, p.in_gpa);
    g_assert_cmpuint(get32(r), ==, 11);
    g_assert_cmpuint(r[4], ==, P9_RLERROR);
    g_assert_cmpuint(get16(r + 5), ==, tag);
    g_assert_cmpuint(get32(r + 7), ==, err);
}

/* ---- Tests ----------------------------------------------------------------------- */

static void test_identification(void)
{
    Fixture f;
    fixture_init(&f, "hostshare");
    g_assert_cmpuint(td_read(&f.td, VIRTIO_MMIO_DEVICE_ID), ==, VIRTIO_ID_9P);
    g_assert_cmphex(td_device_features(&f.td), ==, FEATURES);
    /* Byte by byte, as Linux's virtio_cread_bytes() reads the tag. */
    guint8 cfg[16];
    for (unsigned i = 0; i < sizeof(cfg); i++)
        vmm_virtio_mmio_access(f.td.t, VIRTIO_MMIO_CONFIG + i, cfg + i, 1, false);
    uint8_t le[2];
    vmm_virtio_mmio_access(f.td.t, VIRTIO_MMIO_CONFIG, le, 2, false);
    g_assert_cmpuint(get16(le), ==, 9);
    g_assert_cmpuint(get16(cfg), ==, 9);
    g_assert_cmpmem(cfg + 2, 9, "hostshare", 9);
    g_assert_cmpuint(cfg[11], ==, 0);   /* beyond the config space: zero */
    g_assert_true(vmm_virtio_9p_connected(f.p));
    fixture_destroy(&f);
}

/* A Tversion goes out on NOTAG, a request on a wire tag of the device's;
 * the replies come back under the guest's tags. */
static void test_forward(void)
{
    Fixture f;
    fixture_init(&f, "t");
    guint8 vbody[4 + 2 + 8];
    put32(vbody, 512 * 1024);
    put16(vbody + 4, 8);
    memcpy(vbody + 6, "9P2000.L", 8);
    Pending pv = submit(&f, P9_TVERSION, P9_NOTAG, vbody, sizeof(vbody));
    guint32 size;
    g_autofree guint8 *tv = srv_read(f.srv, &size);
    g_assert_cmpuint(size, ==, P9_HDRSZ + sizeof(vbody));
    g_assert_cmpuint(tv[4], ==, P9_TVERSION);
    g_assert_cmpuint(get16(tv + 5), ==, P9_NOTAG);
    g_assert_cmpmem(tv + P9_HDRSZ, sizeof(vbody), vbody, sizeof(vbody));
    srv_reply(f.srv, P9_RVERSION, P9_NOTAG, vbody, sizeof(vbody));
    uint32_t id, len;
    wait_used(&f, &id, &len);
    g_assert_cmpuint(id, ==, pv.head);
    g_assert_cmpuint(len, ==, P9_HDRSZ + sizeof(vbody));
    g_assert_cmpuint(((guint8 *)td_host(&f.td, pv.in_gpa))[4], ==, P9_RVERSION);

    guint8 fid[4] = { 1, 0, 0, 0 };
    Pending pc = submit(&f, P9_TCLUNK, 42, fid, 4);
    g_autofree guint8 *tc = srv_read(f.srv, &size);
    g_assert_cmpuint(tc[4], ==, P9_TCLUNK);
    guint16 wire = get16(tc + 5);
    g_assert_cmpuint(wire, !=, P9_NOTAG);
    g_assert_cmpuint(vmm_virtio_9p_in_flight(f.p), ==, 1);
    srv_reply(f.srv, P9_RCLUNK, wire, NULL, 0);
    wait_used(&f, &id, &len);
    g_assert_cmpuint(id, ==, pc.head);
    g_assert_cmpuint(len, ==, P9_HDRSZ);
    const guint8 *r = td_host(&f.td, pc.in_gpa);
    g_assert_cmpuint(r[4], ==, P9_RCLUNK);
    g_assert_cmpuint(get16(r + 5), ==, 42);
    g_assert_cmpuint(r[P9_HDRSZ], ==, 0xee);   /* nothing written beyond the reply */
    g_assert_cmpuint(vmm_virtio_9p_in_flight(f.p), ==, 0);
    g_assert_cmpint(f.td.irq_raised, >=, 1);
    g_assert_true(f.td.irq_level);
    fixture_destroy(&f);
}

/* 32 requests in flight, answered in reverse order, each with its own data
 * scattered over two writable buffers. */
static void test_many_out_of_order(void)
{
    Fixture f;
    fixture_init(&f, "t");
    enum { N = 32 };
    Pending p[N];
    guint16 wire[N];
    for (guint i = 0; i < N; i++) {
        guint8 body[4 + 8 + 4];
        put32(body, i);
        memset(body + 4, 0, 8);
        put32(body + 12, 100);
        guint32 size;
        g_autofree guint8 *m = make_msg(P9_TREAD, (guint16)(1000 + i), body, sizeof(body), &size);
        p[i] = submit_msg(&f, m, size, 4 + P9_HDRSZ + 100, 11);
    }
    for (guint i = 0; i < N; i++) {
        guint32 size;
        g_autofree guint8 *m = srv_read(f.srv, &size);
        g_assert_cmpuint(m[4], ==, P9_TREAD);
        g_assert_cmpuint(get32(m + P9_HDRSZ), ==, i);   /* in ring order */
        wire[i] = get16(m + 5);
        for (guint j = 0; j < i; j++)
            g_assert_cmpuint(wire[j], !=, wire[i]);
    }
    g_assert_cmpuint(vmm_virtio_9p_in_flight(f.p), ==, N);
    for (gint i = N - 1; i >= 0; i--) {
        guint8 body[4 + 100];
        put32(body, 100);
        memset(body + 4, 'a' + i % 26, 100);
        srv_reply(f.srv, P9_RREAD, wire[i], body, sizeof(body));
    }
    for (gint i = N - 1; i >= 0; i--) {
        uint32_t id, len;
        wait_used(&f, &id, &len);
        g_assert_cmpuint(id, ==, p[i].head);
        g_assert_cmpuint(len, ==, P9_HDRSZ + 4 + 100);
        const guint8 *r = td_host(&f.td, p[i].in_gpa);
        g_assert_cmpuint(get16(r + 5), ==, 1000 + i);
        g_assert_cmpuint(get32(r + P9_HDRSZ), ==, 100);
        for (guint k = 0; k < 100; k++)
            g_assert_cmpuint(r[P9_HDRSZ + 4 + k], ==, 'a' + i % 26);
    }
    fixture_destroy(&f);
}

/* Tflush: the server gets the cancelled request's wire tag; an Rflush with
 * no reply before it returns the cancelled request unused. */
static void test_flush(void)
{
    Fixture f;
    fixture_init(&f, "t");
    guint8 fid[4] = { 7, 0, 0, 0 };
    Pending slow = submit(&f, P9_TFSYNC, 5, fid, 4);
    guint32 size;
    g_autofree guint8 *m1 = srv_read(f.srv, &size);
    guint16 slow_wire = get16(m1 + 5);
    guint8 old[2];
    put16(old, 5);
    Pending fl = submit(&f, P9_TFLUSH, 6, old, 2);
    g_autofree guint8 *m2 = srv_read(f.srv, &size);
    g_assert_cmpuint(size, ==, 9);
    g_assert_cmpuint(m2[4], ==, P9_TFLUSH);
    g_assert_cmpuint(get16(m2 + P9_HDRSZ), ==, slow_wire);
    srv_reply(f.srv, P9_RFLUSH, get16(m2 + 5), NULL, 0);
    uint32_t id, len;
    wait_used(&f, &id, &len);
    g_assert_cmpuint(id, ==, fl.head);
    g_assert_cmpuint(len, ==, P9_HDRSZ);
    g_assert_cmpuint(((guint8 *)td_host(&f.td, fl.in_gpa))[4], ==, P9_RFLUSH);
    g_assert_cmpuint(get16((guint8 *)td_host(&f.td, fl.in_gpa) + 5), ==, 6);
    wait_used(&f, &id, &len);
    g_assert_cmpuint(id, ==, slow.head);
    g_assert_cmpuint(len, ==, 0);
    g_assert_cmpuint(vmm_virtio_9p_in_flight(f.p), ==, 0);
    /* A late reply to the flushed tag is thrown away. */
    srv_reply(f.srv, P9_RFSYNC, slow_wire, NULL, 0);
    assert_no_used(&f);

    /* Nothing to cancel: Rflush at once, nothing sent. */
    put16(old, 77);
    Pending fl2 = submit(&f, P9_TFLUSH, 8, old, 2);
    wait_used(&f, &id, &len);
    g_assert_cmpuint(id, ==, fl2.head);
    g_assert_cmpuint(len, ==, P9_HDRSZ);
    struct pollfd pf = { .fd = f.srv, .events = POLLIN };
    g_assert_cmpint(poll(&pf, 1, 50), ==, 0);
    fixture_destroy(&f);
}

/* The Rversion of a new session returns what was outstanding before it. */
static void test_version_aborts(void)
{
    Fixture f;
    fixture_init(&f, "t");
    guint8 fid[4] = { 1, 0, 0, 0 };
    Pending old = submit(&f, P9_TGETATTR, 3, fid, 4);
    guint32 size;
    g_free(srv_read(f.srv, &size));
    guint8 vbody[14];
    put32(vbody, 8192);
    put16(vbody + 4, 8);
    memcpy(vbody + 6, "9P2000.L", 8);
    Pending v = submit(&f, P9_TVERSION, P9_NOTAG, vbody, sizeof(vbody));
    g_free(srv_read(f.srv, &size));
    srv_reply(f.srv, P9_RVERSION, P9_NOTAG, vbody, sizeof(vbody));
    uint32_t id, len;
    gboolean seen_old = FALSE, seen_v = FALSE;
    for (int i = 0; i < 2; i++) {
        wait_used(&f, &id, &len);
        if (id == old.head) {
            seen_old = TRUE;
            g_assert_cmpuint(len, ==, 0);
        } else {
            g_assert_cmpuint(id, ==, v.head);
            seen_v = TRUE;
        }
    }
    g_assert_true(seen_old && seen_v);
    fixture_destroy(&f);
}

/* A reset forgets the requests in flight; their replies are thrown away and
 * the reused guest tags still reach the right request. */
static void test_reset_in_flight(void)
{
    Fixture f;
    fixture_init(&f, "t");
    guint8 fid[4] = { 1, 0, 0, 0 };
    submit(&f, P9_TGETATTR, 1, fid, 4);
    guint32 size;
    g_autofree guint8 *m = srv_read(f.srv, &size);
    guint16 old_wire = get16(m + 5);
    td_bring_up(&f.td, FEATURES, 1, 64);     /* reset and set up again */
    g_assert_cmpuint(vmm_virtio_9p_in_flight(f.p), ==, 0);
    Pending p = submit(&f, P9_TGETATTR, 1, fid, 4);
    g_autofree guint8 *m2 = srv_read(f.srv, &size);
    guint16 new_wire = get16(m2 + 5);
    g_assert_cmpuint(new_wire, !=, old_wire);
    guint8 junk[8] = { 0 };
    srv_reply(f.srv, P9_RGETATTR, old_wire, junk, sizeof(junk));
    srv_reply(f.srv, P9_RLERROR, new_wire, "\x02\0\0\0", 4);
    assert_rlerror(&f, p, 1, ENOENT);
    fixture_destroy(&f);
}

typedef struct {
    TestDriver *td;
    gint done;
} ResetArgs;

static gpointer reset_thread(gpointer data)
{
    ResetArgs *a = data;
    td_write(a->td, VIRTIO_MMIO_STATUS, 0);
    g_atomic_int_set(&a->done, 1);
    return NULL;
}

/* With data through guest memory, Treads go as Tread.vmm, and a reset waits
 * until fsd has answered every one (it may still write into the buffers the
 * reset driver reuses) while their completions still raise interrupts. */
static void test_reset_waits_for_guest_memory(void)
{
    Fixture f;
    fixture_init(&f, "t");
    close(f.srv);
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
    vmm_virtio_9p_set_guest_memory(f.p, f.td.ram, TD_RAM_SIZE);
    vmm_virtio_9p_connect(f.p, sv[0], true);
    f.srv = sv[1];
    guint8 body[16] = { 1 };          /* fid 1, offset 0 */
    put32(body + 12, 100);            /* count */
    guint16 wire[2];
    for (guint i = 0; i < 2; i++) {
        submit(&f, P9_TREAD, (guint16)(10 + i), body, sizeof(body));
        guint32 size;
        g_autofree guint8 *m = srv_read(f.srv, &size);
        g_assert_cmpuint(m[4], ==, P9_TREAD_VMM);
        g_assert_cmpuint(get32(m + P9_HDRSZ + 12), ==, P9_VMM_SEGMENT_SIZE);   /* one piece */
        wire[i] = get16(m + 5);
    }
    g_assert_cmpuint(vmm_virtio_9p_sent_in_guest(f.p), ==, 2);
    ResetArgs a = { &f.td, 0 };
    GThread *t = g_thread_new("reset", reset_thread, &a);
    g_usleep(100000);
    g_assert_cmpint(g_atomic_int_get(&a.done), ==, 0);
    guint8 count[4];
    put32(count, 5);
    srv_reply(f.srv, P9_RREAD_VMM, wire[0], count, 4);
    g_usleep(100000);
    g_assert_cmpint(g_atomic_int_get(&a.done), ==, 0);
    srv_reply(f.srv, P9_RREAD_VMM, wire[1], count, 4);
    g_thread_join(t);
    g_assert_cmpint(a.done, ==, 1);
    /* Answered in time: the connection stays. */
    g_assert_true(vmm_virtio_9p_connected(f.p));
    fixture_destroy(&f);
}

static void test_malformed(void)
{
    Fixture f;
    fixture_init(&f, "t");
    /* The size field beyond the readable bytes, and an R-message. */
    guint8 bad[P9_HDRSZ + 4];
    put32(bad, 100);
    bad[4] = P9_TCLUNK;
    put16(bad + 5, 9);
    Pending p1 = submit_msg(&f, bad, sizeof(bad), 64, 0);
    assert_rlerror(&f, p1, 9, EINVAL);
    Pending p2 = submit(&f, P9_RCLUNK, 10, NULL, 0);
    assert_rlerror(&f, p2, 10, EINVAL);
    struct pollfd pf = { .fd = f.srv, .events = POLLIN };
    g_assert_cmpint(poll(&pf, 1, 50), ==, 0);      /* nothing reached the server */
    /* No room for a reply header: the driver broke the rules. */
    uint64_t out = td_alloc(&f.td, 16), in = td_alloc(&f.td, 4);
    guint32 size;
    g_autofree guint8 *m = make_msg(P9_TCLUNK, 11, "\1\0\0\0", 4, &size);
    memcpy(td_host(&f.td, out), m, size);
    TdBuf bufs[2] = { { out, size, false }, { in, 4, true } };
    td_submit(&f.td, 0, td_add_chain(&f.td, 0, bufs, 2));
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET, ==, VIRTIO_STATUS_NEEDS_RESET);
    fixture_destroy(&f);
}

/* A reply larger than the request's writable buffers is an I/O error, and
 * the connection goes on. */
static void test_reply_too_big(void)
{
    Fixture f;
    fixture_init(&f, "t");
    guint32 size;
    g_autofree guint8 *m = make_msg(P9_TREADLINK, 4, "\1\0\0\0", 4, &size);
    Pending p = submit_msg(&f, m, size, 32, 0);
    g_autofree guint8 *t = srv_read(f.srv, &size);
    guint8 body[100] = { 0 };
    srv_reply(f.srv, P9_RREADLINK, get16(t + 5), body, sizeof(body));
    assert_rlerror(&f, p, 4, EIO);
    Pending p2 = submit(&f, P9_TCLUNK, 5, "\1\0\0\0", 4);
    g_autofree guint8 *t2 = srv_read(f.srv, &size);
    srv_reply(f.srv, P9_RCLUNK, get16(t2 + 5), NULL, 0);
    uint32_t id, len;
    wait_used(&f, &id, &len);
    g_assert_cmpuint(id, ==, p2.head);
    g_assert_cmpuint(len, ==, P9_HDRSZ);
    fixture_destroy(&f);
}

/* The server dies with requests in flight: EIO for each, the hook once, and
 * EIO at once while there is no connection. A new connection forwards only
 * a new session. */
static void test_server_dies_and_returns(void)
{
    Fixture f;
    fixture_init(&f, "t");
    guint8 vbody[14];
    put32(vbody, 8192);
    put16(vbody + 4, 8);
    memcpy(vbody + 6, "9P2000.L", 8);
    submit(&f, P9_TVERSION, P9_NOTAG, vbody, sizeof(vbody));
    guint32 size;
    g_free(srv_read(f.srv, &size));
    srv_reply(f.srv, P9_RVERSION, P9_NOTAG, vbody, sizeof(vbody));
    uint32_t id, len;
    wait_used(&f, &id, &len);

    Pending a = submit(&f, P9_TGETATTR, 1, "\1\0\0\0", 4);
    Pending b = submit(&f, P9_TGETATTR, 2, "\2\0\0\0", 4);
    g_free(srv_read(f.srv, &size));
    g_free(srv_read(f.srv, &size));
    close(f.srv);
    f.srv = -1;
    gboolean seen_a = FALSE;
    for (int i = 0; i < 2; i++) {
        wait_used(&f, &id, &len);
        const Pending *p = id == a.head ? &a : &b;
        seen_a |= id == a.head;
        g_assert_cmpuint(len, ==, 11);
        const guint8 *r = td_host(&f.td, p->in_gpa);
        g_assert_cmpuint(r[4], ==, P9_RLERROR);
        g_assert_cmpuint(get32(r + 7), ==, EIO);
    }
    g_assert_true(seen_a);
    gint64 end = g_get_monotonic_time() + WAIT_US;
    while (!g_atomic_int_get(&f.lost_calls)) {
        g_assert_cmpint(g_get_monotonic_time(), <, end);
        g_usleep(1000);
    }
    g_assert_cmpint(g_atomic_int_get(&f.lost_failed), ==, 2);
    g_assert_false(vmm_virtio_9p_connected(f.p));
    Pending c = submit(&f, P9_TGETATTR, 3, "\1\0\0\0", 4);
    assert_rlerror(&f, c, 3, EIO);

    f.srv = connect_new(&f);
    g_assert_true(vmm_virtio_9p_connected(f.p));
    Pending d = submit(&f, P9_TGETATTR, 4, "\1\0\0\0", 4);
    assert_rlerror(&f, d, 4, EIO);            /* the old fids are gone */
    submit(&f, P9_TVERSION, P9_NOTAG, vbody, sizeof(vbody));
    g_autofree guint8 *tv = srv_read(f.srv, &size);
    g_assert_cmpuint(tv[4], ==, P9_TVERSION);
    srv_reply(f.srv, P9_RVERSION, P9_NOTAG, vbody, sizeof(vbody));
    wait_used(&f, &id, &len);
    Pending e = submit(&f, P9_TCLUNK, 5, "\1\0\0\0", 4);
    g_autofree guint8 *te = srv_read(f.srv, &size);
    g_assert_cmpuint(te[4], ==, P9_TCLUNK);
    srv_reply(f.srv, P9_RCLUNK, get16(te + 5), NULL, 0);
    wait_used(&f, &id, &len);
    g_assert_cmpuint(id, ==, e.head);
    g_assert_cmpint(g_atomic_int_get(&f.lost_calls), ==, 1);
    fixture_destroy(&f);
}

/* ---- The probe ---------------------------------------------------------------------- */

static gpointer answer_version(gpointer data)
{
    int fd = GPOINTER_TO_INT(data);
    guint32 size;
    g_autofree guint8 *m = srv_read(fd, &size);
    g_assert_cmpuint(m[4], ==, P9_TVERSION);
    guint8 body[14];
    put32(body, 4096);
    put16(body + 4, 8);
    memcpy(body + 6, "9P2000.L", 8);
    srv_reply(fd, P9_RVERSION, P9_NOTAG, body, sizeof(body));
    return NULL;
}

static void test_probe(void)
{
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
    GThread *t = g_thread_new("srv", answer_version, GINT_TO_POINTER(sv[1]));
    guint32 msize = 0;
    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_9p_probe(sv[0], 8192, 10000, &msize, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(msize, ==, 4096);
    g_thread_join(t);
    /* A peer that says nothing: a bounded wait, then an error. */
    g_assert_false(vmm_9p_probe(sv[0], 8192, 100, &msize, &err));
    g_assert_nonnull(err);
    g_clear_error(&err);
    /* A peer that hangs up. */
    close(sv[1]);
    g_assert_false(vmm_9p_probe(sv[0], 8192, 1000, &msize, &err));
    g_assert_nonnull(err);
    close(sv[0]);
}

/* ---- Against fsd's server engine ---------------------------------------------------- */

typedef struct {
    uv_loop_t loop;
    uv_async_t stop;
    FsdExport *export;
    FsdServer *server;
    GThread *thread;
} RealServer;

static void on_stop(uv_async_t *a)
{
    RealServer *s = a->data;
    fsd_server_shutdown(s->server);
    uv_close((uv_handle_t *)&s->stop, NULL);
}

static gpointer run_loop(gpointer data)
{
    RealServer *s = data;
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return NULL;
}

static guint8 *rpc(Fixture *f, guint8 type, guint16 tag, const void *body, guint32 body_len, guint32 *rlen)
{
    Pending p = submit(f, type, tag, body, body_len);
    uint32_t id, len;
    wait_used(f, &id, &len);
    g_assert_cmpuint(id, ==, p.head);
    *rlen = len;
    return g_memdup2(td_host(&f->td, p.in_gpa), len);
}

static guint32 put_str(guint8 *b, const char *s)
{
    put16(b, (guint16)strlen(s));
    memcpy(b + 2, s, strlen(s));
    return 2 + (guint32)strlen(s);
}

/* A 200 KiB Twrite and the Tread of it back, through the device and fsd:
 * with VMM_SPLICE on, the write leaves by vmsplice of guest RAM and the read
 * is answered by splice from the file. */
static void big_write_read(Fixture *f)
{
    enum { BIG = 200 * 1024 };
    guint8 b[256];
    guint32 n, rlen;
    put32(b, 0);
    put32(b + 4, 2);
    put16(b + 8, 0);                /* a clone of the root */
    g_autofree guint8 *rw = rpc(f, P9_TWALK, 6, b, 10, &rlen);
    g_assert_cmpuint(rw[4], ==, P9_RWALK);
    put32(b, 2);
    n = 4 + put_str(b + 4, "big");
    put32(b + n, 2);                /* O_RDWR */
    put32(b + n + 4, 0644);
    put32(b + n + 8, 0);
    g_autofree guint8 *rc = rpc(f, P9_TLCREATE, 7, b, n + 12, &rlen);
    g_assert_cmpuint(rc[4], ==, P9_RLCREATE);

    g_autofree guint8 *w = g_malloc(16 + BIG);
    put32(w, 2);
    memset(w + 4, 0, 8);
    put32(w + 12, BIG);
    for (guint i = 0; i < BIG; i++)
        w[16 + i] = (guint8)(i * 13 + i / 1000);
    g_autofree guint8 *rwr = rpc(f, P9_TWRITE, 8, w, 16 + BIG, &rlen);
    g_assert_cmpuint(rwr[4], ==, P9_RWRITE);
    g_assert_cmpuint(get32(rwr + P9_HDRSZ), ==, BIG);

    put32(b, 2);
    memset(b + 4, 0, 8);
    put32(b + 12, BIG);
    guint32 size;
    g_autofree guint8 *m = make_msg(P9_TREAD, 9, b, 16, &size);
    Pending p = submit_msg(f, m, size, P9_HDRSZ + 4 + BIG, 70000);
    uint32_t id, len;
    wait_used(f, &id, &len);
    g_assert_cmpuint(id, ==, p.head);
    const guint8 *r = td_host(&f->td, p.in_gpa);
    g_assert_cmpuint(r[4], ==, P9_RREAD);
    g_assert_cmpuint(get32(r + P9_HDRSZ), ==, BIG);
    g_assert_cmpmem(r + P9_HDRSZ + 4, BIG, w + 16, BIG);
}

/* SPLICED: fsd and the device splice large data (VMM_SPLICE=1); GUEST: fsd
 * maps the test's "guest RAM" and reads and writes go as Tread.vmm/Twrite.vmm. */
static void real_fsd(gboolean spliced, gboolean guest)
{
    vmm_splice_force(spliced);
    g_autofree char *dir = g_dir_make_tmp("test-virtio-9p-XXXXXX", NULL);
    g_assert_nonnull(dir);
    g_autofree char *file = g_build_filename(dir, "hello.txt", NULL);
    g_assert_true(g_file_set_contents(file, "hello from the host", -1, NULL));

    RealServer s = { 0 };
    FsdExportConfig cfg;
    fsd_export_config_init(&cfg);
    cfg.path = g_strdup(dir);
    cfg.model = FSD_SM_MAPPED_XATTR;
    g_autoptr(GError) err = NULL;
    s.export = fsd_export_new(&cfg, &err);
    g_assert_no_error(err);
    fsd_export_config_clear(&cfg);
    uv_loop_init(&s.loop);
    uv_async_init(&s.loop, &s.stop, on_stop);
    s.stop.data = &s;
    s.server = fsd_server_new(&s.loop, s.export);
    Fixture f;
    memset(&f, 0, sizeof(f));
    td_init(&f.td);
    f.p = vmm_virtio_9p_new("fs0", "t", &f.td.mem);
    td_attach(&f.td, vmm_virtio_9p_transport(f.p));
    td_bring_up(&f.td, FEATURES, 1, 64);
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
    if (guest) {
        g_assert_true(fsd_server_serve_fd_guest(s.server, sv[1], f.td.ram, TD_RAM_SIZE, &err));
        vmm_virtio_9p_set_guest_memory(f.p, f.td.ram, TD_RAM_SIZE);
    } else {
        g_assert_true(fsd_server_serve_fd(s.server, sv[1], &err));
    }
    s.thread = g_thread_new("fsd", run_loop, &s);
    vmm_virtio_9p_connect(f.p, sv[0], guest);
    f.srv = -1;

    guint8 b[256];
    guint32 n, rlen;
    put32(b, 1 << 20);
    n = 4 + put_str(b + 4, "9P2000.L");
    g_autofree guint8 *rv = rpc(&f, P9_TVERSION, P9_NOTAG, b, n, &rlen);
    g_assert_cmpuint(rv[4], ==, P9_RVERSION);

    put32(b, 0);                    /* fid */
    put32(b + 4, P9_NOFID);         /* afid */
    n = 8 + put_str(b + 8, "user");
    n += put_str(b + n, "");
    put32(b + n, 1000);
    n += 4;
    g_autofree guint8 *ra = rpc(&f, P9_TATTACH, 1, b, n, &rlen);
    g_assert_cmpuint(ra[4], ==, P9_RATTACH);

    put32(b, 0);
    put32(b + 4, 1);
    put16(b + 8, 1);
    n = 10 + put_str(b + 10, "hello.txt");
    g_autofree guint8 *rw = rpc(&f, P9_TWALK, 2, b, n, &rlen);
    g_assert_cmpuint(rw[4], ==, P9_RWALK);

    put32(b, 1);
    put32(b + 4, 0);                /* O_RDONLY */
    g_autofree guint8 *ro = rpc(&f, P9_TLOPEN, 3, b, 8, &rlen);
    g_assert_cmpuint(ro[4], ==, P9_RLOPEN);

    put32(b, 1);
    memset(b + 4, 0, 8);
    put32(b + 12, 100);
    g_autofree guint8 *rr = rpc(&f, P9_TREAD, 4, b, 16, &rlen);
    g_assert_cmpuint(rr[4], ==, P9_RREAD);
    g_assert_cmpuint(get16(rr + 5), ==, 4);
    g_assert_cmpuint(get32(rr + P9_HDRSZ), ==, 19);
    g_assert_cmpmem(rr + P9_HDRSZ + 4, 19, "hello from the host", 19);

    put32(b, 1);
    put16(b + 4, 1);
    n = 6 + put_str(b + 6, "nope");
    g_autofree guint8 *re = rpc(&f, P9_TWALK, 5, b, n, &rlen);
    g_assert_cmpuint(re[4], ==, P9_RLERROR);

    big_write_read(&f);
    g_autofree char *big = g_build_filename(dir, "big", NULL);
    /* The small read, the big write and the big read went through guest
     * memory (or none did). */
    g_assert_cmpuint(vmm_virtio_9p_sent_in_guest(f.p), ==, guest ? 3 : 0);

    vmm_virtio_9p_free(f.p);
    uv_async_send(&s.stop);
    g_thread_join(s.thread);
    uv_loop_close(&s.loop);
    fsd_export_free(s.export);
    td_destroy(&f.td);
    g_unlink(file);
    g_unlink(big);
    g_rmdir(dir);
    vmm_splice_force(-1);
}

static void test_real_fsd(void)
{
    real_fsd(FALSE, FALSE);
}

static void test_real_fsd_spliced(void)
{
    real_fsd(TRUE, FALSE);
}

static void test_real_fsd_guest_memory(void)
{
    real_fsd(FALSE, TRUE);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    signal(SIGPIPE, SIG_IGN);
    g_test_add_func("/virtio-9p/identification", test_identification);
    g_test_add_func("/virtio-9p/forward", test_forward);
    g_test_add_func("/virtio-9p/many-out-of-order", test_many_out_of_order);
    g_test_add_func("/virtio-9p/flush", test_flush);
    g_test_add_func("/virtio-9p/version-aborts", test_version_aborts);
    g_test_add_func("/virtio-9p/reset-in-flight", test_reset_in_flight);
    g_test_add_func("/virtio-9p/reset-waits-for-guest-memory", test_reset_waits_for_guest_memory);
    g_test_add_func("/virtio-9p/malformed", test_malformed);
    g_test_add_func("/virtio-9p/reply-too-big", test_reply_too_big);
    g_test_add_func("/virtio-9p/server-dies-and-returns", test_server_dies_and_returns);
    g_test_add_func("/virtio-9p/probe", test_probe);
    g_test_add_func("/virtio-9p/real-fsd", test_real_fsd);
    g_test_add_func("/virtio-9p/real-fsd-spliced", test_real_fsd_spliced);
    g_test_add_func("/virtio-9p/real-fsd-guest-memory", test_real_fsd_guest_memory);
    return g_test_run();
}
