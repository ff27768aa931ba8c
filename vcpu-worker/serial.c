/* 8250/16550A UART, following the behaviour of QEMU's hw/char/serial.c and
 * kvmtool's hw/serial.c that Linux's 8250 driver is known to work with. */
#include "vcpu-worker/serial.h"

#include <string.h>

#define UART_LSR_INT_ANY (UART_LSR_OE | UART_LSR_PE | UART_LSR_FE | UART_LSR_BI)
#define UART_MSR_ANY_DELTA (UART_MSR_DCTS | UART_MSR_DDSR | UART_MSR_TERI | UART_MSR_DDCD)

struct VmmSerial {
    GMutex lock;
    char *id;
    VmmSerialHost host;

    uint8_t ier, iir, fcr, lcr, mcr, lsr, msr, scr;
    uint8_t dll, dlm;
    uint8_t rbr;                  /* the last byte received, read when the FIFO is empty */
    bool thr_ipending;            /* THRE interrupt pending until IIR read or THR write */
    bool irq_level;
    bool rx_was_full;             /* tell the host once there is room */

    uint8_t rx_fifo[VMM_SERIAL_FIFO_SIZE];
    unsigned rx_head, rx_count;
};

static unsigned rx_capacity(const VmmSerial *s)
{
    /* Without the FIFO the 8250 holds a single byte. */
    return (s->fcr & UART_FCR_ENABLE_FIFO) ? VMM_SERIAL_FIFO_SIZE : 1;
}

static void rx_clear(VmmSerial *s)
{
    s->rx_head = s->rx_count = 0;
    s->lsr &= ~(UART_LSR_DR | UART_LSR_BI);
}

/* Called with the lock held. Priorities as in the 16550 datasheet. */
static void update_irq(VmmSerial *s)
{
    uint8_t id = UART_IIR_NO_INT;

    if ((s->ier & UART_IER_RLSI) && (s->lsr & UART_LSR_INT_ANY))
        id = UART_IIR_RLSI;
    else if ((s->ier & UART_IER_RDI) && (s->lsr & UART_LSR_DR))
        id = UART_IIR_RDI;
    else if ((s->ier & UART_IER_THRI) && s->thr_ipending)
        id = UART_IIR_THRI;
    else if ((s->ier & UART_IER_MSI) && (s->msr & UART_MSR_ANY_DELTA))
        id = UART_IIR_MSI;

    s->iir = id | ((s->fcr & UART_FCR_ENABLE_FIFO) ? UART_IIR_FIFO_ENABLED : 0);
    bool level = id != UART_IIR_NO_INT;
    if (level != s->irq_level) {
        s->irq_level = level;
        if (s->host.set_irq)
            s->host.set_irq(s->host.opaque, level);
    }
}

static void reset_locked(VmmSerial *s)
{
    s->ier = 0;
    s->fcr = 0;
    s->lcr = 0;
    s->mcr = UART_MCR_OUT2;
    s->lsr = UART_LSR_TEMT | UART_LSR_THRE;
    s->msr = UART_MSR_DCD | UART_MSR_DSR | UART_MSR_CTS;
    s->scr = 0;
    s->dll = 0x0c;   /* 9600 baud, the BIOS default */
    s->dlm = 0;
    s->rbr = 0;
    s->thr_ipending = false;
    rx_clear(s);
    update_irq(s);
}

VmmSerial *vmm_serial_new(const char *id, const VmmSerialHost *host)
{
    VmmSerial *s = g_new0(VmmSerial, 1);
    g_mutex_init(&s->lock);
    s->id = g_strdup(id ? id : "serial0");
    if (host)
        s->host = *host;
    g_mutex_lock(&s->lock);
    reset_locked(s);
    g_mutex_unlock(&s->lock);
    return s;
}

void vmm_serial_free(VmmSerial *s)
{
    if (!s)
        return;
    g_free(s->id);
    g_mutex_clear(&s->lock);
    g_free(s);
}

void vmm_serial_reset(VmmSerial *s)
{
    g_mutex_lock(&s->lock);
    reset_locked(s);
    g_mutex_unlock(&s->lock);
}

