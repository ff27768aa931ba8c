/* QEMU option syntax: the value of "-opt value" is "[implied=]v,key=val,...".
 * ",," escapes a comma; a bare word after the first position is "word=on";
 * dotted keys nest ("file.server.0.host=x" -> {"file":{"server":[{"host":"x"}]}},
 * an all-integer level becomes an array); "json:{...}" is the same tree as JSON.
 * The result is a JsonObject whose leaves are typed by the spec: booleans as
 * JSON booleans, numbers and sizes as integers, the rest as strings. */
#pragma once
#include <glib.h>
#include <json-glib/json-glib.h>

typedef enum {
    VMM_OPT_STRING,
    VMM_OPT_BOOL,   /* on/off, yes/no, true/false */
    VMM_OPT_NUMBER, /* decimal, 0x hex or leading-0 octal, as QemuOpts */
    VMM_OPT_SIZE,   /* bytes, or with k/K, M, G, T, P, E suffix (powers of 1024) */
} VmmOptType;

typedef struct {
    const char *name;      /* "spawn"; "file.*" accepts every key below "file" as strings */
    VmmOptType type;
    const char *help;      /* one line for "help" */
    const char *def_value; /* shown in help only; NULL if none */
} VmmOptKey;

typedef struct {
    const char *option;    /* "sandbox": named in every message */
    const char *implied;   /* key that a leading bare value belongs to, or NULL */
    const VmmOptKey *keys; /* ends with {NULL}; NULL accepts any key as a string */
} VmmOptSpec;

/* Parses VALUE of -OPTION. Unknown and duplicate keys, bad booleans, sizes and
 * numbers are errors naming the option and the key. */
JsonObject *vmm_opts_parse(const VmmOptSpec *spec, const char *value, GError **error);

/* The same from key/value pairs that are already split (-readconfig). */
JsonObject *vmm_opts_from_pairs(const VmmOptSpec *spec, const char *const *keys,
                                const char *const *values, guint n, GError **error);

/* TRUE for "help" and "?" (also "TYPE,help"): the caller prints vmm_opts_help. */
gboolean vmm_opts_wants_help(const char *value);
char *vmm_opts_help(const VmmOptSpec *spec);

/* Back to "k=v,a.b=c" form, commas escaped: parse(to_string(x)) == x. */
char *vmm_opts_to_string(JsonObject *obj);

/* Scalar parsers, shared by every option and by -readconfig. OPTION and KEY name
 * the source in errors ("-sandbox: key 'spawn': ..."); either may be NULL. */
gboolean vmm_parse_bool(const char *option, const char *key, const char *s,
                        gboolean *out, GError **error);
gboolean vmm_parse_size(const char *option, const char *key, const char *s,
                        guint64 *out, GError **error);
gboolean vmm_parse_number(const char *option, const char *key, const char *s,
                          guint64 *out, GError **error);

/* Typed getters on a parsed object with a default when the key is absent.
 * KEY may be dotted ("cache.direct"). */
const char *vmm_opts_get_string(JsonObject *obj, const char *key, const char *def);
gboolean vmm_opts_get_bool(JsonObject *obj, const char *key, gboolean def);
guint64 vmm_opts_get_uint(JsonObject *obj, const char *key, guint64 def);
gboolean vmm_opts_has(JsonObject *obj, const char *key);
