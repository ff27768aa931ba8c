/* The 9P2000.L codec (fsd/9p-wire.c): every message round trips, and every
 * truncated, oversize or malformed message is refused without reading past
 * its buffer (the ASan build checks the latter). */
#include "fsd/9p-wire.h"
#include "common/error.h"

#include <string.h>

static void fill_all_fields(P9Fcall *f, guint8 type)
{
    memset(f, 0, sizeof(*f));
    f->type = type;
    f->tag = 0x1234;
    f->fid = 0xdeadbeef;
    f->fid2 = 7;
    f->msize = 512 * 1024;
    f->version = g_strdup(P9_VERSION_L);
    f->uname = g_strdup("root");
    f->aname = g_strdup("tag0");
    f->n_uname = 1000;
    f->nwname = 3;
    f->wnames[0] = g_strdup("a");
    f->wnames[1] = g_strdup("bb");
    f->wnames[2] = g_strdup("ccc");
    f->nwqid = 2;
    f->wqids[0] = (P9Qid){ P9_QTDIR, 1, 0x1122334455667788ULL };
    f->wqids[1] = (P9Qid){ P9_QTFILE, 2, 99 };
    f->qid = (P9Qid){ P9_QTSYMLINK, 0x01020304, 0xa0a1a2a3a4a5a6a7ULL };
    f->iounit = 4096;
    f->flags = P9_DOTL_RDWR | P9_DOTL_CREATE;
    f->mode = 0100644;
    f->gid = 100;
    f->major = 8;
    f->minor = 1;
    f->name = g_strdup("file name");
    f->name2 = g_strdup("/target/of/link");
    f->offset = 0x0102030405060708ULL;
    static const guint8 payload[] = "some data\0with a nul";
    f->count = sizeof(payload);
    f->data = payload;
    f->mask = P9_GETATTR_ALL;
    f->attr = (P9Attr){ 0100600, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17 };
    f->setattr = (P9SetAttr){ P9_ATTR_MODE | P9_ATTR_SIZE, 0644, 5, 6, 77, 1, 2, 3, 4 };
    f->statfs = (P9Statfs){ P9_V9FS_MAGIC, 4096, 1, 2, 3, 4, 5, 6, 255 };
    f->lock_type = P9_LOCK_TYPE_WRLCK;
    f->lock_flags = P9_LOCK_FLAGS_BLOCK;
    f->lock_start = 10;
    f->lock_length = 20;
    f->proc_id = 4242;
    f->client_id = g_strdup("client");
    f->lock_status = P9_LOCK_BLOCKED;
    f->xattr_size = 321;
    f->ecode = 2;
    f->oldtag = 77;
    f->datasync = 1;
}

static GByteArray *encode_or_fail(const P9Fcall *f)
{
    GByteArray *b = g_byte_array_new();
    g_autoptr(GError) err = NULL;
    g_assert_true(p9_encode(f, 1 << 20, b, &err));
    g_assert_no_error(err);
    return b;
}

static void test_every_message_round_trips(void)
{
    guint n = 0;
    for (guint t = 0; t < 256; t++) {
        if (!p9_type_known(t))
            continue;
        n++;
        P9Fcall f;
        fill_all_fields(&f, t);
        g_autoptr(GByteArray) first = encode_or_fail(&f);
        P9Fcall back;
        g_autoptr(GError) err = NULL;
        if (!p9_decode(first->data, first->len, &back, &err))
            g_error("%s: %s", p9_type_name(t), err->message);
        g_assert_cmpuint(back.type, ==, t);
        g_assert_cmpuint(back.tag, ==, 0x1234);
        g_autoptr(GByteArray) second = encode_or_fail(&back);
        g_assert_cmpmem(first->data, first->len, second->data, second->len);
        p9_fcall_clear(&back);
        p9_fcall_clear(&f);
    }
    /* 28 request/reply pairs of 9P2000.L plus Rlerror, and vmmd's own
     * Tread.vmm/Twrite.vmm pairs (proto/9p.h) */
    g_assert_cmpuint(n, ==, 57 + 4);
}

