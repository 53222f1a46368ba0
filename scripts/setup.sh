#!/usr/bin/env bash
# Installs what building warmline needs on a fresh Debian/Ubuntu machine, and nothing when it is
# already there. Called by scripts/run.sh, scripts/test.sh and .ci/run; safe to run repeatedly.
set -euo pipefail

need_pkgs=()
# libopus-dev: call recordings are encoded with libopus (the audiopus crate finds it with
# pkg-config; without it audiopus_sys would try to build libopus from source with cmake).
for pkg in pkg-config gcc libc6-dev ca-certificates libopus-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found: install Rust (stable, 1.88 or newer) with rustup first" >&2
  exit 1
fi
for comp in rustfmt clippy; do
  cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1 || rustup component add "$comp"
done
