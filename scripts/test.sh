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
# An S3-compatible server for the recording store's tests: moto's, from PyPI (in a virtualenv of
# its own under the target directory), on a free local port for this run. TEST_S3_ENDPOINT set
# beforehand uses another server; TEST_S3=skip skips those tests. A developer's own AWS settings
# never reach the tests.
unset AWS_SESSION_TOKEN AWS_ENDPOINT AWS_ENDPOINT_URL AWS_REGION AWS_DEFAULT_REGION AWS_PROFILE \
  AWS_ALLOW_HTTP AWS_CONTAINER_CREDENTIALS_RELATIVE_URI AWS_WEB_IDENTITY_TOKEN_FILE
export AWS_ACCESS_KEY_ID="warmline-test" AWS_SECRET_ACCESS_KEY="warmline-test"
if [ -z "${TEST_S3_ENDPOINT:-}" ] && [ "${TEST_S3:-}" != "skip" ]; then
  venv="$CARGO_TARGET_DIR/moto-venv"
  if ! "$venv/bin/python" -c 'import moto.server, flask_cors' >/dev/null 2>&1; then
    echo "test: installing moto (an S3-compatible server for the tests) in $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check 'moto[server]==5.2.1'
  fi
  port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  moto_log="$(mktemp -t warmline-moto.XXXXXX)"
  "$venv/bin/python" -m moto.server -H 127.0.0.1 -p "$port" >"$moto_log" 2>&1 &
  moto_pid=$!
  trap 'kill "$moto_pid" 2>/dev/null || true; rm -f "$moto_log"' EXIT
  export TEST_S3_ENDPOINT="http://127.0.0.1:$port"
  ready=""
  for _ in $(seq 1 150); do
    if "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('$TEST_S3_ENDPOINT/', timeout=1)" \
      >/dev/null 2>&1; then
      ready=1
      break
    fi
    kill -0 "$moto_pid" 2>/dev/null || break
    sleep 0.2
  done
  if [ -z "$ready" ]; then
    echo "test: the S3 test server (moto) did not start at $TEST_S3_ENDPOINT:" >&2
    cat "$moto_log" >&2
    exit 1
  fi
  echo "test: S3-compatible server (moto) at $TEST_S3_ENDPOINT" >&2
fi
export TEST_POSTGRES_URL="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
cargo test --workspace --locked "$@"
