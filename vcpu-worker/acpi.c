/* ACPI tables of the microvm machine (ACPI 6.x chapter 5; QEMU's
 * hw/i386/acpi-microvm.c is the reference for what they contain). */
#include "vcpu-worker/acpi.h"
#include "vcpu-worker/aml.h"
#include "common/error.h"

#define ACPI_OEM_ID             "VMMD  "
#define ACPI_OEM_TABLE_PREFIX   "VMMD"
#define ACPI_CREATOR_ID         "VMMD"
#define ACPI_HEADER_SIZE        36
#define ACPI_CHECKSUM_OFFSET    9
#define ACPI_TABLE_ALIGN        16

#define RSDP_SIZE               36
#define RSDP_V1_SIZE            20

#define DSDT_REVISION           2       /* 64-bit integers */
#define FADT_REVISION           5       /* ACPI 5.x: hardware-reduced, sleep registers */
#define FADT_MINOR_REVISION     1
#define FADT_SIZE               268
#define FADT_DSDT               40
#define FADT_BOOT_ARCH          109     /* IA-PC boot architecture flags */
#define FADT_FLAGS              112
#define FADT_RESET_REG          116
#define FADT_RESET_VALUE        128
#define FADT_MINOR_VERSION      131
#define FADT_X_DSDT             140
#define FADT_SLEEP_CONTROL      244
#define FADT_SLEEP_STATUS       256
#define FADT_BOOT_NO_VGA        (1u << 2)
#define FADT_BOOT_NO_CMOS_RTC   (1u << 5)
#define FADT_F_RESET_REG_SUP    (1u << 10)
#define FADT_F_HW_REDUCED_ACPI  (1u << 20)
#define GAS_SYSTEM_MEMORY       0
#define GAS_ACCESS_BYTE         1

#define MADT_REVISION           3
#define MADT_PCAT_COMPAT        1       /* the in-kernel irqchip has the 8259s too */
#define MADT_LOCAL_APIC         0
#define MADT_IO_APIC            1
#define MADT_INT_OVERRIDE       2
#define MADT_LOCAL_APIC_NMI     4
#define MADT_LAPIC_ENABLED      1
#define MADT_ALL_CPUS           0xff
#define MADT_IOAPIC_ID          0

#define XSDT_REVISION           1

