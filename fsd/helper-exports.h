/* fsd as vmmd's helper: the exports vmmd hands over (docs/fsdev.md).
 *
 *   fsdev-add {"id", "path"?, "tag"?, "security-model"?, "readonly"?,
 *              "writeout"?, "fmode"?, "dmode"?, "throttling"?: {KEY: N}}
 *     fds [socket, export directory]
 *
 * vmmd opens the export directory (O_PATH|O_DIRECTORY) and makes a
 * socketpair; fsd serves 9P2000.L for that export on its end, whose other
 * end goes to vcpu-worker's virtio-9p device. A second fsdev-add for an id
 * that exists (another device of the fsdev, or a restarted vcpu-worker) only
 * serves the new socket; the directory fd may then be left out.
 *
 * fsd/main.c plugs these into its VmmHelperDesc (handle_request, cleanup). */
#pragma once
#include "common/helper.h"

gboolean fsd_helper_handle_request(VmmHelper *h, VmmChannelRequest *req);
void fsd_helper_cleanup(VmmHelper *h);
