#!/usr/bin/env bash
# Regenerate go.mod/go.sum of the etcd wrapper module.
#   e2e/cluster/gomod/etcd/gen.sh v3.7.3
# `go install go.etcd.io/etcd/server/v3@V` fails because etcd's release go.mods carry
# relative `replace => ../api` lines; in a wrapper they are ignored and MVS resolves
# the sibling modules at the versions the server's go.mod requires.
set -euo pipefail
EV=${1:?usage: gen.sh v3.X.Y}
cd "$(dirname "$0")"
export GOFLAGS=-mod=mod
rm -f go.mod go.sum
go mod init dopd.local/e2e/etcd-bin >/dev/null 2>&1
go mod edit -go=1.26.0
go mod edit -require="go.etcd.io/etcd/server/v3@${EV}"
go mod tidy
