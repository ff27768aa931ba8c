#!/usr/bin/env bash
# Configures and builds into build/ (warnings are errors). Extra args go to cmake.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cmake -S "$top" -B "$top/build" -DVMM_WERROR=ON "$@" >/dev/null
cmake --build "$top/build" -j"$(nproc)"
