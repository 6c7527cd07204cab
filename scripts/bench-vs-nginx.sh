#!/usr/bin/env bash
# Same-run benchmark of sse-proxy against nginx (proxy_buffering off, 1 worker, upstream keepalive)
# and against the upstream directly: the same Rust token emitter and the same Rust client, one preset
# after another, each server started fresh per preset. Prints, per preset and target, CPU per upstream
# token (utime+stime from /proc), peak RSS (VmHWM), TTFT p50/p99, downstream events and bytes per
# token, and the sse-proxy / nginx ratios; then the cost of replaying a 2,000-event log on resume.
# The driver is examples/bench_vs_nginx.rs.
#
#   scripts/bench-vs-nginx.sh                    # every preset: fast c50 c500 c8000 resume
#   scripts/bench-vs-nginx.sh fast c50           # some of them
#   BENCH_PERF=/tmp/perf scripts/bench-vs-nginx.sh c500   # also `perf record -g` the proxy into /tmp/perf.c500
#   BENCH_BASELINE=/tmp/sse-proxy-before scripts/bench-vs-nginx.sh c500   # two proxy builds in one run
#
# nginx: Debian's (`apt-get install nginx-light` or `nginx`); without it the nginx rows are skipped.
# c8000 needs about 2 × 8,000 + 200 open files per process (client sockets here, the emitter's, and
# both sides in the server under test): the script raises the soft limit to the hard one.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/built_executables.sh
. scripts/built_executables.sh

echo "==> bench: building the release proxy and the driver"
built=$({
  cargo build --release --bin sse-proxy --message-format=json-render-diagnostics
  cargo build --release --example bench_vs_nginx --message-format=json-render-diagnostics
} | built_executables)
proxy=$(built_path sse-proxy)
driver=$(built_path bench_vs_nginx)

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
args=(run --proxy "$proxy")
nginx=$(command -v nginx || true)
[ -z "$nginx" ] && [ -x /usr/sbin/nginx ] && nginx=/usr/sbin/nginx
[ -n "$nginx" ] && args+=(--nginx "$nginx")
[ -n "${BENCH_PERF:-}" ] && args+=(--perf "$BENCH_PERF")
[ -n "${BENCH_BASELINE:-}" ] && args+=(--baseline "$BENCH_BASELINE")
echo "==> bench: $driver ${args[*]} $* (open files: $(ulimit -n))"
exec "$driver" "${args[@]}" "$@"
