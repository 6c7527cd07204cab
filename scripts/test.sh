#!/usr/bin/env bash
# Runs every test of sse-proxy: Rust unit and integration tests (against in-process mocks and the
# reference FastAPI backend as a real uvicorn process), the backend's own tests, the JavaScript
# client's tests against the real proxy, third-party SSE clients (httpx-sse in the backend's venv,
# the eventsource and fetch-event-source npm packages in clients/js/interop) against the real proxy,
# third-party OpenAI clients (Python and npm, pinned) against an `emit = "openai"` route, and the
# end-to-end tests in headless Chromium.
#
# Needs: cargo, python3 (3.11), node >= 20.19 with npm (Vite for the Vue example app), and Debian's chromium for the browser tests
# (.ci/run installs it). By hand, SSE_PROXY_SKIP_BROWSER=1 skips the browser tests on a machine
# without it; in CI (CI=true) that variable is ignored.
#
# No suite may pass by skipping here: the script exports what each one needs (SSE_PROXY_BIN, the
# binary cargo really built, wherever CARGO_TARGET_DIR points; SSE_PROXY_PYTHON, the venv's python)
# and SSE_PROXY_REQUIRE_ALL=1, under which a suite that cannot find them fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

step() { printf '\n==> %s\n' "$*"; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

export SSE_PROXY_REQUIRE_ALL=1

step "reference backend: Python venv"
venv=examples/fastapi-backend/.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r examples/fastapi-backend/requirements-dev.txt
export SSE_PROXY_PYTHON="$root/$venv/bin/python"
[ -x "$SSE_PROXY_PYTHON" ] || die "no Python at $SSE_PROXY_PYTHON"

step "reference backend: pytest"
(cd examples/fastapi-backend && .venv/bin/python -m pytest -q)

step "Rust: unit and integration tests"
# The path cargo reports for the binary it built, so the JavaScript suites use exactly this build.
SSE_PROXY_BIN=$(cargo build --bin sse-proxy --message-format=json-render-diagnostics |
  "$SSE_PROXY_PYTHON" -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "sse-proxy":
        print(m["executable"])
')
export SSE_PROXY_BIN
[ -n "$SSE_PROXY_BIN" ] && [ -x "$SSE_PROXY_BIN" ] || die "cargo reported no sse-proxy binary (got '$SSE_PROXY_BIN')"
echo "proxy binary: $SSE_PROXY_BIN"
cargo test

step "third-party clients: httpx-sse against the real proxy"
"$SSE_PROXY_PYTHON" -m pytest -q -p no:cacheprovider tests/python

step "OpenAI Python SDK through the proxy (emit = \"openai\")"
(cd examples/fastapi-backend && .venv/bin/python -m pytest -q test_openai_sdk.py)

# node's TAP report goes to a file beside the usual output; a skipped or todo test or suite (node
# counts a skipped suite in no total) fails the run.
no_skips() {
  local tap=$1 suite=$2 skipped
  skipped=$(grep -E '^ *(not )?ok [0-9]+ .* # (SKIP|TODO)' "$tap" || true)
  if [ -n "$skipped" ] || ! grep -qx '# skipped 0' "$tap" || ! grep -qx '# todo 0' "$tap"; then
    die "$suite: tests were skipped:
$skipped
$(grep -E '^# (skipped|todo) ' "$tap")"
  fi
}
# The usual report on stdout, TAP to a file (npm passes no options before node's test files).
reporters() {
  echo "${NODE_OPTIONS:-} --test-reporter=spec --test-reporter-destination=stdout --test-reporter=tap --test-reporter-destination=$1"
}
tap_dir=$(mktemp -d)
trap 'rm -rf "$tap_dir"' EXIT

step "JavaScript client: build check and tests against the real proxy"
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error)
(cd clients/js && NODE_OPTIONS="$(reporters "$tap_dir/unit.tap")" npm test)
no_skips "$tap_dir/unit.tap" "npm test"

step "third-party clients: eventsource and fetch-event-source through a cutting relay"
# Pinned in clients/js/interop/package-lock.json, installed apart from the client's own dependencies.
(cd clients/js/interop && npm ci --no-audit --no-fund --loglevel=error)
(cd clients/js/interop && NODE_OPTIONS="$(reporters "$tap_dir/interop.tap")" npm test)
no_skips "$tap_dir/interop.tap" "interop npm test"

step "OpenAI clients (openai npm package, Vercel AI SDK) through the proxy (emit = \"openai\")"
(cd clients/js/interop-openai && npm ci --no-audit --no-fund --loglevel=error)
(cd clients/js/interop-openai && NODE_OPTIONS="$(reporters "$tap_dir/interop-openai.tap")" npm test)
no_skips "$tap_dir/interop-openai.tap" "interop-openai npm test"

browser=run
if [ "${SSE_PROXY_SKIP_BROWSER:-0}" = "1" ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "SSE_PROXY_SKIP_BROWSER=1 is ignored in CI: the browser tests run"
  else
    browser=skipped
  fi
fi
if [ "$browser" = run ]; then
  step "browser: end-to-end in headless Chromium"
  chromium=${CHROMIUM_PATH:-/usr/bin/chromium}
  [ -x "$chromium" ] || die "no Chromium at $chromium: install Debian's chromium (.ci/run does), or by hand set SSE_PROXY_SKIP_BROWSER=1"
  # The Vue example app the end-to-end tests build with Vite (its own dependencies, not the client's).
  (cd clients/js/examples/vue-app && npm ci --no-audit --no-fund --loglevel=error)
  (cd clients/js && NODE_OPTIONS="$(reporters "$tap_dir/e2e.tap")" npm run e2e)
  no_skips "$tap_dir/e2e.tap" "npm run e2e"
fi
echo
if [ "$browser" = run ]; then
  echo "all test suites passed"
else
  echo "SKIPPED by hand: browser tests (SSE_PROXY_SKIP_BROWSER=1); every other test suite passed"
fi
