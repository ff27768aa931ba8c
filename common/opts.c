/* QEMU option syntax, as QemuOpts and keyval read it in QEMU 7.2.
 *
 * Both the dotted form and the json: form go through the same steps:
 * split into (dotted key, leaf) pairs, type each leaf by the spec, insert it
 * into a tree of objects (catching duplicates and scalar/prefix clashes), and
 * finally turn every level whose keys are exactly 0..n-1 into an array.
 *
 * Where this differs from QEMU, on purpose:
 *  - "-1" is an error for numbers and sizes (QEMU's number parser wraps it);
 *  - numbers and sizes stored in the tree stop at 2^63-1, JSON's integer range;
 *  - a bare word at a typed string/number/size key is an error, not "on";
 *  - json: keys may not contain ',' or '=', so every tree prints as text;
 *  - empty JSON objects and arrays vanish, as they carry no key=value. */
#include "common/opts.h"
#include "common/error.h"
#include <errno.h>
#include <string.h>

/* Bounds the recursion of every walk below, whatever the input. */
#define OPTS_MAX_DEPTH 64

/* ---------------------------------------------------------------------------
 * Scalar parsers
 * ------------------------------------------------------------------------- */

/* "-opt: key 'k': " with either part left out when NULL. */
static char *source_prefix(const char *option, const char *key)
{
    if (option && key)
        return g_strdup_printf("-%s: key '%s': ", option, key);
    if (option)
        return g_strdup_printf("-%s: ", option);
    if (key)
        return g_strdup_printf("key '%s': ", key);
    return g_strdup("");
}

static gboolean G_GNUC_PRINTF(4, 5)
scalar_error(GError **error, const char *option, const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *cause = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_autofree char *prefix = source_prefix(option, key);
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s%s", prefix, cause);
    return FALSE;
}

gboolean vmm_parse_bool(const char *option, const char *key, const char *s,
                        gboolean *out, GError **error)
{
    /* The spellings of QEMU 7.2's qapi_bool_parse. */
    static const char *const yes[] = { "on", "yes", "true", "y" };
    static const char *const no[] = { "off", "no", "false", "n" };

    for (gsize i = 0; i < G_N_ELEMENTS(yes); i++) {
        if (g_str_equal(s, yes[i])) {
            *out = TRUE;
            return TRUE;
        }
        if (g_str_equal(s, no[i])) {
            *out = FALSE;
            return TRUE;
        }
    }
    return scalar_error(error, option, key, "'%s' is not a boolean (use on or off)", s);
}

/* Multiplier of a size suffix, or 0 when C is not one. Case does not matter,
 * as in QEMU's suffix_mul. */
static guint64 size_suffix_multiplier(char c)
{
    switch (g_ascii_toupper(c)) {
    case 'B': return 1;
    case 'K': return G_GUINT64_CONSTANT(1) << 10;
    case 'M': return G_GUINT64_CONSTANT(1) << 20;
    case 'G': return G_GUINT64_CONSTANT(1) << 30;
    case 'T': return G_GUINT64_CONSTANT(1) << 40;
    case 'P': return G_GUINT64_CONSTANT(1) << 50;
    case 'E': return G_GUINT64_CONSTANT(1) << 60;
    default: return 0;
    }
}

static gboolean size_syntax_error(GError **error, const char *option, const char *key,
                                  const char *s)
{
    return scalar_error(error, option, key,
                        "'%s' is not a size (bytes, or a number with suffix "
                        "B, K, M, G, T, P or E; fractions like 1.5G need a suffix)", s);
}

/* The fractional part after the integral digits, as 0.64 fixed point like
 * QEMU's do_strtosz. A '.' without digits counts as zero ("1.K" is 1K). */
static gboolean parse_size_fraction(const char **p, guint64 *valf)
{
    const char *f = *p;
    char *end;

    if (!g_ascii_isdigit(f[1])) {
        *p = f + 1;
        *valf = 0;
        return TRUE;
    }
    errno = 0;
    double fraction = g_ascii_strtod(f, &end);
    if (errno || memchr(f, 'e', end - f) || memchr(f, 'E', end - f))
        return FALSE;
    /* Many nines round up to 1.0, which does not fit 0.64. */
    double scaled = fraction * 0x1p64;
    *valf = scaled >= 0x1p64 ? G_MAXUINT64 : (guint64)scaled;
    *p = end;
    return TRUE;
}

