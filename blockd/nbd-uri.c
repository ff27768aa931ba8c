/* Parsing of NBD targets: URIs, QEMU's legacy nbd: syntax and the driver's
 * structured options. The accepted forms follow QEMU 7.2 (nbd_parse_uri,
 * nbd_parse_filename) plus libnbd's TLS schemes and query parameters. */
#include "blockd/nbd-uri.h"

#include <errno.h>
#include <string.h>
#include "common/error.h"
#include "proto/nbd.h"

#define LEGACY_EXPORT_SEP ":exportname="

void vmm_nbd_target_free(VmmNbdTarget *t)
{
    if (!t) {
        return;
    }
    g_free(t->host);
    g_free(t->path);
    g_free(t->export_name);
    g_free(t->tls_creds);
    g_free(t->tls_certificates);
    g_free(t->tls_psk_file);
    g_free(t->tls_username);
    g_free(t->tls_hostname);
    g_free(t);
}

static VmmNbdTarget *target_new(void)
{
    VmmNbdTarget *t = g_new0(VmmNbdTarget, 1);
    t->port = NBD_DEFAULT_PORT;
    return t;
}

typedef struct {
    const char *scheme;
    VmmNbdTransport transport;
    gboolean tls;
} SchemeInfo;

static const SchemeInfo nbd_schemes[] = {
    { "nbd", VMM_NBD_TRANSPORT_TCP, FALSE },
    { "nbd+tcp", VMM_NBD_TRANSPORT_TCP, FALSE },
    { "nbd+unix", VMM_NBD_TRANSPORT_UNIX, FALSE },
    { "nbds", VMM_NBD_TRANSPORT_TCP, TRUE },
    { "nbds+tcp", VMM_NBD_TRANSPORT_TCP, TRUE },
    { "nbds+unix", VMM_NBD_TRANSPORT_UNIX, TRUE },
};

static const SchemeInfo *find_scheme(const char *scheme)
{
    for (gsize i = 0; i < G_N_ELEMENTS(nbd_schemes); i++) {
        if (g_ascii_strcasecmp(nbd_schemes[i].scheme, scheme) == 0) {
            return &nbd_schemes[i];
        }
    }
    return NULL;
}

gboolean vmm_nbd_is_filename(const char *filename)
{
    if (!filename) {
        return FALSE;
    }
    if (g_str_has_prefix(filename, "nbd:")) {
        return TRUE;
    }
    const char *sep = strstr(filename, "://");
    if (!sep) {
        return FALSE;
    }
    g_autofree char *scheme = g_strndup(filename, sep - filename);
    return find_scheme(scheme) != NULL;
}

static gboolean parse_port(const char *what, const char *s, guint16 *out, GError **error)
{
    guint64 v;
    if (!s || !*s || !g_ascii_string_to_unsigned(s, 10, 1, 65535, &v, NULL)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: port '%s' is not a number in 1..65535", what, s ? s : "");
        return FALSE;
    }
    *out = (guint16)v;
    return TRUE;
}

/* The query of an NBD URI: socket= for Unix (required, alone as in QEMU), and
 * libnbd's TLS parameters for the TLS schemes. */
static gboolean apply_uri_query(VmmNbdTarget *t, const char *filename, const char *query,
                                GError **error)
{
    if (!query || !*query) {
        if (t->transport == VMM_NBD_TRANSPORT_UNIX) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: an nbd+unix URI needs ?socket=PATH", filename);
            return FALSE;
        }
        return TRUE;
    }
    GError *local = NULL;
    g_autoptr(GHashTable) params = g_uri_parse_params(query, -1, "&", G_URI_PARAMS_NONE, &local);
    if (!params) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: bad query: %s", filename,
                    local->message);
        g_error_free(local);
        return FALSE;
    }
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, params);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        const char *key = k, *val = v;
        char **slot = NULL;
        if (strcmp(key, "socket") == 0 && t->transport == VMM_NBD_TRANSPORT_UNIX) {
            slot = &t->path;
        } else if (t->tls && strcmp(key, "tls-certificates") == 0) {
            slot = &t->tls_certificates;
        } else if (t->tls && strcmp(key, "tls-psk-file") == 0) {
            slot = &t->tls_psk_file;
        } else if (t->tls && strcmp(key, "tls-username") == 0) {
            slot = &t->tls_username;
        } else if (t->tls && strcmp(key, "tls-hostname") == 0) {
            slot = &t->tls_hostname;
        } else {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: unknown query parameter '%s'%s", filename, key,
                        t->transport == VMM_NBD_TRANSPORT_TCP && strcmp(key, "socket") == 0
                            ? " (socket= belongs to nbd+unix://)" : "");
            return FALSE;
        }
        g_free(*slot);
        *slot = g_strdup(val);
    }
    if (t->transport == VMM_NBD_TRANSPORT_UNIX && (!t->path || !*t->path)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: an nbd+unix URI needs ?socket=PATH", filename);
        return FALSE;
    }
    return TRUE;
}

