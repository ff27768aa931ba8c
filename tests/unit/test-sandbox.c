/* The sandbox API: the -sandbox policy parser, the allowlists built from the
 * syscall groups, and the filter itself, checked in forked children that
 * enter the sandbox and then call allowed or denied system calls. */
#include "common/sandbox.h"
#include "common/error.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#define CHILD_ALARM_S 10          /* the child's own safety net */
#define CHILD_WAIT_S 20           /* the parent's bound on waitpid */
#define CHILD_ENTER_FAILED 100

static const char *const profile_base[] = { "base", NULL };
static const char *const profile_base_fs[] = { "base", "fs-read", NULL };
static const char *const profile_kvm[] = { "base", "kvm", NULL };
static const char *const profile_spawner[] = { "base", "spawn", "wait", NULL };
static const char *const profile_spawner_fs[] = { "base", "fs-read", "spawn", "wait", NULL };

/* ---- running a body in a sandboxed child ----------------------------------- */

typedef int (*ChildBody)(void);

/* Only async-signal-safe-ish output from children: no locale, no stdio
 * buffers shared with the parent. */
#define child_say(...) dprintf(STDERR_FILENO, "sandboxed child: " __VA_ARGS__)

static void child_prepare(void)
{
    struct rlimit no_core = { 0, 0 };

    alarm(CHILD_ALARM_S);
    /* SIGSYS would dump core; neither a core file nor a crash report is wanted. */
    setrlimit(RLIMIT_CORE, &no_core);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

static pid_t start_sandboxed_child(const char *policy_text, const char *const *groups,
                                   ChildBody body)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    g_assert_cmpint(pid, >=, 0);
    if (pid != 0) {
        return pid;
    }
    child_prepare();
    VmmSandboxPolicy policy;
    VmmSandboxProfile profile = { "test-child", groups };
    GError *error = NULL;
    if (!vmm_sandbox_policy_parse(policy_text, &policy, &error) ||
        !vmm_sandbox_enter(&profile, &policy, &error)) {
        child_say("%s\n", error->message);
        _exit(CHILD_ENTER_FAILED);
    }
    _exit(body());
}

static int wait_child_bounded(pid_t pid)
{
    gint64 deadline = g_get_monotonic_time() + CHILD_WAIT_S * G_USEC_PER_SEC;
    int status = 0;

    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            return status;
        }
        g_assert_cmpint(r, ==, 0);
        if (g_get_monotonic_time() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            g_test_fail_printf("child %d did not finish within %d s", (int)pid, CHILD_WAIT_S);
            return -1;
        }
        g_usleep(5000);
    }
}

static int run_sandboxed(const char *policy_text, const char *const *groups, ChildBody body)
{
    return wait_child_bounded(start_sandboxed_child(policy_text, groups, body));
}

static char *describe_status(int status)
{
    if (status == -1) {
        return g_strdup("timed out");
    }
    if (WIFEXITED(status)) {
        return g_strdup_printf("exited with %d", WEXITSTATUS(status));
    }
    if (WIFSIGNALED(status)) {
        return g_strdup_printf("killed by signal %d (%s)", WTERMSIG(status),
                               g_strsignal(WTERMSIG(status)));
    }
    return g_strdup_printf("status 0x%x", status);
}

static void assert_exited_ok(const char *what, int status)
{
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
        g_autofree char *s = describe_status(status);
        g_test_message("%s: expected exit 0, child %s", what, s);
        g_test_fail_printf("%s: expected exit 0, child %s", what, s);
    }
}

static void assert_killed_by_sigsys(const char *what, int status)
{
    if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS)) {
        g_autofree char *s = describe_status(status);
        g_test_message("%s: expected death by SIGSYS, child %s", what, s);
        g_test_fail_printf("%s: expected death by SIGSYS, child %s", what, s);
    }
}

/* ---- child bodies: each returns 0 when reached and satisfied ---------------- */

static int body_socket(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    return fd >= 0 ? 0 : 2;
}

static int body_ustat(void)
{
    /* Any answer but SIGSYS is fine: modern kernels may say ENOSYS or EFAULT. */
    long r = syscall(SYS_ustat, 0, NULL);
    (void)r;
    return 0;
}