gboolean vmm_parse_size(const char *option, const char *key, const char *s,
                        guint64 *out, GError **error)
{
    const char *p;
    char *end;
    guint64 val, valf = 0, mul;

    if (s[0] == '-')
        return scalar_error(error, option, key, "'%s' is negative; a size cannot be", s);
    if (!g_ascii_isdigit(s[0]))
        return size_syntax_error(error, option, key, s);

    errno = 0;
    val = g_ascii_strtoull(s, &end, 10);
    if (errno == ERANGE)
        goto too_large;
    p = end;
    if (val == 0 && (*p == 'x' || *p == 'X')) {
        /* Hex is allowed, but only whole bytes without suffix (QEMU 7.2). */
        errno = 0;
        val = g_ascii_strtoull(s, &end, 16);
        if (errno == ERANGE)
            goto too_large;
        if (end == s + 2 || *end != '\0')
            return size_syntax_error(error, option, key, s);
        *out = val;
        return TRUE;
    }
    if (*p == '.' && !parse_size_fraction(&p, &valf))
        return size_syntax_error(error, option, key, s);

    mul = size_suffix_multiplier(*p);
    if (mul)
        p++;
    else
        mul = 1;
    if (*p != '\0' || (mul == 1 && valf != 0))
        return size_syntax_error(error, option, key, s);

    /* Exact 64.64 x 64 product, rounding half a byte up, as QEMU does. */
    unsigned __int128 whole = (unsigned __int128)val * mul;
    unsigned __int128 part = (unsigned __int128)valf * mul;
    whole += (part >> 64) + ((guint64)part >> 63);
    if (whole > G_MAXUINT64)
        goto too_large;
    *out = (guint64)whole;
    return TRUE;

too_large:
    return scalar_error(error, option, key, "'%s' is too large (a size must be below 2^64 bytes)", s);
}

