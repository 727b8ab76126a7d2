#!/usr/bin/env bash
# Install Debian's prometheus package idempotently, for the e2e fixtures and the demo.
# Only the binary (/usr/bin/prometheus) is used: the fixture starts its own instance on a free
# 127.0.0.1 port. This script makes sure the package's system service is NOT left running on :9090.
set -euo pipefail
log() { printf '[install-prometheus] %s\n' "$*" >&2; }

stop_system_service() {
  if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  elif command -v service >/dev/null && [ -x /etc/init.d/prometheus ]; then
    service prometheus stop >/dev/null 2>&1 || true
  fi
  # also on systems without an init: a daemon started by postinst runs as user prometheus
  local pid
  for pid in $(pgrep -u prometheus -x prometheus 2>/dev/null || true); do
    log "stopping packaged prometheus daemon (pid $pid)"; kill "$pid" 2>/dev/null || true
  done
}

if [ -x /usr/bin/prometheus ]; then
  log "$(/usr/bin/prometheus --version 2>&1 | head -1)"
  stop_system_service
  exit 0
fi

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive

# Keep the package's init script from starting a daemon on 0.0.0.0:9090 during install.
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
cleanup() { [ "$created_policy" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d; true; }
trap cleanup EXIT

if ! apt-cache show prometheus >/dev/null 2>&1 || [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ]; then
  log "apt-get update"
  $SUDO apt-get update -qq
fi
log "apt-get install prometheus (without recommends: no node-exporter service)"
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
stop_system_service
log "$(/usr/bin/prometheus --version 2>&1 | head -1)"
