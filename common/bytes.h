/* Big-endian fields of wire and on-disk formats (NBD, qcow2), read and written
 * at any alignment. */
#pragma once
#include <glib.h>
#include <string.h>

static inline guint16 get_be16(const void *p) { guint16 v; memcpy(&v, p, 2); return GUINT16_FROM_BE(v); }
static inline guint32 get_be32(const void *p) { guint32 v; memcpy(&v, p, 4); return GUINT32_FROM_BE(v); }
static inline guint64 get_be64(const void *p) { guint64 v; memcpy(&v, p, 8); return GUINT64_FROM_BE(v); }
static inline void put_be16(void *p, guint16 v) { v = GUINT16_TO_BE(v); memcpy(p, &v, 2); }
static inline void put_be32(void *p, guint32 v) { v = GUINT32_TO_BE(v); memcpy(p, &v, 4); }
static inline void put_be64(void *p, guint64 v) { v = GUINT64_TO_BE(v); memcpy(p, &v, 8); }
