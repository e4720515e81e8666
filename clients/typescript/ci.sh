#!/usr/bin/env bash
# CI for the TypeScript client, the playground and Swagger UI; run from the repository root
# after the Rust tests:  bash clients/typescript/ci.sh
# Installs what a fresh machine lacks (Chromium from apt; Playwright never downloads browsers),
# checks that src/schema.d.ts matches openapi/openapi.json, validates docker-compose.yml when
# Docker is available, then runs the Node tests against the built server binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
export CI="${CI:-true}"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

apt_install() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v npm >/dev/null 2>&1; then
  echo "ci: node/npm missing; installing them with apt-get"
  apt_install nodejs npm
fi
export CHROMIUM_PATH="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM_PATH" ]; then
  echo "ci: $CHROMIUM_PATH missing; installing chromium with apt-get"
  apt_install chromium
fi

# The server binary: cargo test has built it already; build it if it is missing, or (for the
# default path) older than the sources it embeds. An explicit CHAT_SERVER_BIN is used as is.
if [ -n "${CHAT_SERVER_BIN:-}" ]; then
  bin="$CHAT_SERVER_BIN"
  case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
  [ -x "$bin" ] || { echo "ci: CHAT_SERVER_BIN=$bin is not an executable" >&2; exit 1; }
else
  target="${CARGO_TARGET_DIR:-$root/target}"
  case "$target" in /*) ;; *) target="$root/$target" ;; esac
  bin="$target/debug/chat-server"
  if [ ! -x "$bin" ]; then
    echo "ci: $bin missing; running cargo build"
    cargo build --locked --bin chat-server
  elif [ -n "$(find src playground entity migration Cargo.toml Cargo.lock -newer "$bin" -print -quit)" ]; then
    echo "ci: $bin is older than its sources; running cargo build"
    cargo build --locked --bin chat-server
  fi
fi
export CHAT_SERVER_BIN="$bin"

# docker-compose.yml must stay valid; only checked where Docker runs.
if docker compose version >/dev/null 2>&1; then
  JWT_SECRET="${JWT_SECRET:-ci-placeholder-secret-at-least-32-bytes-long}" docker compose config -q
  echo "ci: docker-compose.yml is valid"
else
  echo "ci: docker compose is not available here; test/compose.test.mjs checks docker-compose.yml against the Compose schema instead"
fi

cd clients/typescript
npm ci --no-audit --no-fund

# The committed client types must be what the generator makes from the committed spec.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
npx --no-install openapi-typescript ../../openapi/openapi.json -o "$tmp/schema.d.ts" >/dev/null
if ! cmp -s "$tmp/schema.d.ts" src/schema.d.ts; then
  echo "ci: clients/typescript/src/schema.d.ts is stale; run 'npm run generate' in clients/typescript and commit it" >&2
  diff -u src/schema.d.ts "$tmp/schema.d.ts" | head -40 >&2 || true
  exit 1
fi
echo "ci: src/schema.d.ts is current"
npm run --silent typecheck
echo "ci: src/client.mjs type-checks against the generated schema"

# Last, so the output ends with the test runner's summary (# tests, # pass, # fail).
node --test test/schema.test.mjs test/compose.test.mjs test/api.test.mjs test/ws.test.mjs test/browser.test.mjs test/agents.browser.test.mjs test/agents.api.test.mjs test/validation.browser.test.mjs
