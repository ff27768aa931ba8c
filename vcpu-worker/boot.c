/* Linux x86 boot loaders (Documentation/arch/x86/boot.rst and the PVH ABI of
 * xen/include/public/arch-x86/hvm/start_info.h): they place the kernel, the
 * initrd, the command line and the boot structures in guest RAM and describe
 * the boot vCPU's registers. The images come from outside, so every offset
 * and size read from them is checked against the image and the RAM. */
#include "vcpu-worker/boot.h"
#include "common/error.h"

/* ---- struct boot_params / setup_header offsets (zero page) --------------- */
#define BP_ACPI_RSDP_ADDR       0x070
#define BP_EXT_RAMDISK_IMAGE    0x0c0
#define BP_EXT_RAMDISK_SIZE     0x0c4
#define BP_EXT_CMD_LINE_PTR     0x0c8
#define BP_E820_ENTRIES         0x1e8
#define BP_HDR                  0x1f1   /* struct setup_header starts here */
#define BP_HDR_END_MAX          0x290   /* and must end before edd_mbr_sig_buffer */
#define BP_E820_TABLE           0x2d0
#define BP_E820_TABLE_MAX       128
#define BP_SIZE                 0x1000

#define HDR_SETUP_SECTS         0x1f1
#define HDR_BOOT_FLAG           0x1fe
#define HDR_JUMP                0x200   /* its second byte is the header's length - 2 */
#define HDR_MAGIC               0x202
#define HDR_VERSION             0x206
#define HDR_TYPE_OF_LOADER      0x210
#define HDR_LOADFLAGS           0x211
#define HDR_RAMDISK_IMAGE       0x218
#define HDR_RAMDISK_SIZE        0x21c
#define HDR_CMD_LINE_PTR        0x228
#define HDR_INITRD_ADDR_MAX     0x22c
#define HDR_KERNEL_ALIGNMENT    0x230
#define HDR_RELOCATABLE         0x234
#define HDR_XLOADFLAGS          0x236
#define HDR_CMDLINE_SIZE        0x238
#define HDR_PREF_ADDRESS        0x258
#define HDR_INIT_SIZE           0x260
#define HDR_MIN_END             0x264   /* through init_size: protocol 2.10+ */

#define HDR_MAGIC_VALUE         0x53726448u     /* "HdrS" */
#define HDR_MIN_VERSION         0x020c          /* 2.12: xloadflags */
#define XLF_KERNEL_64           (1u << 0)
#define LOADFLAG_LOADED_HIGH    (1u << 0)
#define LOADER_TYPE_UNDEFINED   0xff
#define ENTRY_64_OFFSET         0x200           /* startup_64 = load address + 0x200 */

/* ---- PVH (start_info.h) ------------------------------------------------- */
#define PVH_START_MAGIC         0x336ec578u
#define PVH_INFO_SIZE           56
#define PVH_MODLIST_ENTRY_SIZE  32
#define PVH_MEMMAP_ENTRY_SIZE   24
#define XEN_ELFNOTE_PHYS32_ENTRY 18

/* ---- ELF64 -------------------------------------------------------------- */
#define ELF_EHDR_SIZE           64
#define ELF_PHDR_SIZE           56
#define ELFCLASS64              2
#define ELFDATA2LSB             1
#define EM_X86_64               62
#define PT_LOAD                 1
#define PT_NOTE                 4

#define PAGE_SIZE               4096ULL
#define PTE_PRESENT_RW          0x3ULL
#define PDE_PS                  0x80ULL

