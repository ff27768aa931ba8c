/* Exports managed at run time over the control channel, the same in both
 * places blockd gets requests from: vmmd (helper mode) and operators
 * (`blockd --daemon --control PATH`). Commands (proto/README.md):
 *   nbd-export-add {name, filename, format?, read-only?, description?, shared?,
 *                   allocation-depth?, options?{...block options}}
 *   nbd-export-remove {name, mode?: "safe"|"hard"}
 *   query-nbd-exports -> {"exports":[{name, filename, read-only, clients}]}
 *   nbd-listen {address: "unix:PATH" | "HOST:PORT"} -> {"port": N}
 *   nbd-serve-fd + one fd (a connected socket, e.g. vmmd's socketpair end) */
#include "blockd/daemon.h"
#include "common/error.h"
#include "common/log.h"
#include "proto/control.h"

struct BlockdExports {
    NbdServer *server;
    GPtrArray *listeners; /* NbdListener* */
};

BlockdExports *blockd_exports_new(void)
{
    BlockdExports *e = g_new0(BlockdExports, 1);
    e->server = nbd_server_new();
    e->listeners = g_ptr_array_new();
    return e;
}

void blockd_exports_free(BlockdExports *e)
{
    if (!e)
        return;
    for (guint i = 0; i < e->listeners->len; i++)
        nbd_listener_free(e->listeners->pdata[i]);
    g_ptr_array_unref(e->listeners);
    nbd_server_free(e->server);
    g_free(e);
}

NbdServer *blockd_exports_server(BlockdExports *e)
{
    return e->server;
}

gboolean blockd_exports_listen(BlockdExports *e, const char *address, int *port, GError **error)
{
    NbdListener *l = nbd_listener_new(e->server, address, error);
    if (!l)
        return FALSE;
    g_ptr_array_add(e->listeners, l);
    if (port)
        *port = nbd_listener_port(l);
    return TRUE;
}

static gboolean export_add(BlockdExports *e, JsonObject *a, GError **error)
{
    const char *name = json_object_get_string_member_with_default(a, "name", NULL);
    const char *filename = json_object_get_string_member_with_default(a, "filename", NULL);
    if (!name || !filename) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "nbd-export-add: 'name' and 'filename' are required");
        return FALSE;
    }
    gboolean ro = json_object_get_boolean_member_with_default(a, "read-only", FALSE);
    JsonObject *opts = json_object_has_member(a, "options") ? json_object_get_object_member(a, "options") : NULL;
    VmmBlockDev *bs = vmm_block_open(filename, json_object_get_string_member_with_default(a, "format", NULL),
                                     opts, ro ? 0 : VMM_BDRV_O_RDWR, error);
    if (!bs)
        return FALSE;
    gint64 shared = json_object_get_int_member_with_default(a, "shared", 0);
    NbdExportConfig cfg = {
        .name = name,
        .description = json_object_get_string_member_with_default(a, "description", NULL),
        .bs = bs,
        .read_only = ro,
        .multi_conn = shared != 1,
        .shared = shared > 0 ? (guint)shared : 0,
        .allocation_depth = json_object_get_boolean_member_with_default(a, "allocation-depth", FALSE),
    };
    NbdExport *exp = nbd_export_new(&cfg, error);
    vmm_block_unref(bs);
    if (!exp)
        return FALSE;
    gboolean ok = nbd_server_add_export(e->server, exp, error);
    nbd_export_unref(exp);
    if (ok)
        vmm_info("export '%s' added: %s%s", name, filename, ro ? " (read-only)" : "");
    return ok;
}

static JsonObject *query_exports(BlockdExports *e)
{
    g_auto(GStrv) names = nbd_server_list_exports(e->server);
    JsonArray *list = json_array_new();
    for (char **n = names; n && *n; n++) {
        g_autoptr(NbdExport) exp = nbd_server_find_export(e->server, *n);
        if (!exp)
            continue;
        JsonObject *o = json_object_new();
        VmmBlockDev *bs = nbd_export_blockdev(exp);
        json_object_set_string_member(o, "name", *n);
        json_object_set_string_member(o, "filename", bs->filename);
        json_object_set_boolean_member(o, "read-only", bs->read_only);
        json_object_set_int_member(o, "clients", nbd_export_connections(exp));
        json_array_add_object_element(list, o);
    }
    JsonObject *r = json_object_new();
    json_object_set_array_member(r, "exports", list);
    return r;
}

gboolean blockd_exports_handle(BlockdExports *e, VmmChannelRequest *req)
{
    const char *cmd = vmm_channel_request_command(req);
    JsonObject *a = vmm_channel_request_args(req);
    g_autoptr(GError) err = NULL;
    JsonObject *result = NULL;

    if (g_str_equal(cmd, "nbd-export-add")) {
        if (export_add(e, a, &err))
            result = json_object_new();
    } else if (g_str_equal(cmd, "nbd-export-remove")) {
        const char *name = json_object_get_string_member_with_default(a, "name", "");
        const char *mode = json_object_get_string_member_with_default(a, "mode", "safe");
        if (!g_str_equal(mode, "safe") && !g_str_equal(mode, "hard"))
            g_set_error(&err, VMM_ERROR, VMM_ERROR_INVALID, "nbd-export-remove: mode '%s' (safe or hard)", mode);
        else if (nbd_server_remove_export(e->server, name, g_str_equal(mode, "hard"), &err))
            result = json_object_new();
    } else if (g_str_equal(cmd, "query-nbd-exports")) {
        result = query_exports(e);
    } else if (g_str_equal(cmd, "nbd-listen")) {
        const char *address = json_object_get_string_member_with_default(a, "address", NULL);
        int port = 0;
        if (!address) {
            g_set_error(&err, VMM_ERROR, VMM_ERROR_INVALID, "nbd-listen: 'address' is required");
        } else if (blockd_exports_listen(e, address, &port, &err)) {
            result = json_object_new();
            json_object_set_int_member(result, "port", port);
        }
    } else if (g_str_equal(cmd, "nbd-serve-fd")) {
        int fd = vmm_channel_request_take_fd(req, 0);
        if (fd < 0)
            g_set_error(&err, VMM_ERROR, VMM_ERROR_INVALID, "nbd-serve-fd: no socket was passed");
        else if (nbd_server_serve_fd(e->server, fd, &err))
            result = json_object_new();
    } else {
        return FALSE;
    }
    if (result)
        vmm_channel_reply(req, result, NULL, 0);
    else
        vmm_channel_reply_gerror(req, err);
    return TRUE;
}