static VmmNbdTarget *parse_uri(const char *filename, GError **error)
{
    GError *local = NULL;
    g_autoptr(GUri) uri = g_uri_parse(filename, G_URI_FLAGS_ENCODED_QUERY | G_URI_FLAGS_NON_DNS,
                                      &local);
    if (!uri) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: not a valid NBD URI: %s",
                    filename, local->message);
        g_error_free(local);
        return NULL;
    }
    const SchemeInfo *si = find_scheme(g_uri_get_scheme(uri));
    if (!si) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: unknown scheme '%s' (nbd, nbd+tcp, nbd+unix, nbds, nbds+tcp, nbds+unix)",
                    filename, g_uri_get_scheme(uri));
        return NULL;
    }
    if (g_uri_get_userinfo(uri) || g_uri_get_fragment(uri)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: an NBD URI takes no user name or fragment", filename);
        return NULL;
    }
    g_autoptr(VmmNbdTarget) t = target_new();
    t->transport = si->transport;
    t->tls = si->tls;

    const char *host = g_uri_get_host(uri);
    int port = g_uri_get_port(uri);
    if (t->transport == VMM_NBD_TRANSPORT_UNIX) {
        if ((host && *host) || port != -1) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: an nbd+unix URI takes no host or port (nbd+unix:///EXPORT?socket=PATH)",
                        filename);
            return NULL;
        }
    } else {
        if (!host || !*host) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: an NBD URI over TCP needs a host (nbd://HOST[:PORT]/EXPORT)", filename);
            return NULL;
        }
        t->host = g_strdup(host);
        if (port == 0) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: port 0 is not valid", filename);
            return NULL;
        }
        if (port > 0) {
            t->port = (guint16)port;
        }
    }
    const char *path = g_uri_get_path(uri);
    if (path[0] == '/') {
        path++;
    }
    t->export_name = g_strdup(path);
    if (strlen(t->export_name) > NBD_MAX_STRING) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG,
                    "%s: export name longer than %d bytes", filename, NBD_MAX_STRING);
        return NULL;
    }
    if (!apply_uri_query(t, filename, g_uri_get_query(uri), error)) {
        return NULL;
    }
    return g_steal_pointer(&t);
}

/* "host:port", "[v6]:port", "host" (port 10809). */
static gboolean parse_legacy_inet(VmmNbdTarget *t, const char *filename, const char *spec,
                                  GError **error)
{
    const char *port = NULL;
    if (spec[0] == '[') {
        const char *end = strchr(spec, ']');
        if (!end || end == spec + 1) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: unterminated or empty [IPv6] address", filename);
            return FALSE;
        }
        t->host = g_strndup(spec + 1, end - spec - 1);
        if (end[1] == ':') {
            port = end + 2;
        } else if (end[1] != '\0') {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: unexpected '%s' after the address", filename, end + 1);
            return FALSE;
        }
    } else {
        const char *colon = strchr(spec, ':');
        t->host = colon ? g_strndup(spec, colon - spec) : g_strdup(spec);
        port = colon ? colon + 1 : NULL;
    }
    if (!*t->host) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: no host (nbd:HOST:PORT[:exportname=NAME])", filename);
        return FALSE;
    }
    if (port) {
        g_autofree char *what = g_strdup_printf("%s", filename);
        return parse_port(what, port, &t->port, error);
    }
    return TRUE;
}

