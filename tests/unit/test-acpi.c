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
        { (1 << 20) - 3, { 0xc1, 0x00, 0x00, 0x01 }, 4 },  /* 2^20 + 1 */
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
    assert_bytes(a, 0x11, 0x06, 0x0a, 0x03, 7, 8, 9);

    g_byte_array_set_size(a, 0);
    g_autoptr(GByteArray) body = g_byte_array_new();
    vmm_aml_name_integer(body, "_UID", 1);
    g_assert_true(vmm_aml_device(a, "VR00", body));
    assert_bytes(a, 0x5b, 0x82, 0x0b, 'V', 'R', '0', '0', 0x08, '_', 'U', 'I', 'D', 0x01);
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


    /* the GED's Method(_EVT, 1, Serialized) { Local0 = ESEL; If ((Local0 & 2) == 2) { Notify(PWRB, 0x80) } } */
    g_autoptr(GByteArray) esel = g_byte_array_new(), l0 = g_byte_array_new(), two = g_byte_array_new();
    g_autoptr(GByteArray) body = g_byte_array_new(), masked = g_byte_array_new();
    g_autoptr(GByteArray) pred = g_byte_array_new(), notify = g_byte_array_new();
    vmm_aml_name_string(esel, "ESEL");
    vmm_aml_local(l0, 0);
    vmm_aml_integer(two, 2);
    vmm_aml_store(body, esel, l0);
    vmm_aml_and(masked, l0, two);
    vmm_aml_lequal(pred, masked, two);
    vmm_aml_notify(notify, "PWRB", 0x80);
    vmm_aml_if(body, pred, notify);
    g_byte_array_set_size(a, 0);
    g_assert_true(vmm_aml_method(a, "_EVT", 1, TRUE, body));
    assert_bytes(a, 0x14, 0x1d, '_', 'E', 'V', 'T', 0x09,
                 0x70, 'E', 'S', 'E', 'L', 0x60,
                 0xa0, 0x10, 0x93, 0x7b, 0x60, 0x0a, 0x02, 0x00, 0x0a, 0x02,
                 0x86, 'P', 'W', 'R', 'B', 0x0a, 0x80);
}

/* ---- Tables ------------------------------------------------------------- */

static const VmmVirtioMmioSlot three_virtio[] = {
    { VMM_VIRTIO_MMIO_BASE, 16 },
    { VMM_VIRTIO_MMIO_BASE + 0x1000, 17 },
    { VMM_VIRTIO_MMIO_BASE + 0x2000, 18 },
};
static const VmmSerialPort com1 = { 0x3f8, 4 };

static VmmGuestConfig test_config(void)
{
    return (VmmGuestConfig){ .ram_size = 64 * MiB, .ncpus = 2, .virtio = three_virtio,
                             .n_virtio = G_N_ELEMENTS(three_virtio), .serial = &com1, .n_serial = 1 };
}

/* A table at GPA: signature, a length inside the ACPI area, a zero checksum. */
static const guint8 *check_table(const guint8 *ram, guint64 gpa, const char *sig, guint8 rev)
{
    g_assert_cmphex(gpa, >=, VMM_ACPI_START);
    g_assert_cmphex(gpa, <, VMM_ACPI_END);
    const guint8 *t = ram + gpa;
    g_assert_cmpmem(t, 4, sig, 4);
    guint32 len = vmm_get_le32(t + 4);
    g_assert_cmpuint(len, >=, 36);
    g_assert_cmphex(gpa + len, <=, VMM_ACPI_END);
    g_assert_cmpuint(t[8], ==, rev);
    g_assert_cmpuint(vmm_acpi_checksum(t, len), ==, 0);
    g_assert_cmpmem(t + 10, 6, "VMMD  ", 6);
    return t;
}

static void check_gas(const guint8 *g, guint64 addr)
{
    g_assert_cmpuint(g[0], ==, 0);          /* system memory */
    g_assert_cmpuint(g[1], ==, 8);
    g_assert_cmpuint(g[2], ==, 0);
    g_assert_cmpuint(g[3], ==, 1);          /* byte access */
    g_assert_cmphex(vmm_get_le64(g + 4), ==, addr);
}

