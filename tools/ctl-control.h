#pragma once
#include <glib.h>
#include <json-glib/json-glib.h>

/* Sends COMMAND with ARGS over the control protocol socket PATH and prints the
 * reply. Returns vmmctl's exit status: 0, 1 (error reply), 2 (no service). */
int vmmctl_control_call(const char *path, double timeout_sec, const char *command, JsonObject *args,
                        gboolean raw);
