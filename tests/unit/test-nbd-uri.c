/* Table tests of the NBD target parser: every filename form QEMU 7.2 accepts
 * (and libnbd's TLS schemes), the driver's structured options, and bad forms
 * with the message they must give. */
#include <string.h>
#include "blockd/nbd-uri.h"
#include "common/error.h"

typedef struct {
    const char *input;
    VmmNbdTransport transport;
    const char *host;   /* or socket path for Unix */
    guint16 port;
    const char *export_name;
    gboolean tls;
    const char *uri;    /* canonical form */
} GoodCase;

static const GoodCase good_filenames[] = {
    { "nbd://localhost", VMM_NBD_TRANSPORT_TCP, "localhost", 10809, "", FALSE,
      "nbd://localhost:10809/" },
    { "nbd://my_nbd_server.mydomain.org:1024/", VMM_NBD_TRANSPORT_TCP,
      "my_nbd_server.mydomain.org", 1024, "", FALSE, "nbd://my_nbd_server.mydomain.org:1024/" },
    { "nbd://localhost/debian-500-ppc-netinst", VMM_NBD_TRANSPORT_TCP, "localhost", 10809,
      "debian-500-ppc-netinst", FALSE, "nbd://localhost:10809/debian-500-ppc-netinst" },
    { "nbd://127.0.0.1:10810/a/b", VMM_NBD_TRANSPORT_TCP, "127.0.0.1", 10810, "a/b", FALSE,
      "nbd://127.0.0.1:10810/a/b" },
    { "nbd://[::1]:7000/x", VMM_NBD_TRANSPORT_TCP, "::1", 7000, "x", FALSE,
      "nbd://[::1]:7000/x" },
    { "nbd://host/with%20space", VMM_NBD_TRANSPORT_TCP, "host", 10809, "with space", FALSE,
      "nbd://host:10809/with%20space" },
    { "nbd+tcp://h:99/e", VMM_NBD_TRANSPORT_TCP, "h", 99, "e", FALSE, "nbd://h:99/e" },
    { "nbd+unix://?socket=/tmp/my_socket", VMM_NBD_TRANSPORT_UNIX, "/tmp/my_socket", 0, "",
      FALSE, "nbd+unix:///?socket=/tmp/my_socket" },
    { "nbd+unix:///?socket=/tmp/my_socket", VMM_NBD_TRANSPORT_UNIX, "/tmp/my_socket", 0, "",
      FALSE, "nbd+unix:///?socket=/tmp/my_socket" },
    { "nbd+unix:///disk1?socket=/run/a%20b.sock", VMM_NBD_TRANSPORT_UNIX, "/run/a b.sock", 0,
      "disk1", FALSE, "nbd+unix:///disk1?socket=/run/a%20b.sock" },
    { "nbds://server:1/e", VMM_NBD_TRANSPORT_TCP, "server", 1, "e", TRUE, "nbds://server:1/e" },
    { "nbds+unix:///e?socket=/s", VMM_NBD_TRANSPORT_UNIX, "/s", 0, "e", TRUE,
      "nbds+unix:///e?socket=/s" },
    { "NBD://Host/e", VMM_NBD_TRANSPORT_TCP, "Host", 10809, "e", FALSE, "nbd://Host:10809/e" },
    /* legacy */
    { "nbd:my_nbd_server.mydomain.org:1024", VMM_NBD_TRANSPORT_TCP, "my_nbd_server.mydomain.org",
      1024, "", FALSE, "nbd://my_nbd_server.mydomain.org:1024/" },
    { "nbd:localhost:10809:exportname=debian-500-ppc-netinst", VMM_NBD_TRANSPORT_TCP,
      "localhost", 10809, "debian-500-ppc-netinst", FALSE,
      "nbd://localhost:10809/debian-500-ppc-netinst" },
    { "nbd:localhost", VMM_NBD_TRANSPORT_TCP, "localhost", 10809, "", FALSE,
      "nbd://localhost:10809/" },
    { "nbd:[::1]:5000:exportname=v6", VMM_NBD_TRANSPORT_TCP, "::1", 5000, "v6", FALSE,
      "nbd://[::1]:5000/v6" },
    { "nbd:unix:/tmp/my_socket", VMM_NBD_TRANSPORT_UNIX, "/tmp/my_socket", 0, "", FALSE,
      "nbd+unix:///?socket=/tmp/my_socket" },
    { "nbd:unix:/tmp/s:exportname=disk", VMM_NBD_TRANSPORT_UNIX, "/tmp/s", 0, "disk", FALSE,
      "nbd+unix:///disk?socket=/tmp/s" },
};

