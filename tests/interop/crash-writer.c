/* crash-writer: a write workload whose acknowledged writes can be checked after
 * a kill -9 at any point.
 *
 *   crash-writer [--count N] [options] IMAGE FORMAT SEED LOG
 *   crash-writer --verify [--base RAW] [--dump-expected RAW] IMAGE FORMAT SEED LOG
 *
 * The stream of requests (write, write-zeroes, discard, grouped in batches) is a
 * pure function of SEED and the image size, so the log only has to say which
 * batches a flush acknowledged: after each batch the writer calls
 * vmm_block_flush and only THEN appends the batch to LOG and fsyncs it. The
 * verifier regenerates the stream, replays the acknowledged batches into a
 * per-sector model, and allows the first unacknowledged batch (the one that may
 * have been in flight at the kill) to have landed or not, sector by sector.
 * Every sector of the image must hold one of the contents the model allows,
 * read through our block layer and through `qemu-img convert -O raw`.
 *
 * Sector granularity is sound for a killed process: the page cache keeps every
 * completed write, and a write interrupted by SIGKILL stops at a page boundary,
 * never inside a 512-byte sector of the file. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blockd/block.h"
#include "common/error.h"

#define SECTOR 512u
#define CHUNK (4u << 20)       /* bytes read per request when verifying */
#define MAX_BATCH 8
#define MAX_REPORTS 10

typedef enum { OP_WRITE = 'w', OP_ZEROES = 'z', OP_DISCARD = 'd' } OpKind;

typedef struct {
    guint64 index;
    OpKind kind;
    guint64 offset, len;       /* bytes, sector-aligned */
    int flags;                 /* VMM_BDRV_REQ_* for write-zeroes */
} Op;

/* The deterministic request stream. */
typedef struct {
    guint64 rng;
    guint64 next_index;
    guint64 nsect;
    gboolean no_discard;
} OpGen;

typedef struct {
    char *image, *format, *log;
    guint64 seed;
    gint64 count;              /* -1: until killed (or max_seconds) */
    int max_seconds;
    gboolean serial, nocache, no_discard, rw;
    char *base, *dump_expected;
} Args;

/* ---- the pattern and the stream ---- */

