/* The guest memory layout and the Linux boot loaders, against a plain buffer
 * standing in for guest RAM: E820, the config checks, GDT/segment decoding,
 * Debian's real bzImage (skipped when /boot has none), synthetic bzImages and
 * ELF kernels with a PVH note, and the vmlinux unpacked from Debian's bzImage
 * (as tests/rig/build-kit.sh does). Until vcpu-worker's library exists, the
 * sources under test are compiled in here. */
#include "vcpu-worker/e820.c"
#include "vcpu-worker/boot.c"

#include <gio/gio.h>
#include <sys/mman.h>
#include <unistd.h>

#define MiB (1ULL << 20)
#define GiB (1ULL << 30)
#define FILTER_TIMEOUT_S 120

/* ---- Helpers ------------------------------------------------------------ */

typedef struct {
    guint8 *ram;
    gsize size;
} Ram;

/* Anonymous, unreserved: a 3 GiB guest costs only the pages the loader writes. */
static Ram ram_new(gsize size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    g_assert_true(p != MAP_FAILED);
    return (Ram){ .ram = p, .size = size };
}

static void ram_free(Ram *r)
{
    munmap(r->ram, r->size);
}

static VmmGuestConfig config_for(guint64 ram_size)
{
    return (VmmGuestConfig){ .ram_size = ram_size, .ncpus = 1 };
}

static char *find_debian_bzimage(void)
{
    g_autoptr(GDir) dir = g_dir_open("/boot", 0, NULL);
    const char *name;
    while (dir && (name = g_dir_read_name(dir))) {
        if (g_str_has_prefix(name, "vmlinuz-")) {
            char *path = g_build_filename("/boot", name, NULL);
            if (g_file_test(path, G_FILE_TEST_IS_REGULAR) && access(path, R_OK) == 0)
                return path;
            g_free(path);
        }
    }
    return NULL;
}

static GBytes *read_debian_bzimage(void)
{
    g_autofree char *path = find_debian_bzimage();
    char *data;
    gsize len;
    if (!path) {
        g_test_skip("no readable /boot/vmlinuz-*");
        return NULL;
    }
    g_autoptr(GError) err = NULL;
    g_assert_true(g_file_get_contents(path, &data, &len, &err));
    g_assert_no_error(err);
    return g_bytes_new_take(data, len);
}

/* Walks the 4-level page tables from CR3 (2 MiB leaves) for VA. */
static guint64 translate(const guint8 *ram, guint64 cr3, guint64 va)
{
    guint64 pml4e = vmm_get_le64(ram + cr3 + 8 * ((va >> 39) & 511));
    g_assert_cmphex(pml4e & 1, ==, 1);
    guint64 pdpte = vmm_get_le64(ram + (pml4e & ~0xfffULL) + 8 * ((va >> 30) & 511));
    g_assert_cmphex(pdpte & 1, ==, 1);
    g_assert_cmphex(pdpte & 0x80, ==, 0);
    guint64 pde = vmm_get_le64(ram + (pdpte & ~0xfffULL) + 8 * ((va >> 21) & 511));
    g_assert_cmphex(pde & 0x83, ==, 0x83);
    return (pde & ~0x1fffffULL) | (va & 0x1fffff);
}

static void assert_e820_sane(const VmmE820Entry *e, guint n, guint64 ram_size)
{
    guint64 ram = 0;
    g_assert_cmpuint(n, >=, 3);
    for (guint i = 0; i < n; i++) {
        g_assert_cmpuint(e[i].size, >, 0);
        g_assert_true(e[i].type == VMM_E820_RAM || e[i].type == VMM_E820_RESERVED);
        if (i > 0)
            g_assert_cmphex(e[i - 1].addr + e[i - 1].size, <=, e[i].addr);
        if (e[i].type == VMM_E820_RAM) {
            ram += e[i].size;
            /* RAM never in the legacy hole or the MMIO hole */
            g_assert_false(e[i].addr < VMM_KERNEL_MIN_ADDR && e[i].addr + e[i].size > VMM_EBDA_START);
            g_assert_false(e[i].addr < VMM_HIGH_RAM_START && e[i].addr + e[i].size > VMM_MMIO_HOLE_START);
        }
    }
    /* all of RAM but the 384 KiB below 1 MiB that is not RAM to Linux */
    g_assert_cmpuint(ram, ==, ram_size - (VMM_KERNEL_MIN_ADDR - VMM_EBDA_START));
}

static void assert_segment_flat(const VmmSegment *s, guint16 sel)
{
    g_assert_cmpuint(s->selector, ==, sel);
    g_assert_cmphex(s->base, ==, 0);
    g_assert_cmphex(s->limit, ==, 0xffffffff);
    g_assert_cmpuint(s->present, ==, 1);
    g_assert_cmpuint(s->s, ==, 1);
    g_assert_cmpuint(s->g, ==, 1);
    g_assert_cmpuint(s->unusable, ==, 0);
}

static void assert_segment_equal(const VmmSegment *a, const VmmSegment *b)
{
    g_assert_cmphex(a->base, ==, b->base);
    g_assert_cmphex(a->limit, ==, b->limit);
    g_assert_cmphex(a->selector, ==, b->selector);
    guint8 fa[] = { a->type, a->present, a->dpl, a->db, a->s, a->l, a->g, a->avl, a->unusable };
    guint8 fb[] = { b->type, b->present, b->dpl, b->db, b->s, b->l, b->g, b->avl, b->unusable };
    g_assert_cmpmem(fa, sizeof(fa), fb, sizeof(fb));
}

/* The GDT in RAM agrees with the hidden segment state handed to KVM. */
static void assert_gdt_matches(const guint8 *ram, const VmmBootCpuState *cpu)
{
    g_assert_cmphex(cpu->gdt_base, ==, VMM_GDT_ADDR);
    g_assert_cmpuint(cpu->gdt_limit, ==, VMM_GDT_ENTRIES * 8 - 1);
    const VmmSegment *segs[] = { &cpu->cs, &cpu->ds, &cpu->ss, &cpu->tr };
    for (guint i = 0; i < G_N_ELEMENTS(segs); i++) {
        guint64 e = vmm_get_le64(ram + VMM_GDT_ADDR + segs[i]->selector);
        VmmSegment d = vmm_segment_from_gdt(e, segs[i]->selector);
        assert_segment_equal(&d, segs[i]);
    }
    g_assert_cmphex(vmm_get_le64(ram + VMM_GDT_ADDR), ==, 0);
}

/* ---- Layout ------------------------------------------------------------- */

