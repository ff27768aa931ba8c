/* Tests for common/log.c: both line formats, per-component levels, level spec
 * errors, one-time deprecation warnings and whole lines from many threads. */
#include "common/error.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* stderr redirected into a temporary file for the duration of a capture.
 * Assertions must wait until capture_end(), or their messages vanish. */
typedef struct {
    int saved_stderr;
    int fd;
    char *path;
} Capture;

static void capture_begin(Capture *c)
{
    g_autoptr(GError) error = NULL;

    c->fd = g_file_open_tmp("test-log-XXXXXX", &c->path, &error);
    g_assert_no_error(error);
    /* O_APPEND: concurrent writers must not overwrite each other's lines. */
    g_assert_cmpint(fcntl(c->fd, F_SETFL, O_APPEND), ==, 0);
    c->saved_stderr = dup(STDERR_FILENO);
    g_assert_cmpint(c->saved_stderr, >=, 0);
    g_assert_cmpint(dup2(c->fd, STDERR_FILENO), ==, STDERR_FILENO);
}

static char *capture_end(Capture *c)
{
    g_autoptr(GError) error = NULL;
    char *contents = NULL;

    g_assert_cmpint(dup2(c->saved_stderr, STDERR_FILENO), ==, STDERR_FILENO);
    close(c->saved_stderr);
    g_assert_true(g_file_get_contents(c->path, &contents, NULL, &error));
    g_assert_no_error(error);
    close(c->fd);
    unlink(c->path);
    g_free(c->path);
    return contents;
}

/* JOURNAL_STREAM naming the file currently on stderr. */
static void set_journal_stream_to_stderr(void)
{
    struct stat st;
    g_autofree char *value = NULL;

    g_assert_cmpint(fstat(STDERR_FILENO, &st), ==, 0);
    value = g_strdup_printf("%llu:%llu", (unsigned long long)st.st_dev,
                            (unsigned long long)st.st_ino);
    g_setenv("JOURNAL_STREAM", value, TRUE);
}

static void init_plain(const char *component, const char *spec)
{
    g_unsetenv("JOURNAL_STREAM");
    if (spec)
        g_setenv("VMM_LOG", spec, TRUE);
    else
        g_unsetenv("VMM_LOG");
    vmm_log_init(component);
}

static void test_plain_format(void)
{
    Capture c;
    g_autofree char *out = NULL;
    g_autofree char *expected = NULL;

    init_plain("testcomp", NULL);
    g_assert_cmpstr(vmm_log_component(), ==, "testcomp");
    capture_begin(&c);
    vmm_info("hello %d", 42);
    vmm_error("broken: %s", "disk");
    vmm_debug("not shown at the default level");
    out = capture_end(&c);

    expected = g_strdup_printf("testcomp[%d]: info: hello 42\n"
                               "testcomp[%d]: error: broken: disk\n",
                               (int)getpid(), (int)getpid());
    g_assert_cmpstr(out, ==, expected);
}

static void test_journal_format(void)
{
    Capture c;
    g_autofree char *out = NULL;

    g_unsetenv("VMM_LOG");
    capture_begin(&c);
    set_journal_stream_to_stderr();
    vmm_log_init("testcomp");
    vmm_warn("w %s", "1");
    vmm_notice("n");
    vmm_error("e");
    vmm_info("i");
    vmm_debug("d");
    out = capture_end(&c);
    g_unsetenv("JOURNAL_STREAM");

    g_assert_cmpstr(out, ==, "<4>testcomp: w 1\n<5>testcomp: n\n<3>testcomp: e\n<6>testcomp: i\n");
}

/* A JOURNAL_STREAM for some other file (stderr was redirected after systemd
 * set it) or a malformed one means plain lines. */
static void test_journal_stream_mismatch(void)
{
    const char *bad[] = { "1:2", "garbage", "12", "", ":" };
    struct stat st;

    for (size_t i = 0; i < G_N_ELEMENTS(bad) + 1; i++) {
        Capture c;
        g_autofree char *out = NULL;
        g_autofree char *wrong_inode = NULL;

        capture_begin(&c);
        if (i < G_N_ELEMENTS(bad)) {
            g_setenv("JOURNAL_STREAM", bad[i], TRUE);
        } else {
            g_assert_cmpint(fstat(STDERR_FILENO, &st), ==, 0);
            wrong_inode = g_strdup_printf("%llu:%llu", (unsigned long long)st.st_dev,
                                          (unsigned long long)st.st_ino + 1);
            g_setenv("JOURNAL_STREAM", wrong_inode, TRUE);
        }
        g_unsetenv("VMM_LOG");
        vmm_log_init("mm");
        vmm_notice("x");
        out = capture_end(&c);
        g_assert_true(g_str_has_prefix(out, "mm["));
        g_assert_true(g_str_has_suffix(out, "]: notice: x\n"));
    }
    g_unsetenv("JOURNAL_STREAM");
}

