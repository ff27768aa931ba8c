/* blockd: images and the NBD server. For now it does the helper's part of the
 * foundation: handshake, sandbox, status. */
#include "common/helper.h"
#include "common/profiles.h"

int main(int argc, char **argv)
{
    VmmHelperDesc desc = {
        .role = "blockd",
        .profile = vmm_profile_for("blockd"),
    };
    return vmm_helper_main(argc, argv, &desc);
}