static VmmNbdTarget *parse_legacy(const char *filename, GError **error)
{
    g_autoptr(VmmNbdTarget) t = target_new();
    g_autofree char *spec = g_strdup(filename + strlen("nbd:"));
    char *en = strstr(spec, LEGACY_EXPORT_SEP);
    if (en) {
        *en = '\0';
        t->export_name = g_strdup(en + strlen(LEGACY_EXPORT_SEP));
    } else {
        t->export_name = g_strdup("");
    }
    if (!*spec) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "%s: no server (nbd:HOST[:PORT][:exportname=NAME] or nbd:unix:PATH)", filename);
        return NULL;
    }
    if (g_str_has_prefix(spec, "unix:")) {
        t->transport = VMM_NBD_TRANSPORT_UNIX;
        t->path = g_strdup(spec + strlen("unix:"));
        if (!*t->path) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "%s: no socket path after nbd:unix:", filename);
            return NULL;
        }
    } else {
        t->transport = VMM_NBD_TRANSPORT_TCP;
        if (!parse_legacy_inet(t, filename, spec, error)) {
            return NULL;
        }
    }
    if (strlen(t->export_name) > NBD_MAX_STRING) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG,
                    "%s: export name longer than %d bytes", filename, NBD_MAX_STRING);
        return NULL;
    }
    return g_steal_pointer(&t);
}

VmmNbdTarget *vmm_nbd_target_parse_filename(const char *filename, GError **error)
{
    if (!filename || !*filename) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "nbd: empty filename");
        return NULL;
    }
    if (strstr(filename, "://")) {
        return parse_uri(filename, error);
    }
    if (g_str_has_prefix(filename, "nbd:")) {
        return parse_legacy(filename, error);
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                "%s: not an NBD filename (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, "
                "nbd:HOST:PORT[:exportname=NAME], nbd:unix:PATH)", filename);
    return NULL;
}

/* ---- structured options ---- */

/* A leaf as a string, whatever JSON type it has; NULL if absent. Sets *BAD
 * if present but neither scalar. */
static char *opt_string(JsonObject *o, const char *key, gboolean *bad)
{
    if (!o || !json_object_has_member(o, key)) {
        return NULL;
    }
    JsonNode *n = json_object_get_member(o, key);
    if (JSON_NODE_HOLDS_VALUE(n)) {
        GType t = json_node_get_value_type(n);
        if (t == G_TYPE_STRING) {
            return g_strdup(json_node_get_string(n));
        }
        if (t == G_TYPE_INT64) {
            return g_strdup_printf("%" G_GINT64_FORMAT, json_node_get_int(n));
        }
        if (t == G_TYPE_BOOLEAN) {
            return g_strdup(json_node_get_boolean(n) ? "on" : "off");
        }
        if (t == G_TYPE_DOUBLE) {
            return g_strdup_printf("%.0f", json_node_get_double(n));
        }
    }
    *bad = TRUE;
    return NULL;
}

/* Dotted lookup ("server.host") in nested objects, or a flat key with the
 * dot kept (options not yet nested). */
static char *opt_lookup(JsonObject *o, const char *dotted, gboolean *bad)
{
    if (!o) {
        return NULL;
    }
    if (json_object_has_member(o, dotted)) {
        return opt_string(o, dotted, bad);
    }
    const char *dot = strchr(dotted, '.');
    if (!dot) {
        return NULL;
    }
    g_autofree char *head = g_strndup(dotted, dot - dotted);
    if (!json_object_has_member(o, head)) {
        return NULL;
    }
    JsonNode *n = json_object_get_member(o, head);
    if (!JSON_NODE_HOLDS_OBJECT(n)) {
        *bad = TRUE;
        return NULL;
    }
    return opt_lookup(json_node_get_object(n), dot + 1, bad);
}

static gboolean get_opt(JsonObject *o, const char *key, char **out, GError **error)
{
    gboolean bad = FALSE;
    *out = opt_lookup(o, key, &bad);
    if (bad) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "nbd: option '%s' must be a string or number", key);
        return FALSE;
    }
    return TRUE;
}

typedef struct {
    char *filename, *type, *host, *port, *path, *export_name;
    char *legacy_host, *legacy_port, *legacy_path;
    char *tls_creds, *tls_hostname, *reconnect_delay, *allocation_depth;
} RawOptions;