static void test_e820_low_only(void)
{
    VmmE820Entry e[VMM_E820_MAX];
    guint n = vmm_e820_build(256 * MiB, e);
    g_assert_cmpuint(n, ==, 4);
    g_assert_cmphex(e[0].addr, ==, 0);
    g_assert_cmphex(e[0].size, ==, VMM_EBDA_START);
    g_assert_cmpuint(e[0].type, ==, VMM_E820_RAM);
    g_assert_cmphex(e[1].addr, ==, VMM_EBDA_START);
    g_assert_cmpuint(e[1].type, ==, VMM_E820_RESERVED);
    g_assert_cmphex(e[2].addr, ==, VMM_ACPI_START);
    g_assert_cmphex(e[2].addr + e[2].size, ==, VMM_ACPI_END);
    g_assert_cmpuint(e[2].type, ==, VMM_E820_RESERVED);
    g_assert_cmphex(e[3].addr, ==, MiB);
    g_assert_cmphex(e[3].addr + e[3].size, ==, 256 * MiB);
    assert_e820_sane(e, n, 256 * MiB);
}

static void test_e820_high(void)
{
    VmmE820Entry e[VMM_E820_MAX];
    guint64 size = 5 * GiB;
    guint n = vmm_e820_build(size, e);
    g_assert_cmpuint(n, ==, 5);
    g_assert_cmphex(e[3].addr + e[3].size, ==, VMM_MMIO_HOLE_START);
    g_assert_cmphex(e[4].addr, ==, VMM_HIGH_RAM_START);
    g_assert_cmphex(e[4].size, ==, size - VMM_MMIO_HOLE_START);
    g_assert_cmpuint(vmm_guest_low_ram_size(size), ==, VMM_MMIO_HOLE_START);
    g_assert_cmpuint(vmm_guest_high_ram_size(size), ==, 2 * GiB);
    g_assert_cmpuint(vmm_guest_high_ram_size(GiB), ==, 0);
    assert_e820_sane(e, n, size);
}

static void test_ram_ptr(void)
{
    guint8 *ram = (guint8 *)0x10000000;     /* never dereferenced */
    gsize size = 4 * GiB;                   /* 3 GiB low, 1 GiB high */
    g_assert_true(vmm_guest_ram_ptr(ram, size, 0, 16) == ram);
    g_assert_true(vmm_guest_ram_ptr(ram, size, 0x1000, 0x1000) == ram + 0x1000);
    g_assert_true(vmm_guest_ram_ptr(ram, size, VMM_MMIO_HOLE_START - 1, 1) == ram + VMM_MMIO_HOLE_START - 1);
    g_assert_null(vmm_guest_ram_ptr(ram, size, VMM_MMIO_HOLE_START - 1, 2));
    g_assert_null(vmm_guest_ram_ptr(ram, size, VMM_VIRTIO_MMIO_BASE, 4));
    g_assert_true(vmm_guest_ram_ptr(ram, size, VMM_HIGH_RAM_START, 8) == ram + VMM_MMIO_HOLE_START);
    g_assert_true(vmm_guest_ram_ptr(ram, size, VMM_HIGH_RAM_START + GiB - 8, 8) ==
                  ram + size - 8);
    g_assert_null(vmm_guest_ram_ptr(ram, size, VMM_HIGH_RAM_START + GiB - 8, 9));
    g_assert_null(vmm_guest_ram_ptr(ram, size, G_MAXUINT64 - 4, 8));
    g_assert_null(vmm_guest_ram_ptr(ram, 64 * MiB, 64 * MiB, 1));
    g_assert_null(vmm_guest_ram_ptr(ram, 64 * MiB, VMM_HIGH_RAM_START, 1));
}

static void expect_config_error(const VmmGuestConfig *cfg, int code, const char *needle)
{
    g_autoptr(GError) err = NULL;
    g_assert_false(vmm_guest_config_check(cfg, &err));
    g_assert_error(err, VMM_ERROR, code);
    if (!strstr(err->message, needle))
        g_error("error \"%s\" does not mention \"%s\"", err->message, needle);
}

static void test_config_check(void)
{
    VmmVirtioMmioSlot v[3] = {
        { VMM_VIRTIO_MMIO_BASE, 16 },
        { VMM_VIRTIO_MMIO_BASE + 0x1000, 17 },
        { VMM_VIRTIO_MMIO_BASE + 0x10000, 18 },
    };
    VmmSerialPort com1 = { 0x3f8, 4 };
    VmmGuestConfig cfg = { .ram_size = 256 * MiB, .ncpus = 2, .virtio = v, .n_virtio = 3,
                           .serial = &com1, .n_serial = 1 };
    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_guest_config_check(&cfg, &err));
    g_assert_no_error(err);

    VmmGuestConfig bad = cfg;
    bad.ram_size = 8 * MiB;
    expect_config_error(&bad, VMM_ERROR_INVALID, "guest memory");
    bad.ram_size = 256 * MiB + 1;
    expect_config_error(&bad, VMM_ERROR_INVALID, "4 KiB");
    bad = cfg;
    bad.ncpus = 0;
    expect_config_error(&bad, VMM_ERROR_INVALID, "vCPUs");
    bad.ncpus = 255;
    expect_config_error(&bad, VMM_ERROR_INVALID, "vCPUs");

    VmmVirtioMmioSlot w[2];
    bad = cfg;
    bad.virtio = w;
    bad.n_virtio = 2;
    struct { VmmVirtioMmioSlot a, b; const char *needle; } cases[] = {
        { { VMM_VIRTIO_MMIO_BASE + 4, 16 }, { VMM_VIRTIO_MMIO_BASE + 0x1000, 17 }, "virtio-mmio 0: base" },
        { { 0x80000000, 16 }, { VMM_VIRTIO_MMIO_BASE + 0x1000, 17 }, "virtio-mmio 0: base" },
        { { VMM_GED_MMIO_ADDR, 16 }, { VMM_VIRTIO_MMIO_BASE + 0x1000, 17 }, "virtio-mmio 0: base" },
        { { VMM_IOAPIC_ADDR, 16 }, { VMM_VIRTIO_MMIO_BASE + 0x1000, 17 }, "virtio-mmio 0: base" },
        { { VMM_VIRTIO_MMIO_BASE, 16 }, { VMM_VIRTIO_MMIO_BASE, 17 }, "already used by virtio-mmio 0" },
        { { VMM_VIRTIO_MMIO_BASE, 16 }, { VMM_VIRTIO_MMIO_BASE + 0x1000, 16 }, "irq 16 already used" },
        { { VMM_VIRTIO_MMIO_BASE, 4 }, { VMM_VIRTIO_MMIO_BASE + 0x1000, 17 }, "already used by serial 0" },
        { { VMM_VIRTIO_MMIO_BASE, 0 }, { VMM_VIRTIO_MMIO_BASE + 0x1000, 17 }, "irq 0" },
        { { VMM_VIRTIO_MMIO_BASE, 2 }, { VMM_VIRTIO_MMIO_BASE + 0x1000, 17 }, "irq 2" },
        { { VMM_VIRTIO_MMIO_BASE, 9 }, { VMM_VIRTIO_MMIO_BASE + 0x1000, 17 }, "irq 9" },
        { { VMM_VIRTIO_MMIO_BASE, 24 }, { VMM_VIRTIO_MMIO_BASE + 0x1000, 17 }, "irq 24" },
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        w[0] = cases[i].a;
        w[1] = cases[i].b;
        expect_config_error(&bad, VMM_ERROR_INVALID, cases[i].needle);
    }
    bad = cfg;
    bad.n_virtio = 33;
    expect_config_error(&bad, VMM_ERROR_TOO_BIG, "virtio-mmio");

    VmmSerialPort p = { 0x3f8, 20 };
    bad = cfg;
    bad.serial = &p;
    expect_config_error(&bad, VMM_ERROR_INVALID, "serial 0: irq 20");
    p = (VmmSerialPort){ 0xfffc, 4 };
    expect_config_error(&bad, VMM_ERROR_INVALID, "serial 0: port");
}

