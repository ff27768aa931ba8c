/* Drives the nbd protocol driver from the command line, for the interop tests
 * against qemu-nbd and nbdkit (tests/interop/test-nbd-client.sh):
 *
 *   nbd-client-test [-w] [-o KEY=VAL,...] TARGET COMMAND [ARGS]
 *
 * TARGET is an NBD filename (nbd://..., nbd:unix:...) or "-" when -o names the
 * server (server.type=unix,server.path=...). -w opens read-write. Commands:
 *   info                      key=value lines: size, flags, block sizes, ...
 *   read OFF LEN FILE         LEN bytes at OFF into FILE
 *   write OFF FILE [fua]      FILE's bytes at OFF
 *   dump FILE                 the whole export into FILE
 *   load FILE                 FILE onto the export from offset 0
 *   zero OFF LEN [unmap] [fast]
 *   trim OFF LEN | cache OFF LEN | flush
 *   map                       "offset length flags description" as nbdinfo --map
 *   depth                     "offset length depth" (qemu:allocation-depth)
 *   stress SECONDS THREADS    concurrent writes and verified reads of 64 KiB
 *                             blocks; then every block is verified again
 * Exit status 0 on success, 1 with the error on stderr. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blockd/nbd-uri.h"
#include "common/error.h"
#include "common/opts.h"
#include "proto/nbd.h"

static VmmBlockDev *bs;

static void die(GError *err)
{
    fprintf(stderr, "nbd-client-test: %s\n", err->message);
    exit(1);
}

static void die_msg(const char *msg)
{
    fprintf(stderr, "nbd-client-test: %s\n", msg);
    exit(1);
}

static guint64 arg_u64(const char *s)
{
    guint64 v;
    GError *err = NULL;
    if (!vmm_parse_size(NULL, NULL, s, &v, &err)) {
        die(err);
    }
    return v;
}

static void open_target(const char *target, const char *opts, gboolean rw)
{
    GError *err = NULL;
    static const VmmOptSpec spec = { .option = "-o", .implied = NULL, .keys = NULL };
    JsonObject *o = opts ? vmm_opts_parse(&spec, opts, &err) : json_object_new();
    if (!o) {
        die(err);
    }
    bs = g_new0(VmmBlockDev, 1);
    bs->drv = &vmm_nbd_driver;
    bs->filename = g_strdup(strcmp(target, "-") == 0 ? "" : target);
    bs->refcnt = 1;
    if (!vmm_nbd_driver.open(bs, o, rw ? VMM_BDRV_O_RDWR : 0, &err)) {
        die(err);
    }
    json_object_unref(o);
}

static void close_target(void)
{
    vmm_nbd_driver.close(bs);
    g_free(bs->filename);
    g_free(bs);
}

static void cmd_info(void)
{
    VmmNbdInfo info;
    g_assert(vmm_nbd_get_info(bs, &info));
    printf("size=%" G_GUINT64_FORMAT "\n", bs->size);
    printf("read_only=%d\n", bs->read_only);
    printf("export_flags=0x%x\n", info.export_flags);
    printf("min_block=%u\npref_block=%u\nmax_block=%u\n", info.min_block, info.pref_block,
           info.max_block);
    printf("structured_replies=%d\n", info.structured_replies);
    printf("base_allocation=%d\n", info.base_allocation);
    printf("allocation_depth=%d\n", info.allocation_depth);
    printf("used_go=%d\n", info.used_go);
    printf("tls=%d\n", info.tls);
    printf("can_trim=%d\n", !!(info.export_flags & NBD_FLAG_SEND_TRIM));
    printf("can_zero=%d\n", !!(info.export_flags & NBD_FLAG_SEND_WRITE_ZEROES));
    printf("can_fast_zero=%d\n", !!(info.export_flags & NBD_FLAG_SEND_FAST_ZERO));
    printf("can_fua=%d\n", !!(info.export_flags & NBD_FLAG_SEND_FUA));
    printf("can_cache=%d\n", !!(info.export_flags & NBD_FLAG_SEND_CACHE));
    printf("filename=%s\n", bs->filename);
}

static FILE *open_out(const char *path)
{
    FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "nbd-client-test: %s: %s\n", path, g_strerror(errno));
        exit(1);
    }
    return f;
}

static void read_range_to(FILE *f, guint64 off, guint64 len)
{
    const guint64 chunk = 4 << 20;
    g_autofree guint8 *buf = g_malloc(MIN(len, chunk) + 1);
    GError *err = NULL;
    while (len > 0) {
        guint64 n = MIN(len, chunk);
        if (!vmm_nbd_driver.pread(bs, off, n, buf, 0, &err)) {
            die(err);
        }
        if (fwrite(buf, 1, n, f) != n) {
            die_msg("short write to the output file");
        }
        off += n;
        len -= n;
    }
}

static void cmd_read(guint64 off, guint64 len, const char *path)
{
    FILE *f = open_out(path);
    read_range_to(f, off, len);
    if (f != stdout) {
        fclose(f);
    }
}

static void cmd_write(guint64 off, const char *path, gboolean fua)
{
    g_autofree char *data = NULL;
    gsize len;
    GError *err = NULL;
    if (!g_file_get_contents(path, &data, &len, &err)) {
        die(err);
    }
    if (!vmm_nbd_driver.pwrite(bs, off, len, data, fua ? VMM_BDRV_REQ_FUA : 0, &err)) {
        die(err);
    }
}

static void cmd_zero(guint64 off, guint64 len, int argc, char **argv)
{
    int flags = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "unmap") == 0) {
            flags |= VMM_BDRV_REQ_MAY_UNMAP;
        } else if (strcmp(argv[i], "fast") == 0) {
            flags |= VMM_BDRV_REQ_NO_FALLBACK;
        } else if (strcmp(argv[i], "fua") == 0) {
            flags |= VMM_BDRV_REQ_FUA;
        } else {
            die_msg("zero: flags are unmap, fast, fua");
        }
    }
    GError *err = NULL;
    if (!vmm_nbd_driver.pwrite_zeroes(bs, off, len, flags, &err)) {
        die(err);
    }
}

static const char *status_description(guint32 nbd_flags)
{
    switch (nbd_flags) {
    case 0: return "data";
    case NBD_STATE_HOLE: return "hole";
    case NBD_STATE_ZERO: return "zero";
    default: return "hole,zero";
    }
}

static void cmd_map(void)
{
    GError *err = NULL;
    guint64 off = 0, run_start = 0;
    gint64 run_flags = -1;
    while (off < bs->size) {
        guint64 pnum = 0;
        int st = vmm_nbd_driver.block_status(bs, off, bs->size - off, &pnum, NULL, NULL, &err);
        if (st < 0) {
            die(err);
        }
        guint32 f = (st & VMM_BLOCK_DATA ? 0 : NBD_STATE_HOLE) | (st & VMM_BLOCK_ZERO ? NBD_STATE_ZERO : 0);
        if ((gint64)f != run_flags) {
            if (run_flags >= 0) {
                printf("%" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT " %u %s\n", run_start,
                       off - run_start, (guint32)run_flags, status_description(run_flags));
            }
            run_start = off;
            run_flags = f;
        }
        off += pnum;
    }
    if (run_flags >= 0) {
        printf("%" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT " %u %s\n", run_start, off - run_start,
               (guint32)run_flags, status_description(run_flags));
    }
}

static void cmd_depth(void)
{
    GError *err = NULL;
    guint64 off = 0;
    while (off < bs->size) {
        guint64 pnum;
        guint32 depth;
        if (!vmm_nbd_allocation_depth(bs, off, bs->size - off, &pnum, &depth, &err)) {
            die(err);
        }
        printf("%" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT " %u\n", off, pnum, depth);
        off += pnum;
    }
}

/* ---- stress: each thread owns the blocks whose index % threads == its id ---- */

