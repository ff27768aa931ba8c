/* Character device backends: see chardev.h. */
#include "vcpu-worker/chardev.h"
#include "common/log.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHARDEV_READ_CHUNK 256

struct VmmChardev {
    char *id;
    uv_loop_t *loop;

    GMutex lock;                /* out_fd, out_socket and the counters */
    int out_fd;
    gboolean out_socket;
    guint64 written, dropped;

    /* The loop thread's side: input. */
    int in_fd;
    uv_poll_t *poll;            /* on in_fd; NULL when it cannot be polled */
    gboolean polling;
    uv_async_t *rx_async;
    VmmChardevReceiveFn receive;
    void *opaque;
    guint8 pending[CHARDEV_READ_CHUNK];     /* read, not yet taken by the receiver */
    size_t pending_off, pending_len;
};

static gboolean fd_is_socket(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

static void free_handle(uv_handle_t *h)
{
    g_free(h);
}

/* ---- Input ------------------------------------------------------------------ */

static void stop_polling(VmmChardev *c)
{
    if (c->poll && c->polling)
        uv_poll_stop(c->poll);
    c->polling = FALSE;
}

static void start_polling(VmmChardev *c);

/* Hands the receiver what it takes of PENDING; TRUE if all of it went. */
static gboolean deliver_pending(VmmChardev *c)
{
    while (c->pending_off < c->pending_len && c->receive) {
        size_t n = c->receive(c->opaque, c->pending + c->pending_off,
                              c->pending_len - c->pending_off);
        if (n == 0)
            return FALSE;
        c->pending_off += n;
    }
    return c->pending_off >= c->pending_len;
}

static void close_input(VmmChardev *c)
{
    stop_polling(c);
    if (c->poll) {
        uv_close((uv_handle_t *)c->poll, free_handle);
        c->poll = NULL;
    }
    if (c->in_fd >= 0) {
        g_mutex_lock(&c->lock);
        /* A socket is both ends: its output goes with its input. */
        if (c->out_fd == c->in_fd) {
            c->out_fd = -1;
            c->out_socket = FALSE;
        }
        g_mutex_unlock(&c->lock);
        close(c->in_fd);
    }
    c->in_fd = -1;
    c->pending_off = c->pending_len = 0;
}

static void on_readable(uv_poll_t *p, int status, int events)
{
    VmmChardev *c = p->data;
    if (status < 0) {
        vmm_info("chardev '%s': input: %s", c->id, uv_strerror(status));
        close_input(c);
        return;
    }
    if (!deliver_pending(c)) {
        stop_polling(c);        /* the FIFO is full: rx_ready restarts us */
        return;
    }
    ssize_t n = read(c->in_fd, c->pending, sizeof(c->pending));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        /* End of input (stdin at EOF, the socket's client left): the output
         * of a socket goes with it; a terminal or file output stays. */
        vmm_info("chardev '%s': input %s", c->id, n == 0 ? "closed" : g_strerror(errno));
        close_input(c);
        return;
    }
    c->pending_off = 0;
    c->pending_len = (size_t)n;
    if (!deliver_pending(c))
        stop_polling(c);
}

static void start_polling(VmmChardev *c)
{
    if (!c->poll || c->polling || !c->receive)
        return;
    if (uv_poll_start(c->poll, UV_READABLE | UV_DISCONNECT, on_readable) == 0)
        c->polling = TRUE;
}

static void on_rx_async(uv_async_t *a)
{
    VmmChardev *c = a->data;
    if (c->in_fd >= 0 && deliver_pending(c))
        start_polling(c);
}

/* ---- Life cycle -------------------------------------------------------------- */

VmmChardev *vmm_chardev_new(const char *id, uv_loop_t *loop)
{
    VmmChardev *c = g_new0(VmmChardev, 1);
    c->id = g_strdup(id);
    c->loop = loop;
    c->in_fd = c->out_fd = -1;
    g_mutex_init(&c->lock);
    c->rx_async = g_new0(uv_async_t, 1);
    uv_async_init(loop, c->rx_async, on_rx_async);
    c->rx_async->data = c;
    /* Waiting for input does not keep the helper alive. */
    uv_unref((uv_handle_t *)c->rx_async);
    return c;
}

void vmm_chardev_free(VmmChardev *c)
{
    if (!c)
        return;
    close_input(c);
    if (c->out_fd >= 0)
        close(c->out_fd);
    uv_close((uv_handle_t *)c->rx_async, free_handle);
    g_mutex_clear(&c->lock);
    g_free(c->id);
    g_free(c);
}

void vmm_chardev_set_fds(VmmChardev *c, int in_fd, int out_fd)
{
    close_input(c);
    g_mutex_lock(&c->lock);
    int old_out = c->out_fd;
    c->out_fd = out_fd;
    c->out_socket = out_fd >= 0 && fd_is_socket(out_fd);
    g_mutex_unlock(&c->lock);
    if (old_out >= 0 && old_out != out_fd && old_out != in_fd)
        close(old_out);
    c->in_fd = in_fd;
    if (in_fd < 0)
        return;
    c->poll = g_new0(uv_poll_t, 1);
    /* A regular file or /dev/null cannot be polled: no input then. */
    if (uv_poll_init(c->loop, c->poll, in_fd) != 0) {
        g_free(c->poll);
        c->poll = NULL;
        return;
    }
    c->poll->data = c;
    uv_unref((uv_handle_t *)c->poll);
    start_polling(c);
}

void vmm_chardev_set_receiver(VmmChardev *c, VmmChardevReceiveFn fn, void *opaque)
{
    c->receive = fn;
    c->opaque = opaque;
    if (fn)
        start_polling(c);
    else
        stop_polling(c);
}

void vmm_chardev_rx_ready(VmmChardev *c)
{
    uv_async_send(c->rx_async);
}

/* ---- Output ------------------------------------------------------------------- */

void vmm_chardev_write(VmmChardev *c, const uint8_t *buf, size_t len)
{
    g_mutex_lock(&c->lock);
    while (len > 0 && c->out_fd >= 0) {
        ssize_t n = c->out_socket ? send(c->out_fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT)
                                  : write(c->out_fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        c->written += (guint64)n;
        buf += n;
        len -= (size_t)n;
    }
    c->dropped += len;
    g_mutex_unlock(&c->lock);
}

guint64 vmm_chardev_written(VmmChardev *c)
{
    g_mutex_lock(&c->lock);
    guint64 n = c->written;
    g_mutex_unlock(&c->lock);
    return n;
}

guint64 vmm_chardev_dropped(VmmChardev *c)
{
    g_mutex_lock(&c->lock);
    guint64 n = c->dropped;
    g_mutex_unlock(&c->lock);
    return n;
}