gboolean vmm_parse_number(const char *option, const char *key, const char *s,
                          guint64 *out, GError **error)
{
    char *end;

    /* QEMU would wrap "-1" to 2^64-1; nobody means that. */
    if (s[0] == '-')
        return scalar_error(error, option, key, "'%s' is negative; expected a number from 0", s);
    if (!g_ascii_isdigit(s[0]))
        goto bad;
    errno = 0;
    guint64 val = g_ascii_strtoull(s, &end, 0);
    if (errno == ERANGE)
        return scalar_error(error, option, key, "'%s' is too large (the limit is 2^64-1)", s);
    if (*end != '\0' || (end == s + 1 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')))
        goto bad;
    *out = val;
    return TRUE;

bad:
    return scalar_error(error, option, key,
                        "'%s' is not a number (decimal, 0x hex or leading-0 octal)", s);
}

/* ---------------------------------------------------------------------------
 * Keys and the spec
 * ------------------------------------------------------------------------- */

static gboolean G_GNUC_PRINTF(4, 5)
opt_error(GError **error, VmmErrorCode code, const VmmOptSpec *spec, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *cause = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(error, VMM_ERROR, code, "-%s: %s", spec->option, cause);
    return FALSE;
}

/* The spec entry for a dotted KEY: an exact name, or a "prefix.*" entry that
 * covers everything below prefix. */
static const VmmOptKey *spec_find_key(const VmmOptSpec *spec, const char *key)
{
    for (const VmmOptKey *k = spec->keys; k->name; k++) {
        if (g_str_equal(k->name, key))
            return k;
    }
    for (const VmmOptKey *k = spec->keys; k->name; k++) {
        gsize n = strlen(k->name);
        if (n >= 2 && g_str_has_suffix(k->name, ".*") &&
            strncmp(key, k->name, n - 1) == 0 && key[n - 1] != '\0')
            return k;
    }
    return NULL;
}

static gboolean spec_key_is_wildcard(const VmmOptKey *k)
{
    return g_str_has_suffix(k->name, ".*");
}

/* Splits a dotted key into its names; every name must be non-empty and free
 * of the characters that the dotted form cannot carry. */
static char **split_key(const VmmOptSpec *spec, const char *key, GError **error)
{
    if (key[0] == '\0') {
        opt_error(error, VMM_ERROR_INVALID, spec, "empty key");
        return NULL;
    }
    if (strpbrk(key, ",=")) {
        opt_error(error, VMM_ERROR_INVALID, spec, "invalid key '%s' (',' and '=' are not allowed in keys)", key);
        return NULL;
    }
    char **parts = g_strsplit(key, ".", -1);
    guint n = g_strv_length(parts);
    if (n > OPTS_MAX_DEPTH) {
        g_strfreev(parts);
        opt_error(error, VMM_ERROR_INVALID, spec, "key '%s' nests deeper than %d levels", key, OPTS_MAX_DEPTH);
        return NULL;
    }
    for (guint i = 0; i < n; i++) {
        if (parts[i][0] == '\0') {
            g_strfreev(parts);
            opt_error(error, VMM_ERROR_INVALID, spec, "invalid key '%s' (empty name between dots)", key);
            return NULL;
        }
    }
    return parts;
}

/* TRUE for the canonical decimal spelling of a list index ("0", "17"). */
static gboolean is_list_index(const char *name, guint64 *index)
{
    if (!g_ascii_isdigit(name[0]) || (name[0] == '0' && name[1] != '\0'))
        return FALSE;
    guint64 v = 0;
    for (const char *p = name; *p; p++) {
        if (!g_ascii_isdigit(*p))
            return FALSE;
        /* Saturate: an index this large is a gap anyway. */
        v = v > G_MAXUINT32 ? v : v * 10 + (guint64)(*p - '0');
    }
    *index = v;
    return TRUE;
}

/* ---------------------------------------------------------------------------
 * Typing leaves
 * ------------------------------------------------------------------------- */

static JsonNode *int_node_checked(const VmmOptSpec *spec, const char *key, const char *text,
                                  guint64 v, GError **error)
{
    /* JSON integers are signed. */
    if (v > G_MAXINT64) {
        opt_error(error, VMM_ERROR_INVALID, spec, "key '%s': '%s' is too large (the limit is %" G_GINT64_FORMAT ")",
                  key, text, G_MAXINT64);
        return NULL;
    }
    JsonNode *n = json_node_new(JSON_NODE_VALUE);
    json_node_set_int(n, (gint64)v);
    return n;
}

static JsonNode *string_node(const char *s)
{
    JsonNode *n = json_node_new(JSON_NODE_VALUE);
    json_node_set_string(n, s);
    return n;
}

static JsonNode *bool_node(gboolean b)
{
    JsonNode *n = json_node_new(JSON_NODE_VALUE);
    json_node_set_boolean(n, b);
    return n;
}

/* The leaf for "key=text"; K is the spec entry or NULL when untyped. */
static JsonNode *leaf_from_text(const VmmOptSpec *spec, const VmmOptKey *k, const char *key,
                                const char *text, GError **error)
{
    gboolean b;
    guint64 v;

    if (!k || spec_key_is_wildcard(k))
        return string_node(text);
    switch (k->type) {
    case VMM_OPT_BOOL:
        return vmm_parse_bool(spec->option, key, text, &b, error) ? bool_node(b) : NULL;
    case VMM_OPT_SIZE:
        if (!vmm_parse_size(spec->option, key, text, &v, error))
            return NULL;
        return int_node_checked(spec, key, text, v, error);
    case VMM_OPT_NUMBER:
        if (!vmm_parse_number(spec->option, key, text, &v, error))
            return NULL;
        return int_node_checked(spec, key, text, v, error);
    case VMM_OPT_STRING:
    default:
        return string_node(text);
    }
}

/* A bare word: "readonly" means readonly=on. Only keys that can be on are
 * flags; a typed string or number key without a value is a mistake. */
static JsonNode *leaf_from_flag(const VmmOptSpec *spec, const VmmOptKey *k, const char *key,
                                gboolean first, GError **error)
{
    if (k && !spec_key_is_wildcard(k) && k->type == VMM_OPT_BOOL)
        return bool_node(TRUE);
    if (!first && (!k || spec_key_is_wildcard(k)))
        return string_node("on");
    opt_error(error, VMM_ERROR_INVALID, spec, "parameter '%s' is missing a value (write %s=VALUE)", key, key);
    return NULL;
}

static JsonNode *leaf_int_from_json(const VmmOptSpec *spec, const char *key, JsonNode *node,
                                    GError **error)
{
    gint64 i = json_node_get_int(node);
    if (i < 0) {
        opt_error(error, VMM_ERROR_INVALID, spec, "key '%s': %" G_GINT64_FORMAT " is negative", key, i);
        return NULL;
    }
    return json_node_copy(node);
}

/* The string a typed string key gets from a JSON scalar, so that json: and
 * the dotted form give the same tree. */
static char *json_scalar_to_text(JsonNode *node)
{
    GType t = json_node_get_value_type(node);
    char buf[G_ASCII_DTOSTR_BUF_SIZE];

    if (t == G_TYPE_INT64)
        return g_strdup_printf("%" G_GINT64_FORMAT, json_node_get_int(node));
    if (t == G_TYPE_BOOLEAN)
        return g_strdup(json_node_get_boolean(node) ? "on" : "off");
    if (t == G_TYPE_DOUBLE)
        return g_strdup(g_ascii_dtostr(buf, sizeof(buf), json_node_get_double(node)));
    return g_strdup(json_node_get_string(node));
}

/* A JSON scalar leaf: JSON numbers and booleans are kept; strings are typed
 * like the dotted form. */
static JsonNode *leaf_from_json(const VmmOptSpec *spec, const VmmOptKey *k, const char *key,
                                JsonNode *node, GError **error)
{
    static const char *const type_names[] = {
        [VMM_OPT_STRING] = "a string", [VMM_OPT_BOOL] = "a boolean",
        [VMM_OPT_NUMBER] = "a number", [VMM_OPT_SIZE] = "a size",
    };

    if (JSON_NODE_HOLDS_NULL(node)) {
        opt_error(error, VMM_ERROR_INVALID, spec, "key '%s': null is not a value", key);
        return NULL;
    }
    GType t = json_node_get_value_type(node);
    if (t == G_TYPE_STRING)
        return leaf_from_text(spec, k, key, json_node_get_string(node), error);
    if (!k || spec_key_is_wildcard(k))
        return json_node_copy(node);
    if (k->type == VMM_OPT_STRING) {
        g_autofree char *text = json_scalar_to_text(node);
        return string_node(text);
    }
    if (k->type == VMM_OPT_BOOL && t == G_TYPE_BOOLEAN)
        return json_node_copy(node);
    if ((k->type == VMM_OPT_SIZE || k->type == VMM_OPT_NUMBER) && t == G_TYPE_INT64)
        return leaf_int_from_json(spec, key, node, error);
    opt_error(error, VMM_ERROR_INVALID, spec, "key '%s' expects %s", key,
              (guint)k->type < G_N_ELEMENTS(type_names) ? type_names[k->type] : "a value");
    return NULL;
}

/* ---------------------------------------------------------------------------
 * Building the tree
 * ------------------------------------------------------------------------- */

/* One pair before typing: exactly one of TEXT and NODE is set, or neither
 * for a bare word. */
typedef struct {
    const char *key;
    const char *text;
    JsonNode *node;
    gboolean first; /* the first element of the option string */
} RawPair;

static JsonNode *type_leaf(const VmmOptSpec *spec, const RawPair *pair, GError **error)
{
    const VmmOptKey *k = NULL;

    if (spec->keys)
        k = spec_find_key(spec, pair->key);
    /* A leading bare word with no implied key is a value without a key,
     * unless it names a flag ("-drive readonly,file=x"). */
    if (!pair->node && !pair->text && pair->first)
        return leaf_from_flag(spec, k, pair->key, TRUE, error);
    if (spec->keys) {
        if (!k) {
            opt_error(error, VMM_ERROR_NOT_FOUND, spec,
                      "unknown key '%s' (\"-%s help\" lists the valid keys)", pair->key, spec->option);
            return NULL;
        }
    }
    if (pair->node)
        return leaf_from_json(spec, k, pair->key, pair->node, error);
    if (pair->text)
        return leaf_from_text(spec, k, pair->key, pair->text, error);
    return leaf_from_flag(spec, k, pair->key, pair->first, error);
}

static gboolean conflict_error(const VmmOptSpec *spec, char **parts, guint upto, const char *key,
                               GError **error)
{
    GString *p = g_string_new(parts[0]);
    for (guint i = 1; i <= upto; i++)
        g_string_append_printf(p, ".%s", parts[i]);
    opt_error(error, VMM_ERROR_INVALID, spec,
              "key '%s' is used both as a value and as a prefix (in '%s')", p->str, key);
    g_string_free(p, TRUE);
    return FALSE;
}

/* Inserts LEAF (taken) at the dotted KEY, split into PARTS, below ROOT. */
static gboolean tree_insert(const VmmOptSpec *spec, JsonObject *root, const char *key,
                            char **parts, JsonNode *leaf, GError **error)
{
    guint n = g_strv_length(parts);
    JsonObject *obj = root;
    for (guint i = 0; i + 1 < n; i++) {
        JsonNode *child = json_object_get_member(obj, parts[i]);
        if (!child) {
            JsonObject *fresh = json_object_new();
            json_object_set_object_member(obj, parts[i], fresh);
            obj = fresh;
        } else if (JSON_NODE_HOLDS_OBJECT(child)) {
            obj = json_node_get_object(child);
        } else {
            json_node_unref(leaf);
            return conflict_error(spec, parts, i, key, error);
        }
    }
    JsonNode *existing = json_object_get_member(obj, parts[n - 1]);
    if (existing) {
        json_node_unref(leaf);
        if (JSON_NODE_HOLDS_OBJECT(existing))
            return conflict_error(spec, parts, n - 1, key, error);
        return opt_error(error, VMM_ERROR_INVALID, spec, "duplicate key '%s'", key);
    }
    json_object_set_member(obj, parts[n - 1], leaf);
    return TRUE;
}

static char *child_path(const char *path, const char *name)
{
    return path[0] ? g_strdup_printf("%s.%s", path, name) : g_strdup(name);
}

/* Decides whether OBJ (at PATH, not the top level) is a list: all names are
 * indices 0..n-1. Sets *LIST to the array, or to NULL for a plain object;
 * FALSE for a level that mixes indices and names or has a gap. */
static gboolean object_as_list(const VmmOptSpec *spec, JsonObject *obj, const char *path,
                               JsonArray **list, GError **error)
{
    guint n = json_object_get_size(obj);
    g_autoptr(GList) names = json_object_get_members(obj);
    g_autofree JsonNode **slots = g_new0(JsonNode *, n);
    const char *an_index = NULL, *a_name = NULL, *out_of_range = NULL;

    for (GList *l = names; l; l = l->next) {
        guint64 idx;
        if (!is_list_index(l->data, &idx)) {
            a_name = l->data;
            continue;
        }
        an_index = l->data;
        if (idx < n)
            slots[idx] = json_object_get_member(obj, l->data);
        else if (!out_of_range)
            out_of_range = l->data;
    }
    *list = NULL;
    if (!an_index)
        return TRUE;
    if (a_name)
        return opt_error(error, VMM_ERROR_INVALID, spec,
                         "key '%s' mixes list indices and names ('%s.%s' and '%s.%s')",
                         path, path, an_index, path, a_name);
    if (out_of_range) {
        guint missing = 0;
        while (slots[missing])
            missing++;
        return opt_error(error, VMM_ERROR_INVALID, spec, "key '%s.%s': list '%s' has no element %u",
                         path, out_of_range, path, missing);
    }
    *list = json_array_sized_new(n);
    for (guint i = 0; i < n; i++)
        json_array_add_element(*list, json_node_ref(slots[i]));
    return TRUE;
}

/* Turns every all-index level below OBJ into an array, innermost first. */
static gboolean listify(const VmmOptSpec *spec, JsonObject *obj, const char *path, GError **error)
{
    g_autoptr(GList) names = json_object_get_members(obj);

    for (GList *l = names; l; l = l->next) {
        JsonNode *child = json_object_get_member(obj, l->data);
        if (!JSON_NODE_HOLDS_OBJECT(child))
            continue;
        g_autofree char *sub = child_path(path, l->data);
        JsonObject *child_obj = json_node_get_object(child);
        if (!listify(spec, child_obj, sub, error))
            return FALSE;
        JsonArray *array;
        if (!object_as_list(spec, child_obj, sub, &array, error))
            return FALSE;
        /* Replacing keeps the member's position in the object. */
        if (array)
            json_object_set_array_member(obj, l->data, array);
    }
    return TRUE;
}

/* Types and inserts every pair, then builds the lists. */
static JsonObject *build_tree(const VmmOptSpec *spec, const RawPair *pairs, guint n, GError **error)
{
    g_autoptr(JsonObject) root = json_object_new();

    for (guint i = 0; i < n; i++) {
        g_auto(GStrv) parts = split_key(spec, pairs[i].key, error);
        if (!parts)
            return NULL;
        JsonNode *leaf = type_leaf(spec, &pairs[i], error);
        if (!leaf || !tree_insert(spec, root, pairs[i].key, parts, leaf, error))
            return NULL;
    }
    if (!listify(spec, root, "", error))
        return NULL;
    return g_steal_pointer(&root);
}

/* ---------------------------------------------------------------------------
 * The dotted form
 * ------------------------------------------------------------------------- */

/* One comma-separated element before the spec gives it meaning. */
typedef struct {
    char *key;   /* NULL: a leading bare value, for the implied key */
    char *value; /* NULL: a bare word (flag) */
} Element;

static void element_clear(gpointer p)
{
    Element *e = p;
    g_free(e->key);
    g_free(e->value);
}

/* Reads a value up to a single ',' (consumed); ",," stands for ','. */
static char *read_value(const char **pp)
{
    GString *v = g_string_new(NULL);
    const char *p = *pp;

    while (*p) {
        if (*p == ',') {
            if (p[1] != ',') {
                p++;
                break;
            }
            p++;
        }
        g_string_append_c(v, *p);
        p++;
    }
    *pp = p;
    return g_string_free(v, FALSE);
}

/* Splits S into elements like QemuOpts' get_opt_name_value: "k=v", a bare
 * word (a name up to ',' or '='), and, when FIRST_IS_VALUE, a leading bare
 * element read as a value (so ",," works in it too). */
static GArray *split_elements(const char *s, gboolean first_is_value)
{
    GArray *out = g_array_new(FALSE, TRUE, sizeof(Element));
    g_array_set_clear_func(out, element_clear);
    const char *p = s;

    for (gboolean first = TRUE; *p; first = FALSE) {
        Element e = { NULL, NULL };
        gsize len = strcspn(p, "=,");
        if (p[len] == '=') {
            e.key = g_strndup(p, len);
            p += len + 1;
            e.value = read_value(&p);
        } else if (first && first_is_value) {
            e.value = read_value(&p);
        } else {
            e.key = g_strndup(p, len);
            p += len;
            if (*p == ',')
                p++;
        }
        g_array_append_val(out, e);
    }
    return out;
}

static JsonObject *parse_dotted(const VmmOptSpec *spec, const char *value, GError **error)
{
    g_autoptr(GArray) elements = split_elements(value, spec->implied != NULL);
    g_autofree RawPair *pairs = g_new0(RawPair, elements->len + 1);

    for (guint i = 0; i < elements->len; i++) {
        Element *e = &g_array_index(elements, Element, i);
        pairs[i].key = e->key ? e->key : spec->implied;
        pairs[i].text = e->value;
        pairs[i].first = i == 0;
    }
    return build_tree(spec, pairs, elements->len, error);
}

/* ---------------------------------------------------------------------------
 * The json: form
 * ------------------------------------------------------------------------- */

/* json-glib recurses once per level; refuse deep texts before it sees them. */
static gboolean json_depth_ok(const char *text)
{
    int depth = 0;
    gboolean in_string = FALSE, escaped = FALSE;

    for (const char *p = text; *p; p++) {
        if (in_string) {
            if (escaped)
                escaped = FALSE;
            else if (*p == '\\')
                escaped = TRUE;
            else if (*p == '"')
                in_string = FALSE;
        } else if (*p == '"') {
            in_string = TRUE;
        } else if (*p == '{' || *p == '[') {
            if (++depth > OPTS_MAX_DEPTH)
                return FALSE;
        } else if (*p == '}' || *p == ']') {
            depth--;
        }
    }
    return TRUE;
}

/* Collects the leaves below NODE as dotted pairs, like QEMU's qdict_flatten.
 * Empty objects and arrays have no leaves and vanish. */
static void flatten_json(JsonNode *node, const char *path, GPtrArray *keys, GPtrArray *nodes)
{
    if (JSON_NODE_HOLDS_OBJECT(node)) {
        JsonObject *obj = json_node_get_object(node);
        g_autoptr(GList) names = json_object_get_members(obj);
        for (GList *l = names; l; l = l->next) {
            g_autofree char *sub = child_path(path, l->data);
            flatten_json(json_object_get_member(obj, l->data), sub, keys, nodes);
        }
    } else if (JSON_NODE_HOLDS_ARRAY(node)) {
        JsonArray *array = json_node_get_array(node);
        for (guint i = 0; i < json_array_get_length(array); i++) {
            g_autofree char *name = g_strdup_printf("%u", i);
            g_autofree char *sub = child_path(path, name);
            flatten_json(json_array_get_element(array, i), sub, keys, nodes);
        }
    } else {
        g_ptr_array_add(keys, g_strdup(path));
        g_ptr_array_add(nodes, node);
    }
}

static JsonObject *parse_json_form(const VmmOptSpec *spec, const char *text, GError **error)
{
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(GError) local = NULL;

    if (!json_depth_ok(text)) {
        opt_error(error, VMM_ERROR_INVALID, spec, "json: nests deeper than %d levels", OPTS_MAX_DEPTH);
        return NULL;
    }
    if (!json_parser_load_from_data(parser, text, -1, &local)) {
        opt_error(error, VMM_ERROR_INVALID, spec, "json: %s", local->message);
        return NULL;
    }
    JsonNode *root = json_parser_get_root(parser);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        opt_error(error, VMM_ERROR_INVALID, spec, "json: the value must be an object ({...})");
        return NULL;
    }

    g_autoptr(GPtrArray) keys = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GPtrArray) nodes = g_ptr_array_new();
    flatten_json(root, "", keys, nodes);
    g_autofree RawPair *pairs = g_new0(RawPair, keys->len + 1);
    for (guint i = 0; i < keys->len; i++) {
        pairs[i].key = keys->pdata[i];
        pairs[i].node = nodes->pdata[i];
    }
    return build_tree(spec, pairs, keys->len, error);
}

