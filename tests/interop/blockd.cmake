# blockd standalone against real NBD clients. Included from tests/interop/CMakeLists.txt.
if(COMMAND vmm_interop_test)
  vmm_interop_test(blockd-cli ${CMAKE_CURRENT_LIST_DIR}/test-blockd-cli.sh TIMEOUT 300)
  vmm_interop_test(blockd-cli-splice ${CMAKE_CURRENT_LIST_DIR}/test-blockd-cli.sh TIMEOUT 300 ENV VMM_SPLICE=1)
endif()

# The Linux kernel's NBD client, in the guest test rig's L1.
include(${CMAKE_SOURCE_DIR}/tests/rig/RigTest.cmake)
vmm_add_rig_test(rig/nbd-kernel ${CMAKE_CURRENT_LIST_DIR}/rig-nbd-kernel.sh TIMEOUT 300)
if(COMMAND vmm_interop_test)
  vmm_interop_test(blockd-daemon ${CMAKE_CURRENT_LIST_DIR}/test-blockd-daemon.sh TIMEOUT 300)
endif()
