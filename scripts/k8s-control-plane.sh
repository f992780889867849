#!/usr/bin/env bash
# A real Kubernetes control plane for ondeck's tests and bench, built from the
# Go module proxy (no Debian/PyPI/npm package ships a kube-apiserver).
#
#   k8s-control-plane.sh build        build once into $ONDECK_K8S_CACHE (a no-op when built);
#                                     waits for a build already running (lock), then reuses it
#   k8s-control-plane.sh build-start  the same build, detached in the background (log:
#                                     $ONDECK_K8S_CACHE/build.log); returns at once
#   k8s-control-plane.sh start DIR    etcd + apiserver + controller-manager + scheduler + kwok
#                                     on free loopback ports, one simulated node; waits
#                                     until a Deployment can become Available; writes
#                                     DIR/kubeconfig and DIR/pids; exits 0
#   k8s-control-plane.sh stop DIR     stops what start started, by pid
#
# Called by `make test` (build-start first, build before the Kubernetes tests) and by
# the pytest fixture in tests/kubeplane.py (start/stop). See docs/kubernetes.md.
set -euo pipefail

K8S=${ONDECK_K8S_VERSION:-1.36.3}
KWOK=${ONDECK_KWOK_VERSION:-v0.8.0}
CACHE=${ONDECK_K8S_CACHE:-$HOME/.cache/ondeck-k8s}
BIN=$CACHE/bin
STAMP=$BIN/.built-$K8S-$KWOK
LOCK=$CACHE/.build.lock
# how long `build` waits for a build another process runs (a cold one is long on 2 cores)
WAIT=${ONDECK_K8S_BUILD_WAIT:-7200}
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

log() { echo "k8s-control-plane: $*" >&2; }
die() { log "$*"; exit 1; }

built() {
  [ -f "$STAMP" ] || return 1
  local c
  for c in "${COMPONENTS[@]}"; do [ -x "$BIN/$c" ] || return 1; done
}

build() {
  built && return 0
  mkdir -p "$CACHE"
  exec 9>"$LOCK"
  if ! flock -n 9; then
    log "another build is running (log: $CACHE/build.log); waiting up to ${WAIT}s"
    flock -w "$WAIT" 9 || die "timed out after ${WAIT}s waiting for the build running in $CACHE"
  fi
  # the build we waited for may have done it
  built && return 0
  compile
}

