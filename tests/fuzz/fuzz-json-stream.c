/* The QMP input splitter: arbitrary bytes, fed in two pieces, must never crash,
 * and every text it returns must be a part of the input. */
#include "common/json-stream.h"
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    VmmJsonStream s;
    vmm_json_stream_init(&s, 256);
    size_t half = size / 2;
    for (int round = 0; round < 2; round++) {
        if (round == 0)
            vmm_json_stream_feed(&s, (const char *)data, half);
        else
            vmm_json_stream_feed(&s, (const char *)data + half, size - half);
        for (;;) {
            gboolean too_big = FALSE;
            char *text = vmm_json_stream_next(&s, &too_big);
            if (!text && !too_big)
                break;
            if (text && strlen(text) > 256 + 1)
                __builtin_trap();
            g_free(text);
        }
    }
    vmm_json_stream_clear(&s);
    return 0;
}
