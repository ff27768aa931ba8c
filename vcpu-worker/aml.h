/* A tiny AML encoder (ACPI 6.x, chapter 20), enough for the DSDT of the
 * microvm machine: names, integers, strings, packages, buffers holding
 * resource templates, Name/Scope/Device, and the few opcodes of the GED's
 * event method. Every function appends to a GByteArray; a block (Scope,
 * Device, Package, Method, If) wraps a body that was built before it, so its
 * PkgLength is known when it is written. Names are compile-time constants
 * here, so a malformed one is a programming error: the function returns FALSE
 * and appends nothing. */
#pragma once
#include <glib.h>

/* PkgLength for a body of BODY_LEN bytes (the encoding counts itself). */
void vmm_aml_pkg_length(GByteArray *out, gsize body_len);

/* "\\_SB.COM1", "^FOO", "_HID", "" (NullName). Segments shorter than four
 * characters are padded with '_'. */
gboolean vmm_aml_name_string(GByteArray *out, const char *path);

void vmm_aml_integer(GByteArray *out, guint64 value);
void vmm_aml_string(GByteArray *out, const char *s);
/* EisaId("PNP0501") as its compressed DWORD; FALSE if ID is malformed. */
gboolean vmm_aml_eisaid(GByteArray *out, const char *id);
void vmm_aml_buffer(GByteArray *out, const guint8 *data, gsize len);
/* Package with N elements whose encodings are ELEMENTS, concatenated. */
void vmm_aml_package(GByteArray *out, guint n, const GByteArray *elements);

/* Name(NAME, <VALUE>) where VALUE is one encoded data object. */
gboolean vmm_aml_name(GByteArray *out, const char *name, const GByteArray *value);
gboolean vmm_aml_name_integer(GByteArray *out, const char *name, guint64 value);
gboolean vmm_aml_name_string_value(GByteArray *out, const char *name, const char *value);
gboolean vmm_aml_scope(GByteArray *out, const char *name, const GByteArray *body);
gboolean vmm_aml_device(GByteArray *out, const char *name, const GByteArray *body);

/* Resource template descriptors, appended to a GByteArray that
 * vmm_aml_resource_template then closes with an End Tag and wraps in a Buffer. */
void vmm_aml_res_memory32_fixed(GByteArray *rt, guint32 base, guint32 size, gboolean writable);
/* Extended Interrupt descriptor, consumer, exclusive. */
void vmm_aml_res_interrupt(GByteArray *rt, guint32 gsi, gboolean edge, gboolean active_low);
void vmm_aml_res_io(GByteArray *rt, guint16 min, guint16 max, guint8 align, guint8 len);
void vmm_aml_res_irq_noflags(GByteArray *rt, guint8 irq);
void vmm_aml_resource_template(GByteArray *out, const GByteArray *descriptors);

/* Code, for the GED's _EVT method. */
#define VMM_AML_REGION_SYSTEM_MEMORY 0x00
#define VMM_AML_FIELD_DWORD_ACC      0x03
#define VMM_AML_FIELD_WRITE_AS_ZEROS 0x40
gboolean vmm_aml_operation_region(GByteArray *out, const char *name, guint8 space,
                                  guint64 offset, guint64 len);
/* Field(REGION, FLAGS) with one named field of BITS bits. */
gboolean vmm_aml_field(GByteArray *out, const char *region, guint8 flags,
                       const char *field, guint32 bits);
gboolean vmm_aml_method(GByteArray *out, const char *name, guint nargs, gboolean serialized,
                        const GByteArray *body);
void vmm_aml_if(GByteArray *out, const GByteArray *predicate, const GByteArray *body);
/* Terms: operands are already-encoded TermArgs. */
void vmm_aml_local(GByteArray *out, guint n);                 /* Local0..7 */
void vmm_aml_store(GByteArray *out, const GByteArray *src, const GByteArray *dst);
void vmm_aml_and(GByteArray *out, const GByteArray *a, const GByteArray *b);   /* no target */
void vmm_aml_lequal(GByteArray *out, const GByteArray *a, const GByteArray *b);
gboolean vmm_aml_notify(GByteArray *out, const char *object, guint64 value);
