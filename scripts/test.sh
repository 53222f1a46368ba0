#!/usr/bin/env bash
# The test command: every unit and integration test of the workspace. Storage tests run on SQLite
# and on PostgreSQL at $TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test); they
# FAIL if Postgres is unreachable, unless TEST_POSTGRES=skip is set explicitly.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# opusinfo (opus-tools) reads the recordings the tests make, as a tool other than ours would.
if ! command -v opusinfo >/dev/null 2>&1; then
  echo "test: installing opus-tools (opusinfo)" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq opus-tools >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/warmline-target}"
export TEST_POSTGRES_URL="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
exec cargo test --workspace --locked "$@"
