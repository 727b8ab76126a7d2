#!/usr/bin/env bash
# Start a local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, KWOK with fake GPU nodes) on 127.0.0.1, from the binaries built by build.sh.
#
#   eval "$(e2e/cluster/up.sh)"     # the last line printed on stdout is `export KUBECONFIG=<path>`
#   e2e/cluster/down.sh             # stops exactly the processes up.sh started
#
# Environment:
#   DOPD_CLUSTER_STATE  state dir (certs, kubeconfig, data, logs, pids); default /tmp/dopd-cluster-$UID
#   DOPD_GPU_NODES      number of fake GPU nodes (default 4)
#   DOPD_GPUS_PER_NODE  nvidia.com/gpu capacity per node (default 8)
#   DOPD_BIN_DIR        where the binaries are (default: see lib.sh)
#   DOPD_CLUSTER_REUSE  1 (default): if a healthy cluster already runs in the state dir, reuse it;
#                       0: refuse with an error instead.
# Everything goes to stderr except the final export line.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

NODES=${DOPD_GPU_NODES:-4}
GPUS=${DOPD_GPUS_PER_NODE:-8}
W=$DOPD_CLUSTER_STATE
P=$W/pki
KC=$W/kubeconfig
export PATH="$DOPD_BIN_DIR:$PATH"

if missing=$(check_binaries); then :; else
  log "missing or wrong version in $DOPD_BIN_DIR:"; printf '  %s\n' $missing >&2
  die "run \`make cluster-build\` (e2e/cluster/build.sh) first"
fi

mkdir -p "$W"
exec 9>"$W/.lock"
flock -n 9 || die "another up.sh/down.sh is running on $W"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# --- a second start: reuse a healthy cluster, refuse a half-dead one ---------------------------
if compgen -G "$W/pids/*.pid" >/dev/null; then
  all=1
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler kwok; do
    alive "$W/pids/$name.pid" || all=0
  done
  if [ $all = 1 ] && kubectl --kubeconfig "$KC" get --raw /readyz >/dev/null 2>&1; then
    [ "${DOPD_CLUSTER_REUSE:-1}" = 1 ] || die "a cluster already runs in $W (DOPD_CLUSTER_REUSE=0); stop it with e2e/cluster/down.sh"
    log "reusing the cluster already running in $W"
    echo "export KUBECONFIG=$KC"
    exit 0
  fi
  log "stale cluster state in $W: stopping leftovers and starting fresh"
  flock -u 9
  DOPD_CLUSTER_STATE=$W "$CLUSTER_DIR/down.sh" >&2
  mkdir -p "$W"; exec 9>"$W/.lock"; flock -n 9 || die "cannot lock $W"
fi
rm -rf "$W/pki" "$W/etcd" "$W/logs" "$W/pids" "$W/kubeconfig" "$W/ports.env" "$W/nodes.yaml"
mkdir -p "$P" "$W/logs" "$W/pids" "$W/etcd"
chmod 700 "$W" "$W/etcd"

