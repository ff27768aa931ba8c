/* Tests for vcpu-worker/virtio-mmio.c: a test driver negotiates with an echo
 * device through the version 2 registers, sets up its queue, kicks it and
 * checks used entries, interrupt status and the interrupt line; reset,
 * NEEDS_RESET, config space and bad accesses.
 *
 * Until vcpu-worker's device models are a library, the sources are included. */
#include "common/error.h"
#include "vcpu-worker/guest-mem.h"
#include "vcpu-worker/virtqueue.h"
#include "vcpu-worker/virtio-mmio.h"
#include "tests/unit/virtio-driver.h"

#define ECHO_DEVICE_ID 42
#define ECHO_FEATURE_BIT 3
#define ECHO_CONFIG_SIZE 12

/* A device that writes "echo" into every writable buffer. */
typedef struct {
    GMutex lock;
    VmmVirtioMmio *t;
    uint8_t config[ECHO_CONFIG_SIZE];
    int resets;
    int driver_oks;
    uint64_t features_at_ok;
    int config_writes;
} Echo;

static void echo_get_config(void *dev, uint8_t *config)
{
    Echo *e = dev;
    memcpy(config, e->config, ECHO_CONFIG_SIZE);
}

static void echo_set_config(void *dev, uint32_t offset, const uint8_t *data, uint32_t len)
{
    Echo *e = dev;
    g_assert_cmpuint(offset + len, <=, ECHO_CONFIG_SIZE);
    memcpy(e->config + offset, data, len);
    e->config_writes++;
}

static void echo_queue_notify(void *dev, unsigned queue)
{
    Echo *e = dev;
    VmmVirtqueue *vq = vmm_virtio_mmio_queue(e->t, queue);
    g_autoptr(GError) error = NULL;
    VmmVqElem *elem;
    bool notify = false;

    g_mutex_lock(&e->lock);
    while (vmm_vq_pop(vq, &elem, &error) == VMM_VQ_OK) {
        size_t n = vmm_iov_from_buf(elem->in, elem->n_in, 0, "echo", 4);
        vmm_vq_push(vq, elem, n);
        g_free(elem);
        notify |= vmm_vq_should_notify(vq);
    }
    g_mutex_unlock(&e->lock);
    if (error)
        vmm_virtio_mmio_set_needs_reset(e->t, error);
    if (notify)
        vmm_virtio_mmio_interrupt_vring(e->t);
}

static void echo_reset(void *dev)
{
    Echo *e = dev;
    e->resets++;
}

static void echo_driver_ok(void *dev, uint64_t features)
{
    Echo *e = dev;
    e->driver_oks++;
    e->features_at_ok = features;
}

static const VmmVirtioDeviceOps echo_ops = {
    .device_id = ECHO_DEVICE_ID,
    .get_config = echo_get_config,
    .set_config = echo_set_config,
    .queue_notify = echo_queue_notify,
    .reset = echo_reset,
    .driver_ok = echo_driver_ok,
};

typedef struct {
    TestDriver td;
    Echo echo;
} Fixture;

static void fixture_init(Fixture *f)
{
    td_init(&f->td);
    memset(&f->echo, 0, sizeof(f->echo));
    g_mutex_init(&f->echo.lock);
    memcpy(f->echo.config, "0123456789ab", ECHO_CONFIG_SIZE);
    VmmVirtioMmioConfig c = {
        .name = "echo",
        .mem = &f->td.mem,
        .ops = &echo_ops,
        .dev = &f->echo,
        .queue_lock = &f->echo.lock,
        .num_queues = 2,
        .queue_num_max = 64,
        .device_features = 1ULL << ECHO_FEATURE_BIT,
        .config_size = ECHO_CONFIG_SIZE,
    };
    f->echo.t = vmm_virtio_mmio_new(&c);
    td_attach(&f->td, f->echo.t);
}

static void fixture_destroy(Fixture *f)
{
    vmm_virtio_mmio_free(f->echo.t);
    g_mutex_clear(&f->echo.lock);
    td_destroy(&f->td);
}

#define ALL_FEATURES ((1ULL << VIRTIO_F_VERSION_1) | (1ULL << VIRTIO_RING_F_EVENT_IDX) | \
                      (1ULL << VIRTIO_RING_F_INDIRECT_DESC) | (1ULL << ECHO_FEATURE_BIT))

