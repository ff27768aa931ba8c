/* A tiny NBD server for the interop tests: serves one image through the NBD
 * server engine (blockd/nbd-server.c) on a Unix socket or a TCP port, until
 * SIGTERM or SIGINT. It exists so that the engine can be tested against real
 * clients (nbdinfo, nbdcopy, qemu-io, qemu-img) independently of blockd's
 * command line.
 *
 *   nbd-test-server [--socket PATH | --port N [--bind ADDR]] [--format FMT]
 *       [--read-only] [--export-name NAME] [--description TEXT] [--shared N]
 *       [--allocation-depth] [--multi-conn] [--discard unmap|ignore]
 *       [--tls-x509 DIR [--tls-verify-peer]] [--tls-psk FILE] [--tls-authz NAME]...
 *       [--tls-allow] IMAGE
 *
 * Prints "ready port=N" on stdout once it accepts connections. */
#include <glib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "blockd/block.h"
#include "blockd/nbd-server.h"
#include "common/log.h"

typedef struct {
    char *socket_path, *bind, *format, *export_name, *description, *discard;
    char *tls_x509, *tls_psk;
    char **tls_authz;
    int port, shared, workers;
    gboolean read_only, allocation_depth, multi_conn, tls_verify_peer, tls_allow;
} Options;

static gboolean parse_options(int *argc, char ***argv, Options *o, GError **error)
{
    o->port = -1; /* string defaults stay NULL: GOption does not free them when overwriting */
    GOptionEntry entries[] = {
        { "socket", 'k', 0, G_OPTION_ARG_FILENAME, &o->socket_path, "listen on a Unix socket", "PATH" },
        { "port", 'p', 0, G_OPTION_ARG_INT, &o->port, "listen on a TCP port (0: any free port)", "N" },
        { "bind", 'b', 0, G_OPTION_ARG_STRING, &o->bind, "TCP address (default 127.0.0.1)", "ADDR" },
        { "format", 'f', 0, G_OPTION_ARG_STRING, &o->format, "image format (default: probe)", "FMT" },
        { "read-only", 'r', 0, G_OPTION_ARG_NONE, &o->read_only, "export read-only", NULL },
        { "export-name", 'x', 0, G_OPTION_ARG_STRING, &o->export_name, "export name (default \"\")", "NAME" },
        { "description", 'D', 0, G_OPTION_ARG_STRING, &o->description, "export description", "TEXT" },
        { "shared", 'e', 0, G_OPTION_ARG_INT, &o->shared, "connection limit (0: none)", "N" },
        { "allocation-depth", 'A', 0, G_OPTION_ARG_NONE, &o->allocation_depth, "offer qemu:allocation-depth", NULL },
        { "multi-conn", 0, 0, G_OPTION_ARG_NONE, &o->multi_conn, "advertise multi-conn", NULL },
        { "discard", 0, 0, G_OPTION_ARG_STRING, &o->discard, "unmap or ignore", "MODE" },
        { "workers", 0, 0, G_OPTION_ARG_INT, &o->workers, "worker threads per connection", "N" },
        { "tls-x509", 0, 0, G_OPTION_ARG_FILENAME, &o->tls_x509, "X.509 credentials directory", "DIR" },
        { "tls-verify-peer", 0, 0, G_OPTION_ARG_NONE, &o->tls_verify_peer, "require client certificates", NULL },
        { "tls-psk", 0, 0, G_OPTION_ARG_FILENAME, &o->tls_psk, "PSK keys file", "FILE" },
        { "tls-authz", 0, 0, G_OPTION_ARG_STRING_ARRAY, &o->tls_authz, "allowed peer (DN or PSK user)", "NAME" },
        { "tls-allow", 0, 0, G_OPTION_ARG_NONE, &o->tls_allow, "TLS optional instead of required", NULL },
        { NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("IMAGE");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, argc, argv, error))
        return FALSE;
    if (*argc != 2 || (!o->socket_path) == (o->port < 0)) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                    "usage: nbd-test-server (--socket PATH | --port N) [options] IMAGE");
        return FALSE;
    }
    return TRUE;
}

static NbdTlsCreds *make_tls_creds(const Options *o, GError **error)
{
    if (o->tls_x509)
        return nbd_tls_creds_new_x509(o->tls_x509, NBD_TLS_SERVER, o->tls_verify_peer, error);
    if (o->tls_psk)
        return nbd_tls_creds_new_psk(o->tls_psk, NBD_TLS_SERVER, NULL, error);
    return NULL;
}

static int run(const Options *o, const char *image, GError **error)
{
    g_autoptr(JsonObject) opts = json_object_new();
    if (o->discard)
        json_object_set_string_member(opts, "discard", o->discard);
    VmmBlockDev *bs = vmm_block_open(image, o->format, opts, o->read_only ? 0 : VMM_BDRV_O_RDWR, error);
    if (!bs)
        return 1;
    NbdExportConfig cfg = {
        .name = o->export_name ? o->export_name : "", .description = o->description, .bs = bs, .read_only = o->read_only,
        .multi_conn = o->multi_conn, .shared = (guint)MAX(o->shared, 0), .allocation_depth = o->allocation_depth,
    };
    NbdExport *exp = nbd_export_new(&cfg, error);
    vmm_block_unref(bs);
    if (!exp)
        return 1;
    NbdServer *server = nbd_server_new();
    gboolean ok = nbd_server_add_export(server, exp, error);
    nbd_export_unref(exp);
    if (o->workers > 0)
        nbd_server_set_workers(server, (guint)o->workers);
    NbdTlsCreds *creds = ok ? make_tls_creds(o, error) : NULL;
    if (ok && (o->tls_x509 || o->tls_psk))
        ok = creds && nbd_server_set_tls(server, o->tls_allow ? NBD_TLS_ALLOW : NBD_TLS_REQUIRE, creds,
                                         (const char *const *)o->tls_authz, error);
    nbd_tls_creds_unref(creds);
    NbdListener *listener = NULL;
    if (ok) {
        g_autofree char *address = o->socket_path ? g_strdup_printf("unix:%s", o->socket_path)
                                                  : g_strdup_printf("%s:%d", o->bind ? o->bind : "127.0.0.1", o->port);
        listener = nbd_listener_new(server, address, error);
        ok = listener != NULL;
    }
    if (ok) {
        printf("ready port=%d\n", nbd_listener_port(listener));
        fflush(stdout);
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGTERM);
        int sig;
        sigwait(&set, &sig);
    }
    nbd_listener_free(listener);
    nbd_server_free(server);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    vmm_log_init("nbd-test-server");
    /* Signals are blocked before any thread starts, so that only sigwait
     * sees them; a vanished client must not kill the server. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    Options o = { 0 };
    g_autoptr(GError) err = NULL;
    int rc = 2;
    if (parse_options(&argc, &argv, &o, &err))
        rc = run(&o, argv[1], &err);
    if (err)
        fprintf(stderr, "nbd-test-server: %s\n", err->message);
    g_free(o.socket_path);
    g_free(o.bind);
    g_free(o.format);
    g_free(o.export_name);
    g_free(o.description);
    g_free(o.discard);
    g_free(o.tls_x509);
    g_free(o.tls_psk);
    g_strfreev(o.tls_authz);
    return rc;
}
