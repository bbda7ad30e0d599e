#!/usr/bin/env bash
# A real Kubernetes control plane for StreamSpace tests, owned by this repo:
# etcd + kube-apiserver + kube-controller-manager + kube-scheduler (built from
# k8s.io/kubernetes via tests/k8s/build/kubernetes/go.mod) + KWOK fake nodes.
#
#   tests/k8s/cluster.sh build    build and cache the binaries (no-op when cached)
#   tests/k8s/cluster.sh start    start the cluster (idempotent), wait until usable
#   tests/k8s/cluster.sh env      print `export KUBECONFIG=...` lines (eval them)
#   tests/k8s/cluster.sh status   print what is running; exit 1 if not healthy
#   tests/k8s/cluster.sh stop     kill every component and remove the state dir
#
# Environment:
#   STREAMSPACE_CACHE        binary cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/streamspace)
#   STREAMSPACE_K8S_DIR      state dir (default /tmp/streamspace-k8s)
#   STREAMSPACE_K8S_PORT     kube-apiserver port (default 56443)
#   STREAMSPACE_K8S_ETCD_PORT etcd client port (default 52379); peer port is +1
#   STREAMSPACE_K8S_NODES    number of KWOK nodes (default 2)
#   STREAMSPACE_K8S_TIMEOUT  seconds to wait for readiness (default 120)
set -euo pipefail

ME="cluster.sh"
log() { echo "[$ME] $*" >&2; }
die() { echo "[$ME] ERROR: $*" >&2; exit 1; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD_MOD="$HERE/build/kubernetes"
KWOK_STAGES="$HERE/kwok-stages.yaml"

CACHE="${STREAMSPACE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamspace}"
STATE="${STREAMSPACE_K8S_DIR:-/tmp/streamspace-k8s}"
API_PORT="${STREAMSPACE_K8S_PORT:-56443}"
ETCD_PORT="${STREAMSPACE_K8S_ETCD_PORT:-52379}"
ETCD_PEER_PORT=$((ETCD_PORT + 1))
NODES="${STREAMSPACE_K8S_NODES:-2}"
T0=$SECONDS
TIMEOUT="${STREAMSPACE_K8S_TIMEOUT:-120}"

KWOK_VERSION="v0.8.0"
# Components in start order (stop goes in reverse).
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

# ---------------------------------------------------------------- versions / paths

[[ -f "$BUILD_MOD/go.mod" ]] || die "missing $BUILD_MOD/go.mod (regenerate with tests/k8s/build/gen-gomod.sh v1.N.P)"
K8S_VERSION="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$BUILD_MOD/go.mod")"
ETCD_VERSION="$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v/ {print $2; exit}' "$BUILD_MOD/go.mod")"
[[ -n "$K8S_VERSION" && -n "$ETCD_VERSION" ]] || die "cannot read k8s.io/kubernetes / etcd versions from $BUILD_MOD/go.mod"

bin_path() { # bin_path NAME -> cached binary path for the pinned version
  case "$1" in
    kube-apiserver|kube-controller-manager|kube-scheduler) echo "$CACHE/bin/$1-$K8S_VERSION/$1" ;;
    etcd) echo "$CACHE/bin/etcd-$ETCD_VERSION/etcd" ;;
    kwok) echo "$CACHE/bin/kwok-$KWOK_VERSION/kwok" ;;
    *) die "unknown component $1" ;;
  esac
}

find_go() {
  if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
    export PATH="/usr/local/go/bin:$PATH"
  fi
  command -v go >/dev/null 2>&1 || die "go is not installed (need Go 1.26.x on PATH or in /usr/local/go/bin)"
  export GOTOOLCHAIN=local
  local v; v="$(go env GOVERSION)"
  case "$v" in
    go1.26|go1.26.*) ;;
    *) die "need Go 1.26.x to build Kubernetes $K8S_VERSION, found $v (Go 1.27 breaks the OpenAPI build; set PATH to a Go 1.26)" ;;
  esac
}

# ---------------------------------------------------------------- build

