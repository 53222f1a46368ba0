#!/usr/bin/env bash
# Runs warmline from a fresh clone.
#   scripts/run.sh            the gateway on its embedded default (SQLite in ./data, no other
#                             service), with the local development settings in config/local.toml
#   scripts/run.sh demo       the whole call path on this machine (fake Realtime + simulated Twilio)
#   scripts/run.sh loadgen …  the benchmark (see README "Performance")
#   scripts/run.sh sandbox …  the gateway with fakes, calls placed from its standard input (README "Console")
#   scripts/run.sh user …     console users on the development database (README "Accounts")
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/warmline-target}"
case "${1:-}" in
  demo|loadgen|sandbox)
    cmd=$1
    shift
    exec cargo run --release --locked -- "$cmd" "$@"
    ;;
  user)
    shift
    exec cargo run --release --locked -- user --config config/local.toml "$@"
    ;;
  *)
    exec cargo run --release --locked -- serve --config config/local.toml "$@"
    ;;
esac
