#!/usr/bin/env bash
# Starts Gantry on its embedded default: the control plane on PGlite (data in ./data, or
# GANTRY_DATA_DIR), serving the IronWorker v2 API. Installs npm dependencies on first use.
# Prints the API base URL, a project id and a token, and stays up until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v node >/dev/null 2>&1 || { echo "gantry: Node.js 20 or newer is needed: apt-get install nodejs (or see nodejs.org)" >&2; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || { echo "gantry: Node.js 20 or newer is needed, found $(node --version)" >&2; exit 1; }

bash scripts/npm-deps.sh

exec node --import tsx control-plane/main.ts start "$@"
