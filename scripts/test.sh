#!/usr/bin/env bash
# The test command: every unit and integration test of the workspace. Storage tests run on SQLite
# and on PostgreSQL at $TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test); they
# FAIL if Postgres is unreachable, unless TEST_POSTGRES=skip is set explicitly.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/warmline-target}"
export TEST_POSTGRES_URL="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
exec cargo test --workspace --locked "$@"
