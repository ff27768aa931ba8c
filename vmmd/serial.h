/* vmmd's side of COM1's backend (-serial, -chardev, -nographic): vmmd opens
 * what the command line names and hands vcpu-worker the fds with
 * "serial-attach" (vcpu-worker/chardev.h), because vcpu-worker opens nothing:
 *
 *   stdio (the default)  vmmd's stdin and stdout; a terminal goes raw (Ctrl-C
 *                        still ends vmmd, as QEMU's signal=on) until vmmd exits
 *   file:PATH            created or truncated, output only
 *   null                 output dropped
 *   unix:PATH,server=on  vmmd listens (replacing a stale socket file) and
 *                        passes each client's socket; a new client replaces
 *                        the previous one; wait=on (QEMU's default) holds
 *                        the guest's start until the first client; the file
 *                        is removed at exit
 *   unix:PATH            (server=off) vmmd connects at start
 */
#pragma once
#include "vmmd/vmmd.h"

/* Opens or listens; errors name the backend ("-serial file:/x: ..."). */
gboolean vmm_serial_backend_open(Vmmd *d, GError **error);
/* FALSE while the guest must wait for a client (wait=on); vm.c calls
 * vmm_vm_start again once one connected. */
gboolean vmm_serial_backend_ready(Vmmd *d, VmmHelperProc *hp);
/* Sends serial-attach to vcpu-worker (before vm-start). */
gboolean vmm_serial_backend_attach(Vmmd *d, VmmHelperProc *hp, GError **error);
/* Closes everything, removes the socket file, restores the terminal. */
void vmm_serial_backend_close(Vmmd *d);