static gboolean acpi_fail(GError **error, int code, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

static gboolean acpi_fail(GError **error, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error_literal(error, VMM_ERROR, code, msg);
    return FALSE;
}

guint8 vmm_acpi_checksum(const guint8 *data, gsize len)
{
    guint8 sum = 0;
    for (gsize i = 0; i < len; i++)
        sum += data[i];
    return sum;
}

VmmAcpiAction vmm_acpi_reg_write(guint64 addr, guint8 value)
{
    if (addr == VMM_ACPI_SLEEP_CTL_ADDR && (value & VMM_ACPI_SLP_EN) &&
        ((value >> VMM_ACPI_SLP_TYP_SHIFT) & 7) == VMM_ACPI_SLP_TYP_S5)
        return VMM_ACPI_ACTION_POWEROFF;
    if (addr == VMM_ACPI_RESET_ADDR && value == VMM_ACPI_RESET_VALUE)
        return VMM_ACPI_ACTION_RESET;
    return VMM_ACPI_ACTION_NONE;
}

/* ---- Table plumbing ----------------------------------------------------- */

static void put_le(GByteArray *t, guint64 v, guint bytes)
{
    for (guint i = 0; i < bytes; i++) {
        guint8 b = (guint8)(v >> (8 * i));
        g_byte_array_append(t, &b, 1);
    }
}

static GByteArray *table_new(const char sig[4], guint8 revision)
{
    GByteArray *t = g_byte_array_new();
    char table_id[9];
    g_byte_array_append(t, (const guint8 *)sig, 4);
    put_le(t, 0, 4);                /* length, set by table_finish */
    put_le(t, revision, 1);
    put_le(t, 0, 1);                /* checksum, set by table_finish */
    g_byte_array_append(t, (const guint8 *)ACPI_OEM_ID, 6);
    g_snprintf(table_id, sizeof(table_id), "%s%.4s", ACPI_OEM_TABLE_PREFIX, sig);
    g_byte_array_append(t, (const guint8 *)table_id, 8);
    put_le(t, 1, 4);                /* OEM revision */
    g_byte_array_append(t, (const guint8 *)ACPI_CREATOR_ID, 4);
    put_le(t, 1, 4);                /* creator revision */
    return t;
}

static void table_finish(GByteArray *t)
{
    vmm_put_le32(t->data + 4, t->len);
    t->data[ACPI_CHECKSUM_OFFSET] = 0;
    t->data[ACPI_CHECKSUM_OFFSET] = (guint8)-vmm_acpi_checksum(t->data, t->len);
}

static void put_gas(guint8 *p, guint64 addr)
{
    p[0] = GAS_SYSTEM_MEMORY;
    p[1] = 8;                       /* bit width */
    p[2] = 0;                       /* bit offset */
    p[3] = GAS_ACCESS_BYTE;
    vmm_put_le64(p + 4, addr);
}

/* ---- DSDT --------------------------------------------------------------- */

/* Device(VRnn) { _HID "LNRO0005", _UID n, _CCA 1, _CRS { Memory32Fixed, Interrupt } }
 * GSIs from 16 up are level-triggered, active-high as on microvm; an ISA
 * number keeps the ISA default, edge. */
static void dsdt_virtio(GByteArray *sb, guint index, const VmmVirtioMmioSlot *slot)
{
    g_autoptr(GByteArray) dev = g_byte_array_new();
    g_autoptr(GByteArray) res = g_byte_array_new();
    g_autoptr(GByteArray) crs = g_byte_array_new();
    g_autofree char *name = g_strdup_printf("VR%02u", index);

    vmm_aml_name_string_value(dev, "_HID", "LNRO0005");
    vmm_aml_name_integer(dev, "_UID", index);
    vmm_aml_name_integer(dev, "_CCA", 1);
    vmm_aml_res_memory32_fixed(res, (guint32)slot->base, VMM_VIRTIO_MMIO_SIZE, TRUE);
    vmm_aml_res_interrupt(res, slot->irq, slot->irq < 16, FALSE);
    vmm_aml_resource_template(crs, res);
    vmm_aml_name(dev, "_CRS", crs);
    vmm_aml_device(sb, name, dev);
}

static void dsdt_serial(GByteArray *sb, guint index, const VmmSerialPort *port)
{
    g_autoptr(GByteArray) dev = g_byte_array_new();
    g_autoptr(GByteArray) hid = g_byte_array_new();
    g_autoptr(GByteArray) res = g_byte_array_new();
    g_autoptr(GByteArray) crs = g_byte_array_new();
    g_autofree char *name = g_strdup_printf("COM%u", index + 1);

    vmm_aml_eisaid(hid, "PNP0501");
    vmm_aml_name(dev, "_HID", hid);
    vmm_aml_name_integer(dev, "_UID", index + 1);
    vmm_aml_name_integer(dev, "_STA", 0xf);
    vmm_aml_res_io(res, port->port, port->port, 0, 8);
    vmm_aml_res_irq_noflags(res, port->irq);
    vmm_aml_resource_template(crs, res);
    vmm_aml_name(dev, "_CRS", crs);
    vmm_aml_device(sb, name, dev);
}

/* Method(_EVT, 1, Serialized) { Local0 = ESEL; If ((Local0 & 2) == 2) { Notify(PWRB, 0x80) } } */
static void dsdt_ged_event_method(GByteArray *ged)
{
    g_autoptr(GByteArray) body = g_byte_array_new();
    g_autoptr(GByteArray) esel = g_byte_array_new();
    g_autoptr(GByteArray) local0 = g_byte_array_new();
    g_autoptr(GByteArray) bit = g_byte_array_new();
    g_autoptr(GByteArray) masked = g_byte_array_new();
    g_autoptr(GByteArray) pred = g_byte_array_new();
    g_autoptr(GByteArray) notify = g_byte_array_new();

    vmm_aml_name_string(esel, "ESEL");
    vmm_aml_local(local0, 0);
    vmm_aml_integer(bit, VMM_ACPI_GED_EVT_POWERDOWN);
    vmm_aml_store(body, esel, local0);
    vmm_aml_and(masked, local0, bit);
    vmm_aml_lequal(pred, masked, bit);
    vmm_aml_notify(notify, "PWRB", 0x80);
    vmm_aml_if(body, pred, notify);
    vmm_aml_method(ged, "_EVT", 1, TRUE, body);
}

/* The Generic Event Device carries system_powerdown to the guest. */
static void dsdt_ged(GByteArray *sb)
{
    g_autoptr(GByteArray) ged = g_byte_array_new();
    g_autoptr(GByteArray) res = g_byte_array_new();
    g_autoptr(GByteArray) crs = g_byte_array_new();
    g_autoptr(GByteArray) pwrb = g_byte_array_new();

    vmm_aml_name_string_value(ged, "_HID", "ACPI0013");
    vmm_aml_name_string_value(ged, "_UID", "GED");
    vmm_aml_res_interrupt(res, VMM_GED_IRQ, TRUE, FALSE);
    vmm_aml_resource_template(crs, res);
    vmm_aml_name(ged, "_CRS", crs);
    vmm_aml_operation_region(ged, "EREG", VMM_AML_REGION_SYSTEM_MEMORY, VMM_ACPI_GED_EVT_ADDR, 4);
    vmm_aml_field(ged, "EREG", VMM_AML_FIELD_DWORD_ACC | VMM_AML_FIELD_WRITE_AS_ZEROS, "ESEL", 32);
    dsdt_ged_event_method(ged);
    vmm_aml_device(sb, "GED", ged);

    vmm_aml_name_string_value(pwrb, "_HID", "PNP0C0C");
    vmm_aml_name_integer(pwrb, "_UID", 0);
    vmm_aml_device(sb, "PWRB", pwrb);
}

/* Name(_S5, Package() { 5, 0, 0, 0 }): SLP_TYP for the sleep control register. */
static void dsdt_s5(GByteArray *dsdt)
{
    g_autoptr(GByteArray) elems = g_byte_array_new();
    g_autoptr(GByteArray) pkg = g_byte_array_new();
    g_autoptr(GByteArray) root = g_byte_array_new();

    vmm_aml_integer(elems, VMM_ACPI_SLP_TYP_S5);
    for (int i = 0; i < 3; i++)
        vmm_aml_integer(elems, 0);
    vmm_aml_package(pkg, 4, elems);
    vmm_aml_name(root, "_S5", pkg);
    vmm_aml_scope(dsdt, "\\", root);
}

GByteArray *vmm_acpi_build_dsdt(const VmmGuestConfig *cfg, GError **error)
{
    if (!vmm_guest_config_check(cfg, error))
        return NULL;
    GByteArray *t = table_new("DSDT", DSDT_REVISION);
    g_autoptr(GByteArray) sb = g_byte_array_new();
    for (guint i = 0; i < cfg->n_serial; i++)
        dsdt_serial(sb, i, &cfg->serial[i]);
    dsdt_ged(sb);
    for (guint i = 0; i < cfg->n_virtio; i++)
        dsdt_virtio(sb, i, &cfg->virtio[i]);
    vmm_aml_scope(t, "_SB", sb);
    dsdt_s5(t);
    table_finish(t);
    return t;
}

/* ---- FADT, MADT, XSDT, RSDP --------------------------------------------- */

static GByteArray *build_fadt(guint64 dsdt)
{
    GByteArray *t = table_new("FACP", FADT_REVISION);
    g_byte_array_set_size(t, FADT_SIZE);
    memset(t->data + ACPI_HEADER_SIZE, 0, FADT_SIZE - ACPI_HEADER_SIZE);
    vmm_put_le32(t->data + FADT_DSDT, (guint32)dsdt);
    vmm_put_le64(t->data + FADT_X_DSDT, dsdt);
    vmm_put_le32(t->data + FADT_FLAGS, FADT_F_HW_REDUCED_ACPI | FADT_F_RESET_REG_SUP);
    /* The machine has neither: without "no CMOS RTC", Linux registers
     * rtc_cmos at port 0x70 and its probe polls a register that reads 0xff
     * (update in progress) with mdelay()s, which under nested
     * virtualisation took 4.5 s of a 13 s boot. The guest's wall clock
     * comes from kvm-clock. The 8042 bit stays clear: the i8042 is there
     * for the reset line only, not for a keyboard Linux should probe. */
    vmm_put_le16(t->data + FADT_BOOT_ARCH, FADT_BOOT_NO_VGA | FADT_BOOT_NO_CMOS_RTC);
    put_gas(t->data + FADT_RESET_REG, VMM_ACPI_RESET_ADDR);
    t->data[FADT_RESET_VALUE] = VMM_ACPI_RESET_VALUE;
    t->data[FADT_MINOR_VERSION] = FADT_MINOR_REVISION;
    put_gas(t->data + FADT_SLEEP_CONTROL, VMM_ACPI_SLEEP_CTL_ADDR);
    put_gas(t->data + FADT_SLEEP_STATUS, VMM_ACPI_SLEEP_STS_ADDR);
    table_finish(t);
    return t;
}

static void madt_entry(GByteArray *t, guint8 type, guint8 len)
{
    put_le(t, type, 1);
    put_le(t, len, 1);
}

/* One local APIC per vCPU (ACPI id = APIC id = index), the IOAPIC, the
 * optional IRQ 0 override, and LINT1 as NMI on all CPUs, as microvm's. */
static GByteArray *build_madt(const VmmGuestConfig *cfg)
{
    GByteArray *t = table_new("APIC", MADT_REVISION);
    put_le(t, VMM_LAPIC_ADDR, 4);
    put_le(t, MADT_PCAT_COMPAT, 4);
    for (guint i = 0; i < cfg->ncpus; i++) {
        madt_entry(t, MADT_LOCAL_APIC, 8);
        put_le(t, i, 1);
        put_le(t, i, 1);
        put_le(t, MADT_LAPIC_ENABLED, 4);
    }
    madt_entry(t, MADT_IO_APIC, 12);
    put_le(t, MADT_IOAPIC_ID, 1);
    put_le(t, 0, 1);
    put_le(t, VMM_IOAPIC_ADDR, 4);
    put_le(t, 0, 4);                /* GSI base */
    if (cfg->irq0_to_gsi2) {
        madt_entry(t, MADT_INT_OVERRIDE, 10);
        put_le(t, 0, 1);            /* bus: ISA */
        put_le(t, 0, 1);            /* source IRQ */
        put_le(t, 2, 4);            /* GSI */
        put_le(t, 0, 2);            /* flags: conforming polarity and trigger */
    }
    madt_entry(t, MADT_LOCAL_APIC_NMI, 6);
    put_le(t, MADT_ALL_CPUS, 1);
    put_le(t, 0, 2);
    put_le(t, 1, 1);                /* LINT1 */
    table_finish(t);
    return t;
}

static GByteArray *build_xsdt(const guint64 *entries, guint n)
{
    GByteArray *t = table_new("XSDT", XSDT_REVISION);
    for (guint i = 0; i < n; i++)
        put_le(t, entries[i], 8);
    table_finish(t);
    return t;
}

static void write_rsdp(guint8 *p, guint64 xsdt)
{
    memset(p, 0, RSDP_SIZE);
    memcpy(p, "RSD PTR ", 8);
    memcpy(p + 9, ACPI_OEM_ID, 6);
    p[15] = 2;                      /* revision: has the XSDT */
    vmm_put_le32(p + 16, 0);        /* no RSDT, as QEMU's microvm */
    vmm_put_le32(p + 20, RSDP_SIZE);
    vmm_put_le64(p + 24, xsdt);
    p[8] = (guint8)-vmm_acpi_checksum(p, RSDP_V1_SIZE);
    p[32] = (guint8)-vmm_acpi_checksum(p, RSDP_SIZE);
}

/* Copies T to the next aligned address at *NEXT. */
static gboolean place_table(guint8 *ram, GByteArray *t, guint64 *next, guint64 *addr, GError **error)
{
    guint64 at = (*next + ACPI_TABLE_ALIGN - 1) & ~(guint64)(ACPI_TABLE_ALIGN - 1);
    if (at + t->len > VMM_RESET_VECTOR_ADDR)
        return acpi_fail(error, VMM_ERROR_TOO_BIG,
                         "ACPI tables: %.4s of %u bytes does not fit below 0x%llx",
                         (const char *)t->data, t->len, VMM_RESET_VECTOR_ADDR);
    memcpy(ram + at, t->data, t->len);
    *addr = at;
    *next = at + t->len;
    return TRUE;
}

gboolean vmm_acpi_build(const VmmGuestConfig *cfg, guint8 *ram, gsize ram_size,
                        VmmAcpiTables *out, GError **error)
{
    memset(out, 0, sizeof(*out));
    if (!vmm_guest_config_check(cfg, error))
        return FALSE;
    if (!vmm_guest_ram_ptr(ram, ram_size, VMM_ACPI_START, VMM_ACPI_END - VMM_ACPI_START))
        return acpi_fail(error, VMM_ERROR_INVALID,
                         "ACPI tables: guest memory of %" G_GSIZE_FORMAT " bytes has no room at 0x%llx",
                         ram_size, VMM_ACPI_START);
    memset(ram + VMM_ACPI_START, 0, VMM_ACPI_END - VMM_ACPI_START);

    guint64 next = VMM_ACPI_START + RSDP_SIZE;
    g_autoptr(GByteArray) dsdt = vmm_acpi_build_dsdt(cfg, error);
    if (!dsdt || !place_table(ram, dsdt, &next, &out->dsdt, error))
        return FALSE;
    g_autoptr(GByteArray) fadt = build_fadt(out->dsdt);
    if (!place_table(ram, fadt, &next, &out->fadt, error))
        return FALSE;
    g_autoptr(GByteArray) madt = build_madt(cfg);
    if (!place_table(ram, madt, &next, &out->madt, error))
        return FALSE;
    guint64 entries[] = { out->fadt, out->madt };
    g_autoptr(GByteArray) xsdt = build_xsdt(entries, G_N_ELEMENTS(entries));
    if (!place_table(ram, xsdt, &next, &out->xsdt, error))
        return FALSE;
    out->rsdp = VMM_ACPI_START;
    write_rsdp(ram + out->rsdp, out->xsdt);
    out->end = next;
    return TRUE;
}
