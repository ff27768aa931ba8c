/* The 9P2000.L codec: every T- and R-message of the dialect, decoded from and
 * encoded into byte buffers, with bounds checks on every field. The same
 * codec serves fsd and the test client, so round trips are exact. */
#pragma once
#include "proto/9p.h"

#include <glib.h>

typedef struct {
    guint8 type;
    guint32 version;
    guint64 path;
} P9Qid;

/* Rgetattr after valid and qid */
typedef struct {
    guint32 mode, uid, gid;
    guint64 nlink, rdev, size, blksize, blocks;
    guint64 atime_sec, atime_nsec, mtime_sec, mtime_nsec;
    guint64 ctime_sec, ctime_nsec, btime_sec, btime_nsec;
    guint64 gen, data_version;
} P9Attr;

/* Tsetattr after fid */
typedef struct {
    guint32 valid, mode, uid, gid;
    guint64 size, atime_sec, atime_nsec, mtime_sec, mtime_nsec;
} P9SetAttr;

typedef struct {
    guint32 type, bsize;
    guint64 blocks, bfree, bavail, files, ffree, fsid;
    guint32 namelen;
} P9Statfs;

/* One decoded message. Fields are shared between messages; each message's
 * layout (fsd/9p-wire.c) says which it uses:
 *   fid   the message's first fid (Tlink/Tmkdir/Tmknod: the directory's;
 *         Trenameat/Tunlinkat: the old directory's)
 *   fid2  the second fid (newfid of walk/xattrwalk, afid of attach,
 *         dfid of rename, the file's fid of link, newdirfid of renameat)
 *   name  lcreate/mkdir/mknod/symlink/link/xattr name, renameat's old name,
 *         Rreadlink's target
 *   name2 symlink's target, renameat's new name
 *   data  points into the buffer that was decoded (never copied). */
typedef struct {
    guint8 type;
    guint16 tag;
    guint32 fid, fid2;
    guint32 msize;
    char *version;
    char *uname, *aname;
    guint32 n_uname;
    guint16 nwname;
    char *wnames[P9_MAXWELEM];
    guint16 nwqid;
    P9Qid wqids[P9_MAXWELEM];
    P9Qid qid;
    guint32 iounit;
    guint32 flags, mode, gid, major, minor;
    char *name, *name2;
    guint64 offset;
    guint32 count;
    const guint8 *data;
    guint64 mask;          /* Tgetattr request_mask, Rgetattr valid */
    P9Attr attr;
    P9SetAttr setattr;
    P9Statfs statfs;
    guint8 lock_type;
    guint32 lock_flags;
    guint64 lock_start, lock_length;
    guint32 proc_id;
    char *client_id;
    guint8 lock_status;
    guint64 xattr_size;    /* Rxattrwalk size, Txattrcreate attr_size */
    guint32 ecode;
    guint16 oldtag;
    guint32 datasync;
} P9Fcall;

/* Frees the strings of a decoded message (not the struct); zeroes it. */
void p9_fcall_clear(P9Fcall *f);

/* "Twalk", or NULL for a type this codec does not know. */
const char *p9_type_name(guint8 type);
gboolean p9_type_known(guint8 type);

/* The header of a message of at least 7 bytes. */
void p9_peek_header(const guint8 *buf, guint32 *size, guint8 *type, guint16 *tag);

/* Decodes the complete message BUF[0..LEN) (LEN must equal its size field).
 * Refuses, with VMM_ERROR_PROTOCOL, a size field that disagrees with LEN,
 * a message shorter than its fields, bytes left over, a string with a NUL,
 * more than 16 walk names or qids, a data count beyond the message, and an
 * unknown type (VMM_ERROR_UNSUPPORTED). On failure F keeps the header (type,
 * tag) when it could be read, and nothing to free. */
gboolean p9_decode(const guint8 *buf, gsize len, P9Fcall *f, GError **error);

/* Appends the encoded message F to OUT. Fails (VMM_ERROR_TOO_BIG) when the
 * result would exceed MAX_SIZE bytes, or (VMM_ERROR_INVALID) when a field
 * cannot be encoded (string over 65535 bytes, more than 16 names). OUT is
 * left as it was on failure. */
gboolean p9_encode(const P9Fcall *f, guint32 max_size, GByteArray *out, GError **error);
/* The same without the bytes of F's data (Rread, Rreaddir, Twrite), whose
 * count goes to *DATA_LEN (0 for other types): OUT gets the head, which
 * F->data follows on the wire, and the size field counts both. */
gboolean p9_encode_head(const P9Fcall *f, guint32 max_size, GByteArray *out, guint32 *data_len, GError **error);

/* Rreaddir entries: qid[13] offset[8] type[1] name[s]. Appends to
 * BUF[*LEN..CAP); FALSE (nothing written) if it does not fit. */
gboolean p9_dirent_put(guint8 *buf, gsize cap, gsize *len, const P9Qid *qid,
                       guint64 offset, guint8 type, const char *name);
/* Reads the entry at BUF[*POS..LEN); NAME is a copy (g_free). FALSE at the
 * end or for a malformed entry (*MALFORMED set). */
gboolean p9_dirent_next(const guint8 *buf, gsize len, gsize *pos, P9Qid *qid,
                        guint64 *offset, guint8 *type, char **name, gboolean *malformed);