/* ---------------------------------------------------------------------------
 * Public entry points
 * ------------------------------------------------------------------------- */

JsonObject *vmm_opts_parse(const VmmOptSpec *spec, const char *value, GError **error)
{
    if (!value)
        value = "";
    if (g_str_has_prefix(value, "json:"))
        return parse_json_form(spec, value + strlen("json:"), error);
    return parse_dotted(spec, value, error);
}

JsonObject *vmm_opts_from_pairs(const VmmOptSpec *spec, const char *const *keys,
                                const char *const *values, guint n, GError **error)
{
    g_autofree RawPair *pairs = g_new0(RawPair, n + 1);

    for (guint i = 0; i < n; i++) {
        pairs[i].key = keys[i];
        pairs[i].text = values[i];
    }
    return build_tree(spec, pairs, n, error);
}

static gboolean is_help_word(const char *s)
{
    return s && (g_str_equal(s, "help") || g_str_equal(s, "?"));
}

gboolean vmm_opts_wants_help(const char *value)
{
    if (!value || !value[0])
        return FALSE;
    g_autoptr(GArray) elements = split_elements(value, TRUE);
    Element *last = &g_array_index(elements, Element, elements->len - 1);
    if (elements->len == 1 && !last->key)
        return is_help_word(last->value);
    return !last->value && is_help_word(last->key);
}

