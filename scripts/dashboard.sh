#!/usr/bin/env bash
# Builds the web dashboard (dashboard/, Preact with Vite) into dashboard/dist, only when its
# sources or the lockfile changed since the last build (a hash of them in a stamp file inside
# the output, so removing dashboard/dist rebuilds it). Run from anywhere; needs the npm
# dependencies (scripts/npm-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# One build at a time (test files run in parallel, each asking for a fresh build): a second
# caller waits, then finds the stamp current.
mkdir -p node_modules/.cache
exec 9>node_modules/.cache/gantry-dashboard.lock
flock 9
stamp=dashboard/dist/.source-hash
hash=$( (find dashboard -path dashboard/dist -prune -o -type f -print | LC_ALL=C sort | xargs sha256sum; sha256sum package-lock.json) | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$hash" ] || [ ! -f dashboard/dist/index.html ]; then
  echo "[dashboard] building the dashboard (vite build dashboard)..."
  node node_modules/vite/bin/vite.js build dashboard
  echo "$hash" >"$stamp"
fi
