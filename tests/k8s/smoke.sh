#!/usr/bin/env bash
# End-to-end check of tests/k8s/cluster.sh: start, run workloads, stop, verify nothing is left.
#   tests/k8s/smoke.sh          (leaves a cluster that was already running alone: uses its own ports/dir)
set -euo pipefail
ME="smoke.sh"
log() { echo "[$ME] $*" >&2; }
die() { echo "[$ME] FAIL: $*" >&2; exit 1; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export STREAMSPACE_K8S_DIR="${SMOKE_K8S_DIR:-/tmp/streamspace-k8s-smoke}"
export STREAMSPACE_K8S_PORT="${SMOKE_K8S_PORT:-57443}"
export STREAMSPACE_K8S_ETCD_PORT="${SMOKE_K8S_ETCD_PORT:-53379}"

eval "$("$REPO/scripts/tools.sh" env kubectl)"
"$HERE/cluster.sh" build
t0=$SECONDS
eval "$("$HERE/cluster.sh" start)"
log "started in $((SECONDS - t0))s"
trap '"$HERE/cluster.sh" stop >/dev/null 2>&1 || true' EXIT

wait_until() { # wait_until SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what="$2"; shift 2
  until "$@"; do (( SECONDS < deadline )) || die "timed out: $what"; sleep 0.3; done
  log "ok: $what"
}

kubectl create deployment nginx --image=nginx >/dev/null
nginx_running() {
  kubectl get pods -l app=nginx -o jsonpath='{range .items[*]}{.status.phase} {.spec.nodeName}{"\n"}{end}' \
    | grep -Eq '^Running kwok-node-[0-9]+$'
}
wait_until 60 "Deployment -> ReplicaSet -> Pod Running on a KWOK node" nginx_running

kubectl apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: too-big}
spec:
  containers:
  - {name: c, image: busybox, resources: {requests: {cpu: "100"}}}
EOF
unschedulable() {
  [[ "$(kubectl get pod too-big -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].reason}')" == Unschedulable ]]
}
wait_until 30 "a 100-CPU pod is Unschedulable" unschedulable
sleep 2
[[ "$(kubectl get pod too-big -o jsonpath='{.status.phase}')" == Pending ]] || die "100-CPU pod is not Pending"

kubectl apply --server-side --field-manager=smoke -f - >/dev/null <<'EOF'
apiVersion: v1
kind: ConfigMap
metadata: {name: smoke}
data: {a: "1"}
EOF
[[ "$(kubectl get cm smoke -o jsonpath='{.data.a}')" == 1 ]] || die "server-side apply of a ConfigMap"
log "ok: server-side apply"

kubectl delete deployment nginx >/dev/null
gone() { [[ -z "$(kubectl get rs,pods -l app=nginx -o name)" ]]; }
wait_until 60 "garbage collection of ReplicaSet and Pods" gone

trap - EXIT
"$HERE/cluster.sh" stop
left="$(pgrep -f "$STREAMSPACE_K8S_DIR" || true)"
[[ -z "$left" ]] || die "processes left after stop: $left"
[[ ! -d "$STREAMSPACE_K8S_DIR" ]] || die "$STREAMSPACE_K8S_DIR still exists"
log "ok: nothing left running"
echo "5 passed, 0 failed"
