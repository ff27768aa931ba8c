/* Tests for vcpu-worker/i8042.c: Linux's reboot path (wait for an empty input
 * buffer, command 0xfe on port 0x64) and output-port reset reach the reset
 * callback; the i8042 driver's probe sequence gets sensible answers.
 *
 * Until vcpu-worker's device models are a library, the source is included. */
#include "common/error.h"
#include "vcpu-worker/i8042.h"

typedef struct {
    VmmI8042 *dev;
    int resets;
    bool irq1, irq12;
} Fixture;

static void on_reset(void *opaque)
{
    Fixture *f = opaque;
    f->resets++;
}

static void on_irq(void *opaque, unsigned irq, bool level)
{
    Fixture *f = opaque;
    if (irq == VMM_I8042_KBD_IRQ)
        f->irq1 = level;
    else if (irq == VMM_I8042_AUX_IRQ)
        f->irq12 = level;
    else
        g_error("unexpected irq %u", irq);
}

static void fixture_init(Fixture *f)
{
    memset(f, 0, sizeof(*f));
    VmmI8042Host host = { on_reset, on_irq, f };
    f->dev = vmm_i8042_new(&host);
}

static uint8_t read_status(Fixture *f)
{
    return vmm_i8042_read(f->dev, VMM_I8042_COMMAND_PORT);
}

static void cmd(Fixture *f, uint8_t c)
{
    vmm_i8042_write(f->dev, VMM_I8042_COMMAND_PORT, c);
}

static uint8_t data_in(Fixture *f)
{
    g_assert_cmphex(read_status(f) & I8042_STR_OBF, ==, I8042_STR_OBF);
    return vmm_i8042_read(f->dev, VMM_I8042_DATA_PORT);
}

static void test_reboot_command(void)
{
    Fixture f;
    fixture_init(&f);
    /* Linux's kb_wait(): the input buffer is never full. */
    for (int i = 0; i < 3; i++)
        g_assert_cmphex(read_status(&f) & I8042_STR_IBF, ==, 0);
    cmd(&f, I8042_CMD_PULSE_RESET);
    g_assert_cmpint(f.resets, ==, 1);
    /* 0xff pulses nothing; 0xf0-0xfd with bit 0 clear pulse reset too. */
    cmd(&f, 0xff);
    g_assert_cmpint(f.resets, ==, 1);
    cmd(&f, 0xf0);
    g_assert_cmpint(f.resets, ==, 2);
    cmd(&f, 0xf1);
    g_assert_cmpint(f.resets, ==, 2);
    vmm_i8042_free(f.dev);
}

static void test_output_port_reset(void)
{
    Fixture f;
    fixture_init(&f);
    cmd(&f, I8042_CMD_READ_OUTPUT);
    uint8_t port = data_in(&f);
    g_assert_cmphex(port & 0x01, ==, 0x01);
    /* Writing the output port with the reset bit set does nothing... */
    cmd(&f, I8042_CMD_WRITE_OUTPUT);
    vmm_i8042_write(f.dev, VMM_I8042_DATA_PORT, port);
    g_assert_cmpint(f.resets, ==, 0);
    /* ...with it clear, resets. */
    cmd(&f, I8042_CMD_WRITE_OUTPUT);
    vmm_i8042_write(f.dev, VMM_I8042_DATA_PORT, port & ~1);
    g_assert_cmpint(f.resets, ==, 1);
    vmm_i8042_free(f.dev);
}