static void test_gdt(void)
{
    g_assert_cmphex(vmm_gdt_entry(0xa09b, 0, 0xfffff), ==, 0x00af9b000000ffffULL);
    g_assert_cmphex(vmm_gdt_entry(0xc09b, 0, 0xfffff), ==, 0x00cf9b000000ffffULL);
    g_assert_cmphex(vmm_gdt_entry(0xc093, 0, 0xfffff), ==, 0x00cf93000000ffffULL);
    g_assert_cmphex(vmm_gdt_entry(0x008b, 0x12345678, 0x67), ==, 0x12008b3456780067ULL);

    VmmSegment s = vmm_segment_from_gdt(0x00af9b000000ffffULL, 0x10);
    g_assert_cmpuint(s.l, ==, 1);
    g_assert_cmpuint(s.db, ==, 0);
    g_assert_cmpuint(s.type, ==, 0xb);
    assert_segment_flat(&s, 0x10);
    s = vmm_segment_from_gdt(0x00cf9b000000ffffULL, 0x08);
    g_assert_cmpuint(s.l, ==, 0);
    g_assert_cmpuint(s.db, ==, 1);
    assert_segment_flat(&s, 0x08);
    s = vmm_segment_from_gdt(0x12008b3456780067ULL, 0x20);
    g_assert_cmphex(s.base, ==, 0x12345678);
    g_assert_cmphex(s.limit, ==, 0x67);
    g_assert_cmpuint(s.type, ==, 0xb);
    g_assert_cmpuint(s.s, ==, 0);
    g_assert_cmpuint(s.g, ==, 0);
    g_assert_cmpuint(s.present, ==, 1);
    s = vmm_segment_from_gdt(0, 0);
    g_assert_cmpuint(s.unusable, ==, 1);
}

/* ---- bzImage ------------------------------------------------------------ */

static void assert_long_mode_state(const guint8 *ram, const VmmBootInfo *info)
{
    const VmmBootCpuState *cpu = &info->cpu;
    g_assert_cmpuint(info->kind, ==, VMM_BOOT_BZIMAGE);
    g_assert_cmphex(cpu->rip, ==, info->kernel_start + 0x200);
    g_assert_cmphex(cpu->rsi, ==, VMM_ZERO_PAGE_ADDR);
    g_assert_cmphex(cpu->cr0 & (VMM_CR0_PE | VMM_CR0_PG), ==, VMM_CR0_PE | VMM_CR0_PG);
    g_assert_cmphex(cpu->cr4 & VMM_CR4_PAE, ==, VMM_CR4_PAE);
    g_assert_cmphex(cpu->efer, ==, VMM_EFER_LME | VMM_EFER_LMA);
    g_assert_cmphex(cpu->cr3, ==, VMM_PML4_ADDR);
    g_assert_cmphex(cpu->rflags & (1 << 9), ==, 0);
    /* __BOOT_CS and __BOOT_DS of boot.rst */
    g_assert_cmpuint(cpu->cs.selector, ==, 0x10);
    g_assert_cmpuint(cpu->cs.l, ==, 1);
    assert_segment_flat(&cpu->cs, 0x10);
    assert_segment_flat(&cpu->ds, 0x18);
    assert_segment_flat(&cpu->es, 0x18);
    assert_segment_flat(&cpu->ss, 0x18);
    g_assert_cmpuint(cpu->tr.type, ==, 0xb);
    g_assert_cmpuint(cpu->ldt.unusable, ==, 1);
    assert_gdt_matches(ram, cpu);
    /* identity map over everything the kernel touches while it starts */
    guint64 probes[] = { 0, VMM_ZERO_PAGE_ADDR, VMM_CMDLINE_ADDR, info->kernel_start,
                         info->kernel_end - 1, info->initrd_addr, VMM_MMIO_HOLE_START - 1,
                         0xfee00000, 0xffffffff };
    for (guint i = 0; i < G_N_ELEMENTS(probes); i++)
        g_assert_cmphex(translate(ram, cpu->cr3, probes[i]), ==, probes[i]);
}

static void assert_zero_page_e820(const guint8 *bp, guint64 ram_size)
{
    VmmE820Entry e[BP_E820_TABLE_MAX];
    guint n = bp[BP_E820_ENTRIES];
    g_assert_cmpuint(n, >=, 1);
    g_assert_cmpuint(n, <=, VMM_E820_MAX);
    for (guint i = 0; i < n; i++) {
        const guint8 *p = bp + BP_E820_TABLE + 20 * i;
        e[i] = (VmmE820Entry){ vmm_get_le64(p), vmm_get_le64(p + 8), vmm_get_le32(p + 16) };
    }
    assert_e820_sane(e, n, ram_size);
}

