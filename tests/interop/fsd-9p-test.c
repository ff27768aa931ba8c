/* fsd against a host-side 9P2000.L client over a Unix socket: the file
 * workflow under every security model with the host representation checked
 * (real ownership, user.virtfs.* xattrs, .virtfs_metadata files), and what a
 * kernel never sends: escapes, malformed and truncated messages, reused fids,
 * huge counts, flushes of pending requests. After each, fsd must answer a
 * plain request. Also readonly, writeout=immediate, throttling and socket
 * activation. Each test starts its own fsd (VMM_BIN_DIR/fsd) on a temporary
 * export and kills it by pid. */
#include "fsd/9p-wire.h"

#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#define MSIZE (512 * 1024)
#define TIMEOUT_MS 20000
#define ROOT 0u

/* ---- fsd under test ---- */

typedef struct {
    char *dir;        /* scratch directory */
    char *export;     /* DIR/export */
    char *sock;
    GPid pid;
    int fd;           /* connection */
    guint16 tag;
    guint32 msize;
} T;

static char *fsd_binary(void)
{
    const char *bin = g_getenv("VMM_BIN_DIR");
    return g_build_filename(bin ? bin : ".", "fsd", NULL);
}

static gboolean wait_for_socket(const char *path, GPid pid)
{
    for (int i = 0; i < 500; i++) {
        if (g_file_test(path, G_FILE_TEST_EXISTS))
            return TRUE;
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return FALSE;
        g_usleep(10000);
    }
    return FALSE;
}

static int connect_unix(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_assert_cmpuint(strlen(path), <, sizeof(sa.sun_path));
    strcpy(sa.sun_path, path);
    /* The socket file appears at bind, a moment before listen. */
    for (int i = 0;; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        g_assert_cmpint(fd, >=, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            return fd;
        int err = errno;
        close(fd);
        if (i == 500 || (err != ECONNREFUSED && err != ENOENT))
            g_error("connect %s: %s", path, g_strerror(err));
        g_usleep(10000);
    }
}

/* fsd dies with the test, even when an assertion ends it. */
static void die_with_parent(gpointer data)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

/* Starts fsd on a fresh export with ARGS (NULL-terminated) added. */
static T *start_fsd(const char *const *args)
{
    T *t = g_new0(T, 1);
    t->dir = g_dir_make_tmp("fsd-test-XXXXXX", NULL);
    g_assert_nonnull(t->dir);
    t->export = g_build_filename(t->dir, "export", NULL);
    g_assert_cmpint(g_mkdir(t->export, 0755), ==, 0);
    t->sock = g_build_filename(t->dir, "9p.sock", NULL);
    GPtrArray *argv = g_ptr_array_new_with_free_func(g_free);
    g_ptr_array_add(argv, fsd_binary());
    g_ptr_array_add(argv, g_strdup("--export"));
    g_ptr_array_add(argv, g_strdup(t->export));
    g_ptr_array_add(argv, g_strdup("--listen"));
    g_ptr_array_add(argv, g_strdup_printf("unix:%s", t->sock));
    for (const char *const *a = args; a && *a; a++)
        g_ptr_array_add(argv, g_strdup(*a));
    /* FSD_TEST_SANDBOX=off lets LeakSanitizer (which clones a tracer at
     * exit, something the filter forbids) check fsd. */
    if (g_getenv("FSD_TEST_SANDBOX")) {
        g_ptr_array_add(argv, g_strdup("--sandbox"));
        g_ptr_array_add(argv, g_strdup(g_getenv("FSD_TEST_SANDBOX")));
    }
    g_ptr_array_add(argv, NULL);
    GError *err = NULL;
    if (!g_spawn_async(NULL, (char **)argv->pdata, NULL, G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_STDOUT_TO_DEV_NULL,
                       die_with_parent, NULL, &t->pid, &err))
        g_error("spawning fsd: %s", err->message);
    g_ptr_array_unref(argv);
    if (!wait_for_socket(t->sock, t->pid))
        g_error("fsd did not start listening on %s", t->sock);
    t->fd = connect_unix(t->sock);
    t->msize = MSIZE;
    return t;
}

static gboolean fsd_alive(T *t)
{
    return waitpid(t->pid, NULL, WNOHANG) == 0;
}

static void rm_rf(const char *path)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", path);
    g_assert_cmpint(system(cmd), ==, 0);
}

static void stop_fsd(T *t)
{
    if (t->fd >= 0)
        close(t->fd);
    int status = 0;
    g_assert_true(fsd_alive(t));
    kill(t->pid, SIGTERM);
    for (int i = 0; i < 500 && waitpid(t->pid, &status, WNOHANG) == 0; i++)
        g_usleep(10000);
    if (waitpid(t->pid, &status, WNOHANG) == 0) {
        kill(t->pid, SIGKILL);
        waitpid(t->pid, &status, 0);
        g_error("fsd did not stop on SIGTERM");
    }
    g_spawn_close_pid(t->pid);
    /* A clean exit, not a seccomp kill or a crash. */
    g_assert_true(WIFEXITED(status));
    g_assert_cmpint(WEXITSTATUS(status), ==, 0);
    rm_rf(t->dir);
    g_free(t->dir);
    g_free(t->export);
    g_free(t->sock);
    g_free(t);
}

/* ---- the wire ---- */

