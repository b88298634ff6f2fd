#!/usr/bin/env bash
# Regenerates proto/gen/ from proto/**/*.proto with ts-proto (grpc-js services, ESM).
# With --check, generates into a temporary folder and fails if proto/gen/ differs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null 2>&1 || { echo "protoc is missing: apt-get install protobuf-compiler" >&2; exit 1; }
out=proto/gen
if [ "${1:-}" = --check ]; then out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi
mkdir -p "$out"
protoc --plugin=protoc-gen-ts_proto=node_modules/.bin/protoc-gen-ts_proto \
  --ts_proto_out="$out" \
  --ts_proto_opt=outputServices=grpc-js,esModuleInterop=true,importSuffix=.js,env=node,useOptionals=messages,forceLong=number,oneof=unions-value,useDate=false \
  -I proto $(find proto -name '*.proto' -not -path 'proto/gen/*' | sort)
if [ "${1:-}" = --check ]; then
  if ! diff -r "$out" proto/gen >/dev/null; then
    echo "proto/gen/ is stale: run scripts/gen-proto.sh and commit the result" >&2
    diff -r "$out" proto/gen | head -20 >&2
    exit 1
  fi
  echo "[proto] proto/gen/ is up to date"
fi
