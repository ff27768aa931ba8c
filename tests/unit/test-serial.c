/* Tests for vcpu-worker/serial.c: the 8250/16550A registers driven the way
 * Linux's 8250 driver probes and uses them (DLAB, FIFO detection, loopback
 * test, THRE/receive/line-status/modem-status interrupts), with a sink that
 * records output and input fed from the test.
 *
 * Until vcpu-worker's device models are a library, the source is included. */
#include "common/error.h"
#include "vcpu-worker/serial.h"

typedef struct {
    VmmSerial *s;
    GString *out;
    bool irq;
    int irq_edges;
    int rx_ready_calls;
} Fixture;

static void sink_write(void *opaque, const uint8_t *buf, size_t len)
{
    Fixture *f = opaque;
    g_string_append_len(f->out, (const char *)buf, len);
}

static void sink_set_irq(void *opaque, bool level)
{
    Fixture *f = opaque;
    g_assert_cmpint(level, !=, f->irq);   /* changes only */
    f->irq = level;
    f->irq_edges += level;
}

static void sink_rx_ready(void *opaque)
{
    Fixture *f = opaque;
    f->rx_ready_calls++;
}

static void fixture_init(Fixture *f)
{
    memset(f, 0, sizeof(*f));
    f->out = g_string_new(NULL);
    VmmSerialHost host = { sink_write, sink_rx_ready, sink_set_irq, f };
    f->s = vmm_serial_new("serial0", &host);
}

static void fixture_destroy(Fixture *f)
{
    vmm_serial_free(f->s);
    g_string_free(f->out, TRUE);
}

static uint8_t rd(Fixture *f, unsigned reg)
{
    return vmm_serial_read(f->s, reg);
}

static void wr(Fixture *f, unsigned reg, uint8_t v)
{
    vmm_serial_write(f->s, reg, v);
}

static void test_power_on_state(void)
{
    Fixture f;
    fixture_init(&f);
    g_assert_cmphex(rd(&f, UART_IIR), ==, UART_IIR_NO_INT);
    g_assert_cmphex(rd(&f, UART_LSR), ==, UART_LSR_THRE | UART_LSR_TEMT);
    g_assert_cmphex(rd(&f, UART_MSR), ==, UART_MSR_DCD | UART_MSR_DSR | UART_MSR_CTS);
    g_assert_cmphex(rd(&f, UART_MCR), ==, UART_MCR_OUT2);
    g_assert_cmphex(rd(&f, UART_LCR), ==, 0);
    g_assert_cmphex(rd(&f, UART_IER), ==, 0);
    g_assert_false(f.irq);
    g_assert_cmphex(vmm_serial_read(f.s, 8), ==, 0xff);
    fixture_destroy(&f);
}

static void test_divisor_latch_and_scratch(void)
{
    Fixture f;
    fixture_init(&f);
    wr(&f, UART_LCR, UART_LCR_DLAB | 0x03);
    wr(&f, UART_DLL, 0x01);
    wr(&f, UART_DLM, 0x02);
    g_assert_cmphex(rd(&f, UART_DLL), ==, 0x01);
    g_assert_cmphex(rd(&f, UART_DLM), ==, 0x02);
    g_assert_cmpuint(f.out->len, ==, 0);      /* DLL is not THR */
    wr(&f, UART_LCR, 0x03);
    g_assert_cmphex(rd(&f, UART_IER), ==, 0);
    g_assert_cmphex(rd(&f, UART_LCR), ==, 0x03);
    wr(&f, UART_SCR, 0xa5);
    g_assert_cmphex(rd(&f, UART_SCR), ==, 0xa5);
    wr(&f, UART_SCR, 0x5a);
    g_assert_cmphex(rd(&f, UART_SCR), ==, 0x5a);
    fixture_destroy(&f);
}

static void test_transmit_polled(void)
{
    Fixture f;
    fixture_init(&f);
    /* earlycon: wait for THRE, write, repeat. */
    const char *msg = "Linux version\r\n";
    for (const char *p = msg; *p; p++) {
        g_assert_cmphex(rd(&f, UART_LSR) & UART_LSR_THRE, ==, UART_LSR_THRE);
        wr(&f, UART_TX, *p);
    }
    g_assert_cmpstr(f.out->str, ==, msg);
    g_assert_cmphex(rd(&f, UART_LSR) & (UART_LSR_THRE | UART_LSR_TEMT), ==,
                    UART_LSR_THRE | UART_LSR_TEMT);
    g_assert_false(f.irq);
    fixture_destroy(&f);
}

