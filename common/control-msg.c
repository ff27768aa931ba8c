/* Control messages: decoding and encoding, no I/O. Everything here faces bytes
 * from another (possibly compromised) process: every shape is checked and every
 * failure is a GError, never an abort. */
#include "common/control-msg.h"
#include "common/error.h"
#include "proto/control.h"

#include <errno.h>
#include <math.h>
#include <string.h>

/* The members that say what a message is; exactly one must be present. */
static const struct {
    const char *member;
    VmmControlKind kind;
} kind_members[] = {
    { "hello", VMM_CONTROL_HELLO },
    { "command", VMM_CONTROL_REQUEST },
    { "return", VMM_CONTROL_REPLY_OK },
    { "error", VMM_CONTROL_REPLY_ERROR },
    { "event", VMM_CONTROL_EVENT },
};

const char *vmm_control_kind_name(VmmControlKind kind)
{
    switch (kind) {
    case VMM_CONTROL_HELLO:
        return "hello";
    case VMM_CONTROL_REQUEST:
        return "request";
    case VMM_CONTROL_REPLY_OK:
        return "reply";
    case VMM_CONTROL_REPLY_ERROR:
        return "error reply";
    case VMM_CONTROL_EVENT:
        return "event";
    }
    return "unknown message";
}

void vmm_control_msg_clear(VmmControlMsg *msg)
{
    g_clear_pointer(&msg->name, g_free);
    g_clear_pointer(&msg->desc, g_free);
    g_clear_pointer(&msg->payload, json_object_unref);
    memset(msg, 0, sizeof(*msg));
}

static gboolean refuse_text(GError **error, const char *why)
{
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "control message: %s", why);
    return FALSE;
}

/* A number token without fraction or exponent must fit in gint64: json-glib
 * silently wraps bigger ones (99999999999999999999999 reads as -1). */
static gboolean integer_token_fits(const char *text, gsize len, gsize *i)
{
    gsize start = *i, end = start;
    gboolean integral = TRUE;
    while (end < len && strchr("0123456789+-.eE", text[end])) {
        if (text[end] == '.' || text[end] == 'e' || text[end] == 'E')
            integral = FALSE;
        end++;
    }
    *i = end - 1;
    if (!integral)
        return TRUE;
    if (end - start > 24)
        return FALSE;
    char token[32];
    memcpy(token, text + start, end - start);
    token[end - start] = '\0';
    errno = 0;
    g_ascii_strtoll(token, NULL, 10);
    return errno != ERANGE;
}

/* Checks what json-glib would let through or choke on, before it sees the
 * text: nesting deeper than VMM_CONTROL_MAX_DEPTH (its parser recurses),
 * anything after the top-level value (it would ignore a second object),
 * \u0000 in strings (it would cut the string there), escapes and raw control
 * characters that JSON does not allow in strings, and integers beyond gint64
 * (it would wrap them). */
static gboolean check_text(const char *text, gsize len, GError **error)
{
    int depth = 0;
    gboolean in_string = FALSE, ended = FALSE;
    for (gsize i = 0; i < len; i++) {
        char c = text[i];
        if (in_string) {
            if (c == '\\') {
                /* json-glib also takes GScanner's escapes (\\101 octal...),
                 * which can make strings that are not UTF-8. */
                if (i + 1 >= len || !text[i + 1] || !strchr("\"\\/bfnrtu", text[i + 1]))
                    return refuse_text(error, "a string has an invalid escape");
                if (i + 5 < len && text[i + 1] == 'u' && memcmp(text + i + 2, "0000", 4) == 0)
                    return refuse_text(error, "a string contains \\u0000");
                i++;
            } else if ((unsigned char)c < 0x20) {
                return refuse_text(error, "a string contains a control character");
            } else if (c == '"') {
                in_string = FALSE;
            }
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
            continue;
        if (ended)
            return refuse_text(error, "data after the JSON object");
        if (c == '"') {
            in_string = TRUE;
        } else if (c == '{' || c == '[') {
            if (++depth > VMM_CONTROL_MAX_DEPTH) {
                g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                            "control message: nested deeper than %d levels",
                            VMM_CONTROL_MAX_DEPTH);
                return FALSE;
            }
        } else if (c == '}' || c == ']') {
            if (--depth == 0)
                ended = TRUE;
        } else if (c == '-' || g_ascii_isdigit(c)) {
            if (!integer_token_fits(text, len, &i))
                return refuse_text(error, "an integer is out of range");
        }
    }
    return TRUE;
}