static void send_bytes(T *t, const void *buf, gsize len)
{
    const guint8 *p = buf;
    while (len > 0) {
        ssize_t n = send(t->fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        g_assert_cmpint(n, >, 0);
        p += n;
        len -= (gsize)n;
    }
}

static gboolean recv_exact(T *t, guint8 *buf, gsize len, int timeout_ms)
{
    gsize got = 0;
    while (got < len) {
        struct pollfd p = { .fd = t->fd, .events = POLLIN };
        int rc = poll(&p, 1, timeout_ms);
        if (rc == 0)
            return FALSE;
        g_assert_cmpint(rc, >, 0);
        ssize_t n = recv(t->fd, buf + got, len - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            g_error("fsd closed the connection (%s)", n < 0 ? g_strerror(errno) : "EOF");
        got += (gsize)n;
    }
    return TRUE;
}

/* Reads one reply into R (FALSE on timeout); its buffer goes to *RAW. */
static gboolean recv_reply(T *t, P9Fcall *r, GByteArray **raw, int timeout_ms)
{
    guint8 hdr[4];
    if (!recv_exact(t, hdr, 4, timeout_ms))
        return FALSE;
    guint32 size = hdr[0] | hdr[1] << 8 | hdr[2] << 16 | (guint32)hdr[3] << 24;
    g_assert_cmpuint(size, >=, 7);
    g_assert_cmpuint(size, <=, t->msize);
    GByteArray *b = g_byte_array_sized_new(size);
    g_byte_array_append(b, hdr, 4);
    g_byte_array_set_size(b, size);
    g_assert_true(recv_exact(t, b->data + 4, size - 4, TIMEOUT_MS));
    GError *err = NULL;
    if (!p9_decode(b->data, b->len, r, &err))
        g_error("undecodable reply: %s", err->message);
    *raw = b;
    return TRUE;
}

static guint16 next_tag(T *t)
{
    t->tag = (guint16)(t->tag + 1);
    if (t->tag == P9_NOTAG)
        t->tag = 1;
    return t->tag;
}

static void send_msg(T *t, P9Fcall *f)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    GError *err = NULL;
    if (!p9_encode(f, G_MAXUINT32, b, &err))
        g_error("encode: %s", err->message);
    send_bytes(t, b->data, b->len);
}

/* One request, one reply. Returns 0, or the errno of an Rlerror. R gets the
 * reply (p9_fcall_clear it); R->data points into *KEEP if asked for. */
static int rpc_keep(T *t, P9Fcall *f, P9Fcall *r, GByteArray **keep)
{
    if (f->type != P9_TVERSION)
        f->tag = next_tag(t);
    send_msg(t, f);
    GByteArray *raw;
    if (!recv_reply(t, r, &raw, TIMEOUT_MS))
        g_error("no reply to %s within %d ms", p9_type_name(f->type), TIMEOUT_MS);
    g_assert_cmpuint(r->tag, ==, f->tag);
    int rc = 0;
    if (r->type == P9_RLERROR) {
        rc = (int)r->ecode;
        g_assert_cmpint(rc, >, 0);
    } else {
        g_assert_cmpuint(r->type, ==, f->type + 1);
    }
    if (keep)
        *keep = raw;
    else
        g_byte_array_unref(raw);
    return rc;
}

static int rpc(T *t, P9Fcall *f)
{
    P9Fcall r;
    int rc = rpc_keep(t, f, &r, NULL);
    p9_fcall_clear(&r);
    return rc;
}

/* ---- operations ---- */

static void p9_version(T *t)
{
    P9Fcall f = { .type = P9_TVERSION, .tag = P9_NOTAG, .msize = MSIZE, .version = (char *)P9_VERSION_L };
    P9Fcall r;
    g_assert_cmpint(rpc_keep(t, &f, &r, NULL), ==, 0);
    g_assert_cmpstr(r.version, ==, P9_VERSION_L);
    g_assert_cmpuint(r.msize, ==, MSIZE);
    p9_fcall_clear(&r);
}

static P9Qid p9_attach(T *t, guint32 fid, guint32 uid)
{
    P9Fcall f = { .type = P9_TATTACH, .fid = fid, .fid2 = P9_NOFID, .uname = (char *)"user",
                  .aname = (char *)"", .n_uname = uid };
    P9Fcall r;
    g_assert_cmpint(rpc_keep(t, &f, &r, NULL), ==, 0);
    P9Qid q = r.qid;
    p9_fcall_clear(&r);
    return q;
}

static T *start_session(const char *const *args)
{
    T *t = start_fsd(args);
    p9_version(t);
    p9_attach(t, ROOT, 1000);
    return t;
}

/* Walks PATH ("a/b", "" = clone) from FID to NEWFID; returns 0 or errno, and
 * *NWQID how far it got. */
static int p9_walk_n(T *t, guint32 fid, guint32 newfid, const char *path, guint *nwqid, P9Qid *last)
{
    g_auto(GStrv) parts = *path ? g_strsplit(path, "/", -1) : g_new0(char *, 1);
    P9Fcall f = { .type = P9_TWALK, .fid = fid, .fid2 = newfid, .nwname = (guint16)g_strv_length(parts) };
    for (guint i = 0; i < f.nwname; i++)
        f.wnames[i] = parts[i];
    P9Fcall r;
    int rc = rpc_keep(t, &f, &r, NULL);
    if (nwqid)
        *nwqid = rc ? 0 : r.nwqid;
    if (!rc && last && r.nwqid)
        *last = r.wqids[r.nwqid - 1];
    if (!rc && r.nwqid < f.nwname)
        rc = -1;   /* partial walk */
    p9_fcall_clear(&r);
    return rc;
}

static int p9_walk(T *t, guint32 fid, guint32 newfid, const char *path)
{
    return p9_walk_n(t, fid, newfid, path, NULL, NULL);
}

static int p9_clunk(T *t, guint32 fid)
{
    P9Fcall f = { .type = P9_TCLUNK, .fid = fid };
    return rpc(t, &f);
}

static int p9_lopen(T *t, guint32 fid, guint32 flags)
{
    P9Fcall f = { .type = P9_TLOPEN, .fid = fid, .flags = flags };
    return rpc(t, &f);
}

static int p9_lcreate(T *t, guint32 fid, const char *name, guint32 flags, guint32 mode, guint32 gid)
{
    P9Fcall f = { .type = P9_TLCREATE, .fid = fid, .name = (char *)name, .flags = flags, .mode = mode, .gid = gid };
    return rpc(t, &f);
}

static int p9_mkdir(T *t, guint32 dfid, const char *name, guint32 mode, guint32 gid)
{
    P9Fcall f = { .type = P9_TMKDIR, .fid = dfid, .name = (char *)name, .mode = mode, .gid = gid };
    return rpc(t, &f);
}

static int p9_write(T *t, guint32 fid, guint64 off, const char *data, gsize len)
{
    P9Fcall f = { .type = P9_TWRITE, .fid = fid, .offset = off, .count = (guint32)len, .data = (const guint8 *)data };
    P9Fcall r;
    int rc = rpc_keep(t, &f, &r, NULL);
    if (rc == 0)
        g_assert_cmpuint(r.count, ==, len);
    p9_fcall_clear(&r);
    return rc;
}

/* Reads up to COUNT bytes; returns them (g_free), NULL with *ERR. */
static char *p9_read(T *t, guint32 fid, guint64 off, guint32 count, gsize *len, int *err)
{
    P9Fcall f = { .type = P9_TREAD, .fid = fid, .offset = off, .count = count };
    P9Fcall r;
    GByteArray *raw = NULL;
    *err = rpc_keep(t, &f, &r, &raw);
    char *out = NULL;
    if (*err == 0) {
        out = g_strndup((const char *)r.data, r.count);
        *len = r.count;
    }
    p9_fcall_clear(&r);
    if (raw)
        g_byte_array_unref(raw);
    return out;
}

static P9Attr p9_getattr(T *t, guint32 fid, P9Qid *qid)
{
    P9Fcall f = { .type = P9_TGETATTR, .fid = fid, .mask = P9_GETATTR_ALL };
    P9Fcall r;
    g_assert_cmpint(rpc_keep(t, &f, &r, NULL), ==, 0);
    g_assert_cmpuint(r.mask & P9_GETATTR_BASIC, ==, P9_GETATTR_BASIC);
    if (qid)
        *qid = r.qid;
    P9Attr a = r.attr;
    p9_fcall_clear(&r);
    return a;
}

static int p9_setattr(T *t, guint32 fid, P9SetAttr a)
{
    P9Fcall f = { .type = P9_TSETATTR, .fid = fid, .setattr = a };
    return rpc(t, &f);
}

static int p9_xattr_set(T *t, guint32 fid, const char *name, const char *value, gsize len)
{
    /* As the client: a clone of the fid becomes the xattr fid. */
    g_assert_cmpint(p9_walk(t, fid, 900, ""), ==, 0);
    P9Fcall f = { .type = P9_TXATTRCREATE, .fid = 900, .name = (char *)name, .xattr_size = len, .flags = 0 };
    int rc = rpc(t, &f);
    if (rc == 0 && len)
        rc = p9_write(t, 900, 0, value, len);
    int crc = p9_clunk(t, 900);
    return rc ? rc : crc;
}

static char *p9_xattr_get(T *t, guint32 fid, const char *name, gsize *len, int *err)
{
    P9Fcall f = { .type = P9_TXATTRWALK, .fid = fid, .fid2 = 901, .name = (char *)name };
    P9Fcall r;
    *err = rpc_keep(t, &f, &r, NULL);
    guint64 size = r.xattr_size;
    p9_fcall_clear(&r);
    if (*err)
        return NULL;
    char *v = size ? p9_read(t, 901, 0, (guint32)size, len, err) : g_strdup("");
    if (!size)
        *len = 0;
    g_assert_cmpint(p9_clunk(t, 901), ==, 0);
    return v;
}

/* Every name in directory FID (opened here), reading COUNT bytes a time. */
static GPtrArray *p9_readdir_all(T *t, guint32 fid, guint32 count)
{
    GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
    guint64 off = 0;
    for (;;) {
        P9Fcall f = { .type = P9_TREADDIR, .fid = fid, .offset = off, .count = count };
        P9Fcall r;
        GByteArray *raw;
        g_assert_cmpint(rpc_keep(t, &f, &r, &raw), ==, 0);
        if (r.count == 0) {
            p9_fcall_clear(&r);
            g_byte_array_unref(raw);
            break;
        }
        gsize pos = 0;
        P9Qid q;
        guint8 type;
        char *name;
        gboolean bad;
        while (p9_dirent_next(r.data, r.count, &pos, &q, &off, &type, &name, &bad))
            g_ptr_array_add(names, name);
        g_assert_false(bad);
        p9_fcall_clear(&r);
        g_byte_array_unref(raw);
    }
    return names;
}

static gboolean names_contain(GPtrArray *names, const char *name)
{
    for (guint i = 0; i < names->len; i++) {
        if (strcmp(names->pdata[i], name) == 0)
            return TRUE;
    }
    return FALSE;
}

/* A plain request still answered: fsd lives on. */
static void assert_serving(T *t)
{
    g_assert_true(fsd_alive(t));
    p9_getattr(t, ROOT, NULL);
}

static char *host_path(T *t, const char *rel)
{
    return g_build_filename(t->export, rel, NULL);
}

static guint32 host_xattr_u32(const char *path, const char *name)
{
    guint32 v = 0;
    g_assert_cmpint(lgetxattr(path, name, &v, sizeof(v)), ==, sizeof(v));
    return GUINT32_FROM_LE(v);
}

static char *host_read(const char *path)
{
    char *text = NULL;
    g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
    return text;
}

/* ---- the workflow under each model ---- */

typedef enum { M_PASSTHROUGH, M_MAPPED_XATTR, M_MAPPED_FILE, M_NONE } Model;
static const char *const model_args[] = { "passthrough", "mapped-xattr", "mapped-file", "none" };

/* What the host holds for REL: its guest uid, gid and mode per the model. */
static void check_host(T *t, Model m, const char *rel, guint32 uid, guint32 gid, guint32 mode)
{
    g_autofree char *path = host_path(t, rel);
    struct stat st;
    g_assert_cmpint(lstat(path, &st), ==, 0);
    switch (m) {
    case M_NONE:
        /* fsd holds no CAP_CHOWN there: the chown of a new object failed,
         * quietly, and fsd owns it */
        g_assert_cmpuint(st.st_uid, ==, geteuid());
        g_assert_cmpuint(st.st_gid, ==, getegid());
        g_assert_cmpuint(st.st_mode, ==, mode);
        break;
    case M_PASSTHROUGH:
        g_assert_cmpuint(st.st_uid, ==, uid);
        g_assert_cmpuint(st.st_gid, ==, gid);
        g_assert_cmpuint(st.st_mode, ==, mode);
        break;
    case M_MAPPED_XATTR:
        /* The host object belongs to fsd; the guest's view is in xattrs. */
        g_assert_cmpuint(st.st_uid, ==, geteuid());
        g_assert_cmpuint(host_xattr_u32(path, "user.virtfs.uid"), ==, uid);
        g_assert_cmpuint(host_xattr_u32(path, "user.virtfs.gid"), ==, gid);
        g_assert_cmpuint(host_xattr_u32(path, "user.virtfs.mode"), ==, mode);
        break;
    case M_MAPPED_FILE: {
        g_assert_cmpuint(st.st_uid, ==, geteuid());
        g_autofree char *dir = g_path_get_dirname(path);
        g_autofree char *base = g_path_get_basename(path);
        g_autofree char *meta = g_build_filename(dir, ".virtfs_metadata", base, NULL);
        g_autofree char *text = host_read(meta);
        g_autofree char *want = g_strdup_printf("virtfs.uid=%u\nvirtfs.gid=%u\nvirtfs.mode=%u\n", uid, gid, mode);
        /* mknod adds "virtfs.rdev=N\n", as QEMU's */
        if (!g_str_has_prefix(text, want))
            g_error("%s: metadata '%s', expected '%s'", rel, text, want);
        break;
    }
    }
}

static void workflow(gconstpointer data)
{
    Model m = (Model)GPOINTER_TO_INT(data);
    const char *args[] = { "--security-model", model_args[m], NULL };
    T *t = start_session(args);
    gboolean mapped = m == M_MAPPED_XATTR || m == M_MAPPED_FILE;
    gboolean none = m == M_NONE;
#define OWNER(v) (none ? 0u : (guint32)(v))

    /* directories */
    g_assert_cmpint(p9_mkdir(t, ROOT, "d1", 0750, 100), ==, 0);
    g_assert_cmpint(p9_mkdir(t, ROOT, "d2", 0755, 100), ==, 0);
    check_host(t, m, "d1", 1000, 100, S_IFDIR | 0750);
    if (mapped) {
        g_autofree char *p = host_path(t, "d1");
        struct stat st;
        g_assert_cmpint(stat(p, &st), ==, 0);
        g_assert_cmpuint(st.st_mode & 07777, ==, 0700);   /* dmode */
    }
    g_assert_cmpint(p9_mkdir(t, ROOT, "d1", 0750, 100), ==, EEXIST);

    /* create, write, read */
    g_assert_cmpint(p9_walk(t, ROOT, 1, "d1"), ==, 0);
    g_assert_cmpint(p9_lcreate(t, 1, "f", P9_DOTL_RDWR, 0640, 100), ==, 0);
    check_host(t, m, "d1/f", 1000, 100, S_IFREG | 0640);
    g_assert_cmpint(p9_write(t, 1, 0, "hello world", 11), ==, 0);
    gsize len;
    int err;
    g_autofree char *back = p9_read(t, 1, 0, 100, &len, &err);
    g_assert_cmpint(err, ==, 0);
    g_assert_cmpstr(back, ==, "hello world");
    /* append through a second fid opened O_APPEND: the offset is ignored */
    g_assert_cmpint(p9_walk(t, ROOT, 2, "d1/f"), ==, 0);
    g_assert_cmpint(p9_lopen(t, 2, P9_DOTL_WRONLY | P9_DOTL_APPEND), ==, 0);
    g_assert_cmpint(p9_write(t, 2, 0, "!!", 2), ==, 0);
    g_assert_cmpint(p9_clunk(t, 2), ==, 0);
    g_autofree char *appended = p9_read(t, 1, 0, 100, &len, &err);
    g_assert_cmpstr(appended, ==, "hello world!!");

    P9Qid fq;
    P9Attr a = p9_getattr(t, 1, &fq);
    g_assert_cmpuint(a.size, ==, 13);
    g_assert_cmpuint(a.mode, ==, S_IFREG | 0640);
    g_assert_cmpuint(a.uid, ==, OWNER(1000));
    g_assert_cmpuint(a.gid, ==, OWNER(100));
    g_assert_cmpuint(fq.type, ==, P9_QTFILE);

    /* truncate, chmod, chown, times */
    g_assert_cmpint(p9_setattr(t, 1, (P9SetAttr){ .valid = P9_ATTR_SIZE, .size = 5 }), ==, 0);
    g_autofree char *cut = p9_read(t, 1, 0, 100, &len, &err);
    g_assert_cmpstr(cut, ==, "hello");
    g_assert_cmpint(p9_setattr(t, 1, (P9SetAttr){ .valid = P9_ATTR_MODE, .mode = S_IFREG | 0604 }), ==, 0);
    /* none: a later chown fails as it would for the unprivileged fsd */
    g_assert_cmpint(p9_setattr(t, 1, (P9SetAttr){ .valid = P9_ATTR_UID | P9_ATTR_GID, .uid = 2000, .gid = 3000 }),
                    ==, none ? EPERM : 0);
    check_host(t, m, "d1/f", 2000, 3000, S_IFREG | 0604);
    a = p9_getattr(t, 1, NULL);
    g_assert_cmpuint(a.uid, ==, OWNER(2000));
    g_assert_cmpuint(a.gid, ==, OWNER(3000));
    g_assert_cmpuint(a.mode, ==, S_IFREG | 0604);
    P9SetAttr times = { .valid = P9_ATTR_ATIME | P9_ATTR_ATIME_SET | P9_ATTR_MTIME | P9_ATTR_MTIME_SET,
                        .atime_sec = 1000, .atime_nsec = 5, .mtime_sec = 2000, .mtime_nsec = 7 };
    g_assert_cmpint(p9_setattr(t, 1, times), ==, 0);
    a = p9_getattr(t, 1, NULL);
    g_assert_cmpuint(a.atime_sec, ==, 1000);
    g_assert_cmpuint(a.atime_nsec, ==, 5);
    g_assert_cmpuint(a.mtime_sec, ==, 2000);
    g_assert_cmpuint(a.mtime_nsec, ==, 7);
    /* MTIME without MTIME_SET is "now"; atime stays */
    g_assert_cmpint(p9_setattr(t, 1, (P9SetAttr){ .valid = P9_ATTR_MTIME }), ==, 0);
    a = p9_getattr(t, 1, NULL);
    g_assert_cmpuint(a.atime_sec, ==, 1000);
    g_assert_cmpuint(a.mtime_sec, >, (guint64)(g_get_real_time() / G_USEC_PER_SEC) - 60);
    g_assert_cmpint(p9_clunk(t, 1), ==, 0);

    /* rename across directories, by names and by fid */
    g_assert_cmpint(p9_walk(t, ROOT, 3, "d1"), ==, 0);
    g_assert_cmpint(p9_walk(t, ROOT, 4, "d2"), ==, 0);
    g_assert_cmpint(p9_walk(t, ROOT, 5, "d1/f"), ==, 0);
    P9Fcall ren = { .type = P9_TRENAMEAT, .fid = 3, .name = (char *)"f", .fid2 = 4, .name2 = (char *)"g" };
    g_assert_cmpint(rpc(t, &ren), ==, 0);
    g_assert_cmpint(p9_walk(t, ROOT, 6, "d1/f"), ==, -1);   /* partial: d1, then no f */
    g_assert_cmpint(p9_walk(t, ROOT, 6, "d2/g"), ==, 0);
    check_host(t, m, "d2/g", 2000, 3000, S_IFREG | 0604);
    /* fid 5 followed the file: its name-based operations still work */
    g_assert_cmpint(p9_setattr(t, 5, (P9SetAttr){ .valid = P9_ATTR_MODE, .mode = S_IFREG | 0600 }), ==, 0);
    check_host(t, m, "d2/g", 2000, 3000, S_IFREG | 0600);
    P9Fcall ren2 = { .type = P9_TRENAME, .fid = 6, .fid2 = 3, .name = (char *)"f2" };
    g_assert_cmpint(rpc(t, &ren2), ==, 0);
    g_assert_cmpint(p9_walk(t, ROOT, 7, "d1/f2"), ==, 0);
    if (m == M_MAPPED_FILE) {
        g_autofree char *gone = host_path(t, "d2/.virtfs_metadata/g");
        g_assert_false(g_file_test(gone, G_FILE_TEST_EXISTS));
    }

    /* hard link */
    P9Fcall link = { .type = P9_TLINK, .fid = 4, .fid2 = 7, .name = (char *)"hl" };
    g_assert_cmpint(rpc(t, &link), ==, 0);
    a = p9_getattr(t, 7, NULL);
    g_assert_cmpuint(a.nlink, ==, 2);
    g_assert_cmpint(p9_walk(t, ROOT, 8, "d2/hl"), ==, 0);
    P9Attr la = p9_getattr(t, 8, NULL);
    g_assert_cmpuint(la.uid, ==, OWNER(2000));

    /* symlink */
    P9Fcall sl = { .type = P9_TSYMLINK, .fid = 3, .name = (char *)"sl", .name2 = (char *)"target/path", .gid = 100 };
    P9Fcall slr;
    g_assert_cmpint(rpc_keep(t, &sl, &slr, NULL), ==, 0);
    g_assert_cmpuint(slr.qid.type, ==, P9_QTSYMLINK);
    p9_fcall_clear(&slr);
    g_assert_cmpint(p9_walk(t, ROOT, 9, "d1/sl"), ==, 0);
    {
        /* The walk's qid says symlink under every model (the mapped ones
         * store it as a regular file: the type is in the metadata). */
        guint n;
        P9Qid q;
        g_assert_cmpint(p9_walk_n(t, ROOT, 19, "d1/sl", &n, &q), ==, 0);
        g_assert_cmpuint(n, ==, 2);
        g_assert_cmpuint(q.type, ==, P9_QTSYMLINK);
        P9Fcall c19 = { .type = P9_TCLUNK, .fid = 19 };
        g_assert_cmpint(rpc(t, &c19), ==, 0);
    }
    P9Fcall rl = { .type = P9_TREADLINK, .fid = 9 };
    P9Fcall rlr;
    g_assert_cmpint(rpc_keep(t, &rl, &rlr, NULL), ==, 0);
    g_assert_cmpstr(rlr.name, ==, "target/path");
    p9_fcall_clear(&rlr);
    a = p9_getattr(t, 9, NULL);
    g_assert_true(S_ISLNK(a.mode));
    {
        g_autofree char *p = host_path(t, "d1/sl");
        struct stat st;
        g_assert_cmpint(lstat(p, &st), ==, 0);
        if (mapped) {
            /* a regular file holding the target */
            g_assert_true(S_ISREG(st.st_mode));
            g_autofree char *text = host_read(p);
            g_assert_cmpstr(text, ==, "target/path");
            check_host(t, m, "d1/sl", 1000, 100, S_IFLNK | 0777);
        } else {
            g_assert_true(S_ISLNK(st.st_mode));
        }
    }

    /* a fifo */
    P9Fcall mk = { .type = P9_TMKNOD, .fid = 3, .name = (char *)"fifo", .mode = S_IFIFO | 0644, .gid = 100 };
    g_assert_cmpint(rpc(t, &mk), ==, 0);
    g_assert_cmpint(p9_walk(t, ROOT, 10, "d1/fifo"), ==, 0);
    a = p9_getattr(t, 10, NULL);
    g_assert_cmpuint(a.mode, ==, S_IFIFO | 0644);
    check_host(t, m, "d1/fifo", 1000, 100, S_IFIFO | 0644);
    if (mapped) {
        g_autofree char *p = host_path(t, "d1/fifo");
        struct stat st;
        g_assert_cmpint(lstat(p, &st), ==, 0);
        g_assert_true(S_ISREG(st.st_mode));
        g_assert_cmpuint(st.st_mode & 07777, ==, 0600);   /* fmode */
    }
    /* a device node: never a real one under the mapped models */
    P9Fcall mkc = { .type = P9_TMKNOD, .fid = 3, .name = (char *)"null", .mode = S_IFCHR | 0666,
                    .major = 1, .minor = 3, .gid = 0 };
    /* none: no CAP_MKNOD */
    g_assert_cmpint(rpc(t, &mkc), ==, none ? EPERM : 0);
    if (!none) {
        g_assert_cmpint(p9_walk(t, ROOT, 11, "d1/null"), ==, 0);
        a = p9_getattr(t, 11, NULL);
        g_assert_cmpuint(a.rdev, ==, makedev(1, 3));
        g_assert_true(S_ISCHR(a.mode));
        /* a real device node is never opened on the host; under the mapped
         * models there is none, only a regular file */
        g_assert_cmpint(p9_lopen(t, 11, P9_DOTL_RDONLY), ==, mapped ? 0 : ENXIO);
        g_assert_cmpint(p9_clunk(t, 11), ==, 0);
    }

    /* xattrs */
    g_assert_cmpint(p9_walk(t, ROOT, 12, "d1/f2"), ==, 0);
    g_assert_cmpint(p9_xattr_set(t, 12, "user.test", "value", 5), ==, 0);
    g_autofree char *xv = p9_xattr_get(t, 12, "user.test", &len, &err);
    g_assert_cmpint(err, ==, 0);
    g_assert_cmpstr(xv, ==, "value");
    {
        g_autofree char *p = host_path(t, "d1/f2");
        char buf[16] = { 0 };
        g_assert_cmpint(getxattr(p, "user.test", buf, sizeof(buf)), ==, 5);
        g_assert_cmpstr(buf, ==, "value");
    }
    g_autofree char *list = p9_xattr_get(t, 12, "", &len, &err);
    g_assert_cmpint(err, ==, 0);
    g_assert_nonnull(memmem(list, len, "user.test", 10));
    if (m == M_MAPPED_XATTR) {
        /* the model's own attributes are neither listed, read nor written */
        g_assert_null(memmem(list, len, "user.virtfs", 11));
        G_GNUC_UNUSED g_autofree char *hidden = p9_xattr_get(t, 12, "user.virtfs.uid", &len, &err);
        g_assert_cmpint(err, ==, ENODATA);
        g_assert_cmpint(p9_xattr_set(t, 12, "user.virtfs.uid", "\0\0\0\0", 4), ==, EACCES);
    }
    g_assert_cmpint(p9_xattr_set(t, 12, "user.test", NULL, 0), ==, 0);   /* removexattr */
    g_assert_cmpint(p9_xattr_set(t, 12, "user.test", NULL, 0), ==, ENODATA);
    /* removing an ACL that is not there succeeds, as on a local file system
     * (cp -a does it for every file it copies) */
    g_assert_cmpint(p9_xattr_set(t, 12, "system.posix_acl_access", NULL, 0), ==, 0);
    G_GNUC_UNUSED g_autofree char *removed = p9_xattr_get(t, 12, "user.test", &len, &err);
    g_assert_cmpint(err, ==, ENODATA);

    /* statfs */
    P9Fcall sf = { .type = P9_TSTATFS, .fid = ROOT };
    P9Fcall sfr;
    g_assert_cmpint(rpc_keep(t, &sf, &sfr, NULL), ==, 0);
    g_assert_cmpuint(sfr.statfs.bsize, >, 0);
    g_assert_cmpuint(sfr.statfs.namelen, >=, 255);
    p9_fcall_clear(&sfr);

    /* readdir: the metadata stays hidden */
    g_assert_cmpint(p9_walk(t, ROOT, 13, "d1"), ==, 0);
    g_assert_cmpint(p9_lopen(t, 13, P9_DOTL_RDONLY), ==, 0);
    g_autoptr(GPtrArray) names = p9_readdir_all(t, 13, 4096);
    g_assert_true(names_contain(names, "f2"));
    g_assert_true(names_contain(names, "sl"));
    g_assert_true(names_contain(names, "fifo"));
    g_assert_false(names_contain(names, ".virtfs_metadata"));
    if (m == M_MAPPED_FILE) {
        g_autofree char *meta = host_path(t, "d1/.virtfs_metadata");
        g_assert_true(g_file_test(meta, G_FILE_TEST_IS_DIR));
        g_assert_cmpint(p9_walk(t, 3, 14, ".virtfs_metadata"), ==, ENOENT);
        g_assert_cmpint(p9_walk(t, ROOT, 14, ".virtfs_metadata_root"), ==, ENOENT);
        g_assert_cmpint(p9_mkdir(t, 3, ".virtfs_metadata", 0755, 0), ==, EINVAL);
    }
    g_assert_cmpint(p9_clunk(t, 13), ==, 0);

    /* unlink and rmdir */
    P9Fcall ul = { .type = P9_TUNLINKAT, .fid = 3, .name = (char *)"fifo" };
    g_assert_cmpint(rpc(t, &ul), ==, 0);
    P9Fcall rmd = { .type = P9_TUNLINKAT, .fid = ROOT, .name = (char *)"d1", .flags = P9_DOTL_AT_REMOVEDIR };
    g_assert_cmpint(rpc(t, &rmd), ==, ENOTEMPTY);
    for (const char *const *n = (const char *const[]){ "f2", "sl", "null", NULL }; *n; n++) {
        P9Fcall u = { .type = P9_TUNLINKAT, .fid = 3, .name = (char *)*n };
        g_assert_cmpint(rpc(t, &u), ==, none && strcmp(*n, "null") == 0 ? ENOENT : 0);
    }
    if (m == M_MAPPED_FILE) {
        g_autofree char *meta = host_path(t, "d1/.virtfs_metadata/f2");
        g_assert_false(g_file_test(meta, G_FILE_TEST_EXISTS));
    }
    g_assert_cmpint(rpc(t, &rmd), ==, 0);
    /* Tremove clunks the fid even when it fails */
    g_assert_cmpint(p9_walk(t, ROOT, 15, "d2/hl"), ==, 0);
    P9Fcall rm = { .type = P9_TREMOVE, .fid = 15 };
    g_assert_cmpint(rpc(t, &rm), ==, 0);
    g_assert_cmpint(p9_clunk(t, 15), ==, EBADF);
    {
        g_autofree char *p = host_path(t, "d2/hl");
        g_assert_false(g_file_test(p, G_FILE_TEST_EXISTS));
    }
    assert_serving(t);
    stop_fsd(t);
}

/* ---- locks ---- */

static int p9_lock(T *t, guint32 fid, guint8 type, guint64 start, guint64 len)
{
    P9Fcall f = { .type = P9_TLOCK, .fid = fid, .lock_type = type, .lock_flags = 0,
                  .lock_start = start, .lock_length = len, .proc_id = 42, .client_id = (char *)"test" };
    P9Fcall r;
    g_assert_cmpint(rpc_keep(t, &f, &r, NULL), ==, 0);
    int status = r.lock_status;
    p9_fcall_clear(&r);
    return status;
}

static void test_locks(void)
{
    T *t = start_session(NULL);
    g_assert_cmpint(p9_walk(t, ROOT, 1, ""), ==, 0);
    g_assert_cmpint(p9_lcreate(t, 1, "lockfile", P9_DOTL_RDWR, 0644, 0), ==, 0);
    g_assert_cmpint(p9_walk(t, ROOT, 2, "lockfile"), ==, 0);
    g_assert_cmpint(p9_lopen(t, 2, P9_DOTL_RDWR), ==, 0);
    g_assert_cmpint(p9_lock(t, 1, P9_LOCK_TYPE_WRLCK, 0, 100), ==, P9_LOCK_SUCCESS);
    g_assert_cmpint(p9_lock(t, 2, P9_LOCK_TYPE_WRLCK, 50, 10), ==, P9_LOCK_BLOCKED);
    g_assert_cmpint(p9_lock(t, 2, P9_LOCK_TYPE_RDLCK, 0, 0), ==, P9_LOCK_BLOCKED);
    g_assert_cmpint(p9_lock(t, 2, P9_LOCK_TYPE_WRLCK, 100, 10), ==, P9_LOCK_SUCCESS);
    P9Fcall gl = { .type = P9_TGETLOCK, .fid = 2, .lock_type = P9_LOCK_TYPE_WRLCK, .lock_start = 0,
                   .lock_length = 0, .proc_id = 42, .client_id = (char *)"test" };
    P9Fcall r;
    g_assert_cmpint(rpc_keep(t, &gl, &r, NULL), ==, 0);
    g_assert_cmpuint(r.lock_type, ==, P9_LOCK_TYPE_WRLCK);
    g_assert_cmpuint(r.lock_start, ==, 0);
    g_assert_cmpuint(r.lock_length, ==, 100);
    p9_fcall_clear(&r);
    g_assert_cmpint(p9_lock(t, 1, P9_LOCK_TYPE_UNLCK, 0, 100), ==, P9_LOCK_SUCCESS);
    g_assert_cmpint(p9_lock(t, 2, P9_LOCK_TYPE_WRLCK, 50, 10), ==, P9_LOCK_SUCCESS);
    /* shared locks share */
    g_assert_cmpint(p9_lock(t, 2, P9_LOCK_TYPE_UNLCK, 0, 0), ==, P9_LOCK_SUCCESS);
    g_assert_cmpint(p9_lock(t, 1, P9_LOCK_TYPE_RDLCK, 0, 0), ==, P9_LOCK_SUCCESS);
    g_assert_cmpint(p9_lock(t, 2, P9_LOCK_TYPE_RDLCK, 0, 0), ==, P9_LOCK_SUCCESS);
    /* a clunk releases the fid's locks */
    g_assert_cmpint(p9_clunk(t, 1), ==, 0);
    g_assert_cmpint(p9_lock(t, 2, P9_LOCK_TYPE_WRLCK, 0, 0), ==, P9_LOCK_SUCCESS);
    /* a lock on a fid that is not open */
    g_assert_cmpint(p9_walk(t, ROOT, 3, "lockfile"), ==, 0);
    P9Fcall bad = { .type = P9_TLOCK, .fid = 3, .lock_type = P9_LOCK_TYPE_WRLCK, .client_id = (char *)"x" };
    g_assert_cmpint(rpc(t, &bad), ==, EBADF);
    stop_fsd(t);
}

/* ---- readdir of 10,000 entries ---- */

static void test_readdir_10000(void)
{
    T *t = start_session(NULL);
    g_autofree char *big = host_path(t, "big");
    g_assert_cmpint(g_mkdir(big, 0755), ==, 0);
    for (int i = 0; i < 10000; i++) {
        g_autofree char *p = g_strdup_printf("%s/entry-%05d", big, i);
        int fd = open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        g_assert_cmpint(fd, >=, 0);
        close(fd);
    }
    g_assert_cmpint(p9_walk(t, ROOT, 1, "big"), ==, 0);
    g_assert_cmpint(p9_lopen(t, 1, P9_DOTL_RDONLY | P9_DOTL_DIRECTORY), ==, 0);
    g_autoptr(GPtrArray) names = p9_readdir_all(t, 1, 8192);
    g_autoptr(GHashTable) seen = g_hash_table_new(g_str_hash, g_str_equal);
    for (guint i = 0; i < names->len; i++)
        g_assert_true(g_hash_table_add(seen, names->pdata[i]));   /* no duplicates */
    g_assert_cmpuint(names->len, ==, 10002);                     /* with . and .. */
    g_assert_true(g_hash_table_contains(seen, "entry-09999"));
    /* An offset from one reply resumes on another fid: offsets survive. */
    P9Fcall f = { .type = P9_TREADDIR, .fid = 1, .offset = 0, .count = 4096 };
    P9Fcall r;
    GByteArray *raw;
    g_assert_cmpint(rpc_keep(t, &f, &r, &raw), ==, 0);
    gsize pos = 0;
    P9Qid q;
    guint64 off = 0;
    guint8 type;
    char *name;
    gboolean bad;
    guint first = 0;
    while (p9_dirent_next(r.data, r.count, &pos, &q, &off, &type, &name, &bad)) {
        first++;
        g_free(name);
    }
    p9_fcall_clear(&r);
    g_byte_array_unref(raw);
    g_assert_cmpint(p9_walk(t, ROOT, 2, "big"), ==, 0);
    g_assert_cmpint(p9_lopen(t, 2, P9_DOTL_RDONLY), ==, 0);
    guint rest = 0;
    for (;;) {
        P9Fcall g = { .type = P9_TREADDIR, .fid = 2, .offset = off, .count = 65536 };
        g_assert_cmpint(rpc_keep(t, &g, &r, &raw), ==, 0);
        guint32 count = r.count;
        pos = 0;
        while (p9_dirent_next(r.data, r.count, &pos, &q, &off, &type, &name, &bad)) {
            rest++;
            g_free(name);
        }
        p9_fcall_clear(&r);
        g_byte_array_unref(raw);
        if (!count)
            break;
    }
    g_assert_cmpuint(first + rest, ==, 10002);
    stop_fsd(t);
}

/* ---- escapes ---- */

static void assert_not_host_file(T *t, guint32 fid, const char *host)
{
    struct stat hst;
    g_assert_cmpint(stat(host, &hst), ==, 0);
    P9Qid q;
    p9_getattr(t, fid, &q);
    g_assert_cmpuint(q.path, !=, hst.st_ino);
}

typedef struct {
    char *dir;
    gint stop;
} Swapper;

/* Swaps DIR/sw between a directory and a symlink to /etc as fast as it can. */
static gpointer swap_thread(gpointer data)
{
    Swapper *s = data;
    g_autofree char *sw = g_build_filename(s->dir, "sw", NULL);
    g_autofree char *real = g_build_filename(s->dir, "sw-dir", NULL);
    g_autofree char *link = g_build_filename(s->dir, "sw-link", NULL);
    g_mkdir(real, 0755);
    g_autofree char *inside = g_build_filename(real, "passwd", NULL);
    g_file_set_contents(inside, "harmless", -1, NULL);
    symlink("/etc", link);
    while (!g_atomic_int_get(&s->stop)) {
        rename(real, sw);
        rename(sw, real);
        rename(link, sw);
        rename(sw, link);
    }
    return NULL;
}

static void test_escapes(void)
{
    T *t = start_session(NULL);
    P9Qid root;
    p9_getattr(t, ROOT, &root);
    /* ".." at the root stays at the root */
    guint n;
    P9Qid last;
    g_assert_cmpint(p9_walk_n(t, ROOT, 1, "..", &n, &last), ==, 0);
    g_assert_cmpuint(last.path, ==, root.path);
    g_assert_cmpint(p9_walk_n(t, ROOT, 2, "../../../etc/passwd", &n, &last), ==, -1);
    g_assert_cmpuint(n, ==, 3);          /* three times the root, then no etc */
    g_assert_cmpuint(last.path, ==, root.path);
    g_assert_false(p9_walk(t, ROOT, 2, "..") != 0);
    g_assert_cmpint(p9_walk(t, 2, 3, "etc"), ==, ENOENT);
    /* a name with a slash is no path */
    P9Fcall w = { .type = P9_TWALK, .fid = ROOT, .fid2 = 4, .nwname = 1, .wnames = { (char *)"a/../../etc" } };
    g_assert_cmpint(rpc(t, &w), ==, EINVAL);
    P9Fcall w2 = { .type = P9_TWALK, .fid = ROOT, .fid2 = 4, .nwname = 1, .wnames = { (char *)"" } };
    g_assert_cmpint(rpc(t, &w2), ==, EINVAL);
    /* absolute and relative symlinks are never followed */
    g_autofree char *abs = host_path(t, "abs");
    g_autofree char *rel = host_path(t, "rel");
    g_assert_cmpint(symlink("/etc", abs), ==, 0);
    g_assert_cmpint(symlink("../../../../../../etc", rel), ==, 0);
    g_assert_cmpint(p9_walk_n(t, ROOT, 5, "abs/passwd", &n, &last), ==, -1);
    g_assert_cmpuint(n, ==, 1);
    g_assert_cmpuint(last.type, ==, P9_QTSYMLINK);
    g_assert_cmpint(p9_walk_n(t, ROOT, 5, "rel/passwd", &n, NULL), ==, -1);
    g_assert_cmpint(p9_walk(t, ROOT, 5, "abs"), ==, 0);
    g_assert_cmpint(p9_lopen(t, 5, P9_DOTL_RDONLY), ==, ELOOP);
    g_assert_cmpint(p9_lcreate(t, 5, "x", P9_DOTL_RDWR, 0644, 0), ==, ENOTDIR);
    g_assert_cmpint(p9_mkdir(t, 5, "x", 0755, 0), ==, ENOTDIR);
    G_GNUC_UNUSED g_autofree char *xs = p9_xattr_get(t, 5, "", &(gsize){ 0 }, &(int){ 0 });
    /* names that are not one component */
    g_assert_cmpint(p9_lcreate(t, ROOT, "..", P9_DOTL_RDWR, 0644, 0), ==, EINVAL);
    g_assert_cmpint(p9_mkdir(t, ROOT, "a/b", 0755, 0), ==, EINVAL);
    P9Fcall ren = { .type = P9_TRENAMEAT, .fid = ROOT, .name = (char *)"abs", .fid2 = ROOT, .name2 = (char *)"../x" };
    g_assert_cmpint(rpc(t, &ren), ==, EINVAL);
    P9Fcall lnk = { .type = P9_TLINK, .fid = ROOT, .fid2 = ROOT, .name = (char *)"rootlink" };
    g_assert_cmpint(rpc(t, &lnk), ==, EPERM);
    P9Fcall rmroot = { .type = P9_TREMOVE, .fid = 1 };
    g_assert_cmpint(rpc(t, &rmroot), ==, EBUSY);

    /* a symlink swapped in during walks: never /etc/passwd */
    Swapper s = { .dir = t->export };
    GThread *th = g_thread_new("swap", swap_thread, &s);
    guint reached = 0;
    for (int i = 0; i < 2000; i++) {
        if (p9_walk(t, ROOT, 20, "sw/passwd") == 0) {
            reached++;
            assert_not_host_file(t, 20, "/etc/passwd");
            P9Fcall o = { .type = P9_TLOPEN, .fid = 20, .flags = P9_DOTL_RDONLY };
            if (rpc(t, &o) == 0) {
                gsize len;
                int err;
                g_autofree char *text = p9_read(t, 20, 0, 100, &len, &err);
                g_assert_cmpstr(text, ==, "harmless");
            }
            g_assert_cmpint(p9_clunk(t, 20), ==, 0);
        }
        if (p9_walk(t, ROOT, 21, "sw") == 0) {
            /* creating inside whatever sw was at the walk never lands in /etc */
            int rc = p9_lcreate(t, 21, "fsd-escape-probe", P9_DOTL_RDWR, 0644, 0);
            g_assert_false(g_file_test("/etc/fsd-escape-probe", G_FILE_TEST_EXISTS));
            if (rc == 0) {
                g_autofree char *probe = g_build_filename(t->export, "sw-dir", "fsd-escape-probe", NULL);
                g_unlink(probe);
            }
            p9_clunk(t, 21);
        }
    }
    g_atomic_int_set(&s.stop, 1);
    g_thread_join(th);
    g_test_message("swapped-symlink walks that reached the real directory: %u of 2000", reached);
    assert_serving(t);
    stop_fsd(t);
}

/* ---- what a kernel never sends ---- */

static void send_raw_expect_error(T *t, const guint8 *msg, gsize len, guint16 tag, int want)
{
    send_bytes(t, msg, len);
    P9Fcall r;
    GByteArray *raw;
    g_assert_true(recv_reply(t, &r, &raw, TIMEOUT_MS));
    g_assert_cmpuint(r.type, ==, P9_RLERROR);
    g_assert_cmpuint(r.tag, ==, tag);
    g_assert_cmpint(r.ecode, ==, want);
    p9_fcall_clear(&r);
    g_byte_array_unref(raw);
}

static GByteArray *raw_msg(guint8 type, guint16 tag, const void *body, gsize n, guint32 size_field)
{
    GByteArray *b = g_byte_array_new();
    guint32 le = GUINT32_TO_LE(size_field ? size_field : (guint32)(7 + n));
    g_byte_array_append(b, (const guint8 *)&le, 4);
    g_byte_array_append(b, &type, 1);
    guint16 tle = GUINT16_TO_LE(tag);
    g_byte_array_append(b, (const guint8 *)&tle, 2);
    if (n)
        g_byte_array_append(b, body, (guint)n);
    return b;
}

static void test_malformed(void)
{
    T *t = start_session(NULL);
    /* a Twalk whose names end early */
    guint8 walk[] = { 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 1, 0, 'a' };
    g_autoptr(GByteArray) m1 = raw_msg(P9_TWALK, 11, walk, sizeof(walk), 0);
    send_raw_expect_error(t, m1->data, m1->len, 11, EINVAL);
    /* too many names */
    guint8 walk17[] = { 0, 0, 0, 0, 1, 0, 0, 0, 17, 0 };
    g_autoptr(GByteArray) m2 = raw_msg(P9_TWALK, 12, walk17, sizeof(walk17), 0);
    send_raw_expect_error(t, m2->data, m2->len, 12, EINVAL);
    /* a NUL inside a name */
    guint8 nul[] = { 0, 0, 0, 0, 3, 0, 'a', 0, 'b', 0xed, 1, 0, 0, 0, 0 };
    g_autoptr(GByteArray) m3 = raw_msg(P9_TMKDIR, 13, nul, sizeof(nul), 0);
    send_raw_expect_error(t, m3->data, m3->len, 13, EINVAL);
    /* unknown and dropped types, and an R-message */
    g_autoptr(GByteArray) m4 = raw_msg(200, 14, NULL, 0, 0);
    send_raw_expect_error(t, m4->data, m4->len, 14, EOPNOTSUPP);
    guint8 fid0[4] = { 0 };
    g_autoptr(GByteArray) m5 = raw_msg(P9_TSTAT, 15, fid0, 4, 0);
    send_raw_expect_error(t, m5->data, m5->len, 15, EOPNOTSUPP);
    g_autoptr(GByteArray) m6 = raw_msg(P9_RCLUNK, 16, NULL, 0, 0);
    send_raw_expect_error(t, m6->data, m6->len, 16, EINVAL);
    /* a Twrite whose count runs past the message */
    guint8 wr[] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x10, 0, 0, 'x' };
    g_autoptr(GByteArray) m7 = raw_msg(P9_TWRITE, 17, wr, sizeof(wr), 0);
    send_raw_expect_error(t, m7->data, m7->len, 17, EINVAL);
    /* left-over bytes */
    guint8 clunk_extra[] = { 0, 0, 0, 0, 9 };
    g_autoptr(GByteArray) m8 = raw_msg(P9_TCLUNK, 18, clunk_extra, sizeof(clunk_extra), 0);
    send_raw_expect_error(t, m8->data, m8->len, 18, EINVAL);
    /* larger than msize: refused and skipped, the stream stays in step */
    gsize big = MSIZE + 4096;
    g_autofree guint8 *body = g_malloc0(big);
    g_autoptr(GByteArray) m9 = raw_msg(P9_TWRITE, 19, body, big, 0);
    send_raw_expect_error(t, m9->data, m9->len, 19, EMSGSIZE);
    /* a message shorter than its header: answered with NOTAG */
    guint8 tiny[5] = { 5, 0, 0, 0, P9_TCLUNK };
    send_raw_expect_error(t, tiny, sizeof(tiny), P9_NOTAG, EINVAL);
    assert_serving(t);

    /* reused and unknown fids */
    P9Fcall at = { .type = P9_TATTACH, .fid = ROOT, .fid2 = P9_NOFID, .uname = (char *)"u", .aname = (char *)"" };
    g_assert_cmpint(rpc(t, &at), ==, EEXIST);
    g_assert_cmpint(p9_walk(t, ROOT, 1, ""), ==, 0);
    g_assert_cmpint(p9_walk(t, ROOT, 1, ""), ==, EEXIST);
    g_assert_cmpint(p9_walk(t, 77, 78, ""), ==, EBADF);
    g_assert_cmpint(p9_clunk(t, 77), ==, EBADF);
    g_assert_cmpint(p9_lopen(t, 1, P9_DOTL_RDONLY), ==, 0);
    g_assert_cmpint(p9_lopen(t, 1, P9_DOTL_RDONLY), ==, EINVAL);   /* already open */
    P9Fcall badname = { .type = P9_TATTACH, .fid = 50, .fid2 = P9_NOFID, .uname = (char *)"u",
                        .aname = (char *)"/no/such/export" };
    g_assert_cmpint(rpc(t, &badname), ==, ENOENT);

    /* huge counts */
    g_assert_cmpint(p9_walk(t, ROOT, 2, ""), ==, 0);
    g_assert_cmpint(p9_lcreate(t, 2, "data", P9_DOTL_RDWR, 0644, 0), ==, 0);
    g_autofree char *chunk = g_malloc0(MSIZE - 64);
    g_assert_cmpint(p9_write(t, 2, 0, chunk, MSIZE - 64), ==, 0);
    g_assert_cmpint(p9_write(t, 2, MSIZE - 64, chunk, MSIZE - 64), ==, 0);
    gsize len;
    int err;
    G_GNUC_UNUSED g_autofree char *all = p9_read(t, 2, 0, 0xffffffffu, &len, &err);
    g_assert_cmpint(err, ==, 0);
    g_assert_cmpuint(len, ==, MSIZE - 11);          /* clamped to msize */
    G_GNUC_UNUSED g_autofree char *far = p9_read(t, 2, G_MAXUINT64, 10, &len, &err);
    g_assert_cmpint(err, ==, EINVAL);
    g_assert_cmpint(p9_walk(t, ROOT, 3, "data"), ==, 0);
    P9Fcall xc = { .type = P9_TXATTRCREATE, .fid = 3, .name = (char *)"user.big", .xattr_size = 1ULL << 40 };
    g_assert_cmpint(rpc(t, &xc), ==, E2BIG);
    P9Fcall xw = { .type = P9_TXATTRCREATE, .fid = 3, .name = (char *)"user.small", .xattr_size = 4 };
    g_assert_cmpint(rpc(t, &xw), ==, 0);
    g_assert_cmpint(p9_write(t, 3, 2, "abcdef", 6), ==, ENOSPC);   /* beyond the declared size */
    g_assert_cmpint(p9_clunk(t, 3), ==, EINVAL);                    /* never fully written */
    P9Fcall rd = { .type = P9_TREADDIR, .fid = 1, .offset = 0, .count = 0xffffffffu };
    g_assert_cmpint(rpc(t, &rd), ==, 0);
    P9Fcall lk = { .type = P9_TLOCK, .fid = 2, .lock_type = 9, .client_id = (char *)"x" };
    P9Fcall lkr;
    g_assert_cmpint(rpc_keep(t, &lk, &lkr, NULL), ==, 0);
    g_assert_cmpuint(lkr.lock_status, ==, P9_LOCK_ERROR);
    p9_fcall_clear(&lkr);
    /* a version other than 9P2000.L */
    P9Fcall v = { .type = P9_TVERSION, .tag = P9_NOTAG, .msize = MSIZE, .version = (char *)"9P2000.u" };
    P9Fcall vr;
    g_assert_cmpint(rpc_keep(t, &v, &vr, NULL), ==, 0);
    g_assert_cmpstr(vr.version, ==, "unknown");
    p9_fcall_clear(&vr);
    /* a new session forgets the old fids */
    p9_version(t);
    g_assert_cmpint(p9_clunk(t, 2), ==, EBADF);
    p9_attach(t, ROOT, 0);
    assert_serving(t);
    /* garbage that cannot be framed ends the connection, not fsd */
    guint8 junk[4] = { 1, 0, 0, 0 };
    send_bytes(t, junk, sizeof(junk));
    guint8 b;
    struct pollfd p = { .fd = t->fd, .events = POLLIN };
    g_assert_cmpint(poll(&p, 1, TIMEOUT_MS), ==, 1);
    g_assert_cmpint(recv(t->fd, &b, 1, 0), ==, 0);
    close(t->fd);
    t->fd = connect_unix(t->sock);
    p9_version(t);
    p9_attach(t, ROOT, 0);
    assert_serving(t);
    stop_fsd(t);
}

