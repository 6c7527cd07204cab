#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60) and prints, per target, the
# executions run and the crashes found. Exits 1 when a target crashes (or does not build), 0
# otherwise, and also 0, saying so, when the nightly toolchain is missing: fuzzing needs nightly,
# the product does not.
#
#   scripts/fuzz.sh [SECONDS]
#
# FUZZ_TOOLCHAIN picks the toolchain (default nightly, e.g. nightly-2025-06-01 to pin one).
# The build goes to $CARGO_TARGET_DIR/fuzz (default target/fuzz); the corpus grown by a run and
# any crash inputs go to $FUZZ_WORK_DIR (default that dir's work/). The committed seeds in
# fuzz/corpus/<target>/ are read, never written. A crash input is replayed with
#   cargo "+$toolchain" fuzz run -a <target> <crash file>
# and belongs, once fixed, in fuzz/corpus/<target>/ so that `cargo test --test fuzz_checks`
# replays it on stable.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds=${1:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS]   (a whole number of seconds per target, default 60)" >&2
  exit 2
fi
targets=(sse_parser config event_id batcher)
toolchain=${FUZZ_TOOLCHAIN:-nightly}

# Looked up in the list rather than run, so that no rustup setting installs it on the fly.
have_toolchain() {
  command -v rustup >/dev/null || return 1
  local host
  host=$(rustc -vV | sed -n 's/^host: //p')
  rustup toolchain list | grep -Eq "^($toolchain|$toolchain-$host)( |$)"
}
if ! have_toolchain; then
  echo "$toolchain toolchain not found; fuzzing skipped (install it with: rustup toolchain install $toolchain)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz not found; installing it from crates.io"
  if ! cargo install --locked cargo-fuzz; then
    echo "cargo-fuzz could not be installed; fuzzing skipped"
    exit 0
  fi
fi

target_dir=${CARGO_TARGET_DIR:-$root/target}/fuzz
work=${FUZZ_WORK_DIR:-$target_dir/work}
mkdir -p "$work"

# -a: debug assertions on, so an integer overflow is a crash too.
echo "==> building the fuzz targets ($toolchain, $target_dir)"
cargo "+$toolchain" fuzz build -a --target-dir "$target_dir"

declare -A execs crashes
failed=0
for t in "${targets[@]}"; do
  corpus=$work/corpus/$t
  artifacts=$work/artifacts/$t
  log=$work/$t.log
  mkdir -p "$corpus" "$artifacts"
  before=$(find "$artifacts" -type f | wc -l)
  echo "==> $t: ${seconds}s"
  status=0
  # -timeout: an input that takes 10 s is a hang, reported as a crash.
  cargo "+$toolchain" fuzz run -a --target-dir "$target_dir" "$t" "$corpus" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
  execs[$t]=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  found=$(( $(find "$artifacts" -type f | wc -l) - before ))
  if [ "$status" -ne 0 ] && [ "$found" -eq 0 ]; then
    found=1 # failed without writing an input (e.g. the target did not start): show the log
  fi
  crashes[$t]=$found
  if [ "$found" -ne 0 ]; then
    failed=1
    echo "    FAILED (exit $status); log: $log"
    { grep -A1 "panicked at" "$log" | head -n 2; grep -E "ERROR: libFuzzer|Test unit written" "$log"; } |
      sed 's/^/    /' || true
  fi
done
# cargo-fuzz creates fuzz/artifacts/<target> even when told to write elsewhere.
find fuzz/artifacts -type d -empty -delete 2>/dev/null || true

echo
printf '%-12s %14s %8s\n' target executions crashes
for t in "${targets[@]}"; do
  printf '%-12s %14s %8s\n' "$t" "${execs[$t]:-?}" "${crashes[$t]}"
done
if [ "$failed" -ne 0 ]; then
  echo "fuzzing found crashes; inputs in $work/artifacts/"
  exit 1
fi
echo "no crashes (${seconds}s per target)"
