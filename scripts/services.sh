#!/usr/bin/env bash
# Installs (from Debian's packages) and starts what Gantry's tests need, idempotently:
# PostgreSQL 15, etcd 3.4, a Docker engine, the local busybox test image, iproute2, and the
# tools some tests run (systemd-analyze, docker-compose, python3, pgrep, promtool, chromium).
# Usage: scripts/services.sh [postgres] [etcd] [docker] [netns] [tools] [promtool] [browser]   (no argument: all seven)
set -euo pipefail

STATE_DIR=${GANTRY_SERVICES_DIR:-/var/lib/gantry-services}
LOG_DIR=${GANTRY_SERVICES_LOG_DIR:-/var/log/gantry-services}
PG_VERSION=15
TEST_IMAGE=${GANTRY_TEST_IMAGE:-gantry-test/busybox:latest}
mkdir -p "$STATE_DIR" "$LOG_DIR"

say() { printf '[services] %s\n' "$*"; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
need_pkgs() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "packages ${missing[*]} are missing and installing them needs root: sudo apt-get install ${missing[*]}"
  say "installing ${missing[*]} from Debian's packages"
  # The package lists are refreshed once, and only when an install fails without it.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null && return 0
  [ $APT_UPDATED = 0 ] || die "could not install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  APT_UPDATED=1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
  say "$what is up"
}

start_postgres() {
  need_pkgs postgresql postgresql-$PG_VERSION postgresql-client-$PG_VERSION
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$PG_VERSION main"; then
    say "creating PostgreSQL $PG_VERSION cluster 'main'"
    pg_createcluster "$PG_VERSION" main >/dev/null
  fi
  if ! pg_lsclusters -h | awk -v v=$PG_VERSION '$1==v && $2=="main" {print $4}' | grep -q online; then
    say "starting PostgreSQL $PG_VERSION"
    pg_ctlcluster "$PG_VERSION" main start
  fi
  wait_for "PostgreSQL $PG_VERSION" 60 runuser -u postgres -- psql -qAtc 'SELECT 1' ||
    die "PostgreSQL did not come up; see /var/log/postgresql/postgresql-$PG_VERSION-main.log"
  # The role the tests connect as; superuser so each test file can create its own database.
  runuser -u postgres -- psql -qAt -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gantry') THEN
    CREATE ROLE gantry LOGIN SUPERUSER PASSWORD 'gantry';
  END IF;
END $$;
SQL
}

etcd_healthy() { curl -fsS --max-time 2 http://127.0.0.1:2379/health 2>/dev/null | grep -q '"health":"true"'; }
start_etcd() {
  need_pkgs etcd-server curl
  if ! etcd_healthy; then
    say "starting etcd"
    mkdir -p "$STATE_DIR/etcd"
    setsid nohup etcd --name gantry-test --data-dir "$STATE_DIR/etcd" \
      --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
      --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
      --initial-cluster gantry-test=http://127.0.0.1:2380 \
      >>"$LOG_DIR/etcd.log" 2>&1 </dev/null &
  fi
  wait_for "etcd" 60 etcd_healthy || die "etcd did not come up; see $LOG_DIR/etcd.log"
}

start_docker() {
  command -v dockerd >/dev/null 2>&1 || need_pkgs docker.io
  command -v docker >/dev/null 2>&1 || need_pkgs docker.io
  if ! docker info >/dev/null 2>&1; then
    say "starting the Docker engine"
    setsid nohup dockerd --storage-driver=overlay2 --iptables=false --bridge=none \
      >>"$LOG_DIR/dockerd.log" 2>&1 </dev/null &
  fi
  wait_for "Docker engine" 60 docker info || die "the Docker engine did not come up; see $LOG_DIR/dockerd.log"
  if ! docker image inspect "$TEST_IMAGE" >/dev/null 2>&1; then
    need_pkgs busybox-static
    say "building test image $TEST_IMAGE from busybox-static (docker import)"
    local root; root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/work"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
      [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    echo 'nobody:x:65534:65534:nobody:/:/bin/false' >>"$root/etc/passwd"
    tar -C "$root" -c . | docker import --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' - "$TEST_IMAGE" >/dev/null
    rm -rf "$root"
  fi
  say "test image $TEST_IMAGE is present"
}

# The partition tests (test/*/integration/partition*.test.ts) build network namespaces and
# veth pairs with iproute2's `ip` (as root; no kernel module, no iptables).
need_netns() {
  command -v ip >/dev/null 2>&1 || need_pkgs iproute2
  say "iproute2 (ip netns) is present"
}

# Programs tests run directly: test/cloud-config/unit/render.test.ts and test/repo/deploy.test.ts
# verify units with /usr/bin/systemd-analyze (that path), deploy.test.ts validates the compose
# file with /usr/bin/docker-compose (Debian's, v1), e2e-docker builds a zip with python3, and
# autoscale-local and the private PostgreSQL servers of the outage tests look for processes
# with pgrep.
need_tools() {
  [ -x /usr/bin/systemd-analyze ] || need_pkgs systemd
  [ -x /usr/bin/docker-compose ] || need_pkgs docker-compose
  command -v python3 >/dev/null 2>&1 || need_pkgs python3
  command -v pgrep >/dev/null 2>&1 || need_pkgs procps
  say "systemd-analyze, docker-compose, python3 and pgrep are present"
}

# test/control-plane/integration/metrics.test.ts checks /metrics and the alerting rules in
# deploy/prometheus/ with promtool, from Debian's prometheus package. Only the tool is
# wanted: the package's own service must not start (a policy-rc.d that refuses every start
# while it installs), and where systemd runs it is stopped and disabled too.
need_promtool() {
  if ! command -v promtool >/dev/null 2>&1; then
    local policy=/usr/sbin/policy-rc.d ours=0
    if [ ! -e "$policy" ] && [ "$(id -u)" = 0 ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && ours=1
    fi
    need_pkgs prometheus || { [ $ours = 0 ] || rm -f "$policy"; die "could not install prometheus (for promtool)"; }
    [ $ours = 0 ] || rm -f "$policy"
  fi
  if [ -d /run/systemd/system ] && systemctl is-enabled --quiet prometheus 2>/dev/null; then
    say "stopping and disabling the prometheus service (only promtool is wanted)"
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  if pgrep -x prometheus >/dev/null 2>&1 && [ -x /etc/init.d/prometheus ]; then
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
  say "promtool is present"
}

# The stream page's test drives Debian's own Chromium (/usr/bin/chromium) through
# playwright-core: no tool downloads a browser of its own.
need_browser() {
  [ -x /usr/bin/chromium ] || need_pkgs chromium
  say "chromium is present"
}

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(postgres etcd docker netns tools promtool browser)
for s in "${want[@]}"; do
  case "$s" in
    postgres) start_postgres ;;
    etcd) start_etcd ;;
    docker) start_docker ;;
    netns) need_netns ;;
    tools) need_tools ;;
    promtool) need_promtool ;;
    browser) need_browser ;;
    *) die "unknown service $s (postgres, etcd, docker, netns, tools, promtool, browser)" ;;
  esac
done
