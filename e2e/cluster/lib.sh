# shellcheck shell=bash
# Shared helpers for e2e/cluster/*.sh (sourced, not executed).
CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$CLUSTER_DIR/versions.env"
DOPD_CACHE=${DOPD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dopd}
# Binaries are keyed by the Kubernetes version; every binary is also checked by its own --version.
DOPD_BIN_DIR=${DOPD_BIN_DIR:-$DOPD_CACHE/k8s-$K8S_VERSION/bin}
# Default state dir of the cluster started by up.sh (the pytest fixture uses its own temp dir).
DOPD_CLUSTER_STATE=${DOPD_CLUSTER_STATE:-${TMPDIR:-/tmp}/dopd-cluster-$(id -u)}

log() { printf '[dopd-cluster] %s\n' "$*" >&2; }
die() { printf '[dopd-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

# have_version BINARY EXPECTED-SUBSTRING ARGS... : true when BINARY ARGS prints EXPECTED
have_version() {
  local bin=$1 want=$2; shift 2
  [ -x "$bin" ] || return 1
  local out
  out=$("$bin" "$@" 2>&1) || return 1   # no pipe into grep -q: SIGPIPE + pipefail gives false negatives
  [[ $out == *"$want"* ]]
}

check_binaries() {  # prints missing/mismatching binaries; returns 1 if any
  local bad=0 b
  have_version "$DOPD_BIN_DIR/kube-apiserver" "Kubernetes $K8S_VERSION" --version || { echo "kube-apiserver"; bad=1; }
  have_version "$DOPD_BIN_DIR/kube-controller-manager" "Kubernetes $K8S_VERSION" --version || { echo "kube-controller-manager"; bad=1; }
  have_version "$DOPD_BIN_DIR/kube-scheduler" "Kubernetes $K8S_VERSION" --version || { echo "kube-scheduler"; bad=1; }
  have_version "$DOPD_BIN_DIR/kubectl" "\"gitVersion\": \"$K8S_VERSION\"" version --client -o json || { echo "kubectl"; bad=1; }
  have_version "$DOPD_BIN_DIR/etcd" "etcd Version: ${ETCD_VERSION#v}" --version || { echo "etcd"; bad=1; }
  have_version "$DOPD_BIN_DIR/kwok" "${KWOK_VERSION#v}" --version || { echo "kwok"; bad=1; }
  have_version "$DOPD_BIN_DIR/helm" "$HELM_VERSION" version --short || { echo "helm"; bad=1; }
  for b in openssl curl; do command -v "$b" >/dev/null || { echo "$b (apt-get install $b)"; bad=1; }; done
  return $bad
}