compile() {
  command -v go >/dev/null || die "go is required to build the control plane (apt-get install -y golang-go, go >= 1.26)"
  command -v flock >/dev/null || die "flock is required (apt-get install -y util-linux)"
  local need_kb=$((6 * 1024 * 1024)) avail_kb jobs
  mkdir -p "$CACHE/mod" "$BIN"
  avail_kb=$(df -Pk "$CACHE" | awk 'NR==2{print $4}')
  [ "$avail_kb" -ge "$need_kb" ] ||
    die "need 6 GiB free under $CACHE for modules and build cache, have $((avail_kb / 1024)) MiB"
  # Parallel compiles: every core up to 8 (each can take ~1 GiB on the largest packages).
  jobs=${ONDECK_K8S_BUILD_JOBS:-$(nproc)}
  [ "$jobs" -le 8 ] || jobs=8
  local t0=$SECONDS
  log "building Kubernetes v$K8S and kwok $KWOK into $BIN (once; 30-60 min on 2 cores)"
  export GOTOOLCHAIN=local GOFLAGS="-mod=mod -p=$jobs" CGO_ENABLED=0
  (
    cd "$CACHE/mod"
    rm -f go.mod go.sum
    go mod init ondeck.local/k8sbin >/dev/null 2>&1
    local modfile stg minor etcd_v vf
    stg=0.${K8S#1.}
    minor=$(cut -d. -f2 <<<"$K8S")
    modfile=$(go mod download -json "k8s.io/kubernetes@v$K8S" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
    [ -f "$modfile" ] || die "the module proxy did not serve k8s.io/kubernetes@v$K8S"
    # kubernetes' go.mod replaces each staging module (k8s.io/api, ...) by a local
    # path at v0.0.0; point each at its published v0.MINOR.PATCH instead.
    for m in $(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$modfile"); do
      go mod edit -replace="$m=$m@v$stg"
    done
    etcd_v=$(awk '$1 == "go.etcd.io/etcd/client/v3" {print $2}' "$modfile")
    go get "k8s.io/kubernetes@v$K8S" "go.etcd.io/etcd/server/v3@$etcd_v"
    vf="-X k8s.io/component-base/version.gitVersion=v$K8S -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
    # Only the binaries a test cluster runs, stripped (-s -w) and path-independent
    # (-trimpath); one `go build` so the packages they share compile once.
    go build -trimpath -ldflags "-s -w $vf" -o "$BIN/" k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler
    go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
    # kwok uses the same client libraries (k8s.io/* v0.MINOR): built in this module, it
    # reuses what is compiled already. Should its code not build against them, it is
    # built as its own module instead.
    local stages
    if go get "sigs.k8s.io/kwok@$KWOK" &&
      go build -trimpath -ldflags "-s -w" -o "$BIN/kwok" sigs.k8s.io/kwok/cmd/kwok; then
      log "kwok built with the cluster's client libraries"
    else
      log "kwok did not build in the shared module; building it as its own module"
      GOFLAGS="-p=$jobs" GOBIN=$BIN go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK"
    fi
    # the stage files the simulated node uses, kept next to the binaries
    stages=$(go mod download -json "sigs.k8s.io/kwok@$KWOK" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
    rm -rf "$BIN/stages"
    cp -r "$stages/kustomize/stage" "$BIN/stages"
    chmod -R u+w "$BIN/stages"  # module files are read-only: a rebuild must remove them
  )
  for c in "${COMPONENTS[@]}"; do [ -x "$BIN/$c" ] || die "build finished without $BIN/$c"; done
  echo "k8s=v$K8S kwok=$KWOK seconds=$((SECONDS - t0)) jobs=$jobs" >"$STAMP"
  log "built in $((SECONDS - t0)) s"
}

build_start() {
  built && return 0
  mkdir -p "$CACHE"
  # a build already holding the lock is left to finish; `build` will wait for it
  if ! flock -n "$LOCK" true; then
    log "a build is already running in $CACHE"
    return 0
  fi
  log "building in the background (log: $CACHE/build.log)"
  setsid nice -n 10 bash "$0" build >"$CACHE/build.log" 2>&1 </dev/null &
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# launch DIR NAME ARGV...: start a component detached, its argv kept for `restart`.
launch() {
  local dir=$1 name=$2
  shift 2
  printf '%s\0' "$@" >"$dir/run/$name.argv"
  setsid "$@" >>"$dir/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/run/$name.pid"
}

relaunch() {
  local dir=$1 name=$2 argv=()
  mapfile -d '' argv <"$dir/run/$name.argv"
  launch "$dir" "$name" "${argv[@]}"
}

alive() { [ -f "$1/run/$2.pid" ] && kill -0 "$(cat "$1/run/$2.pid")" 2>/dev/null; }

# wait_until DIR SECONDS WHAT CMD...: retry CMD until it succeeds; stop all and fail after.
wait_until() {
  local dir=$1 limit=$2 what=$3
  shift 3
  local deadline=$((SECONDS + limit)) c
  until "$@" >/dev/null 2>&1; do
    for c in "${COMPONENTS[@]}"; do
      if [ -f "$dir/run/$c.pid" ] && ! alive "$dir" "$c"; then
        tail -n 20 "$dir/logs/$c.log" >&2
        stop "$dir"
        die "$c exited while waiting for $what (log: $dir/logs/$c.log)"
      fi
    done
    if [ $SECONDS -ge $deadline ]; then
      for c in "${COMPONENTS[@]}"; do
        [ -f "$dir/logs/$c.log" ] && tail -n 5 "$dir/logs/$c.log" >&2
      done
      stop "$dir"
      die "timed out after ${limit}s waiting for $what (logs: $dir/logs)"
    fi
    sleep 0.5
  done
}

kc() { kubectl --kubeconfig="$DIR/kubeconfig" --request-timeout=20s "$@"; }

start() {
  DIR=$(mkdir -p "$1" && cd "$1" && pwd)
  build
  if alive "$DIR" kube-apiserver; then die "already running in $DIR"; fi
  command -v kubectl >/dev/null || die "kubectl is required (apt-get install -y kubernetes-client)"
  command -v openssl >/dev/null || die "openssl is required (apt-get install -y openssl)"
  mkdir -p "$DIR/run" "$DIR/logs" "$DIR/pki" "$DIR/etcd"
  local etcd_port peer_port api_port kwok_port token stages
  etcd_port=$(free_port)
  peer_port=$(free_port)
  api_port=$(free_port)
  kwok_port=$(free_port)
  [ -f "$DIR/pki/sa.key" ] || openssl genrsa -out "$DIR/pki/sa.key" 2048 2>/dev/null
  token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$token,ondeck-admin,ondeck-admin,\"system:masters\"" >"$DIR/pki/tokens.csv"
  chmod 600 "$DIR/pki/tokens.csv"

  launch "$DIR" etcd "$BIN/etcd" --name=default --data-dir="$DIR/etcd" --unsafe-no-fsync \
    --listen-client-urls="http://127.0.0.1:$etcd_port" \
    --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="default=http://127.0.0.1:$peer_port" --log-level=warn
  wait_until "$DIR" 60 "etcd" curl -fsS "http://127.0.0.1:$etcd_port/health"

  launch "$DIR" kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 --secure-port="$api_port" --cert-dir="$DIR/pki" \
    --token-auth-file="$DIR/pki/tokens.csv" --authorization-mode=RBAC --allow-privileged=true \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$DIR/pki/sa.key" \
    --service-account-signing-key-file="$DIR/pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --endpoint-reconciler-type=none
  wait_until "$DIR" 180 "the API server's certificate" test -s "$DIR/pki/apiserver.crt"

  cat >"$DIR/kubeconfig.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ondeck-test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $DIR/pki/apiserver.crt
users:
- name: ondeck-admin
  user:
    token: $token
contexts:
- name: ondeck-test
  context: {cluster: ondeck-test, user: ondeck-admin}
current-context: ondeck-test
EOF
  chmod 600 "$DIR/kubeconfig.tmp"
  mv "$DIR/kubeconfig.tmp" "$DIR/kubeconfig"
  wait_until "$DIR" 180 "the API server to be ready" kc get --raw=/readyz

  launch "$DIR" kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$DIR/kubeconfig" --bind-address=127.0.0.1 --secure-port=0 \
    --leader-elect=false --service-account-private-key-file="$DIR/pki/sa.key" \
    --root-ca-file="$DIR/pki/apiserver.crt" --controllers='*' \
    --enable-hostpath-provisioner=true
  launch "$DIR" kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$DIR/kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false
  stages=$BIN/stages
  # a cache built before the stages were kept there: kwok's module in the Go module cache
  [ -d "$stages" ] || stages=$(GOTOOLCHAIN=local go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK/kustomize/stage
  launch "$DIR" kwok "$BIN/kwok" --kubeconfig="$DIR/kubeconfig" --manage-all-nodes=true \
    --server-address="127.0.0.1:$kwok_port" --node-lease-duration-seconds=40 \
    -c "$stages/node/fast/node-initialize.yaml" \
    -c "$stages/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
    -c "$stages/pod/fast/pod-ready.yaml" -c "$stages/pod/fast/pod-complete.yaml" \
    -c "$stages/pod/fast/pod-delete.yaml"

  kc apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels:
    kubernetes.io/hostname: kwok-node-0
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
EOF
  # PersistentVolumeClaims bind through the controller manager's hostPath provisioner
  # (test clusters only); KWOK pods never read the directory it makes.
  kc apply -f - >/dev/null <<'EOF'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF
  wait_until "$DIR" 120 "the simulated node to be Ready" \
    kc wait --for=condition=Ready node/kwok-node-0 --timeout=2s
  wait_until "$DIR" 120 "the default service account" kc -n default get serviceaccount default
  kc -n default create deployment ondeck-probe --image=registry.invalid/probe:1 >/dev/null
  wait_until "$DIR" 120 "a Deployment to become Available" \
    kc -n default wait --for=condition=Available deployment/ondeck-probe --timeout=2s
  kc -n default delete deployment ondeck-probe --wait=false >/dev/null
  log "running in $DIR (kubeconfig: $DIR/kubeconfig, API https://127.0.0.1:$api_port)"
}

stop_one() {
  local dir=$1 c=$2 pid i
  [ -f "$dir/run/$c.pid" ] || return 0
  pid=$(cat "$dir/run/$c.pid")
  if kill -TERM "$pid" 2>/dev/null; then
    for i in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/run/$c.pid"
}

stop() {
  local dir=$1 c volumes="" v
  [ -d "$dir/run" ] || return 0
  # the hostPath provisioner's directories of this cluster, removed once it is down
  if alive "$dir" kube-apiserver && [ -f "$dir/kubeconfig" ]; then
    volumes=$(kubectl --kubeconfig="$dir/kubeconfig" --request-timeout=10s get pv \
      -o jsonpath='{.items[*].spec.hostPath.path}' 2>/dev/null || true)
  fi
  for c in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
    stop_one "$dir" "$c"
  done
  for v in $volumes; do
    case "$v" in /tmp/hostpath_pv/*) rm -rf -- "$v" ;; esac
  done
}

case "${1:-}" in
  build) build ;;
  build-start) build_start ;;
  start) start "${2:?usage: $0 start DIR}" ;;
  stop) stop "${2:?usage: $0 stop DIR}" ;;
  # restart DIR COMPONENT: stop one component and start it again with the same argv
  restart) stop_one "${2:?}" "${3:?}" && relaunch "$2" "$3" ;;
  *)
    echo "usage: $0 build | build-start | start DIR | stop DIR | restart DIR COMPONENT" >&2
    exit 2
    ;;
esac