static guint64 splitmix64(guint64 *state)
{
    guint64 z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The data of write INDEX at image offset OFFSET depends on both, so a sector
 * written to the wrong place or by the wrong request is caught. */
static void fill_pattern(guint64 seed, guint64 index, guint64 offset, guint64 len, guint8 *buf)
{
    for (guint64 i = 0; i < len; i += 8) {
        guint64 st = seed * 0x100000001b3ull ^ (index << 40) ^ ((offset + i) / 8);
        guint64 v = splitmix64(&st);
        memcpy(buf + i, &v, 8);
    }
}

static void opgen_init(OpGen *g, guint64 seed, guint64 size, gboolean no_discard)
{
    g->rng = seed;
    g->next_index = 0;
    g->nsect = size / SECTOR;
    g->no_discard = no_discard;
}

static guint64 pick_len_sectors(OpGen *g)
{
    guint64 r = splitmix64(&g->rng) % 100, max;
    if (r < 50) {
        max = 8;               /* inside one cluster: COW of the rest */
    } else if (r < 80) {
        max = 128;             /* up to 64 KiB: crosses small clusters */
    } else if (r < 95) {
        max = 2048;            /* up to 1 MiB */
    } else {
        max = 8192;            /* up to 4 MiB: several L2 entries */
    }
    max = MIN(max, g->nsect);
    return 1 + splitmix64(&g->rng) % max;
}

static guint64 pick_batch_size(OpGen *g)
{
    return 1 + splitmix64(&g->rng) % MAX_BATCH;
}

static void opgen_next(OpGen *g, Op *op)
{
    guint64 r = splitmix64(&g->rng) % 100;
    guint64 len = pick_len_sectors(g);
    guint64 start = splitmix64(&g->rng) % (g->nsect - len + 1);
    guint64 unmap = splitmix64(&g->rng) & 1;

    op->index = g->next_index++;
    op->kind = r < 80 ? OP_WRITE : r < 90 ? OP_ZEROES : OP_DISCARD;
    if (op->kind == OP_DISCARD && g->no_discard) {
        op->kind = OP_WRITE;
    }
    op->offset = start * SECTOR;
    op->len = len * SECTOR;
    op->flags = op->kind == OP_ZEROES && unmap ? VMM_BDRV_REQ_MAY_UNMAP : 0;
}

/* The next batch: the requests one flush acknowledges. */
static guint opgen_batch(OpGen *g, Op *ops)
{
    guint n = pick_batch_size(g);
    for (guint i = 0; i < n; i++) {
        opgen_next(g, &ops[i]);
    }
    return n;
}

/* ---- the writer ---- */

typedef struct {
    VmmBlockDev *bs;
    guint64 seed;
    const Op *op;
    GError *error;
} OpRun;

static gboolean run_op(VmmBlockDev *bs, guint64 seed, const Op *op, GError **error)
{
    switch (op->kind) {
    case OP_WRITE: {
        g_autofree guint8 *buf = g_malloc(op->len);
        fill_pattern(seed, op->index, op->offset, op->len, buf);
        return vmm_block_pwrite(bs, op->offset, op->len, buf, 0, error);
    }
    case OP_ZEROES:
        return vmm_block_pwrite_zeroes(bs, op->offset, op->len, op->flags, error);
    case OP_DISCARD:
        return vmm_block_pdiscard(bs, op->offset, op->len, error);
    }
    g_assert_not_reached();
}

static gpointer run_op_thread(gpointer data)
{
    OpRun *r = data;
    run_op(r->bs, r->seed, r->op, &r->error);
    return NULL;
}

static gboolean ops_overlap(const Op *ops, guint n)
{
    for (guint i = 0; i < n; i++) {
        for (guint j = i + 1; j < n; j++) {
            if (ops[i].offset < ops[j].offset + ops[j].len &&
                ops[j].offset < ops[i].offset + ops[i].len) {
                return TRUE;
            }
        }
    }
    return FALSE;
}

/* Requests of a batch that do not overlap run at once, from one thread each:
 * concurrent allocations in the same cluster or L2 table are what a guest does.
 * Overlapping ones run in order, so the acknowledged content is defined. */
static gboolean run_batch(VmmBlockDev *bs, guint64 seed, const Op *ops, guint n, gboolean serial,
                          GError **error)
{
    if (serial || n == 1 || ops_overlap(ops, n)) {
        for (guint i = 0; i < n; i++) {
            if (!run_op(bs, seed, &ops[i], error)) {
                return FALSE;
            }
        }
        return TRUE;
    }
    OpRun runs[MAX_BATCH];
    GThread *threads[MAX_BATCH];
    for (guint i = 0; i < n; i++) {
        runs[i] = (OpRun){ .bs = bs, .seed = seed, .op = &ops[i] };
        threads[i] = g_thread_new("crash-writer", run_op_thread, &runs[i]);
    }
    gboolean ok = TRUE;
    for (guint i = 0; i < n; i++) {
        g_thread_join(threads[i]);
        if (runs[i].error && ok) {
            g_propagate_error(error, runs[i].error);
            ok = FALSE;
        } else {
            g_clear_error(&runs[i].error);
        }
    }
    return ok;
}

static gboolean write_all_sync(int fd, const char *path, const char *data, gsize len, GError **error)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return vmm_set_errno(error, errno, "%s: write", path);
        }
        data += n;
        len -= n;
    }
    if (fsync(fd) < 0) {
        return vmm_set_errno(error, errno, "%s: fsync", path);
    }
    return TRUE;
}

static gboolean log_batch(int fd, const char *path, const Op *ops, guint n, GError **error)
{
    g_autoptr(GString) s = g_string_new(NULL);
    for (guint i = 0; i < n; i++) {
        g_string_append_printf(s, "%c %" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT "\n",
                               ops[i].kind, ops[i].index, ops[i].offset, ops[i].len);
    }
    g_string_append_printf(s, "f %" G_GUINT64_FORMAT "\n", ops[n - 1].index + 1);
    return write_all_sync(fd, path, s->str, s->len, error);
}

static JsonObject *open_options(void)
{
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "discard", "unmap");
    return o;
}

static VmmBlockDev *open_image(const Args *a, int flags, GError **error)
{
    g_autoptr(JsonObject) options = open_options();
    if (a->nocache) {
        flags |= VMM_BDRV_O_NOCACHE;
    }
    return vmm_block_open(a->image, a->format, options, flags, error);
}

