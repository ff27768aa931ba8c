/* vcpu-worker's character device backend (vcpu-worker/chardev.c): output to
 * pipes and sockets, input with flow control, socket clients coming and going. */
#include "vcpu-worker/chardev.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define FIFO_SIZE 16

typedef struct {
    guint8 got[4096];
    size_t len;
    size_t space;           /* what the "FIFO" takes before the guest reads it */
} Sink;

static size_t sink_receive(void *opaque, const uint8_t *buf, size_t len)
{
    Sink *s = opaque;
    size_t n = MIN(len, s->space);
    memcpy(s->got + s->len, buf, n);
    s->len += n;
    s->space -= n;
    return n;
}

/* The chardev's handles do not keep a loop alive (vcpu-worker's control
 * channel does); the tests keep theirs alive with an idle timer. */
static uv_timer_t keepalive;

static void on_keepalive(uv_timer_t *t)
{
}

static void loop_init(uv_loop_t *loop)
{
    uv_loop_init(loop);
    uv_timer_init(loop, &keepalive);
    uv_timer_start(&keepalive, on_keepalive, 60000, 60000);
}

/* Runs LOOP until *LEN reaches WANT or 5 s pass. */
static void run_until(uv_loop_t *loop, const size_t *len, size_t want)
{
    gint64 deadline = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
    while (*len < want && g_get_monotonic_time() < deadline) {
        uv_run(loop, UV_RUN_NOWAIT);
        g_usleep(1000);
    }
}

/* A few loop turns, for "nothing more happens" checks. */
static void spin(uv_loop_t *loop)
{
    for (int i = 0; i < 50; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
        g_usleep(1000);
    }
}

static void finish(uv_loop_t *loop, VmmChardev *c)
{
    uv_close((uv_handle_t *)&keepalive, NULL);
    vmm_chardev_free(c);
    uv_run(loop, UV_RUN_DEFAULT);
    g_assert_cmpint(uv_loop_close(loop), ==, 0);
}

static void read_exactly(int fd, void *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = read(fd, (guint8 *)buf + done, len - done);
        g_assert_cmpint(n, >, 0);
        done += (size_t)n;
    }
}

static void test_output_pipe(void)
{
    uv_loop_t loop;
    loop_init(&loop);
    int p[2];
    g_assert_cmpint(pipe(p), ==, 0);
    VmmChardev *c = vmm_chardev_new("t", &loop);
    vmm_chardev_write(c, (const guint8 *)"lost", 4);        /* nothing attached yet */
    g_assert_cmpuint(vmm_chardev_dropped(c), ==, 4);
    vmm_chardev_set_fds(c, -1, p[1]);
    vmm_chardev_write(c, (const guint8 *)"hello", 5);
    char buf[6] = "";
    read_exactly(p[0], buf, 5);
    g_assert_cmpstr(buf, ==, "hello");
    g_assert_cmpuint(vmm_chardev_written(c), ==, 5);
    finish(&loop, c);
    /* The write end went with the chardev. */
    g_assert_cmpint(read(p[0], buf, 1), ==, 0);
    close(p[0]);
}

static void test_input_flow_control(void)
{
    uv_loop_t loop;
    loop_init(&loop);
    int p[2];
    g_assert_cmpint(pipe(p), ==, 0);
    VmmChardev *c = vmm_chardev_new("t", &loop);
    Sink sink = { .space = FIFO_SIZE };
    vmm_chardev_set_fds(c, p[0], -1);
    vmm_chardev_set_receiver(c, sink_receive, &sink);
    guint8 data[40];
    for (guint i = 0; i < sizeof(data); i++)
        data[i] = (guint8)('A' + i);
    g_assert_cmpint(write(p[1], data, sizeof(data)), ==, sizeof(data));

    run_until(&loop, &sink.len, FIFO_SIZE);
    g_assert_cmpuint(sink.len, ==, FIFO_SIZE);
    spin(&loop);
    g_assert_cmpuint(sink.len, ==, FIFO_SIZE);     /* full: nothing more is pushed */

    /* The guest read the FIFO: the rest comes, in order, 16 at a time. */
    while (sink.len < sizeof(data)) {
        size_t before = sink.len;
        sink.space = FIFO_SIZE;
        vmm_chardev_rx_ready(c);
        run_until(&loop, &sink.len, MIN(before + FIFO_SIZE, sizeof(data)));
        g_assert_cmpuint(sink.len, >, before);
    }
    g_assert_cmpmem(sink.got, sink.len, data, sizeof(data));
    close(p[1]);
    finish(&loop, c);
}

static void test_socket_clients(void)
{
    uv_loop_t loop;
    loop_init(&loop);
    int a[2], b[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a), ==, 0);
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, b), ==, 0);
    VmmChardev *c = vmm_chardev_new("t", &loop);
    Sink sink = { .space = sizeof(sink.got) };
    vmm_chardev_set_receiver(c, sink_receive, &sink);

    /* First client: both ways. */
    vmm_chardev_set_fds(c, a[0], a[0]);
    vmm_chardev_write(c, (const guint8 *)"out1", 4);
    char buf[8] = "";
    read_exactly(a[1], buf, 4);
    g_assert_cmpstr(buf, ==, "out1");
    g_assert_cmpint(write(a[1], "in1", 3), ==, 3);
    run_until(&loop, &sink.len, 3);
    g_assert_cmpmem(sink.got, sink.len, "in1", 3);

    /* It leaves: output is dropped, not an error, and nothing blocks. */
    close(a[1]);
    spin(&loop);
    guint64 dropped = vmm_chardev_dropped(c);
    vmm_chardev_write(c, (const guint8 *)"gone", 4);
    g_assert_cmpuint(vmm_chardev_dropped(c), ==, dropped + 4);

    /* A new client takes over. */
    vmm_chardev_set_fds(c, b[0], b[0]);
    vmm_chardev_write(c, (const guint8 *)"out2", 4);
    memset(buf, 0, sizeof(buf));
    read_exactly(b[1], buf, 4);
    g_assert_cmpstr(buf, ==, "out2");
    g_assert_cmpint(write(b[1], "in2", 3), ==, 3);
    run_until(&loop, &sink.len, 6);
    g_assert_cmpmem(sink.got, sink.len, "in1in2", 6);

    /* A client that does not read: output beyond the socket buffer is
     * dropped instead of stalling the writer (a vCPU). */
    guint8 big[65536];
    memset(big, 'x', sizeof(big));
    for (int i = 0; i < 64; i++)
        vmm_chardev_write(c, big, sizeof(big));
    g_assert_cmpuint(vmm_chardev_dropped(c), >, dropped + 4);

    finish(&loop, c);
    g_assert_cmpint(read(b[1], buf, 1), >=, 0);    /* our end closed: data, then EOF */
    close(b[1]);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/chardev/output-pipe", test_output_pipe);
    g_test_add_func("/chardev/input-flow-control", test_input_flow_control);
    g_test_add_func("/chardev/socket-clients", test_socket_clients);
    return g_test_run();
}
