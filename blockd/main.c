/* blockd: images and the NBD server. Started by vmmd with --control-fd it is a
 * sandboxed helper; started by hand it serves one image like qemu-nbd. */
#include "blockd/daemon.h"

#include <glib.h>
#include <string.h>

static gboolean started_by_vmmd(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (g_str_has_prefix(argv[i], "--control-fd") || strcmp(argv[i], "--dump-seccomp") == 0)
            return TRUE;
    }
    return FALSE;
}

static gboolean has_arg(int argc, char **argv, const char *arg)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], arg) == 0)
            return TRUE;
    }
    return FALSE;
}

int main(int argc, char **argv)
{
    if (has_arg(argc, argv, "--daemon"))
        return blockd_daemon_main(argc, argv);
    if (started_by_vmmd(argc, argv))
        return blockd_helper_main(argc, argv);
    return blockd_standalone_main(argc, argv);
}
