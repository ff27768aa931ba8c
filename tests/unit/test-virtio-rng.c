/* Tests for vcpu-worker/virtio-rng.c: the guest's buffers are filled from the
 * rng fd (a pipe the test controls, and /dev/urandom); a source that runs dry
 * keeps requests queued until it has bytes; one that ends does no harm.
 *
 * Until vcpu-worker's device models are a library, the sources are included. */
#include "common/error.h"
#include "vcpu-worker/guest-mem.h"
#include "vcpu-worker/virtqueue.h"
#include "vcpu-worker/virtio-mmio.h"
#include "vcpu-worker/virtio-rng.h"
#include "tests/unit/virtio-driver.h"

#include <fcntl.h>

#define RNG_FEATURES ((1ULL << VIRTIO_F_VERSION_1) | (1ULL << VIRTIO_RING_F_EVENT_IDX) | \
                      (1ULL << VIRTIO_RING_F_INDIRECT_DESC))

typedef struct {
    TestDriver td;
    VmmVirtioRng *rng;
    int fds[2];
} Fixture;

static void fixture_init_fd(Fixture *f, int fd)
{
    td_init(&f->td);
    f->rng = vmm_virtio_rng_new("rng0", &f->td.mem, fd);
    td_attach(&f->td, vmm_virtio_rng_transport(f->rng));
    td_bring_up(&f->td, RNG_FEATURES, 1, 64);
}

/* The source is a non-blocking pipe the test writes into. */
static void fixture_init(Fixture *f)
{
    g_assert_cmpint(pipe2(f->fds, O_NONBLOCK | O_CLOEXEC), ==, 0);
    fixture_init_fd(f, f->fds[0]);
}

static void fixture_destroy(Fixture *f)
{
    vmm_virtio_rng_free(f->rng);
    if (f->fds[0] >= 0)
        close(f->fds[0]);
    if (f->fds[1] >= 0)
        close(f->fds[1]);
    td_destroy(&f->td);
}

static uint16_t request(Fixture *f, uint64_t gpa, uint32_t len)
{
    memset(td_host(&f->td, gpa), 0, len);
    TdBuf b = { gpa, len, true };
    uint16_t head = td_add_chain(&f->td, 0, &b, 1);
    td_submit(&f->td, 0, head);
    return head;
}

static void feed(Fixture *f, const char *bytes, size_t len)
{
    g_assert_cmpint(write(f->fds[1], bytes, len), ==, (ssize_t)len);
}

static void test_identification(void)
{
    Fixture f;
    fixture_init(&f);
    g_assert_cmpuint(td_read(&f.td, VIRTIO_MMIO_DEVICE_ID), ==, VIRTIO_ID_RNG);
    g_assert_cmphex(td_device_features(&f.td), ==, RNG_FEATURES);
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_CONFIG), ==, 0);
    fixture_destroy(&f);
}

static void test_fills_buffers(void)
{
    Fixture f;
    fixture_init(&f);
    feed(&f, "abcdefghijkl", 12);
    uint64_t a = td_alloc(&f.td, 8), b = td_alloc(&f.td, 16);
    uint16_t ha = request(&f, a, 8);
    uint32_t id, len;
    g_assert_true(td_get_used(&f.td, 0, &id, &len));
    g_assert_cmpuint(id, ==, ha);
    g_assert_cmpuint(len, ==, 8);
    g_assert_cmpmem(td_host(&f.td, a), 8, "abcdefgh", 8);
    g_assert_true(f.td.irq_level);

    /* Only 4 bytes left: the request gets those. */
    uint16_t hb = request(&f, b, 16);
    g_assert_true(td_get_used(&f.td, 0, &id, &len));
    g_assert_cmpuint(id, ==, hb);
    g_assert_cmpuint(len, ==, 4);
    g_assert_cmpmem(td_host(&f.td, b), 4, "ijkl", 4);
    fixture_destroy(&f);
}

