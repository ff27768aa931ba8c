/* QEMU's -readconfig file format:
 *   # comment
 *   [group]            or   [group "id"]
 *     key = "value"
 * Each section stands for one command-line option of that group's name. */
#pragma once
#include <glib.h>

typedef struct {
    char *group;       /* "drive" */
    char *id;          /* from [drive "hd0"], or NULL */
    GPtrArray *keys;   /* char*, in file order */
    GPtrArray *values; /* char*, unquoted */
    int line;          /* line of the [group] header, for messages */
} VmmConfigSection;

void vmm_config_section_free(VmmConfigSection *s);
/* Returns a GPtrArray of VmmConfigSection* (free func set). FILENAME names the
 * source in errors: "FILE:LINE: cause". */
GPtrArray *vmm_readconfig_parse(const char *text, gsize len, const char *filename,
                                GError **error);
GPtrArray *vmm_readconfig_load(const char *path, GError **error);
