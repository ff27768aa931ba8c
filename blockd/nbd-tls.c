/* TLS for NBD with gnutls: X.509 and PSK credentials and the session that
 * carries a connection after NBD_OPT_STARTTLS. See nbd-tls.h. */
#include "blockd/nbd-tls.h"

#include <errno.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/error.h"

/* qemu's priorities: PSK needs its key exchanges added to NORMAL. */
#define PRIORITY_X509 "NORMAL"
#define PRIORITY_PSK "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK"

struct NbdTlsCreds {
    gint refcnt;
    NbdTlsEndpoint endpoint;
    gboolean psk;
    gboolean verify_peer;
    char *origin; /* directory or keys file, for messages */
    gnutls_certificate_credentials_t x509;
    gnutls_psk_server_credentials_t psk_server;
    gnutls_psk_client_credentials_t psk_client;
};

struct NbdTlsSession {
    NbdTlsCreds *creds;
    gnutls_session_t session;
    int fd;
    char *hostname;
    char *peer_name;
    gboolean handshaken;
};

static gboolean tls_fail(GError **error, int rc, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

static gboolean tls_fail(GError **error, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *what = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(error, VMM_ERROR, VMM_ERROR_FAILED, "%s: %s", what, gnutls_strerror(rc));
    return FALSE;
}

/* ---- credentials ---- */

static NbdTlsCreds *creds_alloc(NbdTlsEndpoint endpoint, const char *origin)
{
    NbdTlsCreds *c = g_new0(NbdTlsCreds, 1);
    c->refcnt = 1;
    c->endpoint = endpoint;
    c->origin = g_strdup(origin);
    return c;
}

static gboolean require_file(const char *path, const char *what, GError **error)
{
    if (access(path, R_OK) == 0)
        return TRUE;
    return vmm_set_errno(error, errno, "TLS credentials: %s '%s'", what, path);
}

static gboolean x509_load_key_pair(NbdTlsCreds *c, const char *dir, const char *role, gboolean required,
                                   GError **error)
{
    g_autofree char *cert_name = g_strdup_printf("%s-cert.pem", role);
    g_autofree char *key_name = g_strdup_printf("%s-key.pem", role);
    g_autofree char *cert = g_build_filename(dir, cert_name, NULL);
    g_autofree char *key = g_build_filename(dir, key_name, NULL);
    if (!required && (access(cert, F_OK) != 0 || access(key, F_OK) != 0))
        return TRUE;
    if (!require_file(cert, "certificate", error) || !require_file(key, "private key", error))
        return FALSE;
    int rc = gnutls_certificate_set_x509_key_file(c->x509, cert, key, GNUTLS_X509_FMT_PEM);
    if (rc < 0)
        return tls_fail(error, rc, "TLS credentials '%s': loading %s and %s", dir, cert_name, key_name);
    return TRUE;
}

NbdTlsCreds *nbd_tls_creds_new_x509(const char *dir, NbdTlsEndpoint endpoint, gboolean verify_peer,
                                    GError **error)
{
    g_autofree char *ca = g_build_filename(dir, "ca-cert.pem", NULL);
    g_autofree char *crl = g_build_filename(dir, "ca-crl.pem", NULL);
    NbdTlsCreds *c = creds_alloc(endpoint, dir);
    c->verify_peer = verify_peer;

    int rc = gnutls_certificate_allocate_credentials(&c->x509);
    if (rc < 0) {
        tls_fail(error, rc, "TLS credentials '%s'", dir);
        goto fail;
    }
    if (!require_file(ca, "CA certificate", error))
        goto fail;
    rc = gnutls_certificate_set_x509_trust_file(c->x509, ca, GNUTLS_X509_FMT_PEM);
    if (rc < 0) {
        tls_fail(error, rc, "TLS credentials '%s': loading ca-cert.pem", dir);
        goto fail;
    }
    if (access(crl, F_OK) == 0) {
        rc = gnutls_certificate_set_x509_crl_file(c->x509, crl, GNUTLS_X509_FMT_PEM);
        if (rc < 0) {
            tls_fail(error, rc, "TLS credentials '%s': loading ca-crl.pem", dir);
            goto fail;
        }
    }
    if (endpoint == NBD_TLS_SERVER) {
        if (!x509_load_key_pair(c, dir, "server", TRUE, error))
            goto fail;
        gnutls_certificate_set_known_dh_params(c->x509, GNUTLS_SEC_PARAM_MEDIUM);
    } else if (!x509_load_key_pair(c, dir, "client", FALSE, error)) {
        goto fail;
    }
    return c;
fail:
    nbd_tls_creds_unref(c);
    return NULL;
}

/* Checks the keys file line by line so that a typo is reported at start-up
 * rather than as a failed handshake. Returns the hex key of USERNAME (or of
 * the first line) through *KEY_HEX when asked. */
static gboolean psk_parse_file(const char *path, const char *username, char **user_out, char **key_hex,
                               GError **error)
{
    g_autofree char *text = NULL;
    if (!g_file_get_contents(path, &text, NULL, error)) {
        g_prefix_error(error, "TLS PSK keys file: ");
        return FALSE;
    }
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    gboolean found = FALSE;
    int entries = 0;
    for (int i = 0; lines[i]; i++) {
        char *line = g_strstrip(lines[i]);
        if (!*line)
            continue;
        char *colon = strchr(line, ':');
        const char *hex = colon ? colon + 1 : "";
        gsize hexlen = strlen(hex);
        gboolean ok = colon && colon != line && hexlen > 0 && hexlen % 2 == 0;
        for (gsize k = 0; ok && k < hexlen; k++)
            ok = g_ascii_isxdigit(hex[k]);
        if (!ok) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "TLS PSK keys file '%s' line %d: expected \"username:hexkey\"", path, i + 1);
            return FALSE;
        }
        entries++;
        *colon = '\0';
        if (!found && key_hex && (!username || strcmp(username, line) == 0)) {
            found = TRUE;
            *key_hex = g_strdup(hex);
            *user_out = g_strdup(line);
        }
    }
    if (entries == 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "TLS PSK keys file '%s': no keys", path);
        return FALSE;
    }
    if (key_hex && !found) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_NOT_FOUND, "TLS PSK keys file '%s': no key for user '%s'",
                    path, username);
        return FALSE;
    }
    return TRUE;
}

