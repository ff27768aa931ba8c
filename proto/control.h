/* The control protocol between vmmd and its helpers; see proto/README.md. */
#pragma once

/* Bumped on any incompatible change; the hello carries it and a peer with a
 * different value is refused. */
#define VMM_CONTROL_PROTOCOL 1
/* The largest message either side accepts (bytes of JSON). */
#define VMM_CONTROL_MAX_MSG (256 * 1024)

/* Commands every helper answers */
#define VMM_CMD_QUERY_STATUS "query-status"   /* -> {"role","pid","status","sandbox":{...}} */
#define VMM_CMD_QUERY_SANDBOX "query-sandbox" /* -> {"seccomp":N,"no_new_privs":B,"caps":S,"allowlist":[..]} */
#define VMM_CMD_SHUTDOWN "shutdown"           /* -> {} then the helper exits 0 */
/* vcpu-worker */
#define VMM_CMD_SETUP_KVM "setup-kvm"         /* fds: [/dev/kvm] -> as query-kvm; creates the VM */
#define VMM_CMD_QUERY_KVM "query-kvm"         /* -> {"enabled","present","api-version","capabilities":{..}} */
#define VMM_CMD_VM_START "vm-start"           /* {"ram-size","vcpus","cmdline"?,"irqchip"?}, fds: [RAM memfd, kernel, initrd?] -> {} */

/* VM drives (docs/drives.md) */
#define VMM_CMD_DRIVE_ADD "drive-add"         /* vmmd -> blockd: {"id","files":[..],...}, fds [socket, images.., overlay?] -> {"size",..} */
#define VMM_CMD_DRIVE_ATTACH "drive-attach"   /* vmmd -> vcpu-worker: {"id","serial"?,...}, fds [socket] -> {"size","read-only"} */
#define VMM_CMD_DRIVE_RECONNECT "drive-reconnect" /* vmmd -> vcpu-worker: {"id"}, fds [socket] -> {} */
#define VMM_CMD_RNG_ATTACH "rng-attach"       /* vmmd -> vcpu-worker: {"id"}, fds [entropy source] -> {} */
#define VMM_EVENT_DRIVE_IO_ERROR "drive-io-error" /* vcpu-worker -> vmmd: {"id","operation","action","errno","reason"} */

/* Events */
#define VMM_EVENT_STATUS "status"             /* helper -> vmmd: {"status": "..."} */
#define VMM_EVENT_GUEST_SHUTDOWN "guest-shutdown" /* vcpu-worker -> vmmd: {"reason","error"?} */
#define VMM_EVENT_GUEST_RESET "guest-reset"   /* vcpu-worker -> vmmd: {"reason"} */

/* Error classes (as QMP's) */
#define VMM_ERR_GENERIC "GenericError"
#define VMM_ERR_COMMAND_NOT_FOUND "CommandNotFound"

/* The deepest nesting of arrays and objects a message may have (the whole
 * message counts as depth 1), so that no parser recurses without bound. */
#define VMM_CONTROL_MAX_DEPTH 64