static int do_write(const Args *a)
{
    g_autoptr(GError) error = NULL;
    VmmBlockDev *bs = open_image(a, VMM_BDRV_O_RDWR, &error);
    if (!bs) {
        g_printerr("crash-writer: %s\n", error->message);
        return 1;
    }
    guint64 size = vmm_block_size(bs);
    if (size < SECTOR) {
        g_printerr("crash-writer: %s: image of %" G_GUINT64_FORMAT " bytes is too small\n", a->image, size);
        vmm_block_unref(bs);
        return 1;
    }
    int fd = open(a->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        g_printerr("crash-writer: %s: %s\n", a->log, g_strerror(errno));
        vmm_block_unref(bs);
        return 1;
    }
    g_autofree char *header = g_strdup_printf("crash-writer seed=%" G_GUINT64_FORMAT " size=%" G_GUINT64_FORMAT
                                              " no_discard=%d\n", a->seed, size, a->no_discard);
    OpGen gen;
    opgen_init(&gen, a->seed, size, a->no_discard);
    gint64 deadline = g_get_monotonic_time() + (gint64)a->max_seconds * G_USEC_PER_SEC;
    gboolean ok = write_all_sync(fd, a->log, header, strlen(header), &error);
    int rc = 0;
    while (ok) {
        if (a->count >= 0 && gen.next_index >= (guint64)a->count) {
            break;
        }
        if (a->count < 0 && g_get_monotonic_time() > deadline) {
            g_printerr("crash-writer: nobody killed me within %d s; stopping\n", a->max_seconds);
            rc = 2;
            break;
        }
        Op ops[MAX_BATCH];
        guint n = opgen_batch(&gen, ops);
        if (a->count >= 0) {
            n = MIN(n, (guint64)a->count - ops[0].index);
        }
        ok = run_batch(bs, a->seed, ops, n, a->serial, &error) &&
             vmm_block_flush(bs, &error) &&
             log_batch(fd, a->log, ops, n, &error);
    }
    if (ok && rc == 0) {
        ok = write_all_sync(fd, a->log, "end\n", 4, &error); /* nothing is pending */
    }
    close(fd);
    vmm_block_unref(bs);
    if (!ok) {
        g_printerr("crash-writer: %s\n", error->message);
        return 1;
    }
    return rc;
}

/* ---- the model ---- */

enum {
    SEC_ZERO_OWNER = 1 << 0,   /* the owner is a write-zeroes request */
    SEC_MAY_ZERO = 1 << 1,     /* discarded since: may also read zeroes */
    SEC_MAY_BASE = 1 << 2,     /* discarded since: may also read the base content */
};

typedef struct {
    guint64 seed, size, nsect;
    gint64 *owner;             /* last acknowledged request per sector; -1: base */
    guint8 *state;             /* SEC_* */
    Op pending[MAX_BATCH];     /* the batch that may or may not have landed */
    guint npending;
    guint64 acked;             /* acknowledged requests */
    gboolean complete;         /* the writer stopped by itself: nothing pending */
    int base_fd;               /* -1: the base content is zeroes */
} Model;

static void model_apply(Model *m, const Op *op)
{
    for (guint64 s = op->offset / SECTOR; s < (op->offset + op->len) / SECTOR; s++) {
        switch (op->kind) {
        case OP_WRITE:
            m->owner[s] = op->index;
            m->state[s] = 0;
            break;
        case OP_ZEROES:
            m->owner[s] = op->index;
            m->state[s] = SEC_ZERO_OWNER;
            break;
        case OP_DISCARD:
            m->state[s] |= SEC_MAY_ZERO | SEC_MAY_BASE;
            break;
        }
    }
}

static gboolean parse_log_header(const char *line, const Model *m, gboolean no_discard, GError **error)
{
    guint64 seed, size;
    int nd;
    if (sscanf(line, "crash-writer seed=%" SCNu64 " size=%" SCNu64 " no_discard=%d", &seed, &size, &nd) != 3) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "log header \"%s\" is not crash-writer's", line);
        return FALSE;
    }
    if (seed != m->seed || size != m->size || nd != no_discard) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "log was written with seed=%" G_GUINT64_FORMAT " size=%" G_GUINT64_FORMAT
                    " no_discard=%d, verifying with seed=%" G_GUINT64_FORMAT " size=%" G_GUINT64_FORMAT
                    " no_discard=%d", seed, size, nd, m->seed, m->size, no_discard);
        return FALSE;
    }
    return TRUE;
}

