/* Writes a tiny PVH guest: an ELF64 file with one PT_LOAD at 1 MiB and a
 * PT_NOTE holding Xen's XEN_ELFNOTE_PHYS32_ENTRY, whose 32-bit code prints
 * "VMM-TINY-OK\n" on COM1 (port 0x3f8, no polling: vmmd's UART transmits at
 * once) and then powers off through the ACPI sleep control register (SLP_EN
 * with SLP_TYP 5, acpi.h), followed by a HLT loop in case that is ignored.
 * With --no-poweroff it only prints and halts: a guest that runs until vmmd
 * is told to quit. With --reboot it resets itself through the i8042 (command
 * 0xfe on port 0x64) instead of powering off: it prints again on every boot.
 *
 *   make-tiny-pvh [--no-poweroff|--reboot] OUTPUT */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define LOAD_ADDR 0x100000u
#define CODE_OFFSET 0x100u
#define ACPI_SLEEP_CTL 0xfea00200u    /* VMM_ACPI_SLEEP_CTL_ADDR */
#define ACPI_S5_VALUE 0x34u           /* VMM_ACPI_SLP_EN | 5 << VMM_ACPI_SLP_TYP_SHIFT */
#define XEN_ELFNOTE_PHYS32_ENTRY 18

static void put16(uint8_t *p, uint16_t v) { p[0] = v; p[1] = v >> 8; }
static void put32(uint8_t *p, uint32_t v) { put16(p, v); put16(p + 2, v >> 16); }
static void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)v); put32(p + 4, v >> 32); }

enum { END_HALT, END_POWEROFF, END_REBOOT };

static size_t emit_code(uint8_t *c, int end)
{
    static const char msg[] = "VMM-TINY-OK\n";
    size_t n = 0;
    c[n++] = 0x66; c[n++] = 0xba; put16(c + n, 0x3f8); n += 2;     /* mov dx, 0x3f8 */
    for (const char *m = msg; *m; m++) {
        c[n++] = 0xb0; c[n++] = (uint8_t)*m;                       /* mov al, imm8 */
        c[n++] = 0xee;                                              /* out dx, al */
    }
    if (end == END_POWEROFF) {
        c[n++] = 0xb0; c[n++] = ACPI_S5_VALUE;                      /* mov al, S5 */
        c[n++] = 0xa2; put32(c + n, ACPI_SLEEP_CTL); n += 4;        /* mov [moffs32], al */
    } else if (end == END_REBOOT) {
        c[n++] = 0xb0; c[n++] = 0xfe;                               /* mov al, 0xfe */
        c[n++] = 0xe6; c[n++] = 0x64;                               /* out 0x64, al */
    }
    c[n++] = 0xf4;                                                  /* 1: hlt */
    c[n++] = 0xeb; c[n++] = 0xfd;                                   /* jmp 1b */
    return n;
}

static void emit_phdr(uint8_t *p, uint32_t type, uint32_t flags, uint64_t offset, uint64_t addr,
                      uint64_t size)
{
    put32(p, type);
    put32(p + 4, flags);
    put64(p + 8, offset);
    put64(p + 16, addr);        /* vaddr */
    put64(p + 24, addr);        /* paddr: what the PVH loader uses */
    put64(p + 32, size);        /* filesz */
    put64(p + 40, size);        /* memsz */
    put64(p + 48, type == 1 ? 0x1000 : 4);
}

int main(int argc, char **argv)
{
    uint8_t img[CODE_OFFSET + 256];
    memset(img, 0, sizeof(img));
    int end = END_POWEROFF;
    if (argc == 3 && strcmp(argv[1], "--no-poweroff") == 0)
        end = END_HALT;
    else if (argc == 3 && strcmp(argv[1], "--reboot") == 0)
        end = END_REBOOT;
    else if (argc != 2) {
        fprintf(stderr, "usage: %s [--no-poweroff|--reboot] OUTPUT\n", argv[0]);
        return 2;
    }
    const char *out = argv[argc - 1];
    size_t code_len = emit_code(img + CODE_OFFSET, end);
    const size_t phoff = 64, note_off = phoff + 2 * 56, note_len = 12 + 4 + 4;

    memcpy(img, "\177ELF", 4);
    img[4] = 2;                         /* ELFCLASS64 */
    img[5] = 1;                         /* little-endian */
    img[6] = 1;                         /* EV_CURRENT */
    put16(img + 16, 2);                 /* ET_EXEC */
    put16(img + 18, 62);                /* EM_X86_64 */
    put32(img + 20, 1);
    put64(img + 24, LOAD_ADDR);         /* e_entry (unused by PVH) */
    put64(img + 32, phoff);
    put16(img + 52, 64);                /* e_ehsize */
    put16(img + 54, 56);                /* e_phentsize */
    put16(img + 56, 2);                 /* e_phnum */
    emit_phdr(img + phoff, 1, 5, CODE_OFFSET, LOAD_ADDR, code_len);         /* PT_LOAD, R+X */
    emit_phdr(img + phoff + 56, 4, 4, note_off, 0, note_len);               /* PT_NOTE */

    uint8_t *note = img + note_off;
    put32(note, 4);                     /* namesz: "Xen\0" */
    put32(note + 4, 4);                 /* descsz */
    put32(note + 8, XEN_ELFNOTE_PHYS32_ENTRY);
    memcpy(note + 12, "Xen", 4);
    put32(note + 16, LOAD_ADDR);

    FILE *f = fopen(out, "wb");
    if (!f || fwrite(img, 1, CODE_OFFSET + code_len, f) != CODE_OFFSET + code_len || fclose(f) != 0) {
        perror(out);
        return 1;
    }
    return 0;
}
