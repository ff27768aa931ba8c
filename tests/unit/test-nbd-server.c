/* NBD server engine: a hand-written client over socketpairs drives the
 * negotiation and transmission phases, including malformed input, against
 * exports of an in-memory test-double driver (defined here) whose block
 * status, errors and latency the tests control. */
#include <errno.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "blockd/block.h"
#include "blockd/nbd-server.h"
#include "common/error.h"
#include "proto/nbd.h"

#define MIB (1024 * 1024)
#define SECTOR 512

/* ==================================================================
 * Test double: an in-memory protocol driver with per-sector allocation
 * ================================================================== */

typedef struct {
    GMutex lock;
    guint8 *data;
    guint8 *alloc; /* one byte per sector: an AllocState */
    guint64 size;
} MemDisk;

/* Never written (not allocated, content unknown to block status), written,
 * or zeroed by unmapping (known zero, as a hole in a raw file). */
enum AllocState { ST_UNALLOCATED, ST_DATA, ST_ZERO };

/* Knobs the tests turn; G_MAXUINT64 = off. */
static guint64 g_slow_read_offset = G_MAXUINT64; /* a read starting here waits for the gate */
/* The slow read waits until the test opens the gate (not for a time, so the
 * test means the same on a loaded machine); 60 s is only a guard. */
static GMutex g_gate_lock;
static GCond g_gate_cond;
static gboolean g_gate_open;

static void slow_read_wait(void)
{
    gint64 end = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;
    g_mutex_lock(&g_gate_lock);
    while (!g_gate_open && g_cond_wait_until(&g_gate_cond, &g_gate_lock, end))
        ;
    g_mutex_unlock(&g_gate_lock);
}

static void slow_read_gate(gboolean open)
{
    g_mutex_lock(&g_gate_lock);
    g_gate_open = open;
    g_cond_broadcast(&g_gate_cond);
    g_mutex_unlock(&g_gate_lock);
}
static guint64 g_fail_read_offset = G_MAXUINT64; /* a read covering this fails with EIO */
static gint g_flushes;

static gboolean mem_open(VmmBlockDev *bs, JsonObject *options, int flags, GError **error)
{
    MemDisk *m = g_new0(MemDisk, 1);
    g_mutex_init(&m->lock);
    m->size = options && json_object_has_member(options, "size") ? (guint64)json_object_get_int_member(options, "size")
                                                                  : 64 * MIB;
    m->data = g_malloc0(m->size);
    m->alloc = g_malloc0(m->size / SECTOR + 1);
    bs->opaque = m;
    bs->size = m->size;
    return TRUE;
}

static void mem_close(VmmBlockDev *bs)
{
    MemDisk *m = bs->opaque;
    g_free(m->data);
    g_free(m->alloc);
    g_mutex_clear(&m->lock);
    g_free(m);
}

static void mem_mark(MemDisk *m, guint64 offset, guint64 bytes, guint8 v)
{
    for (guint64 s = offset / SECTOR; s * SECTOR < offset + bytes; s++)
        m->alloc[s] = v;
}

static gboolean mem_pread(VmmBlockDev *bs, guint64 offset, guint64 bytes, void *buf, int flags, GError **error)
{
    MemDisk *m = bs->opaque;
    if (offset == g_slow_read_offset)
        slow_read_wait();
    if (g_fail_read_offset >= offset && g_fail_read_offset < offset + bytes) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_IO, "mem: read at %" G_GUINT64_FORMAT ": %s", offset,
                    g_strerror(EIO));
        return FALSE;
    }
    g_mutex_lock(&m->lock);
    memcpy(buf, m->data + offset, bytes);
    g_mutex_unlock(&m->lock);
    return TRUE;
}

static gboolean mem_pwrite(VmmBlockDev *bs, guint64 offset, guint64 bytes, const void *buf, int flags,
                           GError **error)
{
    MemDisk *m = bs->opaque;
    g_mutex_lock(&m->lock);
    memcpy(m->data + offset, buf, bytes);
    mem_mark(m, offset, bytes, ST_DATA);
    g_mutex_unlock(&m->lock);
    if (flags & VMM_BDRV_REQ_FUA)
        g_atomic_int_inc(&g_flushes);
    return TRUE;
}

/* Unmapping is "fast"; writing zeroes explicitly is the slow fallback. */
static gboolean mem_pwrite_zeroes(VmmBlockDev *bs, guint64 offset, guint64 bytes, int flags, GError **error)
{
    MemDisk *m = bs->opaque;
    if (!(flags & VMM_BDRV_REQ_MAY_UNMAP) && (flags & VMM_BDRV_REQ_NO_FALLBACK)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED, "mem: zeroing without unmap is slow");
        return FALSE;
    }
    g_mutex_lock(&m->lock);
    memset(m->data + offset, 0, bytes);
    gboolean unmap = (flags & VMM_BDRV_REQ_MAY_UNMAP) && offset % SECTOR == 0 && bytes % SECTOR == 0;
    mem_mark(m, offset, bytes, unmap ? ST_ZERO : ST_DATA);
    g_mutex_unlock(&m->lock);
    return TRUE;
}

static gboolean mem_pdiscard(VmmBlockDev *bs, guint64 offset, guint64 bytes, GError **error)
{
    MemDisk *m = bs->opaque;
    g_mutex_lock(&m->lock);
    memset(m->data + offset, 0, bytes);
    mem_mark(m, offset, bytes, ST_ZERO);
    g_mutex_unlock(&m->lock);
    return TRUE;
}

static gboolean mem_flush(VmmBlockDev *bs, GError **error)
{
    g_atomic_int_inc(&g_flushes);
    return TRUE;
}

static int mem_block_status(VmmBlockDev *bs, guint64 offset, guint64 bytes, guint64 *pnum, guint64 *map,
                            VmmBlockDev **file, GError **error)
{
    MemDisk *m = bs->opaque;
    g_mutex_lock(&m->lock);
    guint8 first = m->alloc[offset / SECTOR];
    guint64 end = offset + bytes, pos = (offset / SECTOR + 1) * SECTOR;
    while (pos < end && m->alloc[pos / SECTOR] == first)
        pos += SECTOR;
    g_mutex_unlock(&m->lock);
    *pnum = MIN(pos, end) - offset;
    return first == ST_DATA ? VMM_BLOCK_DATA : first == ST_ZERO ? VMM_BLOCK_ZERO : 0;
}

static const VmmOptKey mem_open_opts[] = {
    { "size", VMM_OPT_SIZE, "disk size", NULL },
    { NULL },
};

static const VmmBlockDriver mem_driver = {
    .format_name = "nbdtest-mem",
    .is_protocol = TRUE,
    .open_opts = mem_open_opts,
    .open = mem_open,
    .close = mem_close,
    .pread = mem_pread,
    .pwrite = mem_pwrite,
    .pwrite_zeroes = mem_pwrite_zeroes,
    .pdiscard = mem_pdiscard,
    .flush = mem_flush,
    .block_status = mem_block_status,
};

static VmmBlockDev *mem_disk_new(guint64 size, gboolean read_only)
{
    static gsize registered;
    if (g_once_init_enter(&registered)) {
        vmm_block_init();
        vmm_block_register(&mem_driver);
        g_once_init_leave(&registered, 1);
    }
    g_autoptr(JsonObject) opts = json_object_new();
    json_object_set_int_member(opts, "size", (gint64)size);
    json_object_set_string_member(opts, "discard", "unmap");
    g_autoptr(GError) err = NULL;
    g_autofree char *name = g_strdup_printf("mem-%" G_GUINT64_FORMAT, size);
    VmmBlockDev *bs = vmm_block_open(name, "nbdtest-mem", opts, read_only ? 0 : VMM_BDRV_O_RDWR, &err);
    g_assert_no_error(err);
    g_assert_nonnull(bs);
    return bs;
}

/* ==================================================================
 * Fixture: a server with exports "" (rw, 64 MiB), "ro" (read-only) and
 * "small" (1 MiB, allocation depth, shared=1)
 * ================================================================== */

typedef struct {
    NbdServer *server;
    VmmBlockDev *disk, *ro_disk, *small_disk;
} Fixture;

static NbdExport *add_export(NbdServer *server, const NbdExportConfig *cfg)
{
    g_autoptr(GError) err = NULL;
    NbdExport *exp = nbd_export_new(cfg, &err);
    g_assert_no_error(err);
    g_assert_true(nbd_server_add_export(server, exp, &err));
    g_assert_no_error(err);
    return exp;
}

static void fixture_setup(Fixture *f, gconstpointer data)
{
    g_slow_read_offset = g_fail_read_offset = G_MAXUINT64;
    f->server = nbd_server_new();
    f->disk = mem_disk_new(64 * MIB, FALSE);
    f->ro_disk = mem_disk_new(4 * MIB, FALSE);
    f->small_disk = mem_disk_new(1 * MIB, FALSE);
    NbdExportConfig c1 = { .name = "", .description = "the default", .bs = f->disk, .multi_conn = TRUE };
    NbdExportConfig c2 = { .name = "ro", .bs = f->ro_disk, .read_only = TRUE, .rotational = TRUE };
    NbdExportConfig c3 = { .name = "small", .description = "small one", .bs = f->small_disk,
                           .allocation_depth = TRUE, .shared = 1, .min_block = 512 };
    nbd_export_unref(add_export(f->server, &c1));
    nbd_export_unref(add_export(f->server, &c2));
    nbd_export_unref(add_export(f->server, &c3));
}