static const char *type_label(VmmOptType type)
{
    switch (type) {
    case VMM_OPT_BOOL: return "bool";
    case VMM_OPT_SIZE: return "size";
    case VMM_OPT_NUMBER: return "num";
    case VMM_OPT_STRING:
    default: return "str";
    }
}

char *vmm_opts_help(const VmmOptSpec *spec)
{
    GString *out = g_string_new(NULL);

    g_string_append_printf(out, "%s options:\n", spec->option);
    if (!spec->keys) {
        g_string_append(out, "  any key=<str> is accepted\n");
        return g_string_free(out, FALSE);
    }
    for (const VmmOptKey *k = spec->keys; k->name; k++) {
        g_autofree char *left = g_strdup_printf("  %s=<%s>", k->name, type_label(k->type));
        /* QEMU pads to 24 columns before the help text. */
        if (k->help)
            g_string_append_printf(out, "%-24s - %s", left, k->help);
        else
            g_string_append(out, left);
        if (k->def_value)
            g_string_append_printf(out, " (default: %s)", k->def_value);
        g_string_append_c(out, '\n');
    }
    return g_string_free(out, FALSE);
}

/* ---------------------------------------------------------------------------
 * Back to text
 * ------------------------------------------------------------------------- */

static void append_escaped(GString *out, const char *s)
{
    for (; *s; s++) {
        if (*s == ',')
            g_string_append_c(out, ',');
        g_string_append_c(out, *s);
    }
}

