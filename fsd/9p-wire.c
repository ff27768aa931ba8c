/* The 9P2000.L codec. Each message is a layout: a list of typed fields at
 * offsets in P9Fcall, read and written by one loop each, so that every
 * message gets the same bounds checks. Integers are little-endian. */
#include "fsd/9p-wire.h"
#include "common/error.h"

#include <stddef.h>
#include <string.h>

typedef enum {
    F_END,
    F_U8,
    F_U16,
    F_U32,
    F_U64,
    F_STR,      /* len[2] bytes, no NUL; char * in P9Fcall */
    F_QID,
    F_WNAMES,   /* nwname[2] nwname*s */
    F_WQIDS,    /* nwqid[2] nwqid*qid */
    F_DATA,     /* count[4] count bytes; count and data */
} FieldKind;

typedef struct {
    FieldKind kind;
    guint16 off;
} Field;

typedef struct {
    guint8 type;
    const char *name;
    Field fields[24];
} Layout;

#define O(member) ((guint16)offsetof(P9Fcall, member))
#define B(m) { F_U8, O(m) }
#define W(m) { F_U16, O(m) }
#define D(m) { F_U32, O(m) }
#define Q(m) { F_U64, O(m) }
#define S(m) { F_STR, O(m) }
#define QID(m) { F_QID, O(m) }
#define WNAMES { F_WNAMES, 0 }
#define WQIDS { F_WQIDS, 0 }
#define DATA { F_DATA, 0 }

