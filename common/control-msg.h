/* The control protocol's messages as values: bytes <-> VmmControlMsg, with no
 * I/O, so that the decoder can be fuzzed on its own. Wire format: proto/README.md. */
#pragma once
#include <glib.h>
#include <json-glib/json-glib.h>

typedef enum {
    VMM_CONTROL_HELLO,       /* {"hello":{...}}                      payload = the hello object */
    VMM_CONTROL_REQUEST,     /* {"id":N,"command":C,"args":{...}}    name = C, payload = args */
    VMM_CONTROL_REPLY_OK,    /* {"id":N,"return":{...}}              payload = the return object */
    VMM_CONTROL_REPLY_ERROR, /* {"id":N|null,"error":{"class":K,"desc":D}}  name = K, desc = D */
    VMM_CONTROL_EVENT,       /* {"event":E,"data":{...}}             name = E, payload = data */
} VmmControlKind;

typedef struct {
    VmmControlKind kind;
    /* Requests and successful replies always have an id; error replies may
     * not (id null: the failed message's id could not be read). */
    gboolean has_id;
    gint64 id;
    char *name;          /* command, event or error class; NULL for hello and reply-ok */
    char *desc;          /* error description; NULL unless reply-error */
    JsonObject *payload; /* never NULL after decoding, except for reply-error (NULL) */
} VmmControlMsg;

/* Parses one message. On failure MSG is cleared except has_id/id, which tell
 * the id of the broken message when it could be read (to address the error
 * reply). Errors: VMM_ERROR_TOO_BIG over VMM_CONTROL_MAX_MSG, otherwise
 * VMM_ERROR_INVALID. */
gboolean vmm_control_msg_decode(const void *data, gsize len, VmmControlMsg *msg,
                                GError **error);

/* Serializes MSG as compact JSON. NULL payloads are written as {}. Fails with
 * VMM_ERROR_TOO_BIG over VMM_CONTROL_MAX_MSG and VMM_ERROR_INVALID for a
 * message the decoder would refuse (a request without a name, ...). */
GBytes *vmm_control_msg_encode(const VmmControlMsg *msg, GError **error);

/* Frees the members (not MSG itself) and zeroes it. */
void vmm_control_msg_clear(VmmControlMsg *msg);

/* Same kind, id, name, desc and payload (deep JSON comparison). */
gboolean vmm_control_msg_equal(const VmmControlMsg *a, const VmmControlMsg *b);

/* "hello", "request", ... for messages. */
const char *vmm_control_kind_name(VmmControlKind kind);