/* Replays the log: every batch closed by its "f" line is acknowledged; lines
 * after the last one (a log append cut by the kill) are not. Each logged
 * request must be the one the seed generates. */
static gboolean model_load_log(Model *m, const char *path, gboolean no_discard, GError **error)
{
    g_autofree char *text = NULL;
    gsize len;
    GError *read_error = NULL;
    if (!g_file_get_contents(path, &text, &len, &read_error)) {
        /* Killed before its first flush: no log yet, nothing acknowledged. */
        if (!g_error_matches(read_error, G_FILE_ERROR, G_FILE_ERROR_NOENT)) {
            g_propagate_error(error, read_error);
            return FALSE;
        }
        g_error_free(read_error);
        text = g_strdup("");
        len = 0;
    }
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    guint nlines = g_strv_length(lines);
    if (len > 0 && text[len - 1] != '\n') {
        nlines--;              /* a torn last line */
    }
    OpGen gen;
    opgen_init(&gen, m->seed, m->size, no_discard);
    Op batch[MAX_BATCH];
    guint n = 0, used = 0;
    for (guint i = 0; i < nlines; i++) {
        const char *line = lines[i];
        if (line[0] == '\0') {
            continue;
        }
        if (i == 0) {
            if (!parse_log_header(line, m, no_discard, error)) {
                return FALSE;
            }
            continue;
        }
        if (n == 0) {
            n = opgen_batch(&gen, batch);
            used = 0;
        }
        char kind;
        guint64 index, off, l;
        if (g_str_equal(line, "end")) {
            m->complete = TRUE;
            m->npending = 0;
            return TRUE;
        }
        if (line[0] == 'f') {
            /* A --count run may cut its last batch short. */
            for (guint j = 0; j < used; j++) {
                model_apply(m, &batch[j]);
            }
            m->acked = used ? batch[used - 1].index + 1 : m->acked;
            n = 0;
            continue;
        }
        if (sscanf(line, "%c %" SCNu64 " %" SCNu64 " %" SCNu64, &kind, &index, &off, &l) != 4 || used >= n) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: line %u \"%s\" is not a request of the batch",
                        path, i + 1, line);
            return FALSE;
        }
        const Op *op = &batch[used++];
        if (kind != (char)op->kind || index != op->index || off != op->offset || l != op->len) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: line %u \"%s\" differs from request %" G_GUINT64_FORMAT " of the seed (%c %"
                        G_GUINT64_FORMAT " %" G_GUINT64_FORMAT ")", path, i + 1, line, op->index, op->kind,
                        op->offset, op->len);
            return FALSE;
        }
    }
    /* The batch after the last acknowledged one may have been in flight. If
     * the log stopped inside a batch, that batch is the pending one. */
    if (n == 0) {
        n = opgen_batch(&gen, batch);
    }
    memcpy(m->pending, batch, n * sizeof(Op));
    m->npending = n;
    return TRUE;
}

static gboolean model_init(Model *m, guint64 seed, guint64 size, const char *base, GError **error)
{
    *m = (Model){ .seed = seed, .size = size, .nsect = size / SECTOR, .base_fd = -1 };
    m->owner = g_new(gint64, m->nsect);
    m->state = g_new0(guint8, m->nsect);
    for (guint64 s = 0; s < m->nsect; s++) {
        m->owner[s] = -1;
    }
    if (base) {
        m->base_fd = open(base, O_RDONLY | O_CLOEXEC);
        if (m->base_fd < 0) {
            return vmm_set_errno(error, errno, "%s: open", base);
        }
    }
    return TRUE;
}

static void model_clear(Model *m)
{
    g_free(m->owner);
    g_free(m->state);
    if (m->base_fd >= 0) {
        close(m->base_fd);
    }
}

static gboolean read_base(const Model *m, guint64 offset, guint8 *buf, GError **error)
{
    if (m->base_fd < 0) {
        memset(buf, 0, SECTOR);
        return TRUE;
    }
    ssize_t n = pread(m->base_fd, buf, SECTOR, offset);
    if (n < 0) {
        return vmm_set_errno(error, errno, "base: pread at %" G_GUINT64_FORMAT, offset);
    }
    memset(buf + n, 0, SECTOR - n); /* a base shorter than the image reads zeroes */
    return TRUE;
}

