/* fsd's standalone mode (fsd/standalone.c). */
#pragma once

int fsd_standalone_main(int argc, char **argv);