/* ---- flush ---- */

static void test_flush(void)
{
    /* 1000 bytes/s and a 100-byte bucket: the first read goes, the next
     * waits seconds in the throttle, where a flush finds it. */
    const char *args[] = { "--throttling.bps-read=1000", NULL };
    T *t = start_session(args);
    g_autofree char *p = host_path(t, "file");
    g_assert_true(g_file_set_contents(p, "0123456789", 10, NULL));
    g_assert_cmpint(p9_walk(t, ROOT, 1, "file"), ==, 0);
    g_assert_cmpint(p9_lopen(t, 1, P9_DOTL_RDONLY), ==, 0);
    P9Fcall r1 = { .type = P9_TREAD, .tag = 100, .fid = 1, .offset = 0, .count = 4096 };
    P9Fcall r2 = { .type = P9_TREAD, .tag = 101, .fid = 1, .offset = 0, .count = 4096 };
    /* the first read (tag 100) spends the bucket: it is answered first */
    gint64 start = g_get_monotonic_time();
    send_msg(t, &r1);
    {
        P9Fcall r;
        GByteArray *raw;
        g_assert_true(recv_reply(t, &r, &raw, TIMEOUT_MS));
        g_assert_cmpuint(r.tag, ==, 100);
        g_assert_cmpuint(r.type, ==, P9_RREAD);
        p9_fcall_clear(&r);
        g_byte_array_unref(raw);
    }
    send_msg(t, &r2);
    /* another request is not held up by the waiting read */
    P9Fcall ga = { .type = P9_TGETATTR, .tag = 102, .fid = 1, .mask = P9_GETATTR_BASIC };
    send_msg(t, &ga);
    P9Fcall fl = { .type = P9_TFLUSH, .tag = 103, .oldtag = 101 };
    gboolean got_r1 = TRUE, got_getattr = FALSE, got_flush = FALSE;
    while (!got_flush || !got_r1 || !got_getattr) {
        P9Fcall r;
        GByteArray *raw;
        g_assert_true(recv_reply(t, &r, &raw, TIMEOUT_MS));
        if (r.tag == 100)
            got_r1 = TRUE;
        else if (r.tag == 102) {
            got_getattr = TRUE;
            g_assert_cmpuint(r.type, ==, P9_RGETATTR);
            send_msg(t, &fl);   /* now read 101 waits for certain */
        } else if (r.tag == 103) {
            g_assert_cmpuint(r.type, ==, P9_RFLUSH);
            got_flush = TRUE;
        } else {
            g_error("unexpected reply type %u tag %u (the flushed read answered)", r.type, r.tag);
        }
        p9_fcall_clear(&r);
        g_byte_array_unref(raw);
    }
    /* the flush did not wait for the throttle (the read would take ~4 s) */
    g_assert_cmpint(g_get_monotonic_time() - start, <, 3 * G_USEC_PER_SEC);
    /* nothing more for tag 101 */
    P9Fcall r;
    GByteArray *raw;
    g_assert_false(recv_reply(t, &r, &raw, 300));
    /* a flush of a tag that is not pending is answered at once */
    P9Fcall fl2 = { .type = P9_TFLUSH, .oldtag = 4321 };
    g_assert_cmpint(rpc(t, &fl2), ==, 0);
    assert_serving(t);
    stop_fsd(t);
}