/* Puts one writable 16-byte buffer on queue QI and kicks; returns its address. */
static uint64_t echo_request(Fixture *f, unsigned qi)
{
    uint64_t gpa = td_alloc(&f->td, 16);
    memset(td_host(&f->td, gpa), 0, 16);
    TdBuf b = { gpa, 16, true };
    td_submit(&f->td, qi, td_add_chain(&f->td, qi, &b, 1));
    return gpa;
}

static void test_identification(void)
{
    Fixture f;
    fixture_init(&f);
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_MAGIC_VALUE), ==, 0x74726976);
    g_assert_cmpuint(td_read(&f.td, VIRTIO_MMIO_VERSION), ==, 2);
    g_assert_cmpuint(td_read(&f.td, VIRTIO_MMIO_DEVICE_ID), ==, ECHO_DEVICE_ID);
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_VENDOR_ID), ==, VIRTIO_MMIO_VENDOR);
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_STATUS), ==, 0);
    /* No shared memory regions: the length reads as -1. */
    td_write(&f.td, VIRTIO_MMIO_SHM_SEL, 0);
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_SHM_LEN_LOW), ==, 0xffffffff);
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_SHM_LEN_HIGH), ==, 0xffffffff);
    fixture_destroy(&f);
}

static void test_feature_negotiation(void)
{
    Fixture f;
    fixture_init(&f);
    g_assert_cmphex(td_device_features(&f.td), ==, ALL_FEATURES);
    td_write(&f.td, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_DEVICE_FEATURES), ==, 0);

    /* A feature the device does not offer: FEATURES_OK does not stick. */
    uint32_t st = td_negotiate(&f.td, ALL_FEATURES | (1ULL << 7));
    g_assert_cmphex(st & VIRTIO_STATUS_FEATURES_OK, ==, 0);
    /* A legacy driver (no VERSION_1) is refused too. */
    st = td_negotiate(&f.td, 1ULL << ECHO_FEATURE_BIT);
    g_assert_cmphex(st & VIRTIO_STATUS_FEATURES_OK, ==, 0);

    uint64_t wanted = (1ULL << VIRTIO_F_VERSION_1) | (1ULL << ECHO_FEATURE_BIT);
    st = td_negotiate(&f.td, wanted);
    g_assert_cmphex(st, ==, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                            VIRTIO_STATUS_FEATURES_OK);
    /* After FEATURES_OK the accepted set is frozen. */
    td_write(&f.td, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    td_write(&f.td, VIRTIO_MMIO_DRIVER_FEATURES, 0xffffffff);
    g_assert_false(vmm_virtio_mmio_has_feature(f.echo.t, VIRTIO_RING_F_EVENT_IDX));
    g_assert_true(vmm_virtio_mmio_has_feature(f.echo.t, ECHO_FEATURE_BIT));
    td_setup_queue(&f.td, 0, 16);
    td_driver_ok(&f.td);
    g_assert_cmpint(f.echo.driver_oks, ==, 1);
    g_assert_cmphex(f.echo.features_at_ok, ==, wanted);
    fixture_destroy(&f);
}

static void test_queue_registers(void)
{
    Fixture f;
    fixture_init(&f);
    td_negotiate(&f.td, ALL_FEATURES);
    td_write(&f.td, VIRTIO_MMIO_QUEUE_SEL, 1);
    g_assert_cmpuint(td_read(&f.td, VIRTIO_MMIO_QUEUE_NUM_MAX), ==, 64);
    /* Queue 2 does not exist: NumMax 0 tells the driver so. */
    td_write(&f.td, VIRTIO_MMIO_QUEUE_SEL, 2);
    g_assert_cmpuint(td_read(&f.td, VIRTIO_MMIO_QUEUE_NUM_MAX), ==, 0);
    td_write(&f.td, VIRTIO_MMIO_QUEUE_READY, 1);
    g_assert_cmpuint(td_read(&f.td, VIRTIO_MMIO_QUEUE_READY), ==, 0);

    td_setup_queue(&f.td, 1, 32);
    td_write(&f.td, VIRTIO_MMIO_QUEUE_SEL, 1);
    g_assert_cmpuint(td_read(&f.td, VIRTIO_MMIO_QUEUE_READY), ==, 1);
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_QUEUE_DESC_LOW), ==, f.td.q[1].desc);
    /* Ignored while the queue is live. */
    td_write(&f.td, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x5000);
    td_write(&f.td, VIRTIO_MMIO_QUEUE_NUM, 8);
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_QUEUE_DESC_LOW), ==, f.td.q[1].desc);
    g_assert_cmpuint(td_read(&f.td, VIRTIO_MMIO_QUEUE_NUM), ==, 32);
    td_write(&f.td, VIRTIO_MMIO_QUEUE_READY, 0);
    g_assert_cmpuint(td_read(&f.td, VIRTIO_MMIO_QUEUE_READY), ==, 0);
    td_write(&f.td, VIRTIO_MMIO_QUEUE_DESC_HIGH, 1);
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_QUEUE_DESC_HIGH), ==, 1);
    fixture_destroy(&f);
}