static void test_tables(void)
{
    VmmGuestConfig cfg = test_config();
    g_autofree guint8 *ram = g_malloc0(cfg.ram_size);
    VmmAcpiTables t;
    g_autoptr(GError) err = NULL;
    memset(ram + VMM_ACPI_START, 0x5a, VMM_ACPI_END - VMM_ACPI_START);  /* stale */
    g_assert_true(vmm_acpi_build(&cfg, ram, cfg.ram_size, &t, &err));
    g_assert_no_error(err);

    /* RSDP: revision 2, both checksums, the XSDT link, on a 16-byte boundary the scan finds */
    const guint8 *rsdp = ram + t.rsdp;
    g_assert_cmphex(t.rsdp, ==, VMM_ACPI_START);
    g_assert_cmpmem(rsdp, 8, "RSD PTR ", 8);
    g_assert_cmpuint(rsdp[15], ==, 2);
    g_assert_cmpuint(vmm_acpi_checksum(rsdp, 20), ==, 0);
    g_assert_cmpuint(vmm_get_le32(rsdp + 20), ==, 36);
    g_assert_cmpuint(vmm_acpi_checksum(rsdp, 36), ==, 0);
    g_assert_cmphex(vmm_get_le64(rsdp + 24), ==, t.xsdt);

    /* XSDT -> FADT, MADT */
    const guint8 *xsdt = check_table(ram, t.xsdt, "XSDT", 1);
    g_assert_cmpuint(vmm_get_le32(xsdt + 4), ==, 36 + 2 * 8);
    g_assert_cmphex(vmm_get_le64(xsdt + 36), ==, t.fadt);
    g_assert_cmphex(vmm_get_le64(xsdt + 44), ==, t.madt);

    /* FADT: hardware-reduced, reset and sleep registers, -> DSDT */
    const guint8 *fadt = check_table(ram, t.fadt, "FACP", 5);
    g_assert_cmpuint(vmm_get_le32(fadt + 4), ==, 268);
    guint32 flags = vmm_get_le32(fadt + 112);
    g_assert_cmphex(flags, ==, (1u << 20) | (1u << 10));
    g_assert_cmphex(vmm_get_le16(fadt + 109), ==, (1u << 5) | (1u << 2));  /* no CMOS RTC, no VGA */
    g_assert_cmphex(vmm_get_le32(fadt + 40), ==, t.dsdt);
    g_assert_cmphex(vmm_get_le64(fadt + 140), ==, t.dsdt);
    g_assert_cmphex(vmm_get_le32(fadt + 36), ==, 0);   /* no FACS: hardware-reduced */
    check_gas(fadt + 116, VMM_ACPI_RESET_ADDR);
    g_assert_cmphex(fadt[128], ==, VMM_ACPI_RESET_VALUE);
    check_gas(fadt + 244, VMM_ACPI_SLEEP_CTL_ADDR);
    check_gas(fadt + 256, VMM_ACPI_SLEEP_STS_ADDR);

    /* MADT: a local APIC per vCPU, the IOAPIC, IRQ0 -> GSI2 */
    const guint8 *madt = check_table(ram, t.madt, "APIC", 3);
    guint32 mlen = vmm_get_le32(madt + 4);
    g_assert_cmphex(vmm_get_le32(madt + 36), ==, VMM_LAPIC_ADDR);
    guint lapics = 0, ioapics = 0, isos = 0, nmis = 0;
    guint32 off = 44;
    while (off < mlen) {
        const guint8 *e = madt + off;
        g_assert_cmpuint(e[1], >=, 2);
        switch (e[0]) {
        case 0:
            g_assert_cmpuint(e[1], ==, 8);
            g_assert_cmpuint(e[3], ==, lapics);
            g_assert_cmpuint(vmm_get_le32(e + 4) & 1, ==, 1);
            lapics++;
            break;
        case 1:
            g_assert_cmpuint(e[1], ==, 12);
            g_assert_cmphex(vmm_get_le32(e + 4), ==, VMM_IOAPIC_ADDR);
            g_assert_cmpuint(vmm_get_le32(e + 8), ==, 0);
            ioapics++;
            break;
        case 2:
            g_assert_cmpuint(e[1], ==, 10);
            g_assert_cmpuint(e[3], ==, 0);
            g_assert_cmpuint(vmm_get_le32(e + 4), ==, 2);
            isos++;
            break;
        case 4:
            g_assert_cmpuint(e[1], ==, 6);
            nmis++;
            break;
        default:
            g_assert_not_reached();
        }
        off += e[1];
    }
    g_assert_cmpuint(off, ==, mlen);
    g_assert_cmpuint(lapics, ==, cfg.ncpus);
    g_assert_cmpuint(ioapics, ==, 1);
    g_assert_cmpuint(isos, ==, 0);     /* none, as microvm */
    g_assert_cmpuint(nmis, ==, 1);

    /* DSDT: as vmm_acpi_build_dsdt builds it */
    const guint8 *dsdt = check_table(ram, t.dsdt, "DSDT", 2);
    g_autoptr(GByteArray) alone = vmm_acpi_build_dsdt(&cfg, &err);
    g_assert_no_error(err);
    g_assert_cmpmem(dsdt, vmm_get_le32(dsdt + 4), alone->data, alone->len);
    /* the tables do not overlap, and the rest of the area was cleared */
    guint64 starts[] = { t.rsdp, t.dsdt, t.fadt, t.madt, t.xsdt };
    guint64 ends[] = { t.rsdp + 36, t.dsdt + vmm_get_le32(dsdt + 4), t.fadt + 268, t.madt + mlen,
                       t.xsdt + 52 };
    for (guint i = 1; i < G_N_ELEMENTS(starts); i++)
        g_assert_cmphex(ends[i - 1], <=, starts[i]);
    g_assert_cmphex(t.end, ==, ends[G_N_ELEMENTS(ends) - 1]);
    for (guint64 a = t.end; a < VMM_ACPI_END; a++)
        g_assert_cmphex(ram[a], ==, 0);
}