/* What must hold of every value so that we can write it back: JSON has no NaN
 * or infinity, but json-glib turns an overflowing number such as 1e999 into
 * one; and strings and member names must be UTF-8 (check_text should already
 * have made sure of that). */
static gboolean node_is_writable(JsonNode *node)
{
    switch (json_node_get_node_type(node)) {
    case JSON_NODE_OBJECT: {
        JsonObjectIter iter;
        const char *name;
        JsonNode *member;
        json_object_iter_init(&iter, json_node_get_object(node));
        while (json_object_iter_next(&iter, &name, &member)) {
            if (!g_utf8_validate(name, -1, NULL) || !node_is_writable(member))
                return FALSE;
        }
        return TRUE;
    }
    case JSON_NODE_ARRAY: {
        JsonArray *array = json_node_get_array(node);
        guint n = json_array_get_length(array);
        for (guint i = 0; i < n; i++) {
            if (!node_is_writable(json_array_get_element(array, i)))
                return FALSE;
        }
        return TRUE;
    }
    case JSON_NODE_VALUE:
        if (json_node_get_value_type(node) == G_TYPE_DOUBLE)
            return isfinite(json_node_get_double(node));
        if (json_node_get_value_type(node) == G_TYPE_STRING)
            return g_utf8_validate(json_node_get_string(node), -1, NULL);
        return TRUE;
    case JSON_NODE_NULL:
        return TRUE;
    }
    return TRUE;
}

static JsonNode *parse_root(const char *text, gsize len, GError **error)
{
    if (len > VMM_CONTROL_MAX_MSG) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG,
                    "control message: %zu bytes exceed the limit of %d bytes", len,
                    VMM_CONTROL_MAX_MSG);
        return NULL;
    }
    if (!g_utf8_validate_len(text, len, NULL)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "control message: not valid UTF-8 (or contains a NUL byte)");
        return NULL;
    }
    if (!check_text(text, len, error))
        return NULL;

    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(GError) local = NULL;
    /* json-glib wants a signed length; len <= VMM_CONTROL_MAX_MSG here. */
    if (!json_parser_load_from_data(parser, text, (gssize)len, &local)) {
        /* json-glib may quote the offending bytes, which need not be UTF-8;
         * this message can end up in an error reply. */
        g_autofree char *why = g_utf8_make_valid(local->message, -1);
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "control message: not JSON: %s", why);
        return NULL;
    }
    JsonNode *root = json_parser_get_root(parser);
    if (!root || !JSON_NODE_HOLDS_OBJECT(root)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "control message: not a JSON object");
        return NULL;
    }
    if (!node_is_writable(root)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "control message: a number is out of range or a string not UTF-8");
        return NULL;
    }
    return json_node_ref(root);
}

static gboolean node_is_integer(JsonNode *node)
{
    return JSON_NODE_HOLDS_VALUE(node) && json_node_get_value_type(node) == G_TYPE_INT64;
}

static gboolean node_is_string(JsonNode *node)
{
    return JSON_NODE_HOLDS_VALUE(node) && json_node_get_value_type(node) == G_TYPE_STRING;
}

static gboolean read_id(JsonObject *root, VmmControlMsg *msg, GError **error)
{
    JsonNode *id = json_object_get_member(root, "id");
    if (!id || JSON_NODE_HOLDS_NULL(id))
        return TRUE;
    if (!node_is_integer(id)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "control message: \"id\" is not an integer");
        return FALSE;
    }
    msg->has_id = TRUE;
    msg->id = json_node_get_int(id);
    return TRUE;
}

static gboolean read_kind(JsonObject *root, VmmControlMsg *msg, GError **error)
{
    const char *found = NULL;
    for (gsize i = 0; i < G_N_ELEMENTS(kind_members); i++) {
        if (!json_object_has_member(root, kind_members[i].member))
            continue;
        if (found) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "control message: has both \"%s\" and \"%s\"", found,
                        kind_members[i].member);
            return FALSE;
        }
        found = kind_members[i].member;
        msg->kind = kind_members[i].kind;
    }
    if (!found) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "control message: none of \"command\", \"return\", \"error\", "
                    "\"event\" or \"hello\"");
        return FALSE;
    }
    return TRUE;
}

