#!/usr/bin/env bash
# Installs the npm dependencies exactly as locked (npm ci), only when package-lock.json
# changed since the last install, development ones included (tsx runs the sources, also
# with NODE_ENV=production set). Run from the repository root.
set -euo pipefail
stamp=node_modules/.gantry-lock-hash
hash=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$hash" ]; then
  echo "[deps] installing npm dependencies (npm ci)..."
  npm ci --include=dev --no-audit --no-fund --loglevel=error
  echo "$hash" >"$stamp"
fi
