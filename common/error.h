/* Errors are values: every fallible function returns a status and fills a GError
 * in this domain. Messages name the object and the cause. */
#pragma once
#include <glib.h>

#define VMM_ERROR vmm_error_quark()
GQuark vmm_error_quark(void);

typedef enum {
    VMM_ERROR_FAILED,       /* anything else */
    VMM_ERROR_INVALID,      /* bad input: option, message, image */
    VMM_ERROR_IO,           /* a system call failed; the message has strerror */
    VMM_ERROR_PROTOCOL,     /* a peer broke the wire protocol */
    VMM_ERROR_NOT_FOUND,    /* no such object, command, key */
    VMM_ERROR_UNSUPPORTED,  /* valid, but not something we do */
    VMM_ERROR_TOO_BIG,      /* over a size limit */
    VMM_ERROR_PERMISSION,   /* refused by policy or lock */
    VMM_ERROR_CLOSED,       /* the peer went away */
} VmmErrorCode;

/* Sets *error to VMM_ERROR_IO with "<prefix>: strerror(errnum)". Returns FALSE. */
gboolean vmm_set_errno(GError **error, int errnum, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