#define STRESS_BLOCK (64 * 1024)

typedef struct {
    guint id, nthreads;
    guint64 nblocks;
    gint64 deadline;
    guint32 *gen;        /* per block: generation last written (0 = never) */
    guint64 ops;
    char *error;
} StressThread;

static void fill_pattern(guint8 *buf, guint64 block, guint32 gen)
{
    guint32 *w = (guint32 *)buf;
    for (gsize i = 0; i < STRESS_BLOCK / 4; i++) {
        w[i] = (guint32)(block * 2654435761u) ^ (gen * 40503u) ^ (guint32)i;
    }
}

static gboolean verify_block(guint64 block, guint32 gen, guint8 *buf, char **error)
{
    GError *err = NULL;
    if (!vmm_nbd_driver.pread(bs, block * STRESS_BLOCK, STRESS_BLOCK, buf, 0, &err)) {
        *error = g_strdup(err->message);
        g_error_free(err);
        return FALSE;
    }
    guint8 want[STRESS_BLOCK];
    fill_pattern(want, block, gen);
    if (memcmp(buf, want, STRESS_BLOCK) != 0) {
        *error = g_strdup_printf("block %" G_GUINT64_FORMAT " (generation %u) read back wrong",
                                 block, gen);
        return FALSE;
    }
    return TRUE;
}

static gpointer stress_main(gpointer p)
{
    StressThread *st = p;
    GRand *rand = g_rand_new_with_seed(st->id * 7919 + 1);
    g_autofree guint8 *buf = g_malloc(STRESS_BLOCK);
    guint64 mine = (st->nblocks - st->id + st->nthreads - 1) / st->nthreads;
    while (g_get_monotonic_time() < st->deadline && mine > 0) {
        guint64 block = st->id + (guint64)g_rand_int_range(rand, 0, mine) * st->nthreads;
        GError *err = NULL;
        if (g_rand_boolean(rand) || st->gen[block] == 0) {
            guint32 gen = st->gen[block] + 1;
            fill_pattern(buf, block, gen);
            if (!vmm_nbd_driver.pwrite(bs, block * STRESS_BLOCK, STRESS_BLOCK, buf, 0, &err)) {
                st->error = g_strdup(err->message);
                g_error_free(err);
                break;
            }
            st->gen[block] = gen;
        } else if (!verify_block(block, st->gen[block], buf, &st->error)) {
            break;
        }
        st->ops++;
    }
    g_rand_free(rand);
    return NULL;
}