/* ---- readonly, writeout, throttling, activation ---- */

static void test_readonly(void)
{
    const char *args[] = { "--readonly", NULL };
    T *t = start_session(args);
    g_autofree char *p = host_path(t, "file");
    g_assert_true(g_file_set_contents(p, "data", 4, NULL));
    g_assert_cmpint(p9_walk(t, ROOT, 1, ""), ==, 0);
    g_assert_cmpint(p9_lcreate(t, 1, "new", P9_DOTL_RDWR, 0644, 0), ==, EROFS);
    g_assert_cmpint(p9_mkdir(t, ROOT, "dir", 0755, 0), ==, EROFS);
    g_assert_cmpint(p9_walk(t, ROOT, 2, "file"), ==, 0);
    g_assert_cmpint(p9_lopen(t, 2, P9_DOTL_WRONLY), ==, EROFS);
    g_assert_cmpint(p9_lopen(t, 2, P9_DOTL_RDONLY | P9_DOTL_TRUNC), ==, EROFS);
    g_assert_cmpint(p9_setattr(t, 2, (P9SetAttr){ .valid = P9_ATTR_SIZE, .size = 0 }), ==, EROFS);
    g_assert_cmpint(p9_xattr_set(t, 2, "user.x", "1", 1), ==, EROFS);
    P9Fcall ul = { .type = P9_TUNLINKAT, .fid = ROOT, .name = (char *)"file" };
    g_assert_cmpint(rpc(t, &ul), ==, EROFS);
    P9Fcall ren = { .type = P9_TRENAMEAT, .fid = ROOT, .name = (char *)"file", .fid2 = ROOT, .name2 = (char *)"x" };
    g_assert_cmpint(rpc(t, &ren), ==, EROFS);
    P9Fcall sl = { .type = P9_TSYMLINK, .fid = ROOT, .name = (char *)"s", .name2 = (char *)"t" };
    g_assert_cmpint(rpc(t, &sl), ==, EROFS);
    P9Fcall mk = { .type = P9_TMKNOD, .fid = ROOT, .name = (char *)"n", .mode = S_IFIFO | 0644 };
    g_assert_cmpint(rpc(t, &mk), ==, EROFS);
    P9Fcall lnk = { .type = P9_TLINK, .fid = ROOT, .fid2 = 2, .name = (char *)"l" };
    g_assert_cmpint(rpc(t, &lnk), ==, EROFS);
    P9Fcall rm = { .type = P9_TREMOVE, .fid = 2 };
    g_assert_cmpint(rpc(t, &rm), ==, EROFS);
    g_assert_cmpint(p9_walk(t, ROOT, 3, "file"), ==, 0);
    g_assert_cmpint(p9_lopen(t, 3, P9_DOTL_RDONLY), ==, 0);
    gsize len;
    int err;
    g_autofree char *text = p9_read(t, 3, 0, 100, &len, &err);
    g_assert_cmpstr(text, ==, "data");
    g_autofree char *host = host_read(p);
    g_assert_cmpstr(host, ==, "data");
    stop_fsd(t);
}

