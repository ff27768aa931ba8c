/* fsd's exports in helper mode: see helper-exports.h. */
#include "fsd/helper-exports.h"
#include "fsd/fsd-internal.h"
#include "fsd/9p-transport.h"
#include "common/error.h"
#include "common/guest-ram.h"
#include "common/log.h"
#include "proto/control.h"

#include <string.h>
#include <unistd.h>

typedef struct {
    FsdExport *export;
    FsdServer *server;
} HelperExport;

/* id -> HelperExport; the helper's loop is single-threaded. */
static GHashTable *exports;


static gboolean config_from_args(JsonObject *a, int dirfd, FsdExportConfig *cfg, GError **error)
{
    fsd_export_config_init(cfg);
    /* The directory vmmd opened, named so that fsd_export_new() reopens that
     * very object (not whatever the path names by now). */
    cfg->path = g_strdup_printf("/proc/self/fd/%d", dirfd);
    cfg->tag = g_strdup(json_object_get_string_member_with_default(a, "tag", NULL));
    const char *model = json_object_get_string_member_with_default(a, "security-model", "passthrough");
    if (!fsd_model_parse(model, &cfg->model, error))
        return FALSE;
    cfg->readonly = json_object_get_boolean_member_with_default(a, "readonly", FALSE);
    cfg->writeout_immediate = json_object_get_boolean_member_with_default(a, "writeout-immediate", FALSE);
    if (json_object_has_member(a, "fmode"))
        cfg->fmode = (mode_t)json_object_get_int_member(a, "fmode") & 07777;
    if (json_object_has_member(a, "dmode"))
        cfg->dmode = (mode_t)json_object_get_int_member(a, "dmode") & 07777;
    JsonObject *t = json_object_get_member(a, "throttling") &&
                    JSON_NODE_HOLDS_OBJECT(json_object_get_member(a, "throttling"))
                        ? json_object_get_object_member(a, "throttling") : NULL;
    if (t) {
        g_autoptr(GList) keys = json_object_get_members(t);
        for (GList *k = keys; k; k = k->next) {
            gint64 v = json_object_get_int_member(t, k->data);
            if (v < 0 || !fsd_throttle_config_set(&cfg->throttle, k->data, (guint64)v, error))
                return FALSE;
        }
    }
    return TRUE;
}

static HelperExport *open_export(VmmHelper *h, const char *id, JsonObject *a, int dirfd, GError **error)
{
    FsdExportConfig cfg;
    gboolean ok = config_from_args(a, dirfd, &cfg, error);
    FsdExport *e = ok ? fsd_export_new(&cfg, error) : NULL;
    fsd_export_config_clear(&cfg);
    if (!e)
        return NULL;
    /* Attach names the export by its host path (or the tag), not by the
     * /proc name it was opened through. */
    const char *path = json_object_get_string_member_with_default(a, "path", NULL);
    if (path) {
        g_free(e->cfg.path);
        e->cfg.path = g_strdup(path);
    }
    HelperExport *x = g_new0(HelperExport, 1);
    x->export = e;
    x->server = fsd_server_new(vmm_helper_loop(h), e);
    vmm_info("fsdev '%s': serving %s (%s%s)", id, path ? path : "the export", fsd_model_name(e->cfg.model),
             e->cfg.readonly ? ", read-only" : "");
    return x;
}

static void fsdev_add(VmmHelper *h, VmmChannelRequest *req)
{
    g_autoptr(GError) err = NULL;
    JsonObject *a = vmm_channel_request_args(req);
    const char *id = json_object_get_string_member_with_default(a, "id", NULL);
    int sock = vmm_channel_request_take_fd(req, 0);
    int dirfd = vmm_channel_request_take_fd(req, 1);
    gint64 ram_size = json_object_get_int_member_with_default(a, "guest-memory", 0);
    int ram_fd = ram_size > 0 ? vmm_channel_request_take_fd(req, 2) : -1;
    guint8 *ram = ram_fd >= 0 ? vmm_guest_ram_adopt(ram_fd, (guint64)ram_size, "9P data") : NULL;
    gboolean with_ram = ram != NULL;
    if (!exports)
        exports = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    HelperExport *x = id ? g_hash_table_lookup(exports, id) : NULL;
    if (!id || sock < 0 || (!x && dirfd < 0)) {
        g_set_error(&err, VMM_ERROR, VMM_ERROR_INVALID,
                    "fsdev-add: needs 'id' and the fds [socket, export directory]");
    } else if (!x && (x = open_export(h, id, a, dirfd, &err))) {
        g_hash_table_insert(exports, g_strdup(id), x);
    }
    if (dirfd >= 0)
        close(dirfd);
    if (x && !err && fsd_server_serve_fd_guest(x->server, sock, ram, with_ram ? (guint64)ram_size : 0, &err))
        sock = -1;
    if (sock >= 0)
        close(sock);
    if (err) {
        g_prefix_error(&err, "fsdev '%s': ", id ? id : "");
        vmm_channel_reply_gerror(req, err);
        return;
    }
    JsonObject *r = json_object_new();
    json_object_set_string_member(r, "security-model", fsd_model_name(x->export->cfg.model));
    json_object_set_int_member(r, "connections", fsd_server_connections(x->server));
    json_object_set_boolean_member(r, "guest-memory", with_ram);
    vmm_channel_reply(req, r, NULL, 0);
}

gboolean fsd_helper_handle_request(VmmHelper *h, VmmChannelRequest *req)
{
    if (!g_str_equal(vmm_channel_request_command(req), VMM_CMD_FSDEV_ADD))
        return FALSE;
    fsdev_add(h, req);
    return TRUE;
}

void fsd_helper_cleanup(VmmHelper *h)
{
    if (!exports)
        return;
    /* The servers' handles close on the helper's last loop run. The exports
     * stay: their worker threads may still finish requests of connections
     * that are closing, and the process ends next. */
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, exports);
    while (g_hash_table_iter_next(&it, NULL, &v))
        fsd_server_shutdown(((HelperExport *)v)->server);
}
