/* The PC keyboard controller (i8042), enough for Linux: its reboot path
 * (command 0xfe on port 0x64 pulses the CPU reset line; reboot=kbd is the x86
 * default) and the i8042 driver's probe (status reads, the command byte,
 * self-tests, an attached keyboard that acknowledges commands). No keys are
 * ever pressed. */
#pragma once
#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#define VMM_I8042_DATA_PORT 0x60
#define VMM_I8042_COMMAND_PORT 0x64
#define VMM_I8042_KBD_IRQ 1
#define VMM_I8042_AUX_IRQ 12

#define I8042_STR_OBF 0x01
#define I8042_STR_IBF 0x02
#define I8042_STR_SYSFLAG 0x04
#define I8042_STR_CMDDAT 0x08
#define I8042_STR_KEYLOCK 0x10
#define I8042_STR_AUXDATA 0x20

#define I8042_CTR_KBDINT 0x01
#define I8042_CTR_AUXINT 0x02
#define I8042_CTR_SYSFLAG 0x04
#define I8042_CTR_KBDDIS 0x10
#define I8042_CTR_AUXDIS 0x20
#define I8042_CTR_XLATE 0x40

#define I8042_CMD_CTL_RCTR 0x20
#define I8042_CMD_CTL_WCTR 0x60
#define I8042_CMD_AUX_DISABLE 0xa7
#define I8042_CMD_AUX_ENABLE 0xa8
#define I8042_CMD_AUX_TEST 0xa9
#define I8042_CMD_CTL_TEST 0xaa
#define I8042_CMD_KBD_TEST 0xab
#define I8042_CMD_KBD_DISABLE 0xad
#define I8042_CMD_KBD_ENABLE 0xae
#define I8042_CMD_READ_OUTPUT 0xd0
#define I8042_CMD_WRITE_OUTPUT 0xd1
#define I8042_CMD_KBD_LOOP 0xd2
#define I8042_CMD_AUX_LOOP 0xd3
#define I8042_CMD_AUX_SEND 0xd4
#define I8042_CMD_PULSE_RESET 0xfe

typedef struct {
    /* The guest pulsed the CPU reset line: reset the VM. */
    void (*reset)(void *opaque);
    /* IRQ 1 (keyboard) or 12 (aux) changed level (optional). */
    void (*set_irq)(void *opaque, unsigned irq, bool level);
    void *opaque;
} VmmI8042Host;

typedef struct VmmI8042 VmmI8042;

VmmI8042 *vmm_i8042_new(const VmmI8042Host *host);
void vmm_i8042_free(VmmI8042 *dev);
/* Accesses to ports 0x60 and 0x64; other ports read 0xff. */
uint8_t vmm_i8042_read(VmmI8042 *dev, uint16_t port);
void vmm_i8042_write(VmmI8042 *dev, uint16_t port, uint8_t value);