static void check_good(const GoodCase *gc, const VmmNbdTarget *t)
{
    g_assert_cmpint(t->transport, ==, gc->transport);
    if (gc->transport == VMM_NBD_TRANSPORT_TCP) {
        g_assert_cmpstr(t->host, ==, gc->host);
        g_assert_cmpuint(t->port, ==, gc->port);
        g_assert_null(t->path);
    } else {
        g_assert_cmpstr(t->path, ==, gc->host);
        g_assert_null(t->host);
    }
    g_assert_cmpstr(t->export_name, ==, gc->export_name);
    g_assert_cmpint(t->tls, ==, gc->tls);
    g_autofree char *uri = vmm_nbd_target_to_uri(t);
    g_assert_cmpstr(uri, ==, gc->uri);
}

static void test_good_filenames(void)
{
    for (gsize i = 0; i < G_N_ELEMENTS(good_filenames); i++) {
        const GoodCase *gc = &good_filenames[i];
        GError *err = NULL;
        g_test_message("parsing %s", gc->input);
        g_autoptr(VmmNbdTarget) t = vmm_nbd_target_parse_filename(gc->input, &err);
        g_assert_no_error(err);
        g_assert_nonnull(t);
        check_good(gc, t);
        g_assert_true(vmm_nbd_is_filename(gc->input));
        /* The canonical URI parses back to the same target. */
        g_autofree char *uri = vmm_nbd_target_to_uri(t);
        g_autoptr(VmmNbdTarget) t2 = vmm_nbd_target_parse_filename(uri, &err);
        g_assert_no_error(err);
        check_good(gc, t2);
    }
}

static void test_tls_query(void)
{
    GError *err = NULL;
    g_autoptr(VmmNbdTarget) t = vmm_nbd_target_parse_filename(
        "nbds://h/e?tls-certificates=/etc/pki/x&tls-hostname=srv.example", &err);
    g_assert_no_error(err);
    g_assert_cmpstr(t->tls_certificates, ==, "/etc/pki/x");
    g_assert_cmpstr(t->tls_hostname, ==, "srv.example");
    g_autoptr(VmmNbdTarget) u = vmm_nbd_target_parse_filename(
        "nbds+unix:///e?socket=/s&tls-psk-file=/k/keys.psk&tls-username=alice", &err);
    g_assert_no_error(err);
    g_assert_cmpstr(u->path, ==, "/s");
    g_assert_cmpstr(u->tls_psk_file, ==, "/k/keys.psk");
    g_assert_cmpstr(u->tls_username, ==, "alice");
}

typedef struct {
    const char *input;
    const char *message_part;
} BadCase;

static const BadCase bad_filenames[] = {
    { "", "empty filename" },
    { "/tmp/disk.img", "not an NBD filename" },
    { "http://host/x", "unknown scheme 'http'" },
    { "nbd+vsock://1:2/x", "unknown scheme" },
    { "nbd:///export", "needs a host" },
    { "nbd://host:0/e", "port 0" },
    { "nbd://host:99999/e", "not a valid NBD URI" },
    { "nbd://host:abc/e", "not a valid NBD URI" },
    { "nbd://user@host/e", "no user name" },
    { "nbd://host/e#frag", "no user name or fragment" },
    { "nbd://host/e?socket=/s", "socket= belongs to nbd+unix" },
    { "nbd://host/e?tls-certificates=/x", "unknown query parameter 'tls-certificates'" },
    { "nbd+unix:///e", "needs ?socket=PATH" },
    { "nbd+unix:///e?socket=", "needs ?socket=PATH" },
    { "nbd+unix://host/e?socket=/s", "takes no host or port" },
    { "nbd+unix:///e?socket=/s&foo=1", "unknown query parameter 'foo'" },
    { "nbd:", "no server" },
    { "nbd::10809", "no host" },
    { "nbd:host:", "port '' is not a number" },
    { "nbd:host:port", "port 'port' is not a number" },
    { "nbd:host:70000", "port '70000'" },
    { "nbd:[::1:5", "unterminated" },
    { "nbd:[::1]x", "unexpected 'x'" },
    { "nbd:unix:", "no socket path" },
    { "nbd:unix::exportname=e", "no socket path" },
};

static void test_bad_filenames(void)
{
    for (gsize i = 0; i < G_N_ELEMENTS(bad_filenames); i++) {
        const BadCase *bc = &bad_filenames[i];
        GError *err = NULL;
        g_test_message("parsing %s", bc->input);
        VmmNbdTarget *t = vmm_nbd_target_parse_filename(bc->input, &err);
        g_assert_null(t);
        g_assert_nonnull(err);
        g_assert_true(err->domain == VMM_ERROR);
        if (!strstr(err->message, bc->message_part)) {
            g_error("%s: message '%s' lacks '%s'", bc->input, err->message, bc->message_part);
        }
        /* The message names the filename it rejects. */
        if (*bc->input) {
            g_assert_nonnull(strstr(err->message, bc->input));
        }
        g_error_free(err);
    }
}

