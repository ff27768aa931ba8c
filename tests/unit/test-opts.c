/* QEMU option syntax: common/opts.c. */
#include "common/opts.h"
#include "common/error.h"
#include <string.h>

static const VmmOptKey drive_keys[] = {
    { "file", VMM_OPT_STRING, "disk image", NULL },
    { "file.*", VMM_OPT_STRING, "protocol options", NULL },
    { "format", VMM_OPT_STRING, "disk format", "probed" },
    { "readonly", VMM_OPT_BOOL, "open read-only", "off" },
    { "cache.direct", VMM_OPT_BOOL, "use O_DIRECT", "off" },
    { "cluster_size", VMM_OPT_SIZE, "qcow2 cluster size", "64k" },
    { "bus", VMM_OPT_NUMBER, "bus number", NULL },
    { "id", VMM_OPT_STRING, NULL, NULL },
    { NULL, 0, NULL, NULL },
};
static const VmmOptSpec drive_spec = { "drive", NULL, drive_keys };

static const VmmOptKey netdev_keys[] = {
    { "type", VMM_OPT_STRING, "backend", NULL },
    { "id", VMM_OPT_STRING, "netdev id", NULL },
    { "vnet_hdr_support", VMM_OPT_BOOL, NULL, NULL },
    { NULL, 0, NULL, NULL },
};
static const VmmOptSpec netdev_spec = { "netdev", "type", netdev_keys };

/* Any key, no implied key: the round-trip spec. */
static const VmmOptSpec any_spec = { "any", NULL, NULL };
static const VmmOptSpec any_implied_spec = { "blockdev", "driver", NULL };

/* Parses and returns the object as compact JSON text, for exact comparison. */
static char *parse_to_json(const VmmOptSpec *spec, const char *value)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) obj = vmm_opts_parse(spec, value, &err);
    g_assert_no_error(err);
    g_assert_nonnull(obj);
    g_autoptr(JsonNode) node = json_node_new(JSON_NODE_OBJECT);
    json_node_set_object(node, obj);
    return json_to_string(node, FALSE);
}

static void assert_parses_to(const VmmOptSpec *spec, const char *value, const char *json)
{
    g_autofree char *got = parse_to_json(spec, value);
    g_assert_cmpstr(got, ==, json);
}

/* Parsing fails and the message contains every one of the NULL-ended words. */
static void assert_parse_error(const VmmOptSpec *spec, const char *value, ...)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) obj = vmm_opts_parse(spec, value, &err);
    va_list ap;

    g_assert_null(obj);
    g_assert_nonnull(err);
    g_assert_true(err->domain == VMM_ERROR);
    va_start(ap, value);
    for (const char *w = va_arg(ap, const char *); w; w = va_arg(ap, const char *)) {
        if (!strstr(err->message, w))
            g_error("error for '%s' is \"%s\", which lacks \"%s\"", value, err->message, w);
    }
    va_end(ap);
}

static void test_implied(void)
{
    assert_parses_to(&netdev_spec, "user,id=n0", "{\"type\":\"user\",\"id\":\"n0\"}");
    assert_parses_to(&netdev_spec, "type=tap,id=n1", "{\"type\":\"tap\",\"id\":\"n1\"}");
    /* A leading empty element is an empty implied value, as in QemuOpts. */
    assert_parses_to(&netdev_spec, ",id=n2", "{\"type\":\"\",\"id\":\"n2\"}");
    assert_parse_error(&netdev_spec, "user,type=tap", "-netdev", "duplicate key 'type'", NULL);
    /* No implied key: a leading bare word that is not a flag lacks a value. */
    assert_parse_error(&drive_spec, "disk.img,format=raw", "-drive", "'disk.img'", "missing a value", NULL);
    assert_parse_error(&any_spec, "x", "-any", "'x'", "missing a value", NULL);
}