static void test_multiline_message(void)
{
    Capture c;
    g_autofree char *out = NULL;

    g_unsetenv("VMM_LOG");
    capture_begin(&c);
    set_journal_stream_to_stderr();
    vmm_log_init("ml");
    vmm_warn("first\nsecond\n");
    out = capture_end(&c);
    g_unsetenv("JOURNAL_STREAM");
    g_assert_cmpstr(out, ==, "<4>ml: first\n<4>ml: second\n");
}

static void test_levels_per_component(void)
{
    const char *spec = "blockd=debug,vmmd=notice,*=info";
    Capture c;
    g_autofree char *out = NULL;
    g_autofree char *expected = NULL;

    init_plain("blockd", spec);
    g_assert_true(vmm_log_enabled(VMM_LOG_DEBUG));

    init_plain("fsd", spec);
    g_assert_true(vmm_log_enabled(VMM_LOG_INFO));
    g_assert_false(vmm_log_enabled(VMM_LOG_DEBUG));

    init_plain("vmmd", spec);
    g_assert_true(vmm_log_enabled(VMM_LOG_NOTICE));
    g_assert_false(vmm_log_enabled(VMM_LOG_INFO));
    capture_begin(&c);
    vmm_info("dropped");
    vmm_notice("kept");
    out = capture_end(&c);
    expected = g_strdup_printf("vmmd[%d]: notice: kept\n", (int)getpid());
    g_assert_cmpstr(out, ==, expected);

    /* The first matching entry wins. */
    init_plain("vmmd", "*=debug,vmmd=err");
    g_assert_true(vmm_log_enabled(VMM_LOG_DEBUG));
    init_plain("vmmd", "vmmd=err,*=debug");
    g_assert_true(vmm_log_enabled(VMM_LOG_ERR));
    g_assert_false(vmm_log_enabled(VMM_LOG_WARNING));

    /* A bare level applies to every component; globs match names. */
    init_plain("netfilterd", "warning");
    g_assert_true(vmm_log_enabled(VMM_LOG_WARNING));
    g_assert_false(vmm_log_enabled(VMM_LOG_NOTICE));
    init_plain("vcpu-worker", "vcpu-*=debug,err");
    g_assert_true(vmm_log_enabled(VMM_LOG_DEBUG));
    init_plain("blockd", "vcpu-*=debug,err");
    g_assert_false(vmm_log_enabled(VMM_LOG_WARNING));

    /* No entry matches: the default level, info. */
    init_plain("fsd", "blockd=debug");
    g_assert_true(vmm_log_enabled(VMM_LOG_INFO));
    g_assert_false(vmm_log_enabled(VMM_LOG_DEBUG));
}

static void test_level_names(void)
{
    static const struct {
        const char *name;
        VmmLogLevel level;
    } cases[] = {
        { "err", VMM_LOG_ERR },         { "error", VMM_LOG_ERR },
        { "warning", VMM_LOG_WARNING }, { "warn", VMM_LOG_WARNING },
        { "notice", VMM_LOG_NOTICE },   { "info", VMM_LOG_INFO },
        { "debug", VMM_LOG_DEBUG },     { " DEBUG ", VMM_LOG_DEBUG },
    };

    init_plain("names", NULL);
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(GError) error = NULL;
        g_assert_true(vmm_log_set_spec(cases[i].name, &error));
        g_assert_no_error(error);
        g_assert_true(vmm_log_enabled(cases[i].level));
        if (cases[i].level < VMM_LOG_DEBUG)
            g_assert_false(vmm_log_enabled(cases[i].level + 1));
    }
}

static void test_bad_spec(void)
{
    static const struct {
        const char *spec;
        const char *named;
    } cases[] = {
        { "blockd=loud,*=info", "blockd=loud" },
        { "vmmd=debug,=info", "=info" },
        { "vmmd:debug", "vmmd:debug" },
        { "verbose", "verbose" },
        { "fsd=", "fsd=" },
    };

    init_plain("blockd", NULL);
    g_assert_true(vmm_log_set_spec("blockd=debug", NULL));
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(GError) error = NULL;
        g_autofree char *quoted = g_strdup_printf("'%s'", cases[i].named);

        g_assert_false(vmm_log_set_spec(cases[i].spec, &error));
        g_assert_error(error, VMM_ERROR, VMM_ERROR_INVALID);
        g_assert_nonnull(strstr(error->message, quoted));
        /* A rejected spec leaves the previous one in force. */
        g_assert_true(vmm_log_enabled(VMM_LOG_DEBUG));
    }
}