static void test_notify_and_interrupt(void)
{
    Fixture f;
    fixture_init(&f);
    td_bring_up(&f.td, ALL_FEATURES & ~(1ULL << VIRTIO_RING_F_EVENT_IDX), 2, 16);
    uint64_t gpa = echo_request(&f, 1);
    uint32_t id, len;
    g_assert_true(td_get_used(&f.td, 1, &id, &len));
    g_assert_cmpuint(len, ==, 4);
    g_assert_cmpmem(td_host(&f.td, gpa), 4, "echo", 4);
    g_assert_true(f.td.irq_level);
    g_assert_cmpint(f.td.irq_raised, ==, 1);
    g_assert_cmphex(td_ack_irq(&f.td), ==, VIRTIO_MMIO_INT_VRING);
    g_assert_false(f.td.irq_level);
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_INTERRUPT_STATUS), ==, 0);

    /* The driver suppresses interrupts: used entries come, the line stays low. */
    td_put16(&f.td, f.td.q[0].avail, VIRTQ_AVAIL_F_NO_INTERRUPT);
    echo_request(&f, 0);
    g_assert_true(td_get_used(&f.td, 0, &id, &len));
    g_assert_false(f.td.irq_level);

    /* Notifies for queues that do not exist are ignored. */
    td_write(&f.td, VIRTIO_MMIO_QUEUE_NOTIFY, 7);
    td_write(&f.td, VIRTIO_MMIO_QUEUE_NOTIFY, 0xffffffff);
    fixture_destroy(&f);
}

static void record_notify(void *opaque, unsigned queue)
{
    TestDriver *td = opaque;
    td->notifies++;
    td->last_notify = queue;
}

static void test_notify_hook(void)
{
    Fixture f;
    fixture_init(&f);
    VmmVirtioMmioHost host = { .notify = record_notify, .set_irq = td_set_irq, .opaque = &f.td };
    vmm_virtio_mmio_set_host(f.echo.t, &host);
    td_bring_up(&f.td, ALL_FEATURES, 2, 16);
    uint64_t gpa = echo_request(&f, 1);
    /* The hook (the future ioeventfd) got the kick; nothing was processed yet. */
    g_assert_cmpint(f.td.notifies, ==, 1);
    g_assert_cmpint(f.td.last_notify, ==, 1);
    g_assert_cmpuint(td_used_idx(&f.td, 1), ==, 0);
    /* The I/O thread's side. */
    vmm_virtio_mmio_process_queue(f.echo.t, 1);
    g_assert_cmpuint(td_used_idx(&f.td, 1), ==, 1);
    g_assert_cmpmem(td_host(&f.td, gpa), 4, "echo", 4);
    g_assert_true(f.td.irq_level);
    fixture_destroy(&f);
}

static void test_no_processing_before_driver_ok(void)
{
    Fixture f;
    fixture_init(&f);
    td_negotiate(&f.td, ALL_FEATURES);
    td_setup_queue(&f.td, 0, 16);
    echo_request(&f, 0);
    g_assert_cmpuint(td_used_idx(&f.td, 0), ==, 0);
    td_driver_ok(&f.td);
    td_kick(&f.td, 0);
    g_assert_cmpuint(td_used_idx(&f.td, 0), ==, 1);
    fixture_destroy(&f);
}

