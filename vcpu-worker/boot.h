/* The guest's physical memory layout (microvm family) and the Linux x86 boot
 * loaders: bzImage through its 64-bit entry point, and the uncompressed
 * vmlinux ELF through its PVH entry note. Everything here writes into a plain
 * buffer standing in for guest RAM, so it is testable without a VM; the vCPU
 * code later loads VmmBootCpuState into KVM_SET_SREGS/KVM_SET_REGS.
 * docs/boot.md describes the layout and the register state. */
#pragma once
#include <glib.h>
#include <string.h>

/* ---- Guest physical memory map ------------------------------------------ */

/* Below 1 MiB: the boot structures vmmd writes, then the legacy hole. */
#define VMM_GDT_ADDR            0x500ULL     /* 5 descriptors, see VMM_SEL_* */
#define VMM_IDT_ADDR            0x540ULL     /* one zero gate: no handler until Linux sets its own */
#define VMM_PVH_INFO_ADDR       0x6000ULL    /* struct hvm_start_info (PVH) */
#define VMM_PVH_MODLIST_ADDR    0x6040ULL    /* hvm_modlist_entry[1]: the initrd */
#define VMM_PVH_MEMMAP_ADDR     0x6080ULL    /* hvm_memmap_table_entry[] */
#define VMM_PVH_MEMMAP_END      0x7000ULL
#define VMM_ZERO_PAGE_ADDR      0x7000ULL    /* struct boot_params (bzImage) */
#define VMM_BOOT_STACK_TOP      0x8ff0ULL
#define VMM_PML4_ADDR           0x9000ULL    /* 64-bit page tables: PML4, */
#define VMM_PDPT_ADDR           0xa000ULL    /* one PDPT, */
#define VMM_PD_ADDR             0xb000ULL    /* four PDs of 2 MiB pages: 0..4 GiB identity */
#define VMM_PD_COUNT            4
#define VMM_CMDLINE_ADDR        0x20000ULL
#define VMM_CMDLINE_MAX         0x10000ULL   /* bytes reserved, NUL included */
#define VMM_EBDA_START          0x9fc00ULL   /* RAM ends here; reserved up to 640 KiB */
#define VMM_LEGACY_HOLE_START   0xa0000ULL   /* VGA window and BIOS area: not RAM to Linux */
#define VMM_ACPI_START          0xe0000ULL   /* RSDP first (the legacy scan finds it), then tables */
#define VMM_ACPI_END            0x100000ULL
/* The x86 reset vector (real mode f000:fff0), last 16 bytes of the ACPI area:
 * a stub that resets through the i8042 (boot.c). */
#define VMM_RESET_VECTOR_ADDR   0xffff0ULL
#define VMM_KERNEL_MIN_ADDR     0x100000ULL  /* nothing the guest loads may go lower */

/* 1 MiB up to the MMIO hole is low RAM; the rest of RAM starts at 4 GiB. */
#define VMM_MMIO_HOLE_START     0xc0000000ULL
#define VMM_HIGH_RAM_START      0x100000000ULL

/* Inside the MMIO hole. */
#define VMM_GED_MMIO_ADDR       0xfea00000ULL  /* ACPI registers, see acpi.h */
#define VMM_GED_MMIO_SIZE       0x1000ULL
#define VMM_GED_IRQ             9              /* the GED's event interrupt (edge) */
#define VMM_VIRTIO_MMIO_BASE    0xfeb00000ULL  /* transport n at base + n * 0x1000 */
/* A page per transport (its 0x200 bytes of registers and config, the rest
 * reads as zeroes), so that each can be a read-only memory slot of its own
 * (virtio-slot.c); QEMU's microvm packs them 0x200 apart. */
#define VMM_VIRTIO_MMIO_SIZE    0x1000ULL
#define VMM_VIRTIO_MMIO_MAX     8
#define VMM_VIRTIO_IRQ_BASE     16             /* transport n on IOAPIC pin 16 + n (level) */
#define VMM_IOAPIC_ADDR         0xfec00000ULL
#define VMM_IOAPIC_PINS         24
#define VMM_LAPIC_ADDR          0xfee00000ULL

#define VMM_MIN_RAM             (16ULL << 20)
#define VMM_MAX_CPUS            254          /* xAPIC ids 0..253; 255 is broadcast */

/* GDT selectors (index * 8). __BOOT_CS/__BOOT_DS of the boot protocol are
 * 0x10/0x18; the 32-bit code segment is for the PVH entry. */
#define VMM_SEL_CODE32          0x08
#define VMM_SEL_CODE64          0x10
#define VMM_SEL_DATA            0x18
#define VMM_SEL_TSS             0x20
#define VMM_GDT_ENTRIES         5

/* ---- The machine, as the loaders and the ACPI tables see it -------------- */

typedef struct {
    guint64 base;   /* guest physical address of the register window (a page) */
    guint32 irq;    /* IOAPIC input (GSI) */
} VmmVirtioMmioSlot;

typedef struct {
    guint16 port;   /* 0x3f8 for COM1 */
    guint8 irq;     /* 4 for COM1 */
} VmmSerialPort;

typedef struct {
    guint64 ram_size;                   /* bytes; low RAM first, the rest at 4 GiB */
    guint32 ncpus;
    const VmmVirtioMmioSlot *virtio;
    guint n_virtio;
    const VmmSerialPort *serial;
    guint n_serial;
    /* MADT override "ISA IRQ 0 is GSI 2", for GSI routing that wires the PIT
     * to IOAPIC pin 2 as QEMU's pc does; off as on microvm, where KVM's
     * default routing keeps IRQ 0 on pin 0. */
    gboolean irq0_to_gsi2;
} VmmGuestConfig;

