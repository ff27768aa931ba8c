# The NBD client (blockd/nbd.c) against real servers. Included from
# tests/interop/CMakeLists.txt (after vmm_interop_test is defined).
add_executable(nbd-client-test ${CMAKE_CURRENT_LIST_DIR}/nbd-client-test.c)
set_target_properties(nbd-client-test PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests/interop)
target_link_libraries(nbd-client-test PRIVATE vmmblock vmmcommon)
if(COMMAND vmm_interop_test)
  vmm_interop_test(nbd-client ${CMAKE_CURRENT_LIST_DIR}/test-nbd-client.sh TIMEOUT 600
    ENV "NBD_CLIENT_TEST=${CMAKE_BINARY_DIR}/tests/interop/nbd-client-test")
endif()