static void append_scalar(GString *out, JsonNode *node)
{
    char buf[G_ASCII_DTOSTR_BUF_SIZE];
    GType t = json_node_get_value_type(node);

    if (t == G_TYPE_BOOLEAN)
        g_string_append(out, json_node_get_boolean(node) ? "on" : "off");
    else if (t == G_TYPE_INT64)
        g_string_append_printf(out, "%" G_GINT64_FORMAT, json_node_get_int(node));
    else if (t == G_TYPE_DOUBLE)
        g_string_append(out, g_ascii_dtostr(buf, sizeof(buf), json_node_get_double(node)));
    else if (t == G_TYPE_STRING)
        append_escaped(out, json_node_get_string(node));
}

static void flatten_to_string(GString *out, JsonNode *node, const char *path)
{
    if (JSON_NODE_HOLDS_OBJECT(node)) {
        JsonObject *obj = json_node_get_object(node);
        g_autoptr(GList) names = json_object_get_members(obj);
        for (GList *l = names; l; l = l->next) {
            g_autofree char *sub = child_path(path, l->data);
            flatten_to_string(out, json_object_get_member(obj, l->data), sub);
        }
    } else if (JSON_NODE_HOLDS_ARRAY(node)) {
        JsonArray *array = json_node_get_array(node);
        for (guint i = 0; i < json_array_get_length(array); i++) {
            g_autofree char *name = g_strdup_printf("%u", i);
            g_autofree char *sub = child_path(path, name);
            flatten_to_string(out, json_array_get_element(array, i), sub);
        }
    } else if (JSON_NODE_HOLDS_VALUE(node)) {
        if (out->len)
            g_string_append_c(out, ',');
        g_string_append_printf(out, "%s=", path);
        append_scalar(out, node);
    }
}