static void test_tables_many_cpus(void)
{
    VmmGuestConfig cfg = test_config();
    cfg.ncpus = VMM_MAX_CPUS;
    cfg.n_virtio = 0;
    cfg.n_serial = 0;
    g_autofree guint8 *ram = g_malloc0(cfg.ram_size);
    VmmAcpiTables t;
    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_acpi_build(&cfg, ram, cfg.ram_size, &t, &err));
    g_assert_no_error(err);
    const guint8 *madt = check_table(ram, t.madt, "APIC", 3);
    g_assert_cmpuint(vmm_get_le32(madt + 4), ==, 44 + 8 * VMM_MAX_CPUS + 12 + 6);
    check_table(ram, t.dsdt, "DSDT", 2);
}

/* With pc-style GSI routing, IRQ 0 -> GSI 2, conforming. */
static void test_tables_irq0_override(void)
{
    VmmGuestConfig cfg = test_config();
    cfg.irq0_to_gsi2 = TRUE;
    g_autofree guint8 *ram = g_malloc0(cfg.ram_size);
    VmmAcpiTables t;
    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_acpi_build(&cfg, ram, cfg.ram_size, &t, &err));
    g_assert_no_error(err);
    const guint8 *madt = check_table(ram, t.madt, "APIC", 3);
    guint32 len = vmm_get_le32(madt + 4);
    g_assert_cmpuint(len, ==, 44 + 8 * cfg.ncpus + 12 + 10 + 6);
    const guint8 *iso = madt + 44 + 8 * cfg.ncpus + 12;
    static const guint8 want[] = { 2, 10, 0, 0, 2, 0, 0, 0, 0, 0 };
    g_assert_cmpmem(iso, 10, want, 10);
}