static int body_fork(void)
{
    pid_t pid = fork();
    if (pid < 0) {
        child_say("fork: %s\n", strerror(errno));
        return 2;
    }
    if (pid == 0) {
        _exit(7);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid) {
        return 3;
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 7 ? 0 : 4;
}

static int body_execve(void)
{
    char *const argv[] = { (char *)"true", NULL };
    execve("/bin/true", argv, environ);
    child_say("execve: %s\n", strerror(errno));
    return 5;
}

static void *thread_mark(void *arg)
{
    *(int *)arg = 42;
    return NULL;
}

static int body_pthread(void)
{
    pthread_t t;
    int mark = 0;
    int rc = pthread_create(&t, NULL, thread_mark, &mark);
    if (rc != 0) {
        child_say("pthread_create: %s\n", strerror(rc));
        return 2;
    }
    pthread_join(t, NULL);
    return mark == 42 ? 0 : 3;
}

/* A thread with the vCPU thread's narrower list does ACTION (after the
 * process-wide filter allowed it for every thread). */
typedef enum { VCPU_PIPE, VCPU_EXEC_MAP, VCPU_ALLOWED_WORK } VcpuAction;

static void *vcpu_like_thread(void *arg)
{
    VcpuAction action = (VcpuAction)GPOINTER_TO_INT(arg);
    GError *error = NULL;
    if (!vmm_sandbox_restrict_thread("test vCPU thread", vmm_vcpu_thread_denied(), &error)) {
        child_say("%s\n", error->message);
        return GINT_TO_POINTER(4);
    }
    int fds[2];
    switch (action) {
    case VCPU_PIPE:
        return GINT_TO_POINTER(pipe2(fds, O_CLOEXEC) == 0 ? 5 : 6);
    case VCPU_EXEC_MAP: {
        void *m = mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return GINT_TO_POINTER(m == MAP_FAILED ? 6 : 5);
    }
    case VCPU_ALLOWED_WORK: {
        /* What a vCPU thread does: memory, eventfds, writes, locks. */
        void *m = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        int efd = eventfd(0, EFD_CLOEXEC);
        guint64 one = 1;
        gboolean ok = m != MAP_FAILED && mprotect(m, 4096, PROT_READ) == 0 && efd >= 0 &&
                      write(efd, &one, sizeof(one)) == sizeof(one);
        g_free(g_malloc(100000));
        return GINT_TO_POINTER(ok ? 0 : 7);
    }
    }
    return GINT_TO_POINTER(8);
}

static int run_vcpu_like(VcpuAction action)
{
    pthread_t t;
    void *ret = NULL;
    if (pthread_create(&t, NULL, vcpu_like_thread, GINT_TO_POINTER(action)) != 0)
        return 2;
    pthread_join(t, &ret);
    /* The other threads keep the process's list: pipes are allowed here. */
    int fds[2];
    if (GPOINTER_TO_INT(ret) == 0 && pipe2(fds, O_CLOEXEC) != 0)
        return 9;
    return GPOINTER_TO_INT(ret);
}

static int body_vcpu_pipe(void) { return run_vcpu_like(VCPU_PIPE); }
static int body_vcpu_exec_map(void) { return run_vcpu_like(VCPU_EXEC_MAP); }
static int body_vcpu_work(void) { return run_vcpu_like(VCPU_ALLOWED_WORK); }

static int body_setuid(void)
{
    /* Already uid 0 (or an ordinary user): EPERM is fine, SIGSYS is not. */
    int r = setuid(getuid());
    (void)r;
    return 0;
}

static cpu_set_t parent_affinity;

static int body_setaffinity(void)
{
    if (sched_setaffinity(0, sizeof(parent_affinity), &parent_affinity) != 0) {
        child_say("sched_setaffinity: %s\n", strerror(errno));
        return 2;
    }
    return 0;
}

static int body_sched_idle(void)
{
    struct sched_param param = { 0 };
    if (sched_setscheduler(0, SCHED_IDLE, &param) != 0) {
        child_say("sched_setscheduler(SCHED_IDLE): %s\n", strerror(errno));
        return 2;
    }
    return 0;
}

/* Under resourcecontrol=deny the affinity query fails softly, so glibc's
 * pthread_getattr_np (which ASan calls in every new thread) still works.
 * It is called from a second thread: for the main thread glibc reads
 * /proc/self/maps, which base does not allow. */
static void *thread_getattr(void *arg)
{
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        pthread_attr_destroy(&attr);
        *(int *)arg = 1;
    }
    return NULL;
}

static int body_getaffinity_enosys(void)
{
    cpu_set_t set;
    pthread_t t;
    int ok = 0;

    if (sched_getaffinity(0, sizeof(set), &set) != -1 || errno != ENOSYS) {
        child_say("sched_getaffinity did not fail with ENOSYS\n");
        return 2;
    }
    if (pthread_create(&t, NULL, thread_getattr, &ok) != 0) {
        return 3;
    }
    pthread_join(t, NULL);
    return ok ? 0 : 4;
}

/* No fs-read: opening answers EACCES (glibc's own lazy opens must survive),
 * and a thread whose heap shrinks (malloc reads overcommit_memory) lives. */
static void *thread_alloc_free(void *arg)
{
    for (int i = 0; i < 64; i++) {
        void *big[16];
        for (int j = 0; j < 16; j++) {
            big[j] = malloc(64 * 1024);
            memset(big[j], 1, 64 * 1024);
        }
        for (int j = 15; j >= 0; j--) {
            free(big[j]);
        }
    }
    return arg;
}

static int body_open_eacces(void)
{
    if (open("/proc/self/status", O_RDONLY) != -1 || errno != EACCES) {
        child_say("open did not fail with EACCES\n");
        return 2;
    }
    if (openat(AT_FDCWD, "/etc/hostname", O_RDONLY | O_CLOEXEC) != -1 || errno != EACCES) {
        child_say("openat did not fail with EACCES\n");
        return 3;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, thread_alloc_free, NULL) != 0) {
        return 4;
    }
    pthread_join(t, NULL);
    return 0;
}

static int body_sched_batch(void)
{
    struct sched_param param = { 0 };
    int r = sched_setscheduler(0, SCHED_BATCH, &param);
    (void)r;
    return 0;
}

/* The work a helper does after startup: a libuv loop with a timer and a
 * threadpool job, JSON parsing and printing, a GLib main loop with a thread
 * and a thread pool. */