static void test_writeout_immediate(void)
{
    const char *args[] = { "--writeout", "immediate", NULL };
    T *t = start_session(args);
    g_assert_cmpint(p9_walk(t, ROOT, 1, ""), ==, 0);
    g_assert_cmpint(p9_lcreate(t, 1, "synced", P9_DOTL_WRONLY, 0644, 0), ==, 0);
    g_assert_cmpint(p9_write(t, 1, 0, "durable", 7), ==, 0);
    /* answered means on disk: a kill -9 right after loses nothing */
    kill(t->pid, SIGKILL);
    waitpid(t->pid, NULL, 0);
    g_autofree char *p = host_path(t, "synced");
    g_autofree char *text = host_read(p);
    g_assert_cmpstr(text, ==, "durable");
    close(t->fd);
    rm_rf(t->dir);
    g_free(t->dir);
    g_free(t->export);
    g_free(t->sock);
    g_spawn_close_pid(t->pid);
    g_free(t);
}

static void test_throttle_bps(void)
{
    const guint64 limit = 4u << 20;   /* 4 MiB/s */
    g_autofree char *arg = g_strdup_printf("--throttling.bps-read=%" G_GUINT64_FORMAT, limit);
    const char *args[] = { arg, NULL };
    T *t = start_session(args);
    g_autofree char *p = host_path(t, "big");
    g_autofree char *data = g_malloc0(16u << 20);
    g_assert_true(g_file_set_contents(p, data, 16u << 20, NULL));
    g_assert_cmpint(p9_walk(t, ROOT, 1, "big"), ==, 0);
    g_assert_cmpint(p9_lopen(t, 1, P9_DOTL_RDONLY), ==, 0);
    /* warm up: spend the initial burst */
    gsize len;
    int err;
    g_free(p9_read(t, 1, 0, 128 * 1024, &len, &err));
    guint64 total = 0;
    gint64 start = g_get_monotonic_time();
    while (total < 3 * limit) {
        g_free(p9_read(t, 1, total % (12u << 20), 128 * 1024, &len, &err));
        g_assert_cmpint(err, ==, 0);
        total += len;
    }
    double secs = (double)(g_get_monotonic_time() - start) / G_USEC_PER_SEC;
    double rate = (double)total / secs;
    g_test_message("throttled read: %.0f bytes/s against a limit of %" G_GUINT64_FORMAT " (%.1f%%)",
                   rate, limit, 100.0 * rate / (double)limit);
    /* Never faster than the limit plus 10 %; slower only by how loaded the
     * machine is, so the lower bound is generous. */
    g_assert_cmpfloat(rate, <=, 1.10 * (double)limit);
    g_assert_cmpfloat(rate, >=, 0.50 * (double)limit);
    stop_fsd(t);
}

