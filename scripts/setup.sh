#!/usr/bin/env bash
# Installs everything memtrace needs on a fresh Debian 12 (bookworm) x86_64 host, idempotently.
# A second run only checks and returns in seconds. README "Install" says what each piece is for.
set -euo pipefail
# Everything set-up prints goes to stderr: `scripts/run.sh --output json | jq` must see only
# events on stdout, from the very first run (rustup and cargo install print progress on stdout).
exec 1>&2

NIGHTLY=nightly-2026-08-01      # LLVM 22.1.x: must match bpf-linker's LLVM
STABLE=1.98.0                   # aya 0.16 needs rustc >= 1.98 (rust-toolchain.toml)
LLVM=22
APT_PKGS=(
  "llvm-${LLVM}-dev" "libpolly-${LLVM}-dev" libzstd-dev zlib1g-dev  # bpf-linker build
  bpftool bpftrace stress-ng util-linux procps tmux          # tests and benchmarks (tmux: the live `top` view)
  qemu-system-x86 busybox-static cpio                        # cargo xtask vm (Debian kernels under qemu)
  prometheus prometheus-alertmanager webhook systemd         # export tests: real receivers (promtool, journald)
  containerd runc docker.io python3-yaml                     # runtime tests, `cargo xtask image` (daemons started by them, never at boot)
  earlyoom                                                   # tests/tests/userspace_killers.rs: a real userspace OOM killer (never started by set-up)
  python3-venv                                               # rotel (OTLP collector) in .tools/venv
  binutils                                                   # cargo xtask deb (strip, objdump)
)

log() { printf 'setup: %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    log "must run as root (apt-get); try: sudo $0"; exit 1
  fi
}

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  need_root
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The tests start Prometheus, Alertmanager and webhook themselves, on loopback ports: keep
  # the packages' own services from starting on install (policy-rc.d 101 = "not allowed").
  policy=/usr/sbin/policy-rc.d
  made_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$made_policy" ]; then rm -f "$policy"; fi
fi

if ! command -v rustup >/dev/null 2>&1; then
  log "rustup not found: install it (https://rustup.rs) and re-run"; exit 1
fi

have_toolchain() { rustup toolchain list | grep -q "^$1"; }
if ! have_toolchain "$STABLE"; then
  log "rustup toolchain install $STABLE"
  rustup toolchain install "$STABLE" --profile minimal --component clippy,rustfmt
fi
# clippy too: `cargo xtask test --lint` lints the eBPF crate for its own target.
if ! have_toolchain "$NIGHTLY" || ! rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src' \
  || ! rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q '^clippy'; then
  log "rustup toolchain install $NIGHTLY with rust-src, clippy"
  rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src,clippy
fi

# bpf-linker must be linked against the same LLVM major as the nightly's rustc.
want_llvm=$(rustc "+$NIGHTLY" -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
if [ "$want_llvm" != "$LLVM" ]; then
  log "$NIGHTLY uses LLVM $want_llvm, expected $LLVM"; exit 1
fi
# bpf-linker links libLLVM dynamically: check it is the LLVM we want, not just present.
linker=$(command -v bpf-linker || true)
if [ -z "$linker" ] || ! ldd "$linker" 2>/dev/null | grep -q "libLLVM.so.${LLVM}"; then
  log "cargo install bpf-linker (LLVM $LLVM)"
  PATH="/usr/lib/llvm-${LLVM}/bin:$PATH" LLVM_PREFIX="/usr/lib/llvm-${LLVM}" \
    cargo "+$STABLE" install --locked bpf-linker --version 0.13.0 --no-default-features --features "llvm-${LLVM}"
fi

# cargo-fuzz: `cargo xtask fuzz` (fuzz/, run in CI as a smoke test). Built with the same nightly.
if ! command -v cargo-fuzz >/dev/null 2>&1 || ! cargo-fuzz --version 2>/dev/null | grep -q ' 0\.13\.'; then
  log "cargo install cargo-fuzz"
  cargo "+$NIGHTLY" install cargo-fuzz --locked --version 0.13.2
fi

# rotel, a real OpenTelemetry collector (PyPI), for the OTLP test (tests/tests/otlp.rs). In a
# venv under the project's .tools/ with Debian's own python3: the system Python is "externally
# managed" (PEP 668), and a venv needs neither --break-system-packages nor root.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROTEL_VERSION=0.0.1a15
if ! "$ROOT/.tools/bin/rotel-agent" --version >/dev/null 2>&1; then
  log "pip install rotel==$ROTEL_VERSION into .tools/venv"
  /usr/bin/python3 -m venv "$ROOT/.tools/venv"
  "$ROOT/.tools/venv/bin/pip" install --quiet --disable-pip-version-check "rotel==$ROTEL_VERSION"
  agent=$(ls "$ROOT"/.tools/venv/lib/python3*/site-packages/rotel/rotel-agent)
  mkdir -p "$ROOT/.tools/bin"
  ln -sf "$agent" "$ROOT/.tools/bin/rotel-agent"
fi

# tracefs: tracepoint attach and `memtrace probes` read it.
if [ ! -e /sys/kernel/tracing/events ] && [ "$(id -u)" = 0 ]; then
  mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || log "could not mount tracefs (continuing)"
fi
log "ok"