static void test_fields_land_where_expected(void)
{
    P9Fcall f;
    fill_all_fields(&f, P9_TWALK);
    g_autoptr(GByteArray) b = encode_or_fail(&f);
    /* size[4] type[1] tag[2] fid[4] newfid[4] nwname[2] 3 names */
    g_assert_cmpuint(b->len, ==, 7 + 4 + 4 + 2 + (2 + 1) + (2 + 2) + (2 + 3));
    g_assert_cmpuint(b->data[0], ==, b->len);
    g_assert_cmpuint(b->data[4], ==, P9_TWALK);
    g_assert_cmpuint(b->data[5], ==, 0x34);
    g_assert_cmpuint(b->data[7], ==, 0xef);
    P9Fcall d;
    g_assert_true(p9_decode(b->data, b->len, &d, NULL));
    g_assert_cmpuint(d.fid, ==, 0xdeadbeef);
    g_assert_cmpuint(d.fid2, ==, 7);
    g_assert_cmpuint(d.nwname, ==, 3);
    g_assert_cmpstr(d.wnames[2], ==, "ccc");
    p9_fcall_clear(&d);
    p9_fcall_clear(&f);

    fill_all_fields(&f, P9_RGETATTR);
    g_autoptr(GByteArray) g = encode_or_fail(&f);
    g_assert_cmpuint(g->len, ==, 7 + 8 + 13 + 3 * 4 + 15 * 8);
    g_assert_true(p9_decode(g->data, g->len, &d, NULL));
    g_assert_cmpuint(d.attr.mode, ==, 0100600);
    g_assert_cmpuint(d.attr.data_version, ==, 17);
    g_assert_cmpuint(d.qid.path, ==, 0xa0a1a2a3a4a5a6a7ULL);
    p9_fcall_clear(&d);
    p9_fcall_clear(&f);
}

/* Every prefix of every message, with its size field rewritten to claim
 * exactly that prefix, is refused: a copy of exactly that length lets ASan
 * catch a read past it. */
static void test_every_truncation_is_refused(void)
{
    for (guint t = 0; t < 256; t++) {
        if (!p9_type_known(t))
            continue;
        P9Fcall f;
        fill_all_fields(&f, t);
        g_autoptr(GByteArray) b = encode_or_fail(&f);
        p9_fcall_clear(&f);
        for (guint len = 0; len < b->len; len++) {
            guint8 *copy = g_memdup2(b->data, len ? len : 1);
            if (len >= 4) {
                guint32 le = GUINT32_TO_LE(len);
                memcpy(copy, &le, 4);
            }
            P9Fcall d;
            g_autoptr(GError) err = NULL;
            gboolean ok = p9_decode(copy, len, &d, &err);
            /* Messages with no body decode at exactly the header length. */
            if (ok)
                g_error("%s truncated to %u bytes was accepted", p9_type_name(t), len);
            g_assert_error(err, VMM_ERROR, VMM_ERROR_PROTOCOL);
            p9_fcall_clear(&d);
            g_free(copy);
        }
    }
}

