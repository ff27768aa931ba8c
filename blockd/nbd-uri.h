/* Where an NBD client connects and how: parsed from the filename forms QEMU
 * accepts (nbd://host[:port]/export, nbd+unix:///export?socket=PATH, the TLS
 * schemes nbds:// and nbds+unix://, the legacy nbd:host:port[:exportname=NAME]
 * and nbd:unix:PATH[:exportname=NAME]) or from the structured options of the
 * nbd driver (server.type/host/port/path, export, tls-creds, reconnect-delay).
 *
 * Also the few client calls beyond the generic driver interface (CACHE,
 * qemu:allocation-depth) and the registry of TLS credentials that --object
 * tls-creds-x509/tls-creds-psk fills. */
#pragma once
#include <glib.h>
#include <json-glib/json-glib.h>
#include "blockd/block.h"

typedef enum {
    VMM_NBD_TRANSPORT_TCP,
    VMM_NBD_TRANSPORT_UNIX,
} VmmNbdTransport;

typedef struct {
    VmmNbdTransport transport;
    char *host;               /* TCP: name or address (IPv6 without brackets) */
    guint16 port;             /* TCP: 10809 unless given */
    char *path;               /* Unix: socket path */
    char *export_name;        /* "" when none is given */
    gboolean tls;             /* nbds schemes or tls-creds: TLS is required */
    char *tls_creds;          /* id of registered creds, or a creds directory */
    char *tls_certificates;   /* x509 directory (URI ?tls-certificates=) */
    char *tls_psk_file;       /* PSK keys file (URI ?tls-psk-file=) */
    char *tls_username;       /* PSK user; "qemu" unless given */
    char *tls_hostname;       /* name to check the server certificate against */
    guint64 reconnect_delay;  /* seconds a dropped connection is retried; 0 = fail at once */
    gboolean allocation_depth;/* also negotiate qemu:allocation-depth */
} VmmNbdTarget;

/* TRUE if FILENAME names an NBD target by its prefix (nbd:, nbd://, nbd+tcp://,
 * nbd+unix://, nbds://, nbds+tcp://, nbds+unix://): the generic layer routes
 * such names to the nbd driver. */
gboolean vmm_nbd_is_filename(const char *filename);

/* Parses any filename form above. Errors name the filename and what is wrong. */
VmmNbdTarget *vmm_nbd_target_parse_filename(const char *filename, GError **error);

/* The driver's options: either "filename" (any form above) or server.* (and
 * the legacy host/port/path keys), plus export, tls-creds, tls-hostname,
 * reconnect-delay, allocation-depth. FALLBACK_FILENAME (the node's filename,
 * may be NULL) is used when the options name no server at all. Values may be
 * strings or typed JSON. */
VmmNbdTarget *vmm_nbd_target_from_options(JsonObject *options, const char *fallback_filename,
                                          GError **error);

void vmm_nbd_target_free(VmmNbdTarget *t);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VmmNbdTarget, vmm_nbd_target_free)

/* The canonical URI of T, as error messages name the server and export:
 * "nbd://127.0.0.1:10809/disk", "nbd+unix:///disk?socket=/run/s". */
char *vmm_nbd_target_to_uri(const VmmNbdTarget *t);

/* ---- TLS credentials (what --object tls-creds-x509 / tls-creds-psk define) ---- */
typedef enum {
    VMM_NBD_TLS_X509,   /* DIR has ca-cert.pem, optionally client-cert.pem + client-key.pem */
    VMM_NBD_TLS_PSK,    /* DIR has keys.psk ("user:hexkey" lines) */
} VmmNbdTlsKind;

/* Registers credentials under ID for the tls-creds option. USERNAME: PSK user
 * (NULL: "qemu"). Replaces an earlier entry of the same ID. */
void vmm_nbd_tls_creds_register(const char *id, VmmNbdTlsKind kind, const char *dir,
                                const char *username);
void vmm_nbd_tls_creds_unregister(const char *id);
/* Looks ID up; FALSE if unknown. *DIR and *USERNAME are newly allocated. */
gboolean vmm_nbd_tls_creds_lookup(const char *id, VmmNbdTlsKind *kind, char **dir,
                                  char **username);

/* ---- client calls beyond VmmBlockDriver (BS must be an nbd node) ---- */
/* NBD_CMD_CACHE: asks the server to prefetch the range (a no-op success if the
 * server does not offer it). */
gboolean vmm_nbd_cache(VmmBlockDev *bs, guint64 offset, guint64 bytes, GError **error);
/* qemu:allocation-depth of the range's first extent (0 = unallocated in the
 * server's chain, 1 = the top layer, ...); needs allocation-depth=on at open
 * and a server that offers the context. *PNUM gets the extent's length. */
gboolean vmm_nbd_allocation_depth(VmmBlockDev *bs, guint64 offset, guint64 bytes, guint64 *pnum,
                                  guint32 *depth, GError **error);
/* What was negotiated, for tests and `info`: export flags (NBD_FLAG_*), block
 * size constraints, structured replies and base:allocation. */
typedef struct {
    guint16 export_flags;
    guint32 min_block, pref_block, max_block;
    gboolean structured_replies;
    gboolean base_allocation;
    gboolean allocation_depth;
    gboolean used_go;           /* FALSE: fell back to NBD_OPT_EXPORT_NAME */
    gboolean tls;
    guint64 connects;           /* 1 + successful reconnects */
} VmmNbdInfo;
gboolean vmm_nbd_get_info(VmmBlockDev *bs, VmmNbdInfo *info);

extern const VmmBlockDriver vmm_nbd_driver;
