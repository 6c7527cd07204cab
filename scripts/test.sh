#!/usr/bin/env bash
# Runs every test of sse-proxy: Rust unit and integration tests (against in-process mocks and the
# reference FastAPI backend as a real uvicorn process), the backend's own tests, the JavaScript
# client's tests against the real proxy, and the end-to-end tests in headless Chromium.
#
# Needs: cargo, python3 (3.11), node >= 20 with npm, and Debian's chromium for the browser tests
# (.ci/run installs it; set SSE_PROXY_SKIP_BROWSER=1 to skip them on a machine without it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

step() { printf '\n==> %s\n' "$*"; }

step "reference backend: Python venv"
venv=examples/fastapi-backend/.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r examples/fastapi-backend/requirements-dev.txt
export SSE_PROXY_PYTHON="$root/$venv/bin/python"

step "reference backend: pytest"
(cd examples/fastapi-backend && .venv/bin/python -m pytest -q)

step "Rust: unit and integration tests"
cargo build --quiet --bin sse-proxy
cargo test

step "JavaScript client: build check and tests against the real proxy"
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error)
(cd clients/js && npm test)

if [ "${SSE_PROXY_SKIP_BROWSER:-0}" = "1" ]; then
  echo "browser tests skipped (SSE_PROXY_SKIP_BROWSER=1)"
else
  step "browser: end-to-end in headless Chromium"
  (cd clients/js && npm run e2e)
fi
echo
echo "all test suites passed"