static void on_uv_timer(uv_timer_t *t)
{
    (*(int *)t->data)++;
}

static void on_uv_work(uv_work_t *req)
{
    *(int *)req->data += 1;
}

static void on_uv_work_done(uv_work_t *req, int status)
{
    if (status == 0) {
        *(int *)req->data += 10;
    }
}

static int run_libuv_piece(void)
{
    uv_loop_t loop;
    uv_timer_t timer;
    uv_work_t work;
    int fired = 0, work_state = 0;

    if (uv_loop_init(&loop) != 0) {
        return 10;
    }
    uv_timer_init(&loop, &timer);
    timer.data = &fired;
    uv_timer_start(&timer, on_uv_timer, 5, 0);
    work.data = &work_state;
    uv_queue_work(&loop, &work, on_uv_work, on_uv_work_done);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&timer, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) {
        return 11;
    }
    if (fired != 1) {
        return 12;
    }
    return work_state == 11 ? 0 : 13;
}

static int run_json_piece(void)
{
    g_autoptr(JsonParser) parser = json_parser_new();
    if (!json_parser_load_from_data(parser, "{\"a\":[1,2,{\"b\":\"c\"}],\"n\":-3}", -1, NULL)) {
        return 20;
    }
    JsonNode *root = json_parser_get_root(parser);
    JsonObject *obj = json_node_get_object(root);
    if (json_array_get_length(json_object_get_array_member(obj, "a")) != 3 ||
        json_object_get_int_member(obj, "n") != -3) {
        return 21;
    }
    g_autoptr(JsonGenerator) gen = json_generator_new();
    json_generator_set_root(gen, root);
    g_autofree char *text = json_generator_to_data(gen, NULL);
    return strstr(text, "\"b\":\"c\"") ? 0 : 22;
}

static gpointer glib_thread_push(gpointer queue)
{
    g_async_queue_push(queue, GINT_TO_POINTER(42));
    return NULL;
}

static void glib_pool_count(gpointer item, gpointer counter)
{
    g_atomic_int_inc((gint *)counter);
}

static gboolean glib_quit(gpointer loop)
{
    g_main_loop_quit(loop);
    return G_SOURCE_REMOVE;
}

static int run_glib_piece(void)
{
    GMainContext *ctx = g_main_context_new();
    GMainLoop *loop = g_main_loop_new(ctx, FALSE);
    GAsyncQueue *queue = g_async_queue_new();
    gint counter = 0;

    GThread *thread = g_thread_new("pusher", glib_thread_push, queue);
    GSource *timeout = g_timeout_source_new(5);
    g_source_set_callback(timeout, glib_quit, loop, NULL);
    g_source_attach(timeout, ctx);
    g_source_unref(timeout);
    g_main_loop_run(loop);
    g_thread_join(thread);
    int got = GPOINTER_TO_INT(g_async_queue_timeout_pop(queue, G_USEC_PER_SEC));

    GThreadPool *pool = g_thread_pool_new(glib_pool_count, &counter, 2, FALSE, NULL);
    for (int i = 1; i <= 4; i++) {
        g_thread_pool_push(pool, GINT_TO_POINTER(i), NULL);
    }
    g_thread_pool_free(pool, FALSE, TRUE);

    g_async_queue_unref(queue);
    g_main_loop_unref(loop);
    g_main_context_unref(ctx);
    if (got != 42) {
        return 30;
    }
    return g_atomic_int_get(&counter) == 4 ? 0 : 31;
}

static int body_helper_work(void)
{
    int rc = run_libuv_piece();
    if (rc == 0) {
        rc = run_json_piece();
    }
    if (rc == 0) {
        rc = run_glib_piece();
    }
    if (rc != 0) {
        child_say("work piece failed with %d\n", rc);
    }
    return rc;
}

static gboolean caps_all_zero(const char *hex)
{
    return hex[0] != '\0' && strspn(hex, "0") == strlen(hex);
}

/* Checks this process's state against the expected seccomp mode. */
static int check_state(gint64 want_seccomp)
{
    g_autoptr(JsonObject) st = vmm_sandbox_state_self();
    if (st == NULL) {
        return 40;
    }
    if (json_object_get_int_member(st, "seccomp") != want_seccomp) {
        child_say("Seccomp: %" G_GINT64_FORMAT "\n", json_object_get_int_member(st, "seccomp"));
        return 41;
    }
    if (!json_object_get_boolean_member(st, "no_new_privs")) {
        return 42;
    }
    if (!caps_all_zero(json_object_get_string_member(st, "cap_eff"))) {
        child_say("CapEff: %s\n", json_object_get_string_member(st, "cap_eff"));
        return 43;
    }
    /* Started with CAP_SETPCAP (as root), the bounding set must be empty too. */
    if (getuid() == 0 && prctl(PR_CAPBSET_READ, CAP_SYS_ADMIN, 0, 0, 0) != 0) {
        return 44;
    }
    return 0;
}

static int body_state_on(void)
{
    return check_state(2);
}

static int body_state_off(void)
{
    return check_state(0);
}

/* elevateprivileges=children: the grandchild inherits no_new_privs and the
 * filter, so its setuid dies too. */
