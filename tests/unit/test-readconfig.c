/* QEMU's -readconfig format: common/readconfig.c. */
#include "common/readconfig.h"
#include "common/opts.h"
#include "common/error.h"
#include <errno.h>
#include <string.h>
#include <unistd.h>

/* The sample from QEMU's iSCSI documentation, as the docs indent it. */
static const char iscsi_conf[] =
    "# iSCSI defaults\n"
    "[iscsi]\n"
    "  user = \"CHAP username\"\n"
    "  password = \"CHAP password\"\n"
    "  initiator-name = \"iqn.qemu.test:my-initiator\"\n"
    "  # header digest is one of CRC32C|CRC32C-NONE|NONE-CRC32C|NONE\n"
    "  header-digest = \"CRC32C\"\n";

static GPtrArray *parse_ok(const char *text)
{
    g_autoptr(GError) err = NULL;
    GPtrArray *sections = vmm_readconfig_parse(text, strlen(text), "test.conf", &err);
    g_assert_no_error(err);
    g_assert_nonnull(sections);
    return sections;
}

static void assert_pair(VmmConfigSection *s, guint i, const char *key, const char *value)
{
    g_assert_cmpuint(i, <, s->keys->len);
    g_assert_cmpuint(s->keys->len, ==, s->values->len);
    g_assert_cmpstr(s->keys->pdata[i], ==, key);
    g_assert_cmpstr(s->values->pdata[i], ==, value);
}

static void test_iscsi_sample(void)
{
    g_autoptr(GPtrArray) sections = parse_ok(iscsi_conf);
    g_assert_cmpuint(sections->len, ==, 1);
    VmmConfigSection *s = sections->pdata[0];
    g_assert_cmpstr(s->group, ==, "iscsi");
    g_assert_null(s->id);
    g_assert_cmpint(s->line, ==, 2);
    g_assert_cmpuint(s->keys->len, ==, 4);
    assert_pair(s, 0, "user", "CHAP username");
    assert_pair(s, 1, "password", "CHAP password");
    assert_pair(s, 2, "initiator-name", "iqn.qemu.test:my-initiator");
    assert_pair(s, 3, "header-digest", "CRC32C");
}

static void test_drive_with_id(void)
{
    static const char text[] =
        "[drive \"hd0\"]\r\n"
        "  file = \"disk,1.img\"\r\n"
        "  format = \"qcow2\"\r\n"
        "\n"
        "   \t\n"
        "[machine]\n"
        "type=\"microvm\"\n"
        "  accel = kvm  \n"
        "  empty = \"\"\n"
        "[device \"net0\"]\n";
    g_autoptr(GPtrArray) sections = parse_ok(text);
    g_assert_cmpuint(sections->len, ==, 3);

    VmmConfigSection *drive = sections->pdata[0];
    g_assert_cmpstr(drive->group, ==, "drive");
    g_assert_cmpstr(drive->id, ==, "hd0");
    g_assert_cmpint(drive->line, ==, 1);
    assert_pair(drive, 0, "file", "disk,1.img");
    assert_pair(drive, 1, "format", "qcow2");

    VmmConfigSection *machine = sections->pdata[1];
    g_assert_cmpstr(machine->group, ==, "machine");
    g_assert_cmpint(machine->line, ==, 6);
    assert_pair(machine, 0, "type", "microvm");
    assert_pair(machine, 1, "accel", "kvm");
    assert_pair(machine, 2, "empty", "");

    VmmConfigSection *device = sections->pdata[2];
    g_assert_cmpstr(device->id, ==, "net0");
    g_assert_cmpuint(device->keys->len, ==, 0);

    /* A section feeds the option parser; a comma in a value stays a comma. */
    static const VmmOptKey keys[] = {
        { "file", VMM_OPT_STRING, NULL, NULL },
        { "format", VMM_OPT_STRING, NULL, NULL },
        { NULL, 0, NULL, NULL },
    };
    static const VmmOptSpec spec = { "drive", NULL, keys };
    g_autoptr(GError) err = NULL;
    g_autoptr(JsonObject) obj = vmm_opts_from_pairs(&spec, (const char *const *)drive->keys->pdata,
                                                    (const char *const *)drive->values->pdata,
                                                    drive->keys->len, &err);
    g_assert_no_error(err);
    g_assert_cmpstr(vmm_opts_get_string(obj, "file", NULL), ==, "disk,1.img");
}