static void test_dry_source_keeps_requests(void)
{
    Fixture f;
    fixture_init(&f);
    uint64_t a = td_alloc(&f.td, 4), b = td_alloc(&f.td, 4);
    uint16_t ha = request(&f, a, 4);
    uint16_t hb = request(&f, b, 4);
    g_assert_cmpuint(td_used_idx(&f.td, 0), ==, 0);
    g_assert_false(f.td.irq_level);
    /* The owner polls the fd; with bytes there, processing resumes. */
    gint64 wake_ms;
    g_assert_true(vmm_virtio_rng_process(f.rng, &wake_ms));
    g_assert_cmpint(wake_ms, ==, -1);
    feed(&f, "12345678", 8);
    g_assert_false(vmm_virtio_rng_process(f.rng, &wake_ms));
    uint32_t id, len;
    g_assert_true(td_get_used(&f.td, 0, &id, &len));
    g_assert_cmpuint(id, ==, ha);
    g_assert_true(td_get_used(&f.td, 0, &id, &len));
    g_assert_cmpuint(id, ==, hb);
    g_assert_cmpmem(td_host(&f.td, a), 4, "1234", 4);
    g_assert_cmpmem(td_host(&f.td, b), 4, "5678", 4);
    fixture_destroy(&f);
}

static void test_source_at_end(void)
{
    Fixture f;
    fixture_init(&f);
    close(f.fds[1]);
    f.fds[1] = -1;
    request(&f, td_alloc(&f.td, 4), 4);
    request(&f, td_alloc(&f.td, 4), 4);
    g_assert_cmpuint(td_used_idx(&f.td, 0), ==, 0);
    gint64 wake_ms;
    g_assert_false(vmm_virtio_rng_process(f.rng, &wake_ms));
    g_assert_cmphex(vmm_virtio_mmio_status(f.td.t) & VIRTIO_STATUS_NEEDS_RESET, ==, 0);
    fixture_destroy(&f);
}

static void test_no_writable_buffer(void)
{
    Fixture f;
    fixture_init(&f);
    feed(&f, "xy", 2);
    TdBuf b = { td_alloc(&f.td, 4), 4, false };
    uint16_t head = td_add_chain(&f.td, 0, &b, 1);
    td_submit(&f.td, 0, head);
    uint32_t id, len;
    g_assert_true(td_get_used(&f.td, 0, &id, &len));
    g_assert_cmpuint(len, ==, 0);
    fixture_destroy(&f);
}

static void test_malformed_chain(void)
{
    Fixture f;
    fixture_init(&f);
    feed(&f, "xy", 2);
    TdBuf b = { TD_RAM_SIZE - 2, 4, true };
    td_submit(&f.td, 0, td_add_chain(&f.td, 0, &b, 1));
    g_assert_cmphex(vmm_virtio_mmio_status(f.td.t) & VIRTIO_STATUS_NEEDS_RESET, ==,
                    VIRTIO_STATUS_NEEDS_RESET);
    g_assert_cmpuint(td_used_idx(&f.td, 0), ==, 0);
    fixture_destroy(&f);
}

static void test_urandom(void)
{
    Fixture f;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    g_assert_cmpint(fd, >=, 0);
    f.fds[0] = fd;
    f.fds[1] = -1;
    fixture_init_fd(&f, fd);
    /* Bigger than one read chunk: the device fills up to the chunk. */
    uint32_t size = VMM_VIRTIO_RNG_MAX_CHUNK + 4096;
    uint64_t gpa = td_alloc(&f.td, size);
    request(&f, gpa, size);
    uint32_t id, len;
    g_assert_true(td_get_used(&f.td, 0, &id, &len));
    g_assert_cmpuint(len, >, 0);
    g_assert_cmpuint(len, <=, VMM_VIRTIO_RNG_MAX_CHUNK);
    const uint8_t *p = td_host(&f.td, gpa);
    unsigned zeros = 0;
    for (uint32_t i = 0; i < len; i++)
        zeros += p[i] == 0;
    g_assert_cmpuint(zeros, <, len / 64 + 16);
    for (uint32_t i = len; i < size; i++)
        g_assert_cmpuint(p[i], ==, 0);
    fixture_destroy(&f);
}

