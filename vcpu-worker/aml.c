/* AML encoding (ACPI 6.x, chapter 20 "ACPI Machine Language Specification"). */
#include "vcpu-worker/aml.h"

#include <string.h>

#define AML_ZERO_OP         0x00
#define AML_ONE_OP          0x01
#define AML_NAME_OP         0x08
#define AML_BYTE_PREFIX     0x0a
#define AML_WORD_PREFIX     0x0b
#define AML_DWORD_PREFIX    0x0c
#define AML_STRING_PREFIX   0x0d
#define AML_QWORD_PREFIX    0x0e
#define AML_SCOPE_OP        0x10
#define AML_BUFFER_OP       0x11
#define AML_PACKAGE_OP      0x12
#define AML_METHOD_OP       0x14
#define AML_DUAL_NAME       0x2e
#define AML_MULTI_NAME      0x2f
#define AML_EXT_OP          0x5b
#define AML_EXT_REGION      0x80
#define AML_EXT_FIELD       0x81
#define AML_EXT_DEVICE      0x82
#define AML_ROOT_CHAR       '\\'
#define AML_PARENT_CHAR     '^'
#define AML_LOCAL0_OP       0x60
#define AML_STORE_OP        0x70
#define AML_AND_OP          0x7b
#define AML_NOTIFY_OP       0x86
#define AML_LEQUAL_OP       0x93
#define AML_IF_OP           0xa0

#define RES_IRQ_NOFLAGS     0x22    /* small item 0x04, 2 bytes */
#define RES_IO              0x47    /* small item 0x08, 7 bytes */
#define RES_END_TAG         0x79    /* small item 0x0f, 1 byte */
#define RES_MEMORY32_FIXED  0x86
#define RES_EXT_INTERRUPT   0x89

static void append_byte(GByteArray *out, guint8 b)
{
    g_byte_array_append(out, &b, 1);
}

static void append_le(GByteArray *out, guint64 v, guint bytes)
{
    for (guint i = 0; i < bytes; i++)
        append_byte(out, (guint8)(v >> (8 * i)));
}

static void append_array(GByteArray *out, const GByteArray *a)
{
    if (a && a->len)
        g_byte_array_append(out, a->data, a->len);
}

/* The PkgLength encoding of VALUE: one byte up to 63, else a lead byte with
 * the count of following bytes and the low nibble, then 8 bits per byte. */
static void encode_pkg_value(GByteArray *out, gsize value)
{
    if (value < 0x40) {
        append_byte(out, (guint8)value);
        return;
    }
    guint extra = value < (1u << 12) ? 1 : value < (1u << 20) ? 2 : 3;
    append_byte(out, (guint8)((extra << 6) | (value & 0xf)));
    for (guint i = 0; i < extra; i++)
        append_byte(out, (guint8)(value >> (4 + 8 * i)));
}

void vmm_aml_pkg_length(GByteArray *out, gsize body_len)
{
    for (gsize n = 1; n <= 4; n++) {
        gsize total = body_len + n;
        gsize limit = n == 1 ? 0x40 : (gsize)1 << (4 + 8 * (n - 1));
        if (total < limit) {
            encode_pkg_value(out, total);
            return;
        }
    }
    g_return_if_reached();  /* 256 MiB of AML: not something we build */
}

static gboolean is_name_char(char c, gboolean lead)
{
    return (c >= 'A' && c <= 'Z') || c == '_' || (!lead && c >= '0' && c <= '9');
}

/* One NameSeg from SEG[0..len), padded with '_'. */
static gboolean append_name_seg(GByteArray *out, const char *seg, gsize len)
{
    if (len < 1 || len > 4 || !is_name_char(seg[0], TRUE))
        return FALSE;
    char buf[4] = { '_', '_', '_', '_' };
    for (gsize i = 0; i < len; i++) {
        if (!is_name_char(seg[i], i == 0))
            return FALSE;
        buf[i] = seg[i];
    }
    g_byte_array_append(out, (const guint8 *)buf, 4);
    return TRUE;
}

gboolean vmm_aml_name_string(GByteArray *out, const char *path)
{
    g_autoptr(GByteArray) tmp = g_byte_array_new();
    const char *p = path;

    if (*p == AML_ROOT_CHAR) {
        append_byte(tmp, AML_ROOT_CHAR);
        p++;
    } else {
        while (*p == AML_PARENT_CHAR)
            append_byte(tmp, *p++);
    }
    g_auto(GStrv) segs = *p ? g_strsplit(p, ".", -1) : g_new0(char *, 1);
    guint n = g_strv_length(segs);
    if (n > 255)
        return FALSE;
    if (n == 0)
        append_byte(tmp, AML_ZERO_OP);      /* NullName */
    else if (n == 2)
        append_byte(tmp, AML_DUAL_NAME);
    else if (n > 2) {
        append_byte(tmp, AML_MULTI_NAME);
        append_byte(tmp, (guint8)n);
    }
    for (guint i = 0; i < n; i++) {
        if (!append_name_seg(tmp, segs[i], strlen(segs[i])))
            return FALSE;
    }
    append_array(out, tmp);
    return TRUE;
}