static void test_empty_input(void)
{
    g_autoptr(GPtrArray) none = parse_ok("");
    g_assert_cmpuint(none->len, ==, 0);
    g_autoptr(GPtrArray) comments = parse_ok("# only\n\n#comments");
    g_assert_cmpuint(comments->len, ==, 0);
}

/* Parsing TEXT fails with exactly "bad.conf:LINE: " followed by text
 * containing WORD. */
static void assert_error_at(const char *text, int line, const char *word)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) sections = vmm_readconfig_parse(text, strlen(text), "bad.conf", &err);
    g_assert_null(sections);
    g_assert_error(err, VMM_ERROR, VMM_ERROR_INVALID);
    g_autofree char *prefix = g_strdup_printf("bad.conf:%d: ", line);
    if (!g_str_has_prefix(err->message, prefix) || !strstr(err->message, word))
        g_error("error for %s is \"%s\", expected \"%s...%s...\"", text, err->message, prefix, word);
}

static void test_errors(void)
{
    assert_error_at("# c\n\nuser = \"x\"\n", 3, "outside of a [group]");
    assert_error_at("[iscsi]\n  user = \"CHAP username\n", 2, "unterminated quote");
    assert_error_at("[iscsi]\nuser = \"a\" trailing\n", 2, "after the quoted value");
    assert_error_at("[iscsi]\n\njust some words\n", 3, "cannot parse");
    assert_error_at("[iscsi]\n= \"x\"\n", 2, "cannot parse");
    assert_error_at("[iscsi\n", 1, "bad group header");
    assert_error_at("[]\n", 1, "bad group header");
    assert_error_at("[drive \"hd0]\n", 1, "unterminated quote");
    assert_error_at("[drive \"\"]\n", 1, "empty id");
    assert_error_at("[drive hd0]\n", 1, "bad group header");
    assert_error_at("[drive] x\n", 1, "bad group header");

    g_autoptr(GError) err = NULL;
    static const char nul[] = "[a]\nk = \"v\0\"\n";
    g_assert_null(vmm_readconfig_parse(nul, sizeof(nul) - 1, "nul.conf", &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_INVALID);
    g_assert_true(g_str_has_prefix(err->message, "nul.conf:2: "));
}

static void test_load(void)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *path = NULL;
    int fd = g_file_open_tmp("test-readconfig-XXXXXX.conf", &path, &err);
    g_assert_no_error(err);
    g_assert_cmpint(write(fd, iscsi_conf, strlen(iscsi_conf)), ==, (gssize)strlen(iscsi_conf));
    close(fd);

    g_autoptr(GPtrArray) sections = vmm_readconfig_load(path, &err);
    g_assert_no_error(err);
    g_assert_cmpuint(sections->len, ==, 1);
    assert_pair(sections->pdata[0], 3, "header-digest", "CRC32C");

    /* Errors in a loaded file name the path. */
    g_assert_true(g_file_set_contents(path, "[iscsi]\nbroken\n", -1, &err));
    g_autoptr(GPtrArray) broken = vmm_readconfig_load(path, &err);
    g_assert_null(broken);
    g_autofree char *prefix = g_strdup_printf("%s:2: ", path);
    g_assert_true(g_str_has_prefix(err->message, prefix));
    g_clear_error(&err);
    unlink(path);

    g_autoptr(GPtrArray) missing = vmm_readconfig_load(path, &err);
    g_assert_null(missing);
    g_assert_error(err, VMM_ERROR, VMM_ERROR_IO);
    g_assert_nonnull(strstr(err->message, path));
    g_assert_nonnull(strstr(err->message, g_strerror(ENOENT)));
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/readconfig/iscsi-sample", test_iscsi_sample);
    g_test_add_func("/readconfig/drive-with-id", test_drive_with_id);
    g_test_add_func("/readconfig/empty", test_empty_input);
    g_test_add_func("/readconfig/errors", test_errors);
    g_test_add_func("/readconfig/load", test_load);
    return g_test_run();
}