static void fixture_teardown(Fixture *f, gconstpointer data)
{
    nbd_server_free(f->server);
    vmm_block_unref(f->disk);
    vmm_block_unref(f->ro_disk);
    vmm_block_unref(f->small_disk);
}

/* ==================================================================
 * The hand-written client
 * ================================================================== */

static void put16(guint8 *p, guint16 v) { p[0] = v >> 8; p[1] = v; }
static void put32(guint8 *p, guint32 v) { put16(p, v >> 16); put16(p + 2, v); }
static void put64(guint8 *p, guint64 v) { put32(p, v >> 32); put32(p + 4, v); }
static guint16 get16(const guint8 *p) { return (guint16)(p[0] << 8 | p[1]); }
static guint32 get32(const guint8 *p) { return (guint32)get16(p) << 16 | get16(p + 2); }
static guint64 get64(const guint8 *p) { return (guint64)get32(p) << 32 | get32(p + 4); }

/* A connected client end; every receive times out after 10 s. */
static int client_connect(NbdServer *server)
{
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
    struct timeval tv = { .tv_sec = 10 };
    setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    g_autoptr(GError) err = NULL;
    g_assert_true(nbd_server_serve_fd(server, sv[0], &err));
    g_assert_no_error(err);
    return sv[1];
}

static void send_all(int fd, const void *buf, gsize len)
{
    const guint8 *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        g_assert_cmpint(n, >, 0);
        p += n;
        len -= (gsize)n;
    }
}

/* TRUE if LEN bytes arrived, FALSE at end of stream (or reset). */
static gboolean recv_all(int fd, void *buf, gsize len)
{
    guint8 *p = buf;
    while (len > 0) {
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == ECONNRESET || errno == EPIPE))
            return FALSE;
        if (n < 0)
            g_error("recv: %s", g_strerror(errno)); /* a timeout (EAGAIN) fails the test */
        if (n == 0)
            return FALSE;
        p += n;
        len -= (gsize)n;
    }
    return TRUE;
}

static void assert_closed(int fd)
{
    guint8 b;
    g_assert_false(recv_all(fd, &b, 1));
}

static void client_handshake(int fd, guint32 client_flags)
{
    guint8 hello[18];
    g_assert_true(recv_all(fd, hello, sizeof(hello)));
    g_assert_cmphex(get64(hello), ==, NBD_MAGIC);
    g_assert_cmphex(get64(hello + 8), ==, NBD_IHAVEOPT);
    g_assert_cmphex(get16(hello + 16), ==, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    guint8 cf[4];
    put32(cf, client_flags);
    send_all(fd, cf, 4);
}

static void send_option(int fd, guint32 option, const void *data, guint32 len)
{
    guint8 hdr[16];
    put64(hdr, NBD_IHAVEOPT);
    put32(hdr + 8, option);
    put32(hdr + 12, len);
    send_all(fd, hdr, 16);
    if (len)
        send_all(fd, data, len);
}

typedef struct {
    guint32 option, type, len;
    guint8 *data;
} OptReply;

static void opt_reply_clear(OptReply *r)
{
    g_clear_pointer(&r->data, g_free);
}

static gboolean recv_option_reply(int fd, OptReply *r)
{
    guint8 hdr[20];
    if (!recv_all(fd, hdr, sizeof(hdr)))
        return FALSE;
    g_assert_cmphex(get64(hdr), ==, NBD_OPT_REPLY_MAGIC);
    r->option = get32(hdr + 8);
    r->type = get32(hdr + 12);
    r->len = get32(hdr + 16);
    g_assert_cmpuint(r->len, <=, 1 << 20);
    g_free(r->data);
    r->data = g_malloc0(r->len + 1);
    g_assert_true(recv_all(fd, r->data, r->len));
    return TRUE;
}

static guint32 option_expect_single(int fd, guint32 option, const void *data, guint32 len)
{
    OptReply r = { 0 };
    send_option(fd, option, data, len);
    g_assert_true(recv_option_reply(fd, &r));
    g_assert_cmpuint(r.option, ==, option);
    guint32 type = r.type;
    opt_reply_clear(&r);
    return type;
}

/* Builds GO/INFO data for NAME with the info requests given. */
static GByteArray *info_request(const char *name, const guint16 *reqs, int nreqs)
{
    GByteArray *b = g_byte_array_new();
    guint8 tmp[4];
    put32(tmp, (guint32)strlen(name));
    g_byte_array_append(b, tmp, 4);
    g_byte_array_append(b, (const guint8 *)name, (guint)strlen(name));
    put16(tmp, (guint16)nreqs);
    g_byte_array_append(b, tmp, 2);
    for (int i = 0; i < nreqs; i++) {
        put16(tmp, reqs[i]);
        g_byte_array_append(b, tmp, 2);
    }
    return b;
}

typedef struct {
    guint64 size;
    guint16 flags;
    guint32 min_block, pref_block, max_block;
    char *name, *description;
} ExportInfo;

static void export_info_clear(ExportInfo *i)
{
    g_clear_pointer(&i->name, g_free);
    g_clear_pointer(&i->description, g_free);
}

/* Sends GO or INFO; returns the final reply type, and fills INFO. */
static guint32 client_info(int fd, guint32 option, const char *name, ExportInfo *info)
{
    static const guint16 reqs[] = { NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE };
    g_autoptr(GByteArray) b = info_request(name, reqs, 3);
    send_option(fd, option, b->data, b->len);
    OptReply r = { 0 };
    memset(info, 0, sizeof(*info));
    for (;;) {
        g_assert_true(recv_option_reply(fd, &r));
        g_assert_cmpuint(r.option, ==, option);
        if (r.type != NBD_REP_INFO)
            break;
        g_assert_cmpuint(r.len, >=, 2);
        switch (get16(r.data)) {
        case NBD_INFO_EXPORT:
            g_assert_cmpuint(r.len, ==, 12);
            info->size = get64(r.data + 2);
            info->flags = get16(r.data + 10);
            break;
        case NBD_INFO_NAME:
            info->name = g_strndup((char *)r.data + 2, r.len - 2);
            break;
        case NBD_INFO_DESCRIPTION:
            info->description = g_strndup((char *)r.data + 2, r.len - 2);
            break;
        case NBD_INFO_BLOCK_SIZE:
            g_assert_cmpuint(r.len, ==, 14);
            info->min_block = get32(r.data + 2);
            info->pref_block = get32(r.data + 6);
            info->max_block = get32(r.data + 10);
            break;
        }
    }
    guint32 type = r.type;
    opt_reply_clear(&r);
    return type;
}

static GByteArray *meta_request(const char *name, const char *const *queries)
{
    GByteArray *b = g_byte_array_new();
    guint8 tmp[4];
    put32(tmp, (guint32)strlen(name));
    g_byte_array_append(b, tmp, 4);
    g_byte_array_append(b, (const guint8 *)name, (guint)strlen(name));
    guint32 n = queries ? g_strv_length((char **)queries) : 0;
    put32(tmp, n);
    g_byte_array_append(b, tmp, 4);
    for (guint32 i = 0; i < n; i++) {
        put32(tmp, (guint32)strlen(queries[i]));
        g_byte_array_append(b, tmp, 4);
        g_byte_array_append(b, (const guint8 *)queries[i], (guint)strlen(queries[i]));
    }
    return b;
}

/* Sends LIST/SET_META_CONTEXT; returns the final reply type and the
 * contexts as "id=name" strings in *OUT. */
static guint32 client_meta(int fd, guint32 option, const char *name, const char *const *queries, GPtrArray **out)
{
    g_autoptr(GByteArray) b = meta_request(name, queries);
    send_option(fd, option, b->data, b->len);
    *out = g_ptr_array_new_with_free_func(g_free);
    OptReply r = { 0 };
    for (;;) {
        g_assert_true(recv_option_reply(fd, &r));
        if (r.type != NBD_REP_META_CONTEXT)
            break;
        g_assert_cmpuint(r.len, >, 4);
        g_ptr_array_add(*out, g_strdup_printf("%u=%.*s", get32(r.data), (int)r.len - 4, (char *)r.data + 4));
    }
    guint32 type = r.type;
    opt_reply_clear(&r);
    return type;
}

static gboolean strv_has(GPtrArray *a, const char *s)
{
    for (guint i = 0; i < a->len; i++)
        if (strcmp(a->pdata[i], s) == 0)
            return TRUE;
    return FALSE;
}

/* Connects and enters transmission on NAME; STRUCTURED negotiates structured
 * replies and selects the contexts in QUERIES (if any). */
static int client_open(Fixture *f, const char *name, gboolean structured, const char *const *queries,
                       ExportInfo *info)
{
    int fd = client_connect(f->server);
    client_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    if (structured) {
        g_assert_cmpuint(option_expect_single(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0), ==, NBD_REP_ACK);
        if (queries) {
            g_autoptr(GPtrArray) ctx = NULL;
            g_assert_cmpuint(client_meta(fd, NBD_OPT_SET_META_CONTEXT, name, queries, &ctx), ==, NBD_REP_ACK);
        }
    }
    ExportInfo local;
    ExportInfo *i = info ? info : &local;
    g_assert_cmpuint(client_info(fd, NBD_OPT_GO, name, i), ==, NBD_REP_ACK);
    if (!info)
        export_info_clear(&local);
    return fd;
}

static void send_request(int fd, guint16 flags, guint16 type, guint64 cookie, guint64 offset, guint32 len,
                         const void *payload)
{
    guint8 hdr[NBD_REQUEST_SIZE];
    put32(hdr, NBD_REQUEST_MAGIC);
    put16(hdr + 4, flags);
    put16(hdr + 6, type);
    put64(hdr + 8, cookie);
    put64(hdr + 16, offset);
    put32(hdr + 24, len);
    send_all(fd, hdr, sizeof(hdr));
    if (payload)
        send_all(fd, payload, len);
}

/* Reads a simple reply; returns its error, checks the cookie. */
static guint32 recv_simple(int fd, guint64 cookie, void *data, gsize len)
{
    guint8 hdr[NBD_SIMPLE_REPLY_SIZE];
    g_assert_true(recv_all(fd, hdr, sizeof(hdr)));
    g_assert_cmphex(get32(hdr), ==, NBD_SIMPLE_REPLY_MAGIC);
    g_assert_cmpuint(get64(hdr + 8), ==, cookie);
    guint32 err = get32(hdr + 4);
    if (err == 0 && data)
        g_assert_true(recv_all(fd, data, len));
    return err;
}

static guint32 simple_cmd(int fd, guint16 flags, guint16 type, guint64 offset, guint32 len, const void *payload)
{
    static guint64 cookie = 1000;
    guint64 c = ++cookie;
    send_request(fd, flags, type, c, offset, len, payload);
    return recv_simple(fd, c, NULL, 0);
}

typedef struct {
    guint16 flags, type;
    guint64 cookie;
    guint32 len;
    guint8 *payload;
} Chunk;

static void recv_chunk(int fd, Chunk *c)
{
    guint8 hdr[NBD_STRUCTURED_REPLY_SIZE];
    g_assert_true(recv_all(fd, hdr, sizeof(hdr)));
    g_assert_cmphex(get32(hdr), ==, NBD_STRUCTURED_REPLY_MAGIC);
    c->flags = get16(hdr + 4);
    c->type = get16(hdr + 6);
    c->cookie = get64(hdr + 8);
    c->len = get32(hdr + 16);
    g_assert_cmpuint(c->len, <=, NBD_MAX_PAYLOAD + 8);
    c->payload = g_malloc(c->len + 1);
    g_assert_true(recv_all(fd, c->payload, c->len));
}

/* A structured READ reply assembled into BUF; returns the error of an error
 * chunk (0 if none) and counts data/hole chunks. */
static guint32 recv_structured_read(int fd, guint64 cookie, guint64 offset, guint8 *buf, guint32 len,
                                    int *ndata, int *nholes)
{
    guint32 error = 0;
    guint64 covered = 0;
    *ndata = *nholes = 0;
    for (;;) {
        Chunk c;
        recv_chunk(fd, &c);
        g_assert_cmpuint(c.cookie, ==, cookie);
        if (c.type == NBD_REPLY_TYPE_OFFSET_DATA) {
            guint64 o = get64(c.payload) - offset;
            g_assert_cmpuint(o + c.len - 8, <=, len);
            memcpy(buf + o, c.payload + 8, c.len - 8);
            covered += c.len - 8;
            (*ndata)++;
        } else if (c.type == NBD_REPLY_TYPE_OFFSET_HOLE) {
            g_assert_cmpuint(c.len, ==, 12);
            guint64 o = get64(c.payload) - offset;
            guint32 n = get32(c.payload + 8);
            g_assert_cmpuint(o + n, <=, len);
            memset(buf + o, 0, n);
            covered += n;
            (*nholes)++;
        } else if (c.type == NBD_REPLY_TYPE_ERROR || c.type == NBD_REPLY_TYPE_ERROR_OFFSET) {
            error = get32(c.payload);
            g_assert_cmpuint(c.len, ==, 6 + get16(c.payload + 4) + (c.type == NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0));
        } else {
            g_assert_cmpuint(c.type, ==, NBD_REPLY_TYPE_NONE);
        }
        gboolean done = c.flags & NBD_REPLY_FLAG_DONE;
        g_free(c.payload);
        if (done)
            break;
    }
    if (!error)
        g_assert_cmpuint(covered, ==, len);
    return error;
}

/* ==================================================================
 * Tests: negotiation
 * ================================================================== */

static void test_greeting_and_bad_client_flags(Fixture *f, gconstpointer data)
{
    int fd = client_connect(f->server);
    client_handshake(fd, 0); /* no FIXED_NEWSTYLE: refused */
    assert_closed(fd);
    close(fd);
    fd = client_connect(f->server);
    client_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE | (1u << 7)); /* unknown bit */
    assert_closed(fd);
    close(fd);
}

