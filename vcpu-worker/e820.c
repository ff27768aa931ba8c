/* The guest's physical memory layout: where RAM is, how the RAM buffer maps
 * onto guest physical addresses, and the E820 map that tells Linux so. */
#include "vcpu-worker/boot.h"
#include "common/error.h"

#define VMM_MAX_VIRTIO_SLOTS 32    /* DSDT names VR00..VR31 */
#define VMM_MAX_SERIAL_PORTS 4

static gboolean layout_fail(GError **error, int code, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

static gboolean layout_fail(GError **error, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error_literal(error, VMM_ERROR, code, msg);
    return FALSE;
}

guint64 vmm_guest_low_ram_size(guint64 ram_size)
{
    return MIN(ram_size, VMM_MMIO_HOLE_START);
}

guint64 vmm_guest_high_ram_size(guint64 ram_size)
{
    return ram_size - vmm_guest_low_ram_size(ram_size);
}

guint8 *vmm_guest_ram_ptr(guint8 *ram, gsize ram_size, guint64 gpa, guint64 len)
{
    guint64 low = vmm_guest_low_ram_size(ram_size);
    guint64 off;

    if (gpa + len < gpa)
        return NULL;
    if (gpa + len <= low) {
        off = gpa;
    } else if (gpa >= VMM_HIGH_RAM_START) {
        off = low + (gpa - VMM_HIGH_RAM_START);
        if (off < low)
            return NULL;
    } else {
        return NULL;
    }
    if (off > ram_size || len > ram_size - off)
        return NULL;
    return ram + off;
}

static guint add_e820(VmmE820Entry *out, guint n, guint64 addr, guint64 end, guint32 type)
{
    if (end <= addr || n >= VMM_E820_MAX)
        return n;
    out[n] = (VmmE820Entry){ .addr = addr, .size = end - addr, .type = type };
    return n + 1;
}

guint vmm_e820_build(guint64 ram_size, VmmE820Entry out[VMM_E820_MAX])
{
    guint64 low = vmm_guest_low_ram_size(ram_size);
    guint64 high = vmm_guest_high_ram_size(ram_size);
    guint n = 0;

    n = add_e820(out, n, 0, MIN(low, VMM_EBDA_START), VMM_E820_RAM);
    n = add_e820(out, n, VMM_EBDA_START, VMM_LEGACY_HOLE_START, VMM_E820_RESERVED);
    /* The ACPI tables live in the BIOS area; reserved keeps Linux off them. */
    n = add_e820(out, n, VMM_ACPI_START, VMM_ACPI_END, VMM_E820_RESERVED);
    n = add_e820(out, n, VMM_KERNEL_MIN_ADDR, low, VMM_E820_RAM);
    if (high)
        n = add_e820(out, n, VMM_HIGH_RAM_START, VMM_HIGH_RAM_START + high, VMM_E820_RAM);
    return n;
}

static gboolean check_irq_free(const VmmGuestConfig *cfg, guint32 irq, const char *who,
                               guint who_index, GError **error)
{
    for (guint i = 0; i < cfg->n_virtio; i++) {
        if (cfg->virtio[i].irq == irq && !(g_str_equal(who, "virtio-mmio") && i == who_index))
            return layout_fail(error, VMM_ERROR_INVALID,
                               "%s %u: irq %u already used by virtio-mmio %u",
                               who, who_index, irq, i);
    }
    for (guint i = 0; i < cfg->n_serial; i++) {
        if (cfg->serial[i].irq == irq && !(g_str_equal(who, "serial") && i == who_index))
            return layout_fail(error, VMM_ERROR_INVALID,
                               "%s %u: irq %u already used by serial %u",
                               who, who_index, irq, i);
    }
    return TRUE;
}

static gboolean check_virtio_slot(const VmmGuestConfig *cfg, guint i, GError **error)
{
    const VmmVirtioMmioSlot *s = &cfg->virtio[i];

    if (s->base % VMM_VIRTIO_MMIO_SIZE || s->base < VMM_MMIO_HOLE_START ||
        s->base > VMM_IOAPIC_ADDR - VMM_VIRTIO_MMIO_SIZE ||
        (s->base >= VMM_GED_MMIO_ADDR && s->base < VMM_GED_MMIO_ADDR + VMM_GED_MMIO_SIZE))
        return layout_fail(error, VMM_ERROR_INVALID,
                           "virtio-mmio %u: base 0x%" G_GINT64_MODIFIER "x is not a free, "
                           "page-aligned window between 0x%llx and the IOAPIC",
                           i, s->base, VMM_MMIO_HOLE_START);
    for (guint j = 0; j < i; j++) {
        if (cfg->virtio[j].base == s->base)
            return layout_fail(error, VMM_ERROR_INVALID,
                               "virtio-mmio %u: base 0x%" G_GINT64_MODIFIER "x already used "
                               "by virtio-mmio %u", i, s->base, j);
    }
    /* Pin 0 is the PIT's (overridden to 2), 2 the cascade, 9 the GED's. */
    if (s->irq == 0 || s->irq == 2 || s->irq == VMM_GED_IRQ || s->irq >= VMM_IOAPIC_PINS)
        return layout_fail(error, VMM_ERROR_INVALID,
                           "virtio-mmio %u: irq %u is not a free IOAPIC input (1, 3..8, 10..%u)",
                           i, s->irq, VMM_IOAPIC_PINS - 1);
    return check_irq_free(cfg, s->irq, "virtio-mmio", i, error);
}

static gboolean check_serial_port(const VmmGuestConfig *cfg, guint i, GError **error)
{
    const VmmSerialPort *p = &cfg->serial[i];

    if (p->irq == 0 || p->irq == 2 || p->irq == VMM_GED_IRQ || p->irq >= 16)
        return layout_fail(error, VMM_ERROR_INVALID,
                           "serial %u: irq %u is not a free ISA interrupt (1, 3..8, 10..15)",
                           i, p->irq);
    if (p->port > 0xfff8)
        return layout_fail(error, VMM_ERROR_INVALID,
                           "serial %u: port 0x%x leaves no room for 8 registers", i, p->port);
    return check_irq_free(cfg, p->irq, "serial", i, error);
}

gboolean vmm_guest_config_check(const VmmGuestConfig *cfg, GError **error)
{
    if (cfg->ram_size < VMM_MIN_RAM || cfg->ram_size % 4096)
        return layout_fail(error, VMM_ERROR_INVALID,
                           "guest memory: %" G_GUINT64_FORMAT " bytes is not a multiple of 4 KiB "
                           "of at least %llu MiB", cfg->ram_size, VMM_MIN_RAM >> 20);
    if (cfg->ncpus < 1 || cfg->ncpus > VMM_MAX_CPUS)
        return layout_fail(error, VMM_ERROR_INVALID,
                           "guest vCPUs: %u out of range 1..%u", cfg->ncpus, VMM_MAX_CPUS);
    if (cfg->n_virtio > VMM_MAX_VIRTIO_SLOTS)
        return layout_fail(error, VMM_ERROR_TOO_BIG,
                           "virtio-mmio: %u transports, at most %u", cfg->n_virtio,
                           VMM_MAX_VIRTIO_SLOTS);
    if (cfg->n_serial > VMM_MAX_SERIAL_PORTS)
        return layout_fail(error, VMM_ERROR_TOO_BIG,
                           "serial: %u ports, at most %u", cfg->n_serial, VMM_MAX_SERIAL_PORTS);
    for (guint i = 0; i < cfg->n_virtio; i++) {
        if (!check_virtio_slot(cfg, i, error))
            return FALSE;
    }
    for (guint i = 0; i < cfg->n_serial; i++) {
        if (!check_serial_port(cfg, i, error))
            return FALSE;
    }
    return TRUE;
}