NbdTlsCreds *nbd_tls_creds_new_psk(const char *path, NbdTlsEndpoint endpoint, const char *username,
                                   GError **error)
{
    g_autofree char *file = g_file_test(path, G_FILE_TEST_IS_DIR) ? g_build_filename(path, "keys.psk", NULL)
                                                                   : g_strdup(path);
    NbdTlsCreds *c = creds_alloc(endpoint, file);
    c->psk = TRUE;
    int rc;
    if (endpoint == NBD_TLS_SERVER) {
        if (!psk_parse_file(file, NULL, NULL, NULL, error))
            goto fail;
        rc = gnutls_psk_allocate_server_credentials(&c->psk_server);
        if (rc >= 0)
            rc = gnutls_psk_set_server_credentials_file(c->psk_server, file);
        if (rc < 0) {
            tls_fail(error, rc, "TLS PSK keys file '%s'", file);
            goto fail;
        }
        gnutls_psk_set_server_known_dh_params(c->psk_server, GNUTLS_SEC_PARAM_MEDIUM);
    } else {
        g_autofree char *user = NULL, *hex = NULL;
        if (!psk_parse_file(file, username, &user, &hex, error))
            goto fail;
        gnutls_datum_t key = { (unsigned char *)hex, (unsigned int)strlen(hex) };
        rc = gnutls_psk_allocate_client_credentials(&c->psk_client);
        if (rc >= 0)
            rc = gnutls_psk_set_client_credentials(c->psk_client, user, &key, GNUTLS_PSK_KEY_HEX);
        if (rc < 0) {
            tls_fail(error, rc, "TLS PSK keys file '%s'", file);
            goto fail;
        }
    }
    return c;
fail:
    nbd_tls_creds_unref(c);
    return NULL;
}

NbdTlsCreds *nbd_tls_creds_ref(NbdTlsCreds *creds)
{
    g_atomic_int_inc(&creds->refcnt);
    return creds;
}

void nbd_tls_creds_unref(NbdTlsCreds *creds)
{
    if (!creds || !g_atomic_int_dec_and_test(&creds->refcnt))
        return;
    if (creds->x509)
        gnutls_certificate_free_credentials(creds->x509);
    if (creds->psk_server)
        gnutls_psk_free_server_credentials(creds->psk_server);
    if (creds->psk_client)
        gnutls_psk_free_client_credentials(creds->psk_client);
    g_free(creds->origin);
    g_free(creds);
}

NbdTlsEndpoint nbd_tls_creds_endpoint(const NbdTlsCreds *creds)
{
    return creds->endpoint;
}

gboolean nbd_tls_creds_is_psk(const NbdTlsCreds *creds)
{
    return creds->psk;
}

/* ---- transport: our own push/pull so that a vanished peer gives EPIPE
 * rather than SIGPIPE, and so that non-socket fds (pipes in tests) work ---- */