/* max-bytes=10,period=10000: a period's quota is shared by its requests,
 * the rest wait for the period's end, when the thread is to call again. */
static void test_rate_limit(void)
{
    Fixture f;
    fixture_init(&f);
    vmm_virtio_rng_set_limit(f.rng, 10, 10000);
    feed(&f, "abcdefghijklmnopqrstuvwxyz", 26);
    gint64 start = vmm_virtio_rng_now_ms();
    uint64_t a = td_alloc(&f.td, 8), b = td_alloc(&f.td, 8), c = td_alloc(&f.td, 8);
    request(&f, a, 8);
    request(&f, b, 8);
    request(&f, c, 8);
    uint32_t id, len;
    g_assert_true(td_get_used(&f.td, 0, &id, &len));
    g_assert_cmpuint(len, ==, 8);
    g_assert_true(td_get_used(&f.td, 0, &id, &len));
    g_assert_cmpuint(len, ==, 2);
    g_assert_cmpmem(td_host(&f.td, b), 2, "ij", 2);
    g_assert_false(td_get_used(&f.td, 0, &id, &len));

    /* Within the period nothing more; the owner learns when to call again. */
    gint64 wake_ms;
    g_assert_false(vmm_virtio_rng_process_at(f.rng, start + 5000, &wake_ms));
    g_assert_cmpint(wake_ms, >=, start + 10000);
    g_assert_cmpint(wake_ms, <=, vmm_virtio_rng_now_ms() + 10000);
    g_assert_false(td_get_used(&f.td, 0, &id, &len));

    /* At its end the quota is whole again. */
    g_assert_false(vmm_virtio_rng_process_at(f.rng, wake_ms, &wake_ms));
    g_assert_cmpint(wake_ms, ==, -1);
    g_assert_true(td_get_used(&f.td, 0, &id, &len));
    g_assert_cmpuint(len, ==, 8);
    g_assert_cmpmem(td_host(&f.td, c), 8, "klmnopqr", 8);
    fixture_destroy(&f);
}

/* The default (max-bytes 2^63-1) never holds a request back. */
static void test_no_limit_by_default(void)
{
    Fixture f;
    fixture_init(&f);
    char buf[4096];
    memset(buf, 'x', sizeof(buf));
    feed(&f, buf, sizeof(buf));
    uint64_t a = td_alloc(&f.td, sizeof(buf));
    request(&f, a, sizeof(buf));
    uint32_t id, len;
    g_assert_true(td_get_used(&f.td, 0, &id, &len));
    g_assert_cmpuint(len, ==, sizeof(buf));
    gint64 wake_ms;
    vmm_virtio_rng_process(f.rng, &wake_ms);
    g_assert_cmpint(wake_ms, ==, -1);
    fixture_destroy(&f);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/virtio-rng/identification", test_identification);
    g_test_add_func("/virtio-rng/fills-buffers", test_fills_buffers);
    g_test_add_func("/virtio-rng/dry-source-keeps-requests", test_dry_source_keeps_requests);
    g_test_add_func("/virtio-rng/source-at-end", test_source_at_end);
    g_test_add_func("/virtio-rng/no-writable-buffer", test_no_writable_buffer);
    g_test_add_func("/virtio-rng/malformed-chain", test_malformed_chain);
    g_test_add_func("/virtio-rng/urandom", test_urandom);
    g_test_add_func("/virtio-rng/rate-limit", test_rate_limit);
    g_test_add_func("/virtio-rng/no-limit-by-default", test_no_limit_by_default);
    return g_test_run();
}