fail() {  # print the tail of the logs and stop what was started
  log "startup failed: $*"
  for f in "$W"/logs/*.log; do [ -f "$f" ] && { log "--- tail $f"; tail -n 15 "$f" >&2; }; done
  flock -u 9
  DOPD_CLUSTER_STATE=$W DOPD_KEEP_STATE=1 "$CLUSTER_DIR/down.sh" >&2 || true
  exit 1
}
trap 'fail "interrupted"' INT TERM
trap 'fail "command failed (line $LINENO)"' ERR

# --- free ports on 127.0.0.1 (held open together so they are distinct) ------------------------
read -r ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT SCHED_PORT < <(python3 - <<'PY'
import socket
socks = []
for _ in range(5):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(*(s.getsockname()[1] for s in socks))
PY
)
cat > "$W/ports.env" <<PORTS
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
API_PORT=$API_PORT
KCM_PORT=$KCM_PORT
SCHED_PORT=$SCHED_PORT
PORTS

# --- certificates: one CA; apiserver serving cert; admin (system:masters) client cert ---------
(
  cd "$P"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=dopd-e2e-ca" \
    -keyout ca.key -out ca.crt 2>/dev/null
  printf 'subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n' > server.ext
  printf 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n' > client.ext
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key -out apiserver.csr 2>/dev/null
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile server.ext -out apiserver.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=dopd-admin/O=system:masters" -keyout admin.key -out admin.csr 2>/dev/null
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile client.ext -out admin.crt 2>/dev/null
  # front-proxy CA + client: the requestheader config that kcm/scheduler read from
  # kube-system/extension-apiserver-authentication (without it they log "missing content for CA bundle")
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=dopd-e2e-front-proxy-ca" \
    -keyout front-proxy-ca.key -out front-proxy-ca.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=front-proxy-client" -keyout front-proxy-client.key \
    -out front-proxy-client.csr 2>/dev/null
  openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt -CAkey front-proxy-ca.key \
    -CAcreateserial -days 3650 -extfile client.ext -out front-proxy-client.crt 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  rm -f ./*.csr
  chmod 600 ./*.key
)

cat > "$KC" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: dopd-e2e
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $P/ca.crt
users:
- name: dopd-admin
  user:
    client-certificate: $P/admin.crt
    client-key: $P/admin.key
contexts:
- name: dopd-e2e
  context: {cluster: dopd-e2e, user: dopd-admin}
current-context: dopd-e2e
KUBECONFIG
chmod 600 "$KC"

start() {  # start NAME BINARY ARGS... : detached, own session, log + pid in the state dir
  local name=$1; shift
  # 9>&- : the daemons must not inherit the lock fd, or the lock would outlive this script
  setsid "$@" >"$W/logs/$name.log" 2>&1 </dev/null 9>&- &
  echo $! > "$W/pids/$name.pid"
}

wait_for() {  # wait_for WHAT TIMEOUT-SECONDS CMD...
  local what=$1 deadline=$((SECONDS + $2)); shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for $what"
    sleep 0.1
  done
}

t0=$(date +%s%N)
# --- etcd --------------------------------------------------------------------------------------
start etcd "$DOPD_BIN_DIR/etcd" --name dopd-e2e --data-dir "$W/etcd" --unsafe-no-fsync \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "dopd-e2e=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new \
  --log-level warn
wait_for etcd 30 sh -c "curl -sf http://127.0.0.1:$ETCD_PORT/health | grep -q '\"health\":\"true\"'"

# --- kube-apiserver: RBAC + Node authorization, service-account tokens ------------------------
start kube-apiserver "$DOPD_BIN_DIR/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
  --tls-cert-file "$P/apiserver.crt" --tls-private-key-file "$P/apiserver.key" \
  --client-ca-file "$P/ca.crt" \
  --requestheader-client-ca-file "$P/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$P/front-proxy-client.crt" --proxy-client-key-file "$P/front-proxy-client.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$P/sa.pub" --service-account-signing-key-file "$P/sa.key" \
  --api-audiences https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range 10.96.0.0/16 \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --allow-privileged=true --endpoint-reconciler-type none \
  --enable-priority-and-fairness=false --profiling=false \
  --cert-dir "$W/pki/apiserver-generated"
wait_for kube-apiserver 120 kubectl --kubeconfig "$KC" get --raw /readyz

# --- controller manager and scheduler ----------------------------------------------------------
start kube-controller-manager "$DOPD_BIN_DIR/kube-controller-manager" \
  --kubeconfig "$KC" --authentication-kubeconfig "$KC" --authorization-kubeconfig "$KC" \
  --leader-elect=false --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
  --cert-dir "$W/pki/kcm-generated" \
  --service-account-private-key-file "$P/sa.key" --root-ca-file "$P/ca.crt" \
  --cluster-signing-cert-file "$P/ca.crt" --cluster-signing-key-file "$P/ca.key" \
  --use-service-account-credentials=true \
  --controllers '*' --profiling=false
start kube-scheduler "$DOPD_BIN_DIR/kube-scheduler" \
  --kubeconfig "$KC" --authentication-kubeconfig "$KC" --authorization-kubeconfig "$KC" \
  --leader-elect=false --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" \
  --cert-dir "$W/pki/scheduler-generated" --profiling=false

# --- KWOK: fake kubelets for nodes annotated kwok.x-k8s.io/node=fake ---------------------------
# Pod and node addresses come from 198.18.0.0/15 (RFC 2544 benchmarking range): never a private range
# that may be a real network here. The e2e harness (e2e/dopd_e2e/netns.py) gives the pods it runs these
# addresses in network namespaces; 198.19.255.254 is its host side.
start kwok "$DOPD_BIN_DIR/kwok" --kubeconfig "$KC" --config "$CLUSTER_DIR/kwok/stages.yaml" \
  --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
  --cidr 198.18.0.0/16 --node-ip 198.19.0.1 --node-lease-duration-seconds 40

# --- fake GPU nodes ----------------------------------------------------------------------------
: > "$W/nodes.yaml"
for ((i = 0; i < NODES; i++)); do
  sed -e "s/__NAME__/gpu-node-$i/g" -e "s/__GPUS__/$GPUS/g" "$CLUSTER_DIR/kwok/gpu-node.yaml.in" >> "$W/nodes.yaml"
  echo '---' >> "$W/nodes.yaml"
done
wait_for "the default namespace" 30 kubectl --kubeconfig "$KC" get namespace default
kubectl --kubeconfig "$KC" apply -f "$W/nodes.yaml" >/dev/null || fail "could not create the fake nodes"
if [ "$NODES" -gt 0 ]; then
  wait_for "$NODES Ready fake nodes" 90 sh -c \
    "[ \"\$(kubectl --kubeconfig '$KC' get nodes -l dopd.io/fake-gpu-node=true -o jsonpath='{range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}' | grep -c True)\" = $NODES ]"
fi
# pods cannot be created before the service-account controller made the default ServiceAccount
wait_for "the default ServiceAccount" 90 kubectl --kubeconfig "$KC" -n default get serviceaccount default

trap - INT TERM ERR
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
log "cluster up in $((ms / 1000)).$((ms % 1000 / 100))s: Kubernetes $K8S_VERSION, $NODES fake nodes x $GPUS nvidia.com/gpu, state in $W"
echo "export KUBECONFIG=$KC"