static const Layout layouts[] = {
    { P9_RLERROR, "Rlerror", { D(ecode) } },
    { P9_TSTATFS, "Tstatfs", { D(fid) } },
    { P9_RSTATFS, "Rstatfs", { D(statfs.type), D(statfs.bsize), Q(statfs.blocks), Q(statfs.bfree),
                               Q(statfs.bavail), Q(statfs.files), Q(statfs.ffree), Q(statfs.fsid),
                               D(statfs.namelen) } },
    { P9_TLOPEN, "Tlopen", { D(fid), D(flags) } },
    { P9_RLOPEN, "Rlopen", { QID(qid), D(iounit) } },
    { P9_TLCREATE, "Tlcreate", { D(fid), S(name), D(flags), D(mode), D(gid) } },
    { P9_RLCREATE, "Rlcreate", { QID(qid), D(iounit) } },
    { P9_TSYMLINK, "Tsymlink", { D(fid), S(name), S(name2), D(gid) } },
    { P9_RSYMLINK, "Rsymlink", { QID(qid) } },
    { P9_TMKNOD, "Tmknod", { D(fid), S(name), D(mode), D(major), D(minor), D(gid) } },
    { P9_RMKNOD, "Rmknod", { QID(qid) } },
    { P9_TRENAME, "Trename", { D(fid), D(fid2), S(name) } },
    { P9_RRENAME, "Rrename", { } },
    { P9_TREADLINK, "Treadlink", { D(fid) } },
    { P9_RREADLINK, "Rreadlink", { S(name) } },
    { P9_TGETATTR, "Tgetattr", { D(fid), Q(mask) } },
    { P9_RGETATTR, "Rgetattr", { Q(mask), QID(qid), D(attr.mode), D(attr.uid), D(attr.gid),
                                 Q(attr.nlink), Q(attr.rdev), Q(attr.size), Q(attr.blksize),
                                 Q(attr.blocks), Q(attr.atime_sec), Q(attr.atime_nsec),
                                 Q(attr.mtime_sec), Q(attr.mtime_nsec), Q(attr.ctime_sec),
                                 Q(attr.ctime_nsec), Q(attr.btime_sec), Q(attr.btime_nsec),
                                 Q(attr.gen), Q(attr.data_version) } },
    { P9_TSETATTR, "Tsetattr", { D(fid), D(setattr.valid), D(setattr.mode), D(setattr.uid),
                                 D(setattr.gid), Q(setattr.size), Q(setattr.atime_sec),
                                 Q(setattr.atime_nsec), Q(setattr.mtime_sec), Q(setattr.mtime_nsec) } },
    { P9_RSETATTR, "Rsetattr", { } },
    { P9_TXATTRWALK, "Txattrwalk", { D(fid), D(fid2), S(name) } },
    { P9_RXATTRWALK, "Rxattrwalk", { Q(xattr_size) } },
    { P9_TXATTRCREATE, "Txattrcreate", { D(fid), S(name), Q(xattr_size), D(flags) } },
    { P9_RXATTRCREATE, "Rxattrcreate", { } },
    { P9_TREADDIR, "Treaddir", { D(fid), Q(offset), D(count) } },
    { P9_RREADDIR, "Rreaddir", { DATA } },
    { P9_TFSYNC, "Tfsync", { D(fid), D(datasync) } },
    { P9_RFSYNC, "Rfsync", { } },
    { P9_TLOCK, "Tlock", { D(fid), B(lock_type), D(lock_flags), Q(lock_start), Q(lock_length),
                           D(proc_id), S(client_id) } },
    { P9_RLOCK, "Rlock", { B(lock_status) } },
    { P9_TGETLOCK, "Tgetlock", { D(fid), B(lock_type), Q(lock_start), Q(lock_length), D(proc_id),
                                 S(client_id) } },
    { P9_RGETLOCK, "Rgetlock", { B(lock_type), Q(lock_start), Q(lock_length), D(proc_id),
                                 S(client_id) } },
    { P9_TLINK, "Tlink", { D(fid), D(fid2), S(name) } },
    { P9_RLINK, "Rlink", { } },
    { P9_TMKDIR, "Tmkdir", { D(fid), S(name), D(mode), D(gid) } },
    { P9_RMKDIR, "Rmkdir", { QID(qid) } },
    { P9_TRENAMEAT, "Trenameat", { D(fid), S(name), D(fid2), S(name2) } },
    { P9_RRENAMEAT, "Rrenameat", { } },
    { P9_TUNLINKAT, "Tunlinkat", { D(fid), S(name), D(flags) } },
    { P9_RUNLINKAT, "Runlinkat", { } },
    { P9_TVERSION, "Tversion", { D(msize), S(version) } },
    { P9_RVERSION, "Rversion", { D(msize), S(version) } },
    { P9_TAUTH, "Tauth", { D(fid), S(uname), S(aname), D(n_uname) } },
    { P9_RAUTH, "Rauth", { QID(qid) } },
    { P9_TATTACH, "Tattach", { D(fid), D(fid2), S(uname), S(aname), D(n_uname) } },
    { P9_RATTACH, "Rattach", { QID(qid) } },
    { P9_TFLUSH, "Tflush", { W(oldtag) } },
    { P9_RFLUSH, "Rflush", { } },
    { P9_TWALK, "Twalk", { D(fid), D(fid2), WNAMES } },
    { P9_RWALK, "Rwalk", { WQIDS } },
    { P9_TREAD, "Tread", { D(fid), Q(offset), D(count) } },
    { P9_RREAD, "Rread", { DATA } },
    { P9_TWRITE, "Twrite", { D(fid), Q(offset), DATA } },
    { P9_RWRITE, "Rwrite", { D(count) } },
    { P9_TREAD_VMM, "Tread.vmm", { D(fid), Q(offset), DATA } },
    { P9_RREAD_VMM, "Rread.vmm", { D(count) } },
    { P9_TWRITE_VMM, "Twrite.vmm", { D(fid), Q(offset), DATA } },
    { P9_RWRITE_VMM, "Rwrite.vmm", { D(count) } },
    { P9_TCLUNK, "Tclunk", { D(fid) } },
    { P9_RCLUNK, "Rclunk", { } },
    { P9_TREMOVE, "Tremove", { D(fid) } },
    { P9_RREMOVE, "Rremove", { } },
};

static const Layout *find_layout(guint8 type)
{
    for (gsize i = 0; i < G_N_ELEMENTS(layouts); i++) {
        if (layouts[i].type == type)
            return &layouts[i];
    }
    return NULL;
}

const char *p9_type_name(guint8 type)
{
    const Layout *l = find_layout(type);
    return l ? l->name : NULL;
}

gboolean p9_type_known(guint8 type)
{
    return find_layout(type) != NULL;
}

