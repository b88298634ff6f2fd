#!/usr/bin/env bash
# The whole test suite: installs and starts PostgreSQL 15, etcd 3.4 and a Docker engine
# (scripts/services.sh, idempotent), installs npm dependencies from the lockfile, checks
# types, then runs every test with tap. Extra arguments go to tap (e.g. a test file).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh

bash scripts/npm-deps.sh

echo "[test] typecheck"
npx tsc --noEmit -p .

export GANTRY_TEST_PG_URL=${GANTRY_TEST_PG_URL:-postgres://gantry:gantry@127.0.0.1:5432/postgres}
export GANTRY_TEST_ETCD=${GANTRY_TEST_ETCD:-http://127.0.0.1:2379}
export GANTRY_TEST_IMAGE=${GANTRY_TEST_IMAGE:-gantry-test/busybox:latest}
echo "[test] tap"
exec npx tap "$@"
