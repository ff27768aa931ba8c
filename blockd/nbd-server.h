/* The NBD server engine: exports of block nodes served over the standard NBD
 * protocol (fixed newstyle negotiation, structured replies, block status), to
 * vcpu-worker over a socketpair and to remote clients over Unix and TCP
 * sockets, with optional TLS. docs/nbd-server.md describes the I/O design.
 *
 * Threads: every connection has a reader thread (negotiation, then decoding
 * requests) and hands requests to a per-connection pool of worker threads that
 * run the block calls; replies are written by the workers under the
 * connection's send lock. All functions here are thread-safe. */
#pragma once
#include <glib.h>
#include "blockd/block.h"
#include "blockd/nbd-tls.h"

typedef struct NbdExport NbdExport;
typedef struct NbdServer NbdServer;
typedef struct NbdListener NbdListener;

/* Defaults of the block size constraints advertised by NBD_INFO_BLOCK_SIZE. */
#define NBD_DEFAULT_PREFERRED_BLOCK 4096

typedef struct {
    const char *name;         /* "" is the default export */
    const char *description;  /* NULL: none */
    VmmBlockDev *bs;          /* the export takes a reference */
    gboolean read_only;       /* forced on when bs is read-only */
    /* Advertise NBD_FLAG_CAN_MULTI_CONN. Safe whenever every connection goes
     * through this export (one node, one cache): a flush on any connection
     * then covers the writes of all of them. */
    gboolean multi_conn;
    gboolean rotational;      /* NBD_FLAG_ROTATIONAL */
    guint shared;             /* connections in transmission at once; 0 = no limit */
    guint32 min_block;        /* 0: bs->request_alignment */
    guint32 preferred_block;  /* 0: max(4096, min_block) */
    guint32 max_block;        /* 0: NBD_MAX_PAYLOAD */
    gboolean allocation_depth;/* offer the qemu:allocation-depth context */
} NbdExportConfig;

NbdExport *nbd_export_new(const NbdExportConfig *cfg, GError **error);
NbdExport *nbd_export_ref(NbdExport *exp);
void nbd_export_unref(NbdExport *exp);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(NbdExport, nbd_export_unref)
const char *nbd_export_name(const NbdExport *exp);
VmmBlockDev *nbd_export_blockdev(const NbdExport *exp);
/* Connections currently in transmission phase on the export. */
guint nbd_export_connections(NbdExport *exp);

typedef enum {
    NBD_TLS_OFF,      /* STARTTLS is refused with NBD_REP_ERR_POLICY */
    NBD_TLS_ALLOW,    /* clients may upgrade; plain clients are served too */
    NBD_TLS_REQUIRE,  /* every option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD */
} NbdTlsMode;

/* Called from a connection's thread when the connection ends (after its
 * socket is closed); CLIENTS is the number still connected. */
typedef void (*NbdClientDoneFunc)(NbdServer *server, guint clients, gpointer opaque);

NbdServer *nbd_server_new(void);
/* Disconnects every client (in-flight requests are finished and replied
 * first), waits for their threads and frees the server. Listeners must have
 * been freed before. */
void nbd_server_free(NbdServer *server);

/* Fails if an export of that name exists. The server takes a reference. */
gboolean nbd_server_add_export(NbdServer *server, NbdExport *exp, GError **error);
/* New clients no longer see the export. HARD also disconnects the clients
 * that use it; otherwise they keep it until they disconnect. */
gboolean nbd_server_remove_export(NbdServer *server, const char *name, gboolean hard, GError **error);
/* A new reference, or NULL. */
NbdExport *nbd_server_find_export(NbdServer *server, const char *name);
/* Names of the exports, sorted (free with g_strfreev). */
char **nbd_server_list_exports(NbdServer *server);

/* CREDS must be server credentials (NULL with NBD_TLS_OFF). AUTHZ: allowed
 * peer names (certificate DNs, or PSK usernames); NULL or empty allows every
 * peer the credentials accept. Applies to connections that start later. */
gboolean nbd_server_set_tls(NbdServer *server, NbdTlsMode mode, NbdTlsCreds *creds,
                            const char *const *authz, GError **error);
/* Worker threads per connection (requests run at once on one connection). */
void nbd_server_set_workers(NbdServer *server, guint workers);
/* Limit on the whole negotiation phase, TLS handshake included; 0 = none.
 * Default 10 s, as qemu-nbd's handshake limit. */
void nbd_server_set_handshake_timeout(NbdServer *server, guint seconds);
void nbd_server_set_client_done_callback(NbdServer *server, NbdClientDoneFunc fn, gpointer opaque);
guint nbd_server_clients(NbdServer *server);

/* Serves one connected stream socket (Unix, TCP, or a socketpair end) on a
 * thread of its own; takes ownership of FD (closed when the client is done,
 * also on error). */
gboolean nbd_server_serve_fd(NbdServer *server, int fd, GError **error);
/* A VM's guest RAM as blockd maps it: what a connection given it may read
 * and write for NBD_OPT_VMM_GUEST_MEMORY (proto/nbd.h). */
typedef struct {
    guint8 *base;
    guint64 size;
} NbdGuestMemory;
/* As nbd_server_serve_fd, for the socketpair of a VM's drive: the client may
 * negotiate moving data through MEM, which must outlive the connection. */
gboolean nbd_server_serve_fd_guest(NbdServer *server, int fd, const NbdGuestMemory *mem, GError **error);

/* ---- listening ---- */
/* ADDRESS: "unix:PATH" (the socket file is created, and removed again by
 * nbd_listener_free), "HOST:PORT", "[V6ADDR]:PORT" or ":PORT" (all
 * addresses). Port 0 picks a free port (see nbd_listener_port). Accepted
 * connections go to nbd_server_serve_fd on an accept thread. */
NbdListener *nbd_listener_new(NbdServer *server, const char *address, GError **error);
/* An already listening socket (systemd socket activation); takes ownership. */
NbdListener *nbd_listener_new_fd(NbdServer *server, int fd, GError **error);
/* The bound TCP port, or 0 for a Unix socket. */
int nbd_listener_port(NbdListener *listener);
/* Stops accepting (waits for the accept thread), closes the socket. Clients
 * already connected stay. */
void nbd_listener_free(NbdListener *listener);
