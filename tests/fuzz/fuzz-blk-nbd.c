/* libFuzzer target: vcpu-worker's NBD client (vcpu-worker/blk-nbd.c) reading
 * what blockd sends, which a compromised blockd controls: the handshake (the
 * greeting, the reply to NBD_OPT_VMM_GUEST_MEMORY and the NBD_OPT_GO replies)
 * and the replies to requests in flight. The read's buffer is in the
 * client's guest RAM, so an accepted NBD_OPT_VMM_GUEST_MEMORY sends it by
 * reference and its reply carries no data.
 * Input: a big-endian 16-bit length L, L bytes of handshake, then the reply
 * stream, which arrives once two requests (a 4 KiB read with cookie 1, a flush
 * with cookie 2) are in flight. Nothing may crash, hang or leak. */
#include "vcpu-worker/blk-nbd.h"
#include "common/bytes.h"

#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
    int ret;
} FuzzReq;

static void fuzz_complete(VmmBlkRequest *req, int ret)
{
    ((FuzzReq *)req)->ret = ret;
}

/* Stops when the client hung up: a send to a socket it shut down must not
 * SIGPIPE the fuzzer. */
static void send_all(int fd, const uint8_t *data, size_t len)
{
    while (len) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        data += n;
        len -= (size_t)n;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t hs_len = MIN((size_t)get_be16(data), size - 2);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return 0;
    send_all(sv[1], data + 2, hs_len);
    if (hs_len == size - 2)
        shutdown(sv[1], SHUT_WR);

    VmmBlkNbd *c = vmm_blk_nbd_new("fuzz");
    vmm_blk_nbd_set_complete(c, fuzz_complete);
    /* A handshake cut short waits for more bytes: not for long here. */
    vmm_blk_nbd_set_handshake_timeout(c, 5);
    static uint8_t ram[8192];
    uint8_t *buf = ram + 4096;
    vmm_blk_nbd_set_guest_memory(c, ram, sizeof(ram));
    GError *err = NULL;
    FuzzReq reqs[2] = { { 1 }, { 1 } };
    if (vmm_blk_nbd_connect(c, sv[0], &err)) {
        struct iovec iov = { buf, 4096 };
        vmm_blk_nbd_ops.read(c, 0, &iov, 1, (VmmBlkRequest *)&reqs[0]);
        vmm_blk_nbd_ops.flush(c, (VmmBlkRequest *)&reqs[1]);
        send_all(sv[1], data + 2 + hs_len, size - 2 - hs_len);
        shutdown(sv[1], SHUT_WR);
    }
    g_clear_error(&err);
    /* Joins the reader; requests still waiting complete with -EIO. */
    vmm_blk_nbd_free(c);
    close(sv[1]);
    return 0;
}
