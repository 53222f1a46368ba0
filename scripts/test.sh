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
# An S3-compatible server for the recording store's tests: moto's, from PyPI, on a free local
# port for this run (TEST_S3_ENDPOINT set beforehand uses another; TEST_S3=skip skips them).
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-warmline-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-warmline-test}"
if [ -z "${TEST_S3_ENDPOINT:-}" ] && [ "${TEST_S3:-}" != "skip" ]; then
  if ! python3 -c 'import moto.server, flask_cors' >/dev/null 2>&1; then
    echo "test: installing moto (an S3-compatible server for the tests)" >&2
    python3 -m pip install -q --disable-pip-version-check 'moto[server]==5.2.1'
  fi
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  moto_log="$(mktemp -t warmline-moto.XXXXXX)"
  python3 -m moto.server -H 127.0.0.1 -p "$port" >"$moto_log" 2>&1 &
  moto_pid=$!
  trap 'kill "$moto_pid" 2>/dev/null || true; rm -f "$moto_log"' EXIT
  export TEST_S3_ENDPOINT="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    python3 -c "import urllib.request; urllib.request.urlopen('$TEST_S3_ENDPOINT/', timeout=1)" \
      >/dev/null 2>&1 && break
    if ! kill -0 "$moto_pid" 2>/dev/null; then
      echo "test: the S3 test server did not start:" >&2; cat "$moto_log" >&2; exit 1
    fi
    sleep 0.2
  done
  echo "test: S3-compatible server (moto) at $TEST_S3_ENDPOINT" >&2
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/warmline-target}"
export TEST_POSTGRES_URL="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
cargo test --workspace --locked "$@"
