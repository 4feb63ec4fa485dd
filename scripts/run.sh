#!/usr/bin/env bash
# Sets up what is missing (idempotent, seconds when nothing is), builds, and runs
# `memtrace watch` with any arguments given: scripts/run.sh --output json
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh
cargo build --release --package memtrace --bin memtrace
exec target/release/memtrace watch "$@"