static void raw_options_clear(RawOptions *r)
{
    char **fields[] = { &r->filename, &r->type, &r->host, &r->port, &r->path, &r->export_name,
                        &r->legacy_host, &r->legacy_port, &r->legacy_path, &r->tls_creds,
                        &r->tls_hostname, &r->reconnect_delay, &r->allocation_depth };
    for (gsize i = 0; i < G_N_ELEMENTS(fields); i++) {
        g_clear_pointer(fields[i], g_free);
    }
}

static gboolean read_raw_options(JsonObject *o, RawOptions *r, GError **error)
{
    return get_opt(o, "filename", &r->filename, error) &&
           get_opt(o, "server.type", &r->type, error) &&
           get_opt(o, "server.host", &r->host, error) &&
           get_opt(o, "server.port", &r->port, error) &&
           get_opt(o, "server.path", &r->path, error) &&
           get_opt(o, "export", &r->export_name, error) &&
           get_opt(o, "host", &r->legacy_host, error) &&
           get_opt(o, "port", &r->legacy_port, error) &&
           get_opt(o, "path", &r->legacy_path, error) &&
           get_opt(o, "tls-creds", &r->tls_creds, error) &&
           get_opt(o, "tls-hostname", &r->tls_hostname, error) &&
           get_opt(o, "reconnect-delay", &r->reconnect_delay, error) &&
           get_opt(o, "allocation-depth", &r->allocation_depth, error);
}

static gboolean names_server(const RawOptions *r)
{
    return r->type || r->host || r->port || r->path || r->legacy_host || r->legacy_port ||
           r->legacy_path;
}

/* server.type=inet|unix with host/port or path; the legacy keys host, port,
 * path as QEMU still accepts them. */
static VmmNbdTarget *target_from_server_options(const RawOptions *r, GError **error)
{
    if ((r->host || r->port || r->path || r->type) &&
        (r->legacy_host || r->legacy_port || r->legacy_path)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "nbd: the legacy host/port/path options cannot be mixed with server.*");
        return NULL;
    }
    const char *type = r->type;
    const char *host = r->host ? r->host : r->legacy_host;
    const char *port = r->port ? r->port : r->legacy_port;
    const char *path = r->path ? r->path : r->legacy_path;
    if (!type) {
        type = path ? "unix" : "inet";
    }
    g_autoptr(VmmNbdTarget) t = target_new();
    if (strcmp(type, "inet") == 0) {
        if (path) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "nbd: server.path is for server.type=unix, not inet");
            return NULL;
        }
        if (!host || !*host) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "nbd: server.type=inet needs server.host");
            return NULL;
        }
        t->transport = VMM_NBD_TRANSPORT_TCP;
        t->host = g_strdup(host);
        if (port && !parse_port("nbd: server.port", port, &t->port, error)) {
            return NULL;
        }
    } else if (strcmp(type, "unix") == 0) {
        if (host || port) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "nbd: server.host and server.port are for server.type=inet, not unix");
            return NULL;
        }
        if (!path || !*path) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "nbd: server.type=unix needs server.path");
            return NULL;
        }
        t->transport = VMM_NBD_TRANSPORT_UNIX;
        t->path = g_strdup(path);
    } else {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "nbd: server.type '%s' is not supported (inet, unix)", type);
        return NULL;
    }
    t->export_name = g_strdup(r->export_name ? r->export_name : "");
    return g_steal_pointer(&t);
}

static gboolean apply_common_options(VmmNbdTarget *t, const RawOptions *r, GError **error)
{
    if (r->tls_creds) {
        if (!*r->tls_creds) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "nbd: tls-creds is empty");
            return FALSE;
        }
        g_free(t->tls_creds);
        t->tls_creds = g_strdup(r->tls_creds);
        t->tls = TRUE;
    }
    if (r->tls_hostname) {
        g_free(t->tls_hostname);
        t->tls_hostname = g_strdup(r->tls_hostname);
    }
    if (r->reconnect_delay) {
        guint64 v;
        if (!g_ascii_string_to_unsigned(r->reconnect_delay, 10, 0, 3600, &v, NULL)) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "nbd: reconnect-delay '%s' is not a number of seconds in 0..3600",
                        r->reconnect_delay);
            return FALSE;
        }
        t->reconnect_delay = v;
    }
    if (r->allocation_depth) {
        gboolean b;
        if (!vmm_parse_bool("nbd", "allocation-depth", r->allocation_depth, &b, error)) {
            return FALSE;
        }
        t->allocation_depth = b;
    }
    if (strlen(t->export_name) > NBD_MAX_STRING) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG, "nbd: export name longer than %d bytes",
                    NBD_MAX_STRING);
        return FALSE;
    }
    return TRUE;
}