static ssize_t transport_push(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
    NbdTlsSession *s = ptr;
    ssize_t n;
    do {
        n = send(s->fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno == ENOTSOCK)
            n = write(s->fd, data, len);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        gnutls_transport_set_errno(s->session, errno);
    return n;
}

static ssize_t transport_pull(gnutls_transport_ptr_t ptr, void *data, size_t len)
{
    NbdTlsSession *s = ptr;
    ssize_t n;
    do {
        n = read(s->fd, data, len);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        gnutls_transport_set_errno(s->session, errno);
    return n;
}

static int transport_pull_timeout(gnutls_transport_ptr_t ptr, unsigned int ms)
{
    NbdTlsSession *s = ptr;
    struct pollfd pfd = { .fd = s->fd, .events = POLLIN };
    int rc;
    do {
        rc = poll(&pfd, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : (int)ms);
    } while (rc < 0 && errno == EINTR);
    return rc;
}

/* ---- sessions ---- */

NbdTlsSession *nbd_tls_session_new(NbdTlsCreds *creds, int fd, const char *hostname, GError **error)
{
    NbdTlsSession *s = g_new0(NbdTlsSession, 1);
    s->creds = nbd_tls_creds_ref(creds);
    s->fd = fd;
    s->hostname = g_strdup(hostname);
    gboolean server = creds->endpoint == NBD_TLS_SERVER;
    int rc = gnutls_init(&s->session, server ? GNUTLS_SERVER : GNUTLS_CLIENT);
    if (rc < 0) {
        s->session = NULL;
        tls_fail(error, rc, "TLS session");
        goto fail;
    }
    rc = gnutls_priority_set_direct(s->session, creds->psk ? PRIORITY_PSK : PRIORITY_X509, NULL);
    if (rc < 0) {
        tls_fail(error, rc, "TLS session: priority");
        goto fail;
    }
    if (creds->psk)
        rc = gnutls_credentials_set(s->session, GNUTLS_CRD_PSK,
                                    server ? (void *)creds->psk_server : (void *)creds->psk_client);
    else
        rc = gnutls_credentials_set(s->session, GNUTLS_CRD_CERTIFICATE, creds->x509);
    if (rc < 0) {
        tls_fail(error, rc, "TLS session: credentials '%s'", creds->origin);
        goto fail;
    }
    if (!creds->psk && server && creds->verify_peer)
        gnutls_certificate_server_set_request(s->session, GNUTLS_CERT_REQUIRE);
    if (!creds->psk && !server && hostname && !g_hostname_is_ip_address(hostname))
        gnutls_server_name_set(s->session, GNUTLS_NAME_DNS, hostname, strlen(hostname));
    gnutls_transport_set_ptr(s->session, s);
    gnutls_transport_set_push_function(s->session, transport_push);
    gnutls_transport_set_pull_function(s->session, transport_pull);
    gnutls_transport_set_pull_timeout_function(s->session, transport_pull_timeout);
    return s;
fail:
    nbd_tls_session_free(s);
    return NULL;
}

static gboolean verify_peer_certificate(NbdTlsSession *s, GError **error)
{
    unsigned int status = 0;
    const char *host = s->creds->endpoint == NBD_TLS_CLIENT ? s->hostname : NULL;
    int rc = gnutls_certificate_verify_peers3(s->session, host, &status);
    if (rc < 0)
        return tls_fail(error, rc, "TLS: verifying the peer's certificate");
    if (status != 0) {
        gnutls_datum_t out = { 0 };
        gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0);
        g_set_error(error, VMM_ERROR, VMM_ERROR_PERMISSION, "TLS: peer certificate rejected: %s",
                    out.data ? (const char *)out.data : "invalid");
        gnutls_free(out.data);
        return FALSE;
    }
    return TRUE;
}

/* The peer certificate's DN in RFC 4514 form, or NULL. COMPAT selects gnutls'
 * older order, which some configurations were written against. */
static char *peer_certificate_dn(NbdTlsSession *s, gboolean compat)
{
    unsigned int n = 0;
    const gnutls_datum_t *certs = gnutls_certificate_get_peers(s->session, &n);
    if (!certs || n == 0)
        return NULL;
    gnutls_x509_crt_t crt;
    if (gnutls_x509_crt_init(&crt) < 0)
        return NULL;
    char *result = NULL;
    gnutls_datum_t dn = { 0 };
    if (gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER) >= 0 &&
        gnutls_x509_crt_get_dn3(crt, &dn, compat ? GNUTLS_X509_DN_FLAG_COMPAT : 0) >= 0) {
        result = g_strndup((const char *)dn.data, dn.size);
        gnutls_free(dn.data);
    }
    gnutls_x509_crt_deinit(crt);
    return result;
}

