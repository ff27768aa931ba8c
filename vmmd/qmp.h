/* QMP, the QEMU Machine Protocol, as vmmd serves it. */
#pragma once
#include "vmmd/vmmd.h"

typedef struct VmmQmpClient VmmQmpClient;
typedef struct VmmQmpRequest VmmQmpRequest;

/* A command handler answers REQ now or later, exactly once. ARGS is never NULL. */
typedef void (*VmmQmpHandler)(Vmmd *d, VmmQmpRequest *req, JsonObject *args);

typedef struct {
    const char *name;
    VmmQmpHandler fn;
    const char *const *args; /* accepted argument names, NULL-terminated; NULL: none */
} VmmQmpCommand;

/* qmp-commands.c */
const VmmQmpCommand *vmm_qmp_commands(guint *n);

/* Answers and frees REQ. RET: transfer full; NULL means {}. */
void vmm_qmp_return(VmmQmpRequest *req, JsonNode *ret);
void vmm_qmp_return_object(VmmQmpRequest *req, JsonObject *ret);
void vmm_qmp_error(VmmQmpRequest *req, const char *klass, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