static void test_long_export_name(void)
{
    g_autofree char *name = g_strnfill(5000, 'x');
    g_autofree char *uri = g_strdup_printf("nbd://h/%s", name);
    GError *err = NULL;
    g_assert_null(vmm_nbd_target_parse_filename(uri, &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_TOO_BIG);
    g_error_free(err);
}

static void test_is_filename(void)
{
    g_assert_false(vmm_nbd_is_filename("disk.qcow2"));
    g_assert_false(vmm_nbd_is_filename("json:{}"));
    g_assert_false(vmm_nbd_is_filename("nbdx://h"));
    g_assert_false(vmm_nbd_is_filename("file:nbd://h"));
    g_assert_false(vmm_nbd_is_filename(NULL));
    g_assert_true(vmm_nbd_is_filename("nbd:unix:/s"));
    g_assert_true(vmm_nbd_is_filename("nbds+unix:///?socket=/s"));
}

static JsonObject *json_obj(const char *text)
{
    g_autoptr(JsonParser) p = json_parser_new();
    g_assert_true(json_parser_load_from_data(p, text, -1, NULL));
    return json_object_ref(json_node_get_object(json_parser_get_root(p)));
}

typedef struct {
    const char *json;
    const char *fallback;
    const char *uri;         /* expected canonical URI, or NULL for an error */
    const char *message_part;
} OptCase;

static const OptCase option_cases[] = {
    { "{\"server\":{\"type\":\"inet\",\"host\":\"127.0.0.1\",\"port\":\"10900\"},\"export\":\"d\"}",
      NULL, "nbd://127.0.0.1:10900/d", NULL },
    { "{\"server\":{\"type\":\"inet\",\"host\":\"h\",\"port\":10901}}", NULL, "nbd://h:10901/",
      NULL },
    { "{\"server.type\":\"unix\",\"server.path\":\"/run/s\",\"export\":\"e\"}", NULL,
      "nbd+unix:///e?socket=/run/s", NULL },
    { "{\"server\":{\"path\":\"/run/s\"}}", NULL, "nbd+unix:///?socket=/run/s", NULL },
    { "{\"host\":\"h\",\"port\":\"1\"}", NULL, "nbd://h:1/", NULL },
    { "{\"path\":\"/s\",\"export\":\"x\"}", NULL, "nbd+unix:///x?socket=/s", NULL },
    { "{\"filename\":\"nbd:unix:/s:exportname=e\"}", NULL, "nbd+unix:///e?socket=/s", NULL },
    { "{}", "nbd://h:5/f", "nbd://h:5/f", NULL },
    { "{\"server\":{\"type\":\"inet\",\"host\":\"h\"},\"tls-creds\":\"tls0\"}", NULL,
      "nbds://h:10809/", NULL },
    { "{}", NULL, NULL, "no server given" },
    { "{}", "/tmp/disk", NULL, "no server given" },
    { "{\"server\":{\"type\":\"vsock\",\"host\":\"h\"}}", NULL, NULL,
      "server.type 'vsock' is not supported" },
    { "{\"server\":{\"type\":\"inet\"}}", NULL, NULL, "needs server.host" },
    { "{\"server\":{\"type\":\"unix\"}}", NULL, NULL, "needs server.path" },
    { "{\"server\":{\"type\":\"unix\",\"path\":\"/s\",\"host\":\"h\"}}", NULL, NULL,
      "are for server.type=inet" },
    { "{\"server\":{\"type\":\"inet\",\"host\":\"h\",\"path\":\"/s\"}}", NULL, NULL,
      "server.path is for server.type=unix" },
    { "{\"server\":{\"type\":\"inet\",\"host\":\"h\",\"port\":\"0\"}}", NULL, NULL,
      "port '0' is not a number in 1..65535" },
    { "{\"server\":{\"host\":\"h\"},\"host\":\"g\"}", NULL, NULL, "cannot be mixed" },
    { "{\"filename\":\"nbd://h/e\",\"export\":\"x\"}", NULL, NULL,
      "cannot be used together" },
    { "{\"server\":{\"type\":\"inet\",\"host\":\"h\"},\"reconnect-delay\":\"soon\"}", NULL,
      NULL, "reconnect-delay 'soon'" },
    { "{\"server\":{\"type\":\"inet\",\"host\":\"h\"},\"reconnect-delay\":99999}", NULL, NULL,
      "0..3600" },
    { "{\"server\":{\"type\":\"inet\",\"host\":[1]}}", NULL, NULL,
      "'server.host' must be a string" },
    { "{\"server\":{\"type\":\"inet\",\"host\":\"h\"},\"tls-creds\":\"\"}", NULL, NULL,
      "tls-creds is empty" },
    { "{\"server\":{\"type\":\"inet\",\"host\":\"h\"},\"allocation-depth\":\"maybe\"}", NULL,
      NULL, "allocation-depth" },
};

static void test_options(void)
{
    for (gsize i = 0; i < G_N_ELEMENTS(option_cases); i++) {
        const OptCase *oc = &option_cases[i];
        g_test_message("options %s", oc->json);
        JsonObject *o = json_obj(oc->json);
        GError *err = NULL;
        VmmNbdTarget *t = vmm_nbd_target_from_options(o, oc->fallback, &err);
        if (oc->uri) {
            g_assert_no_error(err);
            g_autofree char *uri = vmm_nbd_target_to_uri(t);
            g_assert_cmpstr(uri, ==, oc->uri);
        } else {
            g_assert_null(t);
            g_assert_nonnull(err);
            if (!strstr(err->message, oc->message_part)) {
                g_error("%s: message '%s' lacks '%s'", oc->json, err->message, oc->message_part);
            }
            g_error_free(err);
        }
        vmm_nbd_target_free(t);
        json_object_unref(o);
    }
}

static void test_option_values(void)
{
    JsonObject *o = json_obj("{\"server\":{\"type\":\"inet\",\"host\":\"h\"},"
                             "\"reconnect-delay\":7,\"tls-creds\":\"tls0\","
                             "\"tls-hostname\":\"srv\",\"allocation-depth\":true}");
    GError *err = NULL;
    g_autoptr(VmmNbdTarget) t = vmm_nbd_target_from_options(o, NULL, &err);
    g_assert_no_error(err);
    g_assert_cmpuint(t->reconnect_delay, ==, 7);
    g_assert_cmpstr(t->tls_creds, ==, "tls0");
    g_assert_cmpstr(t->tls_hostname, ==, "srv");
    g_assert_true(t->tls);
    g_assert_true(t->allocation_depth);
    json_object_unref(o);

    /* Options given as strings (from -o key=value) work as well. */
    o = json_obj("{\"filename\":\"nbd://h/e\",\"reconnect-delay\":\"3\","
                 "\"allocation-depth\":\"on\"}");
    g_autoptr(VmmNbdTarget) u = vmm_nbd_target_from_options(o, NULL, &err);
    g_assert_no_error(err);
    g_assert_cmpuint(u->reconnect_delay, ==, 3);
    g_assert_true(u->allocation_depth);
    json_object_unref(o);
}

static void test_tls_registry(void)
{
    VmmNbdTlsKind kind;
    char *dir = NULL, *user = NULL;
    g_assert_false(vmm_nbd_tls_creds_lookup("nope", &kind, &dir, &user));
    vmm_nbd_tls_creds_register("tls0", VMM_NBD_TLS_PSK, "/etc/psk", "alice");
    g_assert_true(vmm_nbd_tls_creds_lookup("tls0", &kind, &dir, &user));
    g_assert_cmpint(kind, ==, VMM_NBD_TLS_PSK);
    g_assert_cmpstr(dir, ==, "/etc/psk");
    g_assert_cmpstr(user, ==, "alice");
    g_free(dir);
    g_free(user);
    vmm_nbd_tls_creds_register("tls0", VMM_NBD_TLS_X509, "/etc/x509", NULL);
    g_assert_true(vmm_nbd_tls_creds_lookup("tls0", &kind, &dir, &user));
    g_assert_cmpint(kind, ==, VMM_NBD_TLS_X509);
    g_assert_null(user);
    g_free(dir);
    vmm_nbd_tls_creds_unregister("tls0");
    g_assert_false(vmm_nbd_tls_creds_lookup("tls0", &kind, &dir, &user));
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/nbd-uri/good-filenames", test_good_filenames);
    g_test_add_func("/nbd-uri/tls-query", test_tls_query);
    g_test_add_func("/nbd-uri/bad-filenames", test_bad_filenames);
    g_test_add_func("/nbd-uri/long-export-name", test_long_export_name);
    g_test_add_func("/nbd-uri/is-filename", test_is_filename);
    g_test_add_func("/nbd-uri/options", test_options);
    g_test_add_func("/nbd-uri/option-values", test_option_values);
    g_test_add_func("/nbd-uri/tls-registry", test_tls_registry);
    return g_test_run();
}
