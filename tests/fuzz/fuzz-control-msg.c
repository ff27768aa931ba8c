/* Control message decoder: any bytes must decode or fail cleanly, and what
 * decodes must survive encode + decode unchanged. */
#include "common/control-msg.h"
#include "common/error.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_round_trip(const VmmControlMsg *msg)
{
    g_autoptr(GError) error = NULL;
    g_autoptr(GBytes) bytes = vmm_control_msg_encode(msg, &error);
    if (!bytes) {
        /* Re-encoding may only grow past the limit (escapes); nothing else. */
        if (g_error_matches(error, VMM_ERROR, VMM_ERROR_TOO_BIG))
            return;
        fprintf(stderr, "decoded message does not encode: %s\n", error->message);
        abort();
    }
    gsize len;
    const void *text = g_bytes_get_data(bytes, &len);
    VmmControlMsg again;
    if (!vmm_control_msg_decode(text, len, &again, &error)) {
        fprintf(stderr, "encoded message does not decode: %s\n%.*s\n", error->message,
                (int)MIN(len, 4096), (const char *)text);
        abort();
    }
    if (!vmm_control_msg_equal(msg, &again)) {
        fprintf(stderr, "round trip changed the message:\n%.*s\n", (int)MIN(len, 4096),
                (const char *)text);
        abort();
    }
    vmm_control_msg_clear(&again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    VmmControlMsg msg;
    g_autoptr(GError) error = NULL;
    if (vmm_control_msg_decode(data, size, &msg, &error)) {
        check_round_trip(&msg);
        vmm_control_msg_clear(&msg);
    } else if (!error || !error->message) {
        abort();
    }
    return 0;
}
