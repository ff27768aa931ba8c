/* ACPI tables for the microvm machine, as QEMU's microvm builds them with
 * acpi=on: RSDP (revision 2) -> XSDT -> FADT (hardware-reduced) and MADT; the
 * FADT points at a DSDT that describes the virtio-mmio transports (LNRO0005),
 * the 16550 UARTs, the Generic Event Device with its power button, and _S5.
 * Debian's kernel finds its virtio-mmio devices only this way. The tables go
 * into guest RAM at VMM_ACPI_START; docs/boot.md lists them. */
#pragma once
#include "vcpu-worker/boot.h"

/* Registers the device model serves (QEMU's GED layout, same addresses).
 * Event selector: a 32-bit read returns the pending events and clears them;
 * vmmd raises VMM_GED_IRQ (edge) after setting VMM_ACPI_GED_EVT_POWERDOWN,
 * and the DSDT's _EVT method then notifies the power button. */
#define VMM_ACPI_GED_EVT_ADDR       VMM_GED_MMIO_ADDR
#define VMM_ACPI_GED_EVT_POWERDOWN  0x2
/* Byte registers named by the FADT. */
#define VMM_ACPI_REGS_ADDR          (VMM_GED_MMIO_ADDR + 0x200)
#define VMM_ACPI_SLEEP_CTL_ADDR     (VMM_ACPI_REGS_ADDR + 0)
#define VMM_ACPI_SLEEP_STS_ADDR     (VMM_ACPI_REGS_ADDR + 1)
#define VMM_ACPI_RESET_ADDR         (VMM_ACPI_REGS_ADDR + 2)
#define VMM_ACPI_REGS_SIZE          3
#define VMM_ACPI_RESET_VALUE        0x42
#define VMM_ACPI_SLP_EN             0x20    /* sleep control: SLP_EN, SLP_TYP in bits 2..4 */
#define VMM_ACPI_SLP_TYP_SHIFT      2
#define VMM_ACPI_SLP_TYP_S5         5       /* the first element of \_S5 */

typedef enum {
    VMM_ACPI_ACTION_NONE,
    VMM_ACPI_ACTION_POWEROFF,   /* SLP_EN with SLP_TYP S5 written to sleep control */
    VMM_ACPI_ACTION_RESET,      /* the reset value written to the reset register */
} VmmAcpiAction;

/* What a guest's byte write of VALUE to ADDR (one of VMM_ACPI_*_ADDR) asks for. */
VmmAcpiAction vmm_acpi_reg_write(guint64 addr, guint8 value);

/* Guest physical addresses of what vmm_acpi_build wrote. */
typedef struct {
    guint64 rsdp, xsdt, fadt, madt, dsdt;
    guint64 end;                /* first byte after the last table */
} VmmAcpiTables;

/* Writes every table for CFG into guest RAM; OUT->rsdp goes to the loader
 * (VmmBootImages.rsdp_addr). Errors: the config, or tables too big. */
gboolean vmm_acpi_build(const VmmGuestConfig *cfg, guint8 *ram, gsize ram_size,
                        VmmAcpiTables *out, GError **error);

/* The DSDT alone, header and checksum included (what vmm_acpi_build writes). */
GByteArray *vmm_acpi_build_dsdt(const VmmGuestConfig *cfg, GError **error);

/* Sum of LEN bytes; a table is valid when this is 0 over its length. */
guint8 vmm_acpi_checksum(const guint8 *data, gsize len);
