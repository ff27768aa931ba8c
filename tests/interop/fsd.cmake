# fsd against a host-side 9P2000.L client (fsd-9p-test.c). Included from
# tests/interop/CMakeLists.txt.
add_executable(fsd-9p-test ${CMAKE_CURRENT_LIST_DIR}/fsd-9p-test.c)
set_target_properties(fsd-9p-test PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests/interop)
target_link_libraries(fsd-9p-test PRIVATE vmmfsd vmmcommon)
add_dependencies(fsd-9p-test fsd)
add_test(NAME interop/fsd-9p COMMAND fsd-9p-test)
# LeakSanitizer's tracer is a clone that fsd's seccomp filter kills.
set(FSD_TEST_ENV "VMM_BIN_DIR=${VMM_BINARY_DIR};SD_ACTIVATE=${CMAKE_BINARY_DIR}/tests/integration/sd-activate")
if(VMM_SANITIZE OR VMM_FUZZ)
  set(FSD_TEST_ENV "${FSD_TEST_ENV};ASAN_OPTIONS=detect_leaks=0")
endif()
set_tests_properties(interop/fsd-9p PROPERTIES LABELS interop TIMEOUT 600 SKIP_RETURN_CODE 77
  ENVIRONMENT "${FSD_TEST_ENV}")

# The Linux kernel's v9fs client on fsd, in the rig's L1 (trans=unix, trans=tcp).
include(${CMAKE_SOURCE_DIR}/tests/rig/RigTest.cmake)
# About 6 minutes on an idle host under TCG, much more on a loaded one.
vmm_add_rig_test(rig/fsd-kernel ${CMAKE_CURRENT_LIST_DIR}/rig-fsd-kernel.sh TIMEOUT 1800)
