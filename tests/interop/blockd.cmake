# blockd standalone against real NBD clients. Included from tests/interop/CMakeLists.txt.
if(COMMAND vmm_interop_test)
  vmm_interop_test(blockd-cli ${CMAKE_CURRENT_LIST_DIR}/test-blockd-cli.sh TIMEOUT 300)
endif()