static void test_list(Fixture *f, gconstpointer data)
{
    int fd = client_connect(f->server);
    client_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    send_option(fd, NBD_OPT_LIST, NULL, 0);
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    OptReply r = { 0 };
    for (;;) {
        g_assert_true(recv_option_reply(fd, &r));
        if (r.type != NBD_REP_SERVER)
            break;
        guint32 nlen = get32(r.data);
        g_assert_cmpuint(nlen + 4, <=, r.len);
        g_ptr_array_add(names, g_strdup_printf("%.*s|%.*s", (int)nlen, r.data + 4, (int)(r.len - 4 - nlen),
                                               r.data + 4 + nlen));
    }
    g_assert_cmpuint(r.type, ==, NBD_REP_ACK);
    g_assert_cmpuint(names->len, ==, 3);
    g_assert_true(strv_has(names, "|the default"));
    g_assert_true(strv_has(names, "ro|"));
    g_assert_true(strv_has(names, "small|small one"));
    /* LIST with data is invalid; the session goes on. */
    g_assert_cmpuint(option_expect_single(fd, NBD_OPT_LIST, "x", 1), ==, NBD_REP_ERR_INVALID);
    g_assert_cmpuint(option_expect_single(fd, NBD_OPT_ABORT, NULL, 0), ==, NBD_REP_ACK);
    assert_closed(fd);
    opt_reply_clear(&r);
    close(fd);
}

static void test_info(Fixture *f, gconstpointer data)
{
    int fd = client_connect(f->server);
    client_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    ExportInfo i;
    g_assert_cmpuint(client_info(fd, NBD_OPT_INFO, "small", &i), ==, NBD_REP_ACK);
    g_assert_cmpuint(i.size, ==, 1 * MIB);
    g_assert_cmpstr(i.name, ==, "small");
    g_assert_cmpstr(i.description, ==, "small one");
    g_assert_cmpuint(i.min_block, ==, 512);
    g_assert_cmpuint(i.pref_block, ==, 4096);
    g_assert_cmpuint(i.max_block, ==, NBD_MAX_PAYLOAD);
    g_assert_cmphex(i.flags, ==, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE |
                                     NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO);
    export_info_clear(&i);

    g_assert_cmpuint(client_info(fd, NBD_OPT_INFO, "ro", &i), ==, NBD_REP_ACK);
    g_assert_cmphex(i.flags, ==, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE |
                                     NBD_FLAG_READ_ONLY | NBD_FLAG_ROTATIONAL);
    g_assert_null(i.description);
    export_info_clear(&i);

    /* Structured replies add DF; the default export has multi-conn. */
    g_assert_cmpuint(option_expect_single(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0), ==, NBD_REP_ACK);
    g_assert_cmpuint(option_expect_single(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0), ==, NBD_REP_ERR_INVALID);
    g_assert_cmpuint(client_info(fd, NBD_OPT_INFO, "", &i), ==, NBD_REP_ACK);
    g_assert_true(i.flags & NBD_FLAG_SEND_DF);
    g_assert_true(i.flags & NBD_FLAG_CAN_MULTI_CONN);
    g_assert_cmpuint(i.size, ==, 64 * MIB);
    export_info_clear(&i);

    g_assert_cmpuint(client_info(fd, NBD_OPT_INFO, "nope", &i), ==, NBD_REP_ERR_UNKNOWN);
    export_info_clear(&i);
    /* Malformed: the name length overruns the data. */
    guint8 bad[6] = { 0, 0, 0, 9, 0, 0 };
    g_assert_cmpuint(option_expect_single(fd, NBD_OPT_GO, bad, sizeof(bad)), ==, NBD_REP_ERR_INVALID);
    /* Request count that does not match the length. */
    guint8 bad2[8] = { 0, 0, 0, 0, 0, 2, 0, 1 };
    g_assert_cmpuint(option_expect_single(fd, NBD_OPT_INFO, bad2, sizeof(bad2)), ==, NBD_REP_ERR_INVALID);
    g_assert_cmpuint(option_expect_single(fd, 4242, "abc", 3), ==, NBD_REP_ERR_UNSUP);
    g_assert_cmpuint(option_expect_single(fd, NBD_OPT_STARTTLS, NULL, 0), ==, NBD_REP_ERR_POLICY);
    /* Oversize option data is read past and refused. */
    g_autofree guint8 *big = g_malloc0(NBD_MAX_OPTION + 100);
    g_assert_cmpuint(option_expect_single(fd, NBD_OPT_INFO, big, NBD_MAX_OPTION + 100), ==, NBD_REP_ERR_TOO_BIG);
    /* And still works. */
    g_assert_cmpuint(client_info(fd, NBD_OPT_GO, "ro", &i), ==, NBD_REP_ACK);
    export_info_clear(&i);
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_FLUSH, 0, 0, NULL), ==, 0);
    send_request(fd, 0, NBD_CMD_DISC, 1, 0, 0, NULL);
    assert_closed(fd);
    close(fd);
}