static int body_children_inherit(void)
{
    pid_t pid = fork();
    if (pid < 0) {
        return 2;
    }
    if (pid == 0) {
        if (check_state(2) != 0) {
            _exit(3);
        }
        int r = setuid(getuid());
        (void)r;
        _exit(4); /* reached: setuid was allowed */
    }
    int status;
    if (waitpid(pid, &status, 0) != pid) {
        return 5;
    }
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS) {
        return 0;
    }
    child_say("grandchild status 0x%x\n", status);
    return 6;
}

/* ---- the policy parser ------------------------------------------------------ */

static void assert_policy(const VmmSandboxPolicy *p, gboolean enabled, VmmSandboxChoice obsolete,
                          VmmSandboxChoice elevate, VmmSandboxChoice spawn, VmmSandboxChoice rc)
{
    g_assert_cmpint(p->enabled, ==, enabled);
    g_assert_cmpint(p->obsolete, ==, obsolete);
    g_assert_cmpint(p->elevateprivileges, ==, elevate);
    g_assert_cmpint(p->spawn, ==, spawn);
    g_assert_cmpint(p->resourcecontrol, ==, rc);
}

static void parse_ok(const char *text, VmmSandboxPolicy *p)
{
    g_autoptr(GError) error = NULL;
    gboolean ok = vmm_sandbox_policy_parse(text, p, &error);
    g_assert_no_error(error);
    g_assert_true(ok);
}

static void test_policy_defaults(void)
{
    VmmSandboxPolicy p;
    memset(&p, 0xff, sizeof(p));
    vmm_sandbox_policy_init(&p);
    assert_policy(&p, FALSE, VMM_SANDBOX_DENY, VMM_SANDBOX_ALLOW, VMM_SANDBOX_ALLOW,
                  VMM_SANDBOX_ALLOW);
}

static void test_policy_parse_bare(void)
{
    static const char *const on_words[] = { "on", "yes", "true", "enable=on", "enable=yes", NULL };
    static const char *const off_words[] = { "off", "no", "false", "enable=off", NULL };
    VmmSandboxPolicy p;

    for (guint i = 0; on_words[i]; i++) {
        parse_ok(on_words[i], &p);
        assert_policy(&p, TRUE, VMM_SANDBOX_DENY, VMM_SANDBOX_ALLOW, VMM_SANDBOX_ALLOW,
                      VMM_SANDBOX_ALLOW);
    }
    for (guint i = 0; off_words[i]; i++) {
        parse_ok(off_words[i], &p);
        assert_policy(&p, FALSE, VMM_SANDBOX_DENY, VMM_SANDBOX_ALLOW, VMM_SANDBOX_ALLOW,
                      VMM_SANDBOX_ALLOW);
    }
}

static void test_policy_parse_keys(void)
{
    VmmSandboxPolicy p;

    parse_ok("on,obsolete=allow,elevateprivileges=children,spawn=deny,resourcecontrol=deny", &p);
    assert_policy(&p, TRUE, VMM_SANDBOX_ALLOW, VMM_SANDBOX_CHILDREN, VMM_SANDBOX_DENY,
                  VMM_SANDBOX_DENY);
    parse_ok("enable=on,elevateprivileges=deny,obsolete=deny", &p);
    assert_policy(&p, TRUE, VMM_SANDBOX_DENY, VMM_SANDBOX_DENY, VMM_SANDBOX_ALLOW,
                  VMM_SANDBOX_ALLOW);
    /* The implied key may come later when named; the last occurrence wins. */
    parse_ok("spawn=deny,enable=on,spawn=allow", &p);
    assert_policy(&p, TRUE, VMM_SANDBOX_DENY, VMM_SANDBOX_ALLOW, VMM_SANDBOX_ALLOW,
                  VMM_SANDBOX_ALLOW);
}

static void assert_parse_error(const char *text, int code, const char *message)
{
    g_autoptr(GError) error = NULL;
    VmmSandboxPolicy p;
    vmm_sandbox_policy_init(&p);
    p.enabled = TRUE; /* must stay untouched on error */

    g_assert_false(vmm_sandbox_policy_parse(text, &p, &error));
    g_assert_error(error, VMM_ERROR, code);
    g_assert_cmpstr(error->message, ==, message);
    assert_policy(&p, TRUE, VMM_SANDBOX_DENY, VMM_SANDBOX_ALLOW, VMM_SANDBOX_ALLOW,
                  VMM_SANDBOX_ALLOW);
}

static void test_policy_parse_bad_values(void)
{
    static const char *const keys[] = {
        "obsolete", "elevateprivileges", "spawn", "resourcecontrol", NULL
    };
    for (guint i = 0; keys[i]; i++) {
        g_autofree char *msg = g_strdup_printf("invalid argument for %s", keys[i]);
        g_autofree char *maybe = g_strdup_printf("on,%s=maybe", keys[i]);
        g_autofree char *upper = g_strdup_printf("on,%s=DENY", keys[i]);
        g_autofree char *bare = g_strdup_printf("on,%s", keys[i]);
        g_autofree char *empty = g_strdup_printf("on,%s=", keys[i]);
        assert_parse_error(maybe, VMM_ERROR_INVALID, msg);
        assert_parse_error(upper, VMM_ERROR_INVALID, msg);
        assert_parse_error(bare, VMM_ERROR_INVALID, msg);
        assert_parse_error(empty, VMM_ERROR_INVALID, msg);
    }
    /* "children" belongs to elevateprivileges only. */
    assert_parse_error("on,spawn=children", VMM_ERROR_INVALID, "invalid argument for spawn");
    assert_parse_error("on,obsolete=children", VMM_ERROR_INVALID, "invalid argument for obsolete");
    assert_parse_error("maybe", VMM_ERROR_INVALID, "Parameter 'enable' expects 'on' or 'off'");
    assert_parse_error("", VMM_ERROR_INVALID, "Parameter 'enable' expects 'on' or 'off'");
    assert_parse_error("ON", VMM_ERROR_INVALID, "Parameter 'enable' expects 'on' or 'off'");
}