char *vmm_opts_to_string(JsonObject *obj)
{
    GString *out = g_string_new(NULL);
    g_autoptr(JsonNode) root = json_node_new(JSON_NODE_OBJECT);

    json_node_set_object(root, obj);
    flatten_to_string(out, root, "");
    return g_string_free(out, FALSE);
}

/* ---------------------------------------------------------------------------
 * Getters
 * ------------------------------------------------------------------------- */

/* The node at dotted KEY, stepping into arrays by index; NULL if absent. */
static JsonNode *lookup_node(JsonObject *obj, const char *key)
{
    g_auto(GStrv) parts = g_strsplit(key, ".", -1);
    JsonNode *node = NULL;

    for (guint i = 0; parts[i]; i++) {
        guint64 idx;
        if (obj) {
            node = json_object_get_member(obj, parts[i]);
        } else if (node && JSON_NODE_HOLDS_ARRAY(node) && is_list_index(parts[i], &idx)) {
            JsonArray *array = json_node_get_array(node);
            node = idx < json_array_get_length(array) ? json_array_get_element(array, idx) : NULL;
        } else {
            return NULL;
        }
        if (!node)
            return NULL;
        obj = JSON_NODE_HOLDS_OBJECT(node) ? json_node_get_object(node) : NULL;
    }
    return node;
}

