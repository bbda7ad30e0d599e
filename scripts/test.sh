#!/usr/bin/env bash
# Runs every test: installs or builds what the tests need (PostgreSQL, grpcurl,
# kubectl, helm, kubeconform, buildah, Prometheus, Jaeger; the Kubernetes test control plane), then
# runs lint checks (rustfmt, clippy, the Helm chart), builds the image from the
# test binaries and checks it, smoke-runs the fuzz targets, and runs the
# whole suite on SQLite and on PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[test.sh] $*"; }

export CACHE="${STREAMSPACE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamspace}"
mkdir -p "$CACHE"

log "installing test tools (cached in $CACHE)"
scripts/tools.sh install
scripts/tools.sh install prometheus # Debian package: the metrics tests scrape with a real Prometheus
scripts/tools.sh install jaeger     # built with Go once (cached): the tracing tests read traces back from it
eval "$(scripts/tools.sh env)"
eval "$(scripts/tools.sh env jaeger)"
command -v grpcurl >/dev/null || { echo "grpcurl missing after install" >&2; exit 1; }
export GRPCURL="$(command -v grpcurl)"

command -v kubectl >/dev/null || { echo "kubectl missing after install" >&2; exit 1; }
export KUBECTL="$(command -v kubectl)"

log "chart lint: helm lint --strict, helm template | kubeconform -strict (defaults and chart/ci/*-values.yaml)"
scripts/chart-lint.sh

cleanup() {
  tests/k8s/cluster.sh stop >/dev/null 2>&1 || true
  scripts/postgres.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

log "starting PostgreSQL"
scripts/postgres.sh start >/dev/null
export STREAMSPACE_TEST_POSTGRES_URL="$(scripts/postgres.sh url)"

log "building (cached) and starting the Kubernetes test control plane"
tests/k8s/cluster.sh build
tests/k8s/cluster.sh start >/dev/null
eval "$(tests/k8s/cluster.sh env)"

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
log "building binaries"
cargo build --workspace --bins

log "proto: buf lint, buf breaking against the released snapshot (and a breaking edit caught)"
scripts/buf.sh install
scripts/buf.sh lint
scripts/buf.sh breaking
scripts/buf.sh breaking-selftest

log "SDK agents (sdk/): generated code matches proto/, unit tests, install"
scripts/buf.sh check
scripts/sdk-python.sh check
scripts/sdk-python.sh test
STREAMSPACE_PYTHON_AGENT="$(scripts/sdk-python.sh install | tail -n 1)"
scripts/sdk-go.sh test
STREAMSPACE_GO_AGENT="$(scripts/sdk-go.sh install | tail -n 1)"
export STREAMSPACE_PYTHON_AGENT STREAMSPACE_GO_AGENT

log "conformance kit: the Rust, Python and Go agents pass every case (JUnit in $CACHE/conformance)"
bin="${CARGO_TARGET_DIR:-target}/debug"
mkdir -p "$CACHE/conformance"
for agent in rust:"$bin/streamspace-agent" python:"$STREAMSPACE_PYTHON_AGENT" go:"$STREAMSPACE_GO_AGENT"; do
  log "conformance: ${agent%%:*} agent"
  # The golden transcripts of this checkout: the binary's default is the
  # checkout that built it, which a cached build may not be.
  "$bin/streamspace-conformance" --agent-cmd "${agent#*:}" --junit "$CACHE/conformance/${agent%%:*}.xml" \
    --golden-dir "$PWD/conformance/golden"
done

log "image: build from the test binaries and run them from its root filesystem"
scripts/tools.sh install buildah # a missing buildah fails the run (never skipped)
scripts/image.sh build --bin-dir "${CARGO_TARGET_DIR:-target}/debug" --oci-archive "$CACHE/image/streamspace.oci.tar"
scripts/image.sh check "$CACHE/image/streamspace.oci.tar"

log "fuzz smoke: every cargo fuzz target for 10 s (scripts/fuzz.sh)"
scripts/fuzz.sh smoke 10

jobs="${STREAMSPACE_TEST_THREADS:-2}"
log "tests on SQLite"
STREAMSPACE_TEST_STORE=sqlite cargo test --workspace --no-fail-fast -- --test-threads="$jobs"
log "tests on PostgreSQL ($STREAMSPACE_TEST_POSTGRES_URL)"
STREAMSPACE_TEST_STORE=postgres cargo test -p streamspace-tests --no-fail-fast -- --test-threads="$jobs"
log "all tests passed"