static void test_bzimage_debian(void)
{
    g_autoptr(GBytes) img_bytes = read_debian_bzimage();
    if (!img_bytes)
        return;
    gsize ksize;
    const guint8 *k = g_bytes_get_data(img_bytes, &ksize);
    Ram r = ram_new(256 * MiB);
    VmmGuestConfig cfg = config_for(r.size);
    guint8 initrd[3 * 4096 + 123];
    for (guint i = 0; i < sizeof(initrd); i++)
        initrd[i] = (guint8)(i * 7 + 1);
    const char *cmdline = "console=ttyS0 reboot=t panic=-1 root=/dev/vda";
    VmmBootImages img = { .kernel = k, .kernel_size = ksize, .initrd = initrd,
                          .initrd_size = sizeof(initrd), .cmdline = cmdline, .rsdp_addr = VMM_ACPI_START };
    VmmBootInfo info;
    g_autoptr(GError) err = NULL;

    g_assert_true(vmm_boot_load(&cfg, &img, r.ram, r.size, &info, &err));
    g_assert_no_error(err);

    const guint8 *bp = r.ram + VMM_ZERO_PAGE_ADDR;
    guint setup_sects = k[0x1f1] ? k[0x1f1] : 4;
    gsize pm_off = (setup_sects + 1) * 512;
    guint64 pref = vmm_get_le64(k + 0x258);
    guint32 init_size = vmm_get_le32(k + 0x260);
    guint32 initrd_max = vmm_get_le32(k + 0x22c);

    /* header copied, loader fields set */
    g_assert_cmpmem(bp + 0x202, 4, "HdrS", 4);
    g_assert_cmphex(vmm_get_le16(bp + 0x206), ==, vmm_get_le16(k + 0x206));
    g_assert_cmphex(vmm_get_le16(bp + 0x1fe), ==, 0xaa55);
    g_assert_cmphex(bp[0x210], ==, 0xff);
    g_assert_cmphex(bp[0x211] & 1, ==, 1);
    g_assert_cmphex(vmm_get_le64(bp + 0x258), ==, pref);
    g_assert_cmphex(vmm_get_le32(bp + 0x260), ==, init_size);
    g_assert_cmphex(vmm_get_le64(bp + 0x070), ==, VMM_ACPI_START);

    /* kernel at pref_address, the 64-bit entry 0x200 in */
    g_assert_cmphex(info.kernel_start, ==, pref);
    g_assert_cmphex(info.kernel_end, >=, pref + init_size);
    g_assert_cmpmem(r.ram + pref, ksize - pm_off, k + pm_off, ksize - pm_off);

    /* command line */
    g_assert_cmphex(vmm_get_le32(bp + 0x228), ==, VMM_CMDLINE_ADDR);
    g_assert_cmpstr((const char *)r.ram + VMM_CMDLINE_ADDR, ==, cmdline);

    /* initrd: top of low RAM, page-aligned, below initrd_addr_max, above init_size */
    guint64 rd = vmm_get_le32(bp + 0x218) | ((guint64)vmm_get_le32(bp + 0x0c0) << 32);
    g_assert_cmphex(rd, ==, info.initrd_addr);
    g_assert_cmpuint(vmm_get_le32(bp + 0x21c), ==, sizeof(initrd));
    g_assert_cmphex(rd % 4096, ==, 0);
    g_assert_cmphex(rd + sizeof(initrd), <=, r.size);
    g_assert_cmphex(r.size - (rd + sizeof(initrd)), <, 4096);
    g_assert_cmphex(rd + sizeof(initrd) - 1, <=, initrd_max);
    g_assert_cmphex(rd, >=, pref + init_size);
    g_assert_cmpmem(r.ram + rd, sizeof(initrd), initrd, sizeof(initrd));

    assert_zero_page_e820(bp, r.size);
    assert_long_mode_state(r.ram, &info);
    ram_free(&r);
}

typedef struct {
    guint8 setup_sects;
    guint16 version;
    guint16 xloadflags;
    guint32 cmdline_size;
    guint32 initrd_addr_max;
    guint64 pref_address;
    guint32 init_size;
    gsize payload;
} FakeBz;

static const FakeBz fake_default = {
    .setup_sects = 0, .version = 0x020f, .xloadflags = 1, .cmdline_size = 255,
    .initrd_addr_max = 0x37ffffff, .pref_address = 0x200000, .init_size = 0x400000, .payload = 5000,
};

/* A bzImage that has a setup header and nothing else the loader reads. */
static GByteArray *fake_bzimage(const FakeBz *f)
{
    guint sects = f->setup_sects ? f->setup_sects : 4;
    gsize size = (sects + 1) * 512 + f->payload;
    GByteArray *a = g_byte_array_sized_new(size);
    g_byte_array_set_size(a, size);
    guint8 *k = a->data;
    memset(k, 0, size);
    k[0x1f1] = f->setup_sects;
    vmm_put_le16(k + 0x1fe, 0xaa55);
    k[0x200] = 0xeb;
    k[0x201] = 0x6a;                    /* header ends at 0x26c */
    memcpy(k + 0x202, "HdrS", 4);
    vmm_put_le16(k + 0x206, f->version);
    k[0x211] = 1;
    vmm_put_le32(k + 0x22c, f->initrd_addr_max);
    vmm_put_le32(k + 0x230, 0x200000);
    k[0x234] = 1;
    vmm_put_le16(k + 0x236, f->xloadflags);
    vmm_put_le32(k + 0x238, f->cmdline_size);
    vmm_put_le64(k + 0x258, f->pref_address);
    vmm_put_le32(k + 0x260, f->init_size);
    for (gsize i = 0; i < f->payload; i++)
        k[(sects + 1) * 512 + i] = (guint8)(i ^ 0x5a);
    return a;
}

