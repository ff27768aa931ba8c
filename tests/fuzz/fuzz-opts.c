/* libFuzzer target for the QEMU option syntax (common/opts.c): parses the
 * input with a typed spec and with an untyped one, and checks that what
 * parses prints back to text that parses to the same object. */
#include "common/opts.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const VmmOptKey typed_keys[] = {
    { "driver", VMM_OPT_STRING, NULL, NULL },
    { "file", VMM_OPT_STRING, NULL, NULL },
    { "file.*", VMM_OPT_STRING, NULL, NULL },
    { "readonly", VMM_OPT_BOOL, NULL, NULL },
    { "cache.direct", VMM_OPT_BOOL, NULL, NULL },
    { "cluster_size", VMM_OPT_SIZE, NULL, NULL },
    { "bus", VMM_OPT_NUMBER, NULL, NULL },
    { NULL, 0, NULL, NULL },
};
static const VmmOptSpec typed_spec = { "fuzz", "driver", typed_keys };
static const VmmOptSpec untyped_spec = { "fuzz", NULL, NULL };

static gboolean objects_equal(JsonObject *a, JsonObject *b)
{
    g_autoptr(JsonNode) na = json_node_new(JSON_NODE_OBJECT);
    g_autoptr(JsonNode) nb = json_node_new(JSON_NODE_OBJECT);
    json_node_set_object(na, a);
    json_node_set_object(nb, b);
    return json_node_equal(na, nb);
}

/* The text form keeps structure but not JSON types, so json: input is held
 * to a weaker rule: printing is stable after one round. */
static void check_round_trip(const VmmOptSpec *spec, const char *input, JsonObject *obj)
{
    g_autofree char *text = vmm_opts_to_string(obj);
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) again = vmm_opts_parse(spec, text, &err);
    gboolean from_json = g_str_has_prefix(input, "json:");

    if (!again) {
        if (from_json)
            return; /* e.g. a JSON number at a typed key prints, then fails as text */
        fprintf(stderr, "'%s' printed as '%s', which fails: %s\n", input, text, err->message);
        abort();
    }
    if (!from_json && !objects_equal(obj, again)) {
        fprintf(stderr, "'%s' printed as '%s', which parses differently\n", input, text);
        abort();
    }
    g_autofree char *text2 = vmm_opts_to_string(again);
    if (!from_json && strcmp(text, text2) != 0) {
        fprintf(stderr, "'%s' prints unstably: '%s' then '%s'\n", input, text, text2);
        abort();
    }
}

static void fuzz_spec(const VmmOptSpec *spec, const char *input)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) obj = vmm_opts_parse(spec, input, &err);

    if (!obj) {
        if (!err || !err->message[0])
            abort();
        return;
    }
    check_round_trip(spec, input, obj);
    (void)vmm_opts_get_string(obj, "file.server.0.host", NULL);
    (void)vmm_opts_get_uint(obj, "cluster_size", 0);
    (void)vmm_opts_get_bool(obj, "cache.direct", FALSE);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_autofree char *input = g_strndup((const char *)data, size);

    fuzz_spec(&typed_spec, input);
    fuzz_spec(&untyped_spec, input);
    (void)vmm_opts_wants_help(input);
    return 0;
}
