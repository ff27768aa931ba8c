/* A character device backend in vcpu-worker: the host side of a UART. vmmd
 * opens whatever -serial / -chardev names (its stdin and stdout, a file, a
 * socket) and hands vcpu-worker the fds, so vcpu-worker never opens a path:
 *
 *   stdio    input fd 0 of vmmd, output fd 1 of vmmd
 *   file     output only
 *   null     neither (output is dropped)
 *   socket   vmmd listens and accepts; every client's connected socket comes
 *            over the control channel ("serial-connect") and replaces the
 *            previous one; output is dropped while no client is connected
 *
 * Output is written on the caller's thread (a vCPU thread: the UART's THR),
 * blocking for files and pipes and dropping what a socket cannot take at
 * once, so a slow client cannot stall the guest. Input is read on the loop's
 * thread and pushed to the receiver, which takes what fits; the rest waits in
 * the fd until vmm_chardev_rx_ready() (the guest read the UART's FIFO). */
#pragma once
#include <glib.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct VmmChardev VmmChardev;

/* Takes what it can of BUF and returns how much (the UART's FIFO space). */
typedef size_t (*VmmChardevReceiveFn)(void *opaque, const uint8_t *buf, size_t len);

VmmChardev *vmm_chardev_new(const char *id, uv_loop_t *loop);
/* Closes the fds; LOOP must run once more (a handle closes). */
void vmm_chardev_free(VmmChardev *c);

/* Replaces the fds (taken; -1: none). IN_FD == OUT_FD for a socket. Loop thread. */
void vmm_chardev_set_fds(VmmChardev *c, int in_fd, int out_fd);
/* Where input goes; NULL stops reading. Loop thread. */
void vmm_chardev_set_receiver(VmmChardev *c, VmmChardevReceiveFn fn, void *opaque);
/* Any thread: the receiver has room again. */
void vmm_chardev_rx_ready(VmmChardev *c);
/* Any thread: guest output. */
void vmm_chardev_write(VmmChardev *c, const uint8_t *buf, size_t len);
/* Bytes written, and bytes dropped because no one could take them. */
guint64 vmm_chardev_written(VmmChardev *c);
guint64 vmm_chardev_dropped(VmmChardev *c);