static void test_bzimage_synthetic(void)
{
    g_autoptr(GByteArray) k = fake_bzimage(&fake_default);
    Ram r = ram_new(64 * MiB);
    VmmGuestConfig cfg = config_for(r.size);
    guint8 initrd[100];
    memset(initrd, 0xab, sizeof(initrd));
    VmmBootImages img = { .kernel = k->data, .kernel_size = k->len, .initrd = initrd,
                          .initrd_size = sizeof(initrd), .cmdline = NULL };
    VmmBootInfo info;
    g_autoptr(GError) err = NULL;

    memset(r.ram + VMM_CMDLINE_ADDR, 'x', 64);   /* stale bytes from a previous boot */
    g_assert_true(vmm_boot_load_bzimage(&cfg, &img, r.ram, r.size, &info, &err));
    g_assert_no_error(err);
    /* setup_sects 0 means 4 */
    g_assert_cmpmem(r.ram + 0x200000, fake_default.payload, k->data + 5 * 512, fake_default.payload);
    g_assert_cmphex(info.entry, ==, 0x200200);
    g_assert_cmphex(info.kernel_end, ==, 0x600000);
    g_assert_cmphex(info.initrd_addr, ==, 64 * MiB - 4096);
    g_assert_cmpmem(r.ram + info.initrd_addr, sizeof(initrd), initrd, sizeof(initrd));
    g_assert_cmpstr((const char *)r.ram + VMM_CMDLINE_ADDR, ==, "");
    g_assert_cmphex(vmm_get_le64(r.ram + VMM_ZERO_PAGE_ADDR + 0x070), ==, 0);
    assert_long_mode_state(r.ram, &info);

    /* initrd_addr_max below the top of RAM caps the initrd */
    FakeBz f = fake_default;
    f.initrd_addr_max = 0x01ffffff;
    g_autoptr(GByteArray) k2 = fake_bzimage(&f);
    img.kernel = k2->data;
    img.kernel_size = k2->len;
    g_assert_true(vmm_boot_load_bzimage(&cfg, &img, r.ram, r.size, &info, &err));
    g_assert_no_error(err);
    g_assert_cmphex(info.initrd_addr, ==, 0x2000000 - 4096);
    ram_free(&r);
}

static void expect_bz_error(const FakeBz *f, gsize truncate_to, const VmmBootImages *extra,
                            gsize ram_size, int code, const char *needle)
{
    g_autoptr(GByteArray) k = fake_bzimage(f);
    if (truncate_to)
        g_byte_array_set_size(k, truncate_to);
    Ram r = ram_new(64 * MiB);
    VmmGuestConfig cfg = config_for(ram_size ? ram_size : r.size);
    VmmBootImages img = extra ? *extra : (VmmBootImages){ 0 };
    img.kernel = k->data;
    img.kernel_size = k->len;
    VmmBootInfo info;
    g_autoptr(GError) err = NULL;
    g_assert_false(vmm_boot_load(&cfg, &img, r.ram, r.size, &info, &err));
    g_assert_error(err, VMM_ERROR, code);
    if (!strstr(err->message, needle))
        g_error("error \"%s\" does not mention \"%s\"", err->message, needle);
    ram_free(&r);
}

static void test_bzimage_errors(void)
{
    FakeBz f = fake_default;
    expect_bz_error(&f, 0x200, NULL, 0, VMM_ERROR_INVALID, "not a bzImage");
    f.version = 0x020b;
    expect_bz_error(&f, 0, NULL, 0, VMM_ERROR_UNSUPPORTED, "2.11");
    f = fake_default;
    f.xloadflags = 0;
    expect_bz_error(&f, 0, NULL, 0, VMM_ERROR_UNSUPPORTED, "XLF_KERNEL_64");
    f = fake_default;
    f.setup_sects = 200;
    f.payload = 0;
    expect_bz_error(&f, 0x1000, NULL, 0, VMM_ERROR_INVALID, "setup sectors");
    f = fake_default;
    f.pref_address = 0x1000;
    expect_bz_error(&f, 0, NULL, 0, VMM_ERROR_UNSUPPORTED, "pref_address");
    f = fake_default;
    f.init_size = 0x7000000;    /* 112 MiB in a 64 MiB guest */
    expect_bz_error(&f, 0, NULL, 0, VMM_ERROR_TOO_BIG, "init_size");
    f = fake_default;
    f.cmdline_size = 10;
    VmmBootImages long_cmdline = { .cmdline = "console=ttyS0" };
    expect_bz_error(&f, 0, &long_cmdline, 0, VMM_ERROR_TOO_BIG, "command line");
    static guint8 big_initrd[62 * MiB];
    VmmBootImages too_big = { .initrd = big_initrd, .initrd_size = sizeof(big_initrd) };
    expect_bz_error(&fake_default, 0, &too_big, 0, VMM_ERROR_TOO_BIG, "initrd");
    expect_bz_error(&fake_default, 0, NULL, 32 * MiB, VMM_ERROR_INVALID, "buffer");
    /* a setup header too short to hold init_size */
    g_autoptr(GByteArray) k = fake_bzimage(&fake_default);
    k->data[0x201] = 0x10;
    Ram r = ram_new(64 * MiB);
    VmmGuestConfig cfg = config_for(r.size);
    VmmBootImages img = { .kernel = k->data, .kernel_size = k->len };
    VmmBootInfo info;
    g_autoptr(GError) err = NULL;
    g_assert_false(vmm_boot_load(&cfg, &img, r.ram, r.size, &info, &err));
    g_assert_error(err, VMM_ERROR, VMM_ERROR_INVALID);
    ram_free(&r);
}

/* ---- PVH ---------------------------------------------------------------- */

typedef struct {
    guint64 entry;
    guint desc_size;            /* of the PVH note: 4 or 8; 0 = no note */
    guint64 seg1_paddr;
    guint64 seg2_offset_override;
    guint8 elf_class;
} FakeElf;

static const FakeElf elf_default = {
    .entry = 0x1000040, .desc_size = 4, .seg1_paddr = 0x1000000, .elf_class = 2,
};

static void put_note(GByteArray *a, const char *name, guint32 type, const guint8 *desc, guint32 descsz)
{
    guint32 namesz = strlen(name) + 1;
    guint8 hdr[12];
    vmm_put_le32(hdr, namesz);
    vmm_put_le32(hdr + 4, descsz);
    vmm_put_le32(hdr + 8, type);
    g_byte_array_append(a, hdr, 12);
    guint8 pad[8] = { 0 };
    g_byte_array_append(a, (const guint8 *)name, namesz);
    g_byte_array_append(a, pad, ((namesz + 3) & ~3u) - namesz);
    g_byte_array_append(a, desc, descsz);
    g_byte_array_append(a, pad, ((descsz + 3) & ~3u) - descsz);
}

static void put_phdr(guint8 *p, guint32 type, guint64 off, guint64 paddr, guint64 filesz, guint64 memsz)
{
    vmm_put_le32(p, type);
    vmm_put_le64(p + 8, off);
    vmm_put_le64(p + 16, paddr | 0xffffffff80000000ULL);   /* vaddr: unused */
    vmm_put_le64(p + 24, paddr);
    vmm_put_le64(p + 32, filesz);
    vmm_put_le64(p + 40, memsz);
}

/* ELF64 with a PT_NOTE (a GNU note, then Xen's PHYS32_ENTRY) and two
 * PT_LOADs: 0x100 bytes of text, and 0x10 bytes of data plus bss. */
