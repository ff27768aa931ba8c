# RigTest.cmake: vmm_add_rig_test(), for tests that need a real KVM.
#
#   include(${CMAKE_SOURCE_DIR}/tests/rig/RigTest.cmake)
#   vmm_add_rig_test(NAME SCRIPT [ARGS...] [GUEST] [TIMEOUT seconds] [CWD dir] [ENV K=V...])
#
# Adds ctest test NAME (label "rig") that runs SCRIPT ARGS... as a job of the
# "rig" fixture (tests/rig/CMakeLists.txt): inside the L1 guest, chrooted into
# the host root, or directly on the host when the host's /dev/kvm boots Linux.
# The job's environment is clean apart from RIG_MODE (l1|host), RIG_KIT (kit
# directory: kit.env names the kernel and initramfs files), VMM_SOURCE_DIR,
# VMM_BUILD_DIR, VMM_BIN_DIR and the ENV values. CWD defaults to the current
# binary directory, TIMEOUT to 600 s. Exit status 77 means skipped (no QEMU or
# kernel on this host). Rig tests run one at a time (RESOURCE_LOCK rig-l1).
# GUEST marks a test that boots L2 guests: it runs once more after a failure
# that followed a guest triple fault (retry-triple-fault.sh, docs/rig.md). The
# keywords GUEST, TIMEOUT, CWD and ENV cannot be used as script arguments.
include_guard(GLOBAL)

set(VMM_RIG_DIR "${CMAKE_CURRENT_LIST_DIR}" CACHE INTERNAL "tests/rig source directory")
# K=V;... given to every rig job, e.g. -DVMM_RIG_ENV="VMM_SPLICE=1;VMM_REGPAGE=1" to run
# the suite over the opt-in data paths.
set(VMM_RIG_ENV "" CACHE STRING "environment for every rig job (K=V;...)")
set(VMM_RIG_STATE "${CMAKE_BINARY_DIR}/rig-state" CACHE INTERNAL "state directory of the rig fixture")

# vmm_rig_job_command(OUT NAME TIMEOUT CWD ENV_LIST SCRIPT ARGS...): the rig-job.sh
# command line, for tests that wrap it (like the exit status test).
function(vmm_rig_job_command out name timeout cwd envs)
  set(cmd /bin/bash "${VMM_RIG_DIR}/rig-job.sh" --state "${VMM_RIG_STATE}" --name "${name}"
          --timeout "${timeout}" --cwd "${cwd}"
          --env "VMM_SOURCE_DIR=${CMAKE_SOURCE_DIR}"
          --env "VMM_BUILD_DIR=${CMAKE_BINARY_DIR}"
          --env "VMM_BIN_DIR=${VMM_BINARY_DIR}")
  foreach(kv IN LISTS VMM_RIG_ENV envs)
    list(APPEND cmd --env "${kv}")
  endforeach()
  list(APPEND cmd -- ${ARGN})
  set(${out} "${cmd}" PARENT_SCOPE)
endfunction()

# vmm_rig_test_properties(NAME TIMEOUT): what every rig test shares.
function(vmm_rig_test_properties name timeout)
  # ctest's own limit leaves room for the job's limit twice (a new L1 and a
  # second run after L1 died, rig-job.sh) plus result pickup.
  math(EXPR ctest_timeout "2 * ${timeout} + 120")
  # One job at a time in the one L1: L1's kernel has died in KVM_RUN (nested
  # SVM under TCG) with an L2 guest and another job side by side, and two L2
  # guests make L2 triple faults likelier (docs/rig.md).
  set_tests_properties(${name} PROPERTIES
    LABELS rig
    FIXTURES_REQUIRED rig
    RESOURCE_LOCK rig-l1
    SKIP_RETURN_CODE 77
    TIMEOUT ${ctest_timeout})
endfunction()

function(vmm_add_rig_test name script)
  cmake_parse_arguments(PARSE_ARGV 2 RT "GUEST" "TIMEOUT;CWD" "ENV")
  if(NOT RT_TIMEOUT)
    set(RT_TIMEOUT 600)
  endif()
  if(NOT RT_CWD)
    set(RT_CWD "${CMAKE_CURRENT_BINARY_DIR}")
  endif()
  set(run "${script}")
  if(RT_GUEST)
    set(run "${VMM_RIG_DIR}/retry-triple-fault.sh" "${script}")
  endif()
  vmm_rig_job_command(cmd "${name}" "${RT_TIMEOUT}" "${RT_CWD}" "${RT_ENV}"
                      ${run} ${RT_UNPARSED_ARGUMENTS})
  add_test(NAME ${name} COMMAND ${cmd})
  vmm_rig_test_properties(${name} ${RT_TIMEOUT})
endfunction()
