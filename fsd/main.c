/* fsd: the 9P2000.L file server. For now it does the helper's part of the
 * foundation: handshake, sandbox, status. */
#include "common/helper.h"
#include "common/profiles.h"

int main(int argc, char **argv)
{
    VmmHelperDesc desc = {
        .role = "fsd",
        .profile = vmm_profile_for("fsd"),
    };
    return vmm_helper_main(argc, argv, &desc);
}
