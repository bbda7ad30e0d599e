#!/usr/bin/env bash
# Lints the Helm chart offline, with the default values and with every
# chart/ci/*-values.yaml:
#   helm lint --strict CHART [-f VALUES]
#   helm template ... --include-crds | kubeconform -strict -summary
# kubeconform checks every rendered object against JSON schemas made locally
# (scripts/k8s-schemas.py; additionalProperties:false, so -strict refuses unknown
# fields at every level) from:
#   * the OpenAPI of the Kubernetes version the tests run (k8s.io/kubernetes in
#     tests/k8s/build/kubernetes/go.mod; its module zip holds api/openapi-spec),
#   * our CRDs (CHART/crds/*.yaml) for Session/Template objects,
#   * cert-manager's Certificate and Issuer CRDs (deploy/crds in the
#     github.com/cert-manager/cert-manager module at $CERT_MANAGER_VERSION),
#   * the Prometheus Operator's ServiceMonitor, PodMonitor and PrometheusRule
#     CRDs (example/prometheus-operator-crd in the
#     github.com/prometheus-operator/prometheus-operator module at
#     $PROMETHEUS_OPERATOR_VERSION) for the monitoring.* objects.
# Every kind the chart renders has a schema: none is skipped.
#
#   scripts/chart-lint.sh [CHART_DIR]    lint (default: chart)
#   scripts/chart-lint.sh schemas        make the cached schemas, print the
#                                        kubeconform -schema-location flags
#
# Schemas are cached in $CACHE/kubeconform-schemas/<source>-<version>-<converter
# hash>/; the tools come from scripts/tools.sh (helm, kubeconform). A missing
# tool (go, python3, helm, kubeconform) skips the lint with a message, and
# fails it under CI=true. Exits non-zero when any check fails.
set -euo pipefail

ME="chart-lint.sh"
log() { echo "[$ME] $*" >&2; }
die() { echo "[$ME] ERROR: $*" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${STREAMSPACE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamspace}"
CONVERTER="$ROOT/scripts/k8s-schemas.py"
CERT_MANAGER_VERSION="v1.21.2"
PROMETHEUS_OPERATOR_VERSION="v0.85.0"
PYYAML_VERSION="6.0.3"
K8S_GOMOD="$ROOT/tests/k8s/build/kubernetes/go.mod"
K8S_VERSION="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$K8S_GOMOD")"
[[ -n "$K8S_VERSION" ]] || die "cannot read the k8s.io/kubernetes version from $K8S_GOMOD"

in_ci() { [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; }
missing() { # missing WHAT : fail under CI, skip otherwise
  if in_ci; then die "$* (required under CI=true)"; fi
  log "SKIPPING the chart lint: $*"
  exit 0
}

find_go() {
  if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
    export PATH="/usr/local/go/bin:$PATH"
  fi
  command -v go >/dev/null 2>&1
}

# PyYAML reads the CRDs; pip-install it into the cache when python3 lacks it.
ensure_pyyaml() {
  command -v python3 >/dev/null 2>&1 || missing "python3 is not installed"
  python3 -c 'import yaml' 2>/dev/null && return 0
  local dir="$CACHE/bin/pyyaml-$PYYAML_VERSION"
  if ! PYTHONPATH="$dir" python3 -c 'import yaml' 2>/dev/null; then
    log "pip install PyYAML==$PYYAML_VERSION into $dir"
    rm -rf "$dir.tmp"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
      --target "$dir.tmp" "PyYAML==$PYYAML_VERSION" >&2 || missing "PyYAML is missing and pip install failed"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  export PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}"
}

module_dir() { # module_dir MODULE@VERSION : the module's directory in the Go module cache
  local json
  json="$(cd / && GOTOOLCHAIN=local go mod download -json "$1")" \
    || die "go mod download $1 failed (is the Go module proxy reachable?): $json"
  python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])' <<<"$json"
}

HASH="$(sha256sum "$CONVERTER" | cut -c1-12)"
SCHEMAS="$CACHE/kubeconform-schemas"
K8S_SCHEMAS="$SCHEMAS/k8s-$K8S_VERSION-$HASH"
CM_SCHEMAS="$SCHEMAS/cert-manager-$CERT_MANAGER_VERSION-k8s-$K8S_VERSION-$HASH"
PO_SCHEMAS="$SCHEMAS/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION-k8s-$K8S_VERSION-$HASH"

# make_schemas DIR COMMAND... : run COMMAND with $out (a temp dir), then move it to DIR
make_schemas() {
  local dir="$1"; shift
  [[ -f "$dir/.done" ]] && return 0
  mkdir -p "$SCHEMAS"
  out="$(mktemp -d "$SCHEMAS/.tmp.XXXXXX")"
  if ! "$@"; then rm -rf "$out"; die "making $dir failed"; fi
  touch "$out/.done"
  rm -rf "$dir"
  mv "$out" "$dir" 2>/dev/null || rm -rf "$out" # a parallel run got there first
}

gen_k8s() {
  local d; d="$(module_dir "k8s.io/kubernetes@$K8S_VERSION")"
  python3 "$CONVERTER" k8s "$d/api/openapi-spec/swagger.json" "$out" "$K8S_VERSION" >&2
}

