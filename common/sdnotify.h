/* systemd's notification and socket-activation protocols, as documented in
 * sd_notify(3) and sd_listen_fds(3); no libsystemd. */
#pragma once
#include <glib.h>

/* Sends STATE ("READY=1\nSTATUS=...") to $NOTIFY_SOCKET (a path or an
 * "@abstract" name). Without NOTIFY_SOCKET it does nothing and returns TRUE. */
gboolean vmm_sd_notify(const char *state, GError **error);
gboolean vmm_sd_notifyf(GError **error, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/* The watchdog interval in microseconds if WATCHDOG_USEC is set for us
 * (WATCHDOG_PID absent or ours), else 0. Send "WATCHDOG=1" at half of it. */
guint64 vmm_sd_watchdog_usec(void);

#define VMM_SD_LISTEN_FDS_START 3
/* Number of fds passed by socket activation (LISTEN_PID must be ours; 0 if not,
 * or a negative errno for malformed variables, as sd_listen_fds), starting
 * at fd 3; they are made close-on-exec. NAMES (optional) gets LISTEN_FDNAMES
 * split on ':' (g_strfreev). With UNSET_ENV the variables are removed. */
int vmm_sd_listen_fds(gboolean unset_env, char ***names);