static void test_thre_interrupt(void)
{
    Fixture f;
    fixture_init(&f);
    /* Enabling THRI with an empty holding register interrupts at once. */
    wr(&f, UART_IER, UART_IER_THRI);
    g_assert_true(f.irq);
    g_assert_cmphex(rd(&f, UART_IIR), ==, UART_IIR_THRI);
    /* Reading IIR acknowledged it. */
    g_assert_false(f.irq);
    g_assert_cmphex(rd(&f, UART_IIR), ==, UART_IIR_NO_INT);
    /* Each byte sent makes the register empty again: interrupt again. */
    wr(&f, UART_TX, 'x');
    g_assert_true(f.irq);
    g_assert_cmpint(f.irq_edges, ==, 2);
    /* Disabling the interrupt drops the line. */
    wr(&f, UART_IER, 0);
    g_assert_false(f.irq);
    /* Re-enabling: THRE is set, so pending again (Linux's THRE test). */
    wr(&f, UART_IER, UART_IER_THRI);
    g_assert_true(f.irq);
    wr(&f, UART_IER, 0);
    fixture_destroy(&f);
}

static void test_fifo_detection(void)
{
    Fixture f;
    fixture_init(&f);
    /* Linux autoconfig: FIFO on, IIR bits 7:6 == 3 means a 16550A. */
    wr(&f, UART_FCR, UART_FCR_ENABLE_FIFO);
    g_assert_cmphex(rd(&f, UART_IIR) >> 6, ==, 3);
    /* The 16750 test: the 64-byte bit under DLAB must not stick. */
    wr(&f, UART_LCR, UART_LCR_DLAB);
    wr(&f, UART_FCR, UART_FCR_ENABLE_FIFO | 0x20);
    wr(&f, UART_LCR, 0);
    g_assert_cmphex((rd(&f, UART_IIR) >> 5) & 7, ==, 6);
    wr(&f, UART_FCR, 0);
    g_assert_cmphex(rd(&f, UART_IIR), ==, UART_IIR_NO_INT);
    fixture_destroy(&f);
}

static void test_receive(void)
{
    Fixture f;
    fixture_init(&f);
    wr(&f, UART_FCR, UART_FCR_ENABLE_FIFO);
    wr(&f, UART_IER, UART_IER_RDI);
    g_assert_false(f.irq);
    g_assert_cmpuint(vmm_serial_rx_space(f.s), ==, VMM_SERIAL_FIFO_SIZE);

    char input[20];
    for (int i = 0; i < 20; i++)
        input[i] = 'a' + i;
    /* 16 fit; the rest waits for rx_ready. */
    g_assert_cmpuint(vmm_serial_receive(f.s, (uint8_t *)input, 20), ==, 16);
    g_assert_cmpuint(vmm_serial_rx_space(f.s), ==, 0);
    g_assert_true(f.irq);
    g_assert_cmphex(rd(&f, UART_IIR), ==, UART_IIR_FIFO_ENABLED | UART_IIR_RDI);
    g_assert_cmphex(rd(&f, UART_LSR) & UART_LSR_DR, ==, UART_LSR_DR);
    for (int i = 0; i < 16; i++)
        g_assert_cmpint(rd(&f, UART_RX), ==, 'a' + i);
    g_assert_cmpint(f.rx_ready_calls, ==, 1);
    g_assert_cmphex(rd(&f, UART_LSR) & UART_LSR_DR, ==, 0);
    g_assert_false(f.irq);
    g_assert_cmpuint(vmm_serial_receive(f.s, (uint8_t *)input + 16, 4), ==, 4);
    g_assert_cmpint(rd(&f, UART_RX), ==, 'q');

    /* Clearing the receive FIFO drops what is queued. */
    wr(&f, UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR_CLEAR_RCVR);
    g_assert_cmphex(rd(&f, UART_LSR) & UART_LSR_DR, ==, 0);
    g_assert_false(f.irq);

    /* Without the FIFO the UART holds one byte. */
    wr(&f, UART_FCR, 0);
    g_assert_cmpuint(vmm_serial_receive(f.s, (uint8_t *)"xy", 2), ==, 1);
    g_assert_cmphex(rd(&f, UART_IIR), ==, UART_IIR_RDI);
    g_assert_cmpint(rd(&f, UART_RX), ==, 'x');
    fixture_destroy(&f);
}

static void test_interrupt_priority(void)
{
    Fixture f;
    fixture_init(&f);
    wr(&f, UART_IER, UART_IER_RDI | UART_IER_THRI);
    vmm_serial_receive(f.s, (uint8_t *)"z", 1);
    /* Received data outranks THRE. */
    g_assert_cmphex(rd(&f, UART_IIR), ==, UART_IIR_RDI);
    rd(&f, UART_RX);
    g_assert_cmphex(rd(&f, UART_IIR), ==, UART_IIR_THRI);
    g_assert_cmphex(rd(&f, UART_IIR), ==, UART_IIR_NO_INT);
    g_assert_false(f.irq);
    fixture_destroy(&f);
}

