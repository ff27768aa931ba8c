/* Logging to stderr, one write(2) per message so that lines from threads and
 * from the helper processes sharing one stderr never interleave. */
#include "common/log.h"
#include "common/error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOG_DEFAULT_LEVEL VMM_LOG_INFO
#define LOG_FD STDERR_FILENO

typedef struct {
    char *pattern; /* component name or glob ("*", "vcpu-*") */
    VmmLogLevel level;
} LogRule;

/* All state below is guarded by log_lock, except effective_level and
 * to_journal, which are read without it on the fast path. */
static GMutex log_lock;
static char *log_component;
static GArray *log_rules;          /* of LogRule; NULL: default level for all */
static GHashTable *deprecated_seen; /* keys already warned about */
static gint effective_level = LOG_DEFAULT_LEVEL;
static gint to_journal = -1;       /* -1: not yet detected */

static const struct {
    const char *name;
    VmmLogLevel level;
} level_names[] = {
    { "err", VMM_LOG_ERR },
    { "error", VMM_LOG_ERR },
    { "warning", VMM_LOG_WARNING },
    { "warn", VMM_LOG_WARNING },
    { "notice", VMM_LOG_NOTICE },
    { "info", VMM_LOG_INFO },
    { "debug", VMM_LOG_DEBUG },
};

static const char *level_label(VmmLogLevel level)
{
    switch (level) {
    case VMM_LOG_ERR:
        return "error";
    case VMM_LOG_WARNING:
        return "warning";
    case VMM_LOG_NOTICE:
        return "notice";
    case VMM_LOG_INFO:
        return "info";
    case VMM_LOG_DEBUG:
        return "debug";
    }
    return "log";
}

static gboolean parse_level_name(const char *name, VmmLogLevel *level)
{
    for (size_t i = 0; i < G_N_ELEMENTS(level_names); i++) {
        if (g_ascii_strcasecmp(name, level_names[i].name) == 0) {
            *level = level_names[i].level;
            return TRUE;
        }
    }
    return FALSE;
}

static void log_rule_clear(gpointer p)
{
    LogRule *rule = p;
    g_free(rule->pattern);
}

static GArray *log_rules_new(void)
{
    GArray *rules = g_array_new(FALSE, TRUE, sizeof(LogRule));
    g_array_set_clear_func(rules, log_rule_clear);
    return rules;
}

/* One entry: "LEVEL" (same as "*=LEVEL") or "COMPONENT=LEVEL". */
static gboolean parse_rule(const char *entry, LogRule *rule, GError **error)
{
    const char *eq = strchr(entry, '=');
    g_autofree char *pattern = eq ? g_strstrip(g_strndup(entry, eq - entry)) : g_strdup("*");
    g_autofree char *level = g_strstrip(g_strdup(eq ? eq + 1 : entry));

    if (pattern[0] == '\0') {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "log level spec entry '%s': empty component name", entry);
        return FALSE;
    }
    if (!parse_level_name(level, &rule->level)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "log level spec entry '%s': unknown level '%s' "
                    "(expected err, warning, notice, info or debug)", entry, level);
        return FALSE;
    }
    rule->pattern = g_steal_pointer(&pattern);
    return TRUE;
}

static GArray *parse_spec(const char *spec, GError **error)
{
    g_autoptr(GArray) rules = log_rules_new();
    g_auto(GStrv) entries = g_strsplit(spec, ",", -1);

    for (char **e = entries; *e; e++) {
        g_autofree char *entry = g_strstrip(g_strdup(*e));
        LogRule rule = { 0 };
        if (entry[0] == '\0')
            continue; /* tolerate "debug," and ",," */
        if (!parse_rule(entry, &rule, error))
            return NULL;
        g_array_append_val(rules, rule);
    }
    return g_steal_pointer(&rules);
}

/* The first rule whose pattern matches the component wins. Needs log_lock. */
static VmmLogLevel level_for_component_locked(void)
{
    const char *component = log_component ? log_component : "";

    if (!log_rules)
        return LOG_DEFAULT_LEVEL;
    for (guint i = 0; i < log_rules->len; i++) {
        const LogRule *rule = &g_array_index(log_rules, LogRule, i);
        if (g_pattern_match_simple(rule->pattern, component))
            return rule->level;
    }
    return LOG_DEFAULT_LEVEL;
}

static void replace_rules_locked(GArray *rules)
{
    if (log_rules)
        g_array_unref(log_rules);
    log_rules = rules;
    g_atomic_int_set(&effective_level, level_for_component_locked());
}

/* journald hands services JOURNAL_STREAM=DEV:INODE of the stream it connected
 * to stderr; if stderr was redirected since, it is no longer the journal. */
