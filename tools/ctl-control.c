/* vmmctl --control PATH: one request over vmm's control protocol (the JSON
 * SOCK_SEQPACKET channel of proto/README.md) instead of QMP, for daemons that
 * speak only that, such as `blockd --daemon`. */
#include "tools/ctl-control.h"
#include "common/control-msg.h"
#include "common/error.h"
#include "common/fdpass.h"
#include "proto/control.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int connect_seqpacket(const char *path, GError **error)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "%s: path too long", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        vmm_set_errno(error, errno, "%s: connect", path);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static gboolean send_msg(int fd, const VmmControlMsg *m, GError **error)
{
    g_autoptr(GBytes) bytes = vmm_control_msg_encode(m, error);
    gsize len;
    const void *data = bytes ? g_bytes_get_data(bytes, &len) : NULL;
    return data && vmm_send_with_fds(fd, data, len, NULL, 0, error) >= 0;
}

/* Receives one message within TIMEOUT_MS (-1: no limit). */
static gboolean recv_msg(int fd, int timeout_ms, VmmControlMsg *m, GError **error)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int r = poll(&p, 1, timeout_ms);
    if (r == 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_IO, "no answer within the timeout");
        return FALSE;
    }
    g_autofree char *buf = g_malloc(VMM_CONTROL_MAX_MSG + 1);
    int fds[VMM_MAX_FDS];
    guint nfds = 0;
    gssize n = vmm_recv_with_fds(fd, buf, VMM_CONTROL_MAX_MSG + 1, fds, VMM_MAX_FDS, &nfds, error);
    vmm_close_fds(fds, nfds);
    if (n == 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_CLOSED, "the peer closed the connection");
        return FALSE;
    }
    return n > 0 && vmm_control_msg_decode(buf, n, m, error);
}

static void print_object(JsonObject *o, gboolean raw)
{
    g_autoptr(JsonNode) node = json_node_init_object(json_node_alloc(), o);
    g_autofree char *text = json_to_string(node, !raw);
    printf("%s\n", text);
}

int vmmctl_control_call(const char *path, double timeout_sec, const char *command, JsonObject *args,
                        gboolean raw)
{
    g_autoptr(GError) error = NULL;
    int timeout_ms = timeout_sec > 0 ? (int)(timeout_sec * 1000) : -1;
    int fd = connect_seqpacket(path, &error);
    if (fd < 0) {
        fprintf(stderr, "vmmctl: %s\n", error->message);
        return 2;
    }
    JsonObject *hello = json_object_new();
    json_object_set_int_member(hello, "protocol", VMM_CONTROL_PROTOCOL);
    json_object_set_string_member(hello, "role", "vmmctl");
    json_object_set_int_member(hello, "pid", getpid());
    VmmControlMsg out = { .kind = VMM_CONTROL_HELLO, .payload = hello };
    VmmControlMsg in = { 0 };
    int status = 2;
    gboolean ok = send_msg(fd, &out, &error);
    vmm_control_msg_clear(&out);
    if (ok)
        ok = recv_msg(fd, timeout_ms, &in, &error) && in.kind == VMM_CONTROL_HELLO;
    if (ok && !error) {
        vmm_control_msg_clear(&in);
        VmmControlMsg req = { .kind = VMM_CONTROL_REQUEST, .has_id = TRUE, .id = 1,
                              .name = g_strdup(command), .payload = json_object_ref(args) };
        ok = send_msg(fd, &req, &error);
        vmm_control_msg_clear(&req);
    }
    /* Events may come before the reply. */
    while (ok && recv_msg(fd, timeout_ms, &in, &error)) {
        if (in.kind == VMM_CONTROL_REPLY_OK && in.id == 1) {
            print_object(in.payload, raw);
            status = 0;
            break;
        }
        if (in.kind == VMM_CONTROL_REPLY_ERROR) {
            fprintf(stderr, "error: %s: %s\n", in.name, in.desc);
            status = 1;
            break;
        }
        vmm_control_msg_clear(&in);
    }
    vmm_control_msg_clear(&in);
    if (status == 2)
        fprintf(stderr, "vmmctl: %s: %s\n", path, error ? error->message : "the peer did not say hello");
    close(fd);
    return status;
}
