#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (unit, interop,
# integration and the guest rig). Fuzz targets: see docs/testing.md.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bash "$top/tools/setup.sh"
bash "$top/tools/build.sh"
cd "$top/build"
ctest --output-on-failure --timeout 900 -j2 "$@"