static void test_escapes(void)
{
    assert_parses_to(&drive_spec, "file=a,,b.img,format=raw", "{\"file\":\"a,b.img\",\"format\":\"raw\"}");
    assert_parses_to(&drive_spec, "format=raw,file=trail,,", "{\"format\":\"raw\",\"file\":\"trail,\"}");
    assert_parses_to(&drive_spec, "file=,,,,", "{\"file\":\",,\"}");
    assert_parses_to(&netdev_spec, "us,,er,id=x", "{\"type\":\"us,er\",\"id\":\"x\"}");
    assert_parses_to(&drive_spec, "file=", "{\"file\":\"\"}");
    assert_parses_to(&drive_spec, "file=a=b", "{\"file\":\"a=b\"}");
    assert_parses_to(&drive_spec, "file=x,", "{\"file\":\"x\"}");
    assert_parses_to(&drive_spec, "", "{}");
}

static void test_flags(void)
{
    assert_parses_to(&drive_spec, "file=x,readonly", "{\"file\":\"x\",\"readonly\":true}");
    /* QemuOpts takes a leading flag too when there is no implied key. */
    assert_parses_to(&drive_spec, "readonly,file=x", "{\"readonly\":true,\"file\":\"x\"}");
    assert_parses_to(&netdev_spec, "tap,vnet_hdr_support", "{\"type\":\"tap\",\"vnet_hdr_support\":true}");
    assert_parses_to(&any_spec, "a=1,flag", "{\"a\":\"1\",\"flag\":\"on\"}");
    assert_parse_error(&drive_spec, "file=x,format", "-drive", "'format'", "missing a value", NULL);
    assert_parse_error(&drive_spec, "file=x,readonly,readonly=off", "duplicate key 'readonly'", NULL);
    assert_parse_error(&drive_spec, "file=x,=y", "-drive", "empty key", NULL);
}

