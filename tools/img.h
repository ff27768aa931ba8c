/* vmm-img internals: what the subcommands (tools/img-*.c) share with the
 * driver in tools/vmm-img.c. Each subcommand is "int img_NAME(argc, argv)"
 * with argv[0] the subcommand name, and returns the process exit code. */
#pragma once
#include "blockd/block.h"
#include "common/error.h"
#include "common/opts.h"

#include <getopt.h>
#include <glib.h>
#include <json-glib/json-glib.h>
#include <stdbool.h>
#include <stdio.h>

/* Long options every subcommand that opens images accepts. */
enum {
    IMG_OPT_OBJECT = 256,
    IMG_OPT_IMAGE_OPTS,
    IMG_OPT_TARGET_IMAGE_OPTS,
    IMG_OPT_OUTPUT,
    IMG_OPT_BACKING_CHAIN,
    IMG_OPT_FORCE_SHARE,
    IMG_OPT_SHRINK,
    IMG_OPT_PREALLOCATION,
    IMG_OPT_TARGET_IS_ZERO,
    IMG_OPT_SIZE,
    IMG_OPT_START_OFFSET,
    IMG_OPT_MAX_LENGTH,
    IMG_OPT_FORCE,
    IMG_OPT_PATTERN,
    IMG_OPT_FLUSH_INTERVAL,
    IMG_OPT_NO_DRAIN,
    IMG_OPT_SALVAGE,
    IMG_OPT_BITMAPS,
};

typedef enum { IMG_OUTPUT_HUMAN, IMG_OUTPUT_JSON } ImgOutput;

/* How an image is opened: the shared options of the subcommands. */
typedef struct {
    const char *fmt;       /* -f; NULL probes */
    const char *cache;     /* -t / -T; NULL: the subcommand's default */
    gboolean image_opts;   /* --image-opts: the filename is an option string */
    gboolean force_share;  /* -U: no image locks (read-only opens only) */
    gboolean writable;
    gboolean no_backing;
    gboolean check;        /* VMM_BDRV_O_CHECK: tolerate damage */
    gboolean quiet;        /* -q: no probing warning either */
    gboolean discard_unmap; /* discard=unmap: discards reach the driver */
    gboolean backing_force_share; /* the backing chain takes no locks (commit
                                     writes the base through its own handle) */
} ImgOpenSpec;

/* ---- subcommands ---- */
int img_create(int argc, char **argv);
int img_info(int argc, char **argv);
int img_check(int argc, char **argv);
int img_convert(int argc, char **argv);
int img_compare(int argc, char **argv);
int img_map(int argc, char **argv);
int img_measure(int argc, char **argv);
int img_resize(int argc, char **argv);
int img_snapshot(int argc, char **argv);
int img_amend(int argc, char **argv);
int img_rebase(int argc, char **argv);
int img_commit(int argc, char **argv);
int img_dd(int argc, char **argv);
int img_bench(int argc, char **argv);

/* ---- messages ---- */
/* "vmm-img: <message>\n" on stderr. */
void img_error(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
void img_warn(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/* Reports ERR (may be NULL: "unknown error") with an optional prefix, frees it. */
void img_report_error(GError *err, const char *prefix_fmt, ...) G_GNUC_PRINTF(2, 3);
/* Usage error for SUB: the message, then "Try 'vmm-img --help'..." Returns 1. */
int img_usage_error(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/* Handles an unknown option or missing argument from getopt. Returns 1. */
int img_bad_option(char **argv, int c);
/* printf to stdout unless quiet (qemu-img's qprintf). */
void img_qprintf(gboolean quiet, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/* ---- parsing ---- */
/* qemu-img sizes: bytes, or k/K M G T P E suffixes (1024-based); a trailing
 * 'b'/'B' after the number is ignored. */
gboolean img_parse_size(const char *s, guint64 *out);
gboolean img_parse_output(const char *s, ImgOutput *out);
/* --object: accepted for the types we know (secret), others refused. */
/* --object VALUE: adds it, or reports why not; FALSE means exit 1. */
gboolean img_object_option(const char *value);
gboolean img_add_object(const char *def, GError **error);
/* Cache mode name to open flags (none, writeback, writethrough, directsync, unsafe). */
gboolean img_cache_flags(const char *mode, int *flags, GError **error);
/* Joins repeated -o values with ',' as qemu-img does. */
void img_append_options(char **acc, const char *more);

/* ---- images ---- */
VmmBlockDev *img_open(const char *filename, const ImgOpenSpec *spec, GError **error);
/* The create options of DRV as QEMU's "-o help" prints them. */
void img_print_create_opts_help(const VmmBlockDriver *drv, const VmmBlockDriver *proto);
/* Parses "-o" for creating with DRV; the protocol's options are accepted too.
 * SIZE (if nonzero) is added as "size" unless the string has it. */
JsonObject *img_parse_create_opts(const VmmBlockDriver *drv, const char *optstr,
                                  GError **error);
/* The format name of BS (its driver's). */
const char *img_format_name(VmmBlockDev *bs);
/* The protocol child of a format node (or BS itself). */
VmmBlockDev *img_protocol_node(VmmBlockDev *bs);
/* Cluster size of a format node, 0 if it has none (raw). */
guint64 img_cluster_size(VmmBlockDev *bs);
/* TRUE if the image's header says it was not closed cleanly (qcow2 dirty bit). */
gboolean img_dirty_flag(VmmBlockDev *bs);
/* Format-specific info as {"type": fmt, "data": {...}} (new reference), or NULL. */
JsonObject *img_format_specific(VmmBlockDev *bs);
/* The status of [OFFSET, OFFSET+BYTES) looking down the chain as qemu-img
 * map does: *DEPTH counts layers below BS. Unallocated at the bottom reads as
 * zero. Returns VMM_BLOCK_* or -1. */
int img_chain_status(VmmBlockDev *bs, guint64 offset, guint64 bytes, guint64 *pnum,
                     guint64 *map, VmmBlockDev **file, int *depth, GError **error);

/* ---- output ---- */
/* "64 MiB", "388 KiB", "0 B" as QEMU's size_to_str. */
char *img_size_to_str(guint64 val);
/* Prints NODE as QEMU's qobject_to_json_pretty does, and a newline. */
void img_print_json(JsonNode *node);
char *img_json_pretty(JsonNode *node);
/* Pretty JSON string from an object / array (steals nothing). */
void img_print_json_object(JsonObject *obj);

/* Progress bar: "    (12.34/100%)\r" on a terminal, only when enabled. */
void img_progress_init(gboolean enabled, double min_step);
void img_progress_print(double percent);
void img_progress_end(void);

/* Snapshot table, as qemu-img snapshot -l and info print it. */
void img_print_snapshot_table(GPtrArray *snapshots);

/* Monotonic seconds, for bench and progress. */
double img_now(void);
