#!/usr/bin/env bash
# The whole test suite: installs and starts PostgreSQL 15, etcd 3.4 and a Docker engine
# (scripts/services.sh, idempotent), installs npm dependencies from the lockfile, checks
# types, then runs every test with tap. Extra arguments go to tap (e.g. a test file).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh

# npm dependencies, exactly as locked; reinstalled only when the lockfile changed.
stamp=node_modules/.gantry-lock-hash
hash=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$hash" ]; then
  echo "[test] npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$hash" >"$stamp"
fi

echo "[test] typecheck"
npx tsc --noEmit -p .

export GANTRY_TEST_PG_URL=${GANTRY_TEST_PG_URL:-postgres://gantry:gantry@127.0.0.1:5432/postgres}
export GANTRY_TEST_ETCD=${GANTRY_TEST_ETCD:-http://127.0.0.1:2379}
export GANTRY_TEST_IMAGE=${GANTRY_TEST_IMAGE:-gantry-test/busybox:latest}
echo "[test] tap"
exec npx tap "$@"