static void test_bool_spellings(void)
{
    static const struct { const char *s; gboolean v; } cases[] = {
        { "on", TRUE }, { "yes", TRUE }, { "true", TRUE }, { "y", TRUE },
        { "off", FALSE }, { "no", FALSE }, { "false", FALSE }, { "n", FALSE },
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *value = g_strdup_printf("readonly=%s", cases[i].s);
        g_autoptr(GError) err = NULL;
        g_autoptr(JsonObject) obj = vmm_opts_parse(&drive_spec, value, &err);
        g_assert_no_error(err);
        JsonNode *n = json_object_get_member(obj, "readonly");
        g_assert_true(json_node_get_value_type(n) == G_TYPE_BOOLEAN);
        g_assert_cmpint(json_node_get_boolean(n), ==, cases[i].v);
        g_assert_cmpint(vmm_opts_get_bool(obj, "readonly", !cases[i].v), ==, cases[i].v);
    }
    assert_parse_error(&drive_spec, "readonly=maybe", "-drive", "'readonly'", "'maybe'", "boolean", NULL);
    assert_parse_error(&drive_spec, "readonly=ON", "'ON'", NULL);
    assert_parse_error(&drive_spec, "readonly=", "'readonly'", NULL);

    g_autoptr(GError) err = NULL;
    gboolean b = TRUE;
    g_assert_false(vmm_parse_bool(NULL, NULL, "1", &b, &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_INVALID);
    g_assert_cmpstr(err->message, ==, "'1' is not a boolean (use on or off)");
}

static void expect_size(const char *s, guint64 want)
{
    g_autoptr(GError) err = NULL;
    guint64 v = 0;
    if (!vmm_parse_size("drive", "size", s, &v, &err))
        g_error("'%s': %s", s, err->message);
    if (v != want)
        g_error("'%s' gave %" G_GUINT64_FORMAT ", not %" G_GUINT64_FORMAT, s, v, want);
}

static void expect_bad_size(const char *s, const char *word)
{
    g_autoptr(GError) err = NULL;
    guint64 v = 0;
    if (vmm_parse_size("drive", "size", s, &v, &err))
        g_error("'%s' was accepted as %" G_GUINT64_FORMAT, s, v);
    g_assert_error(err, VMM_ERROR, VMM_ERROR_INVALID);
    g_autofree char *quoted = g_strdup_printf("'%s'", s);
    g_assert_nonnull(strstr(err->message, "-drive: key 'size': "));
    g_assert_nonnull(strstr(err->message, quoted));
    if (word && !strstr(err->message, word))
        g_error("error for '%s' is \"%s\", which lacks \"%s\"", s, err->message, word);
}

static void test_sizes(void)
{
    expect_size("1M", 1048576);
    expect_size("2M", 2097152);
    expect_size("4K", 4096);
    expect_size("64k", 65536);
    expect_size("128M", 134217728);
    expect_size("1.5G", 1610612736);
    expect_size("0.5k", 512);
    expect_size("1.K", 1024);
    expect_size("1T", G_GUINT64_CONSTANT(1) << 40);
    expect_size("1P", G_GUINT64_CONSTANT(1) << 50);
    expect_size("15E", G_GUINT64_CONSTANT(15) << 60);
    expect_size("4096", 4096);
    expect_size("512B", 512);
    expect_size("0", 0);
    expect_size("0x1000", 4096);
    expect_size("18446744073709551615", G_MAXUINT64);
    expect_bad_size("20E", "too large");
    expect_bad_size("16E", "too large");
    expect_bad_size("18446744073709551616", "too large");
    expect_bad_size("-1", "negative");
    expect_bad_size("12Q", "not a size");
    expect_bad_size("", "not a size");
    expect_bad_size("M", "not a size");
    expect_bad_size("1.5", "not a size");
    expect_bad_size("1e3", "not a size");
    expect_bad_size("1.5e3K", "not a size");
    expect_bad_size("1MB", "not a size");
    expect_bad_size("256 MB", "not a size");
    expect_bad_size("0x10K", "not a size");
    expect_bad_size(" 1M", "not a size");

    assert_parses_to(&drive_spec, "cluster_size=2M", "{\"cluster_size\":2097152}");
    g_autoptr(JsonObject) obj = vmm_opts_parse(&drive_spec, "cluster_size=64k", NULL);
    g_assert_cmpuint(vmm_opts_get_uint(obj, "cluster_size", 0), ==, 65536);
    assert_parse_error(&drive_spec, "cluster_size=12Q", "-drive", "'cluster_size'", "'12Q'", NULL);
    /* Fits the scalar parser, but not a (signed) JSON integer. */
    assert_parse_error(&drive_spec, "cluster_size=8E", "-drive", "'cluster_size'", "too large", NULL);
}

static void test_numbers(void)
{
    static const struct { const char *s; guint64 v; } good[] = {
        { "0", 0 }, { "10", 10 }, { "644", 644 }, { "0644", 0644 }, { "0x1f", 31 },
        { "0X1F", 31 }, { "18446744073709551615", G_MAXUINT64 },
    };
    for (gsize i = 0; i < G_N_ELEMENTS(good); i++) {
        g_autoptr(GError) err = NULL;
        guint64 v = 1;
        g_assert_true(vmm_parse_number("fsdev", "fmode", good[i].s, &v, &err));
        g_assert_no_error(err);
        g_assert_cmpuint(v, ==, good[i].v);
    }
    static const char *const bad[] = { "", "08", "0x", "1k", "-1", "abc", "1 ", "18446744073709551616" };
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autoptr(GError) err = NULL;
        guint64 v;
        g_assert_false(vmm_parse_number("fsdev", "fmode", bad[i], &v, &err));
        g_assert_error(err, VMM_ERROR, VMM_ERROR_INVALID);
        g_autofree char *quoted = g_strdup_printf("'%s'", bad[i]);
        g_assert_nonnull(strstr(err->message, "-fsdev: key 'fmode': "));
        g_assert_nonnull(strstr(err->message, quoted));
    }
    assert_parses_to(&drive_spec, "bus=0x10", "{\"bus\":16}");
    assert_parse_error(&drive_spec, "bus=two", "-drive", "'bus'", "'two'", NULL);
}