static JsonNode *lookup_scalar(JsonObject *obj, const char *key, GType type)
{
    JsonNode *node = obj ? lookup_node(obj, key) : NULL;
    if (!node || !JSON_NODE_HOLDS_VALUE(node))
        return NULL;
    return type == G_TYPE_INVALID || json_node_get_value_type(node) == type ? node : NULL;
}

const char *vmm_opts_get_string(JsonObject *obj, const char *key, const char *def)
{
    JsonNode *node = lookup_scalar(obj, key, G_TYPE_STRING);
    return node ? json_node_get_string(node) : def;
}

gboolean vmm_opts_get_bool(JsonObject *obj, const char *key, gboolean def)
{
    JsonNode *node = lookup_scalar(obj, key, G_TYPE_INVALID);
    gboolean b;

    if (!node)
        return def;
    if (json_node_get_value_type(node) == G_TYPE_BOOLEAN)
        return json_node_get_boolean(node);
    /* An untyped spec leaves "on" as a string. */
    if (json_node_get_value_type(node) == G_TYPE_STRING &&
        vmm_parse_bool(NULL, NULL, json_node_get_string(node), &b, NULL))
        return b;
    return def;
}

guint64 vmm_opts_get_uint(JsonObject *obj, const char *key, guint64 def)
{
    JsonNode *node = lookup_scalar(obj, key, G_TYPE_INVALID);
    guint64 v;

    if (!node)
        return def;
    if (json_node_get_value_type(node) == G_TYPE_INT64)
        return json_node_get_int(node) >= 0 ? (guint64)json_node_get_int(node) : def;
    if (json_node_get_value_type(node) == G_TYPE_STRING &&
        vmm_parse_number(NULL, NULL, json_node_get_string(node), &v, NULL))
        return v;
    return def;
}

gboolean vmm_opts_has(JsonObject *obj, const char *key)
{
    return obj && lookup_node(obj, key) != NULL;
}
