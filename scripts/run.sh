#!/usr/bin/env bash
# Sets up what is missing (idempotent, seconds when nothing is), builds, and runs
# `memtrace watch` with any arguments given: scripts/run.sh --output json
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# Set-up and build talk on stderr only: stdout is the event stream (| jq from the first run).
scripts/setup.sh >&2
cargo build --release --package memtrace --bin memtrace >&2
exec target/release/memtrace watch "$@"