static void test_probe_sequence(void)
{
    Fixture f;
    fixture_init(&f);
    /* A controller is present: status is not 0xff. */
    uint8_t st = read_status(&f);
    g_assert_cmphex(st, !=, 0xff);
    g_assert_cmphex(st & I8042_STR_OBF, ==, 0);
    /* Empty output buffer reads do not block or crash. */
    vmm_i8042_read(f.dev, VMM_I8042_DATA_PORT);

    cmd(&f, I8042_CMD_CTL_RCTR);
    uint8_t ctr = data_in(&f);
    g_assert_cmphex(ctr & I8042_CTR_KBDINT, ==, I8042_CTR_KBDINT);
    g_assert_cmphex(read_status(&f) & I8042_STR_CMDDAT, ==, I8042_STR_CMDDAT);

    /* Interrupts off while probing, as Linux does. */
    cmd(&f, I8042_CMD_CTL_WCTR);
    vmm_i8042_write(f.dev, VMM_I8042_DATA_PORT, ctr & ~(I8042_CTR_KBDINT | I8042_CTR_AUXINT));
    g_assert_cmphex(read_status(&f) & I8042_STR_CMDDAT, ==, 0);
    cmd(&f, I8042_CMD_CTL_RCTR);
    g_assert_cmphex(data_in(&f), ==, ctr & ~(I8042_CTR_KBDINT | I8042_CTR_AUXINT));
    g_assert_false(f.irq1);

    cmd(&f, I8042_CMD_CTL_TEST);
    g_assert_cmphex(data_in(&f), ==, 0x55);
    cmd(&f, I8042_CMD_KBD_TEST);
    g_assert_cmphex(data_in(&f), ==, 0x00);
    cmd(&f, I8042_CMD_AUX_TEST);
    g_assert_cmphex(data_in(&f), ==, 0x00);

    /* The aux loopback test: the byte comes back as aux data. */
    cmd(&f, I8042_CMD_AUX_LOOP);
    vmm_i8042_write(f.dev, VMM_I8042_DATA_PORT, 0x5a);
    g_assert_cmphex(read_status(&f) & I8042_STR_AUXDATA, ==, I8042_STR_AUXDATA);
    g_assert_cmphex(data_in(&f), ==, 0x5a);

    cmd(&f, I8042_CMD_KBD_DISABLE);
    cmd(&f, I8042_CMD_CTL_RCTR);
    g_assert_cmphex(data_in(&f) & I8042_CTR_KBDDIS, ==, I8042_CTR_KBDDIS);
    cmd(&f, I8042_CMD_KBD_ENABLE);
    cmd(&f, I8042_CMD_CTL_RCTR);
    g_assert_cmphex(data_in(&f) & I8042_CTR_KBDDIS, ==, 0);
    g_assert_cmpint(f.resets, ==, 0);
    vmm_i8042_free(f.dev);
}

static void test_keyboard_and_irq(void)
{
    Fixture f;
    fixture_init(&f);
    /* Keyboard reset: ACK then self-test passed, with IRQ 1 while data waits. */
    vmm_i8042_write(f.dev, VMM_I8042_DATA_PORT, 0xff);
    g_assert_true(f.irq1);
    g_assert_cmphex(data_in(&f), ==, 0xfa);
    g_assert_true(f.irq1);
    g_assert_cmphex(data_in(&f), ==, 0xaa);
    g_assert_false(f.irq1);
    vmm_i8042_write(f.dev, VMM_I8042_DATA_PORT, 0xf2);
    g_assert_cmphex(data_in(&f), ==, 0xfa);
    g_assert_cmphex(data_in(&f), ==, 0xab);
    g_assert_cmphex(data_in(&f), ==, 0x83);
    g_assert_cmphex(read_status(&f) & I8042_STR_OBF, ==, 0);

    /* The aux line while aux data waits. */
    cmd(&f, I8042_CMD_AUX_LOOP);
    vmm_i8042_write(f.dev, VMM_I8042_DATA_PORT, 0x01);
    g_assert_true(f.irq12);
    g_assert_false(f.irq1);
    data_in(&f);
    g_assert_false(f.irq12);

    /* A flood does not overflow anything. */
    for (int i = 0; i < 100; i++)
        vmm_i8042_write(f.dev, VMM_I8042_DATA_PORT, 0xf4);
    int n = 0;
    while (read_status(&f) & I8042_STR_OBF) {
        vmm_i8042_read(f.dev, VMM_I8042_DATA_PORT);
        n++;
    }
    g_assert_cmpint(n, ==, 16);
    /* Other ports are not ours. */
    g_assert_cmphex(vmm_i8042_read(f.dev, 0x61), ==, 0xff);
    vmm_i8042_write(f.dev, 0x61, 0);
    vmm_i8042_free(f.dev);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/i8042/reboot-command", test_reboot_command);
    g_test_add_func("/i8042/output-port-reset", test_output_port_reset);
    g_test_add_func("/i8042/probe-sequence", test_probe_sequence);
    g_test_add_func("/i8042/keyboard-and-irq", test_keyboard_and_irq);
    return g_test_run();
}