static gboolean boot_fail(GError **error, int code, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

static gboolean boot_fail(GError **error, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error_literal(error, VMM_ERROR, code, msg);
    return FALSE;
}

/* ---- GDT, segments, page tables, registers ------------------------------ */

guint64 vmm_gdt_entry(guint16 flags, guint32 base, guint32 limit)
{
    return ((guint64)(base & 0xff000000u) << 32) | ((guint64)(base & 0x00ffffffu) << 16) |
           (limit & 0xffffu) | ((guint64)(limit & 0xf0000u) << 32) |
           ((guint64)(flags & 0xf0ffu) << 40);
}

VmmSegment vmm_segment_from_gdt(guint64 entry, guint16 selector)
{
    guint32 limit = (guint32)((entry & 0xffff) | ((entry >> 32) & 0xf0000));
    guint8 access = (entry >> 40) & 0xff;
    guint8 flags = (entry >> 52) & 0xf;
    VmmSegment s = {
        .base = ((entry >> 16) & 0xffffff) | (((entry >> 56) & 0xff) << 24),
        .selector = selector,
        .type = access & 0xf,
        .s = (access >> 4) & 1,
        .dpl = (access >> 5) & 3,
        .present = (access >> 7) & 1,
        .avl = flags & 1,
        .l = (flags >> 1) & 1,
        .db = (flags >> 2) & 1,
        .g = (flags >> 3) & 1,
    };
    s.limit = s.g ? (limit << 12) | 0xfff : limit;
    s.unusable = !s.present;
    return s;
}

/* Flat 4 GiB segments; the TSS is the minimal one the PVH ABI asks for. */
static void boot_gdt(guint64 gdt[VMM_GDT_ENTRIES])
{
    gdt[0] = 0;
    gdt[VMM_SEL_CODE32 / 8] = vmm_gdt_entry(0xc09b, 0, 0xfffff);
    gdt[VMM_SEL_CODE64 / 8] = vmm_gdt_entry(0xa09b, 0, 0xfffff);
    gdt[VMM_SEL_DATA / 8] = vmm_gdt_entry(0xc093, 0, 0xfffff);
    gdt[VMM_SEL_TSS / 8] = vmm_gdt_entry(0x008b, 0, 0x67);
}

/* What a reset that goes through the firmware finds at f000:fff0. Linux
 * reboots a hardware-reduced ACPI machine with reboot_type EFI (see
 * efi_reboot_required()), which without EFI falls through to
 * machine_real_restart(): a jump to the reset vector in real mode, where
 * a PC has its BIOS and we have no firmware. QEMU's microvm has qboot
 * there; we have 7 bytes that pulse the reset line through the i8042
 * (which vcpu-worker turns into a system reset) and halt:
 *   mov al, 0xfe; out 0x64, al; 1: hlt; jmp 1b */
static void write_reset_vector(guint8 *ram)
{
    static const guint8 stub[] = { 0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd };
    memset(ram + VMM_RESET_VECTOR_ADDR, 0, 16);
    memcpy(ram + VMM_RESET_VECTOR_ADDR, stub, sizeof(stub));
}

static void write_gdt_idt(guint8 *ram)
{
    write_reset_vector(ram);
    guint64 gdt[VMM_GDT_ENTRIES];
    boot_gdt(gdt);
    for (guint i = 0; i < VMM_GDT_ENTRIES; i++)
        vmm_put_le64(ram + VMM_GDT_ADDR + 8 * i, gdt[i]);
    memset(ram + VMM_IDT_ADDR, 0, 8);
}

/* Identity map of 0..4 GiB in 2 MiB pages: covers the kernel, init_size, the
 * zero page, the command line and an initrd anywhere in low RAM. */
static void write_page_tables(guint8 *ram)
{
    memset(ram + VMM_PML4_ADDR, 0, PAGE_SIZE);
    memset(ram + VMM_PDPT_ADDR, 0, PAGE_SIZE);
    vmm_put_le64(ram + VMM_PML4_ADDR, VMM_PDPT_ADDR | PTE_PRESENT_RW);
    for (guint i = 0; i < VMM_PD_COUNT; i++) {
        guint64 pd = VMM_PD_ADDR + i * PAGE_SIZE;
        vmm_put_le64(ram + VMM_PDPT_ADDR + 8 * i, pd | PTE_PRESENT_RW);
        for (guint j = 0; j < 512; j++) {
            guint64 addr = ((guint64)i * 512 + j) << 21;
            vmm_put_le64(ram + pd + 8 * j, addr | PDE_PS | PTE_PRESENT_RW);
        }
    }
}

static void cpu_state_common(VmmBootCpuState *cpu, guint16 code_sel)
{
    guint64 gdt[VMM_GDT_ENTRIES];
    boot_gdt(gdt);
    memset(cpu, 0, sizeof(*cpu));
    cpu->cs = vmm_segment_from_gdt(gdt[code_sel / 8], code_sel);
    cpu->ds = vmm_segment_from_gdt(gdt[VMM_SEL_DATA / 8], VMM_SEL_DATA);
    cpu->es = cpu->fs = cpu->gs = cpu->ss = cpu->ds;
    cpu->tr = vmm_segment_from_gdt(gdt[VMM_SEL_TSS / 8], VMM_SEL_TSS);
    cpu->ldt = (VmmSegment){ .type = 2, .unusable = 1 };
    cpu->gdt_base = VMM_GDT_ADDR;
    cpu->gdt_limit = VMM_GDT_ENTRIES * 8 - 1;
    cpu->idt_base = VMM_IDT_ADDR;
    cpu->idt_limit = 7;
    cpu->rflags = 0x2;          /* bit 1 is reserved and reads as one; IF clear */
    cpu->rsp = cpu->rbp = VMM_BOOT_STACK_TOP;
}

static void cpu_state_long_mode(VmmBootCpuState *cpu, guint64 entry, guint64 boot_params)
{
    cpu_state_common(cpu, VMM_SEL_CODE64);
    cpu->cr0 = VMM_CR0_PE | VMM_CR0_ET | VMM_CR0_PG;
    cpu->cr3 = VMM_PML4_ADDR;
    cpu->cr4 = VMM_CR4_PAE;
    cpu->efer = VMM_EFER_LME | VMM_EFER_LMA;
    cpu->rip = entry;
    cpu->rsi = boot_params;
}

static void cpu_state_pvh(VmmBootCpuState *cpu, guint64 entry, guint64 start_info)
{
    cpu_state_common(cpu, VMM_SEL_CODE32);
    cpu->cr0 = VMM_CR0_PE | VMM_CR0_ET;     /* the ABI: PE set, writable bits clear */
    cpu->rip = entry;
    cpu->rbx = start_info;
}

/* ---- Pieces both protocols place --------------------------------------- */

static gboolean check_ram(const VmmGuestConfig *cfg, gsize ram_size, GError **error)
{
    if (!vmm_guest_config_check(cfg, error))
        return FALSE;
    if (ram_size != cfg->ram_size)
        return boot_fail(error, VMM_ERROR_INVALID,
                         "guest memory: a buffer of %" G_GSIZE_FORMAT " bytes for a guest of %"
                         G_GUINT64_FORMAT, ram_size, cfg->ram_size);
    return TRUE;
}

static gboolean place_cmdline(guint8 *ram, const char *cmdline, gsize max_len, guint64 *addr,
                              GError **error)
{
    gsize len = cmdline ? strlen(cmdline) : 0;
    if (len > max_len)
        return boot_fail(error, VMM_ERROR_TOO_BIG,
                         "kernel command line: %" G_GSIZE_FORMAT " bytes, the kernel takes at most %"
                         G_GSIZE_FORMAT, len, max_len);
    memset(ram + VMM_CMDLINE_ADDR, 0, VMM_CMDLINE_MAX);
    if (len)
        memcpy(ram + VMM_CMDLINE_ADDR, cmdline, len);
    *addr = VMM_CMDLINE_ADDR;
    return TRUE;
}

/* The initrd goes page-aligned at the top of low RAM below LIMIT (exclusive),
 * and above everything the kernel may touch while it starts. */
static gboolean place_initrd(guint8 *ram, gsize ram_size, const VmmBootImages *img,
                             guint64 kernel_end, guint64 limit, VmmBootInfo *out, GError **error)
{
    guint64 top = MIN(limit, vmm_guest_low_ram_size(ram_size));
    guint64 addr;

    out->initrd_addr = out->initrd_size = 0;
    if (!img->initrd || !img->initrd_size)
        return TRUE;
    if (img->initrd_size > top || (addr = (top - img->initrd_size) & ~(PAGE_SIZE - 1)) < kernel_end)
        return boot_fail(error, VMM_ERROR_TOO_BIG,
                         "initrd: %" G_GSIZE_FORMAT " bytes do not fit between the kernel's end "
                         "0x%" G_GINT64_MODIFIER "x and 0x%" G_GINT64_MODIFIER "x; "
                         "give the guest more memory", img->initrd_size, kernel_end, top);
    memcpy(ram + addr, img->initrd, img->initrd_size);
    out->initrd_addr = addr;
    out->initrd_size = img->initrd_size;
    return TRUE;
}

static gboolean check_kernel_range(guint64 start, guint64 len, gsize ram_size, const char *what,
                                   GError **error)
{
    guint64 low = vmm_guest_low_ram_size(ram_size);
    if (start < VMM_KERNEL_MIN_ADDR || start > low || len > low - start)
        return boot_fail(error, VMM_ERROR_TOO_BIG,
                         "kernel image: %s: needs guest memory 0x%" G_GINT64_MODIFIER "x..0x%"
                         G_GINT64_MODIFIER "x, but low RAM is 0x%llx..0x%" G_GINT64_MODIFIER "x",
                         what, start, start + len, VMM_KERNEL_MIN_ADDR, low);
    return TRUE;
}

/* ---- bzImage ------------------------------------------------------------ */

typedef struct {
    guint16 version;
    guint16 xloadflags;
    guint32 initrd_addr_max, kernel_alignment, cmdline_size, init_size;
    guint64 pref_address;
    gsize hdr_end;          /* file offset just past the setup header */
    gsize kernel_offset;    /* the protected-mode kernel */
    gsize kernel_len;
} BzHeader;

static gboolean parse_bzimage(const guint8 *k, gsize size, BzHeader *h, GError **error)
{
    if (size < HDR_MIN_END || vmm_get_le32(k + HDR_MAGIC) != HDR_MAGIC_VALUE)
        return boot_fail(error, VMM_ERROR_INVALID, "kernel image: no \"HdrS\" setup header: not a bzImage");
    h->version = vmm_get_le16(k + HDR_VERSION);
    if (h->version < HDR_MIN_VERSION)
        return boot_fail(error, VMM_ERROR_UNSUPPORTED,
                         "kernel image: boot protocol %u.%02u, at least 2.12 is needed",
                         h->version >> 8, h->version & 0xff);
    h->hdr_end = HDR_JUMP + 2 + k[HDR_JUMP + 1];
    if (h->hdr_end < HDR_MIN_END || h->hdr_end > size)
        return boot_fail(error, VMM_ERROR_INVALID,
                         "kernel image: setup header length %" G_GSIZE_FORMAT " out of range",
                         h->hdr_end);
    h->xloadflags = vmm_get_le16(k + HDR_XLOADFLAGS);
    if (!(h->xloadflags & XLF_KERNEL_64))
        return boot_fail(error, VMM_ERROR_UNSUPPORTED,
                         "kernel image: no 64-bit entry point (XLF_KERNEL_64 clear)");
    guint setup_sects = k[HDR_SETUP_SECTS] ? k[HDR_SETUP_SECTS] : 4;
    h->kernel_offset = (gsize)(setup_sects + 1) * 512;
    if (h->kernel_offset >= size)
        return boot_fail(error, VMM_ERROR_INVALID,
                         "kernel image: %u setup sectors but the file has %" G_GSIZE_FORMAT " bytes",
                         setup_sects, size);
    h->kernel_len = size - h->kernel_offset;
    h->initrd_addr_max = vmm_get_le32(k + HDR_INITRD_ADDR_MAX);
    h->kernel_alignment = vmm_get_le32(k + HDR_KERNEL_ALIGNMENT);
    h->cmdline_size = vmm_get_le32(k + HDR_CMDLINE_SIZE);
    h->pref_address = vmm_get_le64(k + HDR_PREF_ADDRESS);
    h->init_size = vmm_get_le32(k + HDR_INIT_SIZE);
    if (h->pref_address < VMM_KERNEL_MIN_ADDR || h->pref_address % PAGE_SIZE)
        return boot_fail(error, VMM_ERROR_UNSUPPORTED,
                         "kernel image: pref_address 0x%" G_GINT64_MODIFIER "x is below 1 MiB or "
                         "not page-aligned", h->pref_address);
    if (h->kernel_alignment & (h->kernel_alignment - 1))
        return boot_fail(error, VMM_ERROR_INVALID,
                         "kernel image: kernel_alignment 0x%x is not a power of two",
                         h->kernel_alignment);
    return TRUE;
}

static void write_zero_page(guint8 *ram, const guint8 *k, const BzHeader *h,
                            const VmmGuestConfig *cfg, const VmmBootImages *img,
                            const VmmBootInfo *info)
{
    guint8 *bp = ram + VMM_ZERO_PAGE_ADDR;
    VmmE820Entry e820[VMM_E820_MAX];
    guint n = vmm_e820_build(cfg->ram_size, e820);

    memset(bp, 0, BP_SIZE);
    memcpy(bp + BP_HDR, k + BP_HDR, MIN(h->hdr_end, (gsize)BP_HDR_END_MAX) - BP_HDR);
    bp[HDR_TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED;
    bp[HDR_LOADFLAGS] |= LOADFLAG_LOADED_HIGH;
    vmm_put_le32(bp + HDR_CMD_LINE_PTR, (guint32)info->cmdline_addr);
    vmm_put_le32(bp + BP_EXT_CMD_LINE_PTR, (guint32)(info->cmdline_addr >> 32));
    vmm_put_le32(bp + HDR_RAMDISK_IMAGE, (guint32)info->initrd_addr);
    vmm_put_le32(bp + BP_EXT_RAMDISK_IMAGE, (guint32)(info->initrd_addr >> 32));
    vmm_put_le32(bp + HDR_RAMDISK_SIZE, (guint32)info->initrd_size);
    vmm_put_le32(bp + BP_EXT_RAMDISK_SIZE, (guint32)(info->initrd_size >> 32));
    vmm_put_le64(bp + BP_ACPI_RSDP_ADDR, img->rsdp_addr);
    bp[BP_E820_ENTRIES] = (guint8)n;
    for (guint i = 0; i < n; i++) {
        guint8 *e = bp + BP_E820_TABLE + 20 * i;
        vmm_put_le64(e, e820[i].addr);
        vmm_put_le64(e + 8, e820[i].size);
        vmm_put_le32(e + 16, e820[i].type);
    }
}

gboolean vmm_boot_load_bzimage(const VmmGuestConfig *cfg, const VmmBootImages *img,
                               guint8 *ram, gsize ram_size, VmmBootInfo *out, GError **error)
{
    BzHeader h = { 0 };

    memset(out, 0, sizeof(*out));
    if (!check_ram(cfg, ram_size, error) || !parse_bzimage(img->kernel, img->kernel_size, &h, error))
        return FALSE;
    /* The 64-bit entry runs the kernel where it is loaded if that suits it; at
     * pref_address it never has to move, and it needs init_size bytes there. */
    guint64 start = h.pref_address;
    guint64 span = MAX((guint64)h.init_size, (guint64)h.kernel_len);
    if (!check_kernel_range(start, span, ram_size, "init_size", error))
        return FALSE;
    if (!place_cmdline(ram, img->cmdline, MIN((gsize)h.cmdline_size, (gsize)VMM_CMDLINE_MAX - 1),
                       &out->cmdline_addr, error))
        return FALSE;
    if (!place_initrd(ram, ram_size, img, start + span, (guint64)h.initrd_addr_max + 1, out, error))
        return FALSE;
    memcpy(ram + start, img->kernel + h.kernel_offset, h.kernel_len);

    out->kind = VMM_BOOT_BZIMAGE;
    out->kernel_start = start;
    out->kernel_end = start + span;
    out->entry = start + ENTRY_64_OFFSET;
    out->params_addr = VMM_ZERO_PAGE_ADDR;
    write_zero_page(ram, img->kernel, &h, cfg, img, out);
    write_gdt_idt(ram);
    write_page_tables(ram);
    cpu_state_long_mode(&out->cpu, out->entry, VMM_ZERO_PAGE_ADDR);
    return TRUE;
}

/* ---- ELF vmlinux with a PVH entry note ---------------------------------- */

typedef struct {
    guint64 entry;
    guint64 start, end;     /* physical span of the PT_LOAD segments */
    gboolean have_entry;
} ElfKernel;

typedef struct {
    guint32 type;
    guint64 offset, filesz, paddr, memsz;
} ElfPhdr;

static gboolean elf_phdr(const guint8 *k, gsize size, guint i, ElfPhdr *ph, GError **error)
{
    guint64 phoff = vmm_get_le64(k + 32);
    guint16 phentsize = vmm_get_le16(k + 54);
    guint64 off = phoff + (guint64)i * phentsize;

    if (phentsize < ELF_PHDR_SIZE || phoff > size || off > size - ELF_PHDR_SIZE)
        return boot_fail(error, VMM_ERROR_INVALID,
                         "kernel image: ELF program header %u lies outside the file", i);
    const guint8 *p = k + off;
    ph->type = vmm_get_le32(p);
    ph->offset = vmm_get_le64(p + 8);
    ph->paddr = vmm_get_le64(p + 24);
    ph->filesz = vmm_get_le64(p + 32);
    ph->memsz = vmm_get_le64(p + 40);
    if (ph->offset > size || ph->filesz > size - ph->offset)
        return boot_fail(error, VMM_ERROR_INVALID,
                         "kernel image: ELF segment %u (offset 0x%" G_GINT64_MODIFIER "x, 0x%"
                         G_GINT64_MODIFIER "x bytes) lies outside the file", i, ph->offset, ph->filesz);
    return TRUE;
}

/* Walks one PT_NOTE segment for Xen's XEN_ELFNOTE_PHYS32_ENTRY. */
static gboolean elf_find_pvh_note(const guint8 *k, const ElfPhdr *ph, ElfKernel *ek, GError **error)
{
    guint64 pos = 0;
    while (ph->filesz - pos >= 12) {
        const guint8 *n = k + ph->offset + pos;
        guint64 namesz = vmm_get_le32(n), descsz = vmm_get_le32(n + 4);
        guint32 type = vmm_get_le32(n + 8);
        guint64 name_pad = (namesz + 3) & ~3ULL, desc_pad = (descsz + 3) & ~3ULL;
        if (name_pad + desc_pad > ph->filesz - pos - 12)
            return boot_fail(error, VMM_ERROR_INVALID, "kernel image: ELF note runs past its segment");
        const guint8 *name = n + 12, *desc = name + name_pad;
        if (type == XEN_ELFNOTE_PHYS32_ENTRY && namesz == 4 && memcmp(name, "Xen", 4) == 0) {
            if (descsz != 4 && descsz != 8)
                return boot_fail(error, VMM_ERROR_INVALID,
                                 "kernel image: PVH entry note has %" G_GUINT64_FORMAT " bytes, not 4 or 8",
                                 descsz);
            ek->entry = descsz == 4 ? vmm_get_le32(desc) : vmm_get_le64(desc);
            ek->have_entry = TRUE;
        }
        pos += 12 + name_pad + desc_pad;
    }
    return TRUE;
}

static gboolean parse_elf(const guint8 *k, gsize size, ElfKernel *ek, GError **error)
{
    if (size < ELF_EHDR_SIZE || memcmp(k, "\177ELF", 4) != 0)
        return boot_fail(error, VMM_ERROR_INVALID, "kernel image: not an ELF file");
    if (k[4] != ELFCLASS64 || k[5] != ELFDATA2LSB || vmm_get_le16(k + 18) != EM_X86_64)
        return boot_fail(error, VMM_ERROR_UNSUPPORTED,
                         "kernel image: ELF class %u, data %u, machine %u; only x86-64 (64-bit, "
                         "little-endian) vmlinux boots", k[4], k[5], vmm_get_le16(k + 18));
    guint phnum = vmm_get_le16(k + 56);
    memset(ek, 0, sizeof(*ek));
    ek->start = G_MAXUINT64;
    for (guint i = 0; i < phnum; i++) {
        ElfPhdr ph;
        if (!elf_phdr(k, size, i, &ph, error))
            return FALSE;
        if (ph.type == PT_NOTE && !elf_find_pvh_note(k, &ph, ek, error))
            return FALSE;
        if (ph.type != PT_LOAD || ph.memsz == 0)
            continue;
        if (ph.filesz > ph.memsz || ph.paddr + ph.memsz < ph.paddr)
            return boot_fail(error, VMM_ERROR_INVALID,
                             "kernel image: ELF segment %u has file size 0x%" G_GINT64_MODIFIER
                             "x over memory size 0x%" G_GINT64_MODIFIER "x", i, ph.filesz, ph.memsz);
        ek->start = MIN(ek->start, ph.paddr);
        ek->end = MAX(ek->end, ph.paddr + ph.memsz);
    }
    if (!ek->have_entry)
        return boot_fail(error, VMM_ERROR_UNSUPPORTED,
                         "kernel image: ELF without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); "
                         "build the kernel with CONFIG_PVH or boot the bzImage");
    if (ek->end == 0)
        return boot_fail(error, VMM_ERROR_INVALID, "kernel image: ELF without loadable segments");
    if (ek->entry < ek->start || ek->entry >= ek->end || ek->entry > G_MAXUINT32)
        return boot_fail(error, VMM_ERROR_INVALID,
                         "kernel image: PVH entry 0x%" G_GINT64_MODIFIER "x is outside the loaded "
                         "kernel 0x%" G_GINT64_MODIFIER "x..0x%" G_GINT64_MODIFIER "x",
                         ek->entry, ek->start, ek->end);
    return TRUE;
}

static void load_elf_segments(guint8 *ram, const guint8 *k, gsize size)
{
    guint phnum = vmm_get_le16(k + 56);
    for (guint i = 0; i < phnum; i++) {
        ElfPhdr ph;
        if (!elf_phdr(k, size, i, &ph, NULL) || ph.type != PT_LOAD || ph.memsz == 0)
            continue;
        memcpy(ram + ph.paddr, k + ph.offset, ph.filesz);
        memset(ram + ph.paddr + ph.filesz, 0, ph.memsz - ph.filesz);
    }
}

static void write_start_info(guint8 *ram, const VmmGuestConfig *cfg, const VmmBootImages *img,
                             const VmmBootInfo *info)
{
    guint8 *si = ram + VMM_PVH_INFO_ADDR;
    VmmE820Entry e820[VMM_E820_MAX];
    guint n = vmm_e820_build(cfg->ram_size, e820);

    G_STATIC_ASSERT(VMM_PVH_MEMMAP_ADDR + VMM_E820_MAX * PVH_MEMMAP_ENTRY_SIZE <= VMM_PVH_MEMMAP_END);
    memset(si, 0, VMM_PVH_MEMMAP_END - VMM_PVH_INFO_ADDR);
    vmm_put_le32(si, PVH_START_MAGIC);
    vmm_put_le32(si + 4, 1);                            /* version: has the memmap */
    if (info->initrd_size) {
        guint8 *mod = ram + VMM_PVH_MODLIST_ADDR;
        vmm_put_le32(si + 12, 1);                       /* nr_modules */
        vmm_put_le64(si + 16, VMM_PVH_MODLIST_ADDR);
        vmm_put_le64(mod, info->initrd_addr);
        vmm_put_le64(mod + 8, info->initrd_size);
    }
    vmm_put_le64(si + 24, info->cmdline_addr);
    vmm_put_le64(si + 32, img->rsdp_addr);
    vmm_put_le64(si + 40, VMM_PVH_MEMMAP_ADDR);
    vmm_put_le32(si + 48, n);
    for (guint i = 0; i < n; i++) {
        guint8 *e = ram + VMM_PVH_MEMMAP_ADDR + PVH_MEMMAP_ENTRY_SIZE * i;
        vmm_put_le64(e, e820[i].addr);
        vmm_put_le64(e + 8, e820[i].size);
        vmm_put_le32(e + 16, e820[i].type);   /* XEN_HVM_MEMMAP_TYPE_* match E820 */
    }
}

gboolean vmm_boot_load_pvh(const VmmGuestConfig *cfg, const VmmBootImages *img,
                           guint8 *ram, gsize ram_size, VmmBootInfo *out, GError **error)
{
    ElfKernel ek = { 0 };

    memset(out, 0, sizeof(*out));
    if (!check_ram(cfg, ram_size, error) || !parse_elf(img->kernel, img->kernel_size, &ek, error))
        return FALSE;
    if (!check_kernel_range(ek.start, ek.end - ek.start, ram_size, "ELF segments", error))
        return FALSE;
    if (!place_cmdline(ram, img->cmdline, VMM_CMDLINE_MAX - 1, &out->cmdline_addr, error))
        return FALSE;
    if (!place_initrd(ram, ram_size, img, ek.end, VMM_HIGH_RAM_START, out, error))
        return FALSE;
    load_elf_segments(ram, img->kernel, img->kernel_size);

    out->kind = VMM_BOOT_PVH;
    out->kernel_start = ek.start;
    out->kernel_end = ek.end;
    out->entry = ek.entry;
    out->params_addr = VMM_PVH_INFO_ADDR;
    write_start_info(ram, cfg, img, out);
    write_gdt_idt(ram);
    cpu_state_pvh(&out->cpu, out->entry, VMM_PVH_INFO_ADDR);
    return TRUE;
}

gboolean vmm_boot_load(const VmmGuestConfig *cfg, const VmmBootImages *img,
                       guint8 *ram, gsize ram_size, VmmBootInfo *out, GError **error)
{
    if (img->kernel_size >= 4 && memcmp(img->kernel, "\177ELF", 4) == 0)
        return vmm_boot_load_pvh(cfg, img, ram, ram_size, out, error);
    return vmm_boot_load_bzimage(cfg, img, ram, ram_size, out, error);
}