static gboolean expected_acked(const Model *m, guint64 s, guint8 *buf, GError **error)
{
    if (m->owner[s] < 0) {
        return read_base(m, s * SECTOR, buf, error);
    }
    if (m->state[s] & SEC_ZERO_OWNER) {
        memset(buf, 0, SECTOR);
    } else {
        fill_pattern(m->seed, m->owner[s], s * SECTOR, SECTOR, buf);
    }
    return TRUE;
}

static const guint8 zero_sector[SECTOR];

/* Whether DATA is content sector S may hold: the acknowledged content, zeroes
 * or the base after a discard, or what a pending request would have put there. */
static gboolean sector_allowed(const Model *m, guint64 s, const guint8 *data, GError **error)
{
    guint8 buf[SECTOR];
    if (!expected_acked(m, s, buf, error)) {
        return FALSE;
    }
    if (memcmp(buf, data, SECTOR) == 0) {
        return TRUE;
    }
    gboolean may_zero = m->state[s] & SEC_MAY_ZERO, may_base = m->state[s] & SEC_MAY_BASE;
    guint64 off = s * SECTOR;
    for (guint i = 0; i < m->npending; i++) {
        const Op *op = &m->pending[i];
        if (off < op->offset || off >= op->offset + op->len) {
            continue;
        }
        if (op->kind == OP_WRITE) {
            fill_pattern(m->seed, op->index, off, SECTOR, buf);
            if (memcmp(buf, data, SECTOR) == 0) {
                return TRUE;
            }
        } else {
            may_zero = TRUE;
            may_base |= op->kind == OP_DISCARD;
        }
    }
    if (may_zero && memcmp(zero_sector, data, SECTOR) == 0) {
        return TRUE;
    }
    if (may_base) {
        if (!read_base(m, off, buf, error)) {
            return FALSE;
        }
        return memcmp(buf, data, SECTOR) == 0;
    }
    return FALSE;
}

static void describe_sector(const Model *m, guint64 s, const guint8 *data, GString *out)
{
    g_string_append_printf(out, "sector %" G_GUINT64_FORMAT " (offset 0x%" G_GINT64_MODIFIER "x): ", s,
                           s * SECTOR);
    if (m->owner[s] < 0) {
        g_string_append(out, "expected the base content");
    } else {
        g_string_append_printf(out, "expected %s of request %" G_GINT64_FORMAT,
                               m->state[s] & SEC_ZERO_OWNER ? "the zeroes" : "the data", m->owner[s]);
    }
    if (m->state[s] & SEC_MAY_ZERO) {
        g_string_append(out, " (or zeroes/base: discarded)");
    }
    g_string_append(out, "; read");
    for (int i = 0; i < 16; i++) {
        g_string_append_printf(out, " %02x", data[i]);
    }
    /* Whose data is it? Names the culprit: a stale copy, a misplaced cluster. */
    guint64 last = m->npending ? m->pending[m->npending - 1].index + 1 : m->acked;
    guint8 buf[SECTOR];
    for (guint64 i = 0; i < last; i++) {
        fill_pattern(m->seed, i, s * SECTOR, SECTOR, buf);
        if (memcmp(buf, data, SECTOR) == 0) {
            g_string_append_printf(out, " = the data of request %" G_GUINT64_FORMAT, i);
            return;
        }
    }
    if (memcmp(zero_sector, data, SECTOR) == 0) {
        g_string_append(out, " = zeroes");
        return;
    }
    /* Data written for a nearby sector: a misplaced (sub)cluster. */
    guint64 word;
    memcpy(&word, data, 8);
    guint64 lo = s > 4096 ? s - 4096 : 0, hi = MIN(s + 4096, m->nsect);
    for (guint64 t = lo; t < hi; t++) {
        for (guint64 i = 0; i < last; i++) {
            fill_pattern(m->seed, i, t * SECTOR, 8, buf);
            if (memcmp(buf, &word, 8) == 0) {
                g_string_append_printf(out, " = the data of request %" G_GUINT64_FORMAT " for sector %"
                                       G_GUINT64_FORMAT, i, t);
                return;
            }
        }
    }
    g_string_append(out, " = no request's data for a sector within 2 MiB");
}

typedef gboolean (*ReadFn)(gpointer ctx, guint64 offset, guint64 len, guint8 *buf, GError **error);

/* Checks every sector of the image as READ returns it; returns FALSE with
 * ERROR listing the first mismatches. */
