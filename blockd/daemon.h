/* blockd, the program: a helper of vmmd (--control-fd), a standalone NBD
 * server in the spirit of qemu-nbd (daemon-nbd.c), or a daemon whose exports
 * are managed over a control socket (--daemon, daemon-control.c). */
#pragma once
#include "blockd/nbd-server.h"
#include "common/channel.h"

int blockd_helper_main(int argc, char **argv);
int blockd_standalone_main(int argc, char **argv);
int blockd_daemon_main(int argc, char **argv);

/* daemon-exports.c: the export commands both modes answer. */
typedef struct BlockdExports BlockdExports;
BlockdExports *blockd_exports_new(void);
void blockd_exports_free(BlockdExports *e);
/* Serves NBD on ADDRESS ("unix:PATH", "HOST:PORT"); *PORT gets a TCP port. */
gboolean blockd_exports_listen(BlockdExports *e, const char *address, int *port, GError **error);
/* Answers REQ if it is an export command; FALSE if it is not one. */
gboolean blockd_exports_handle(BlockdExports *e, VmmChannelRequest *req);
NbdServer *blockd_exports_server(BlockdExports *e);

/* daemon-drives.c: a VM's drives from fds vmmd hands over (helper mode). */
gboolean blockd_drives_handle(BlockdExports *e, VmmChannelRequest *req);
/* Before the sandbox: probes what the file driver needs and makes it refuse
 * every path vmmd did not hand over. */
void blockd_drives_prepare(void);