static guint16 get_le16(const guint8 *p) { return (guint16)(p[0] | p[1] << 8); }
static guint32 get_le32(const guint8 *p) { return (guint32)get_le16(p) | (guint32)get_le16(p + 2) << 16; }
static guint64 get_le64(const guint8 *p) { return (guint64)get_le32(p) | (guint64)get_le32(p + 4) << 32; }

void p9_peek_header(const guint8 *buf, guint32 *size, guint8 *type, guint16 *tag)
{
    *size = get_le32(buf);
    *type = buf[4];
    *tag = get_le16(buf + 5);
}

void p9_fcall_clear(P9Fcall *f)
{
    g_free(f->version);
    g_free(f->uname);
    g_free(f->aname);
    g_free(f->name);
    g_free(f->name2);
    g_free(f->client_id);
    for (int i = 0; i < P9_MAXWELEM; i++)
        g_free(f->wnames[i]);
    memset(f, 0, sizeof(*f));
}

/* ---- decoding ---- */

typedef struct {
    const guint8 *buf;
    gsize len, pos;
    const char *what;   /* the field being read, for the error */
} Reader;

static gboolean need(Reader *r, gsize n, GError **error)
{
    if (r->len - r->pos < n) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL,
                    "9p: message truncated in %s (%zu bytes left, %zu needed)",
                    r->what, r->len - r->pos, n);
        return FALSE;
    }
    return TRUE;
}

static gboolean read_string(Reader *r, char **out, GError **error)
{
    if (!need(r, 2, error))
        return FALSE;
    guint16 n = get_le16(r->buf + r->pos);
    r->pos += 2;
    if (!need(r, n, error))
        return FALSE;
    if (memchr(r->buf + r->pos, 0, n)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "9p: %s: string contains a NUL byte", r->what);
        return FALSE;
    }
    *out = g_strndup((const char *)r->buf + r->pos, n);
    r->pos += n;
    return TRUE;
}

static gboolean read_qid(Reader *r, P9Qid *q, GError **error)
{
    if (!need(r, P9_QIDSZ, error))
        return FALSE;
    q->type = r->buf[r->pos];
    q->version = get_le32(r->buf + r->pos + 1);
    q->path = get_le64(r->buf + r->pos + 5);
    r->pos += P9_QIDSZ;
    return TRUE;
}

static gboolean read_count16(Reader *r, guint16 *n, GError **error)
{
    if (!need(r, 2, error))
        return FALSE;
    *n = get_le16(r->buf + r->pos);
    r->pos += 2;
    if (*n > P9_MAXWELEM) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "9p: %s: %u elements, at most %d allowed",
                    r->what, *n, P9_MAXWELEM);
        return FALSE;
    }
    return TRUE;
}

static gboolean read_field(Reader *r, const Field *fl, P9Fcall *f, GError **error)
{
    guint8 *base = (guint8 *)f + fl->off;
    switch (fl->kind) {
    case F_U8:
        if (!need(r, 1, error))
            return FALSE;
        *base = r->buf[r->pos++];
        return TRUE;
    case F_U16: {
        if (!need(r, 2, error))
            return FALSE;
        guint16 v = get_le16(r->buf + r->pos);
        memcpy(base, &v, 2);
        r->pos += 2;
        return TRUE;
    }
    case F_U32: {
        if (!need(r, 4, error))
            return FALSE;
        guint32 v = get_le32(r->buf + r->pos);
        memcpy(base, &v, 4);
        r->pos += 4;
        return TRUE;
    }
    case F_U64: {
        if (!need(r, 8, error))
            return FALSE;
        guint64 v = get_le64(r->buf + r->pos);
        memcpy(base, &v, 8);
        r->pos += 8;
        return TRUE;
    }
    case F_STR:
        return read_string(r, (char **)(void *)base, error);
    case F_QID:
        return read_qid(r, (P9Qid *)(void *)base, error);
    case F_WNAMES:
        if (!read_count16(r, &f->nwname, error))
            return FALSE;
        for (guint i = 0; i < f->nwname; i++) {
            if (!read_string(r, &f->wnames[i], error))
                return FALSE;
        }
        return TRUE;
    case F_WQIDS:
        if (!read_count16(r, &f->nwqid, error))
            return FALSE;
        for (guint i = 0; i < f->nwqid; i++) {
            if (!read_qid(r, &f->wqids[i], error))
                return FALSE;
        }
        return TRUE;
    case F_DATA:
        if (!need(r, 4, error))
            return FALSE;
        f->count = get_le32(r->buf + r->pos);
        r->pos += 4;
        if (!need(r, f->count, error))
            return FALSE;
        f->data = r->buf + r->pos;
        r->pos += f->count;
        return TRUE;
    case F_END:
        break;
    }
    return TRUE;
}

