#!/usr/bin/env bash
# Runs the gateway on its embedded default (SQLite in ./data, no other service) with the local
# development settings in config/local.toml. Extra arguments go to `warmline serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/warmline-target}"
exec cargo run --release --locked -- serve --config config/local.toml "$@"