static void test_reset(void)
{
    Fixture f;
    fixture_init(&f);
    td_bring_up(&f.td, ALL_FEATURES, 2, 16);
    echo_request(&f, 0);
    g_assert_true(f.td.irq_level);
    int resets = f.echo.resets;

    td_write(&f.td, VIRTIO_MMIO_STATUS, 0);
    g_assert_cmpint(f.echo.resets, ==, resets + 1);
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_STATUS), ==, 0);
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_INTERRUPT_STATUS), ==, 0);
    g_assert_false(f.td.irq_level);
    g_assert_false(vmm_virtio_mmio_has_feature(f.echo.t, VIRTIO_F_VERSION_1));
    for (unsigned q = 0; q < 2; q++) {
        td_write(&f.td, VIRTIO_MMIO_QUEUE_SEL, q);
        g_assert_cmpuint(td_read(&f.td, VIRTIO_MMIO_QUEUE_READY), ==, 0);
        g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_QUEUE_DESC_LOW), ==, 0);
    }
    /* The device works again after a fresh bring-up. */
    f.td.ring_next = 0x1000;
    td_bring_up(&f.td, ALL_FEATURES, 1, 16);
    echo_request(&f, 0);
    g_assert_cmpuint(td_used_idx(&f.td, 0), ==, 1);
    fixture_destroy(&f);
}

static void test_bad_ring_needs_reset(void)
{
    Fixture f;
    fixture_init(&f);
    td_negotiate(&f.td, ALL_FEATURES);
    td_setup_queue(&f.td, 0, 16);
    td_driver_ok(&f.td);
    /* Queue 1's rings outside RAM. */
    td_write(&f.td, VIRTIO_MMIO_QUEUE_SEL, 1);
    td_write(&f.td, VIRTIO_MMIO_QUEUE_NUM, 16);
    td_write(&f.td, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x100);
    td_write(&f.td, VIRTIO_MMIO_QUEUE_READY, 1);
    g_assert_cmpuint(td_read(&f.td, VIRTIO_MMIO_QUEUE_READY), ==, 0);
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET, ==,
                    VIRTIO_STATUS_NEEDS_RESET);
    g_assert_cmphex(td_ack_irq(&f.td), ==, VIRTIO_MMIO_INT_CONFIG);
    /* While NEEDS_RESET, kicks do nothing; the driver cannot clear the bit. */
    echo_request(&f, 0);
    g_assert_cmpuint(td_used_idx(&f.td, 0), ==, 0);
    td_write(&f.td, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_DRIVER_OK);
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET, ==,
                    VIRTIO_STATUS_NEEDS_RESET);
    td_write(&f.td, VIRTIO_MMIO_STATUS, 0);
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_STATUS), ==, 0);
    fixture_destroy(&f);
}

static void test_malformed_chain_needs_reset(void)
{
    Fixture f;
    fixture_init(&f);
    td_bring_up(&f.td, ALL_FEATURES, 1, 16);
    uint32_t gen = td_read(&f.td, VIRTIO_MMIO_CONFIG_GENERATION);
    td_write_desc(&f.td, f.td.q[0].desc, 0, td_alloc(&f.td, 8), 8, VIRTQ_DESC_F_NEXT, 0);
    td_submit(&f.td, 0, 0);
    g_assert_cmphex(vmm_virtio_mmio_status(f.echo.t) & VIRTIO_STATUS_NEEDS_RESET, ==,
                    VIRTIO_STATUS_NEEDS_RESET);
    g_assert_cmpuint(td_read(&f.td, VIRTIO_MMIO_CONFIG_GENERATION), !=, gen);
    g_assert_true(f.td.irq_level);
    g_assert_cmpuint(td_used_idx(&f.td, 0), ==, 0);
    fixture_destroy(&f);
}

static uint32_t read_config(Fixture *f, unsigned off, unsigned len)
{
    uint8_t data[8] = { 0 };
    uint32_t v = 0;
    vmm_virtio_mmio_access(f->echo.t, VIRTIO_MMIO_CONFIG + off, data, len, false);
    memcpy(&v, data, MIN(len, 4));
    return GUINT32_FROM_LE(v);
}