static gboolean stderr_is_journal(void)
{
    const char *env = g_getenv("JOURNAL_STREAM");
    guint64 dev, ino;
    char *end;
    struct stat st;

    if (!env || !*env)
        return FALSE;
    errno = 0;
    dev = g_ascii_strtoull(env, &end, 10);
    if (errno || end == env || *end != ':')
        return FALSE;
    env = end + 1;
    ino = g_ascii_strtoull(env, &end, 10);
    if (errno || end == env || *end != '\0')
        return FALSE;
    if (fstat(LOG_FD, &st) < 0)
        return FALSE;
    return (guint64)st.st_dev == dev && (guint64)st.st_ino == ino;
}

static gboolean log_to_journal(void)
{
    int v = g_atomic_int_get(&to_journal);
    if (v < 0) {
        v = stderr_is_journal();
        g_atomic_int_set(&to_journal, v);
    }
    return v;
}

void vmm_log_init(const char *component)
{
    const char *spec = g_getenv("VMM_LOG");
    g_autoptr(GError) error = NULL;
    GArray *rules = NULL;

    if (spec && *spec)
        rules = parse_spec(spec, &error);

    g_mutex_lock(&log_lock);
    g_free(log_component);
    log_component = g_strdup(component);
    replace_rules_locked(rules);
    g_mutex_unlock(&log_lock);
    g_atomic_int_set(&to_journal, stderr_is_journal());

    if (error)
        vmm_warn("VMM_LOG ignored, using level info: %s", error->message);
}

gboolean vmm_log_set_spec(const char *spec, GError **error)
{
    GArray *rules = parse_spec(spec ? spec : "", error);

    if (!rules)
        return FALSE;
    g_mutex_lock(&log_lock);
    replace_rules_locked(rules);
    g_mutex_unlock(&log_lock);
    return TRUE;
}

const char *vmm_log_component(void)
{
    const char *name;

    g_mutex_lock(&log_lock);
    name = log_component;
    g_mutex_unlock(&log_lock);
    if (name)
        return name;
    name = g_get_prgname();
    return name ? name : "vmm";
}

gboolean vmm_log_enabled(VmmLogLevel level)
{
    return (gint)level <= g_atomic_int_get(&effective_level);
}

static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* nowhere left to report a failing stderr */
        buf += n;
        len -= (size_t)n;
    }
}

/* Every line of a multi-line message gets the prefix, so journald (which
 * splits on newlines) keeps the priority and readers keep the component. */
static void append_lines(GString *out, const char *prefix, const char *message)
{
    const char *line = message;

    do {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        g_string_append(out, prefix);
        g_string_append_len(out, line, len);
        g_string_append_c(out, '\n');
        line = nl ? nl + 1 : NULL;
    } while (line && *line);
}

/* VMM_LOG_TIME=1: every line starts with the monotonic clock in seconds. */
static gboolean log_with_time(void)
{
    static int with_time = -1;
    if (with_time < 0)
        with_time = g_strcmp0(g_getenv("VMM_LOG_TIME"), "1") == 0;
    return with_time;
}

static void log_message(VmmLogLevel level, const char *message)
{
    g_autoptr(GString) out = g_string_sized_new(128);
    g_autofree char *prefix = NULL;
    const char *component;

    g_mutex_lock(&log_lock);
    component = log_component ? log_component : g_get_prgname();
    if (!component)
        component = "vmm";
    if (log_to_journal())
        prefix = g_strdup_printf("<%d>%s: ", (int)level, component);
    else if (log_with_time())
        /* CLOCK_MONOTONIC in ms: the same clock in every process, to see where
         * a VM's start goes across vmmd and its helpers. */
        prefix = g_strdup_printf("%.3f %s[%d]: %s: ", g_get_monotonic_time() / 1000000.0, component,
                                 (int)getpid(), level_label(level));
    else
        prefix = g_strdup_printf("%s[%d]: %s: ", component, (int)getpid(), level_label(level));
    g_mutex_unlock(&log_lock);

    append_lines(out, prefix, message);
    write_all(LOG_FD, out->str, out->len);
}

void vmm_log(VmmLogLevel level, const char *fmt, ...)
{
    g_autofree char *message = NULL;
    va_list ap;
    int saved_errno = errno; /* callers log and then look at errno */

    if (!vmm_log_enabled(level))
        return;
    va_start(ap, fmt);
    message = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    log_message(level, message);
    errno = saved_errno;
}

/* TRUE the first time WHAT is seen in this process. */
static gboolean first_deprecation(const char *what)
{
    gboolean first;

    g_mutex_lock(&log_lock);
    if (!deprecated_seen)
        deprecated_seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    first = g_hash_table_add(deprecated_seen, g_strdup(what));
    g_mutex_unlock(&log_lock);
    return first;
}

void vmm_warn_deprecated(const char *what, const char *replacement)
{
    if (!what || !first_deprecation(what))
        return;
    if (replacement)
        vmm_warn("'%s' is deprecated, use '%s' instead", what, replacement);
    else
        vmm_warn("'%s' is deprecated", what);
}
