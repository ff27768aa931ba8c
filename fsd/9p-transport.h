/* 9P over stream sockets on a libuv loop: Unix and TCP listeners (bound or
 * inherited through socket activation) and already connected sockets (a
 * socketpair from vmmd, Linux's trans=fd). Framing: size[4] then the rest. */
#pragma once
#include "fsd/fsd.h"

#include <uv.h>

typedef struct FsdServer FsdServer;

FsdServer *fsd_server_new(uv_loop_t *loop, FsdExport *e);
/* "unix:PATH" or "tcp:HOST:PORT" ("tcp:[V6]:PORT"; port 0 picks one). */
gboolean fsd_server_listen(FsdServer *s, const char *address, GError **error);
/* A socket that already listens (LISTEN_FDS); takes ownership. */
gboolean fsd_server_listen_fd(FsdServer *s, int fd, GError **error);
/* A connected socket; takes ownership. */
gboolean fsd_server_serve_fd(FsdServer *s, int fd, GError **error);
/* The socketpair of a VM's device: the connection has the guest's RAM
 * (MEM_SIZE bytes at MEM, which outlives it) for Tread.vmm/Twrite.vmm. */
gboolean fsd_server_serve_fd_guest(FsdServer *s, int fd, guint8 *mem, guint64 mem_size, GError **error);
/* The TCP port of the last TCP listener, or 0. */
int fsd_server_port(FsdServer *s);
guint fsd_server_connections(FsdServer *s);
/* Called on the loop when a connection ends (e.g. to exit after the last). */
void fsd_server_set_on_disconnect(FsdServer *s, void (*cb)(FsdServer *s, gpointer user), gpointer user);
/* Closes listeners and connections; the loop must run once more to finish
 * closing the handles, then the server is freed. */
void fsd_server_shutdown(FsdServer *s);
