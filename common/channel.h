/* The control channel: one JSON object per SOCK_SEQPACKET message, file
 * descriptors in SCM_RIGHTS of the same message, driven by a libuv loop.
 * Wire format and message catalogue: proto/control.h and proto/README.md.
 *
 * Each side sends {"hello":{...}} first and processes nothing else until the
 * peer's hello arrived with a compatible protocol version. After that:
 *   request  {"id":N,"command":"name","args":{...}}
 *   reply    {"id":N,"return":{...}}  or  {"id":N,"error":{"class":C,"desc":D}}
 *   event    {"event":"name","data":{...}}
 * A malformed or oversized message, or an unknown command, gets an error reply
 * (id null when none could be read); the channel stays up. */
#pragma once
#include <glib.h>
#include <json-glib/json-glib.h>
#include <uv.h>

typedef struct VmmChannel VmmChannel;
typedef struct VmmChannelRequest VmmChannelRequest;

typedef struct {
    /* The peer's hello was accepted; HELLO is the object inside "hello". */
    void (*on_ready)(VmmChannel *ch, JsonObject *hello, gpointer user);
    /* A request: answer it with vmm_channel_reply* exactly once, now or later.
     * If NULL, every request gets a CommandNotFound error. */
    void (*on_request)(VmmChannel *ch, VmmChannelRequest *req, gpointer user);
    /* An event. FDS belong to the callee only if it takes them (sets to -1);
     * the rest are closed after the call. */
    void (*on_event)(VmmChannel *ch, const char *name, JsonObject *data, int *fds,
                     guint nfds, gpointer user);
    /* The peer hung up, or the channel failed (WHY says how). The channel is
     * not freed: call vmm_channel_free. */
    void (*on_closed)(VmmChannel *ch, const GError *why, gpointer user);
} VmmChannelOps;

/* RESULT is NULL on error. FDS as in on_event. */
typedef void (*VmmChannelReplyFn)(VmmChannel *ch, JsonObject *result, const GError *error,
                                  int *fds, guint nfds, gpointer user);

/* Takes ownership of FD (a connected SOCK_SEQPACKET socket, made non-blocking
 * here), and sends our hello {"protocol":VMM_CONTROL_PROTOCOL,"role":ROLE,"pid":..}
 * plus the members of EXTRA_HELLO (may be NULL; transfer none). */
VmmChannel *vmm_channel_new(uv_loop_t *loop, int fd, const char *role,
                            JsonObject *extra_hello, const VmmChannelOps *ops,
                            gpointer user, GError **error);
/* Closes the socket; pending calls get their callback with a VMM_ERROR_CLOSED
 * error. Safe from inside any callback of this channel. */
void vmm_channel_free(VmmChannel *ch);

/* The peer's role and pid from its hello (NULL / 0 before on_ready). */
const char *vmm_channel_peer_role(VmmChannel *ch);
int vmm_channel_peer_pid(VmmChannel *ch);
gboolean vmm_channel_is_ready(VmmChannel *ch);

/* Sends a request. ARGS: transfer full, may be NULL. FDS are duplicated for
 * the message; the caller keeps its own. Calls made before the peer's hello are
 * queued and sent once it has arrived. */
gboolean vmm_channel_call(VmmChannel *ch, const char *command, JsonObject *args,
                          const int *fds, guint nfds, VmmChannelReplyFn cb,
                          gpointer user, GError **error);
/* Sends an event. DATA: transfer full, may be NULL. */
gboolean vmm_channel_emit(VmmChannel *ch, const char *event, JsonObject *data,
                          const int *fds, guint nfds, GError **error);

/* Request accessors. */
const char *vmm_channel_request_command(VmmChannelRequest *req);
JsonObject *vmm_channel_request_args(VmmChannelRequest *req); /* never NULL */
guint vmm_channel_request_nfds(VmmChannelRequest *req);
/* Takes fd I out of the request (the caller owns it now), or -1. */
int vmm_channel_request_take_fd(VmmChannelRequest *req, guint i);
VmmChannel *vmm_channel_request_channel(VmmChannelRequest *req);

/* Answer and free REQ. RESULT: transfer full, may be NULL ({}). */
void vmm_channel_reply(VmmChannelRequest *req, JsonObject *result, const int *fds, guint nfds);
/* CLASS as QMP's: "GenericError", "CommandNotFound", ... */
void vmm_channel_reply_error(VmmChannelRequest *req, const char *klass, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);
void vmm_channel_reply_gerror(VmmChannelRequest *req, const GError *error);