static void test_bad_env_spec(void)
{
    Capture c;
    g_autofree char *out = NULL;
    g_auto(GStrv) lines = NULL;

    g_unsetenv("JOURNAL_STREAM");
    g_setenv("VMM_LOG", "blockd=chatty", TRUE);
    capture_begin(&c);
    vmm_log_init("blockd");
    out = capture_end(&c);
    g_unsetenv("VMM_LOG");

    lines = g_strsplit(out, "\n", -1);
    g_assert_cmpuint(g_strv_length(lines), ==, 2); /* one line, then "" */
    g_assert_cmpstr(lines[1], ==, "");
    g_assert_nonnull(strstr(lines[0], ": warning: "));
    g_assert_nonnull(strstr(lines[0], "'blockd=chatty'"));
    g_assert_true(vmm_log_enabled(VMM_LOG_INFO));
    g_assert_false(vmm_log_enabled(VMM_LOG_DEBUG));
}

static void test_deprecated_once(void)
{
    Capture c;
    g_autofree char *out = NULL;
    g_autofree char *expected = NULL;

    init_plain("vmmd", NULL);
    capture_begin(&c);
    vmm_warn_deprecated("-machine enforce-config-section", "-global migration.send-configuration");
    vmm_warn_deprecated("-machine enforce-config-section", "-global migration.send-configuration");
    vmm_warn_deprecated("-old", "-new");
    vmm_warn_deprecated("-old", "-new");
    vmm_warn_deprecated("-machine enforce-config-section", "-global migration.send-configuration");
    out = capture_end(&c);

    expected = g_strdup_printf(
        "vmmd[%d]: warning: '-machine enforce-config-section' is deprecated, "
        "use '-global migration.send-configuration' instead\n"
        "vmmd[%d]: warning: '-old' is deprecated, use '-new' instead\n",
        (int)getpid(), (int)getpid());
    g_assert_cmpstr(out, ==, expected);
}

static void test_errno_preserved(void)
{
    Capture c;
    g_autofree char *out = NULL;
    int after;

    init_plain("e", NULL);
    capture_begin(&c);
    errno = ENOSPC;
    vmm_info("x");
    after = errno;
    out = capture_end(&c);
    g_assert_cmpint(after, ==, ENOSPC);
    g_assert_nonnull(strstr(out, "info: x"));
}

#define THREADS 8
#define LINES_PER_THREAD 400

static gpointer log_many_lines(gpointer data)
{
    int id = GPOINTER_TO_INT(data);
    char filler[301];

    memset(filler, 'a' + id, sizeof(filler) - 1);
    filler[sizeof(filler) - 1] = '\0';
    for (int i = 0; i < LINES_PER_THREAD; i++)
        vmm_info("thread %d line %d %s end", id, i, filler);
    return NULL;
}

/* Each message is one write(2), so no line is torn or mixed with another. */
static void test_threads_whole_lines(void)
{
    Capture c;
    GThread *threads[THREADS];
    g_autofree char *out = NULL;
    g_autofree char *prefix = NULL;
    g_auto(GStrv) lines = NULL;
    int seen[THREADS] = { 0 };

    init_plain("mt", NULL);
    prefix = g_strdup_printf("mt[%d]: info: thread ", (int)getpid());
    capture_begin(&c);
    for (int t = 0; t < THREADS; t++)
        threads[t] = g_thread_new("logger", log_many_lines, GINT_TO_POINTER(t));
    for (int t = 0; t < THREADS; t++)
        g_thread_join(threads[t]);
    out = capture_end(&c);

    lines = g_strsplit(out, "\n", -1);
    g_assert_cmpuint(g_strv_length(lines), ==, THREADS * LINES_PER_THREAD + 1);
    for (guint i = 0; i < THREADS * LINES_PER_THREAD; i++) {
        const char *line = lines[i];
        int id, n;
        char filler[301];

        g_assert_true(g_str_has_prefix(line, prefix));
        g_assert_cmpint(sscanf(line + strlen(prefix), "%d line %d %300s end", &id, &n, filler), ==, 3);
        g_assert_cmpint(id, >=, 0);
        g_assert_cmpint(id, <, THREADS);
        g_assert_cmpint(n, ==, seen[id]); /* each thread's lines in order */
        g_assert_cmpuint(strspn(filler, (char[]){ (char)('a' + id), 0 }), ==, 300);
        g_assert_true(g_str_has_suffix(line, " end"));
        seen[id]++;
    }
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/log/plain-format", test_plain_format);
    g_test_add_func("/log/journal-format", test_journal_format);
    g_test_add_func("/log/journal-stream-mismatch", test_journal_stream_mismatch);
    g_test_add_func("/log/multiline", test_multiline_message);
    g_test_add_func("/log/levels-per-component", test_levels_per_component);
    g_test_add_func("/log/level-names", test_level_names);
    g_test_add_func("/log/bad-spec", test_bad_spec);
    g_test_add_func("/log/bad-env-spec", test_bad_env_spec);
    g_test_add_func("/log/deprecated-once", test_deprecated_once);
    g_test_add_func("/log/errno-preserved", test_errno_preserved);
    g_test_add_func("/log/threads-whole-lines", test_threads_whole_lines);
    return g_test_run();
}
