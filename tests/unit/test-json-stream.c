#include "common/json-stream.h"
#include <string.h>

static char *next(VmmJsonStream *s)
{
    gboolean too_big;
    char *t = vmm_json_stream_next(s, &too_big);
    g_assert_false(too_big);
    return t;
}

static void test_split(void)
{
    VmmJsonStream s;
    vmm_json_stream_init(&s, 1024);
    vmm_json_stream_feed(&s, "{\"a\":1}{\"b\":\"}{\\\"\"}\r\n  [1,[2]] ", 31);
    g_autofree char *a = next(&s);
    g_autofree char *b = next(&s);
    g_autofree char *c = next(&s);
    g_assert_cmpstr(a, ==, "{\"a\":1}");
    g_assert_cmpstr(b, ==, "{\"b\":\"}{\\\"\"}");
    g_assert_cmpstr(c, ==, "[1,[2]]");
    g_assert_null(next(&s));
    vmm_json_stream_clear(&s);
}

static void test_partial(void)
{
    VmmJsonStream s;
    vmm_json_stream_init(&s, 1024);
    const char *text = "{\"execute\":\"query-status\"}";
    for (const char *p = text; *p; p++) {
        g_assert_null(next(&s));
        vmm_json_stream_feed(&s, p, 1);
    }
    g_autofree char *t = next(&s);
    g_assert_cmpstr(t, ==, text);
    vmm_json_stream_clear(&s);
}

static void test_scalar_and_stray(void)
{
    VmmJsonStream s;
    vmm_json_stream_init(&s, 1024);
    vmm_json_stream_feed(&s, "123 } {}", 8);
    g_autofree char *a = next(&s);
    g_autofree char *b = next(&s);
    g_autofree char *c = next(&s);
    g_assert_cmpstr(a, ==, "123");
    g_assert_cmpstr(b, ==, "}");
    g_assert_cmpstr(c, ==, "{}");
    vmm_json_stream_clear(&s);
}

static void test_unterminated_string(void)
{
    VmmJsonStream s;
    vmm_json_stream_init(&s, 1024);
    const char *in = "{\"bad json\n{\"execute\":\"x\"}";
    vmm_json_stream_feed(&s, in, strlen(in));
    g_autofree char *a = next(&s);
    g_autofree char *b = next(&s);
    g_assert_cmpstr(a, ==, "{\"bad json");
    g_assert_cmpstr(b, ==, "{\"execute\":\"x\"}");
    vmm_json_stream_clear(&s);
}

static void test_too_big(void)
{
    VmmJsonStream s;
    vmm_json_stream_init(&s, 16);
    vmm_json_stream_feed(&s, "{\"aaaaaaaaaaaaaaaaaaaaaaaa\":1}", 29);
    gboolean too_big = FALSE;
    char *t = vmm_json_stream_next(&s, &too_big);
    g_assert_null(t);
    g_assert_true(too_big);
    vmm_json_stream_clear(&s);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/json-stream/split", test_split);
    g_test_add_func("/json-stream/partial", test_partial);
    g_test_add_func("/json-stream/scalar-and-stray", test_scalar_and_stray);
    g_test_add_func("/json-stream/too-big", test_too_big);
    g_test_add_func("/json-stream/unterminated-string", test_unterminated_string);
    return g_test_run();
}
