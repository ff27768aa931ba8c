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
#define VMM_CMD_VM_START "vm-start"           /* {"ram-size","vcpus","cmdline"?,"irqchip"?,"paused"?}, fds: [RAM memfd, kernel, initrd?] -> {} */
#define VMM_CMD_VM_STOP "vm-stop"             /* -> {} once every vCPU is paused */
#define VMM_CMD_VM_CONT "vm-cont"             /* -> {}: the vCPUs run again */
#define VMM_CMD_VM_POWERDOWN "vm-powerdown"   /* -> {}: ACPI power button (GED event) */
#define VMM_CMD_VM_RESET "vm-reset"           /* -> {}: the machine rebuilt and the kernel booted again */
#define VMM_CMD_VM_QUERY_CPUS "vm-query-cpus" /* -> {"cpus":[{"cpu-index","thread-id"}]} */
#define VMM_CMD_SERIAL_ATTACH "serial-attach" /* {"input"?,"output"?,"socket"?}, fds [in?, out?] or [socket] -> {} */

/* VM drives (docs/drives.md) */
#define VMM_CMD_DRIVE_ADD "drive-add"         /* vmmd -> blockd: {"id","files":[..],"guest-memory"?,...}, fds [socket, images.., overlay?, guest RAM?] -> {"size",..} */
#define VMM_CMD_DRIVE_ATTACH "drive-attach"   /* vmmd -> vcpu-worker: {"id","serial"?,...}, fds [socket] -> {"size","read-only"} */
#define VMM_CMD_DRIVE_RECONNECT "drive-reconnect" /* vmmd -> vcpu-worker: {"id"}, fds [socket] -> {} */
#define VMM_CMD_RNG_ATTACH "rng-attach"       /* vmmd -> vcpu-worker: {"id"}, fds [entropy source] -> {} */
#define VMM_EVENT_DRIVE_IO_ERROR "drive-io-error" /* vcpu-worker -> vmmd: {"id","operation","action","errno","reason"} */

/* VM 9p exports (docs/fsdev.md) */
#define VMM_CMD_FSDEV_ADD "fsdev-add"         /* vmmd -> fsd: {"id","path"?,"tag"?,"security-model"?,"guest-memory"?,...}, fds [socket, export dir?, guest RAM?] -> {"security-model","connections","guest-memory"} */
#define VMM_CMD_FSDEV_ATTACH "fsdev-attach"   /* vmmd -> vcpu-worker: {"device","fsdev","mount-tag","guest-memory"?}, fds [socket] -> {"msize","version"} */
#define VMM_CMD_FSDEV_RECONNECT "fsdev-reconnect" /* vmmd -> vcpu-worker: {"device","guest-memory"?}, fds [socket] -> {} */
#define VMM_EVENT_FSDEV_DISCONNECTED "fsdev-disconnected" /* vcpu-worker -> vmmd: {"device","fsdev","reason","failed"} */

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
