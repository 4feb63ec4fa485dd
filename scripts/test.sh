#!/usr/bin/env bash
# Sets up what is missing (idempotent), then builds and runs every test, including the
# real-OOM eBPF tests (root needed). Arguments go to `cargo xtask test`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh
exec cargo xtask test "$@"
