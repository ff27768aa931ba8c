/* An 8250/16550A UART (the PC's COM ports), as Linux's 8250 driver and
 * earlycon=uart8250 / console=ttyS0 expect it: eight registers from the base
 * port, a 16-byte receive FIFO, the THRE, receive, line-status and
 * modem-status interrupts and loopback. Transmission is instant: a byte
 * written to THR goes to the sink at once.
 *
 * Locking: every entry point takes the UART's lock; the sink and set_irq are
 * called with it held (they must not call back into the UART), rx_ready
 * without it (it may call vmm_serial_receive()). */
#pragma once
#include <glib.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VMM_SERIAL_COM1_BASE 0x3f8
#define VMM_SERIAL_COM1_IRQ 4
#define VMM_SERIAL_NUM_REGS 8
#define VMM_SERIAL_FIFO_SIZE 16

/* Register offsets from the base port. */
#define UART_RX 0       /* in: receive buffer (DLAB=0) */
#define UART_TX 0       /* out: transmit holding (DLAB=0) */
#define UART_DLL 0      /* divisor latch low (DLAB=1) */
#define UART_IER 1      /* DLAB=0 */
#define UART_DLM 1      /* divisor latch high (DLAB=1) */
#define UART_IIR 2      /* in */
#define UART_FCR 2      /* out */
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define UART_MSR 6
#define UART_SCR 7

#define UART_IER_RDI 0x01
#define UART_IER_THRI 0x02
#define UART_IER_RLSI 0x04
#define UART_IER_MSI 0x08

#define UART_IIR_NO_INT 0x01
#define UART_IIR_ID 0x0e
#define UART_IIR_MSI 0x00
#define UART_IIR_THRI 0x02
#define UART_IIR_RDI 0x04
#define UART_IIR_RLSI 0x06
#define UART_IIR_FIFO_ENABLED 0xc0

#define UART_FCR_ENABLE_FIFO 0x01
#define UART_FCR_CLEAR_RCVR 0x02
#define UART_FCR_CLEAR_XMIT 0x04

#define UART_LCR_DLAB 0x80

#define UART_MCR_DTR 0x01
#define UART_MCR_RTS 0x02
#define UART_MCR_OUT1 0x04
#define UART_MCR_OUT2 0x08
#define UART_MCR_LOOP 0x10

#define UART_LSR_DR 0x01
#define UART_LSR_OE 0x02
#define UART_LSR_PE 0x04
#define UART_LSR_FE 0x08
#define UART_LSR_BI 0x10
#define UART_LSR_THRE 0x20
#define UART_LSR_TEMT 0x40

#define UART_MSR_DCTS 0x01
#define UART_MSR_DDSR 0x02
#define UART_MSR_TERI 0x04
#define UART_MSR_DDCD 0x08
#define UART_MSR_CTS 0x10
#define UART_MSR_DSR 0x20
#define UART_MSR_RI 0x40
#define UART_MSR_DCD 0x80

typedef struct {
    /* The guest transmitted these bytes (the chardev: stdio, socket, file). */
    void (*write)(void *opaque, const uint8_t *buf, size_t len);
    /* The receive FIFO has room again after being full. */
    void (*rx_ready)(void *opaque);
    /* The interrupt line's new level (called on changes only). */
    void (*set_irq)(void *opaque, bool level);
    void *opaque;
} VmmSerialHost;

typedef struct VmmSerial VmmSerial;

VmmSerial *vmm_serial_new(const char *id, const VmmSerialHost *host);
void vmm_serial_free(VmmSerial *s);
/* The power-on state (also what a VM reset does). */
void vmm_serial_reset(VmmSerial *s);

/* A guest access to register OFFSET (0..7 from the base port). */
uint8_t vmm_serial_read(VmmSerial *s, unsigned offset);
void vmm_serial_write(VmmSerial *s, unsigned offset, uint8_t value);

/* Input from the chardev: queues up to LEN bytes and returns how many fit;
 * the rest waits for rx_ready. */
size_t vmm_serial_receive(VmmSerial *s, const uint8_t *buf, size_t len);
/* How many bytes vmm_serial_receive() would take now. */
size_t vmm_serial_rx_space(VmmSerial *s);
bool vmm_serial_irq_level(VmmSerial *s);