static void test_policy_parse_unknown_key(void)
{
    assert_parse_error("on,foo=bar", VMM_ERROR_INVALID, "Invalid parameter 'foo'");
    assert_parse_error("on,spawn=deny,elevate=deny", VMM_ERROR_INVALID,
                       "Invalid parameter 'elevate'");
}

static void test_policy_round_trip(void)
{
    static const VmmSandboxChoice two[] = { VMM_SANDBOX_ALLOW, VMM_SANDBOX_DENY };
    static const VmmSandboxChoice three[] = {
        VMM_SANDBOX_ALLOW, VMM_SANDBOX_DENY, VMM_SANDBOX_CHILDREN
    };
    guint n = 0;

    for (int en = 0; en < 2; en++)
    for (guint o = 0; o < 2; o++)
    for (guint e = 0; e < 3; e++)
    for (guint s = 0; s < 2; s++)
    for (guint r = 0; r < 2; r++) {
        VmmSandboxPolicy p = { en, two[o], three[e], two[s], two[r] }, q;
        g_autofree char *text = vmm_sandbox_policy_to_string(&p);
        parse_ok(text, &q);
        g_assert_cmpmem(&p, sizeof(p), &q, sizeof(q));
        n++;
    }
    g_assert_cmpuint(n, ==, 48);

    VmmSandboxPolicy p;
    vmm_sandbox_policy_init(&p);
    g_autofree char *off = vmm_sandbox_policy_to_string(&p);
    g_assert_cmpstr(off, ==, "off");
    p.enabled = TRUE;
    g_autofree char *on = vmm_sandbox_policy_to_string(&p);
    g_assert_cmpstr(on, ==, "on,obsolete=deny,elevateprivileges=allow,spawn=allow,resourcecontrol=allow");
}

/* ---- groups and allowlists ---------------------------------------------------- */

static gboolean list_has(GPtrArray *list, const char *name)
{
    for (guint i = 0; i < list->len; i++) {
        if (g_str_equal(g_ptr_array_index(list, i), name)) {
            return TRUE;
        }
    }
    return FALSE;
}

static GPtrArray *allowlist_for(const char *const *groups, const char *policy_text)
{
    g_autoptr(GError) error = NULL;
    VmmSandboxPolicy policy;
    VmmSandboxProfile profile = { "test", groups };
    parse_ok(policy_text, &policy);
    GPtrArray *list = vmm_sandbox_allowlist(&profile, &policy, &error);
    g_assert_no_error(error);
    g_assert_nonnull(list);
    return list;
}

static void test_group_names(void)
{
    const char *const *names = vmm_sandbox_group_names();
    static const char *const required[] = {
        "base", "fs-read", "fs-write", "net", "wait", "kvm", "spawn", "setid", "sched",
        "obsolete", NULL
    };
    for (guint i = 0; required[i]; i++) {
        g_assert_true(g_strv_contains(names, required[i]));
    }
    for (guint i = 0; names[i]; i++) {
        const char *const *calls = vmm_sandbox_group_syscalls(names[i]);
        g_assert_nonnull(calls);
        g_assert_nonnull(calls[0]);
    }
    g_assert_null(vmm_sandbox_group_syscalls("no-such-group"));
    g_assert_true(g_strv_contains(vmm_sandbox_group_syscalls("base"), "read"));
    g_assert_true(g_strv_contains(vmm_sandbox_group_syscalls("spawn"), "execve"));
    g_assert_true(g_strv_contains(vmm_sandbox_group_syscalls("obsolete"), "ustat"));
    g_assert_true(g_strv_contains(vmm_sandbox_never_allowed(), "kexec_load"));
}