static GByteArray *fake_elf(const FakeElf *f)
{
    g_autoptr(GByteArray) notes = g_byte_array_new();
    guint8 gnu[20] = { 1, 2, 3 };
    put_note(notes, "GNU", 3, gnu, sizeof(gnu));
    guint8 entry[8];
    vmm_put_le64(entry, f->entry);
    if (f->desc_size)
        put_note(notes, "Xen", 18, entry, f->desc_size);
    put_note(notes, "Xen", 17, entry, 4);

    const guint phnum = 3, text_off = 0x200, data_off = 0x300, note_off = 0x400;
    GByteArray *a = g_byte_array_new();
    g_byte_array_set_size(a, note_off + notes->len);
    guint8 *k = a->data;
    memset(k, 0, a->len);
    memcpy(k, "\177ELF", 4);
    k[4] = f->elf_class;
    k[5] = 1;
    k[6] = 1;
    vmm_put_le16(k + 16, 2);            /* ET_EXEC */
    vmm_put_le16(k + 18, 62);
    vmm_put_le64(k + 24, 0xffffffff81000000ULL);
    vmm_put_le64(k + 32, 64);
    vmm_put_le16(k + 52, 64);
    vmm_put_le16(k + 54, 56);
    vmm_put_le16(k + 56, phnum);
    put_phdr(k + 64, 4, note_off, 0x1000400, notes->len, notes->len);
    put_phdr(k + 64 + 56, 1, text_off, f->seg1_paddr, 0x100, 0x100);
    put_phdr(k + 64 + 112, 1, f->seg2_offset_override ? f->seg2_offset_override : data_off,
             0x1200000, 0x10, 0x2000);
    for (guint i = 0; i < 0x100; i++)
        k[text_off + i] = (guint8)(0x90 + i);
    memset(k + data_off, 0xd0, 0x10);
    memcpy(k + note_off, notes->data, notes->len);
    return a;
}

static void assert_pvh_start_info(const guint8 *ram, const VmmBootInfo *info, guint64 ram_size,
                                  const char *cmdline)
{
    const guint8 *si = ram + VMM_PVH_INFO_ADDR;
    g_assert_cmphex(vmm_get_le32(si), ==, 0x336ec578);
    g_assert_cmpuint(vmm_get_le32(si + 4), ==, 1);
    g_assert_cmphex(vmm_get_le64(si + 24), ==, VMM_CMDLINE_ADDR);
    g_assert_cmpstr((const char *)ram + vmm_get_le64(si + 24), ==, cmdline);
    g_assert_cmphex(vmm_get_le64(si + 32), ==, VMM_ACPI_START);
    if (info->initrd_size) {
        g_assert_cmpuint(vmm_get_le32(si + 12), ==, 1);
        const guint8 *mod = ram + vmm_get_le64(si + 16);
        g_assert_cmphex(vmm_get_le64(mod), ==, info->initrd_addr);
        g_assert_cmphex(vmm_get_le64(mod + 8), ==, info->initrd_size);
        g_assert_cmphex(vmm_get_le64(mod + 16), ==, 0);
    } else {
        g_assert_cmpuint(vmm_get_le32(si + 12), ==, 0);
    }
    guint n = vmm_get_le32(si + 48);
    const guint8 *mm = ram + vmm_get_le64(si + 40);
    VmmE820Entry got[VMM_E820_MAX], want[VMM_E820_MAX];
    g_assert_cmpuint(n, ==, vmm_e820_build(ram_size, want));
    for (guint i = 0; i < n; i++) {
        got[i] = (VmmE820Entry){ vmm_get_le64(mm + 24 * i), vmm_get_le64(mm + 24 * i + 8),
                                 vmm_get_le32(mm + 24 * i + 16) };
        g_assert_cmphex(got[i].addr, ==, want[i].addr);
        g_assert_cmphex(got[i].size, ==, want[i].size);
        g_assert_cmpuint(got[i].type, ==, want[i].type);
    }
    assert_e820_sane(got, n, ram_size);
}

static void assert_pvh_cpu(const guint8 *ram, const VmmBootInfo *info)
{
    const VmmBootCpuState *cpu = &info->cpu;
    g_assert_cmpuint(info->kind, ==, VMM_BOOT_PVH);
    g_assert_cmphex(cpu->rip, ==, info->entry);
    g_assert_cmphex(cpu->rbx, ==, VMM_PVH_INFO_ADDR);
    g_assert_cmphex(cpu->cr0 & VMM_CR0_PE, ==, VMM_CR0_PE);
    g_assert_cmphex(cpu->cr0 & VMM_CR0_PG, ==, 0);
    g_assert_cmphex(cpu->cr4, ==, 0);
    g_assert_cmphex(cpu->efer, ==, 0);
    g_assert_cmphex(cpu->rflags & ((1 << 9) | (1 << 8) | (1 << 17)), ==, 0);
    g_assert_cmpuint(cpu->cs.db, ==, 1);
    g_assert_cmpuint(cpu->cs.l, ==, 0);
    assert_segment_flat(&cpu->cs, VMM_SEL_CODE32);
    assert_segment_flat(&cpu->ds, VMM_SEL_DATA);
    assert_segment_flat(&cpu->es, VMM_SEL_DATA);
    /* the ABI's TR: a 32-bit busy TSS, base 0, limit 0x67 */
    g_assert_cmpuint(cpu->tr.type, ==, 0xb);
    g_assert_cmphex(cpu->tr.base, ==, 0);
    g_assert_cmphex(cpu->tr.limit, ==, 0x67);
    assert_gdt_matches(ram, cpu);
}