/* Queues one received byte; in loopback a full FIFO overruns. */
static bool rx_push(VmmSerial *s, uint8_t byte)
{
    if (s->rx_count >= rx_capacity(s)) {
        s->lsr |= UART_LSR_OE;
        return false;
    }
    s->rx_fifo[(s->rx_head + s->rx_count) % VMM_SERIAL_FIFO_SIZE] = byte;
    s->rx_count++;
    s->lsr |= UART_LSR_DR;
    return true;
}

static uint8_t rx_pop(VmmSerial *s)
{
    if (s->rx_count > 0) {
        s->rbr = s->rx_fifo[s->rx_head];
        s->rx_head = (s->rx_head + 1) % VMM_SERIAL_FIFO_SIZE;
        s->rx_count--;
    }
    if (s->rx_count == 0)
        s->lsr &= ~(UART_LSR_DR | UART_LSR_BI);
    return s->rbr;
}

/* The modem status lines: in loopback they follow the modem control outputs. */
static uint8_t modem_lines(const VmmSerial *s)
{
    if (!(s->mcr & UART_MCR_LOOP))
        return UART_MSR_DCD | UART_MSR_DSR | UART_MSR_CTS;
    uint8_t lines = 0;
    if (s->mcr & UART_MCR_RTS)
        lines |= UART_MSR_CTS;
    if (s->mcr & UART_MCR_DTR)
        lines |= UART_MSR_DSR;
    if (s->mcr & UART_MCR_OUT1)
        lines |= UART_MSR_RI;
    if (s->mcr & UART_MCR_OUT2)
        lines |= UART_MSR_DCD;
    return lines;
}

static void update_msr(VmmSerial *s)
{
    uint8_t old = s->msr & 0xf0, now = modem_lines(s);
    uint8_t delta = s->msr & UART_MSR_ANY_DELTA;

    if ((old ^ now) & UART_MSR_CTS)
        delta |= UART_MSR_DCTS;
    if ((old ^ now) & UART_MSR_DSR)
        delta |= UART_MSR_DDSR;
    if ((old & UART_MSR_RI) && !(now & UART_MSR_RI))
        delta |= UART_MSR_TERI;
    if ((old ^ now) & UART_MSR_DCD)
        delta |= UART_MSR_DDCD;
    s->msr = now | delta;
}

static void transmit(VmmSerial *s, uint8_t byte)
{
    s->thr_ipending = false;
    s->lsr &= ~(UART_LSR_THRE | UART_LSR_TEMT);
    update_irq(s);
    if (s->mcr & UART_MCR_LOOP)
        rx_push(s, byte);
    else if (s->host.write)
        s->host.write(s->host.opaque, &byte, 1);
    /* Sent at once: the holding register is empty again. */
    s->lsr |= UART_LSR_THRE | UART_LSR_TEMT;
    s->thr_ipending = true;
}

static void write_ier(VmmSerial *s, uint8_t value)
{
    uint8_t changed = (s->ier ^ value) & 0x0f;
    s->ier = value & 0x0f;
    /* Enabling THRI with the holding register empty raises it at once: Linux
     * relies on this to start transmitting. */
    if (changed & UART_IER_THRI)
        s->thr_ipending = (s->ier & UART_IER_THRI) && (s->lsr & UART_LSR_THRE);
}

static void write_fcr(VmmSerial *s, uint8_t value)
{
    if ((value ^ s->fcr) & UART_FCR_ENABLE_FIFO)
        rx_clear(s);     /* switching the FIFO on or off empties it */
    if (value & UART_FCR_CLEAR_RCVR)
        rx_clear(s);
    /* The clear bits self-clear; the trigger level is kept but not used:
     * data-ready interrupts fire for every byte, as in kvmtool. */
    s->fcr = value & ~(UART_FCR_CLEAR_RCVR | UART_FCR_CLEAR_XMIT) & 0xc9;
}