static void test_tables_errors(void)
{
    VmmGuestConfig cfg = test_config();
    g_autofree guint8 *ram = g_malloc0(cfg.ram_size);
    VmmAcpiTables t;
    g_autoptr(GError) err = NULL;
    cfg.ncpus = 0;
    g_assert_false(vmm_acpi_build(&cfg, ram, cfg.ram_size, &t, &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_INVALID);
    g_clear_error(&err);
    g_assert_null(vmm_acpi_build_dsdt(&cfg, &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_INVALID);
    g_clear_error(&err);
    cfg = test_config();
    g_assert_false(vmm_acpi_build(&cfg, ram, 512 * 1024, &t, &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_INVALID);
}

static void test_sleep_registers(void)
{
    /* Linux's acpi_hw_extended_sleep writes SLP_EN | SLP_TYP << 2 */
    guint8 s5 = VMM_ACPI_SLP_EN | (VMM_ACPI_SLP_TYP_S5 << VMM_ACPI_SLP_TYP_SHIFT);
    g_assert_cmphex(s5, ==, 0x34);
    g_assert_cmpint(vmm_acpi_reg_write(VMM_ACPI_SLEEP_CTL_ADDR, s5), ==, VMM_ACPI_ACTION_POWEROFF);
    g_assert_cmpint(vmm_acpi_reg_write(VMM_ACPI_SLEEP_CTL_ADDR, s5 | 0xc3), ==, VMM_ACPI_ACTION_POWEROFF);
    g_assert_cmpint(vmm_acpi_reg_write(VMM_ACPI_SLEEP_CTL_ADDR, s5 & ~VMM_ACPI_SLP_EN), ==,
                    VMM_ACPI_ACTION_NONE);
    g_assert_cmpint(vmm_acpi_reg_write(VMM_ACPI_SLEEP_CTL_ADDR, VMM_ACPI_SLP_EN | (3 << 2)), ==,
                    VMM_ACPI_ACTION_NONE);
    g_assert_cmpint(vmm_acpi_reg_write(VMM_ACPI_SLEEP_STS_ADDR, s5), ==, VMM_ACPI_ACTION_NONE);
    g_assert_cmpint(vmm_acpi_reg_write(VMM_ACPI_RESET_ADDR, 0x42), ==, VMM_ACPI_ACTION_RESET);
    g_assert_cmpint(vmm_acpi_reg_write(VMM_ACPI_RESET_ADDR, 0x41), ==, VMM_ACPI_ACTION_NONE);
    g_assert_cmpint(vmm_acpi_reg_write(VMM_ACPI_SLEEP_CTL_ADDR, 0x42), ==, VMM_ACPI_ACTION_NONE);
}

/* ---- ACPICA's disassembler ---------------------------------------------- */

typedef struct {
    GMainLoop *loop;
    gboolean done;
    char *out;
} ToolRun;

static void tool_done(GObject *src, GAsyncResult *res, gpointer data)
{
    ToolRun *run = data;
    g_subprocess_communicate_utf8_finish(G_SUBPROCESS(src), res, &run->out, NULL, NULL);
    run->done = TRUE;
    g_main_loop_quit(run->loop);
}

static gboolean tool_timeout(gpointer data)
{
    g_main_loop_quit(((ToolRun *)data)->loop);
    return G_SOURCE_REMOVE;
}

/* Runs ARGV in DIR under a timeout; returns its exit status, output in *OUT. */
static int run_tool(const char *dir, const char *const *argv, char **out)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GSubprocessLauncher) l = g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_STDOUT_PIPE |
                                                                  G_SUBPROCESS_FLAGS_STDERR_MERGE);
    g_subprocess_launcher_set_cwd(l, dir);
    g_autoptr(GSubprocess) p = g_subprocess_launcher_spawnv(l, argv, &err);
    g_assert_no_error(err);
    g_autoptr(GMainContext) ctx = g_main_context_new();
    g_main_context_push_thread_default(ctx);
    ToolRun run = { .loop = g_main_loop_new(ctx, FALSE) };
    g_subprocess_communicate_utf8_async(p, NULL, NULL, tool_done, &run);
    GSource *t = g_timeout_source_new_seconds(IASL_TIMEOUT_S);
    g_source_set_callback(t, tool_timeout, &run, NULL);
    g_source_attach(t, ctx);
    g_main_loop_run(run.loop);
    g_source_destroy(t);
    g_source_unref(t);
    if (!run.done) {
        g_subprocess_force_exit(p);
        while (!run.done)
            g_main_context_iteration(ctx, TRUE);
    }
    g_main_context_pop_thread_default(ctx);
    g_main_loop_unref(run.loop);
    g_subprocess_wait(p, NULL, NULL);
    *out = run.out ? run.out : g_strdup("");
    if (!run.done || !g_subprocess_get_if_exited(p))
        return -1;
    return g_subprocess_get_exit_status(p);
}

/* Writes the table at GPA to DIR/NAME.dat, disassembles it, returns the .dsl
 * text, or NULL after failing the test (failures go on, so DIR is removed). */
