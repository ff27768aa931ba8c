/* blockd as a helper of vmmd: handshake, sandbox, status, and the export
 * commands of daemon-exports.c, and the VM's drives of daemon-drives.c
 * (vmmd hands the image fds and a socketpair end per drive with drive-add). */
#include "blockd/daemon.h"
#include "common/helper.h"
#include "common/profiles.h"

static BlockdExports *exports;

static gboolean prepare(VmmHelper *h, GError **error)
{
    exports = blockd_exports_new();
    blockd_drives_prepare();
    return TRUE;
}

static gboolean handle_request(VmmHelper *h, VmmChannelRequest *req)
{
    return blockd_drives_handle(exports, req) || blockd_exports_handle(exports, req);
}

int blockd_helper_main(int argc, char **argv)
{
    VmmHelperDesc desc = {
        .role = "blockd",
        .profile = vmm_profile_for("blockd"),
        .prepare = prepare,
        .handle_request = handle_request,
    };
    int rc = vmm_helper_main(argc, argv, &desc);
    blockd_exports_free(exports);
    return rc;
}