static void test_allowlist_policy(void)
{
    g_autoptr(GPtrArray) def = allowlist_for(profile_base, "on");
    g_assert_true(list_has(def, "read"));
    g_assert_true(list_has(def, "clone"));      /* threads */
    g_assert_true(list_has(def, "setuid"));     /* setid implied by elevateprivileges=allow */
    g_assert_true(list_has(def, "sched_setaffinity")); /* sched implied */
    g_assert_false(list_has(def, "clone3"));    /* answered ENOSYS, not allowed */
    g_assert_false(list_has(def, "socket"));
    g_assert_false(list_has(def, "execve"));
    g_assert_false(list_has(def, "ustat"));
    g_assert_false(list_has(def, "openat"));

    g_autoptr(GPtrArray) obs = allowlist_for(profile_base, "on,obsolete=allow");
    g_assert_true(list_has(obs, "ustat"));

    g_autoptr(GPtrArray) spawner = allowlist_for(profile_spawner, "on");
    g_assert_true(list_has(spawner, "execve"));
    g_assert_true(list_has(spawner, "wait4"));
    g_autoptr(GPtrArray) nospawn = allowlist_for(profile_spawner, "on,spawn=deny");
    g_assert_false(list_has(nospawn, "execve"));
    g_assert_false(list_has(nospawn, "vfork"));
    g_assert_true(list_has(nospawn, "wait4"));

    g_autoptr(GPtrArray) noid = allowlist_for(profile_base, "on,elevateprivileges=deny");
    g_assert_false(list_has(noid, "setuid"));
    g_assert_false(list_has(noid, "setresgid"));
    g_autoptr(GPtrArray) noid2 = allowlist_for(profile_base, "on,elevateprivileges=children");
    g_assert_false(list_has(noid2, "setuid"));

    g_autoptr(GPtrArray) nosched = allowlist_for(profile_base, "on,resourcecontrol=deny");
    g_assert_false(list_has(nosched, "sched_setaffinity"));
    g_assert_false(list_has(nosched, "setpriority"));

    /* A profile that names a group the policy removes loses it. */
    static const char *const asks_setid[] = { "base", "setid", NULL };
    g_autoptr(GPtrArray) asked = allowlist_for(asks_setid, "on,elevateprivileges=deny");
    g_assert_false(list_has(asked, "setuid"));
}

static void assert_sorted_unique(GPtrArray *list)
{
    for (guint i = 1; i < list->len; i++) {
        g_assert_cmpint(strcmp(g_ptr_array_index(list, i - 1), g_ptr_array_index(list, i)), <, 0);
    }
}

static void assert_no_never_allowed(GPtrArray *list)
{
    const char *const *never = vmm_sandbox_never_allowed();
    for (guint i = 0; never[i]; i++) {
        if (list_has(list, never[i])) {
            g_test_fail_printf("never-allowed call '%s' is in an allowlist", never[i]);
        }
    }
}

/* Every group alone and all of them together, under every policy. */
static void test_allowlist_never_allowed(void)
{
    static const char *const policies[] = {
        "on", "on,obsolete=allow", "on,obsolete=allow,elevateprivileges=deny",
        "on,obsolete=allow,spawn=deny,resourcecontrol=deny",
        "on,elevateprivileges=children", "off",
    };
    const char *const *names = vmm_sandbox_group_names();
    for (guint p = 0; p < G_N_ELEMENTS(policies); p++) {
        g_autoptr(GPtrArray) all = allowlist_for(names, policies[p]);
        assert_sorted_unique(all);
        assert_no_never_allowed(all);
        for (guint i = 0; names[i]; i++) {
            const char *one[] = { names[i], NULL };
            g_autoptr(GPtrArray) list = allowlist_for(one, policies[p]);
            assert_sorted_unique(list);
            assert_no_never_allowed(list);
        }
    }
}