gboolean p9_decode(const guint8 *buf, gsize len, P9Fcall *f, GError **error)
{
    memset(f, 0, sizeof(*f));
    if (len < P9_HDRSZ) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "9p: message of %zu bytes is shorter than its header", len);
        return FALSE;
    }
    guint32 size;
    p9_peek_header(buf, &size, &f->type, &f->tag);
    if (size != len) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "9p: size field %u disagrees with the %zu bytes received",
                    size, len);
        return FALSE;
    }
    const Layout *l = find_layout(f->type);
    if (!l) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED, "9p: unknown message type %u", f->type);
        return FALSE;
    }
    Reader r = { .buf = buf, .len = len, .pos = P9_HDRSZ, .what = l->name };
    guint8 type = f->type;
    guint16 tag = f->tag;
    for (const Field *fl = l->fields; fl->kind != F_END; fl++) {
        if (!read_field(&r, fl, f, error))
            goto fail;
    }
    if (r.pos != len) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_PROTOCOL, "9p: %s: %zu bytes after the last field",
                    l->name, len - r.pos);
        goto fail;
    }
    return TRUE;
fail:
    p9_fcall_clear(f);
    f->type = type;
    f->tag = tag;
    return FALSE;
}

/* ---- encoding ---- */

static void put_le16(GByteArray *o, guint16 v)
{
    guint8 b[2] = { v & 0xff, v >> 8 };
    g_byte_array_append(o, b, 2);
}

static void put_le32(GByteArray *o, guint32 v)
{
    put_le16(o, v & 0xffff);
    put_le16(o, v >> 16);
}

static void put_le64(GByteArray *o, guint64 v)
{
    put_le32(o, v & 0xffffffffu);
    put_le32(o, v >> 32);
}

static gboolean put_string(GByteArray *o, const char *s, const char *what, GError **error)
{
    gsize n = s ? strlen(s) : 0;
    if (n > G_MAXUINT16) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "9p: %s: string of %zu bytes is too long", what, n);
        return FALSE;
    }
    put_le16(o, (guint16)n);
    g_byte_array_append(o, (const guint8 *)(s ? s : ""), (guint)n);
    return TRUE;
}

static void put_qid(GByteArray *o, const P9Qid *q)
{
    g_byte_array_append(o, &q->type, 1);
    put_le32(o, q->version);
    put_le64(o, q->path);
}

static gboolean put_field(GByteArray *o, const Field *fl, const P9Fcall *f, gboolean with_data, const char *what,
                          GError **error)
{
    const guint8 *base = (const guint8 *)f + fl->off;
    switch (fl->kind) {
    case F_U8:
        g_byte_array_append(o, base, 1);
        return TRUE;
    case F_U16: {
        guint16 v;
        memcpy(&v, base, 2);
        put_le16(o, v);
        return TRUE;
    }
    case F_U32: {
        guint32 v;
        memcpy(&v, base, 4);
        put_le32(o, v);
        return TRUE;
    }
    case F_U64: {
        guint64 v;
        memcpy(&v, base, 8);
        put_le64(o, v);
        return TRUE;
    }
    case F_STR: {
        const char *s;
        memcpy(&s, base, sizeof(s));
        return put_string(o, s, what, error);
    }
    case F_QID:
        put_qid(o, (const P9Qid *)(const void *)base);
        return TRUE;
    case F_WNAMES:
        if (f->nwname > P9_MAXWELEM)
            break;
        put_le16(o, f->nwname);
        for (guint i = 0; i < f->nwname; i++) {
            if (!put_string(o, f->wnames[i], what, error))
                return FALSE;
        }
        return TRUE;
    case F_WQIDS:
        if (f->nwqid > P9_MAXWELEM)
            break;
        put_le16(o, f->nwqid);
        for (guint i = 0; i < f->nwqid; i++)
            put_qid(o, &f->wqids[i]);
        return TRUE;
    case F_DATA:
        put_le32(o, f->count);
        if (f->count && with_data)
            g_byte_array_append(o, f->data, f->count);
        return TRUE;
    case F_END:
        return TRUE;
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "9p: %s: more than %d elements", what, P9_MAXWELEM);
    return FALSE;
}

