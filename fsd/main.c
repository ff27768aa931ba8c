/* fsd: the 9P2000.L file server. Started by vmmd (--control-fd) it is a
 * sandboxed helper serving the exports vmmd hands over; started by hand it serves a directory on Unix or TCP
 * sockets (fsd/standalone.c). */
#include "fsd/fsd-standalone.h"
#include "fsd/helper-exports.h"
#include "common/helper.h"
#include "common/profiles.h"

#include <string.h>

static gboolean started_by_vmmd(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (g_str_has_prefix(argv[i], "--control-fd") || strcmp(argv[i], "--dump-seccomp") == 0)
            return TRUE;
    }
    return FALSE;
}

int main(int argc, char **argv)
{
    if (!started_by_vmmd(argc, argv))
        return fsd_standalone_main(argc, argv);
    VmmHelperDesc desc = {
        .role = "fsd",
        .profile = vmm_profile_for("fsd"),
        .handle_request = fsd_helper_handle_request,   /* fsdev-add (docs/fsdev.md) */
        .cleanup = fsd_helper_cleanup,
    };
    return vmm_helper_main(argc, argv, &desc);
}