static void test_pvh_synthetic(void)
{
    Ram r = ram_new(64 * MiB);
    VmmGuestConfig cfg = config_for(r.size);
    guint8 initrd[5000];
    memset(initrd, 0x42, sizeof(initrd));
    const char *cmdline = "console=ttyS0 quiet";
    VmmBootImages img = { .initrd = initrd, .initrd_size = sizeof(initrd), .cmdline = cmdline,
                          .rsdp_addr = VMM_ACPI_START };
    VmmBootInfo info;
    g_autoptr(GError) err = NULL;

    for (guint desc = 4; desc <= 8; desc += 4) {
        FakeElf f = elf_default;
        f.desc_size = desc;
        g_autoptr(GByteArray) k = fake_elf(&f);
        img.kernel = k->data;
        img.kernel_size = k->len;
        memset(r.ram + 0x1200000, 0xee, 0x3000);    /* the bss must come out zero */
        g_assert_true(vmm_boot_load(&cfg, &img, r.ram, r.size, &info, &err));
        g_assert_no_error(err);
        g_assert_cmphex(info.entry, ==, 0x1000040);
        g_assert_cmphex(info.kernel_start, ==, 0x1000000);
        g_assert_cmphex(info.kernel_end, ==, 0x1202000);
        g_assert_cmpmem(r.ram + 0x1000000, 0x100, k->data + 0x200, 0x100);
        g_assert_cmpmem(r.ram + 0x1200000, 0x10, k->data + 0x300, 0x10);
        for (guint i = 0x10; i < 0x2000; i++)
            g_assert_cmphex(r.ram[0x1200000 + i], ==, 0);
        g_assert_cmphex(r.ram[0x1202000], ==, 0xee);
        g_assert_cmphex(info.initrd_addr, ==, (64 * MiB - sizeof(initrd)) & ~4095ULL);
        g_assert_cmpmem(r.ram + info.initrd_addr, sizeof(initrd), initrd, sizeof(initrd));
        assert_pvh_start_info(r.ram, &info, r.size, cmdline);
        assert_pvh_cpu(r.ram, &info);
    }

    /* no initrd, no command line */
    g_autoptr(GByteArray) k = fake_elf(&elf_default);
    VmmBootImages bare = { .kernel = k->data, .kernel_size = k->len, .rsdp_addr = VMM_ACPI_START };
    g_assert_true(vmm_boot_load_pvh(&cfg, &bare, r.ram, r.size, &info, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(info.initrd_size, ==, 0);
    assert_pvh_start_info(r.ram, &info, r.size, "");
    ram_free(&r);
}

/* Linux reboots our hardware-reduced ACPI machine through the real-mode reset
 * vector; the stub there must pulse the i8042 reset line and halt. */
static void test_reset_vector(void)
{
    static const guint8 stub[] = { 0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd };
    Ram r = ram_new(64 * MiB);
    VmmGuestConfig cfg = config_for(r.size);
    g_autoptr(GByteArray) k = fake_elf(&elf_default);
    VmmBootImages img = { .kernel = k->data, .kernel_size = k->len, .rsdp_addr = VMM_ACPI_START };
    VmmBootInfo info;
    g_autoptr(GError) err = NULL;
    memset(r.ram + VMM_RESET_VECTOR_ADDR, 0xcc, 16);
    g_assert_true(vmm_boot_load(&cfg, &img, r.ram, r.size, &info, &err));
    g_assert_no_error(err);
    g_assert_cmpmem(r.ram + VMM_RESET_VECTOR_ADDR, sizeof(stub), stub, sizeof(stub));
    for (guint i = sizeof(stub); i < 16; i++)
        g_assert_cmphex(r.ram[VMM_RESET_VECTOR_ADDR + i], ==, 0);
    ram_free(&r);
}

static void expect_pvh_error(GByteArray *k, int code, const char *needle)
{
    Ram r = ram_new(64 * MiB);
    VmmGuestConfig cfg = config_for(r.size);
    VmmBootImages img = { .kernel = k->data, .kernel_size = k->len };
    VmmBootInfo info;
    g_autoptr(GError) err = NULL;
    g_assert_false(vmm_boot_load(&cfg, &img, r.ram, r.size, &info, &err));
    g_assert_error(err, VMM_ERROR, code);
    if (!strstr(err->message, needle))
        g_error("error \"%s\" does not mention \"%s\"", err->message, needle);
    ram_free(&r);
}

static void test_pvh_errors(void)
{
    FakeElf f = elf_default;
    f.desc_size = 0;
    g_autoptr(GByteArray) no_note = fake_elf(&f);
    expect_pvh_error(no_note, VMM_ERROR_UNSUPPORTED, "PVH entry note");

    f = elf_default;
    f.elf_class = 1;
    g_autoptr(GByteArray) elf32 = fake_elf(&f);
    expect_pvh_error(elf32, VMM_ERROR_UNSUPPORTED, "x86-64");

    f = elf_default;
    f.desc_size = 2;
    g_autoptr(GByteArray) short_desc = fake_elf(&f);
    expect_pvh_error(short_desc, VMM_ERROR_INVALID, "not 4 or 8");

    f = elf_default;
    f.entry = 0x3000000;
    g_autoptr(GByteArray) far_entry = fake_elf(&f);
    expect_pvh_error(far_entry, VMM_ERROR_INVALID, "outside the loaded kernel");

    f = elf_default;
    f.seg1_paddr = 0x80000;
    f.entry = 0x80040;
    g_autoptr(GByteArray) low_seg = fake_elf(&f);
    expect_pvh_error(low_seg, VMM_ERROR_TOO_BIG, "ELF segments");

    f = elf_default;
    f.seg1_paddr = 0x8000000;   /* 128 MiB in a 64 MiB guest */
    f.entry = 0x8000040;
    g_autoptr(GByteArray) high_seg = fake_elf(&f);
    expect_pvh_error(high_seg, VMM_ERROR_TOO_BIG, "ELF segments");

    f = elf_default;
    f.seg2_offset_override = 0x100000;
    g_autoptr(GByteArray) seg_out = fake_elf(&f);
    expect_pvh_error(seg_out, VMM_ERROR_INVALID, "outside the file");

    g_autoptr(GByteArray) ph_out = fake_elf(&elf_default);
    vmm_put_le64(ph_out->data + 32, ph_out->len - 10);
    expect_pvh_error(ph_out, VMM_ERROR_INVALID, "program header");

    /* a note whose descsz runs past the PT_NOTE segment */
    g_autoptr(GByteArray) note_run = fake_elf(&elf_default);
    vmm_put_le32(note_run->data + 0x400 + 4, 0x10000);
    expect_pvh_error(note_run, VMM_ERROR_INVALID, "note");

    /* filesz over memsz */
    g_autoptr(GByteArray) fs = fake_elf(&elf_default);
    vmm_put_le64(fs->data + 64 + 112 + 40, 4);
    expect_pvh_error(fs, VMM_ERROR_INVALID, "file size");

    g_autoptr(GByteArray) truncated = fake_elf(&elf_default);
    g_byte_array_set_size(truncated, 40);
    expect_pvh_error(truncated, VMM_ERROR_INVALID, "not");
}

/* ---- The vmlinux inside Debian's bzImage -------------------------------- */

typedef struct {
    GMainLoop *loop;
    GBytes *out;
    GError *error;
    gboolean done;
} FilterRun;

static void filter_done(GObject *src, GAsyncResult *res, gpointer data)
{
    FilterRun *run = data;
    g_subprocess_communicate_finish(G_SUBPROCESS(src), res, &run->out, NULL, &run->error);
    run->done = TRUE;
    g_main_loop_quit(run->loop);
}

static gboolean filter_timeout(gpointer data)
{
    g_main_loop_quit(((FilterRun *)data)->loop);
    return G_SOURCE_REMOVE;
}

/* Pipes INPUT through ARGV and returns its stdout, or NULL after
 * FILTER_TIMEOUT_S (the child is killed) or if it could not run. */
static GBytes *run_filter(const char *const *argv, GBytes *input)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GSubprocess) p = g_subprocess_newv(argv, G_SUBPROCESS_FLAGS_STDIN_PIPE |
                                                 G_SUBPROCESS_FLAGS_STDOUT_PIPE |
                                                 G_SUBPROCESS_FLAGS_STDERR_SILENCE, &err);
    if (!p)
        return NULL;
    g_autoptr(GMainContext) ctx = g_main_context_new();
    g_main_context_push_thread_default(ctx);
    FilterRun run = { .loop = g_main_loop_new(ctx, FALSE) };
    g_subprocess_communicate_async(p, input, NULL, filter_done, &run);
    GSource *t = g_timeout_source_new_seconds(FILTER_TIMEOUT_S);
    g_source_set_callback(t, filter_timeout, &run, NULL);
    g_source_attach(t, ctx);
    g_main_loop_run(run.loop);
    g_source_destroy(t);
    g_source_unref(t);
    if (!run.done) {
        g_subprocess_force_exit(p);
        g_subprocess_wait(p, NULL, NULL);
        while (!run.done)
            g_main_context_iteration(ctx, TRUE);
    }
    g_main_context_pop_thread_default(ctx);
    g_main_loop_unref(run.loop);
    g_clear_error(&run.error);
    return run.out;
}