static char *disassemble(const char *dir, const guint8 *ram, guint64 gpa, const char *name)
{
    g_autofree char *dat = g_strdup_printf("%s/%s.dat", dir, name);
    g_autofree char *dsl = g_strdup_printf("%s/%s.dsl", dir, name);
    g_autoptr(GError) err = NULL;
    g_assert_true(g_file_set_contents(dat, (const char *)ram + gpa, vmm_get_le32(ram + gpa + 4), &err));
    g_assert_no_error(err);
    const char *argv[] = { "iasl", "-d", dat, NULL };
    g_autofree char *out = NULL;
    int status = run_tool(dir, argv, &out);
    char *text = NULL;
    if (status != 0 || strstr(out, "Error") || strstr(out, "Warning")) {
        g_test_fail_printf("iasl -d %s.dat: status %d\n%s", name, status, out);
        return NULL;
    }
    if (!g_file_get_contents(dsl, &text, NULL, &err)) {
        g_test_fail_printf("iasl -d %s.dat: %s", name, err->message);
        return NULL;
    }
    return text;
}

/* Counts the matches of PATTERN (multi-line regex) in TEXT. */
static guint count_matches(const char *text, const char *pattern)
{
    g_autoptr(GRegex) re = g_regex_new(pattern, G_REGEX_MULTILINE | G_REGEX_DOTALL, 0, NULL);
    g_assert_nonnull(re);
    g_autoptr(GMatchInfo) m = NULL;
    guint n = 0;
    g_regex_match(re, text, 0, &m);
    while (g_match_info_matches(m)) {
        n++;
        g_match_info_next(m, NULL);
    }
    return n;
}

static void expect_match(const char *text, const char *pattern, guint times)
{
    if (!text)
        return;
    guint n = count_matches(text, pattern);
    if (n != times)
        g_test_fail_printf("%u matches of /%s/ (want %u) in:\n%s", n, pattern, times, text);
}

static void remove_dir(const char *dir)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *name;
    while (d && (name = g_dir_read_name(d))) {
        g_autofree char *p = g_build_filename(dir, name, NULL);
        g_unlink(p);
    }
    g_rmdir(dir);
}

static void check_dsdt_text(const char *dsl)
{
    expect_match(dsl, "Name \\(_HID, \"LNRO0005\"\\)", 3);
    for (guint i = 0; i < G_N_ELEMENTS(three_virtio); i++) {
        g_autofree char *pat = g_strdup_printf(
            "Device \\(VR%02u\\)\\s*\\{\\s*Name \\(_HID, \"LNRO0005\"\\)[^}]*"
            "Name \\(_UID, %s\\)[^}]*"
            "Memory32Fixed \\(ReadWrite,\\s*0x%08" G_GINT64_MODIFIER "X,[^,]*0x00001000,[^}]*"
            "Interrupt \\(ResourceConsumer, Level, ActiveHigh, Exclusive, ,, \\)\\s*\\{\\s*0x%08X,",
            i, i == 0 ? "Zero" : i == 1 ? "One" : "0x02", three_virtio[i].base, three_virtio[i].irq);
        expect_match(dsl, pat, 1);
    }
    expect_match(dsl, "Device \\(COM1\\)\\s*\\{\\s*Name \\(_HID, EisaId \\(\"PNP0501\"\\)", 1);
    expect_match(dsl, "IO \\(Decode16,\\s*0x03F8,\\s*//[^\\n]*\\s*0x03F8,[^)]*0x08,", 1);
    expect_match(dsl, "IRQNoFlags \\(\\)\\s*\\{4\\}", 1);
    expect_match(dsl, "Name \\(_HID, \"ACPI0013\"", 1);
    expect_match(dsl, "Interrupt \\(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \\)\\s*\\{\\s*0x00000009,", 1);
    expect_match(dsl, "OperationRegion \\(EREG, SystemMemory, 0xFEA00000, 0x04\\)", 1);
    expect_match(dsl, "Notify \\(PWRB, 0x80\\)", 1);
    expect_match(dsl, "Name \\(_S5, Package \\(0x04\\)[^}]*0x05,\\s*Zero,\\s*Zero,\\s*Zero", 1);
}