static void test_nesting(void)
{
    assert_parses_to(&drive_spec,
                     "file.driver=nbd,file.server.0.host=x,file.server.0.port=10809",
                     "{\"file\":{\"driver\":\"nbd\",\"server\":[{\"host\":\"x\",\"port\":\"10809\"}]}}");
    assert_parses_to(&any_spec, "s.1.host=b,s.0.host=a,s.1.port=2",
                     "{\"s\":[{\"host\":\"a\"},{\"host\":\"b\",\"port\":\"2\"}]}");
    assert_parses_to(&any_spec, "m.0.0=a,m.0.1=b,m.1.0=c", "{\"m\":[[\"a\",\"b\"],[\"c\"]]}");
    /* The top level stays an object; non-canonical indices are names. */
    assert_parses_to(&any_spec, "0=a,1=b", "{\"0\":\"a\",\"1\":\"b\"}");
    assert_parses_to(&any_spec, "a.01=x", "{\"a\":{\"01\":\"x\"}}");
    assert_parses_to(&drive_spec, "cache.direct=on,file=x", "{\"cache\":{\"direct\":true},\"file\":\"x\"}");

    g_autoptr(JsonObject) obj = vmm_opts_parse(&drive_spec,
        "file.driver=gluster,file.server.0.host=h0,file.server.1.host=h1,cache.direct=on", NULL);
    g_assert_nonnull(obj);
    g_assert_cmpstr(vmm_opts_get_string(obj, "file.server.1.host", NULL), ==, "h1");
    g_assert_cmpstr(vmm_opts_get_string(obj, "file.server.2.host", "none"), ==, "none");
    g_assert_cmpstr(vmm_opts_get_string(obj, "file.driver.x", "none"), ==, "none");
    g_assert_true(vmm_opts_get_bool(obj, "cache.direct", FALSE));
    g_assert_false(vmm_opts_get_bool(obj, "readonly", FALSE));
    g_assert_true(vmm_opts_has(obj, "file.server.0"));
    g_assert_false(vmm_opts_has(obj, "format"));
    g_assert_cmpuint(vmm_opts_get_uint(obj, "bus", 7), ==, 7);
}

static void test_nesting_errors(void)
{
    assert_parse_error(&any_spec, "a.0=x,a.2=y", "-any", "'a.2'", "list 'a'", "element 1", NULL);
    assert_parse_error(&any_spec, "a.1=x", "'a.1'", "element 0", NULL);
    assert_parse_error(&any_spec, "a.0=x,a.b=y", "-any", "'a'", "mixes", NULL);
    assert_parse_error(&any_spec, "a=1,a.b=2", "-any", "'a'", "both", NULL);
    assert_parse_error(&any_spec, "a.b=2,a=1", "-any", "'a'", "both", NULL);
    assert_parse_error(&any_spec, "a.b=1,a.b.c=2", "'a.b'", "both", NULL);
    assert_parse_error(&any_spec, "a..b=1", "-any", "'a..b'", NULL);
    assert_parse_error(&any_spec, "a.=1", "'a.'", NULL);
    assert_parse_error(&drive_spec, "file=x,file.driver=nbd", "-drive", "'file'", "both", NULL);
}

static void test_duplicate_and_unknown(void)
{
    assert_parse_error(&drive_spec, "file=a,format=raw,file=b", "-drive", "duplicate key 'file'", NULL);
    assert_parse_error(&any_spec, "a.b=1,a.b=2", "-any", "duplicate key 'a.b'", NULL);

    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) obj = vmm_opts_parse(&drive_spec, "file=x,fromat=raw", &err);
    g_assert_null(obj);
    g_assert_error(err, VMM_ERROR, VMM_ERROR_NOT_FOUND);
    g_assert_cmpstr(err->message, ==, "-drive: unknown key 'fromat' (\"-drive help\" lists the valid keys)");
    assert_parse_error(&drive_spec, "cache.x=1", "-drive", "unknown key 'cache.x'", NULL);
    assert_parse_error(&drive_spec, "cache=1", "unknown key 'cache'", NULL);
    /* "file.*" covers everything below file, but not "filex". */
    assert_parses_to(&drive_spec, "file.a.b=1", "{\"file\":{\"a\":{\"b\":\"1\"}}}");
    assert_parse_error(&drive_spec, "filex.a=1", "unknown key 'filex.a'", NULL);
}

