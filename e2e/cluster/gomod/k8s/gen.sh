#!/usr/bin/env bash
# Regenerate go.mod/go.sum of the k8s wrapper module for a given Kubernetes release.
#   e2e/cluster/gomod/k8s/gen.sh v1.37.2
# k8s.io/kubernetes requires its staging modules at v0.0.0 and maps them with
# local `replace => ./staging/src/...` lines, which are ignored for non-main modules.
# This script reads that list from the release's own go.mod (module cache) and pins
# every staging module to v0.MINOR.PATCH with a replace line in this wrapper.
set -euo pipefail
KV=${1:?usage: gen.sh vX.Y.Z}
SV="v0.${KV#v1.}"
cd "$(dirname "$0")"
export GOFLAGS=-mod=mod
rm -f go.mod go.sum
go mod init dopd.local/e2e/k8s-bins >/dev/null 2>&1
go mod edit -go=1.26.0
GOMOD=$(go mod download -json "k8s.io/kubernetes@${KV}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -f "$GOMOD" ] || { echo "cannot download k8s.io/kubernetes@${KV}" >&2; exit 1; }
mods=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^ ]*\)[[:space:]]*=>[[:space:]]*\./staging/src/.*#\1#p' "$GOMOD")
[ -n "$mods" ] || { echo "no staging replaces found in $GOMOD" >&2; exit 1; }
for m in $mods; do go mod edit -replace="${m}=${m}@${SV}"; done
# copy k8s' godebug default so runtime behaviour matches upstream builds
gd=$(sed -n 's/^godebug[[:space:]]\+default=\(.*\)$/\1/p' "$GOMOD" | head -1)
[ -n "$gd" ] && go mod edit -godebug="default=${gd}"
go mod edit -require="k8s.io/kubernetes@${KV}"
go mod tidy
echo "generated go.mod for ${KV} with $(echo "$mods" | wc -w) staging replaces" >&2