static void test_export_name(Fixture *f, gconstpointer data)
{
    for (int zeroes = 0; zeroes < 2; zeroes++) {
        int fd = client_connect(f->server);
        client_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE | (zeroes ? 0 : NBD_FLAG_C_NO_ZEROES));
        send_option(fd, NBD_OPT_EXPORT_NAME, "ro", 2);
        guint8 buf[10 + 124];
        g_assert_true(recv_all(fd, buf, zeroes ? sizeof(buf) : 10));
        g_assert_cmpuint(get64(buf), ==, 4 * MIB);
        g_assert_true(get16(buf + 8) & NBD_FLAG_READ_ONLY);
        for (int i = 10; zeroes && i < (int)sizeof(buf); i++)
            g_assert_cmpuint(buf[i], ==, 0);
        /* Transmission works right after (no stray zeroes in the stream). */
        guint8 data4k[4096];
        send_request(fd, 0, NBD_CMD_READ, 7, 0, sizeof(data4k), NULL);
        g_assert_cmpuint(recv_simple(fd, 7, data4k, sizeof(data4k)), ==, 0);
        close(fd);
    }
    int fd = client_connect(f->server);
    client_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    send_option(fd, NBD_OPT_EXPORT_NAME, "missing", 7);
    assert_closed(fd);
    close(fd);
}

static void test_meta_context_negotiation(Fixture *f, gconstpointer data)
{
    int fd = client_connect(f->server);
    client_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    g_autoptr(GPtrArray) ctx = NULL;
    const char *const base_q[] = { "base:allocation", NULL };
    /* SET needs structured replies first. */
    g_assert_cmpuint(client_meta(fd, NBD_OPT_SET_META_CONTEXT, "small", base_q, &ctx), ==, NBD_REP_ERR_INVALID);
    g_clear_pointer(&ctx, g_ptr_array_unref);
    g_assert_cmpuint(option_expect_single(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0), ==, NBD_REP_ACK);

    /* LIST with no queries: everything the export offers. */
    g_assert_cmpuint(client_meta(fd, NBD_OPT_LIST_META_CONTEXT, "small", NULL, &ctx), ==, NBD_REP_ACK);
    g_assert_cmpuint(ctx->len, ==, 2);
    g_assert_true(strv_has(ctx, "0=base:allocation"));
    g_assert_true(strv_has(ctx, "0=qemu:allocation-depth"));
    g_clear_pointer(&ctx, g_ptr_array_unref);
    /* The default export has no allocation depth. */
    g_assert_cmpuint(client_meta(fd, NBD_OPT_LIST_META_CONTEXT, "", NULL, &ctx), ==, NBD_REP_ACK);
    g_assert_cmpuint(ctx->len, ==, 1);
    g_clear_pointer(&ctx, g_ptr_array_unref);
    /* Namespace wildcards, and unknown namespaces ignored. */
    const char *const wild_base[] = { "base:", "x-unknown:thing", NULL };
    g_assert_cmpuint(client_meta(fd, NBD_OPT_LIST_META_CONTEXT, "small", wild_base, &ctx), ==, NBD_REP_ACK);
    g_assert_cmpuint(ctx->len, ==, 1);
    g_assert_true(strv_has(ctx, "0=base:allocation"));
    g_clear_pointer(&ctx, g_ptr_array_unref);
    const char *const wild_qemu[] = { "qemu:", NULL };
    g_assert_cmpuint(client_meta(fd, NBD_OPT_LIST_META_CONTEXT, "small", wild_qemu, &ctx), ==, NBD_REP_ACK);
    g_assert_cmpuint(ctx->len, ==, 1);
    g_assert_true(strv_has(ctx, "0=qemu:allocation-depth"));
    g_clear_pointer(&ctx, g_ptr_array_unref);
    /* SET: a wildcard selects nothing; exact names select with ids. */
    g_assert_cmpuint(client_meta(fd, NBD_OPT_SET_META_CONTEXT, "small", wild_base, &ctx), ==, NBD_REP_ACK);
    g_assert_cmpuint(ctx->len, ==, 0);
    g_clear_pointer(&ctx, g_ptr_array_unref);
    const char *const both[] = { "base:allocation", "qemu:allocation-depth", NULL };
    g_assert_cmpuint(client_meta(fd, NBD_OPT_SET_META_CONTEXT, "small", both, &ctx), ==, NBD_REP_ACK);
    g_assert_cmpuint(ctx->len, ==, 2);
    g_assert_true(strv_has(ctx, "1=base:allocation"));
    g_assert_true(strv_has(ctx, "2=qemu:allocation-depth"));
    g_clear_pointer(&ctx, g_ptr_array_unref);
    g_assert_cmpuint(client_meta(fd, NBD_OPT_SET_META_CONTEXT, "nope", both, &ctx), ==, NBD_REP_ERR_UNKNOWN);
    g_clear_pointer(&ctx, g_ptr_array_unref);
    /* A query that overruns the option. */
    guint8 bad[12] = { 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 50 };
    g_assert_cmpuint(option_expect_single(fd, NBD_OPT_LIST_META_CONTEXT, bad, sizeof(bad)), ==,
                     NBD_REP_ERR_INVALID);
    close(fd);
}

/* ==================================================================
 * Tests: transmission
 * ================================================================== */

static void fill_pattern(guint8 *buf, gsize len, guint seed)
{
    for (gsize i = 0; i < len; i++)
        buf[i] = (guint8)(i * 31 + seed * 7 + (i >> 9));
}

static void test_simple_io(Fixture *f, gconstpointer data)
{
    int fd = client_open(f, "", FALSE, NULL, NULL);
    guint8 w[8192], r[8192];
    fill_pattern(w, sizeof(w), 1);
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_WRITE, 1 * MIB + 100, sizeof(w), w), ==, 0);
    int flushes = g_atomic_int_get(&g_flushes);
    g_assert_cmpuint(simple_cmd(fd, NBD_CMD_FLAG_FUA, NBD_CMD_WRITE, 3 * MIB, sizeof(w), w), ==, 0);
    g_assert_cmpint(g_atomic_int_get(&g_flushes), >, flushes);
    send_request(fd, 0, NBD_CMD_READ, 42, 1 * MIB + 100, sizeof(r), NULL);
    g_assert_cmpuint(recv_simple(fd, 42, r, sizeof(r)), ==, 0);
    g_assert_cmpmem(w, sizeof(w), r, sizeof(r));
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_FLUSH, 0, 0, NULL), ==, 0);
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_CACHE, 0, 2 * MIB, NULL), ==, 0);
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_TRIM, 1 * MIB, 4096, NULL), ==, 0);
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_WRITE_ZEROES, 3 * MIB, 100, NULL), ==, 0);
    send_request(fd, 0, NBD_CMD_READ, 43, 1 * MIB, 8192, NULL);
    g_assert_cmpuint(recv_simple(fd, 43, r, sizeof(r)), ==, 0);
    for (int i = 0; i < 4096; i++)
        g_assert_cmpuint(r[i], ==, 0);
    g_assert_cmpmem(r + 4096, 4096, w + 4096 - 100, 4096);
    /* The server's image holds what we wrote. */
    guint8 direct[100];
    g_assert_true(vmm_block_pread(f->disk, 3 * MIB, 100, direct, NULL));
    for (int i = 0; i < 100; i++)
        g_assert_cmpuint(direct[i], ==, 0);
    send_request(fd, 0, NBD_CMD_DISC, 1, 0, 0, NULL);
    assert_closed(fd);
    close(fd);
}

static void test_request_errors(Fixture *f, gconstpointer data)
{
    int fd = client_open(f, "", FALSE, NULL, NULL);
    guint8 w[4096] = { 1 };
    /* Past the end. */
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_READ, 64 * MIB - 512, 1024, NULL), ==, NBD_EINVAL);
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_WRITE, 64 * MIB - 512, 4096, w), ==, NBD_ENOSPC);
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_WRITE_ZEROES, G_MAXUINT64 - 10, 4096, NULL), ==, NBD_ENOSPC);
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_TRIM, 64 * MIB, 1, NULL), ==, NBD_EINVAL);
    /* Unknown command, bad flags, DF without structured replies. */
    g_assert_cmpuint(simple_cmd(fd, 0, 77, 0, 0, NULL), ==, NBD_EINVAL);
    g_assert_cmpuint(simple_cmd(fd, NBD_CMD_FLAG_NO_HOLE, NBD_CMD_WRITE, 0, sizeof(w), w), ==, NBD_EINVAL);
    g_assert_cmpuint(simple_cmd(fd, NBD_CMD_FLAG_DF, NBD_CMD_READ, 0, 512, NULL), ==, NBD_EINVAL);
    g_assert_cmpuint(simple_cmd(fd, 1 << 12, NBD_CMD_FLUSH, 0, 0, NULL), ==, NBD_EINVAL);
    /* Block status without contexts. */
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_BLOCK_STATUS, 0, 512, NULL), ==, NBD_EINVAL);
    /* Oversize read: EINVAL, no data. */
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_READ, 0, NBD_MAX_PAYLOAD + 512, NULL), ==, NBD_EINVAL);
    /* Oversize write under twice the limit: payload read past, EINVAL. */
    guint32 big_len = NBD_MAX_PAYLOAD + 4096;
    g_autofree guint8 *big = g_malloc0(big_len);
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_WRITE, 0, big_len, big), ==, NBD_EINVAL);
    /* The stream is still in sync. */
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_WRITE, 0, sizeof(w), w), ==, 0);
    close(fd);

    /* Read-only export. */
    fd = client_open(f, "ro", FALSE, NULL, NULL);
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_WRITE, 0, sizeof(w), w), ==, NBD_EPERM);
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_TRIM, 0, 4096, NULL), ==, NBD_EPERM);
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_WRITE_ZEROES, 0, 4096, NULL), ==, NBD_EPERM);
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_FLUSH, 0, 0, NULL), ==, 0);
    close(fd);
}