static void test_allowlist_unknown_group(void)
{
    static const char *const bad[] = { "base", "fs-raed", NULL };
    VmmSandboxProfile profile = { "blockd", bad };
    VmmSandboxPolicy policy;
    g_autoptr(GError) error = NULL;

    vmm_sandbox_policy_init(&policy);
    g_assert_null(vmm_sandbox_allowlist(&profile, &policy, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_NOT_FOUND);
    g_assert_nonnull(strstr(error->message, "'fs-raed'"));
    g_assert_nonnull(strstr(error->message, "blockd"));

    g_clear_error(&error);
    policy.enabled = TRUE;
    g_assert_false(vmm_sandbox_enter(&profile, &policy, &error));
    g_assert_error(error, VMM_ERROR, VMM_ERROR_NOT_FOUND);
}

/* The dump's group lines together are exactly the allowlist. */
static void assert_dump_matches_allowlist(const char *dump, GPtrArray *list)
{
    g_autoptr(GHashTable) seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_auto(GStrv) lines = g_strsplit(dump, "\n", -1);
    const char *const *groups = vmm_sandbox_group_names();

    for (guint i = 0; lines[i]; i++) {
        char *colon = strchr(lines[i], ':');
        if (colon == NULL) {
            continue;
        }
        *colon = '\0';
        if (!g_strv_contains(groups, lines[i])) {
            continue;
        }
        g_auto(GStrv) calls = g_strsplit(g_strstrip(colon + 1), " ", -1);
        for (guint j = 0; calls[j]; j++) {
            if (!list_has(list, calls[j])) {
                g_test_fail_printf("dump group %s lists '%s', not in the allowlist",
                                   lines[i], calls[j]);
            }
            g_hash_table_add(seen, g_strdup(calls[j]));
        }
    }
    g_assert_cmpuint(g_hash_table_size(seen), ==, list->len);
}

static void test_dump(void)
{
    VmmSandboxPolicy policy;
    VmmSandboxProfile profile = { "blockd", profile_spawner_fs };

    parse_ok("on,spawn=deny,resourcecontrol=deny", &policy);
    g_autofree char *dump = vmm_sandbox_dump(&profile, &policy);
    g_assert_nonnull(strstr(dump, "process: blockd\n"));
    g_assert_nonnull(strstr(dump, "policy: on,obsolete=deny,elevateprivileges=allow,"
                                  "spawn=deny,resourcecontrol=deny\n"));
    g_assert_nonnull(strstr(dump, "\nbase: "));
    g_assert_nonnull(strstr(dump, "\nfs-read: "));
    g_assert_nonnull(strstr(dump, "\nsetid: "));
    g_assert_null(strstr(dump, "\nspawn: "));
    g_assert_null(strstr(dump, "\nsched: "));
    g_assert_nonnull(strstr(dump, "\nremoved by policy: spawn (spawn=deny), "
                                  "sched (resourcecontrol=deny)\n"));
    g_assert_nonnull(strstr(dump, "clone(only with CLONE_THREAD)"));
    g_autoptr(GPtrArray) list = allowlist_for(profile_spawner_fs,
                                              "on,spawn=deny,resourcecontrol=deny");
    assert_dump_matches_allowlist(dump, list);

    parse_ok("on", &policy);
    VmmSandboxProfile plain = { "fsd", profile_base };
    g_autofree char *dump2 = vmm_sandbox_dump(&plain, &policy);
    g_assert_nonnull(strstr(dump2, "\nremoved by policy: nothing\n"));
    g_assert_nonnull(strstr(dump2, "\nsched: "));
}

static void test_state_parse(void)
{
    g_autoptr(JsonObject) st = vmm_sandbox_state_parse(
        "Name:\tx\nNoNewPrivs:\t1\nCapEff:\t000001ffffffffff\nSeccomp:\t2\nSeccomp_filters:\t1\n");
    g_assert_cmpint(json_object_get_int_member(st, "seccomp"), ==, 2);
    g_assert_true(json_object_get_boolean_member(st, "no_new_privs"));
    g_assert_cmpstr(json_object_get_string_member(st, "cap_eff"), ==, "000001ffffffffff");

    g_autoptr(JsonObject) self = vmm_sandbox_state_self();
    g_assert_nonnull(self);
    g_assert_true(json_object_has_member(self, "seccomp"));
    g_assert_true(json_object_has_member(self, "cap_eff"));
}

/* ---- the filter, in children --------------------------------------------------- */

static void test_denied_call_kills(void)
{
    assert_killed_by_sigsys("socket under base", run_sandboxed("on", profile_base, body_socket));
    assert_killed_by_sigsys("ustat under obsolete=deny",
                            run_sandboxed("on", profile_base, body_ustat));
}

static void test_vcpu_thread(void)
{
    assert_killed_by_sigsys("pipe2 on a vCPU thread", run_sandboxed("on", profile_kvm, body_vcpu_pipe));
    assert_killed_by_sigsys("PROT_EXEC mmap on a vCPU thread", run_sandboxed("on", profile_kvm, body_vcpu_exec_map));
    assert_exited_ok("a vCPU thread's own work", run_sandboxed("on", profile_kvm, body_vcpu_work));
    /* With the sandbox off there is no filter to narrow: the pipe is made. */
    int st = run_sandboxed("off", profile_kvm, body_vcpu_pipe);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 5)) {
        g_autofree char *d = describe_status(st);
        g_test_fail_printf("pipe2 on a vCPU thread with the sandbox off: child %s", d);
    }
}

static void test_obsolete_allow(void)
{
    assert_exited_ok("ustat under obsolete=allow",
                     run_sandboxed("on,obsolete=allow", profile_base, body_ustat));
}

static void test_spawn(void)
{
    assert_killed_by_sigsys("fork under spawn=deny",
                            run_sandboxed("on,spawn=deny", profile_spawner, body_fork));
    assert_killed_by_sigsys("execve under spawn=deny",
                            run_sandboxed("on,spawn=deny", profile_spawner, body_execve));
    assert_exited_ok("pthread_create under spawn=deny",
                     run_sandboxed("on,spawn=deny", profile_spawner, body_pthread));
    assert_exited_ok("fork under spawn=allow with the spawn group",
                     run_sandboxed("on,spawn=allow", profile_spawner, body_fork));
    assert_killed_by_sigsys("fork without the spawn group",
                            run_sandboxed("on", profile_base, body_fork));
}

static void test_elevateprivileges(void)
{
    assert_killed_by_sigsys("setuid under elevateprivileges=deny",
                            run_sandboxed("on,elevateprivileges=deny", profile_base, body_setuid));
    assert_exited_ok("setuid under elevateprivileges=allow",
                     run_sandboxed("on,elevateprivileges=allow", profile_base, body_setuid));
    assert_killed_by_sigsys("setuid under elevateprivileges=children",
                            run_sandboxed("on,elevateprivileges=children", profile_base,
                                          body_setuid));
    assert_exited_ok("children of elevateprivileges=children",
                     run_sandboxed("on,elevateprivileges=children", profile_spawner_fs,
                                   body_children_inherit));
}

