/* The AML encoder byte by byte, the ACPI tables in a guest-RAM buffer (links,
 * lengths, checksums, contents), the sleep/reset register decoding, and the
 * tables read back by ACPICA's disassembler (iasl -d, from Debian's
 * acpica-tools; skipped when it is not installed), whose DSDT must also
 * recompile to the same AML. Until vcpu-worker's library exists, the sources
 * under test are compiled in here. */
#include "vcpu-worker/e820.c"
#include "vcpu-worker/aml.c"
#include "vcpu-worker/acpi.c"

#include <gio/gio.h>
#include <glib/gstdio.h>

#define MiB (1ULL << 20)
#define IASL_TIMEOUT_S 60

/* ---- AML encoder -------------------------------------------------------- */

#define assert_bytes(arr, ...)                                              \
    do {                                                                    \
        static const guint8 want_[] = { __VA_ARGS__ };                      \
        g_assert_cmpmem((arr)->data, (arr)->len, want_, sizeof(want_));    \
    } while (0)

static void test_aml_pkg_length(void)
{
    struct { gsize body; guint8 want[4]; guint n; } cases[] = {
        { 0, { 0x01 }, 1 },
        { 62, { 0x3f }, 1 },
        { 63, { 0x41, 0x04 }, 2 },              /* 65 */
        { 4093, { 0x4f, 0xff }, 2 },            /* 4095 */
        { 4094, { 0x81, 0x00, 0x01 }, 3 },      /* 4097 */
        { (1 << 20) - 4, { 0x8f, 0xff, 0xff }, 3 },
        { (1 << 20) - 3, { 0xc0, 0x00, 0x00, 0x01 }, 4 },
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(GByteArray) a = g_byte_array_new();
        vmm_aml_pkg_length(a, cases[i].body);
        g_assert_cmpmem(a->data, a->len, cases[i].want, cases[i].n);
    }
}

static void test_aml_integer(void)
{
    struct { guint64 v; guint8 want[9]; guint n; } cases[] = {
        { 0, { 0x00 }, 1 },
        { 1, { 0x01 }, 1 },
        { 5, { 0x0a, 0x05 }, 2 },
        { 0xff, { 0x0a, 0xff }, 2 },
        { 0x100, { 0x0b, 0x00, 0x01 }, 3 },
        { 0x12345678, { 0x0c, 0x78, 0x56, 0x34, 0x12 }, 5 },
        { 0x100000000ULL, { 0x0e, 0, 0, 0, 0, 1, 0, 0, 0 }, 9 },
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(GByteArray) a = g_byte_array_new();
        vmm_aml_integer(a, cases[i].v);
        g_assert_cmpmem(a->data, a->len, cases[i].want, cases[i].n);
    }
}

static void test_aml_names(void)
{
    g_autoptr(GByteArray) a = g_byte_array_new();
    g_assert_true(vmm_aml_name_string(a, "_SB"));
    assert_bytes(a, '_', 'S', 'B', '_');
    g_byte_array_set_size(a, 0);
    g_assert_true(vmm_aml_name_string(a, "\\_SB.COM1"));
    assert_bytes(a, '\\', 0x2e, '_', 'S', 'B', '_', 'C', 'O', 'M', '1');
    g_byte_array_set_size(a, 0);
    g_assert_true(vmm_aml_name_string(a, "\\"));
    assert_bytes(a, '\\', 0x00);
    g_byte_array_set_size(a, 0);
    g_assert_true(vmm_aml_name_string(a, "^^PWRB"));
    assert_bytes(a, '^', '^', 'P', 'W', 'R', 'B');
    g_byte_array_set_size(a, 0);
    g_assert_true(vmm_aml_name_string(a, "A.B.C"));
    assert_bytes(a, 0x2f, 3, 'A', '_', '_', '_', 'B', '_', '_', '_', 'C', '_', '_', '_');

    const char *bad[] = { "abcd", "1ABC", "TOOLONG", "A..B", "A.", "\\^A", "A-B" };
    for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_byte_array_set_size(a, 0);
        g_assert_false(vmm_aml_name_string(a, bad[i]));
        g_assert_cmpuint(a->len, ==, 0);
        g_assert_false(vmm_aml_device(a, bad[i], NULL));
        g_assert_false(vmm_aml_name_integer(a, bad[i], 1));
        g_assert_cmpuint(a->len, ==, 0);
    }
}