static void test_iasl(void)
{
    g_autofree char *iasl = g_find_program_in_path("iasl");
    if (!iasl) {
        g_test_skip("iasl not installed (Debian package acpica-tools)");
        return;
    }
    VmmGuestConfig cfg = test_config();
    g_autofree guint8 *ram = g_malloc0(cfg.ram_size);
    VmmAcpiTables t;
    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_acpi_build(&cfg, ram, cfg.ram_size, &t, &err));
    g_assert_no_error(err);
    g_autofree char *dir = g_dir_make_tmp("test-acpi-XXXXXX", &err);
    g_assert_no_error(err);

    g_autofree char *dsdt = disassemble(dir, ram, t.dsdt, "dsdt");
    if (dsdt)
        check_dsdt_text(dsdt);

    g_autofree char *fadt = disassemble(dir, ram, t.fadt, "facp");
    expect_match(fadt, "Hardware Reduced \\(V5\\) : 1", 1);
    expect_match(fadt, "Reset Register Supported \\(V2\\) : 1", 1);
    expect_match(fadt, "CMOS RTC Not Present \\(V5\\) : 1", 1);
    expect_match(fadt, "VGA Not Present \\(V4\\) : 1", 1);
    expect_match(fadt, "8042 Present on ports 60/64 \\(V2\\) : 0", 1);
    expect_match(fadt, "Reset Register : \\[Generic Address Structure\\].{0,400}?"
                       "Address : 00000000FEA00202\n", 1);
    expect_match(fadt, "Sleep Control Register : \\[Generic Address Structure\\].{0,400}?"
                       "Address : 00000000FEA00200\n", 1);
    expect_match(fadt, "Sleep Status Register : \\[Generic Address Structure\\].{0,400}?"
                       "Address : 00000000FEA00201\n", 1);
    expect_match(fadt, "Value to cause reset : 42", 1);
    g_autofree char *dsdt_addr = g_strdup_printf("DSDT Address : %016" G_GINT64_MODIFIER "X", t.dsdt);
    expect_match(fadt, dsdt_addr, 1);

    g_autofree char *madt = disassemble(dir, ram, t.madt, "apic");
    expect_match(madt, "Subtable Type : 00 \\[Processor Local APIC\\]", 2);
    expect_match(madt, "Subtable Type : 01 \\[I/O APIC\\].{0,300}?Address : FEC00000\n", 1);
    expect_match(madt, "Subtable Type : 04 \\[Local APIC NMI\\]", 1);
    expect_match(madt, "PC-AT Compatibility : 1", 1);

    g_autofree char *xsdt = disassemble(dir, ram, t.xsdt, "xsdt");
    expect_match(xsdt, "ACPI Table Address +[01] : ", 2);

    /* the disassembled DSDT compiles back to the same AML */
    const char *argv[] = { "iasl", "-p", "recompiled", "dsdt.dsl", NULL };
    g_autofree char *out = NULL;
    g_autofree char *aml_path = g_build_filename(dir, "recompiled.aml", NULL);
    g_autofree char *aml = NULL;
    gsize aml_len = 0;
    guint32 len = vmm_get_le32(ram + t.dsdt + 4);
    int status = dsdt ? run_tool(dir, argv, &out) : -1;
    if (status != 0)
        g_test_fail_printf("iasl dsdt.dsl: status %d\n%s", status, out ? out : "");
    else if (!g_file_get_contents(aml_path, &aml, &aml_len, NULL) || aml_len != len ||
             memcmp(aml + 36, ram + t.dsdt + 36, len - 36) != 0)
        g_test_fail_printf("the recompiled DSDT (%" G_GSIZE_FORMAT " bytes) differs from ours (%u)",
                           aml_len, len);
    remove_dir(dir);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/acpi/aml/pkg-length", test_aml_pkg_length);
    g_test_add_func("/acpi/aml/integer", test_aml_integer);
    g_test_add_func("/acpi/aml/names", test_aml_names);
    g_test_add_func("/acpi/aml/data", test_aml_data);
    g_test_add_func("/acpi/aml/resources", test_aml_resources);
    g_test_add_func("/acpi/aml/code", test_aml_code);
    g_test_add_func("/acpi/tables", test_tables);
    g_test_add_func("/acpi/tables/many-cpus", test_tables_many_cpus);
    g_test_add_func("/acpi/tables/irq0-override", test_tables_irq0_override);
    g_test_add_func("/acpi/tables/errors", test_tables_errors);
    g_test_add_func("/acpi/sleep-registers", test_sleep_registers);
    g_test_add_func("/acpi/iasl", test_iasl);
    return g_test_run();
}
