# Local Kubernetes control plane + Prometheus for the e2e tests and the demo.
# Included by the root Makefile:  include e2e/cluster/cluster.mk
# See docs/local-cluster.md.

DOPD_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/dopd
DOPD_CLUSTER_STATE ?= $(or $(TMPDIR),/tmp)/dopd-cluster-$(shell id -u)
DOPD_GPU_NODES ?= 4
DOPD_GPUS_PER_NODE ?= 8
CLUSTER_SCRIPTS := $(dir $(lastword $(MAKEFILE_LIST)))

.PHONY: cluster-build cluster-check cluster-up cluster-down prometheus-install

## Build (or reuse) kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok, helm
cluster-build:
	DOPD_CACHE=$(DOPD_CACHE) $(CLUSTER_SCRIPTS)build.sh

## Exit non-zero (and say so) if the cluster binaries are missing; builds nothing
cluster-check:
	DOPD_CACHE=$(DOPD_CACHE) $(CLUSTER_SCRIPTS)build.sh --check

## Start the local cluster (reused if already running); then: export KUBECONFIG=$(DOPD_CLUSTER_STATE)/kubeconfig
cluster-up:
	@DOPD_CACHE=$(DOPD_CACHE) DOPD_CLUSTER_STATE=$(DOPD_CLUSTER_STATE) DOPD_GPU_NODES=$(DOPD_GPU_NODES) \
	  DOPD_GPUS_PER_NODE=$(DOPD_GPUS_PER_NODE) $(CLUSTER_SCRIPTS)up.sh

## Stop exactly the processes cluster-up started and remove its state dir
cluster-down:
	@DOPD_CACHE=$(DOPD_CACHE) DOPD_CLUSTER_STATE=$(DOPD_CLUSTER_STATE) $(CLUSTER_SCRIPTS)down.sh

## apt-install Debian's prometheus (binary only; no system service left on :9090)
prometheus-install:
	$(CLUSTER_SCRIPTS)install-prometheus.sh