gen_cert_manager() {
  local d; d="$(module_dir "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION")"
  local f crds=()
  for f in certificates issuers; do
    [[ -f "$d/deploy/crds/cert-manager.io_$f.yaml" ]] || die "$d/deploy/crds/cert-manager.io_$f.yaml is missing"
    crds+=("$d/deploy/crds/cert-manager.io_$f.yaml")
  done
  python3 "$CONVERTER" crds "$K8S_SCHEMAS/$K8S_VERSION-standalone" "$out" "${crds[@]}" >&2
}

gen_prometheus_operator() {
  local d; d="$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")"
  local f crds=()
  for f in servicemonitors podmonitors prometheusrules; do
    f="$d/example/prometheus-operator-crd/monitoring.coreos.com_$f.yaml"
    [[ -f "$f" ]] || die "$f is missing"
    crds+=("$f")
  done
  python3 "$CONVERTER" crds "$K8S_SCHEMAS/$K8S_VERSION-standalone" "$out" "${crds[@]}" >&2
}

ensure_schemas() {
  ensure_pyyaml
  if [[ ! -f "$K8S_SCHEMAS/.done" || ! -f "$CM_SCHEMAS/.done" || ! -f "$PO_SCHEMAS/.done" ]]; then
    local t0=$SECONDS
    find_go || missing "go is not installed (needed to fetch the Kubernetes OpenAPI, cert-manager and Prometheus Operator CRDs)"
    log "making kubeconform schemas: Kubernetes $K8S_VERSION, cert-manager $CERT_MANAGER_VERSION, Prometheus Operator $PROMETHEUS_OPERATOR_VERSION (cached in $SCHEMAS)"
    make_schemas "$K8S_SCHEMAS" gen_k8s
    make_schemas "$CM_SCHEMAS" gen_cert_manager
    make_schemas "$PO_SCHEMAS" gen_prometheus_operator
    log "schemas made in $((SECONDS - t0))s"
  fi
}

# The -schema-location flags (kubeconform tries them in order). $1: our CRD schema dir.
schema_flags() {
  SCHEMA_FLAGS=(
    -kubernetes-version "${K8S_VERSION#v}"
    -schema-location "$K8S_SCHEMAS/{{.NormalizedKubernetesVersion}}-standalone{{.StrictSuffix}}/{{.ResourceKind}}{{.KindSuffix}}.json"
    -schema-location "$1/{{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}{{.StrictSuffix}}.json"
    -schema-location "$CM_SCHEMAS/{{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}{{.StrictSuffix}}.json"
    -schema-location "$PO_SCHEMAS/{{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}{{.StrictSuffix}}.json"
  )
}

if [[ "${1:-}" == "schemas" ]]; then
  ensure_schemas
  schema_flags "<our-crd-schemas>"
  printf '%q ' "${SCHEMA_FLAGS[@]}"; echo
  exit 0
fi

CHART="$(cd "${1:-$ROOT/chart}" && pwd)" || die "no chart directory ${1:-$ROOT/chart}"
[[ -f "$CHART/Chart.yaml" ]] || die "$CHART/Chart.yaml is missing"

if ! tools_env="$("$ROOT/scripts/tools.sh" env helm kubeconform)"; then
  missing "scripts/tools.sh could not install helm and kubeconform"
fi
eval "$tools_env"
ensure_schemas

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
crds=("$CHART"/crds/*.yaml)
if [[ -e "${crds[0]}" ]]; then
  python3 "$CONVERTER" crds "$K8S_SCHEMAS/$K8S_VERSION-standalone" "$work/crds" "${crds[@]}" >&2
fi
schema_flags "$work/crds"

values_files=("")
for f in "$CHART"/ci/*-values.yaml; do [[ -e "$f" ]] && values_files+=("$f"); done

failed=()
for values in "${values_files[@]}"; do
  name="${values:+${values#"$CHART"/}}"; name="${name:-default values}"
  args=()
  [[ -n "$values" ]] && args=(-f "$values")
  log "--- $name: helm lint --strict"
  if ! helm lint --strict "$CHART" "${args[@]}" >"$work/lint.out" 2>&1; then
    cat "$work/lint.out" >&2
    failed+=("$name: helm lint --strict")
    continue
  fi
  log "--- $name: helm template --include-crds | kubeconform -strict"
  rendered="$work/$(basename "${values:-default}" .yaml).rendered.yaml"
  if ! helm template streamspace "$CHART" --namespace streamspace --include-crds \
        --kube-version "$K8S_VERSION" "${args[@]}" >"$rendered" 2>"$work/template.err"; then
    cat "$work/template.err" >&2
    failed+=("$name: helm template")
    continue
  fi
  if ! grep -q '^kind:' "$rendered"; then
    failed+=("$name: helm template rendered no objects")
    continue
  fi
  if ! kubeconform -strict -summary -verbose "${SCHEMA_FLAGS[@]}" "$rendered" >&2; then
    failed+=("$name: kubeconform -strict")
  fi
done

if (( ${#failed[@]} )); then
  log "FAILED:"
  for f in "${failed[@]}"; do log "  $f"; done
  exit 1
fi
log "chart ok: helm lint --strict and kubeconform -strict (Kubernetes $K8S_VERSION, cert-manager $CERT_MANAGER_VERSION, Prometheus Operator $PROMETHEUS_OPERATOR_VERSION schemas) on ${#values_files[@]} values sets"