/* ---- NBD_OPT_VMM_GUEST_MEMORY (proto/nbd.h) ---- */

#define GUEST_RAM (1 * MIB)

/* A connection given GUEST's RAM (NULL: none), in transmission on NAME after
 * asking for guest memory; *ACK says what the server answered. */
static int guest_open(Fixture *f, guint8 *guest, const char *name, guint32 *ack)
{
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
    struct timeval tv = { .tv_sec = 10 };
    setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    g_autoptr(GError) err = NULL;
    NbdGuestMemory mem = { guest, GUEST_RAM };
    g_assert_true(nbd_server_serve_fd_guest(f->server, sv[0], guest ? &mem : NULL, &err));
    client_handshake(sv[1], NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    if (guest)
        g_assert_cmphex(option_expect_single(sv[1], NBD_OPT_VMM_GUEST_MEMORY, "x", 1), ==, NBD_REP_ERR_INVALID);
    *ack = option_expect_single(sv[1], NBD_OPT_VMM_GUEST_MEMORY, NULL, 0);
    ExportInfo info;
    g_assert_cmpuint(client_info(sv[1], NBD_OPT_GO, name, &info), ==, NBD_REP_ACK);
    export_info_clear(&info);
    return sv[1];
}

typedef struct {
    guint64 at;
    guint32 len;
} Seg;

/* A READ or WRITE whose data is the segments SEGS of guest memory; COUNT may
 * differ from NSEGS (a lie about the list). Returns the reply's error. */
static guint32 guest_cmd(int fd, guint16 type, guint16 flags, guint64 offset, guint32 len, const Seg *segs,
                         guint nsegs, guint32 count)
{
    static guint64 cookie = 5000;
    guint64 c = ++cookie;
    send_request(fd, flags | NBD_CMD_FLAG_VMM_GUEST_MEMORY, type, c, offset, len, NULL);
    guint8 head[NBD_VMM_SEGMENT_LIST_HEADER] = { 0 };
    put32(head, count);
    send_all(fd, head, sizeof(head));
    for (guint i = 0; i < nsegs; i++) {
        guint8 e[NBD_VMM_SEGMENT_SIZE] = { 0 };
        put64(e, segs[i].at);
        put32(e + 8, segs[i].len);
        send_all(fd, e, sizeof(e));
    }
    return recv_simple(fd, c, NULL, 0);
}

static void test_guest_memory(Fixture *f, gconstpointer data)
{
    g_autofree guint8 *guest = g_malloc0(GUEST_RAM);
    guint32 ack;
    /* A connection without the guest's RAM (any remote client) does not know
     * the option, and the flag is not valid there. */
    int plain = guest_open(f, NULL, "", &ack);
    g_assert_cmphex(ack, ==, NBD_REP_ERR_UNSUP);
    guint8 w[4096];
    fill_pattern(w, sizeof(w), 3);
    g_assert_cmpuint(simple_cmd(plain, NBD_CMD_FLAG_VMM_GUEST_MEMORY, NBD_CMD_WRITE, 0, sizeof(w), w), ==,
                     NBD_EINVAL);
    g_assert_cmpuint(simple_cmd(plain, 0, NBD_CMD_WRITE, 0, sizeof(w), w), ==, 0);
    close(plain);

    int fd = guest_open(f, guest, "", &ack);
    g_assert_cmphex(ack, ==, NBD_REP_ACK);
    /* Two pieces, second first: the image gets them in list order. */
    fill_pattern(guest + 8192, 4096, 1);
    fill_pattern(guest + 4096, 4096, 2);
    Seg two[] = { { 8192, 4096 }, { 4096, 4096 } };
    g_assert_cmpuint(guest_cmd(fd, NBD_CMD_WRITE, 0, 2 * MIB, 8192, two, 2, 2), ==, 0);
    guint8 direct[8192];
    g_assert_true(vmm_block_pread(f->disk, 2 * MIB, 8192, direct, NULL));
    g_assert_cmpmem(direct, 4096, guest + 8192, 4096);
    g_assert_cmpmem(direct + 4096, 4096, guest + 4096, 4096);
    /* FUA flushes. */
    int flushes = g_atomic_int_get(&g_flushes);
    g_assert_cmpuint(guest_cmd(fd, NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 3 * MIB, 8192, two, 2, 2), ==, 0);
    g_assert_cmpint(g_atomic_int_get(&g_flushes), >, flushes);
    /* A read lands where its list says. */
    Seg one[] = { { GUEST_RAM - 8192, 8192 } };
    g_assert_cmpuint(guest_cmd(fd, NBD_CMD_READ, 0, 2 * MIB, 8192, one, 1, 1), ==, 0);
    g_assert_cmpmem(guest + GUEST_RAM - 8192, 8192, direct, 8192);

    /* Bad lists: EINVAL, nothing written, the stream stays in sync. */
    Seg outside[] = { { GUEST_RAM - 4096, 8192 } };
    Seg wrap[] = { { G_MAXUINT64 - 100, 4096 } };
    Seg empty[] = { { 0, 0 }, { 0, 4096 } };
    Seg short_list[] = { { 0, 4096 } };
    g_assert_cmpuint(guest_cmd(fd, NBD_CMD_WRITE, 0, 0, 8192, outside, 1, 1), ==, NBD_EINVAL);
    g_assert_cmpuint(guest_cmd(fd, NBD_CMD_READ, 0, 0, 4096, wrap, 1, 1), ==, NBD_EINVAL);
    g_assert_cmpuint(guest_cmd(fd, NBD_CMD_WRITE, 0, 0, 4096, empty, 2, 2), ==, NBD_EINVAL);
    g_assert_cmpuint(guest_cmd(fd, NBD_CMD_WRITE, 0, 0, 8192, short_list, 1, 1), ==, NBD_EINVAL);
    g_assert_cmpuint(guest_cmd(fd, NBD_CMD_READ, 0, 64 * MIB, 4096, short_list, 1, 1), ==, NBD_EINVAL);
    /* Past the end of the export (the list is still read past). */
    g_assert_cmpuint(guest_cmd(fd, NBD_CMD_WRITE, 0, 64 * MIB - 2048, 4096, short_list, 1, 1), ==, NBD_ENOSPC);
    /* Only READ and WRITE take the flag. */
    g_assert_cmpuint(simple_cmd(fd, NBD_CMD_FLAG_VMM_GUEST_MEMORY, NBD_CMD_FLUSH, 0, 0, NULL), ==, NBD_EINVAL);
    g_assert_true(vmm_block_pread(f->disk, 0, 4096, direct, NULL));
    g_assert_cmpmem(direct, 4096, w, 4096);
    g_assert_cmpuint(guest_cmd(fd, NBD_CMD_READ, 0, 2 * MIB, 4096, short_list, 1, 1), ==, 0);
    g_assert_cmpmem(guest, 4096, guest + 8192, 4096);
    /* A list longer than the limit ends the connection (only this one). */
    send_request(fd, NBD_CMD_FLAG_VMM_GUEST_MEMORY, NBD_CMD_WRITE, 1, 0, 4096, NULL);
    guint8 head[NBD_VMM_SEGMENT_LIST_HEADER] = { 0 };
    put32(head, NBD_VMM_MAX_SEGMENTS + 1);
    send_all(fd, head, sizeof(head));
    assert_closed(fd);
    close(fd);

    /* A read-only export refuses guest-memory writes and still serves reads. */
    fd = guest_open(f, guest, "ro", &ack);
    g_assert_cmphex(ack, ==, NBD_REP_ACK);
    g_assert_cmpuint(guest_cmd(fd, NBD_CMD_WRITE, 0, 0, 4096, short_list, 1, 1), ==, NBD_EPERM);
    g_assert_cmpuint(guest_cmd(fd, NBD_CMD_READ, 0, 0, 4096, short_list, 1, 1), ==, 0);
    close(fd);
}

static void test_disconnects_only_offender(Fixture *f, gconstpointer data)
{
    int good = client_open(f, "", FALSE, NULL, NULL);
    /* Bad magic. */
    int bad = client_open(f, "", FALSE, NULL, NULL);
    guint8 junk[NBD_REQUEST_SIZE];
    memset(junk, 0xab, sizeof(junk));
    send_all(bad, junk, sizeof(junk));
    assert_closed(bad);
    close(bad);
    /* A write far over the limit. */
    bad = client_open(f, "", FALSE, NULL, NULL);
    send_request(bad, 0, NBD_CMD_WRITE, 9, 0, 0xfffffff0u, NULL);
    assert_closed(bad);
    close(bad);
    /* Requests queued before the bad magic still get their replies. */
    bad = client_open(f, "", FALSE, NULL, NULL);
    send_request(bad, 0, NBD_CMD_FLUSH, 5, 0, 0, NULL);
    send_all(bad, junk, sizeof(junk));
    g_assert_cmpuint(recv_simple(bad, 5, NULL, 0), ==, 0);
    assert_closed(bad);
    close(bad);
    /* Half a request, then hang up. */
    bad = client_open(f, "", FALSE, NULL, NULL);
    send_all(bad, junk, 10);
    close(bad);

    guint8 w[512] = { 9 };
    g_assert_cmpuint(simple_cmd(good, 0, NBD_CMD_WRITE, 0, sizeof(w), w), ==, 0);
    close(good);
}

static void test_structured_read(Fixture *f, gconstpointer data)
{
    int fd = client_open(f, "", TRUE, NULL, NULL);
    guint8 w[8192];
    fill_pattern(w, sizeof(w), 3);
    /* data | hole | data over 24 KiB at 8 MiB */
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_WRITE, 8 * MIB, sizeof(w), w), ==, 0);
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_WRITE, 8 * MIB + 16384, sizeof(w), w), ==, 0);
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_TRIM, 8 * MIB + 8192, 8192, NULL), ==, 0);
    guint8 r[24576];
    memset(r, 0xee, sizeof(r));
    int nd, nh;
    send_request(fd, 0, NBD_CMD_READ, 50, 8 * MIB, sizeof(r), NULL);
    g_assert_cmpuint(recv_structured_read(fd, 50, 8 * MIB, r, sizeof(r), &nd, &nh), ==, 0);
    g_assert_cmpint(nd, ==, 2);
    g_assert_cmpint(nh, ==, 1);
    g_assert_cmpmem(r, 8192, w, 8192);
    g_assert_cmpmem(r + 16384, 8192, w, 8192);
    for (int i = 8192; i < 16384; i++)
        g_assert_cmpuint(r[i], ==, 0);
    /* DF: one data chunk with the zeroes in it. */
    memset(r, 0xee, sizeof(r));
    send_request(fd, NBD_CMD_FLAG_DF, NBD_CMD_READ, 51, 8 * MIB, sizeof(r), NULL);
    g_assert_cmpuint(recv_structured_read(fd, 51, 8 * MIB, r, sizeof(r), &nd, &nh), ==, 0);
    g_assert_cmpint(nd, ==, 1);
    g_assert_cmpint(nh, ==, 0);
    for (int i = 8192; i < 16384; i++)
        g_assert_cmpuint(r[i], ==, 0);
    /* Zero length. */
    send_request(fd, 0, NBD_CMD_READ, 52, 0, 0, NULL);
    g_assert_cmpuint(recv_structured_read(fd, 52, 0, r, 0, &nd, &nh), ==, 0);
    /* An I/O error becomes an error chunk. */
    g_fail_read_offset = 8 * MIB + 100;
    send_request(fd, 0, NBD_CMD_READ, 53, 8 * MIB, sizeof(r), NULL);
    g_assert_cmpuint(recv_structured_read(fd, 53, 8 * MIB, r, sizeof(r), &nd, &nh), ==, NBD_EIO);
    g_fail_read_offset = G_MAXUINT64;
    /* Past the end: error chunk too. */
    send_request(fd, 0, NBD_CMD_READ, 54, 64 * MIB, 512, NULL);
    g_assert_cmpuint(recv_structured_read(fd, 54, 64 * MIB, r, 512, &nd, &nh), ==, NBD_EINVAL);
    /* Oversize structured read: EOVERFLOW. */
    send_request(fd, 0, NBD_CMD_READ, 55, 0, NBD_MAX_PAYLOAD + 1, NULL);
    g_assert_cmpuint(recv_structured_read(fd, 55, 0, r, 0, &nd, &nh), ==, NBD_EOVERFLOW);
    close(fd);
}

