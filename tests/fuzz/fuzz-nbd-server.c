/* libFuzzer target: the NBD server's option and request parsers. The input is
 * everything a client sends (client flags, options, requests, payloads); it
 * is written into one end of a socketpair whose other end the server engine
 * serves, while a thread drains the server's replies, and the input ends with
 * a half-close. The export is a 1 MiB temporary raw image with allocation
 * depth; TLS is offered (PSK, optional) so that STARTTLS is reached too; the
 * connection has 64 KiB of "guest memory" for NBD_OPT_VMM_GUEST_MEMORY. The
 * server must neither crash nor hang, and every connection must end. */
#include <errno.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "blockd/block.h"
#include "blockd/nbd-server.h"
#include "common/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
const char *__lsan_default_suppressions(void);
const char *__asan_default_options(void);

/* Connection and worker threads come and go with every input. glib 2.74's
 * GSlice gives each thread a magazine cache (g_malloc0 inside g_slice_alloc
 * or g_slice_free1) that only a pthread key points to, which LeakSanitizer
 * does not scan: not a leak. (Objects GSlice hands out come from its slabs,
 * never from malloc, so these frames hide nothing else.) glib has no frame
 * pointers: only the slow unwinder sees those frames. */
const char *__lsan_default_suppressions(void)
{
    return "leak:g_slice_alloc\nleak:g_slice_free1\n";
}

const char *__asan_default_options(void)
{
    return "fast_unwind_on_malloc=0:malloc_context_size=12";
}

static NbdServer *server;

static char *make_temp_file(const char *tmpl, const char *contents, gsize len)
{
    char *path = NULL;
    int fd = g_file_open_tmp(tmpl, &path, NULL);
    if (fd < 0)
        abort();
    if (len && write(fd, contents, len) != (ssize_t)len)
        abort();
    close(fd);
    return path;
}

static void fuzz_init(void)
{
    signal(SIGPIPE, SIG_IGN);
    vmm_log_set_spec("err", NULL);
    g_autoptr(GError) err = NULL;
    char *image = make_temp_file("fuzz-nbd-XXXXXX.raw", NULL, 0);
    if (truncate(image, 1 << 20) < 0)
        abort();
    VmmBlockDev *bs = vmm_block_open(image, "raw", NULL, VMM_BDRV_O_RDWR, &err);
    g_unlink(image); /* the open file stays usable */
    g_free(image);
    if (!bs) {
        fprintf(stderr, "fuzz-nbd-server: %s\n", err->message);
        abort();
    }
    server = nbd_server_new();
    NbdExportConfig cfg = { .name = "", .description = "fuzz", .bs = bs, .allocation_depth = TRUE };
    NbdExport *exp = nbd_export_new(&cfg, &err);
    nbd_server_add_export(server, exp, &err);
    nbd_export_unref(exp);
    NbdExportConfig ro = { .name = "ro", .bs = bs, .read_only = TRUE, .shared = 1 };
    exp = nbd_export_new(&ro, &err);
    nbd_server_add_export(server, exp, &err);
    nbd_export_unref(exp);
    vmm_block_unref(bs);

    static const char keys[] = "alice:0123456789abcdef0123456789abcdef\n";
    char *psk = make_temp_file("fuzz-nbd-XXXXXX.psk", keys, sizeof(keys) - 1);
    NbdTlsCreds *creds = nbd_tls_creds_new_psk(psk, NBD_TLS_SERVER, NULL, &err);
    g_unlink(psk); /* later handshakes cannot find users: fuzz input never gets that far */
    g_free(psk);
    if (creds)
        nbd_server_set_tls(server, NBD_TLS_ALLOW, creds, NULL, NULL);
    nbd_tls_creds_unref(creds);
    nbd_server_set_workers(server, 4);
    nbd_server_set_handshake_timeout(server, 5);
}

static gpointer drain_replies(gpointer data)
{
    int fd = GPOINTER_TO_INT(data);
    char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n == 0 || (n < 0 && errno != EINTR))
            return NULL;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static gsize once;
    if (g_once_init_enter(&once)) {
        fuzz_init();
        g_once_init_leave(&once, 1);
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return 0;
    static guint8 guest[64 * 1024];
    NbdGuestMemory mem = { guest, sizeof(guest) };
    if (!nbd_server_serve_fd_guest(server, sv[0], &mem, NULL)) {
        close(sv[1]);
        return 0;
    }
    GThread *drain = g_thread_new("drain", drain_replies, GINT_TO_POINTER(sv[1]));
    size_t off = 0;
    while (off < size) {
        ssize_t n = send(sv[1], data + off, size - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* the server hung up on us */
        off += (size_t)n;
    }
    shutdown(sv[1], SHUT_WR);
    g_thread_join(drain); /* ends when the server closes its end */
    close(sv[1]);
    while (nbd_server_clients(server) > 0)
        g_usleep(100);
    return 0;
}