install_bin() { # install_bin SRC NAME : atomically move a built binary into the cache
  local src="$1" dst; dst="$(bin_path "$2")"
  mkdir -p "$(dirname "$dst")"
  mv -f "$src" "$dst.tmp.$$"
  mv -f "$dst.tmp.$$" "$dst"
}

cmd_build() {
  local missing=() name
  for name in "${COMPONENTS[@]}"; do
    [[ -x "$(bin_path "$name")" ]] || missing+=("$name")
  done
  if (( ${#missing[@]} == 0 )); then
    log "binaries cached: kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION (in $CACHE/bin)"
    return 0
  fi
  find_go
  mkdir -p "$CACHE/bin"
  # One build at a time per cache (parallel test runs would otherwise race).
  exec 9>"$CACHE/.k8s-build.lock"
  flock 9 || die "cannot lock $CACHE/.k8s-build.lock"
  missing=()
  for name in "${COMPONENTS[@]}"; do
    [[ -x "$(bin_path "$name")" ]] || missing+=("$name")
  done
  (( ${#missing[@]} == 0 )) && { flock -u 9; return 0; }

  local tmp; tmp="$(mktemp -d "$CACHE/build.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  local start=$SECONDS
  local common=(-p 2 -trimpath)
  export CGO_ENABLED=0 GOFLAGS="-buildvcs=false"

  local kube_pkgs=() kube_names=()
  for name in kube-apiserver kube-controller-manager kube-scheduler; do
    if [[ " ${missing[*]} " == *" $name "* ]]; then
      kube_pkgs+=("k8s.io/kubernetes/cmd/$name"); kube_names+=("$name")
    fi
  done
  if (( ${#kube_pkgs[@]} )); then
    local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
    local ld="-s -w" key val
    for key in gitVersion gitMajor gitMinor gitTreeState buildDate; do
      case "$key" in
        gitVersion) val="$K8S_VERSION" ;;
        gitMajor) val="1" ;;
        gitMinor) val="$minor" ;;
        gitTreeState) val="clean" ;;
        buildDate) val="1970-01-01T00:00:00Z" ;;
      esac
      ld+=" -X 'k8s.io/component-base/version.$key=$val' -X 'k8s.io/client-go/pkg/version.$key=$val'"
    done
    log "building ${kube_names[*]} $K8S_VERSION with $(go env GOVERSION) (cold: several minutes on 2 cores)"
    (cd "$BUILD_MOD" && go build "${common[@]}" -ldflags "$ld" -o "$tmp/" "${kube_pkgs[@]}") \
      || die "go build of ${kube_names[*]} failed (module $BUILD_MOD; is the Go module proxy reachable?)"
    for name in "${kube_names[@]}"; do install_bin "$tmp/$name" "$name"; done
  fi
  if [[ " ${missing[*]} " == *" etcd "* ]]; then
    log "building etcd $ETCD_VERSION (go.etcd.io/etcd/server/v3, the version Kubernetes $K8S_VERSION pins)"
    (cd "$BUILD_MOD" && go build "${common[@]}" -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3) \
      || die "go build of etcd failed"
    install_bin "$tmp/etcd" etcd
  fi
  if [[ " ${missing[*]} " == *" kwok "* ]]; then
    log "building kwok $KWOK_VERSION (go install sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION)"
    mkdir -p "$tmp/kwok-bin"
    GOBIN="$tmp/kwok-bin" GOFLAGS="-buildvcs=false -mod=mod" \
      go install "${common[@]}" -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" \
      || die "go install of kwok $KWOK_VERSION failed"
    install_bin "$tmp/kwok-bin/kwok" kwok
  fi
  flock -u 9
  rm -rf "$tmp"
  log "built ${missing[*]} in $((SECONDS - start))s"
  "$(bin_path etcd)" --version | head -1 >&2
  "$(bin_path kube-apiserver)" --version >&2
  "$(bin_path kwok)" --version 2>&1 | head -1 >&2 || true
}

# ---------------------------------------------------------------- process helpers

pidfile() { echo "$STATE/pids/$1.pid"; }

pid_running() { # pid_running PID : exists and is not a zombie
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

ours() { # ours PID NAME : PID runs component NAME against this state dir
  local exe cmdline
  exe="$(readlink "/proc/$1/exe" 2>/dev/null)" || return 1
  exe="${exe% (deleted)}"
  [[ "${exe##*/}" == "$2" ]] || return 1
  cmdline="$(tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *"$STATE/"* ]]
}

alive() { # alive NAME : the recorded pid still runs that component of this cluster
  local f pid; f="$(pidfile "$1")"
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f" 2>/dev/null)" || return 1
  [[ -n "$pid" ]] && pid_running "$pid" && ours "$pid" "$1"
}

launch() { # launch NAME ARGS... : start in background with its own session, log + pid files
  local name="$1"; shift
  local bin; bin="$(bin_path "$name")"
  [[ -x "$bin" ]] || die "$bin is missing: run '$0 build'"
  log "starting $name"
  setsid "$bin" "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null 8>&- 9>&- &
  echo $! > "$(pidfile "$name")"
}

tail_logs() {
  local name
  for name in "$@"; do
    [[ -f "$STATE/logs/$name.log" ]] || continue
    echo "----- last lines of $STATE/logs/$name.log -----" >&2
    tail -n 25 "$STATE/logs/$name.log" >&2
  done
}

fail_start() {
  log "ERROR: $*"
  tail_logs "${COMPONENTS[@]}"
  rm -rf "$STATE-failed-logs"
  cp -r "$STATE/logs" "$STATE-failed-logs" 2>/dev/null && log "full logs kept in $STATE-failed-logs"
  log "stopping the partially started cluster"
  cmd_stop >/dev/null 2>&1 || true
  exit 1
}

wait_for() { # wait_for DESCRIPTION DEADLINE_SECONDS COMMAND... ; also checks components stay alive
  local what="$1" deadline=$((SECONDS + $2)); shift 2
  until "$@" >/dev/null 2>&1; do
    local name
    for name in "${COMPONENTS[@]}"; do
      if [[ -f "$(pidfile "$name")" ]] && ! alive "$name"; then
        fail_start "$name exited while waiting for $what"
      fi
    done
    (( SECONDS < deadline )) || fail_start "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.2
  done
  log "  $what: ok (t+$((SECONDS - T0))s)"
}

port_free() { # true when nothing listens on 127.0.0.1:PORT
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

KUBECTL=""
find_kubectl() {
  [[ -n "$KUBECTL" ]] && return 0
  if command -v kubectl >/dev/null 2>&1; then
    KUBECTL="$(command -v kubectl)"
  else
    local repo_tools; repo_tools="$(cd "$HERE/../.." && pwd)/scripts/tools.sh"
    [[ -x "$repo_tools" ]] || die "kubectl not found and $repo_tools is missing"
    eval "$("$repo_tools" env kubectl)"
    command -v kubectl >/dev/null 2>&1 || die "kubectl not found even after scripts/tools.sh"
    KUBECTL="$(command -v kubectl)"
  fi
}
kc() { "$KUBECTL" --kubeconfig="$STATE/kubeconfig" "$@"; }

# ---------------------------------------------------------------- certificates / kubeconfigs

ensure_openssl() {
  command -v openssl >/dev/null 2>&1 && return 0
  log "openssl not found: installing the Debian package"
  (apt-get update -qq && apt-get install -y -qq openssl) >&2 || die "openssl is missing and apt-get install openssl failed"
}

gen_pki() {
  local p="$STATE/pki"
  mkdir -p "$p"
  ensure_openssl
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 3650 -subj "/CN=streamspace-test-k8s-ca" \
    -keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
  cat > "$p/apiserver.ext" <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -subj "/CN=kube-apiserver" \
    -keyout "$p/apiserver.key" -out "$p/apiserver.csr" 2>/dev/null
  openssl x509 -req -sha256 -days 3650 -in "$p/apiserver.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" \
    -CAcreateserial -extfile "$p/apiserver.ext" -out "$p/apiserver.crt" 2>/dev/null
  # Front proxy (aggregation layer): its own CA, so no API client cert can act as a proxy.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 3650 -subj "/CN=streamspace-test-front-proxy-ca" \
    -keyout "$p/front-proxy-ca.key" -out "$p/front-proxy-ca.crt" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' \
    > "$p/front-proxy-client.ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -subj "/CN=front-proxy-client" \
    -keyout "$p/front-proxy-client.key" -out "$p/front-proxy-client.csr" 2>/dev/null
  openssl x509 -req -sha256 -days 3650 -in "$p/front-proxy-client.csr" -CA "$p/front-proxy-ca.crt" \
    -CAkey "$p/front-proxy-ca.key" -CAcreateserial -extfile "$p/front-proxy-client.ext" \
    -out "$p/front-proxy-client.crt" 2>/dev/null
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$p/sa.key" 2>/dev/null
  openssl pkey -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
  # Static tokens: user,uid,"groups". The controller manager and scheduler use the
  # identities the bootstrap RBAC policy grants; admin and kwok are system:masters.
  local admin kcm sched kwok
  admin="$(openssl rand -hex 24)"; kcm="$(openssl rand -hex 24)"
  sched="$(openssl rand -hex 24)"; kwok="$(openssl rand -hex 24)"
  cat > "$p/tokens.csv" <<EOF
$admin,admin,admin,"system:masters"
$kcm,system:kube-controller-manager,system:kube-controller-manager
$sched,system:kube-scheduler,system:kube-scheduler
$kwok,kwok,kwok,"system:masters"
EOF
  chmod 600 "$p"/*.key "$p/tokens.csv"
  write_kubeconfig "$STATE/kubeconfig" admin "$admin"
  write_kubeconfig "$STATE/kube-controller-manager.kubeconfig" system:kube-controller-manager "$kcm"
  write_kubeconfig "$STATE/kube-scheduler.kubeconfig" system:kube-scheduler "$sched"
  write_kubeconfig "$STATE/kwok.kubeconfig" kwok "$kwok"
}

write_kubeconfig() { # write_kubeconfig FILE USER TOKEN
  local ca; ca="$(base64 -w0 < "$STATE/pki/ca.crt")"
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: streamspace-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $ca
users:
- name: $2
  user:
    token: $3
contexts:
- name: streamspace-test
  context:
    cluster: streamspace-test
    user: $2
current-context: streamspace-test
EOF
  chmod 600 "$1"
}

# ---------------------------------------------------------------- health checks

readyz() { # readyz PORT [PATH] : 200 from https://127.0.0.1:PORT/PATH
  local path="${2:-readyz}" token
  token="$(awk -F, '$2 == "admin" {print $1}' "$STATE/pki/tokens.csv")"
  [[ "$(curl -sk -o /dev/null -w '%{http_code}' --max-time 2 -H "Authorization: Bearer $token" \
        "https://127.0.0.1:$1/$path")" == 200 ]]
}

etcd_healthy() {
  [[ "$(curl -s --max-time 2 "http://127.0.0.1:$ETCD_PORT/health")" == *'"health":"true"'* ]]
}

nodes_ready() {
  local ready
  ready="$(kc get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c '^True$' || true)"
  [[ "$ready" -ge "$NODES" ]]
}

default_sa_exists() { kc -n default get serviceaccount default; }

healthy() {
  local name
  for name in "${COMPONENTS[@]}"; do alive "$name" || return 1; done
  [[ -f "$STATE/pki/tokens.csv" ]] && readyz "$API_PORT" && nodes_ready
}

# ---------------------------------------------------------------- start / stop

create_nodes() {
  local i manifest=""
  for ((i = 0; i < NODES; i++)); do
    manifest+="apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    node.alpha.kubernetes.io/ttl: \"0\"
    kwok.x-k8s.io/node: fake
  labels:
    beta.kubernetes.io/arch: amd64
    beta.kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: \"\"
    type: kwok
spec:
  taints: []
status:
  addresses:
  - type: InternalIP
    address: 10.2.0.$((i + 1))
  - type: Hostname
    address: kwok-node-$i
  allocatable:
    cpu: \"8\"
    memory: 32Gi
    pods: \"110\"
  capacity:
    cpu: \"8\"
    memory: 32Gi
    pods: \"110\"
  nodeInfo:
    architecture: amd64
    kubeletVersion: fake
    kubeProxyVersion: fake
    operatingSystem: linux
---
"
  done
  printf '%s' "$manifest" | kc apply --server-side --field-manager=streamspace-test -f - >/dev/null \
    || fail_start "could not create the KWOK nodes"
}

cmd_start() {
  find_kubectl
  if healthy; then
    log "already running (state $STATE, apiserver https://127.0.0.1:$API_PORT)"
    cmd_env
    return 0
  fi
  if [[ -d "$STATE" ]]; then
    log "found a stale or partial cluster in $STATE: stopping it first"
    cmd_stop
  fi
  cmd_build
  if ! command -v curl >/dev/null 2>&1; then
    log "curl not found: installing the Debian package"
    (apt-get update -qq && apt-get install -y -qq curl) >&2 || die "curl is missing and apt-get install curl failed"
  fi
  command -v setsid >/dev/null 2>&1 || die "setsid is missing (apt-get install util-linux)"
  [[ -f "$KWOK_STAGES" ]] || die "missing $KWOK_STAGES"
  local port
  for port in "$API_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT"; do
    port_free "$port" || die "port 127.0.0.1:$port is already in use (set STREAMSPACE_K8S_PORT / STREAMSPACE_K8S_ETCD_PORT)"
  done

  T0=$SECONDS
  mkdir -p "$STATE"/{logs,pids,etcd}
  chmod 700 "$STATE/etcd"
  gen_pki

  launch etcd \
    --name=streamspace-test \
    --data-dir="$STATE/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="streamspace-test=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state=new \
    --unsafe-no-fsync=true \
    --log-level=warn
  wait_for "etcd health" "$TIMEOUT" etcd_healthy

  launch kube-apiserver \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$API_PORT" \
    --tls-cert-file="$STATE/pki/apiserver.crt" \
    --tls-private-key-file="$STATE/pki/apiserver.key" \
    --client-ca-file="$STATE/pki/ca.crt" \
    --requestheader-client-ca-file="$STATE/pki/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-uid-headers=X-Remote-Uid \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$STATE/pki/front-proxy-client.crt" \
    --proxy-client-key-file="$STATE/pki/front-proxy-client.key" \
    --cert-dir="$STATE/pki/apiserver-certs" \
    --endpoint-reconciler-type=none \
    --service-cluster-ip-range=10.0.0.0/24 \
    --token-auth-file="$STATE/pki/tokens.csv" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$STATE/pki/sa.pub" \
    --service-account-signing-key-file="$STATE/pki/sa.key" \
    --allow-privileged=true \
    --profiling=false \
    --v=1
  wait_for "kube-apiserver /readyz" "$TIMEOUT" readyz "$API_PORT"

  # The controller manager, scheduler and kwok serve no port (--secure-port=0, no
  # --server-address): a port bound this late in the ephemeral range (32768-60999) can
  # already be the source port of a loopback connection (apiserver -> etcd), and then
  # the bind fails.
  launch kube-controller-manager \
    --kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
    --secure-port=0 \
    --controllers='*' \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$STATE/pki/sa.key" \
    --root-ca-file="$STATE/pki/ca.crt" \
    --leader-elect=false \
    --kube-api-qps=200 \
    --kube-api-burst=400 \
    --profiling=false \
    --v=1
  launch kube-scheduler \
    --kubeconfig="$STATE/kube-scheduler.kubeconfig" \
    --secure-port=0 \
    --leader-elect=false \
    --kube-api-qps=200 \
    --kube-api-burst=400 \
    --profiling=false \
    --v=1
  launch kwok \
    --kubeconfig="$STATE/kwok.kubeconfig" \
    --config="$KWOK_STAGES" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --manage-nodes-with-label-selector= \
    --disregard-status-with-annotation-selector=kwok.x-k8s.io/status=custom \
    --disregard-status-with-label-selector= \
    --cidr=10.1.0.1/16 \
    --node-ip=10.1.0.1 \
    --node-lease-duration-seconds=40

  create_nodes
  wait_for "$NODES KWOK nodes Ready" "$TIMEOUT" nodes_ready
  # Created by the controller manager: proves it is up (its serving port is off, see above).
  wait_for "the default ServiceAccount" "$TIMEOUT" default_sa_exists
  log "cluster ready in $((SECONDS - T0))s: kubernetes $K8S_VERSION at https://127.0.0.1:$API_PORT, $NODES KWOK nodes"
  cmd_env
}

leftovers() { # pids of any of our components still running against this state dir
  local pid name
  for pid in $(pgrep -f -- "$STATE/" || true); do
    for name in "${COMPONENTS[@]}"; do
      if ours "$pid" "$name"; then echo "$pid"; fi
    done
  done
}

cmd_stop() {
  local i name pid pids=()
  # SIGTERM to every component at once (the state is thrown away, so no ordering),
  # SIGKILL whatever still runs 2 s later (the apiserver and etcd drain for longer).
  for name in "${COMPONENTS[@]}"; do
    if alive "$name"; then
      pid="$(cat "$(pidfile "$name")")"
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$(pidfile "$name")"
  done
  for ((i = 0; i < 20; i++)); do
    local any=0
    for pid in "${pids[@]}"; do if pid_running "$pid"; then any=1; fi; done
    (( any )) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if pid_running "$pid"; then
      log "pid $pid still running 2s after SIGTERM: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  # Anything of ours still running against this state dir (lost pid file, crash mid-start).
  for pid in $(leftovers); do
    log "killing leftover pid $pid ($(readlink -f "/proc/$pid/exe" 2>/dev/null || echo '?'))"
    kill -KILL "$pid" 2>/dev/null || true
  done
  for ((i = 0; i < 50; i++)); do [[ -z "$(leftovers)" ]] && break; sleep 0.1; done
  [[ -z "$(leftovers)" ]] || die "processes still running after stop: $(leftovers | tr '\n' ' ')"
  # Killed processes stay zombies until their parent (often init) reaps them: give it a
  # moment so that `pgrep kube-apiserver` right after stop finds nothing.
  for ((i = 0; i < 30; i++)); do
    local left=0
    for pid in "${pids[@]}"; do if kill -0 "$pid" 2>/dev/null; then left=1; fi; done
    (( left )) || break
    sleep 0.1
  done
  if [[ -d "$STATE" ]]; then
    rm -rf "$STATE"
    log "stopped; removed $STATE"
  else
    log "not running (no $STATE)"
  fi
}

cmd_env() {
  echo "export KUBECONFIG=$STATE/kubeconfig"
  echo "export STREAMSPACE_K8S_DIR=$STATE"
}

cmd_status() {
  local name ok=0
  for name in "${COMPONENTS[@]}"; do
    if alive "$name"; then
      echo "$name: running (pid $(cat "$(pidfile "$name")"))"
    else
      echo "$name: not running"; ok=1
    fi
  done
  if [[ -f "$STATE/pki/tokens.csv" ]] && readyz "$API_PORT"; then
    echo "kube-apiserver: https://127.0.0.1:$API_PORT ready ($K8S_VERSION)"
    find_kubectl
    kc get nodes -o wide 2>/dev/null || ok=1
  else
    echo "kube-apiserver: not ready"; ok=1
  fi
  echo "kubeconfig: $STATE/kubeconfig"
  return $ok
}

lock_state() { # one start/stop at a time per state dir (parallel test binaries call start)
  mkdir -p "$(dirname "$STATE")"
  exec 8>"$STATE.lock"
  flock -w 600 8 || die "timed out waiting for the lock $STATE.lock"
}

case "${1:-}" in
  build) cmd_build ;;
  start) lock_state; cmd_start ;;
  stop) lock_state; cmd_stop ;;
  env) cmd_env ;;
  status) cmd_status ;;
  versions) echo "kubernetes=$K8S_VERSION etcd=$ETCD_VERSION kwok=$KWOK_VERSION" ;;
  *) echo "usage: $0 build|start|stop|env|status|versions" >&2; exit 2 ;;
esac
