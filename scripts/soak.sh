#!/usr/bin/env bash
# Soak test: the release proxy in front of the demo's synthetic model under a seeded random mix of
# streams, cuts and resumes, second followers, owner cancels, limit rejections (429) and silent
# sockets, for [seconds] (default 60). Every answer is compared with the model's known text and every
# resumed answer with the uninterrupted one; at the end the proxy's RSS must be within 20% of its
# level after warm-up, /streams empty after retention, and its log free of panics. The driver is
# examples/soak.rs; it prints its figures and exits non-zero when a check fails.
#
#   scripts/soak.sh 60                       # what CI runs
#   SOAK_SEED=1234 scripts/soak.sh 30        # replay a run (the seed is printed)
#   SOAK_SILENT_SOCKETS=0 scripts/soak.sh    # leave silent sockets out of the mix
#   SOAK_WORKERS=32 scripts/soak.sh 300      # more concurrent clients, longer
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/built_executables.sh
. scripts/built_executables.sh

seconds=${1:-60}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/soak.sh [seconds]   (seconds: a whole number above 0, got '$seconds')" >&2
  exit 2
fi

echo "==> soak: building the release proxy and the driver"
# The paths cargo reports for what it built, wherever CARGO_TARGET_DIR points. Two builds: the
# proxy exactly as `cargo build --release` makes it (an example would add the dev-dependencies'
# features), and the driver in the dev profile, which reuses what `cargo test` compiled.
built=$({
  cargo build --release --bin sse-proxy --message-format=json-render-diagnostics
  cargo build --example soak --message-format=json-render-diagnostics
} | built_executables)
proxy=$(built_path sse-proxy)
driver=$(built_path soak)

log=$(mktemp "${TMPDIR:-/tmp}/sse-proxy-soak.XXXXXX.log")
args=(--proxy "$proxy" --seconds "$seconds" --log "$log")
[ -n "${SOAK_SEED:-}" ] && args+=(--seed "$SOAK_SEED")
[ -n "${SOAK_WORKERS:-}" ] && args+=(--workers "$SOAK_WORKERS")
[ "${SOAK_SILENT_SOCKETS:-1}" = "0" ] && args+=(--no-silent-sockets)

echo "==> soak: ${seconds} s against $proxy"
status=0
"$driver" "${args[@]}" || status=$?
if [ "$status" -ne 0 ]; then
  echo "==> soak failed (exit $status); the proxy's log is $log; its last lines:"
  tail -n 30 "$log"
  exit "$status"
fi
rm -f "$log"
