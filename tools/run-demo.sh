#!/usr/bin/env bash
# Installs what is missing, builds, and runs the main job: vmmd boots the demo
# guest (Debian's kernel, busybox, a qcow2 disk served by blockd) to a shell on
# this terminal, or, where this host's /dev/kvm cannot boot Linux, inside the
# guest test rig (tools/demo-guest.sh). tools/demo.sh shows the helpers and
# their sandboxes over QMP.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bash "$top/tools/setup.sh"
bash "$top/tools/build.sh"
exec bash "$top/tools/demo-guest.sh" "$top/build/bin"
