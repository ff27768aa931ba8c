/* The 9P2000.L decoder (fsd/9p-wire.c): any bytes decode or fail cleanly; what
 * decodes re-encodes to exactly the input (and its head without the data to
 * the input's first bytes), and the readdir entries inside an Rreaddir parse
 * without reading past it. */
#include "fsd/9p-wire.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void walk_dirents(const P9Fcall *f)
{
    gsize pos = 0;
    P9Qid qid;
    guint64 off;
    guint8 type;
    char *name;
    gboolean bad;
    while (p9_dirent_next(f->data, f->count, &pos, &qid, &off, &type, &name, &bad))
        g_free(name);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A copy of exactly SIZE bytes so that ASan sees any read past the end. */
    guint8 *buf = g_memdup2(data, size ? size : 1);
    P9Fcall f;
    if (p9_decode(buf, size, &f, NULL)) {
        GByteArray *out = g_byte_array_new();
        g_autoptr(GError) err = NULL;
        if (!p9_encode(&f, G_MAXUINT32, out, &err)) {
            fprintf(stderr, "decoded %s does not encode: %s\n", p9_type_name(f.type), err->message);
            abort();
        }
        if (out->len != size || memcmp(out->data, buf, size) != 0) {
            fprintf(stderr, "%s does not re-encode to its input\n", p9_type_name(f.type));
            abort();
        }
        /* The head alone (the form fsd sends an Rread in) is the same bytes
         * up to the data, and counts the data in its size. */
        GByteArray *head = g_byte_array_new();
        guint32 data_len = 0;
        if (!p9_encode_head(&f, G_MAXUINT32, head, &data_len, NULL) || head->len + data_len != size ||
            memcmp(head->data, buf, head->len) != 0) {
            fprintf(stderr, "%s: its head does not match its encoding\n", p9_type_name(f.type));
            abort();
        }
        g_byte_array_unref(head);
        if (f.type == P9_RREADDIR)
            walk_dirents(&f);
        g_byte_array_unref(out);
    }
    p9_fcall_clear(&f);
    g_free(buf);
    return 0;
}
