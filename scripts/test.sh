#!/usr/bin/env bash
# The whole test suite: installs and starts PostgreSQL 15, etcd 3.4 and a Docker engine
# (scripts/services.sh, idempotent), installs npm dependencies from the lockfile, checks
# types, then runs every test with tap. Extra arguments go to tap (e.g. a test file).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh

bash scripts/npm-deps.sh

echo "[test] generated code"
command -v protoc >/dev/null 2>&1 || {
  echo "[test] installing protobuf-compiler (protoc) from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends protobuf-compiler >/dev/null ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends protobuf-compiler >/dev/null; }
}
bash scripts/gen-proto.sh --check

echo "[test] typecheck"
npx tsc --noEmit -p .

export GANTRY_TEST_PG_URL=${GANTRY_TEST_PG_URL:-postgres://gantry:gantry@127.0.0.1:5432/postgres}
export GANTRY_TEST_ETCD=${GANTRY_TEST_ETCD:-http://127.0.0.1:2379}
export GANTRY_TEST_IMAGE=${GANTRY_TEST_IMAGE:-gantry-test/busybox:latest}
echo "[test] tap"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
npx tap "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# tap closes with "# { total: N, pass: P, fail: F, ... }"; restate it as a plain line.
summary=$(grep -E '^# \{ total: ' "$log" | tail -1)
total=$(sed -nE 's/.*total: ([0-9]+).*/\1/p' <<<"$summary")
pass=$(sed -nE 's/.*pass: ([0-9]+).*/\1/p' <<<"$summary")
if [ -z "$total" ] || [ "${total:-0}" -eq 0 ]; then
  echo "[test] no test ran" >&2
  exit 1
fi
fail=$(sed -nE 's/.*fail: ([0-9]+).*/\1/p' <<<"$summary")
skip=$(sed -nE 's/.*skip: ([0-9]+).*/\1/p' <<<"$summary")
echo "tests: ${pass:-0} passed, ${fail:-0} failed, ${skip:-0} skipped"
exit "$rc"