/* Checks what the layout can hold: RAM size, vCPU count, device windows and
 * IRQs. Errors name the field. */
gboolean vmm_guest_config_check(const VmmGuestConfig *cfg, GError **error);

/* RAM below the MMIO hole and above 4 GiB. */
guint64 vmm_guest_low_ram_size(guint64 ram_size);
guint64 vmm_guest_high_ram_size(guint64 ram_size);

/* The host address of guest physical [gpa, gpa + len) in RAM, which is laid out
 * in the buffer as low RAM then high RAM (the two KVM memory slots); NULL when
 * any of the range is not RAM or lies outside the buffer. */
guint8 *vmm_guest_ram_ptr(guint8 *ram, gsize ram_size, guint64 gpa, guint64 len);

/* ---- E820 ---------------------------------------------------------------- */

#define VMM_E820_RAM        1
#define VMM_E820_RESERVED   2
#define VMM_E820_MAX        8

typedef struct {
    guint64 addr;
    guint64 size;
    guint32 type;
} VmmE820Entry;

/* The guest's memory map, sorted by address: RAM below the EBDA, the EBDA and
 * ACPI area reserved, RAM from 1 MiB to the hole, RAM above 4 GiB. Returns the
 * number of entries (at most VMM_E820_MAX). */
guint vmm_e820_build(guint64 ram_size, VmmE820Entry out[VMM_E820_MAX]);

/* ---- Initial vCPU state -------------------------------------------------- */

/* Mirrors struct kvm_segment, so the vCPU code copies field by field. */
typedef struct {
    guint64 base;
    guint32 limit;          /* in bytes - 1, already scaled by granularity */
    guint16 selector;
    guint8 type, present, dpl, db, s, l, g, avl, unusable;
} VmmSegment;

typedef struct {
    guint64 rip, rsp, rbp, rsi, rbx, rflags;
    guint64 cr0, cr3, cr4, efer;
    VmmSegment cs, ds, es, fs, gs, ss, tr, ldt;
    guint64 gdt_base;
    guint16 gdt_limit;
    guint64 idt_base;
    guint16 idt_limit;
} VmmBootCpuState;

#define VMM_CR0_PE      (1ULL << 0)
#define VMM_CR0_ET      (1ULL << 4)
#define VMM_CR0_PG      (1ULL << 31)
#define VMM_CR4_PAE     (1ULL << 5)
#define VMM_EFER_LME    (1ULL << 8)
#define VMM_EFER_LMA    (1ULL << 10)

/* Packs a GDT descriptor from the access/flags word (as kvmtool and firecracker
 * write it: flags nibble << 12 | access byte), base and 20-bit limit. */
guint64 vmm_gdt_entry(guint16 flags, guint32 base, guint32 limit);
/* The hidden segment state KVM needs for SELECTOR, decoded from its descriptor. */
VmmSegment vmm_segment_from_gdt(guint64 entry, guint16 selector);

/* ---- The loaders --------------------------------------------------------- */

typedef enum {
    VMM_BOOT_BZIMAGE,   /* 64-bit entry, boot_params in RSI */
    VMM_BOOT_PVH,       /* 32-bit entry, hvm_start_info in EBX */
} VmmBootKind;

typedef struct {
    const guint8 *kernel;   /* bzImage or ELF vmlinux */
    gsize kernel_size;
    const guint8 *initrd;   /* optional */
    gsize initrd_size;
    const char *cmdline;    /* optional */
    guint64 rsdp_addr;      /* 0: none (then Linux scans 0xe0000..0xfffff) */
} VmmBootImages;

typedef struct {
    VmmBootKind kind;
    guint64 entry;                  /* = cpu.rip */
    guint64 kernel_start, kernel_end;   /* what the kernel may use, init_size included */
    guint64 initrd_addr, initrd_size;
    guint64 cmdline_addr;
    guint64 params_addr;            /* zero page or hvm_start_info */
    VmmBootCpuState cpu;            /* for the boot vCPU; APs start by INIT/SIPI */
} VmmBootInfo;

/* Loads IMG (bzImage or ELF, told apart by their magic) into guest RAM for CFG
 * and fills OUT. Errors name the image and the cause. */
gboolean vmm_boot_load(const VmmGuestConfig *cfg, const VmmBootImages *img,
                       guint8 *ram, gsize ram_size, VmmBootInfo *out, GError **error);
gboolean vmm_boot_load_bzimage(const VmmGuestConfig *cfg, const VmmBootImages *img,
                               guint8 *ram, gsize ram_size, VmmBootInfo *out, GError **error);
gboolean vmm_boot_load_pvh(const VmmGuestConfig *cfg, const VmmBootImages *img,
                           guint8 *ram, gsize ram_size, VmmBootInfo *out, GError **error);

/* ---- Little-endian access to guest memory and image bytes ----------------- */

static inline void vmm_put_le16(guint8 *p, guint16 v) { v = GUINT16_TO_LE(v); memcpy(p, &v, 2); }
static inline void vmm_put_le32(guint8 *p, guint32 v) { v = GUINT32_TO_LE(v); memcpy(p, &v, 4); }
static inline void vmm_put_le64(guint8 *p, guint64 v) { v = GUINT64_TO_LE(v); memcpy(p, &v, 8); }
static inline guint16 vmm_get_le16(const guint8 *p) { guint16 v; memcpy(&v, p, 2); return GUINT16_FROM_LE(v); }
static inline guint32 vmm_get_le32(const guint8 *p) { guint32 v; memcpy(&v, p, 4); return GUINT32_FROM_LE(v); }
static inline guint64 vmm_get_le64(const guint8 *p) { guint64 v; memcpy(&v, p, 8); return GUINT64_FROM_LE(v); }