/* Block status chunks: returns descriptors as (length, flags) pairs per id. */
static void recv_block_status(int fd, guint64 cookie, GArray *base, GArray *depth, guint32 *error)
{
    *error = 0;
    for (;;) {
        Chunk c;
        recv_chunk(fd, &c);
        g_assert_cmpuint(c.cookie, ==, cookie);
        if (c.type == NBD_REPLY_TYPE_BLOCK_STATUS) {
            g_assert_cmpuint((c.len - 4) % 8, ==, 0);
            g_assert_cmpuint(c.len, >=, 12);
            guint32 id = get32(c.payload);
            GArray *out = id == 1 ? base : depth;
            g_assert_true(id == 1 || id == 2);
            for (guint32 k = 4; k < c.len; k += 4) {
                guint32 v = get32(c.payload + k);
                g_array_append_val(out, v);
            }
        } else if (c.type == NBD_REPLY_TYPE_ERROR) {
            *error = get32(c.payload);
        } else {
            g_assert_cmpuint(c.type, ==, NBD_REPLY_TYPE_NONE);
        }
        gboolean done = c.flags & NBD_REPLY_FLAG_DONE;
        g_free(c.payload);
        if (done)
            return;
    }
}

static void test_block_status(Fixture *f, gconstpointer data)
{
    const char *const both[] = { "base:allocation", "qemu:allocation-depth", NULL };
    int fd = client_open(f, "small", TRUE, both, NULL);
    guint8 w[4096];
    fill_pattern(w, sizeof(w), 5);
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_WRITE, 4096, sizeof(w), w), ==, 0);
    /* WRITE_ZEROES with NO_HOLE stays allocated; without it is unmapped. */
    g_assert_cmpuint(simple_cmd(fd, NBD_CMD_FLAG_NO_HOLE, NBD_CMD_WRITE_ZEROES, 16384, 4096, NULL), ==, 0);
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_WRITE, 32768, sizeof(w), w), ==, 0);
    g_assert_cmpuint(simple_cmd(fd, 0, NBD_CMD_WRITE_ZEROES, 32768, 4096, NULL), ==, 0);
    /* FAST_ZERO that would need the slow path: ENOTSUP. */
    g_assert_cmpuint(simple_cmd(fd, NBD_CMD_FLAG_FAST_ZERO | NBD_CMD_FLAG_NO_HOLE, NBD_CMD_WRITE_ZEROES, 0, 4096,
                                NULL), ==, NBD_ENOTSUP);
    g_assert_cmpuint(simple_cmd(fd, NBD_CMD_FLAG_FAST_ZERO, NBD_CMD_WRITE_ZEROES, 131072, 4096, NULL), ==, 0);

    g_autoptr(GArray) base = g_array_new(FALSE, FALSE, sizeof(guint32));
    g_autoptr(GArray) depth = g_array_new(FALSE, FALSE, sizeof(guint32));
    guint32 error;
    send_request(fd, 0, NBD_CMD_BLOCK_STATUS, 60, 0, 65536, NULL);
    recv_block_status(fd, 60, base, depth, &error);
    g_assert_cmpuint(error, ==, 0);
    /* never written | data | never written | NO_HOLE zeroes | never written |
     * unmapped zeroes | never written */
    const guint32 want_base[] = { 4096, NBD_STATE_HOLE, 4096, 0, 8192, NBD_STATE_HOLE, 4096, 0,
                                  12288, NBD_STATE_HOLE, 4096, NBD_STATE_HOLE | NBD_STATE_ZERO,
                                  65536 - 36864, NBD_STATE_HOLE };
    g_assert_cmpmem(base->data, base->len * 4, want_base, sizeof(want_base));
    const guint32 want_depth[] = { 4096, 0, 4096, 1, 8192, 0, 4096, 1, 12288, 0, 4096, 1, 65536 - 36864, 0 };
    g_assert_cmpmem(depth->data, depth->len * 4, want_depth, sizeof(want_depth));

    /* REQ_ONE: one descriptor each, no longer than asked. */
    g_array_set_size(base, 0);
    g_array_set_size(depth, 0);
    send_request(fd, NBD_CMD_FLAG_REQ_ONE, NBD_CMD_BLOCK_STATUS, 61, 4096 + 512, 1024, NULL);
    recv_block_status(fd, 61, base, depth, &error);
    g_assert_cmpuint(base->len, ==, 2);
    g_assert_cmpuint(g_array_index(base, guint32, 0), ==, 1024);
    g_assert_cmpuint(g_array_index(base, guint32, 1), ==, 0);
    g_assert_cmpuint(depth->len, ==, 2);
    g_assert_cmpuint(g_array_index(depth, guint32, 1), ==, 1);

    /* Errors: past the end, zero length, bad flag. */
    send_request(fd, 0, NBD_CMD_BLOCK_STATUS, 62, 1 * MIB, 512, NULL);
    recv_block_status(fd, 62, base, depth, &error);
    g_assert_cmpuint(error, ==, NBD_EINVAL);
    send_request(fd, 0, NBD_CMD_BLOCK_STATUS, 63, 0, 0, NULL);
    recv_block_status(fd, 63, base, depth, &error);
    g_assert_cmpuint(error, ==, NBD_EINVAL);
    close(fd);

    /* Contexts set for another export do not carry over. */
    fd = client_connect(f->server);
    client_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    g_assert_cmpuint(option_expect_single(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0), ==, NBD_REP_ACK);
    g_autoptr(GPtrArray) ctx = NULL;
    g_assert_cmpuint(client_meta(fd, NBD_OPT_SET_META_CONTEXT, "ro", both, &ctx), ==, NBD_REP_ACK);
    ExportInfo i;
    g_assert_cmpuint(client_info(fd, NBD_OPT_GO, "", &i), ==, NBD_REP_ACK);
    export_info_clear(&i);
    send_request(fd, 0, NBD_CMD_BLOCK_STATUS, 64, 0, 512, NULL);
    recv_block_status(fd, 64, base, depth, &error);
    g_assert_cmpuint(error, ==, NBD_EINVAL);
    close(fd);
}

/* A slow request does not hold up the others on the same connection, and
 * 64 requests can be in flight at once. */
