#!/usr/bin/env bash
# Runs warmline from a fresh clone.
#   scripts/run.sh            the gateway on its embedded default (SQLite in ./data, no other
#                             service), with the local development settings in config/local.toml
#   scripts/run.sh demo       the whole call path on this machine (fake Realtime + simulated Twilio)
#   scripts/run.sh loadgen …  the benchmark (see README "Performance")
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/warmline-target}"
case "${1:-}" in
  demo|loadgen)
    cmd=$1
    shift
    exec cargo run --release --locked -- "$cmd" "$@"
    ;;
  *)
    exec cargo run --release --locked -- serve --config config/local.toml "$@"
    ;;
esac
