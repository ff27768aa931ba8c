/* blockd, the program: a helper of vmmd (--control-fd) or a standalone NBD
 * server in the spirit of qemu-nbd (daemon-nbd.c). */
#pragma once

int blockd_helper_main(int argc, char **argv);
int blockd_standalone_main(int argc, char **argv);