VmmNbdTarget *vmm_nbd_target_from_options(JsonObject *options, const char *fallback_filename,
                                          GError **error)
{
    RawOptions r = { 0 };
    g_autoptr(VmmNbdTarget) t = NULL;
    if (!read_raw_options(options, &r, error)) {
        goto out;
    }
    /* A generic layer may pass the node's pseudo-filename (json:{...}) along
     * with server.*: the server options win then. */
    if (r.filename && names_server(&r) && !vmm_nbd_is_filename(r.filename)) {
        g_clear_pointer(&r.filename, g_free);
    }
    if (r.filename && (names_server(&r) || r.export_name)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "nbd: a filename and server/export options cannot be used together (%s)",
                    r.filename);
        goto out;
    }
    if (r.filename) {
        t = vmm_nbd_target_parse_filename(r.filename, error);
    } else if (names_server(&r)) {
        t = target_from_server_options(&r, error);
    } else if (fallback_filename && vmm_nbd_is_filename(fallback_filename)) {
        if (r.export_name) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "nbd: export= cannot be combined with the filename %s", fallback_filename);
            goto out;
        }
        t = vmm_nbd_target_parse_filename(fallback_filename, error);
    } else {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "nbd: no server given (a filename nbd://..., or server.type with "
                    "server.host/server.port or server.path)");
    }
    if (t && !apply_common_options(t, &r, error)) {
        g_clear_pointer(&t, vmm_nbd_target_free);
    }
out:
    raw_options_clear(&r);
    return g_steal_pointer(&t);
}

char *vmm_nbd_target_to_uri(const VmmNbdTarget *t)
{
    const char *scheme = t->tls ? "nbds" : "nbd";
    g_autofree char *exp = g_uri_escape_string(t->export_name ? t->export_name : "",
                                               "!$&'()*+,;=:@/", TRUE);
    if (t->transport == VMM_NBD_TRANSPORT_UNIX) {
        g_autofree char *sock = g_uri_escape_string(t->path, "/:@!$'()*+,;", TRUE);
        return g_strdup_printf("%s+unix:///%s?socket=%s", scheme, exp, sock);
    }
    gboolean v6 = strchr(t->host, ':') != NULL;
    return g_strdup_printf("%s://%s%s%s:%u/%s", scheme, v6 ? "[" : "", t->host, v6 ? "]" : "",
                           t->port, exp);
}

/* ---- TLS credentials registry ---- */

typedef struct {
    VmmNbdTlsKind kind;
    char *dir, *username;
} TlsCreds;

static GMutex creds_lock;
static GHashTable *creds_table;

static void tls_creds_free(gpointer p)
{
    TlsCreds *c = p;
    g_free(c->dir);
    g_free(c->username);
    g_free(c);
}

void vmm_nbd_tls_creds_register(const char *id, VmmNbdTlsKind kind, const char *dir,
                                const char *username)
{
    TlsCreds *c = g_new0(TlsCreds, 1);
    c->kind = kind;
    c->dir = g_strdup(dir);
    c->username = g_strdup(username);
    g_mutex_lock(&creds_lock);
    if (!creds_table) {
        creds_table = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, tls_creds_free);
    }
    g_hash_table_replace(creds_table, g_strdup(id), c);
    g_mutex_unlock(&creds_lock);
}

void vmm_nbd_tls_creds_unregister(const char *id)
{
    g_mutex_lock(&creds_lock);
    if (creds_table) {
        g_hash_table_remove(creds_table, id);
    }
    g_mutex_unlock(&creds_lock);
}

gboolean vmm_nbd_tls_creds_lookup(const char *id, VmmNbdTlsKind *kind, char **dir,
                                  char **username)
{
    gboolean found = FALSE;
    g_mutex_lock(&creds_lock);
    TlsCreds *c = creds_table ? g_hash_table_lookup(creds_table, id) : NULL;
    if (c) {
        *kind = c->kind;
        *dir = g_strdup(c->dir);
        *username = g_strdup(c->username);
        found = TRUE;
    }
    g_mutex_unlock(&creds_lock);
    return found;
}