static void test_socket_activation(void)
{
    const char *sd = g_getenv("SD_ACTIVATE");
    if (!sd || !g_file_test(sd, G_FILE_TEST_IS_EXECUTABLE)) {
        g_test_skip("SD_ACTIVATE (tests/integration/sd-activate) not built");
        return;
    }
    g_autofree char *dir = g_dir_make_tmp("fsd-sd-XXXXXX", NULL);
    g_autofree char *export = g_build_filename(dir, "export", NULL);
    g_mkdir(export, 0755);
    g_autofree char *sock = g_build_filename(dir, "9p.sock", NULL);
    g_autofree char *notify = g_build_filename(dir, "notify.sock", NULL);
    g_autofree char *fsd = fsd_binary();
    /* fd 3 taken first: sd-activate's dup2(listen_fd, 3) is a no-op that
     * keeps close-on-exec when its socket already is fd 3. */
    const char *argv[] = { "/bin/sh", "-c", "exec 3</dev/null; exec \"$@\"", "sh",
                           sd, "--listen", sock, "--notify", notify, "--timeout", "30", "--",
                           fsd, "--export", export, "--once",
                           g_getenv("FSD_TEST_SANDBOX") ? "--sandbox" : NULL, g_getenv("FSD_TEST_SANDBOX"), NULL };
    GPid pid;
    int out_fd;
    GError *err = NULL;
    if (!g_spawn_async_with_pipes(NULL, (char **)argv, NULL, G_SPAWN_DO_NOT_REAP_CHILD, NULL, NULL, &pid, NULL,
                                  &out_fd, NULL, &err))
        g_error("sd-activate: %s", err->message);
    T t = { .pid = pid, .msize = MSIZE };
    g_assert_true(wait_for_socket(sock, pid));
    t.fd = connect_unix(sock);
    p9_version(&t);
    p9_attach(&t, ROOT, 0);
    p9_getattr(&t, ROOT, NULL);
    close(t.fd);
    /* --once: the last client gone, fsd exits 0 and sd-activate with it */
    int status;
    g_assert_cmpint(waitpid(pid, &status, 0), ==, pid);
    g_assert_true(WIFEXITED(status));
    g_assert_cmpint(WEXITSTATUS(status), ==, 0);
    char buf[4096] = { 0 };
    ssize_t n = read(out_fd, buf, sizeof(buf) - 1);
    close(out_fd);
    g_assert_cmpint(n, >, 0);
    g_assert_nonnull(strstr(buf, "READY=1"));
    g_spawn_close_pid(pid);
    rm_rf(dir);
}

