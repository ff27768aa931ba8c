#!/usr/bin/env bash
# Installs what vmmd needs to build and test, from Debian 12 packages only.
# Idempotent and quick when everything is there: apt runs only for what is missing.
set -euo pipefail

packages=(
  # build
  build-essential cmake pkg-config clang
  libglib2.0-dev libjson-glib-dev libuv1-dev libzstd-dev libgnutls28-dev
  libcap-ng-dev libseccomp-dev zlib1g-dev
  # real peers for interop tests
  qemu-utils qemu-system-x86 libnbd-bin nbdkit gnutls-bin
  # the guest test rig: L1 kernel and userspace
  linux-image-amd64 busybox-static cpio
  # test tooling
  jq procps socat bc acpica-tools fio nbd-client python3 rng-tools5 diod
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: missing packages: ${missing[*]}; run as root to install them" >&2
  exit 1
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
