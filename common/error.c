#include "common/error.h"
#include <string.h>

G_DEFINE_QUARK(vmm-error-quark, vmm_error)

gboolean vmm_set_errno(GError **error, int errnum, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *prefix = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(error, VMM_ERROR, VMM_ERROR_IO, "%s: %s", prefix, g_strerror(errnum));
    return FALSE;
}