static void cmd_stress(guint64 seconds, guint nthreads)
{
    guint64 nblocks = MIN(bs->size / STRESS_BLOCK, 4096);
    if (nblocks == 0 || nthreads == 0 || nthreads > 64) {
        die_msg("stress: the export is smaller than one block, or threads not in 1..64");
    }
    g_autofree guint32 *gen = g_new0(guint32, nblocks);
    StressThread *st = g_new0(StressThread, nthreads);
    GThread **th = g_new0(GThread *, nthreads);
    gint64 deadline = g_get_monotonic_time() + (gint64)seconds * G_USEC_PER_SEC;
    for (guint i = 0; i < nthreads; i++) {
        st[i] = (StressThread){ .id = i, .nthreads = nthreads, .nblocks = nblocks,
                                .deadline = deadline, .gen = gen };
        th[i] = g_thread_new("stress", stress_main, &st[i]);
    }
    guint64 ops = 0;
    char *first_error = NULL;
    for (guint i = 0; i < nthreads; i++) {
        g_thread_join(th[i]);
        ops += st[i].ops;
        if (st[i].error && !first_error) {
            first_error = st[i].error;
        } else {
            g_free(st[i].error);
        }
    }
    g_free(th);
    g_free(st);
    if (first_error) {
        die_msg(first_error);
    }
    g_autofree guint8 *buf = g_malloc(STRESS_BLOCK);
    guint64 verified = 0;
    for (guint64 b = 0; b < nblocks; b++) {
        char *err = NULL;
        if (gen[b] && !verify_block(b, gen[b], buf, &err)) {
            die_msg(err);
        }
        verified += gen[b] != 0;
    }
    VmmNbdInfo info;
    vmm_nbd_get_info(bs, &info);
    printf("ops=%" G_GUINT64_FORMAT " verified_blocks=%" G_GUINT64_FORMAT " connects=%" G_GUINT64_FORMAT "\n",
           ops, verified, info.connects);
}

static void run_command(int argc, char **argv)
{
    GError *err = NULL;
    const char *cmd = argv[0];
    gboolean ok = TRUE;
    if (strcmp(cmd, "info") == 0) {
        cmd_info();
    } else if (strcmp(cmd, "read") == 0 && argc == 4) {
        cmd_read(arg_u64(argv[1]), arg_u64(argv[2]), argv[3]);
    } else if (strcmp(cmd, "write") == 0 && (argc == 3 || argc == 4)) {
        cmd_write(arg_u64(argv[1]), argv[2], argc == 4 && strcmp(argv[3], "fua") == 0);
    } else if (strcmp(cmd, "dump") == 0 && argc == 2) {
        cmd_read(0, bs->size, argv[1]);
    } else if (strcmp(cmd, "load") == 0 && argc == 2) {
        cmd_write(0, argv[1], FALSE);
    } else if (strcmp(cmd, "zero") == 0 && argc >= 3) {
        cmd_zero(arg_u64(argv[1]), arg_u64(argv[2]), argc - 3, argv + 3);
    } else if (strcmp(cmd, "trim") == 0 && argc == 3) {
        ok = vmm_nbd_driver.pdiscard(bs, arg_u64(argv[1]), arg_u64(argv[2]), &err);
    } else if (strcmp(cmd, "cache") == 0 && argc == 3) {
        ok = vmm_nbd_cache(bs, arg_u64(argv[1]), arg_u64(argv[2]), &err);
    } else if (strcmp(cmd, "flush") == 0) {
        ok = vmm_nbd_driver.flush(bs, &err);
    } else if (strcmp(cmd, "map") == 0) {
        cmd_map();
    } else if (strcmp(cmd, "depth") == 0) {
        cmd_depth();
    } else if (strcmp(cmd, "stress") == 0 && argc == 3) {
        cmd_stress(arg_u64(argv[1]), (guint)arg_u64(argv[2]));
    } else {
        die_msg("unknown command or wrong arguments (see the comment at the top of nbd-client-test.c)");
    }
    if (!ok) {
        die(err);
    }
}

int main(int argc, char **argv)
{
    const char *opts = NULL;
    gboolean rw = FALSE;
    int i = 1;
    for (; i < argc && argv[i][0] == '-' && argv[i][1]; i++) {
        if (strcmp(argv[i], "-w") == 0) {
            rw = TRUE;
        } else if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            opts = argv[++i];
        } else {
            die_msg("usage: nbd-client-test [-w] [-o OPTS] TARGET COMMAND [ARGS]");
        }
    }
    if (argc - i < 2) {
        die_msg("usage: nbd-client-test [-w] [-o OPTS] TARGET COMMAND [ARGS]");
    }
    open_target(argv[i], opts, rw);
    run_command(argc - i - 1, argv + i + 1);
    close_target();
    return 0;
}
