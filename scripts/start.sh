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
bash scripts/dashboard.sh

# The local runner runs tasks in Docker: make sure an engine answers.
if [ "${GANTRY_LOCAL_RUNNERS:-1}" != 0 ] && ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[start] no Docker engine answers: installing and starting one (scripts/services.sh docker)..."
    bash scripts/services.sh docker
  else
    cat >&2 <<'MSG'
[start] WARNING: no Docker engine answers (docker info fails), so the local runner cannot run tasks:
        they will wait in the queue. Install and start Docker, e.g. as root on Debian:
          apt-get install docker.io && dockerd --storage-driver=overlay2 &
        or run this script as root on Debian to have it done for you.
MSG
  fi
fi

exec node --import tsx control-plane/main.ts start "$@"
