/* fsd's 9P stream (fsd/9p-transport.c) as a client's bytes reach it: the
 * input goes into a socket to a served connection in pieces whose sizes the
 * first bytes choose, the loop runs between pieces, so messages arrive
 * whole, split in any place (the path that reads a message's rest straight
 * into its own buffer), oversized (skipped) or cut off by the end of the
 * stream. The connection has 64 KiB of "guest RAM" (Tread.vmm/Twrite.vmm of
 * proto/9p.h, as a VM's connection). Nothing may crash, leak or hang;
 * replies are read and dropped. */
#include "fsd/9p-transport.h"
#include "fsd/fsd.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *export_dir;

static void remove_export_dir(void)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", export_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "fuzz-9p-stream: could not remove %s\n", export_dir);
}

/* One export for the whole run (its worker pool outlives each input). */
static FsdExport *shared_export(void)
{
    static FsdExport *e;
    if (!e) {
        export_dir = g_dir_make_tmp("fuzz-9p-stream-XXXXXX", NULL);
        if (!export_dir)
            abort();
        atexit(remove_export_dir);
        FsdExportConfig cfg;
        fsd_export_config_init(&cfg);
        cfg.path = g_strdup(export_dir);
        cfg.model = FSD_SM_MAPPED_XATTR;
        cfg.threads = 2;
        e = fsd_export_new(&cfg, NULL);
        fsd_export_config_clear(&cfg);
        if (!e)
            abort();
    }
    return e;
}

static void drain_replies(int fd)
{
    guint8 buf[65536];
    while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
        ;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uv_loop_t loop;
    uv_loop_init(&loop);
    FsdServer *s = fsd_server_new(&loop, shared_export());
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    static guint8 guest_ram[64 * 1024];
    if (!fsd_server_serve_fd_guest(s, sv[1], guest_ram, sizeof(guest_ram), NULL))
        abort();
    /* Piece sizes: 1..64 bytes, or everything left, from the first byte on. */
    guint8 shape = data[0];
    data++;
    size--;
    size_t pos = 0;
    unsigned k = 0;
    while (pos < size) {
        size_t piece = (shape >> (k++ % 8)) & 1 ? size - pos : 1 + (data[pos] % 64);
        piece = MIN(piece, size - pos);
        if (send(sv[0], data + pos, piece, MSG_NOSIGNAL | MSG_DONTWAIT) <= 0)
            break;
        pos += piece;
        uv_run(&loop, UV_RUN_NOWAIT);
        drain_replies(sv[0]);
    }
    shutdown(sv[0], SHUT_WR);
    /* Until the server has seen the end of the stream and closed its side. */
    for (int i = 0; i < 1000 && fsd_server_connections(s) > 0; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        drain_replies(sv[0]);
        g_usleep(100);
    }
    fsd_server_shutdown(s);
    while (uv_run(&loop, UV_RUN_NOWAIT))
        drain_replies(sv[0]);
    close(sv[0]);
    uv_loop_close(&loop);
    return 0;
}
