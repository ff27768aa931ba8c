/* fsd's sandbox: the common one, keeping the file capabilities under
 * security_model=passthrough (fsd/sandbox.c). */
#pragma once
#include "fsd/fsd.h"
#include "common/sandbox.h"

gboolean fsd_sandbox_enter(FsdModel model, const VmmSandboxPolicy *policy, GError **error);
