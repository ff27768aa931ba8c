/* i8042 keyboard controller: reset line, probe, and a silent keyboard. */
#include "vcpu-worker/i8042.h"

#include <string.h>

#define I8042_QUEUE_SIZE 16
/* Output port: bit 0 is the CPU reset line (active low), bit 1 the A20 gate. */
#define I8042_OUT_RESET 0x01
#define I8042_OUT_A20 0x02

typedef struct {
    uint8_t byte;
    bool aux;
} OutByte;

struct VmmI8042 {
    GMutex lock;
    VmmI8042Host host;
    uint8_t ctr;           /* the command byte */
    uint8_t output_port;
    uint8_t pending_cmd;   /* a command waiting for its data byte, or 0 */
    bool last_was_command;
    bool irq_kbd, irq_aux;

    OutByte queue[I8042_QUEUE_SIZE];
    unsigned head, count;
};

VmmI8042 *vmm_i8042_new(const VmmI8042Host *host)
{
    VmmI8042 *dev = g_new0(VmmI8042, 1);
    g_mutex_init(&dev->lock);
    if (host)
        dev->host = *host;
    dev->ctr = I8042_CTR_KBDINT | I8042_CTR_AUXINT | I8042_CTR_SYSFLAG | I8042_CTR_XLATE;
    dev->output_port = I8042_OUT_RESET | I8042_OUT_A20;
    return dev;
}

void vmm_i8042_free(VmmI8042 *dev)
{
    if (!dev)
        return;
    g_mutex_clear(&dev->lock);
    g_free(dev);
}

/* Called with the lock held. */
static void i8042_update_irq(VmmI8042 *dev)
{
    bool kbd = false, aux = false;
    if (dev->count > 0) {
        bool is_aux = dev->queue[dev->head].aux;
        kbd = !is_aux && (dev->ctr & I8042_CTR_KBDINT);
        aux = is_aux && (dev->ctr & I8042_CTR_AUXINT);
    }
    if (kbd != dev->irq_kbd) {
        dev->irq_kbd = kbd;
        if (dev->host.set_irq)
            dev->host.set_irq(dev->host.opaque, VMM_I8042_KBD_IRQ, kbd);
    }
    if (aux != dev->irq_aux) {
        dev->irq_aux = aux;
        if (dev->host.set_irq)
            dev->host.set_irq(dev->host.opaque, VMM_I8042_AUX_IRQ, aux);
    }
}

static void i8042_queue_byte(VmmI8042 *dev, uint8_t byte, bool aux)
{
    if (dev->count >= I8042_QUEUE_SIZE)
        return;    /* a real controller would lose it too */
    dev->queue[(dev->head + dev->count) % I8042_QUEUE_SIZE] = (OutByte){ byte, aux };
    dev->count++;
}

static uint8_t i8042_status(const VmmI8042 *dev)
{
    uint8_t st = I8042_STR_KEYLOCK;
    if (dev->ctr & I8042_CTR_SYSFLAG)
        st |= I8042_STR_SYSFLAG;
    if (dev->last_was_command)
        st |= I8042_STR_CMDDAT;
    if (dev->count > 0) {
        st |= I8042_STR_OBF;
        if (dev->queue[dev->head].aux)
            st |= I8042_STR_AUXDATA;
    }
    return st;
}

