# The NBD server engine (blockd/nbd-server.c) against real clients. Included
# from tests/interop/CMakeLists.txt (after vmm_interop_test is defined).
add_executable(nbd-test-server ${CMAKE_CURRENT_LIST_DIR}/nbd-test-server.c)
set_target_properties(nbd-test-server PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests/interop)
target_link_libraries(nbd-test-server PRIVATE vmmblock vmmcommon)
if(COMMAND vmm_interop_test)
  vmm_interop_test(nbd-server ${CMAKE_CURRENT_LIST_DIR}/test-nbd-server.sh TIMEOUT 600
    ENV "NBD_TEST_SERVER=${CMAKE_BINARY_DIR}/tests/interop/nbd-test-server")
  # The same with the zero-copy path on (common/splice.h: opt-in): reads and
  # writes of raw exports go by splice, checked by the same real clients.
  vmm_interop_test(nbd-server-splice ${CMAKE_CURRENT_LIST_DIR}/test-nbd-server.sh TIMEOUT 600
    ENV "NBD_TEST_SERVER=${CMAKE_BINARY_DIR}/tests/interop/nbd-test-server" VMM_SPLICE=1)
endif()
