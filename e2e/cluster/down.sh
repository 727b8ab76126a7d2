#!/usr/bin/env bash
# Stop the local cluster started by up.sh: kills exactly the processes whose pids up.sh wrote
# into $DOPD_CLUSTER_STATE/pids (after checking each pid still runs the binary it started),
# then removes the state dir (kept when DOPD_KEEP_STATE=1). Safe to run twice.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
W=$DOPD_CLUSTER_STATE

if [ ! -d "$W/pids" ]; then
  log "no cluster state in $W (nothing to stop)"
  [ "${DOPD_KEEP_STATE:-0}" = 1 ] || rm -rf "$W"
  exit 0
fi
mkdir -p "$W"
exec 9>"$W/.lock"
flock -w 30 9 || die "$W is locked by another up.sh/down.sh"

ours() {  # ours PID NAME : the pid still runs the binary named NAME (guards against pid reuse)
  local exe
  exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
  [ "$(basename "${exe% (deleted)}")" = "$2" ]
}

stopped=0
stop_group() {  # stop_group NAME... : SIGTERM the group, wait up to 10 s, then SIGKILL
  local name f pid i entry group=()
  for name in "$@"; do
    f=$W/pids/$name.pid
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if ours "$pid" "$name"; then
      kill -TERM "$pid" 2>/dev/null || true
      group+=("$pid:$name")
      stopped=$((stopped + 1))
    fi
  done
  for entry in "${group[@]+"${group[@]}"}"; do
    pid=${entry%%:*}; name=${entry#*:}
    for ((i = 0; i < 100; i++)); do ours "$pid" "$name" || break; sleep 0.1; done
    if ours "$pid" "$name"; then log "$name ($pid) ignored SIGTERM for 10s; killing"; kill -KILL "$pid" 2>/dev/null || true; fi
  done
}
# reverse start order; the apiserver goes before etcd so that it can shut down cleanly
stop_group kwok kube-scheduler kube-controller-manager
stop_group kube-apiserver
stop_group etcd
rm -rf "$W/pids"
if [ "${DOPD_KEEP_STATE:-0}" = 1 ]; then
  log "stopped $stopped processes; state kept in $W"
else
  rm -rf "$W"
  log "stopped $stopped processes; removed $W"
fi