/* Returns whether the CPU reset line was pulsed. */
static bool i8042_command(VmmI8042 *dev, uint8_t cmd)
{
    switch (cmd) {
    case I8042_CMD_CTL_RCTR: i8042_queue_byte(dev, dev->ctr, false); break;
    case I8042_CMD_CTL_WCTR:
    case I8042_CMD_WRITE_OUTPUT:
    case I8042_CMD_KBD_LOOP:
    case I8042_CMD_AUX_LOOP:
    case I8042_CMD_AUX_SEND:
        dev->pending_cmd = cmd;
        break;
    case I8042_CMD_AUX_DISABLE: dev->ctr |= I8042_CTR_AUXDIS; break;
    case I8042_CMD_AUX_ENABLE: dev->ctr &= ~I8042_CTR_AUXDIS; break;
    case I8042_CMD_KBD_DISABLE: dev->ctr |= I8042_CTR_KBDDIS; break;
    case I8042_CMD_KBD_ENABLE: dev->ctr &= ~I8042_CTR_KBDDIS; break;
    case I8042_CMD_AUX_TEST:
    case I8042_CMD_KBD_TEST:
        i8042_queue_byte(dev, 0x00, false);    /* no fault on the line */
        break;
    case I8042_CMD_CTL_TEST:
        dev->ctr |= I8042_CTR_SYSFLAG;
        i8042_queue_byte(dev, 0x55, false);
        break;
    case I8042_CMD_READ_OUTPUT: i8042_queue_byte(dev, dev->output_port, false); break;
    default:
        /* 0xf0-0xff pulse the output lines whose bits are 0; bit 0 is reset. */
        if (cmd >= 0xf0 && !(cmd & I8042_OUT_RESET))
            return true;
        break;
    }
    return false;
}

/* A byte for the keyboard itself: it acknowledges everything. */
static void i8042_keyboard_command(VmmI8042 *dev, uint8_t byte)
{
    i8042_queue_byte(dev, 0xfa, false);
    if (byte == 0xff) {
        i8042_queue_byte(dev, 0xaa, false);          /* self-test passed */
    } else if (byte == 0xf2) {
        i8042_queue_byte(dev, 0xab, false);          /* MF2 keyboard id */
        i8042_queue_byte(dev, 0x83, false);
    }
}

/* Returns whether the CPU reset line was pulled. */
static bool i8042_data(VmmI8042 *dev, uint8_t byte)
{
    uint8_t cmd = dev->pending_cmd;
    dev->pending_cmd = 0;
    switch (cmd) {
    case I8042_CMD_CTL_WCTR: dev->ctr = byte; break;
    case I8042_CMD_WRITE_OUTPUT:
        dev->output_port = byte;
        return !(byte & I8042_OUT_RESET);
    case I8042_CMD_KBD_LOOP: i8042_queue_byte(dev, byte, false); break;
    case I8042_CMD_AUX_LOOP: i8042_queue_byte(dev, byte, true); break;
    case I8042_CMD_AUX_SEND:
        break;     /* no mouse: the byte goes nowhere and times out */
    default: i8042_keyboard_command(dev, byte); break;
    }
    return false;
}

void vmm_i8042_write(VmmI8042 *dev, uint16_t port, uint8_t value)
{
    bool reset = false;

    g_mutex_lock(&dev->lock);
    if (port == VMM_I8042_COMMAND_PORT) {
        dev->last_was_command = true;
        reset = i8042_command(dev, value);
    } else if (port == VMM_I8042_DATA_PORT) {
        dev->last_was_command = false;
        reset = i8042_data(dev, value);
        if (reset)
            dev->output_port |= I8042_OUT_RESET;   /* the pulse is over */
    }
    i8042_update_irq(dev);
    VmmI8042Host host = dev->host;
    g_mutex_unlock(&dev->lock);

    if (reset && host.reset)
        host.reset(host.opaque);
}

uint8_t vmm_i8042_read(VmmI8042 *dev, uint16_t port)
{
    uint8_t value = 0xff;

    g_mutex_lock(&dev->lock);
    if (port == VMM_I8042_COMMAND_PORT) {
        value = i8042_status(dev);
    } else if (port == VMM_I8042_DATA_PORT) {
        if (dev->count > 0) {
            value = dev->queue[dev->head].byte;
            dev->head = (dev->head + 1) % I8042_QUEUE_SIZE;
            dev->count--;
        } else {
            value = 0;
        }
        i8042_update_irq(dev);
    }
    g_mutex_unlock(&dev->lock);
    return value;
}
