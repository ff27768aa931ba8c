#!/usr/bin/env bash
# Installs what is missing, builds, and runs the main job. Until a guest boots,
# the main job shows what exists: vmmd starts its sandboxed helpers, shows their
# handshake and sandbox state over QMP, and shuts down.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bash "$top/tools/setup.sh"
bash "$top/tools/build.sh"
exec bash "$top/tools/demo.sh" "$top/build/bin"
