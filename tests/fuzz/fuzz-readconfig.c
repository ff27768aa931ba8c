/* libFuzzer target for the -readconfig format (common/readconfig.c). */
#include "common/readconfig.h"
#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) sections = vmm_readconfig_parse((const char *)data, size, "fuzz.conf", &err);

    if (!sections) {
        if (!err || !g_str_has_prefix(err->message, "fuzz.conf:"))
            abort();
        return 0;
    }
    for (guint i = 0; i < sections->len; i++) {
        VmmConfigSection *s = sections->pdata[i];
        if (!s->group || s->keys->len != s->values->len || s->line < 1)
            abort();
    }
    return 0;
}