/* DATA is always a layout's last field, so leaving its bytes out leaves a
 * head that the data follows on the wire. */
static gboolean encode(const P9Fcall *f, guint32 max_size, gboolean with_data, GByteArray *out, guint32 *data_len,
                       GError **error)
{
    const Layout *l = find_layout(f->type);
    if (!l) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "9p: cannot encode unknown type %u", f->type);
        return FALSE;
    }
    guint start = out->len;
    put_le32(out, 0);
    g_byte_array_append(out, &f->type, 1);
    put_le16(out, f->tag);
    *data_len = 0;
    for (const Field *fl = l->fields; fl->kind != F_END; fl++) {
        if (!put_field(out, fl, f, with_data, l->name, error)) {
            g_byte_array_set_size(out, start);
            return FALSE;
        }
        if (fl->kind == F_DATA && !with_data)
            *data_len = f->count;
    }
    gsize size = out->len - start + *data_len;
    if (size > max_size) {
        g_byte_array_set_size(out, start);
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG, "9p: %s of %zu bytes exceeds msize %u",
                    l->name, size, max_size);
        return FALSE;
    }
    guint32 le = GUINT32_TO_LE((guint32)size);
    memcpy(out->data + start, &le, 4);
    return TRUE;
}

gboolean p9_encode(const P9Fcall *f, guint32 max_size, GByteArray *out, GError **error)
{
    guint32 data_len;
    return encode(f, max_size, TRUE, out, &data_len, error);
}

gboolean p9_encode_head(const P9Fcall *f, guint32 max_size, GByteArray *out, guint32 *data_len, GError **error)
{
    return encode(f, max_size, FALSE, out, data_len, error);
}

/* ---- readdir entries ---- */

gboolean p9_dirent_put(guint8 *buf, gsize cap, gsize *len, const P9Qid *qid,
                       guint64 offset, guint8 type, const char *name)
{
    gsize n = strlen(name);
    gsize need_bytes = P9_QIDSZ + 8 + 1 + 2 + n;
    if (n > G_MAXUINT16 || *len > cap || cap - *len < need_bytes)
        return FALSE;
    guint8 *p = buf + *len;
    p[0] = qid->type;
    guint32 v32 = GUINT32_TO_LE(qid->version);
    memcpy(p + 1, &v32, 4);
    guint64 v64 = GUINT64_TO_LE(qid->path);
    memcpy(p + 5, &v64, 8);
    v64 = GUINT64_TO_LE(offset);
    memcpy(p + 13, &v64, 8);
    p[21] = type;
    guint16 v16 = GUINT16_TO_LE((guint16)n);
    memcpy(p + 22, &v16, 2);
    memcpy(p + 24, name, n);
    *len += need_bytes;
    return TRUE;
}

gboolean p9_dirent_next(const guint8 *buf, gsize len, gsize *pos, P9Qid *qid,
                        guint64 *offset, guint8 *type, char **name, gboolean *malformed)
{
    *malformed = FALSE;
    if (*pos >= len)
        return FALSE;
    gsize left = len - *pos;
    const guint8 *p = buf + *pos;
    if (left < 24 || left - 24 < get_le16(p + 22)) {
        *malformed = TRUE;
        return FALSE;
    }
    guint16 n = get_le16(p + 22);
    if (memchr(p + 24, 0, n)) {
        *malformed = TRUE;
        return FALSE;
    }
    qid->type = p[0];
    qid->version = get_le32(p + 1);
    qid->path = get_le64(p + 5);
    *offset = get_le64(p + 13);
    *type = p[21];
    *name = g_strndup((const char *)p + 24, n);
    *pos += 24 + (gsize)n;
    return TRUE;
}