static void test_cli_errors(void)
{
    g_autofree char *fsd = fsd_binary();
    struct { const char *args; const char *message; } cases[] = {
        { "--export /tmp --listen unix:/nonexistent/x --security-model bogus", "invalid security_model" },
        { "--export /tmp --listen unix:/nonexistent/x --fmode 0644", "fmode is only valid for mapped" },
        { "--export /tmp --listen unix:/nonexistent/x --writeout later", "writeout" },
        { "--export /tmp --listen unix:/nonexistent/x --throttling.bps-total=1 --throttling.bps-read=1",
          "cannot be used at the same time" },
        { "--export /nonexistent --listen unix:/tmp/x", "/nonexistent" },
        { "--listen unix:/tmp/x", "--export PATH is required" },
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *cmd = g_strdup_printf("%s %s", fsd, cases[i].args);
        g_autofree char *out = NULL;
        g_autofree char *errtext = NULL;
        int status;
        g_assert_true(g_spawn_command_line_sync(cmd, &out, &errtext, &status, NULL));
        g_assert_false(g_spawn_check_wait_status(status, NULL));
        if (!strstr(errtext, cases[i].message))
            g_error("'%s': expected '%s' in: %s", cases[i].args, cases[i].message, errtext);
    }
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    signal(SIGPIPE, SIG_IGN);
    g_autofree char *fsd = fsd_binary();
    if (!g_file_test(fsd, G_FILE_TEST_IS_EXECUTABLE)) {
        printf("1..0 # SKIP no fsd at %s\n", fsd);
        return 77;
    }
    g_test_add_data_func("/fsd/workflow/passthrough", GINT_TO_POINTER(M_PASSTHROUGH), workflow);
    g_test_add_data_func("/fsd/workflow/mapped-xattr", GINT_TO_POINTER(M_MAPPED_XATTR), workflow);
    g_test_add_data_func("/fsd/workflow/mapped-file", GINT_TO_POINTER(M_MAPPED_FILE), workflow);
    g_test_add_data_func("/fsd/workflow/none", GINT_TO_POINTER(M_NONE), workflow);
    g_test_add_func("/fsd/locks", test_locks);
    g_test_add_func("/fsd/readdir-10000", test_readdir_10000);
    g_test_add_func("/fsd/escapes", test_escapes);
    g_test_add_func("/fsd/malformed", test_malformed);
    g_test_add_func("/fsd/flush", test_flush);
    g_test_add_func("/fsd/readonly", test_readonly);
    g_test_add_func("/fsd/writeout-immediate", test_writeout_immediate);
    g_test_add_func("/fsd/throttle-bps", test_throttle_bps);
    g_test_add_func("/fsd/socket-activation", test_socket_activation);
    g_test_add_func("/fsd/cli-errors", test_cli_errors);
    return g_test_run();
}