gboolean nbd_tls_session_handshake(NbdTlsSession *s, guint timeout_ms, GError **error)
{
    gnutls_handshake_set_timeout(s->session, timeout_ms ? timeout_ms : GNUTLS_INDEFINITE_TIMEOUT);
    int rc;
    do {
        rc = gnutls_handshake(s->session);
    } while (rc < 0 && !gnutls_error_is_fatal(rc) && rc != GNUTLS_E_TIMEDOUT);
    if (rc < 0)
        return tls_fail(error, rc, "TLS handshake");
    s->handshaken = TRUE;
    gboolean server = s->creds->endpoint == NBD_TLS_SERVER;
    if (!s->creds->psk && s->creds->verify_peer && !verify_peer_certificate(s, error))
        return FALSE;
    if (s->creds->psk && server) {
        const char *user = gnutls_psk_server_get_username(s->session);
        s->peer_name = g_strdup(user);
    } else if (!s->creds->psk) {
        s->peer_name = peer_certificate_dn(s, FALSE);
    }
    return TRUE;
}

static gboolean authz_matches(const char *pattern, const char *name)
{
    if (!name)
        return FALSE;
    if (strpbrk(pattern, "*?"))
        return g_pattern_match_simple(pattern, name);
    return strcmp(pattern, name) == 0;
}

gboolean nbd_tls_session_check_authz(NbdTlsSession *s, const char *const *authz, GError **error)
{
    if (!authz || !authz[0])
        return TRUE;
    g_autofree char *compat = s->creds->psk ? NULL : peer_certificate_dn(s, TRUE);
    for (int i = 0; authz[i]; i++) {
        if (authz_matches(authz[i], s->peer_name) || authz_matches(authz[i], compat))
            return TRUE;
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_PERMISSION, "TLS: %s '%s' is not authorized by tls-authz",
                s->creds->psk ? "PSK user" : "client certificate",
                s->peer_name ? s->peer_name : "(no certificate)");
    return FALSE;
}

const char *nbd_tls_session_peer_name(NbdTlsSession *s)
{
    return s->peer_name;
}

gssize nbd_tls_session_recv(NbdTlsSession *s, void *buf, gsize len, GError **error)
{
    for (;;) {
        ssize_t n = gnutls_record_recv(s->session, buf, len);
        if (n >= 0)
            return n;
        if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
            continue;
        if (n == GNUTLS_E_PREMATURE_TERMINATION) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_CLOSED, "TLS: the peer closed the connection");
            return -1;
        }
        tls_fail(error, (int)n, "TLS receive");
        return -1;
    }
}

gboolean nbd_tls_session_pending(NbdTlsSession *s)
{
    return gnutls_record_check_pending(s->session) > 0;
}

static gboolean tls_send_all(NbdTlsSession *s, const guint8 *p, gsize len, GError **error)
{
    while (len > 0) {
        ssize_t n = gnutls_record_send(s->session, p, len);
        if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
            continue;
        if (n < 0)
            return tls_fail(error, (int)n, "TLS send");
        p += n;
        len -= (gsize)n;
    }
    return TRUE;
}

static gboolean tls_uncork(NbdTlsSession *s, GError **error)
{
    for (;;) {
        int rc = gnutls_record_uncork(s->session, GNUTLS_RECORD_WAIT);
        if (rc >= 0)
            return TRUE;
        if (rc != GNUTLS_E_AGAIN && rc != GNUTLS_E_INTERRUPTED)
            return tls_fail(error, rc, "TLS send");
    }
}

/* Small pieces (headers) are corked together into few records; large data
 * goes straight through so that corking does not copy megabytes. */
gboolean nbd_tls_session_send_iov(NbdTlsSession *s, const struct iovec *iov, int niov, GError **error)
{
    enum { CORK_LIMIT = 16384 };
    gboolean corked = FALSE;
    for (int i = 0; i < niov; i++) {
        if (iov[i].iov_len == 0)
            continue;
        if (iov[i].iov_len < CORK_LIMIT && !corked) {
            gnutls_record_cork(s->session);
            corked = TRUE;
        } else if (iov[i].iov_len >= CORK_LIMIT && corked) {
            corked = FALSE;
            if (!tls_uncork(s, error))
                return FALSE;
        }
        if (!tls_send_all(s, iov[i].iov_base, iov[i].iov_len, error)) {
            if (corked)
                gnutls_record_uncork(s->session, 0);
            return FALSE;
        }
    }
    return !corked || tls_uncork(s, error);
}

void nbd_tls_session_bye(NbdTlsSession *s)
{
    if (s->handshaken)
        gnutls_bye(s->session, GNUTLS_SHUT_WR);
}

void nbd_tls_session_free(NbdTlsSession *s)
{
    if (!s)
        return;
    if (s->session)
        gnutls_deinit(s->session);
    nbd_tls_creds_unref(s->creds);
    g_free(s->hostname);
    g_free(s->peer_name);
    g_free(s);
}
