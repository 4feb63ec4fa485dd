#!/usr/bin/env bash
# The memtrace image's root filesystem: the binary (debug info stripped) and the shared
# libraries `ldd` lists, plus the mount points the DaemonSet uses. Nothing else: no shell, no
# package manager. Used by `cargo xtask image` (the Containerfile copies it onto scratch) and
# by tests/tests/daemonset.rs, which runs it the way deploy/daemonset.yaml does.
#   deploy/image/rootfs.sh BINARY OUT_DIR
set -euo pipefail
if [ $# -ne 2 ]; then echo "usage: $0 BINARY OUT_DIR" >&2; exit 2; fi
bin=$1 out=$2
mkdir -p "$out"/{proc,sys,dev,run,etc/memtrace}
objcopy --strip-debug "$bin" "$out/memtrace"
# `ldd` prints "name => /path (addr)" or "/path (addr)"; vdso has no path.
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  mkdir -p "$out$(dirname "$lib")"
  cp -L "$lib" "$out$lib"
done
