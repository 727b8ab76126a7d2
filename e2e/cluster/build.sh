#!/usr/bin/env bash
# Build (or reuse) the local control plane binaries from Go modules only:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes, wrapper gomod/k8s)
#   etcd                                                               (go.etcd.io/etcd/server/v3, wrapper gomod/etcd)
#   kwok, helm                                                         (go install module@version; no replaces upstream)
# into $DOPD_BIN_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/dopd/k8s-<version>/bin).
# Idempotent: a binary that already reports the pinned version is not rebuilt.
#
#   e2e/cluster/build.sh            build what is missing
#   e2e/cluster/build.sh --check    exit 1 (listing them) if binaries are missing; build nothing
#   e2e/cluster/build.sh --force    rebuild everything
#   e2e/cluster/build.sh --regen    regenerate the wrapper go.mod/go.sum files for versions.env, then build
set -euo pipefail
. "$(dirname "$0")/lib.sh"

mode=build
case "${1:-}" in
  --check) mode=check ;;
  --force) mode=force ;;
  --regen) mode=regen ;;
  "") ;;
  *) die "unknown argument: $1" ;;
esac

if [ "$mode" = check ]; then
  if missing=$(check_binaries); then log "all binaries present in $DOPD_BIN_DIR"; exit 0; fi
  log "missing or wrong version in $DOPD_BIN_DIR:"; printf '  %s\n' $missing >&2
  log "run \`make cluster-build\` (or e2e/cluster/build.sh)"; exit 1
fi

command -v go >/dev/null || die "go not found (need Go >= 1.26)"
mkdir -p "$DOPD_BIN_DIR"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
PAR=${DOPD_BUILD_PARALLEL:-$(nproc 2>/dev/null || echo 2)}
start=$(date +%s)

if [ "$mode" = regen ]; then
  "$CLUSTER_DIR/gomod/k8s/gen.sh" "$K8S_VERSION"
  "$CLUSTER_DIR/gomod/etcd/gen.sh" "$ETCD_VERSION"
fi

need() {  # need NAME -> true if NAME must be (re)built
  [ "$mode" = force ] && return 0
  case $1 in
    kube) have_version "$DOPD_BIN_DIR/kube-apiserver" "Kubernetes $K8S_VERSION" --version &&
          have_version "$DOPD_BIN_DIR/kube-controller-manager" "Kubernetes $K8S_VERSION" --version &&
          have_version "$DOPD_BIN_DIR/kube-scheduler" "Kubernetes $K8S_VERSION" --version &&
          have_version "$DOPD_BIN_DIR/kubectl" "\"gitVersion\": \"$K8S_VERSION\"" version --client -o json && return 1 ;;
    etcd) have_version "$DOPD_BIN_DIR/etcd" "etcd Version: ${ETCD_VERSION#v}" --version && return 1 ;;
    kwok) have_version "$DOPD_BIN_DIR/kwok" "${KWOK_VERSION#v}" --version && return 1 ;;
    helm) have_version "$DOPD_BIN_DIR/helm" "$HELM_VERSION" version --short && return 1 ;;
  esac
  return 0
}

# The wrapper go.mod must pin the same release as versions.env.
grep -q "k8s.io/kubernetes $K8S_VERSION\$" "$CLUSTER_DIR/gomod/k8s/go.mod" ||
  die "gomod/k8s/go.mod does not require k8s.io/kubernetes $K8S_VERSION; run: $0 --regen"
grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION\$" "$CLUSTER_DIR/gomod/etcd/go.mod" ||
  die "gomod/etcd/go.mod does not require go.etcd.io/etcd/server/v3 $ETCD_VERSION; run: $0 --regen"

if need kube; then
  kv=${K8S_VERSION#v}; major=${kv%%.*}; rest=${kv#*.}; minor=${rest%%.*}
  ld="-s -w"
  # Same variables upstream's hack/lib/version.sh stamps; without them the server reports
  # v0.0.0-master+$Format:%H$ and Helm's kubeVersion checks fail.
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  log "building Kubernetes $K8S_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl); cold: about 6 min on 2 idle cores, longer under load"
  (cd "$CLUSTER_DIR/gomod/k8s" &&
    go build -p "$PAR" -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ld" -o "$DOPD_BIN_DIR/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
fi

if need etcd; then
  log "building etcd $ETCD_VERSION"
  (cd "$CLUSTER_DIR/gomod/etcd" &&
    go build -p "$PAR" -trimpath -ldflags "-s -w" -o "$DOPD_BIN_DIR/etcd" go.etcd.io/etcd/server/v3)
fi

if need kwok; then
  log "building kwok $KWOK_VERSION"
  GOBIN="$DOPD_BIN_DIR" GOFLAGS='' go install -p "$PAR" -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
fi

if need helm; then
  log "building helm $HELM_VERSION"
  kv=${K8S_VERSION#v}; major=${kv%%.*}; rest=${kv#*.}; minor=${rest%%.*}
  GOBIN="$DOPD_BIN_DIR" GOFLAGS='' go install -p "$PAR" -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$major -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$major -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi

cp "$CLUSTER_DIR/versions.env" "$DOPD_BIN_DIR/versions.env"
if missing=$(check_binaries); then
  log "binaries ready in $DOPD_BIN_DIR ($(du -sh "$DOPD_BIN_DIR" | cut -f1), $(( $(date +%s) - start ))s)"
else
  log "after build, still missing or wrong version:"; printf '  %s\n' $missing >&2; exit 1
fi
