/* Logging to stderr. When stderr is connected to the journal (JOURNAL_STREAM
 * names our stderr) each line gets a "<N>" syslog priority prefix that journald
 * parses; otherwise lines read "component[pid]: level: message".
 * Levels per component come from VMM_LOG, e.g. "info", "debug" or
 * "blockd=debug,vmmd=notice,*=info" (the first matching entry wins). */
#pragma once
#include <glib.h>

typedef enum {
    VMM_LOG_ERR = 3,
    VMM_LOG_WARNING = 4,
    VMM_LOG_NOTICE = 5,
    VMM_LOG_INFO = 6,
    VMM_LOG_DEBUG = 7,
} VmmLogLevel;

/* Names this process in log lines and picks its level from VMM_LOG. */
void vmm_log_init(const char *component);
/* Overrides the level spec (same syntax as VMM_LOG) for this process. */
gboolean vmm_log_set_spec(const char *spec, GError **error);
const char *vmm_log_component(void);
gboolean vmm_log_enabled(VmmLogLevel level);
void vmm_log(VmmLogLevel level, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

#define vmm_error(...) vmm_log(VMM_LOG_ERR, __VA_ARGS__)
#define vmm_warn(...) vmm_log(VMM_LOG_WARNING, __VA_ARGS__)
#define vmm_notice(...) vmm_log(VMM_LOG_NOTICE, __VA_ARGS__)
#define vmm_info(...) vmm_log(VMM_LOG_INFO, __VA_ARGS__)
#define vmm_debug(...) vmm_log(VMM_LOG_DEBUG, __VA_ARGS__)

/* "X is deprecated, use Y instead", printed once per key for the process. */
void vmm_warn_deprecated(const char *what, const char *replacement);