static void test_json_equivalence(void)
{
    static const char *const pairs[][2] = {
        { "file.driver=nbd,file.server.0.host=x,file.server.0.port=10809,readonly=on",
          "json:{\"file\":{\"driver\":\"nbd\",\"server\":[{\"host\":\"x\",\"port\":\"10809\"}]},"
          "\"readonly\":\"on\"}" },
        { "readonly=off,cluster_size=2M,bus=8,cache.direct=yes",
          "json:{\"readonly\":false,\"cluster_size\":\"2M\",\"bus\":8,\"cache\":{\"direct\":true}}" },
        /* Dotted names inside JSON are split, as qdict_flatten does. */
        { "file.driver=nbd,format=qcow2", "json:{\"file.driver\":\"nbd\",\"format\":\"qcow2\"}" },
        /* A typed string key takes a JSON number as its text. */
        { "format=5", "json:{\"format\":5}" },
    };
    for (gsize i = 0; i < G_N_ELEMENTS(pairs); i++) {
        g_autofree char *dotted = parse_to_json(&drive_spec, pairs[i][0]);
        g_autofree char *json = parse_to_json(&drive_spec, pairs[i][1]);
        g_assert_cmpstr(dotted, ==, json);
    }
    /* Untyped keys keep JSON numbers (gluster's "port":24007 and "port":"24007"). */
    assert_parses_to(&drive_spec, "json:{\"file\":{\"server\":[{\"port\":24007},{\"port\":\"24008\"}]}}",
                     "{\"file\":{\"server\":[{\"port\":24007},{\"port\":\"24008\"}]}}");
    assert_parse_error(&drive_spec, "json:[1]", "-drive", "json:", "object", NULL);
    assert_parse_error(&drive_spec, "json:{\"file\":", "-drive", "json:", NULL);
    assert_parse_error(&drive_spec, "json:{\"readonly\":\"maybe\"}", "'readonly'", "'maybe'", NULL);
    assert_parse_error(&drive_spec, "json:{\"readonly\":1}", "'readonly'", "boolean", NULL);
    assert_parse_error(&drive_spec, "json:{\"bus\":-1}", "'bus'", "negative", NULL);
    assert_parse_error(&drive_spec, "json:{\"bogus\":1}", "unknown key 'bogus'", NULL);
    assert_parse_error(&drive_spec, "json:{\"file\":{\"driver\":null}}", "'file.driver'", "null", NULL);
    assert_parse_error(&drive_spec, "json:{\"file.driver\":\"a\",\"file\":{\"driver\":\"b\"}}",
                       "duplicate key 'file.driver'", NULL);
    g_autoptr(GString) deep = g_string_new("json:");
    for (int i = 0; i < 100; i++)
        g_string_append(deep, "{\"a\":");
    g_string_append(deep, "1");
    for (int i = 0; i < 100; i++)
        g_string_append_c(deep, '}');
    assert_parse_error(&any_spec, deep->str, "-any", "deeper", NULL);
}

static void assert_round_trip(const VmmOptSpec *spec, const char *value, const char *want_text)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) first = vmm_opts_parse(spec, value, &err);
    g_assert_no_error(err);
    g_autofree char *text = vmm_opts_to_string(first);
    if (want_text)
        g_assert_cmpstr(text, ==, want_text);
    g_autoptr(JsonObject) second = vmm_opts_parse(spec, text, &err);
    g_assert_no_error(err);
    g_autoptr(JsonNode) a = json_node_new(JSON_NODE_OBJECT);
    g_autoptr(JsonNode) b = json_node_new(JSON_NODE_OBJECT);
    json_node_set_object(a, first);
    json_node_set_object(b, second);
    if (!json_node_equal(a, b))
        g_error("'%s' -> '%s' does not parse back to the same object", value, text);
}

static void test_round_trip(void)
{
    assert_round_trip(&any_spec, "file.driver=nbd,file.server.0.host=x,file.server.0.port=10809",
                      "file.driver=nbd,file.server.0.host=x,file.server.0.port=10809");
    assert_round_trip(&any_spec, "a=x,,y,b=,c=end,,", "a=x,,y,b=,c=end,,");
    assert_round_trip(&any_spec, "s.1=b,s.0=a", "s.0=a,s.1=b");
    assert_round_trip(&any_implied_spec, "qcow2,file.filename=a,,b", "driver=qcow2,file.filename=a,,b");
    assert_round_trip(&drive_spec, "readonly,cluster_size=2M,bus=010,file=x",
                      "readonly=on,cluster_size=2097152,bus=8,file=x");
    assert_round_trip(&any_spec, "", "");
    /* json: keeps JSON types, which the text form prints plainly. */
    g_autoptr(JsonObject) obj = vmm_opts_parse(&any_spec, "json:{\"b\":true,\"n\":-3,\"s\":\"a,b\"}", NULL);
    g_autofree char *text = vmm_opts_to_string(obj);
    g_assert_cmpstr(text, ==, "b=on,n=-3,s=a,,b");
}