void vmm_serial_write(VmmSerial *s, unsigned offset, uint8_t value)
{
    g_mutex_lock(&s->lock);
    bool dlab = s->lcr & UART_LCR_DLAB;
    switch (offset) {
    case UART_TX:
        if (dlab)
            s->dll = value;
        else
            transmit(s, value);
        break;
    case UART_IER:
        if (dlab)
            s->dlm = value;
        else
            write_ier(s, value);
        break;
    case UART_FCR: write_fcr(s, value); break;
    case UART_LCR: s->lcr = value; break;
    case UART_MCR:
        s->mcr = value & 0x1f;
        update_msr(s);
        break;
    case UART_LSR: break;   /* factory test register: writes ignored */
    case UART_MSR: break;
    case UART_SCR: s->scr = value; break;
    }
    update_irq(s);
    /* Leaving loopback or enabling the FIFO can make room for waiting input. */
    bool notify_rx = s->rx_was_full && !(s->mcr & UART_MCR_LOOP) && s->rx_count < rx_capacity(s);
    if (notify_rx)
        s->rx_was_full = false;
    VmmSerialHost host = s->host;
    g_mutex_unlock(&s->lock);

    if (notify_rx && host.rx_ready)
        host.rx_ready(host.opaque);
}

static uint8_t read_iir(VmmSerial *s)
{
    uint8_t value = s->iir;
    /* Reading IIR that reports THRE acknowledges it. */
    if ((value & UART_IIR_ID) == UART_IIR_THRI && !(value & UART_IIR_NO_INT))
        s->thr_ipending = false;
    return value;
}

static uint8_t read_lsr(VmmSerial *s)
{
    uint8_t value = s->lsr;
    /* Error bits are cleared by reading them. */
    s->lsr &= ~(UART_LSR_OE | UART_LSR_BI | UART_LSR_PE | UART_LSR_FE);
    return value;
}

static uint8_t read_msr(VmmSerial *s)
{
    uint8_t value = s->msr;
    s->msr &= ~UART_MSR_ANY_DELTA;
    return value;
}

uint8_t vmm_serial_read(VmmSerial *s, unsigned offset)
{
    uint8_t value = 0xff;
    bool notify_rx = false;

    g_mutex_lock(&s->lock);
    bool dlab = s->lcr & UART_LCR_DLAB;
    switch (offset) {
    case UART_RX:
        if (dlab) {
            value = s->dll;
        } else {
            value = rx_pop(s);
            /* In loopback the line input stays refused: tell it on leaving. */
            notify_rx = s->rx_was_full && !(s->mcr & UART_MCR_LOOP);
            if (notify_rx)
                s->rx_was_full = false;
        }
        break;
    case UART_IER: value = dlab ? s->dlm : s->ier; break;
    case UART_IIR: value = read_iir(s); break;
    case UART_LCR: value = s->lcr; break;
    case UART_MCR: value = s->mcr; break;
    case UART_LSR: value = read_lsr(s); break;
    case UART_MSR: value = read_msr(s); break;
    case UART_SCR: value = s->scr; break;
    }
    update_irq(s);
    VmmSerialHost host = s->host;
    g_mutex_unlock(&s->lock);

    if (notify_rx && host.rx_ready)
        host.rx_ready(host.opaque);
    return value;
}

size_t vmm_serial_receive(VmmSerial *s, const uint8_t *buf, size_t len)
{
    size_t taken = 0;

    g_mutex_lock(&s->lock);
    /* In loopback the UART is cut off from the line. */
    if (!(s->mcr & UART_MCR_LOOP)) {
        while (taken < len && s->rx_count < rx_capacity(s))
            rx_push(s, buf[taken++]);
    }
    if (taken < len)
        s->rx_was_full = true;
    update_irq(s);
    g_mutex_unlock(&s->lock);
    return taken;
}

size_t vmm_serial_rx_space(VmmSerial *s)
{
    g_mutex_lock(&s->lock);
    size_t space = (s->mcr & UART_MCR_LOOP) ? 0 : rx_capacity(s) - s->rx_count;
    g_mutex_unlock(&s->lock);
    return space;
}

bool vmm_serial_irq_level(VmmSerial *s)
{
    g_mutex_lock(&s->lock);
    bool level = s->irq_level;
    g_mutex_unlock(&s->lock);
    return level;
}