static void test_oversize_and_size_mismatch_refused(void)
{
    P9Fcall f;
    fill_all_fields(&f, P9_TGETATTR);
    g_autoptr(GByteArray) b = encode_or_fail(&f);
    p9_fcall_clear(&f);
    /* One byte more than the fields, size field agreeing: left-over bytes. */
    g_byte_array_append(b, (const guint8 *)"x", 1);
    guint32 le = GUINT32_TO_LE(b->len);
    memcpy(b->data, &le, 4);
    P9Fcall d;
    g_autoptr(GError) err = NULL;
    g_assert_false(p9_decode(b->data, b->len, &d, &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_PROTOCOL);
    g_assert_cmpuint(d.tag, ==, 0x1234); /* the header survives for the Rlerror */
    g_clear_error(&err);
    /* The size field claims more than was received. */
    le = GUINT32_TO_LE(b->len + 100);
    memcpy(b->data, &le, 4);
    g_assert_false(p9_decode(b->data, b->len, &d, &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_PROTOCOL);
}

static GByteArray *raw_message(guint8 type, const guint8 *body, gsize n)
{
    GByteArray *b = g_byte_array_new();
    guint32 le = GUINT32_TO_LE((guint32)(7 + n));
    g_byte_array_append(b, (const guint8 *)&le, 4);
    g_byte_array_append(b, &type, 1);
    g_byte_array_append(b, (const guint8 *)"\x01\x00", 2);
    g_byte_array_append(b, body, (guint)n);
    return b;
}

static void expect_refused(GByteArray *b, gint code)
{
    P9Fcall d;
    g_autoptr(GError) err = NULL;
    g_assert_false(p9_decode(b->data, b->len, &d, &err));
    g_assert_error(err, VMM_ERROR, code);
    p9_fcall_clear(&d);
    g_byte_array_unref(b);
}

static void test_malformed_fields_refused(void)
{
    /* Twalk with 17 names */
    guint8 walk[4 + 4 + 2] = { 0, 0, 0, 0, 1, 0, 0, 0, 17, 0 };
    expect_refused(raw_message(P9_TWALK, walk, sizeof(walk)), VMM_ERROR_PROTOCOL);
    /* Twalk naming 2 names but carrying 1 */
    guint8 walk2[] = { 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 1, 0, 'a' };
    expect_refused(raw_message(P9_TWALK, walk2, sizeof(walk2)), VMM_ERROR_PROTOCOL);
    /* A string with a NUL byte */
    guint8 lcreate[] = { 0, 0, 0, 0, 3, 0, 'a', 0, 'b', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 };
    expect_refused(raw_message(P9_TLCREATE, lcreate, sizeof(lcreate)), VMM_ERROR_PROTOCOL);
    /* Twrite whose count is beyond the message */
    guint8 write[] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 'x' };
    expect_refused(raw_message(P9_TWRITE, write, sizeof(write)), VMM_ERROR_PROTOCOL);
    /* A string length beyond the message */
    guint8 version[] = { 0, 0x10, 0, 0, 0xff, 0xff, '9' };
    expect_refused(raw_message(P9_TVERSION, version, sizeof(version)), VMM_ERROR_PROTOCOL);
    /* Unknown types, including the classic ones 9P2000.L dropped */
    expect_refused(raw_message(P9_TSTAT, (const guint8 *)"\0\0\0\0", 4), VMM_ERROR_UNSUPPORTED);
    expect_refused(raw_message(0, NULL, 0), VMM_ERROR_UNSUPPORTED);
    expect_refused(raw_message(255, NULL, 0), VMM_ERROR_UNSUPPORTED);
}

static void test_encode_limits(void)
{
    P9Fcall f;
    fill_all_fields(&f, P9_RREAD);
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_autoptr(GError) err = NULL;
    g_assert_false(p9_encode(&f, 20, b, &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_TOO_BIG);
    g_assert_cmpuint(b->len, ==, 0);
    g_clear_error(&err);
    f.type = P9_TWALK;
    f.nwname = 17;
    g_assert_false(p9_encode(&f, 1 << 20, b, &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_INVALID);
    f.nwname = 3;
    p9_fcall_clear(&f);
}

static void test_dirents(void)
{
    guint8 buf[64];
    gsize len = 0;
    P9Qid q = { P9_QTDIR, 0, 42 };
    g_assert_true(p9_dirent_put(buf, sizeof(buf), &len, &q, 1, 4, "dir"));
    g_assert_cmpuint(len, ==, 27);
    g_assert_false(p9_dirent_put(buf, sizeof(buf), &len, &q, 2, 4, "a-name-that-does-not-fit"));
    g_assert_cmpuint(len, ==, 27);
    g_assert_true(p9_dirent_put(buf, sizeof(buf), &len, &q, 2, 8, "f"));
    gsize pos = 0;
    P9Qid rq;
    guint64 off;
    guint8 type;
    char *name;
    gboolean bad;
    g_assert_true(p9_dirent_next(buf, len, &pos, &rq, &off, &type, &name, &bad));
    g_assert_cmpstr(name, ==, "dir");
    g_assert_cmpuint(rq.path, ==, 42);
    g_free(name);
    g_assert_true(p9_dirent_next(buf, len, &pos, &rq, &off, &type, &name, &bad));
    g_assert_cmpstr(name, ==, "f");
    g_assert_cmpuint(off, ==, 2);
    g_free(name);
    g_assert_false(p9_dirent_next(buf, len, &pos, &rq, &off, &type, &name, &bad));
    g_assert_false(bad);
    /* an entry cut short */
    pos = 0;
    g_assert_false(p9_dirent_next(buf, 26, &pos, &rq, &off, &type, &name, &bad));
    g_assert_true(bad);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/9p-wire/round-trip", test_every_message_round_trips);
    g_test_add_func("/9p-wire/field-positions", test_fields_land_where_expected);
    g_test_add_func("/9p-wire/truncated", test_every_truncation_is_refused);
    g_test_add_func("/9p-wire/oversize", test_oversize_and_size_mismatch_refused);
    g_test_add_func("/9p-wire/malformed", test_malformed_fields_refused);
    g_test_add_func("/9p-wire/encode-limits", test_encode_limits);
    g_test_add_func("/9p-wire/dirents", test_dirents);
    return g_test_run();
}