static void test_wants_help(void)
{
    g_assert_true(vmm_opts_wants_help("help"));
    g_assert_true(vmm_opts_wants_help("?"));
    g_assert_true(vmm_opts_wants_help("virtio-blk-pci,help"));
    g_assert_true(vmm_opts_wants_help("qcow2,?"));
    g_assert_true(vmm_opts_wants_help("file=x,help"));
    g_assert_false(vmm_opts_wants_help("file=x,,help"));
    g_assert_false(vmm_opts_wants_help("help=on"));
    g_assert_false(vmm_opts_wants_help("helpme"));
    g_assert_false(vmm_opts_wants_help("help,file=x"));
    g_assert_false(vmm_opts_wants_help(""));
    g_assert_false(vmm_opts_wants_help(NULL));
}

static void test_help_text(void)
{
    static const VmmOptKey keys[] = {
        { "enable", VMM_OPT_BOOL, "turn the sandbox on", "off" },
        { "size", VMM_OPT_SIZE, "how big", NULL },
        { "count", VMM_OPT_NUMBER, NULL, "1" },
        { "name", VMM_OPT_STRING, "a name", NULL },
        { NULL, 0, NULL, NULL },
    };
    static const VmmOptSpec spec = { "sandbox", "enable", keys };
    g_autofree char *help = vmm_opts_help(&spec);
    g_assert_cmpstr(help, ==,
                    "sandbox options:\n"
                    "  enable=<bool>          - turn the sandbox on (default: off)\n"
                    "  size=<size>            - how big\n"
                    "  count=<num> (default: 1)\n"
                    "  name=<str>             - a name\n");
    g_autofree char *any = vmm_opts_help(&any_spec);
    g_assert_true(g_str_has_prefix(any, "any options:\n"));
}

static void test_from_pairs(void)
{
    const char *keys[] = { "file", "readonly", "cache.direct" };
    const char *values[] = { "a,b", "yes", "off" };
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) obj = vmm_opts_from_pairs(&drive_spec, keys, values, 3, &err);
    g_assert_no_error(err);
    g_assert_cmpstr(vmm_opts_get_string(obj, "file", NULL), ==, "a,b");
    g_assert_true(vmm_opts_get_bool(obj, "readonly", FALSE));
    g_assert_false(vmm_opts_get_bool(obj, "cache.direct", TRUE));

    const char *bad_keys[] = { "file", "file" };
    const char *bad_values[] = { "a", "b" };
    g_autoptr(JsonObject) dup = vmm_opts_from_pairs(&drive_spec, bad_keys, bad_values, 2, &err);
    g_assert_null(dup);
    g_assert_error(err, VMM_ERROR, VMM_ERROR_INVALID);
    g_assert_nonnull(strstr(err->message, "duplicate key 'file'"));
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/opts/implied", test_implied);
    g_test_add_func("/opts/escapes", test_escapes);
    g_test_add_func("/opts/flags", test_flags);
    g_test_add_func("/opts/bool", test_bool_spellings);
    g_test_add_func("/opts/size", test_sizes);
    g_test_add_func("/opts/number", test_numbers);
    g_test_add_func("/opts/nesting", test_nesting);
    g_test_add_func("/opts/nesting-errors", test_nesting_errors);
    g_test_add_func("/opts/duplicate-unknown", test_duplicate_and_unknown);
    g_test_add_func("/opts/json", test_json_equivalence);
    g_test_add_func("/opts/round-trip", test_round_trip);
    g_test_add_func("/opts/wants-help", test_wants_help);
    g_test_add_func("/opts/help", test_help_text);
    g_test_add_func("/opts/from-pairs", test_from_pairs);
    return g_test_run();
}
