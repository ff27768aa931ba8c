/* TLS for NBD (gnutls): credentials in the shapes qemu's tls-creds-x509 and
 * tls-creds-psk objects read, and a session object that upgrades one connected
 * socket (NBD_OPT_STARTTLS) and then carries the rest of the connection.
 *
 * X.509 credentials are a directory: ca-cert.pem (trust anchors, required),
 * and server-cert.pem + server-key.pem for a server (required) or
 * client-cert.pem + client-key.pem for a client (optional); ca-crl.pem is
 * loaded when present. PSK credentials are a keys file of "username:hexkey"
 * lines (a directory means DIR/keys.psk, as qemu's tls-creds-psk dir=).
 *
 * A session may be read by one thread while another writes to it (gnutls
 * allows one concurrent reader and writer); writers serialise among themselves. */
#pragma once
#include <glib.h>
#include <sys/uio.h>

typedef enum { NBD_TLS_SERVER, NBD_TLS_CLIENT } NbdTlsEndpoint;

typedef struct NbdTlsCreds NbdTlsCreds;
typedef struct NbdTlsSession NbdTlsSession;

/* VERIFY_PEER: a server requires and verifies a client certificate; a client
 * verifies the server's certificate (and its host name if given to the
 * session). */
NbdTlsCreds *nbd_tls_creds_new_x509(const char *dir, NbdTlsEndpoint endpoint, gboolean verify_peer,
                                    GError **error);
/* USERNAME: for a client, which key of the file to use (NULL: the first line);
 * ignored for a server, which accepts every user of the file. */
NbdTlsCreds *nbd_tls_creds_new_psk(const char *path, NbdTlsEndpoint endpoint, const char *username,
                                   GError **error);
NbdTlsCreds *nbd_tls_creds_ref(NbdTlsCreds *creds);
void nbd_tls_creds_unref(NbdTlsCreds *creds);
NbdTlsEndpoint nbd_tls_creds_endpoint(const NbdTlsCreds *creds);
gboolean nbd_tls_creds_is_psk(const NbdTlsCreds *creds);

/* A session on the connected socket FD (not owned). HOSTNAME (client side,
 * may be NULL) is checked against the server's certificate. */
NbdTlsSession *nbd_tls_session_new(NbdTlsCreds *creds, int fd, const char *hostname, GError **error);
/* Runs the handshake; TIMEOUT_MS 0 means no limit. For a server with
 * verify-peer the client's certificate is verified here. */
gboolean nbd_tls_session_handshake(NbdTlsSession *s, guint timeout_ms, GError **error);
/* Server side, after the handshake: is the peer one of AUTHZ (NULL or empty:
 * anyone)? X.509 peers are named by their certificate's distinguished name
 * (RFC 4514, e.g. "CN=client,O=Example"); PSK peers by their username. An
 * entry containing '*' or '?' is a glob pattern. */
gboolean nbd_tls_session_check_authz(NbdTlsSession *s, const char *const *authz, GError **error);
/* The peer's DN or PSK username after the handshake, or NULL. */
const char *nbd_tls_session_peer_name(NbdTlsSession *s);

/* Returns bytes read, 0 at end of stream, -1 with error. */
gssize nbd_tls_session_recv(NbdTlsSession *s, void *buf, gsize len, GError **error);
/* TRUE if decrypted bytes are waiting (a poll on the fd would not see them). */
gboolean nbd_tls_session_pending(NbdTlsSession *s);
gboolean nbd_tls_session_send_iov(NbdTlsSession *s, const struct iovec *iov, int niov, GError **error);
/* Sends close_notify (best effort; does not wait for the peer's). */
void nbd_tls_session_bye(NbdTlsSession *s);
void nbd_tls_session_free(NbdTlsSession *s);
