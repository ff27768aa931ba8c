/* vmmd: the supervisor. One vmmd runs one VM: it owns the command line, the
 * helpers (spawned through the spawner, reaped here), and the QMP sockets. */
#pragma once
#include "common/channel.h"
#include "common/sandbox.h"
#include <uv.h>

typedef struct {
    char *driver, *property, *value;
} VmmGlobal;

typedef struct {
    char *path;
    gboolean wait;
} VmmQmpAddr;

typedef struct {
    char *name;              /* -name guest=NAME */
    char *process_name;      /* -name process=NAME */
    gboolean debug_threads;  /* -name debug-threads=on */
    VmmSandboxPolicy sandbox;
    GPtrArray *globals;      /* VmmGlobal* */
    GPtrArray *qmp;          /* VmmQmpAddr* */
    char *pidfile;
    gboolean daemonize;
    gboolean dump_seccomp;   /* -dump-seccomp: print vmmd's and the spawner's allowlists */
    char *helper_dir;        /* where the helper binaries are */
    char **helpers;          /* which helpers to run */
    gboolean helpers_given;  /* -helpers was on the command line */
    guint max_restarts;      /* -supervise max-restarts=N */
    guint backoff_ms;        /* -supervise backoff-ms=N, doubled per restart */
    struct VmmVmConfig *vm;  /* -machine, -m, -smp, ... (vmmd/vm-options.h) */
} VmmConfig;

/* cmdline.c */
void vmm_config_init(VmmConfig *c);
void vmm_config_clear(VmmConfig *c);
/* Returns FALSE with ERROR on bad input; *EXIT_NOW set when a "help" was
 * printed and vmmd should exit 0. */
gboolean vmm_config_parse_argv(VmmConfig *c, int argc, char **argv, gboolean *exit_now,
                               GError **error);
gboolean vmm_config_add_global(VmmConfig *c, const char *value, GError **error);

typedef struct Vmmd Vmmd;
typedef struct VmmHelperProc VmmHelperProc;
typedef struct VmmQmpServer VmmQmpServer;

struct Vmmd {
    uv_loop_t *loop;
    VmmConfig *config;
    GPtrArray *helpers;      /* VmmHelperProc* */
    VmmChannel *spawner;
    int spawner_pid;
    GPtrArray *qmp_servers;  /* VmmQmpServer* */
    gboolean helpers_started;
    int kvm_fd;              /* /dev/kvm, or -1 */
    int kmsg_fd;             /* /dev/kmsg for seccomp audit records, or -1 */
    uv_signal_t sigchld, sigterm, sigint, sighup;
    uv_timer_t watchdog;
    gboolean quitting;
    int exit_code;
    const char *status;      /* QMP run state */
    const char *status_soon; /* the run state the run-control calls in flight leave (vm.c) */
    guint status_calls;      /* how many of those are in flight */
    enum { VMM_GUEST_NONE, VMM_GUEST_RUNNING, VMM_GUEST_ENDED } guest_state; /* vm.c */
    struct VmmSerialRun *serial_rt; /* COM1's backend (serial.c) */
    gboolean vm_autostart;   /* -S, and cont came before the guest was built (vm.c) */
    VmmHelperProc *vm_start_waiting; /* vcpu-worker, while the start waits for devices (vm.c) */
    void (*on_helpers_up)(Vmmd *d);
    void (*on_all_stopped)(Vmmd *d); /* pending vmm_supervisor_stop_all callback */
    GHashTable *early_exits;         /* pid -> status of children reaped before the spawn reply */
    struct DriveRuntime *drive_rt;   /* the VM's disks at run time (drive-run.c) */
    struct FsdevRuntime *fsdev_rt;   /* the VM's 9p exports at run time (fsdev-run.c) */
    struct VmmGuestRam *guest_ram;   /* the guest's RAM fd, owned here (memory-backend.c) */
    GArray *rng_fds;                 /* int: each virtio-rng device's entropy source (rng.c) */
};

/* spawner.c: the small process that forks helpers even under spawn=deny. */
gboolean vmm_spawner_start(Vmmd *d, GError **error);
/* The spawner's policy under the VM's: the same, but spawn allowed. */
VmmSandboxPolicy vmm_spawner_policy(const VmmSandboxPolicy *vm_policy);
/* Asks the spawner to run ARGV with FDS at child fds 3, 4, ... */
typedef void (*VmmSpawnDoneFn)(Vmmd *d, int pid, const GError *error, gpointer user);
void vmm_spawner_spawn(Vmmd *d, const char *const *argv, const int *fds, guint nfds,
                       VmmSpawnDoneFn done, gpointer user);

/* supervisor.c */
gboolean vmm_supervisor_start(Vmmd *d, GError **error);
void vmm_supervisor_stop_all(Vmmd *d, void (*done)(Vmmd *d));
/* The reaper: called by the SIGCHLD handler for every exited child. */
void vmm_supervisor_child_exited(Vmmd *d, int pid, int status);
VmmHelperProc *vmm_supervisor_find(Vmmd *d, const char *role);
VmmChannel *vmm_helper_proc_channel(VmmHelperProc *hp);
const char *vmm_helper_proc_role(VmmHelperProc *hp);
int vmm_helper_proc_pid(VmmHelperProc *hp);
guint vmm_helper_proc_restarts(VmmHelperProc *hp);
const char *vmm_helper_proc_state(VmmHelperProc *hp);

/* seccomp-log.c: which syscall a helper killed by SIGSYS made, from the
 * kernel's audit record (type=1326) in /dev/kmsg. */
int vmm_seccomp_log_open(void);
/* Returns the syscall name (g_free) for PID, or NULL if no record is readable. */
char *vmm_seccomp_log_lookup(int kmsg_fd, int pid);

/* qmp.c */
VmmQmpServer *vmm_qmp_start(Vmmd *d, const VmmQmpAddr *addr, GError **error);
/* Serves QMP on a listening socket handed over by socket activation. */
VmmQmpServer *vmm_qmp_start_fd(Vmmd *d, int fd, GError **error);
void vmm_qmp_stop(VmmQmpServer *s);
/* The first client of a -qmp ...,wait=on socket connected. */
void vmm_qmp_first_client(Vmmd *d);
/* Sends {"event":NAME,"data":DATA,"timestamp":...} to every negotiated client. */
void vmm_qmp_emit(Vmmd *d, const char *name, JsonObject *data);

/* main.c */
void vmmd_request_quit(Vmmd *d, const char *reason);
