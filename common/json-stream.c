#include "common/json-stream.h"
#include <string.h>

void vmm_json_stream_init(VmmJsonStream *s, gsize max_size)
{
    memset(s, 0, sizeof(*s));
    s->buf = g_string_new(NULL);
    s->max_size = max_size;
}

void vmm_json_stream_clear(VmmJsonStream *s)
{
    if (s->buf)
        g_string_free(s->buf, TRUE);
    s->buf = NULL;
}

void vmm_json_stream_feed(VmmJsonStream *s, const char *data, gsize len)
{
    g_string_append_len(s->buf, data, len);
}

static void reset_scan(VmmJsonStream *s, gsize consumed)
{
    g_string_erase(s->buf, 0, consumed);
    s->scanned = 0;
    s->depth = 0;
    s->in_string = s->escaped = s->started = FALSE;
}

/* Feeds one byte to the scanner; TRUE when it closes a top-level text. */
static gboolean scan_byte(VmmJsonStream *s, char c)
{
    if (s->in_string) {
        /* JSON strings cannot hold raw control characters: the text is
         * malformed, so end it here and let the parser say so, rather than
         * swallow every following command into an endless string. */
        if ((unsigned char)c < 0x20)
            return TRUE;
        if (s->escaped)
            s->escaped = FALSE;
        else if (c == '\\')
            s->escaped = TRUE;
        else if (c == '"')
            s->in_string = FALSE;
        return FALSE;
    }
    switch (c) {
    case '"':
        s->in_string = TRUE;
        s->started = TRUE;
        return FALSE;
    case '{':
    case '[':
        s->depth++;
        s->started = TRUE;
        return FALSE;
    case '}':
    case ']':
        s->started = TRUE;
        /* A stray closer is its own (malformed) text, so the parser reports it. */
        if (s->depth == 0)
            return TRUE;
        return --s->depth == 0;
    case ' ': case '\t': case '\r': case '\n':
        return s->started && s->depth == 0;
    default:
        s->started = TRUE;
        return FALSE;
    }
}

char *vmm_json_stream_next(VmmJsonStream *s, gboolean *too_big)
{
    *too_big = FALSE;
    while (s->scanned < s->buf->len) {
        char c = s->buf->str[s->scanned++];
        if (!s->started && g_ascii_isspace(c)) {
            reset_scan(s, s->scanned);
            continue;
        }
        if (scan_byte(s, c)) {
            gsize n = s->scanned;
            char *text = g_strndup(s->buf->str, n);
            reset_scan(s, n);
            return g_strstrip(text);
        }
        if (s->scanned > s->max_size) {
            *too_big = TRUE;
            reset_scan(s, s->scanned);
            return NULL;
        }
    }
    return NULL;
}