static void test_many_in_flight(Fixture *f, gconstpointer data)
{
    int fd = client_open(f, "", FALSE, NULL, NULL);
    g_autofree guint8 *w = g_malloc(64 * 4096);
    fill_pattern(w, 64 * 4096, 11);
    for (int i = 0; i < 64; i++)
        send_request(fd, 0, NBD_CMD_WRITE, 100 + i, 20 * MIB + i * 4096, 4096, w + i * 4096);
    gboolean seen[64] = { FALSE };
    for (int i = 0; i < 64; i++) {
        guint8 hdr[16];
        g_assert_true(recv_all(fd, hdr, sizeof(hdr)));
        g_assert_cmpuint(get32(hdr + 4), ==, 0);
        guint64 c = get64(hdr + 8);
        g_assert_true(c >= 100 && c < 164 && !seen[c - 100]);
        seen[c - 100] = TRUE;
    }
    slow_read_gate(FALSE);
    g_slow_read_offset = 20 * MIB;
    send_request(fd, 0, NBD_CMD_READ, 999, 20 * MIB, 4096, NULL);
    for (int i = 1; i < 64; i++)
        send_request(fd, 0, NBD_CMD_READ, 200 + i, 20 * MIB + i * 4096, 4096, NULL);
    guint8 buf[4096];
    for (int i = 1; i < 64; i++) {
        guint8 hdr[16];
        g_assert_true(recv_all(fd, hdr, sizeof(hdr)));
        guint64 c = get64(hdr + 8);
        g_assert_cmpuint(c, !=, 999); /* the slow one comes last */
        g_assert_true(recv_all(fd, buf, sizeof(buf)));
        g_assert_cmpmem(buf, 4096, w + (c - 200) * 4096, 4096);
    }
    slow_read_gate(TRUE);
    g_assert_cmpuint(recv_simple(fd, 999, buf, sizeof(buf)), ==, 0);
    g_assert_cmpmem(buf, 4096, w, 4096);
    g_slow_read_offset = G_MAXUINT64;
    close(fd);
}

typedef struct {
    Fixture *f;
    int index;
    gboolean ok;
} Worker;

static gpointer concurrent_client(gpointer data)
{
    Worker *wk = data;
    int fd = client_open(wk->f, "", wk->index % 2 == 0, NULL, NULL);
    guint64 base = (guint64)wk->index * 256 * 1024;
    guint8 w[16384], r[16384];
    for (int round = 0; round < 8; round++) {
        fill_pattern(w, sizeof(w), wk->index * 100 + round);
        guint64 off = base + (guint64)(round % 4) * 16384;
        send_request(fd, 0, NBD_CMD_WRITE, 1, off, sizeof(w), w);
        g_assert_cmpuint(recv_simple(fd, 1, NULL, 0), ==, 0);
        send_request(fd, 0, NBD_CMD_READ, 2, off, sizeof(r), NULL);
        if (wk->index % 2 == 0) {
            int nd, nh;
            g_assert_cmpuint(recv_structured_read(fd, 2, off, r, sizeof(r), &nd, &nh), ==, 0);
        } else {
            g_assert_cmpuint(recv_simple(fd, 2, r, sizeof(r)), ==, 0);
        }
        g_assert_cmpmem(w, sizeof(w), r, sizeof(r));
    }
    send_request(fd, 0, NBD_CMD_DISC, 3, 0, 0, NULL);
    assert_closed(fd);
    close(fd);
    wk->ok = TRUE;
    return NULL;
}

static void test_many_connections(Fixture *f, gconstpointer data)
{
    enum { N = 32 };
    Worker wk[N];
    GThread *t[N];
    for (int i = 0; i < N; i++) {
        wk[i] = (Worker){ f, i, FALSE };
        t[i] = g_thread_new("client", concurrent_client, &wk[i]);
    }
    for (int i = 0; i < N; i++) {
        g_thread_join(t[i]);
        g_assert_true(wk[i].ok);
    }
    /* All connections end and are counted out. */
    for (int tries = 0; tries < 500 && nbd_server_clients(f->server) > 0; tries++)
        g_usleep(10000);
    g_assert_cmpuint(nbd_server_clients(f->server), ==, 0);
}

static void test_shared_limit(Fixture *f, gconstpointer data)
{
    int first = client_open(f, "small", FALSE, NULL, NULL);
    g_autoptr(NbdExport) exp = nbd_server_find_export(f->server, "small");
    g_assert_cmpuint(nbd_export_connections(exp), ==, 1);
    int second = client_connect(f->server);
    client_handshake(second, NBD_FLAG_C_FIXED_NEWSTYLE);
    ExportInfo i;
    g_assert_cmpuint(client_info(second, NBD_OPT_GO, "small", &i), ==, NBD_REP_ERR_POLICY);
    export_info_clear(&i);
    /* INFO does not count against the limit. */
    g_assert_cmpuint(client_info(second, NBD_OPT_INFO, "small", &i), ==, NBD_REP_ACK);
    export_info_clear(&i);
    send_request(first, 0, NBD_CMD_DISC, 1, 0, 0, NULL);
    assert_closed(first);
    close(first);
    for (int tries = 0; tries < 500 && nbd_export_connections(exp) > 0; tries++)
        g_usleep(10000);
    g_assert_cmpuint(client_info(second, NBD_OPT_GO, "small", &i), ==, NBD_REP_ACK);
    export_info_clear(&i);
    close(second);
}

