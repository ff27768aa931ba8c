/* QEMU's -readconfig format, as qemu_config_parse reads it and
 * qemu_config_write writes it:
 *
 *   # comment
 *   [drive "hd0"]
 *     file = "disk.img"
 *
 * Unlike QEMU (whose sscanf patterns only skip a '#' in column 0 and silently
 * take "key junk" as an empty value), comments may be indented and every
 * line that is not understood is an error with its line number. */
#include "common/readconfig.h"
#include "common/error.h"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

/* A config file is a handful of lines; anything this big is a mistake. */
#define READCONFIG_MAX_SIZE (16 * 1024 * 1024)

void vmm_config_section_free(VmmConfigSection *s)
{
    if (!s)
        return;
    g_free(s->group);
    g_free(s->id);
    g_ptr_array_unref(s->keys);
    g_ptr_array_unref(s->values);
    g_free(s);
}

typedef struct {
    const char *filename;
    int line;
} Where;

static gboolean G_GNUC_PRINTF(3, 4)
line_error(GError **error, const Where *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *cause = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s:%d: %s", w->filename, w->line, cause);
    return FALSE;
}

static const char *skip_blanks(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

/* A group name or key: no blanks, quotes, brackets or '='. */
static gsize name_length(const char *p)
{
    return strcspn(p, " \t\"[]=#");
}

static VmmConfigSection *section_new(char *group, char *id, int line)
{
    VmmConfigSection *s = g_new0(VmmConfigSection, 1);
    s->group = group;
    s->id = id;
    s->keys = g_ptr_array_new_with_free_func(g_free);
    s->values = g_ptr_array_new_with_free_func(g_free);
    s->line = line;
    return s;
}

/* "[group]" or "[group "id"]"; LINE is trimmed and starts with '['. */
static VmmConfigSection *parse_header(const char *line, const Where *w, GError **error)
{
    const char *p = line + 1;
    gsize len = name_length(p);

    if (len == 0) {
        line_error(error, w, "bad group header '%s' (expected [group] or [group \"id\"])", line);
        return NULL;
    }
    g_autofree char *group = g_strndup(p, len);
    g_autofree char *id = NULL;
    p = skip_blanks(p + len);
    if (*p == '"') {
        const char *close = strchr(p + 1, '"');
        if (!close) {
            line_error(error, w, "unterminated quote in group header '%s'", line);
            return NULL;
        }
        if (close == p + 1) {
            line_error(error, w, "empty id in group header '%s'", line);
            return NULL;
        }
        id = g_strndup(p + 1, close - p - 1);
        p = skip_blanks(close + 1);
    }
    if (p[0] != ']' || p[1] != '\0') {
        line_error(error, w, "bad group header '%s' (expected [group] or [group \"id\"])", line);
        return NULL;
    }
    return section_new(g_steal_pointer(&group), g_steal_pointer(&id), w->line);
}

/* "key = "value"" or "key = value"; LINE is trimmed. */
static gboolean parse_assignment(const char *line, VmmConfigSection *section, const Where *w,
                                 GError **error)
{
    gsize len = name_length(line);
    const char *p = skip_blanks(line + len);

    if (len == 0 || *p != '=')
        return line_error(error, w, "cannot parse '%s' (expected key = \"value\")", line);
    g_autofree char *key = g_strndup(line, len);
    if (!section)
        return line_error(error, w, "key '%s' outside of a [group] section", key);
    p = skip_blanks(p + 1);

    g_autofree char *value = NULL;
    if (*p == '"') {
        /* QEMU's writer does not escape, so neither do we: the value ends
         * at the next quote. */
        const char *close = strchr(p + 1, '"');
        if (!close)
            return line_error(error, w, "unterminated quote in the value of '%s'", key);
        if (*skip_blanks(close + 1) != '\0')
            return line_error(error, w, "unexpected text after the quoted value of '%s'", key);
        value = g_strndup(p + 1, close - p - 1);
    } else {
        value = g_strdup(p);
    }
    g_ptr_array_add(section->keys, g_steal_pointer(&key));
    g_ptr_array_add(section->values, g_steal_pointer(&value));
    return TRUE;
}

/* Handles one line (without its newline). */
static gboolean parse_line(char *line, GPtrArray *sections, const Where *w, GError **error)
{
    g_strstrip(line);
    if (line[0] == '\0' || line[0] == '#')
        return TRUE;
    if (line[0] == '[') {
        VmmConfigSection *s = parse_header(line, w, error);
        if (!s)
            return FALSE;
        g_ptr_array_add(sections, s);
        return TRUE;
    }
    VmmConfigSection *current = sections->len ? sections->pdata[sections->len - 1] : NULL;
    return parse_assignment(line, current, w, error);
}

GPtrArray *vmm_readconfig_parse(const char *text, gsize len, const char *filename,
                                GError **error)
{
    g_autoptr(GPtrArray) sections =
        g_ptr_array_new_with_free_func((GDestroyNotify)vmm_config_section_free);
    Where w = { filename ? filename : "<config>", 0 };
    const char *p = text, *end = text + len;

    while (p < end) {
        const char *nl = memchr(p, '\n', end - p);
        const char *stop = nl ? nl : end;
        w.line++;
        if (memchr(p, '\0', stop - p)) {
            line_error(error, &w, "NUL byte in line");
            return NULL;
        }
        g_autofree char *line = g_strndup(p, stop - p);
        if (!parse_line(line, sections, &w, error))
            return NULL;
        p = nl ? nl + 1 : end;
    }
    return g_steal_pointer(&sections);
}

static gboolean read_all(int fd, const char *path, GString *buf, GError **error)
{
    char chunk[65536];

    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return vmm_set_errno(error, errno, "%s: read", path);
        if (n == 0)
            return TRUE;
        if (buf->len + (gsize)n > READCONFIG_MAX_SIZE) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG, "%s: larger than %d bytes, not a config file",
                        path, READCONFIG_MAX_SIZE);
            return FALSE;
        }
        g_string_append_len(buf, chunk, n);
    }
}

GPtrArray *vmm_readconfig_load(const char *path, GError **error)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        vmm_set_errno(error, errno, "%s", path);
        return NULL;
    }
    g_autoptr(GString) buf = g_string_new(NULL);
    gboolean ok = read_all(fd, path, buf, error);
    close(fd);
    if (!ok)
        return NULL;
    return vmm_readconfig_parse(buf->str, buf->len, path, error);
}