static void test_aml_data(void)
{
    g_autoptr(GByteArray) a = g_byte_array_new();
    g_assert_true(vmm_aml_eisaid(a, "PNP0501"));
    assert_bytes(a, 0x0c, 0x41, 0xd0, 0x05, 0x01);      /* 0x0105D041 */
    g_byte_array_set_size(a, 0);
    g_assert_true(vmm_aml_eisaid(a, "PNP0C0C"));
    assert_bytes(a, 0x0c, 0x41, 0xd0, 0x0c, 0x0c);
    const char *bad[] = { "pnp0501", "PNP05", "PNP050G", "PNP05011" };
    for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_byte_array_set_size(a, 0);
        g_assert_false(vmm_aml_eisaid(a, bad[i]));
        g_assert_cmpuint(a->len, ==, 0);
    }

    g_byte_array_set_size(a, 0);
    vmm_aml_string(a, "AB");
    assert_bytes(a, 0x0d, 'A', 'B', 0);

    g_autoptr(GByteArray) elems = g_byte_array_new();
    vmm_aml_integer(elems, 5);
    vmm_aml_integer(elems, 0);
    g_byte_array_set_size(a, 0);
    vmm_aml_package(a, 2, elems);
    assert_bytes(a, 0x12, 0x05, 0x02, 0x0a, 0x05, 0x00);

    g_byte_array_set_size(a, 0);
    g_assert_true(vmm_aml_name(a, "_S5", elems));
    assert_bytes(a, 0x08, '_', 'S', '5', '_', 0x0a, 0x05, 0x00);

    static const guint8 data[3] = { 7, 8, 9 };
    g_byte_array_set_size(a, 0);
    vmm_aml_buffer(a, data, 3);
    assert_bytes(a, 0x11, 0x05, 0x0a, 0x03, 7, 8, 9);

    g_byte_array_set_size(a, 0);
    g_autoptr(GByteArray) body = g_byte_array_new();
    vmm_aml_name_integer(body, "_UID", 1);
    g_assert_true(vmm_aml_device(a, "VR00", body));
    assert_bytes(a, 0x5b, 0x82, 0x0e, 'V', 'R', '0', '0', 0x08, '_', 'U', 'I', 'D', 0x01);
}

static void test_aml_resources(void)
{
    g_autoptr(GByteArray) rt = g_byte_array_new();
    vmm_aml_res_memory32_fixed(rt, 0xfeb00200, 0x200, TRUE);
    assert_bytes(rt, 0x86, 0x09, 0x00, 0x01, 0x00, 0x02, 0xb0, 0xfe, 0x00, 0x02, 0x00, 0x00);
    g_byte_array_set_size(rt, 0);
    vmm_aml_res_interrupt(rt, 17, FALSE, FALSE);
    assert_bytes(rt, 0x89, 0x06, 0x00, 0x01, 0x01, 17, 0, 0, 0);
    g_byte_array_set_size(rt, 0);
    vmm_aml_res_interrupt(rt, 9, TRUE, TRUE);
    assert_bytes(rt, 0x89, 0x06, 0x00, 0x07, 0x01, 9, 0, 0, 0);
    g_byte_array_set_size(rt, 0);
    vmm_aml_res_io(rt, 0x3f8, 0x3f8, 0, 8);
    assert_bytes(rt, 0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08);
    g_byte_array_set_size(rt, 0);
    vmm_aml_res_irq_noflags(rt, 4);
    assert_bytes(rt, 0x22, 0x10, 0x00);

    g_autoptr(GByteArray) a = g_byte_array_new();
    vmm_aml_resource_template(a, rt);
    assert_bytes(a, 0x11, 0x08, 0x0a, 0x05, 0x22, 0x10, 0x00, 0x79, 0x00);
}

static void test_aml_code(void)
{
    g_autoptr(GByteArray) a = g_byte_array_new();
    g_assert_true(vmm_aml_operation_region(a, "EREG", VMM_AML_REGION_SYSTEM_MEMORY, 0xfea00000, 4));
    assert_bytes(a, 0x5b, 0x80, 'E', 'R', 'E', 'G', 0x00, 0x0c, 0x00, 0x00, 0xa0, 0xfe, 0x0a, 0x04);
    g_byte_array_set_size(a, 0);
    g_assert_true(vmm_aml_field(a, "EREG", 0x43, "ESEL", 32));
    assert_bytes(a, 0x5b, 0x81, 0x0b, 'E', 'R', 'E', 'G', 0x43, 'E', 'S', 'E', 'L', 0x20);
    g_byte_array_set_size(a, 0);
    g_assert_true(vmm_aml_notify(a, "PWRB", 0x80));
    assert_bytes(a, 0x86, 'P', 'W', 'R', 'B', 0x0a, 0x80);

    g_autoptr(GByteArray> l0 = NULL;
}