static void test_config_space(void)
{
    Fixture f;
    fixture_init(&f);
    g_assert_cmphex(read_config(&f, 0, 1), ==, '0');
    g_assert_cmphex(read_config(&f, 2, 2), ==, '2' | ('3' << 8));
    g_assert_cmphex(read_config(&f, 8, 4), ==, '8' | ('9' << 8) | ('a' << 16) | ((uint32_t)'b' << 24));
    /* Past the end (wholly or partly) reads as zero and is not handed on. */
    g_assert_cmphex(read_config(&f, 10, 4), ==, 0);
    g_assert_cmphex(read_config(&f, 0xfc, 4), ==, 0);
    uint8_t w[2] = { 'X', 'Y' };
    vmm_virtio_mmio_access(f.echo.t, VIRTIO_MMIO_CONFIG + 4, w, 2, true);
    vmm_virtio_mmio_access(f.echo.t, VIRTIO_MMIO_CONFIG + 11, w, 2, true);
    g_assert_cmpint(f.echo.config_writes, ==, 1);
    g_assert_cmpmem(f.echo.config, ECHO_CONFIG_SIZE, "0123XY6789ab", ECHO_CONFIG_SIZE);
    /* The register page the guest reads without an exit follows the write. */
    g_assert_cmpmem(f.td.shadow + VIRTIO_MMIO_CONFIG, ECHO_CONFIG_SIZE, "0123XY6789ab", ECHO_CONFIG_SIZE);

    /* A change: new generation; the interrupt only once the driver is up. */
    uint32_t gen = td_read(&f.td, VIRTIO_MMIO_CONFIG_GENERATION);
    vmm_virtio_mmio_config_changed(f.echo.t);
    g_assert_cmpuint(td_read(&f.td, VIRTIO_MMIO_CONFIG_GENERATION), ==, gen + 1);
    g_assert_false(f.td.irq_level);
    td_bring_up(&f.td, ALL_FEATURES, 1, 16);
    vmm_virtio_mmio_config_changed(f.echo.t);
    g_assert_true(f.td.irq_level);
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_INTERRUPT_STATUS), ==, VIRTIO_MMIO_INT_CONFIG);
    fixture_destroy(&f);
}

static void test_bad_accesses(void)
{
    Fixture f;
    fixture_init(&f);
    uint8_t data[8];
    memset(data, 0xaa, sizeof(data));
    /* Registers take aligned 32-bit accesses only. */
    vmm_virtio_mmio_access(f.echo.t, VIRTIO_MMIO_MAGIC_VALUE, data, 2, false);
    g_assert_cmphex(data[0] | data[1], ==, 0);
    vmm_virtio_mmio_access(f.echo.t, VIRTIO_MMIO_MAGIC_VALUE + 1, data, 4, false);
    g_assert_cmphex(data[0] | data[1] | data[2] | data[3], ==, 0);
    data[0] = VIRTIO_STATUS_ACKNOWLEDGE;
    vmm_virtio_mmio_access(f.echo.t, VIRTIO_MMIO_STATUS, data, 1, true);
    g_assert_cmphex(td_read(&f.td, VIRTIO_MMIO_STATUS), ==, 0);
    /* Outside the window, unknown registers, read-only registers. */
    memset(data, 0xaa, sizeof(data));
    vmm_virtio_mmio_access(f.echo.t, VIRTIO_MMIO_WINDOW_SIZE, data, 4, false);
    g_assert_cmphex(data[0], ==, 0);
    g_assert_cmphex(td_read(&f.td, 0x0e0), ==, 0);
    td_write(&f.td, 0x0e0, 1);
    td_write(&f.td, VIRTIO_MMIO_MAGIC_VALUE, 0);
    td_write(&f.td, VIRTIO_MMIO_DEVICE_ID, 7);
    g_assert_cmpuint(td_read(&f.td, VIRTIO_MMIO_DEVICE_ID), ==, ECHO_DEVICE_ID);
    vmm_virtio_mmio_access(f.echo.t, 0, data, 0, false);
    vmm_virtio_mmio_access(f.echo.t, UINT64_MAX - 3, data, 4, true);
    fixture_destroy(&f);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/virtio-mmio/identification", test_identification);
    g_test_add_func("/virtio-mmio/feature-negotiation", test_feature_negotiation);
    g_test_add_func("/virtio-mmio/queue-registers", test_queue_registers);
    g_test_add_func("/virtio-mmio/notify-and-interrupt", test_notify_and_interrupt);
    g_test_add_func("/virtio-mmio/notify-hook", test_notify_hook);
    g_test_add_func("/virtio-mmio/no-processing-before-driver-ok", test_no_processing_before_driver_ok);
    g_test_add_func("/virtio-mmio/reset", test_reset);
    g_test_add_func("/virtio-mmio/bad-ring-needs-reset", test_bad_ring_needs_reset);
    g_test_add_func("/virtio-mmio/malformed-chain-needs-reset", test_malformed_chain_needs_reset);
    g_test_add_func("/virtio-mmio/config-space", test_config_space);
    g_test_add_func("/virtio-mmio/bad-accesses", test_bad_accesses);
    return g_test_run();
}