static gboolean check_reader(const Model *m, const char *what, ReadFn read, gpointer ctx, GError **error)
{
    g_autofree guint8 *buf = g_malloc(CHUNK);
    g_autoptr(GString) report = g_string_new(NULL);
    guint64 bad = 0;
    for (guint64 off = 0; off < m->nsect * SECTOR; off += CHUNK) {
        guint64 len = MIN((guint64)CHUNK, m->nsect * SECTOR - off);
        if (!read(ctx, off, len, buf, error)) {
            return FALSE;
        }
        for (guint64 i = 0; i < len; i += SECTOR) {
            guint64 s = (off + i) / SECTOR;
            GError *err = NULL;
            if (sector_allowed(m, s, buf + i, &err)) {
                continue;
            }
            if (err) {
                g_propagate_error(error, err);
                return FALSE;
            }
            if (bad++ < MAX_REPORTS) {
                g_string_append(report, "\n  ");
                describe_sector(m, s, buf + i, report);
            }
        }
    }
    if (bad) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_FAILED, "%s: %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT
                    " sectors hold content no acknowledged or pending request explains:%s", what, bad,
                    m->nsect, report->str);
        return FALSE;
    }
    return TRUE;
}

static gboolean read_block(gpointer ctx, guint64 offset, guint64 len, guint8 *buf, GError **error)
{
    return vmm_block_pread(ctx, offset, len, buf, error);
}

typedef struct {
    int fd;
    const char *path;
} RawFile;

static gboolean read_raw(gpointer ctx, guint64 offset, guint64 len, guint8 *buf, GError **error)
{
    RawFile *f = ctx;
    while (len > 0) {
        ssize_t n = pread(f->fd, buf, len, offset);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return vmm_set_errno(error, errno, "%s: pread at %" G_GUINT64_FORMAT, f->path, offset);
        }
        if (n == 0) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_IO, "%s: ends at %" G_GUINT64_FORMAT
                        ", before the image's virtual size", f->path, offset);
            return FALSE;
        }
        buf += n;
        offset += n;
        len -= n;
    }
    return TRUE;
}

/* qemu-img is the independent reader: its raw conversion must satisfy the model too. */
static gboolean check_with_qemu_img(const Model *m, const Args *a, GError **error)
{
    const char *qemu_img = g_getenv("QEMU_IMG") ? g_getenv("QEMU_IMG") : "qemu-img";
    g_autofree char *out = g_strdup_printf("%s.qemu-img.raw", a->log);
    const char *argv[] = { qemu_img, "convert", "-U", "-f", a->format, "-O", "raw", a->image, out, NULL };
    g_autofree char *err_text = NULL;
    int status;
    if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL, NULL, NULL,
                      NULL, &err_text, &status, error)) {
        return FALSE;
    }
    if (!g_spawn_check_wait_status(status, NULL)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_FAILED, "%s convert -O raw %s failed: %s", qemu_img, a->image,
                    err_text);
        unlink(out);
        return FALSE;
    }
    RawFile f = { .fd = open(out, O_RDONLY | O_CLOEXEC), .path = out };
    if (f.fd < 0) {
        vmm_set_errno(error, errno, "%s: open", out);
        unlink(out);
        return FALSE;
    }
    gboolean ok = check_reader(m, "qemu-img convert", read_raw, &f, error);
    close(f.fd);
    unlink(out);
    return ok;
}

/* Writes the content the model defines; refuses when any sector is ambiguous. */
static gboolean dump_expected(const Model *m, const char *path, GError **error)
{
    if (!m->complete) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: the writer was killed, the last batch is not "
                    "defined", path);
        return FALSE;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        return vmm_set_errno(error, errno, "%s: open", path);
    }
    gboolean ok = ftruncate(fd, m->size) == 0 || vmm_set_errno(error, errno, "%s: ftruncate", path);
    guint8 buf[SECTOR];
    for (guint64 s = 0; ok && s < m->nsect; s++) {
        if (m->state[s] & SEC_MAY_ZERO) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: sector %" G_GUINT64_FORMAT " was discarded, its content is not defined (use "
                        "--no-discard)", path, s);
            ok = FALSE;
        } else if (!expected_acked(m, s, buf, error)) {
            ok = FALSE;
        } else if (pwrite(fd, buf, SECTOR, s * SECTOR) != SECTOR) {
            ok = vmm_set_errno(error, errno, "%s: pwrite", path);
        }
    }
    close(fd);
    return ok;
}

