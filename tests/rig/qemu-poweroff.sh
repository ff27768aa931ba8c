# shellcheck shell=bash disable=SC2034
# qemu-poweroff.sh: how a script tells a QEMU guest's poweroff from its reset.
# Sourced by bench/guest-lib.sh and tests/integration/rig-9p-qemu.sh.
#
# QEMU run with -no-reboot ends with status 0 and without a word when its
# guest resets (a triple fault), as when the guest powers off. Only the
# poweroff is a traced shutdown request ("reason=6"); QEMU 7.2 stops on a
# triple fault under -no-reboot without one (its reset request sets the
# shutdown itself), so no "reason=7" line ever comes.
QEMU_SHUTDOWN_TRACE=(-trace qemu_system_shutdown_request)

# qemu_powered_off OUT: whether the QEMU run (with the trace above) that
# wrote OUT ended in its guest's poweroff.
qemu_powered_off() { grep -aq "qemu_system_shutdown_request reason=6" "$1"; }