/* Member NAME of ROOT as a non-empty string, copied into *OUT. */
static gboolean read_name(JsonObject *root, const char *name, char **out, GError **error)
{
    JsonNode *node = json_object_get_member(root, name);
    if (!node || !node_is_string(node) || !*json_node_get_string(node)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "control message: \"%s\" is not a non-empty string", name);
        return FALSE;
    }
    *out = g_strdup(json_node_get_string(node));
    return TRUE;
}

/* Member NAME of ROOT as an object, referenced into *OUT; absent means {}
 * when OPTIONAL. */
static gboolean read_object(JsonObject *root, const char *name, gboolean optional,
                            JsonObject **out, GError **error)
{
    JsonNode *node = json_object_get_member(root, name);
    if (!node && optional) {
        *out = json_object_new();
        return TRUE;
    }
    if (!node || !JSON_NODE_HOLDS_OBJECT(node)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "control message: \"%s\" is not an object", name);
        return FALSE;
    }
    *out = json_object_ref(json_node_get_object(node));
    return TRUE;
}

static gboolean refuse_id(const VmmControlMsg *msg, GError **error)
{
    if (!msg->has_id)
        return TRUE;
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "control message: %s with an \"id\"",
                vmm_control_kind_name(msg->kind));
    return FALSE;
}

static gboolean require_id(const VmmControlMsg *msg, GError **error)
{
    if (msg->has_id)
        return TRUE;
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "control message: %s without an \"id\"",
                vmm_control_kind_name(msg->kind));
    return FALSE;
}

static gboolean read_error_member(JsonObject *root, VmmControlMsg *msg, GError **error)
{
    JsonObject *err;
    if (!read_object(root, "error", FALSE, &err, error))
        return FALSE;
    gboolean ok = read_name(err, "class", &msg->name, error);
    if (ok) {
        JsonNode *desc = json_object_get_member(err, "desc");
        if (desc && node_is_string(desc)) {
            msg->desc = g_strdup(json_node_get_string(desc));
        } else {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "control message: error \"desc\" is not a string");
            ok = FALSE;
        }
    }
    json_object_unref(err);
    return ok;
}

static gboolean read_body(JsonObject *root, VmmControlMsg *msg, GError **error)
{
    switch (msg->kind) {
    case VMM_CONTROL_HELLO:
        return refuse_id(msg, error) && read_object(root, "hello", FALSE, &msg->payload, error);
    case VMM_CONTROL_REQUEST:
        return require_id(msg, error) && read_name(root, "command", &msg->name, error) &&
               read_object(root, "args", TRUE, &msg->payload, error);
    case VMM_CONTROL_REPLY_OK:
        return require_id(msg, error) && read_object(root, "return", FALSE, &msg->payload, error);
    case VMM_CONTROL_REPLY_ERROR:
        return read_error_member(root, msg, error);
    case VMM_CONTROL_EVENT:
        return refuse_id(msg, error) && read_name(root, "event", &msg->name, error) &&
               read_object(root, "data", TRUE, &msg->payload, error);
    }
    g_assert_not_reached();
}

gboolean vmm_control_msg_decode(const void *data, gsize len, VmmControlMsg *msg,
                                GError **error)
{
    memset(msg, 0, sizeof(*msg));
    g_autoptr(JsonNode) root_node = parse_root(data, len, error);
    if (!root_node)
        return FALSE;
    JsonObject *root = json_node_get_object(root_node);
    if (read_id(root, msg, error) && read_kind(root, msg, error) && read_body(root, msg, error))
        return TRUE;

    gboolean has_id = msg->has_id;
    gint64 id = msg->id;
    vmm_control_msg_clear(msg);
    msg->has_id = has_id;
    msg->id = id;
    return FALSE;
}