void vmm_aml_integer(GByteArray *out, guint64 value)
{
    if (value == 0) {
        append_byte(out, AML_ZERO_OP);
    } else if (value == 1) {
        append_byte(out, AML_ONE_OP);
    } else if (value <= 0xff) {
        append_byte(out, AML_BYTE_PREFIX);
        append_le(out, value, 1);
    } else if (value <= 0xffff) {
        append_byte(out, AML_WORD_PREFIX);
        append_le(out, value, 2);
    } else if (value <= 0xffffffffu) {
        append_byte(out, AML_DWORD_PREFIX);
        append_le(out, value, 4);
    } else {
        append_byte(out, AML_QWORD_PREFIX);
        append_le(out, value, 8);
    }
}

void vmm_aml_string(GByteArray *out, const char *s)
{
    append_byte(out, AML_STRING_PREFIX);
    g_byte_array_append(out, (const guint8 *)s, strlen(s) + 1);
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

gboolean vmm_aml_eisaid(GByteArray *out, const char *id)
{
    if (strlen(id) != 7)
        return FALSE;
    guint32 v = 0;
    for (int i = 0; i < 3; i++) {
        if (id[i] < 'A' || id[i] > 'Z')
            return FALSE;
        v = (v << 5) | (guint32)(id[i] - '@');
    }
    for (int i = 3; i < 7; i++) {
        int d = hex_digit(id[i]);
        if (d < 0)
            return FALSE;
        v = (v << 4) | (guint32)d;
    }
    /* Three 5-bit letters and four nibbles, stored big-endian. */
    vmm_aml_integer(out, GUINT32_SWAP_LE_BE(v));
    return TRUE;
}

void vmm_aml_buffer(GByteArray *out, const guint8 *data, gsize len)
{
    g_autoptr(GByteArray) body = g_byte_array_new();
    vmm_aml_integer(body, len);
    if (len)
        g_byte_array_append(body, data, len);
    append_byte(out, AML_BUFFER_OP);
    vmm_aml_pkg_length(out, body->len);
    append_array(out, body);
}

void vmm_aml_package(GByteArray *out, guint n, const GByteArray *elements)
{
    g_return_if_fail(n <= 255);
    append_byte(out, AML_PACKAGE_OP);
    vmm_aml_pkg_length(out, 1 + (elements ? elements->len : 0));
    append_byte(out, (guint8)n);
    append_array(out, elements);
}

gboolean vmm_aml_name(GByteArray *out, const char *name, const GByteArray *value)
{
    g_autoptr(GByteArray) n = g_byte_array_new();
    if (!vmm_aml_name_string(n, name))
        return FALSE;
    append_byte(out, AML_NAME_OP);
    append_array(out, n);
    append_array(out, value);
    return TRUE;
}

gboolean vmm_aml_name_integer(GByteArray *out, const char *name, guint64 value)
{
    g_autoptr(GByteArray) v = g_byte_array_new();
    vmm_aml_integer(v, value);
    return vmm_aml_name(out, name, v);
}

gboolean vmm_aml_name_string_value(GByteArray *out, const char *name, const char *value)
{
    g_autoptr(GByteArray) v = g_byte_array_new();
    vmm_aml_string(v, value);
    return vmm_aml_name(out, name, v);
}

/* OPCODE(s) PkgLength NameString [PREFIX bytes] BODY */
static gboolean append_named_block(GByteArray *out, const guint8 *op, guint op_len,
                                   const char *name, const guint8 *extra, guint extra_len,
                                   const GByteArray *body)
{
    g_autoptr(GByteArray) inner = g_byte_array_new();
    if (!vmm_aml_name_string(inner, name))
        return FALSE;
    if (extra_len)
        g_byte_array_append(inner, extra, extra_len);
    append_array(inner, body);
    g_byte_array_append(out, op, op_len);
    vmm_aml_pkg_length(out, inner->len);
    append_array(out, inner);
    return TRUE;
}

gboolean vmm_aml_scope(GByteArray *out, const char *name, const GByteArray *body)
{
    static const guint8 op[] = { AML_SCOPE_OP };
    return append_named_block(out, op, sizeof(op), name, NULL, 0, body);
}

gboolean vmm_aml_device(GByteArray *out, const char *name, const GByteArray *body)
{
    static const guint8 op[] = { AML_EXT_OP, AML_EXT_DEVICE };
    return append_named_block(out, op, sizeof(op), name, NULL, 0, body);
}

gboolean vmm_aml_method(GByteArray *out, const char *name, guint nargs, gboolean serialized,
                        const GByteArray *body)
{
    static const guint8 op[] = { AML_METHOD_OP };
    guint8 flags = (guint8)((nargs & 7) | (serialized ? 1 << 3 : 0));
    g_return_val_if_fail(nargs <= 7, FALSE);
    return append_named_block(out, op, sizeof(op), name, &flags, 1, body);
}

void vmm_aml_res_memory32_fixed(GByteArray *rt, guint32 base, guint32 size, gboolean writable)
{
    append_byte(rt, RES_MEMORY32_FIXED);
    append_le(rt, 9, 2);
    append_byte(rt, writable ? 1 : 0);
    append_le(rt, base, 4);
    append_le(rt, size, 4);
}

void vmm_aml_res_interrupt(GByteArray *rt, guint32 gsi, gboolean edge, gboolean active_low)
{
    append_byte(rt, RES_EXT_INTERRUPT);
    append_le(rt, 6, 2);
    /* bit 0 consumer, 1 edge, 2 active-low, 3 shared (never here) */
    append_byte(rt, (guint8)(1 | (edge ? 2 : 0) | (active_low ? 4 : 0)));
    append_byte(rt, 1);
    append_le(rt, gsi, 4);
}

void vmm_aml_res_io(GByteArray *rt, guint16 min, guint16 max, guint8 align, guint8 len)
{
    append_byte(rt, RES_IO);
    append_byte(rt, 1);     /* 16-bit decode */
    append_le(rt, min, 2);
    append_le(rt, max, 2);
    append_byte(rt, align);
    append_byte(rt, len);
}

void vmm_aml_res_irq_noflags(GByteArray *rt, guint8 irq)
{
    g_return_if_fail(irq < 16);
    append_byte(rt, RES_IRQ_NOFLAGS);
    append_le(rt, 1u << irq, 2);
}

void vmm_aml_resource_template(GByteArray *out, const GByteArray *descriptors)
{
    g_autoptr(GByteArray) rt = g_byte_array_new();
    append_array(rt, descriptors);
    append_byte(rt, RES_END_TAG);
    append_byte(rt, 0);     /* checksum 0: "treat as correct" */
    vmm_aml_buffer(out, rt->data, rt->len);
}

gboolean vmm_aml_operation_region(GByteArray *out, const char *name, guint8 space,
                                  guint64 offset, guint64 len)
{
    g_autoptr(GByteArray) n = g_byte_array_new();
    if (!vmm_aml_name_string(n, name))
        return FALSE;
    append_byte(out, AML_EXT_OP);
    append_byte(out, AML_EXT_REGION);
    append_array(out, n);
    append_byte(out, space);
    vmm_aml_integer(out, offset);
    vmm_aml_integer(out, len);
    return TRUE;
}

gboolean vmm_aml_field(GByteArray *out, const char *region, guint8 flags,
                       const char *field, guint32 bits)
{
    static const guint8 op[] = { AML_EXT_OP, AML_EXT_FIELD };
    g_autoptr(GByteArray) list = g_byte_array_new();
    if (!append_name_seg(list, field, strlen(field)))
        return FALSE;
    encode_pkg_value(list, bits);   /* a NamedField's length is its bit count */
    return append_named_block(out, op, sizeof(op), region, &flags, 1, list);
}

void vmm_aml_if(GByteArray *out, const GByteArray *predicate, const GByteArray *body)
{
    append_byte(out, AML_IF_OP);
    vmm_aml_pkg_length(out, predicate->len + (body ? body->len : 0));
    append_array(out, predicate);
    append_array(out, body);
}

void vmm_aml_local(GByteArray *out, guint n)
{
    g_return_if_fail(n < 8);
    append_byte(out, (guint8)(AML_LOCAL0_OP + n));
}

void vmm_aml_store(GByteArray *out, const GByteArray *src, const GByteArray *dst)
{
    append_byte(out, AML_STORE_OP);
    append_array(out, src);
    append_array(out, dst);
}

void vmm_aml_and(GByteArray *out, const GByteArray *a, const GByteArray *b)
{
    append_byte(out, AML_AND_OP);
    append_array(out, a);
    append_array(out, b);
    append_byte(out, AML_ZERO_OP);  /* NullName: no target */
}

void vmm_aml_lequal(GByteArray *out, const GByteArray *a, const GByteArray *b)
{
    append_byte(out, AML_LEQUAL_OP);
    append_array(out, a);
    append_array(out, b);
}

gboolean vmm_aml_notify(GByteArray *out, const char *object, guint64 value)
{
    g_autoptr(GByteArray) n = g_byte_array_new();
    if (!vmm_aml_name_string(n, object))
        return FALSE;
    append_byte(out, AML_NOTIFY_OP);
    append_array(out, n);
    vmm_aml_integer(out, value);
    return TRUE;
}