static int do_verify(const Args *a)
{
    g_autoptr(GError) error = NULL;
    /* Read-write lets the driver repair a dirty lazy-refcounts image on open,
     * as a VM restarting after the crash would. */
    VmmBlockDev *bs = open_image(a, a->rw ? VMM_BDRV_O_RDWR : 0, &error);
    if (!bs) {
        g_printerr("crash-writer --verify: %s\n", error->message);
        return 1;
    }
    Model m;
    gboolean ok = model_init(&m, a->seed, vmm_block_size(bs), a->base, &error) &&
                  model_load_log(&m, a->log, a->no_discard, &error);
    /* Both readers always run: which of them sees the damage tells whether
     * the image or our read path is wrong. */
    g_autoptr(GError) ours_error = NULL;
    gboolean ours_ok = ok && check_reader(&m, "our block layer", read_block, bs, &ours_error);
    vmm_block_unref(bs);
    ok = ok && check_with_qemu_img(&m, a, &error) && ours_ok;
    if (ours_error) {
        g_prefix_error(&error, "%s\n", ours_error->message);
        if (!error) {
            error = g_steal_pointer(&ours_error);
        }
    }
    ok = ok && (!a->dump_expected || dump_expected(&m, a->dump_expected, &error));
    if (ok) {
        g_print("crash-writer --verify: %s: %" G_GUINT64_FORMAT " acknowledged requests verified, %u pending "
                "allowed, through our block layer and qemu-img\n", a->image, m.acked, m.npending);
    } else {
        g_printerr("crash-writer --verify: %s: %s\n", a->image, error->message);
    }
    model_clear(&m);
    return ok ? 0 : 1;
}

static gboolean parse_args(int argc, char **argv, Args *a, gboolean *verify)
{
    g_autoptr(GError) error = NULL;
    a->count = -1;
    a->max_seconds = 60;
    GOptionEntry entries[] = {
        { "verify", 0, 0, G_OPTION_ARG_NONE, verify, "Check the image against LOG", NULL },
        { "count", 'n', 0, G_OPTION_ARG_INT64, &a->count, "Stop after N requests (default: until killed)", "N" },
        { "max-seconds", 0, 0, G_OPTION_ARG_INT, &a->max_seconds, "Give up waiting to be killed (60)", "S" },
        { "serial", 0, 0, G_OPTION_ARG_NONE, &a->serial, "One request at a time", NULL },
        { "nocache", 0, 0, G_OPTION_ARG_NONE, &a->nocache, "Open with cache.direct (O_DIRECT)", NULL },
        { "no-discard", 0, 0, G_OPTION_ARG_NONE, &a->no_discard, "Generate no discard requests", NULL },
        { "rw", 0, 0, G_OPTION_ARG_NONE, &a->rw, "--verify opens read-write (repairs a dirty image)", NULL },
        { "base", 0, 0, G_OPTION_ARG_FILENAME, &a->base, "Raw file with the content before the run", "RAW" },
        { "dump-expected", 0, 0, G_OPTION_ARG_FILENAME, &a->dump_expected,
          "--verify writes the expected content here", "RAW" },
        { NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("IMAGE FORMAT SEED LOG");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
        g_printerr("crash-writer: %s\n", error->message);
        return FALSE;
    }
    char *end;
    if (argc != 5) {
        g_printerr("usage: crash-writer [--verify] [options] IMAGE FORMAT SEED LOG (see --help)\n");
        return FALSE;
    }
    a->seed = g_ascii_strtoull(argv[3], &end, 0);
    if (*end || !argv[3][0]) {
        g_printerr("crash-writer: seed \"%s\" is not a number\n", argv[3]);
        return FALSE;
    }
    a->image = g_strdup(argv[1]);
    a->format = g_strdup(argv[2]);
    a->log = g_strdup(argv[4]);
    return TRUE;
}

int main(int argc, char **argv)
{
    Args a = { 0 };
    gboolean verify = FALSE;
    if (!parse_args(argc, argv, &a, &verify)) {
        return 2;
    }
    int rc = verify ? do_verify(&a) : do_write(&a);
    g_free(a.image);
    g_free(a.format);
    g_free(a.log);
    g_free(a.base);
    g_free(a.dump_expected);
    return rc;
}