static void test_remove_export(Fixture *f, gconstpointer data)
{
    int soft = client_open(f, "ro", FALSE, NULL, NULL);
    g_autoptr(GError) err = NULL;
    g_assert_true(nbd_server_remove_export(f->server, "ro", FALSE, &err));
    g_assert_no_error(err);
    g_assert_false(nbd_server_remove_export(f->server, "ro", FALSE, &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_NOT_FOUND);
    g_clear_error(&err);
    /* The connected client keeps working; new clients do not find it. */
    guint8 buf[512];
    send_request(soft, 0, NBD_CMD_READ, 1, 0, sizeof(buf), NULL);
    g_assert_cmpuint(recv_simple(soft, 1, buf, sizeof(buf)), ==, 0);
    int fd = client_connect(f->server);
    client_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    ExportInfo i;
    g_assert_cmpuint(client_info(fd, NBD_OPT_GO, "ro", &i), ==, NBD_REP_ERR_UNKNOWN);
    export_info_clear(&i);
    close(fd);
    close(soft);

    /* Hard removal disconnects. */
    int hard = client_open(f, "small", FALSE, NULL, NULL);
    g_assert_true(nbd_server_remove_export(f->server, "small", TRUE, &err));
    assert_closed(hard);
    close(hard);
    /* Duplicate names are refused. */
    NbdExportConfig c = { .name = "", .bs = f->disk };
    g_autoptr(NbdExport) dup = nbd_export_new(&c, &err);
    g_assert_false(nbd_server_add_export(f->server, dup, &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_INVALID);
}

static void test_export_config_errors(void)
{
    g_autoptr(GError) err = NULL;
    VmmBlockDev *bs = mem_disk_new(1 * MIB, FALSE);
    NbdExportConfig c = { .name = "x", .bs = bs, .min_block = 3 };
    g_assert_null(nbd_export_new(&c, &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_INVALID);
    g_assert_nonnull(strstr(err->message, "'x'"));
    g_clear_error(&err);
    c = (NbdExportConfig){ .name = "x", .bs = bs, .preferred_block = 256 };
    g_assert_null(nbd_export_new(&c, &err));
    g_clear_error(&err);
    c = (NbdExportConfig){ .name = "x", .bs = NULL };
    g_assert_null(nbd_export_new(&c, &err));
    vmm_block_unref(bs);
}

/* ==================================================================
 * TLS (PSK, with our own TLS client) and listeners
 * ================================================================== */

static char *write_psk_file(const char *dir)
{
    char *path = g_build_filename(dir, "keys.psk", NULL);
    g_assert_true(g_file_set_contents(path, "alice:0123456789abcdef0123456789abcdef\n"
                                            "bob:fedcba9876543210fedcba9876543210\n", -1, NULL));
    return path;
}

/* Negotiates STARTTLS as USER; returns the session or NULL if the server
 * hung up during or after the handshake. */
static NbdTlsSession *client_starttls(int fd, const char *psk, const char *user)
{
    g_autoptr(GError) err = NULL;
    g_assert_cmpuint(option_expect_single(fd, NBD_OPT_STARTTLS, NULL, 0), ==, NBD_REP_ACK);
    NbdTlsCreds *creds = nbd_tls_creds_new_psk(psk, NBD_TLS_CLIENT, user, &err);
    g_assert_no_error(err);
    NbdTlsSession *s = nbd_tls_session_new(creds, fd, NULL, &err);
    nbd_tls_creds_unref(creds);
    g_assert_no_error(err);
    if (!nbd_tls_session_handshake(s, 10000, &err)) {
        nbd_tls_session_free(s);
        return NULL;
    }
    return s;
}

static void tls_send_option(NbdTlsSession *s, guint32 option, const void *data, guint32 len)
{
    guint8 hdr[16];
    put64(hdr, NBD_IHAVEOPT);
    put32(hdr + 8, option);
    put32(hdr + 12, len);
    struct iovec iov[2] = { { hdr, 16 }, { (void *)data, len } };
    g_assert_true(nbd_tls_session_send_iov(s, iov, len ? 2 : 1, NULL));
}

/* Reads exactly LEN bytes through TLS; FALSE at the end of the stream. */
static gboolean tls_recv_all(NbdTlsSession *s, void *buf, gsize len)
{
    guint8 *p = buf;
    while (len > 0) {
        gssize n = nbd_tls_session_recv(s, p, len, NULL);
        if (n <= 0)
            return FALSE;
        p += n;
        len -= (gsize)n;
    }
    return TRUE;
}

static void test_tls_psk(void)
{
    g_autofree char *dir = g_dir_make_tmp("nbd-tls-XXXXXX", NULL);
    g_autofree char *psk = write_psk_file(dir);
    g_autoptr(GError) err = NULL;
    NbdServer *server = nbd_server_new();
    VmmBlockDev *bs = mem_disk_new(1 * MIB, FALSE);
    NbdExportConfig c = { .name = "secret", .bs = bs };
    NbdExport *exp = nbd_export_new(&c, &err);
    g_assert_true(nbd_server_add_export(server, exp, &err));
    nbd_export_unref(exp);
    NbdTlsCreds *creds = nbd_tls_creds_new_psk(dir, NBD_TLS_SERVER, NULL, &err);
    g_assert_no_error(err);
    const char *const authz[] = { "alice", NULL };
    g_assert_true(nbd_server_set_tls(server, NBD_TLS_REQUIRE, creds, authz, &err));
    nbd_tls_creds_unref(creds);

    /* Before TLS: everything but STARTTLS/ABORT is refused. */
    int fd = client_connect(server);
    client_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    g_assert_cmpuint(option_expect_single(fd, NBD_OPT_LIST, NULL, 0), ==, NBD_REP_ERR_TLS_REQD);
    g_assert_cmpuint(option_expect_single(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0), ==, NBD_REP_ERR_TLS_REQD);
    ExportInfo i;
    g_assert_cmpuint(client_info(fd, NBD_OPT_GO, "secret", &i), ==, NBD_REP_ERR_TLS_REQD);
    export_info_clear(&i);
    send_option(fd, NBD_OPT_EXPORT_NAME, "secret", 6);
    assert_closed(fd);
    close(fd);

    /* Upgrade as alice: then GO and I/O through TLS. */
    fd = client_connect(server);
    client_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    NbdTlsSession *s = client_starttls(fd, psk, "alice");
    g_assert_nonnull(s);
    g_autoptr(GByteArray) go = info_request("secret", NULL, 0);
    tls_send_option(s, NBD_OPT_GO, go->data, go->len);
    guint32 last = 0;
    guint64 size = 0;
    while (last != NBD_REP_ACK) {
        guint8 hdr[20], body[64];
        g_assert_true(tls_recv_all(s, hdr, sizeof(hdr)));
        last = get32(hdr + 12);
        guint32 len = get32(hdr + 16);
        g_assert_cmpuint(len, <=, sizeof(body));
        g_assert_true(tls_recv_all(s, body, len));
        if (last == NBD_REP_INFO && get16(body) == NBD_INFO_EXPORT)
            size = get64(body + 2);
        g_assert_true(last == NBD_REP_INFO || last == NBD_REP_ACK);
    }
    g_assert_cmpuint(size, ==, 1 * MIB);
    guint8 req[NBD_REQUEST_SIZE + 512];
    put32(req, NBD_REQUEST_MAGIC);
    put16(req + 4, 0);
    put16(req + 6, NBD_CMD_WRITE);
    put64(req + 8, 77);
    put64(req + 16, 512);
    put32(req + 24, 512);
    memset(req + NBD_REQUEST_SIZE, 0x5a, 512);
    struct iovec iov = { req, sizeof(req) };
    g_assert_true(nbd_tls_session_send_iov(s, &iov, 1, NULL));
    guint8 rep[16];
    g_assert_true(tls_recv_all(s, rep, sizeof(rep)));
    g_assert_cmpuint(get32(rep + 4), ==, 0);
    g_assert_cmpuint(get64(rep + 8), ==, 77);
    guint8 check[512];
    g_assert_true(vmm_block_pread(bs, 512, 512, check, NULL));
    g_assert_cmpuint(check[0], ==, 0x5a);
    nbd_tls_session_free(s);
    close(fd);

    /* bob has a valid key but is not in tls-authz. */
    fd = client_connect(server);
    client_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    s = client_starttls(fd, psk, "bob");
    if (s) {
        guint8 b;
        g_assert_false(tls_recv_all(s, &b, 1));
        nbd_tls_session_free(s);
    }
    close(fd);

    nbd_server_free(server);
    vmm_block_unref(bs);
    g_unlink(psk);
    g_rmdir(dir);
}

static void test_tls_creds_errors(void)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *dir = g_dir_make_tmp("nbd-tls-XXXXXX", NULL);
    g_assert_null(nbd_tls_creds_new_x509(dir, NBD_TLS_SERVER, TRUE, &err));
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(err->message, "ca-cert.pem"));
    g_clear_error(&err);
    g_autofree char *psk = g_build_filename(dir, "keys.psk", NULL);
    g_assert_true(g_file_set_contents(psk, "alice:xyz\n", -1, NULL));
    g_assert_null(nbd_tls_creds_new_psk(psk, NBD_TLS_SERVER, NULL, &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_INVALID);
    g_assert_nonnull(strstr(err->message, "line 1"));
    g_clear_error(&err);
    g_assert_true(g_file_set_contents(psk, "alice:00112233445566778899aabbccddeeff\n", -1, NULL));
    g_assert_null(nbd_tls_creds_new_psk(psk, NBD_TLS_CLIENT, "carol", &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_NOT_FOUND);
    g_clear_error(&err);
    /* Server TLS needs server credentials. */
    NbdTlsCreds *client = nbd_tls_creds_new_psk(psk, NBD_TLS_CLIENT, NULL, &err);
    g_assert_no_error(err);
    NbdServer *server = nbd_server_new();
    g_assert_false(nbd_server_set_tls(server, NBD_TLS_REQUIRE, client, NULL, &err));
    g_assert_nonnull(err);
    nbd_server_free(server);
    nbd_tls_creds_unref(client);
    g_unlink(psk);
    g_rmdir(dir);
}

static int connect_unix(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    g_strlcpy(sun.sun_path, path, sizeof(sun.sun_path));
    g_assert_cmpint(connect(fd, (struct sockaddr *)&sun, sizeof(sun)), ==, 0);
    struct timeval tv = { .tv_sec = 10 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

static int connect_tcp(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    g_assert_cmpint(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), ==, 0);
    struct timeval tv = { .tv_sec = 10 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

static void test_listeners(Fixture *f, gconstpointer data)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *dir = g_dir_make_tmp("nbd-listen-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(dir, "sock", NULL);
    g_autofree char *addr = g_strdup_printf("unix:%s", path);
    NbdListener *lu = nbd_listener_new(f->server, addr, &err);
    g_assert_no_error(err);
    NbdListener *lt = nbd_listener_new(f->server, "127.0.0.1:0", &err);
    g_assert_no_error(err);
    g_assert_cmpint(nbd_listener_port(lt), >, 0);
    g_assert_cmpint(nbd_listener_port(lu), ==, 0);
    for (int k = 0; k < 2; k++) {
        int fd = k ? connect_tcp(nbd_listener_port(lt)) : connect_unix(path);
        client_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
        ExportInfo i;
        g_assert_cmpuint(client_info(fd, NBD_OPT_GO, "ro", &i), ==, NBD_REP_ACK);
        g_assert_cmpuint(i.size, ==, 4 * MIB);
        export_info_clear(&i);
        close(fd);
    }
    g_assert_null(nbd_listener_new(f->server, "nonsense", &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_INVALID);
    nbd_listener_free(lu);
    nbd_listener_free(lt);
    g_assert_false(g_file_test(path, G_FILE_TEST_EXISTS));
    g_rmdir(dir);
}

static void test_handshake_timeout(Fixture *f, gconstpointer data)
{
    nbd_server_set_handshake_timeout(f->server, 1);
    int fd = client_connect(f->server);
    client_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
    gint64 start = g_get_monotonic_time();
    assert_closed(fd); /* the client says nothing more */
    /* Closed by the 1 s handshake limit, not by our own 10 s receive timeout;
     * the slack is for loaded machines. */
    g_assert_cmpint(g_get_monotonic_time() - start, <, 9 * G_USEC_PER_SEC);
    close(fd);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
#define ADD(name, fn) g_test_add("/nbd-server/" name, Fixture, NULL, fixture_setup, fn, fixture_teardown)
    ADD("greeting", test_greeting_and_bad_client_flags);
    ADD("list", test_list);
    ADD("info", test_info);
    ADD("export-name", test_export_name);
    ADD("meta-context", test_meta_context_negotiation);
    ADD("simple-io", test_simple_io);
    ADD("request-errors", test_request_errors);
    ADD("disconnects-only-offender", test_disconnects_only_offender);
    ADD("structured-read", test_structured_read);
    ADD("block-status", test_block_status);
    ADD("many-in-flight", test_many_in_flight);
    ADD("many-connections", test_many_connections);
    ADD("shared-limit", test_shared_limit);
    ADD("remove-export", test_remove_export);
    ADD("listeners", test_listeners);
    ADD("handshake-timeout", test_handshake_timeout);
    ADD("guest-memory", test_guest_memory);
    g_test_add_func("/nbd-server/export-config-errors", test_export_config_errors);
    g_test_add_func("/nbd-server/tls-psk", test_tls_psk);
    g_test_add_func("/nbd-server/tls-creds-errors", test_tls_creds_errors);
    return g_test_run();
}
