/* Each process's sandbox profile: the syscall groups its work needs. Kept in
 * one table so that vmmd can build the spawner's filter (which every helper
 * inherits across exec, so it must cover all of them) and so that every binary
 * can print any profile with --dump-seccomp. */
#pragma once
#include "common/sandbox.h"

const VmmSandboxProfile *vmm_profile_for(const char *process);
/* The union of every helper's groups plus "spawn": the spawner's profile. */
const VmmSandboxProfile *vmm_profile_spawner(void);