/* The payload_offset/payload_length fields locate the compressed vmlinux. */
static GBytes *extract_vmlinux(GBytes *bz)
{
    gsize size;
    const guint8 *k = g_bytes_get_data(bz, &size);
    guint sects = k[0x1f1] ? k[0x1f1] : 4;
    gsize off = (sects + 1) * 512 + vmm_get_le32(k + 0x248);
    gsize len = vmm_get_le32(k + 0x24c);
    g_assert_cmpuint(off + len, <=, size);
    const guint8 *p = k + off;
    const char *xz[] = { "xz", "-dc", "--single-stream", NULL };
    const char *zstd[] = { "zstd", "-qdc", NULL };
    const char *gz[] = { "gzip", "-dc", NULL };
    const char *const *argv = NULL;
    if (len > 6 && memcmp(p, "\xfd" "7zXZ\0", 6) == 0)
        argv = xz;
    else if (len > 4 && memcmp(p, "\x28\xb5\x2f\xfd", 4) == 0)
        argv = zstd;
    else if (len > 3 && memcmp(p, "\x1f\x8b\x08", 3) == 0)
        argv = gz;
    g_autofree char *prog = argv ? g_find_program_in_path(argv[0]) : NULL;
    if (!prog)
        return NULL;
    g_autoptr(GBytes) payload = g_bytes_new_from_bytes(bz, off, len);
    GBytes *out = run_filter(argv, payload);
    if (out && (g_bytes_get_size(out) < 64 || memcmp(g_bytes_get_data(out, NULL), "\177ELF", 4))) {
        g_bytes_unref(out);
        return NULL;
    }
    return out;
}

static void test_pvh_debian(void)
{
    g_autoptr(GBytes) bz = read_debian_bzimage();
    if (!bz)
        return;
    g_autoptr(GBytes) vmlinux = extract_vmlinux(bz);
    if (!vmlinux) {
        g_test_skip("could not unpack the vmlinux in the bzImage");
        return;
    }
    gsize ksize;
    const guint8 *k = g_bytes_get_data(vmlinux, &ksize);
    Ram r = ram_new(256 * MiB);
    VmmGuestConfig cfg = config_for(r.size);
    guint8 initrd[4096 * 2];
    memset(initrd, 0x17, sizeof(initrd));
    VmmBootImages img = { .kernel = k, .kernel_size = ksize, .initrd = initrd,
                          .initrd_size = sizeof(initrd), .cmdline = "console=ttyS0",
                          .rsdp_addr = VMM_ACPI_START };
    VmmBootInfo info;
    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_boot_load(&cfg, &img, r.ram, r.size, &info, &err));
    g_assert_no_error(err);
    /* x86-64 Linux runs from LOAD_PHYSICAL_ADDR (16 MiB on Debian) */
    g_assert_cmphex(info.kernel_start, >=, MiB);
    g_assert_cmphex(info.entry, >, info.kernel_start);
    g_assert_cmphex(info.entry, <, info.kernel_end);
    g_assert_cmphex(info.initrd_addr, >=, info.kernel_end);
    g_assert_cmpmem(r.ram + info.initrd_addr, sizeof(initrd), initrd, sizeof(initrd));
    /* the first PT_LOAD landed where its header says */
    ElfPhdr ph = { 0 };
    for (guint i = 0; i < vmm_get_le16(k + 56); i++) {
        g_assert_true(elf_phdr(k, ksize, i, &ph, NULL));
        if (ph.type == PT_LOAD)
            break;
    }
    g_assert_cmpuint(ph.type, ==, PT_LOAD);
    g_assert_cmpmem(r.ram + ph.paddr, MIN(ph.filesz, 4096), k + ph.offset, MIN(ph.filesz, 4096));
    assert_pvh_start_info(r.ram, &info, r.size, "console=ttyS0");
    assert_pvh_cpu(r.ram, &info);
    ram_free(&r);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/boot/e820/low-only", test_e820_low_only);
    g_test_add_func("/boot/e820/high", test_e820_high);
    g_test_add_func("/boot/ram-ptr", test_ram_ptr);
    g_test_add_func("/boot/config-check", test_config_check);
    g_test_add_func("/boot/gdt", test_gdt);
    g_test_add_func("/boot/bzimage/debian", test_bzimage_debian);
    g_test_add_func("/boot/bzimage/synthetic", test_bzimage_synthetic);
    g_test_add_func("/boot/bzimage/errors", test_bzimage_errors);
    g_test_add_func("/boot/pvh/synthetic", test_pvh_synthetic);
    g_test_add_func("/boot/pvh/errors", test_pvh_errors);
    g_test_add_func("/boot/pvh/debian", test_pvh_debian);
    g_test_add_func("/boot/reset-vector", test_reset_vector);
    return g_test_run();
}
