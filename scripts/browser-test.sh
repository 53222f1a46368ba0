#!/usr/bin/env bash
# The console's browser test (README "Console"): installs Debian's Chromium and the test's npm
# packages (tests/browser/package-lock.json) when missing, builds warmline, and runs
# tests/browser/console.test.mjs against `warmline sandbox`. Screenshots go to
# $CARGO_TARGET_DIR/browser-shots (not committed). Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/warmline-target}"
scripts/setup.sh

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "browser-test: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
cargo build --locked --bin warmline
export WARMLINE_BIN="$CARGO_TARGET_DIR/debug/warmline"
export SHOTS_DIR="${SHOTS_DIR:-$CARGO_TARGET_DIR/browser-shots}"
export CHROMIUM="${CHROMIUM:-$(command -v chromium)}"
node tests/browser/console.test.mjs