static gboolean check_encodable(const VmmControlMsg *msg, GError **error)
{
    const char *missing = NULL;
    switch (msg->kind) {
    case VMM_CONTROL_HELLO:
        break;
    case VMM_CONTROL_REQUEST:
        if (!msg->has_id)
            missing = "an id";
        else if (!msg->name || !*msg->name)
            missing = "a command name";
        break;
    case VMM_CONTROL_REPLY_OK:
        if (!msg->has_id)
            missing = "an id";
        break;
    case VMM_CONTROL_REPLY_ERROR:
        if (!msg->name || !*msg->name)
            missing = "an error class";
        break;
    case VMM_CONTROL_EVENT:
        if (!msg->name || !*msg->name)
            missing = "an event name";
        break;
    default:
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "control message: unknown kind %d",
                    (int)msg->kind);
        return FALSE;
    }
    if (missing) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "control message: %s without %s",
                    vmm_control_kind_name(msg->kind), missing);
        return FALSE;
    }
    return TRUE;
}

static JsonObject *payload_or_empty(const VmmControlMsg *msg)
{
    return msg->payload ? json_object_ref(msg->payload) : json_object_new();
}

static JsonObject *build_object(const VmmControlMsg *msg)
{
    JsonObject *root = json_object_new();
    gboolean addressed = msg->kind == VMM_CONTROL_REQUEST || msg->kind == VMM_CONTROL_REPLY_OK ||
                         msg->kind == VMM_CONTROL_REPLY_ERROR;
    if (addressed && msg->has_id)
        json_object_set_int_member(root, "id", msg->id);
    else if (msg->kind == VMM_CONTROL_REPLY_ERROR)
        json_object_set_null_member(root, "id");

    switch (msg->kind) {
    case VMM_CONTROL_HELLO:
        json_object_set_object_member(root, "hello", payload_or_empty(msg));
        break;
    case VMM_CONTROL_REQUEST:
        json_object_set_string_member(root, "command", msg->name);
        json_object_set_object_member(root, "args", payload_or_empty(msg));
        break;
    case VMM_CONTROL_REPLY_OK:
        json_object_set_object_member(root, "return", payload_or_empty(msg));
        break;
    case VMM_CONTROL_REPLY_ERROR: {
        JsonObject *err = json_object_new();
        json_object_set_string_member(err, "class", msg->name);
        json_object_set_string_member(err, "desc", msg->desc ? msg->desc : "");
        json_object_set_object_member(root, "error", err);
        break;
    }
    case VMM_CONTROL_EVENT:
        json_object_set_string_member(root, "event", msg->name);
        json_object_set_object_member(root, "data", payload_or_empty(msg));
        break;
    }
    return root;
}

GBytes *vmm_control_msg_encode(const VmmControlMsg *msg, GError **error)
{
    if (!check_encodable(msg, error))
        return NULL;
    g_autoptr(JsonNode) root = json_node_new(JSON_NODE_OBJECT);
    json_node_take_object(root, build_object(msg));
    g_autoptr(JsonGenerator) gen = json_generator_new();
    json_generator_set_root(gen, root);
    gsize len = 0;
    char *text = json_generator_to_data(gen, &len);
    if (!g_utf8_validate_len(text, len, NULL)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "control %s%s%s: a string is not valid UTF-8",
                    vmm_control_kind_name(msg->kind), msg->name ? " " : "",
                    msg->name ? msg->name : "");
        g_free(text);
        return NULL;
    }
    if (len > VMM_CONTROL_MAX_MSG) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG,
                    "control %s%s%s: %zu bytes exceed the limit of %d bytes",
                    vmm_control_kind_name(msg->kind), msg->name ? " " : "",
                    msg->name ? msg->name : "", len, VMM_CONTROL_MAX_MSG);
        g_free(text);
        return NULL;
    }
    return g_bytes_new_take(text, len);
}

static gboolean objects_equal(JsonObject *a, JsonObject *b)
{
    if (!a || !b)
        return a == b;
    g_autoptr(JsonNode) na = json_node_init_object(json_node_alloc(), a);
    g_autoptr(JsonNode) nb = json_node_init_object(json_node_alloc(), b);
    return json_node_equal(na, nb);
}

gboolean vmm_control_msg_equal(const VmmControlMsg *a, const VmmControlMsg *b)
{
    return a->kind == b->kind && a->has_id == b->has_id && (!a->has_id || a->id == b->id) &&
           g_strcmp0(a->name, b->name) == 0 && g_strcmp0(a->desc, b->desc) == 0 &&
           objects_equal(a->payload, b->payload);
}