static void test_loopback(void)
{
    Fixture f;
    fixture_init(&f);
    /* Linux's loopback check: MSR status bits follow RTS and OUT2. */
    uint8_t saved = rd(&f, UART_MCR);
    wr(&f, UART_MCR, UART_MCR_LOOP | 0x0a);
    g_assert_cmphex(rd(&f, UART_MSR) & 0xf0, ==, UART_MSR_DCD | UART_MSR_CTS);
    wr(&f, UART_MCR, UART_MCR_LOOP | UART_MCR_DTR | UART_MCR_OUT1);
    g_assert_cmphex(rd(&f, UART_MSR) & 0xf0, ==, UART_MSR_DSR | UART_MSR_RI);

    /* Bytes sent come back and do not leave the UART. */
    wr(&f, UART_TX, 'L');
    g_assert_cmpuint(f.out->len, ==, 0);
    g_assert_cmphex(rd(&f, UART_LSR) & UART_LSR_DR, ==, UART_LSR_DR);
    g_assert_cmpint(rd(&f, UART_RX), ==, 'L');
    /* Input from outside is refused in loopback. */
    g_assert_cmpuint(vmm_serial_receive(f.s, (uint8_t *)"o", 1), ==, 0);

    /* Overrun: a second byte with the FIFO off; LSR reports it once. */
    wr(&f, UART_IER, UART_IER_RLSI);
    wr(&f, UART_TX, '1');
    wr(&f, UART_TX, '2');
    g_assert_true(f.irq);
    g_assert_cmphex(rd(&f, UART_IIR), ==, UART_IIR_RLSI);
    g_assert_cmphex(rd(&f, UART_LSR) & UART_LSR_OE, ==, UART_LSR_OE);
    g_assert_cmphex(rd(&f, UART_LSR) & UART_LSR_OE, ==, 0);
    g_assert_false(f.irq);
    g_assert_cmpint(rd(&f, UART_RX), ==, '1');

    /* Leaving loopback tells the input side there is room again. */
    wr(&f, UART_MCR, saved);
    g_assert_cmpint(f.rx_ready_calls, ==, 1);
    g_assert_cmphex(rd(&f, UART_MSR) & 0xf0, ==, UART_MSR_DCD | UART_MSR_DSR | UART_MSR_CTS);
    wr(&f, UART_TX, 'n');
    g_assert_cmpstr(f.out->str, ==, "n");
    fixture_destroy(&f);
}

static void test_modem_status_interrupt(void)
{
    Fixture f;
    fixture_init(&f);
    wr(&f, UART_MCR, UART_MCR_LOOP);
    rd(&f, UART_MSR);
    wr(&f, UART_IER, UART_IER_MSI);
    g_assert_false(f.irq);
    wr(&f, UART_MCR, UART_MCR_LOOP | UART_MCR_RTS);
    g_assert_true(f.irq);
    g_assert_cmphex(rd(&f, UART_IIR), ==, UART_IIR_MSI);
    g_assert_cmphex(rd(&f, UART_MSR), ==, UART_MSR_CTS | UART_MSR_DCTS);
    g_assert_false(f.irq);
    /* RI's trailing edge. */
    wr(&f, UART_MCR, UART_MCR_LOOP | UART_MCR_OUT1);
    rd(&f, UART_MSR);
    wr(&f, UART_MCR, UART_MCR_LOOP);
    g_assert_cmphex(rd(&f, UART_MSR) & UART_MSR_TERI, ==, UART_MSR_TERI);
    fixture_destroy(&f);
}

static void test_reset(void)
{
    Fixture f;
    fixture_init(&f);
    wr(&f, UART_FCR, UART_FCR_ENABLE_FIFO);
    wr(&f, UART_IER, UART_IER_RDI);
    vmm_serial_receive(f.s, (uint8_t *)"abc", 3);
    g_assert_true(f.irq);
    vmm_serial_reset(f.s);
    g_assert_false(f.irq);
    g_assert_cmphex(rd(&f, UART_LSR), ==, UART_LSR_THRE | UART_LSR_TEMT);
    g_assert_cmphex(rd(&f, UART_IIR), ==, UART_IIR_NO_INT);
    fixture_destroy(&f);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/serial/power-on-state", test_power_on_state);
    g_test_add_func("/serial/divisor-latch-and-scratch", test_divisor_latch_and_scratch);
    g_test_add_func("/serial/transmit-polled", test_transmit_polled);
    g_test_add_func("/serial/thre-interrupt", test_thre_interrupt);
    g_test_add_func("/serial/fifo-detection", test_fifo_detection);
    g_test_add_func("/serial/receive", test_receive);
    g_test_add_func("/serial/interrupt-priority", test_interrupt_priority);
    g_test_add_func("/serial/loopback", test_loopback);
    g_test_add_func("/serial/modem-status-interrupt", test_modem_status_interrupt);
    g_test_add_func("/serial/reset", test_reset);
    return g_test_run();
}