static void test_resourcecontrol(void)
{
    g_assert_cmpint(sched_getaffinity(0, sizeof(parent_affinity), &parent_affinity), ==, 0);
    assert_killed_by_sigsys("sched_setaffinity under resourcecontrol=deny",
                            run_sandboxed("on,resourcecontrol=deny", profile_base,
                                          body_setaffinity));
    assert_exited_ok("sched_setaffinity under resourcecontrol=allow",
                     run_sandboxed("on", profile_base, body_setaffinity));
    assert_exited_ok("SCHED_IDLE under resourcecontrol=deny",
                     run_sandboxed("on,resourcecontrol=deny", profile_base, body_sched_idle));
    assert_exited_ok("sched_getaffinity under resourcecontrol=deny",
                     run_sandboxed("on,resourcecontrol=deny", profile_base,
                                   body_getaffinity_enosys));
    assert_killed_by_sigsys("SCHED_BATCH under resourcecontrol=deny",
                            run_sandboxed("on,resourcecontrol=deny", profile_base,
                                          body_sched_batch));
}

static void test_open_without_fs_read(void)
{
    assert_exited_ok("open without fs-read", run_sandboxed("on", profile_base, body_open_eacces));
}

static void test_helper_work_under_base(void)
{
    assert_exited_ok("libuv/json-glib/GLib under base",
                     run_sandboxed("on", profile_base, body_helper_work));
    assert_exited_ok("libuv/json-glib/GLib under base, everything denied",
                     run_sandboxed("on,spawn=deny,elevateprivileges=deny,resourcecontrol=deny",
                                   profile_base, body_helper_work));
}

static void test_state_in_sandbox(void)
{
    assert_exited_ok("state under on", run_sandboxed("on", profile_base_fs, body_state_on));
    assert_exited_ok("state under off", run_sandboxed("off", profile_base_fs, body_state_off));
    /* off loads no filter: what base forbids still works. */
    assert_exited_ok("socket under off", run_sandboxed("off", profile_base, body_socket));
}

/* vmm_sandbox_enter_keeping as the spawner uses it: the file capabilities
 * kept permitted but not effective, everything else gone from the bounding
 * set; a program the process then execs (root, no_new_privs) has exactly
 * those six effective, which is how fsd gets them. */
static void test_keep_caps(void)
{
    if (geteuid() != 0) {
        g_test_skip("needs root (capabilities to keep)");
        return;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    g_assert_cmpint(pid, >=, 0);
    if (pid == 0) {
        child_prepare();
        VmmSandboxPolicy policy;
        VmmSandboxProfile profile = { "test-child", profile_base_fs };
        GError *error = NULL;
        if (!vmm_sandbox_policy_parse("off", &policy, &error) ||
            !vmm_sandbox_enter_keeping(&profile, &policy, vmm_file_caps, VMM_N_FILE_CAPS, FALSE, &error)) {
            child_say("%s\n", error->message);
            _exit(CHILD_ENTER_FAILED);
        }
        g_autoptr(JsonObject) st = vmm_sandbox_state_self();
        if (!st || !caps_all_zero(json_object_get_string_member(st, "cap_eff"))) {
            _exit(2);
        }
        if (prctl(PR_CAPBSET_READ, CAP_SYS_ADMIN, 0, 0, 0) != 0 || prctl(PR_CAPBSET_READ, CAP_CHOWN, 0, 0, 0) != 1) {
            _exit(3);
        }
        /* CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID (bits 0-4) and MKNOD (27). */
        execl("/bin/sh", "sh", "-c", "grep -q '^CapEff:[[:space:]]*000000000800001f$' /proc/self/status || "
              "{ grep ^Cap /proc/self/status >&2; exit 4; }", (char *)NULL);
        _exit(5);
    }
    assert_exited_ok("keeping the file capabilities", wait_child_bounded(pid));
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/sandbox/policy/defaults", test_policy_defaults);
    g_test_add_func("/sandbox/policy/parse-bare", test_policy_parse_bare);
    g_test_add_func("/sandbox/policy/parse-keys", test_policy_parse_keys);
    g_test_add_func("/sandbox/policy/bad-values", test_policy_parse_bad_values);
    g_test_add_func("/sandbox/policy/unknown-key", test_policy_parse_unknown_key);
    g_test_add_func("/sandbox/policy/round-trip", test_policy_round_trip);
    g_test_add_func("/sandbox/groups/names", test_group_names);
    g_test_add_func("/sandbox/allowlist/policy", test_allowlist_policy);
    g_test_add_func("/sandbox/allowlist/never-allowed", test_allowlist_never_allowed);
    g_test_add_func("/sandbox/allowlist/unknown-group", test_allowlist_unknown_group);
    g_test_add_func("/sandbox/dump", test_dump);
    g_test_add_func("/sandbox/state/parse", test_state_parse);
    g_test_add_func("/sandbox/filter/denied-kills", test_denied_call_kills);
    g_test_add_func("/sandbox/filter/obsolete-allow", test_obsolete_allow);
    g_test_add_func("/sandbox/filter/vcpu-thread", test_vcpu_thread);
    g_test_add_func("/sandbox/filter/spawn", test_spawn);
    g_test_add_func("/sandbox/filter/elevateprivileges", test_elevateprivileges);
    g_test_add_func("/sandbox/filter/resourcecontrol", test_resourcecontrol);
    g_test_add_func("/sandbox/filter/open-eacces", test_open_without_fs_read);
    g_test_add_func("/sandbox/filter/helper-work", test_helper_work_under_base);
    g_test_add_func("/sandbox/filter/state", test_state_in_sandbox);
    g_test_add_func("/sandbox/keep-caps", test_keep_caps);
    return g_test_run();
}
