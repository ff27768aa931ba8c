/* Splits a byte stream into top-level JSON texts, as a QMP peer must: QMP has
 * no framing, so objects are found by tracking nesting outside strings. */
#pragma once
#include <glib.h>

typedef struct {
    GString *buf;
    gsize scanned;   /* bytes of buf already examined */
    int depth;
    gboolean in_string, escaped, started;
    gsize max_size;
} VmmJsonStream;

void vmm_json_stream_init(VmmJsonStream *s, gsize max_size);
void vmm_json_stream_clear(VmmJsonStream *s);
void vmm_json_stream_feed(VmmJsonStream *s, const char *data, gsize len);
/* Returns the next complete JSON text (g_free), or NULL if none is complete yet.
 * A text longer than max_size sets *too_big, is dropped, and scanning restarts
 * at the next byte that can start a text. */
char *vmm_json_stream_next(VmmJsonStream *s, gboolean *too_big);
