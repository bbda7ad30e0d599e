#!/usr/bin/env bash
# Builds and tests the Go SDK's reference agent (sdk/go).
#
#   scripts/sdk-go.sh install   build cmd/streamspace-go-agent into the cache (no-op when the
#                               sources are unchanged); the last line printed is the executable
#   scripts/sdk-go.sh test      go vet ./... and go test ./... in sdk/go
#   scripts/sdk-go.sh path      print where `install` puts the executable (builds nothing)
#
# The executable is "$CACHE/bin/streamspace-go-agent-<hash>/streamspace-go-agent", <hash> being
# a hash of every file under sdk/go (go.mod and go.sum included), with a stable symlink
# "$CACHE/bin/streamspace-go-agent" to the newest build.
# STREAMSPACE_CACHE overrides the cache dir (default ${XDG_CACHE_HOME:-$HOME/.cache}/streamspace).
# Modules come from the Go module proxy into GOMODCACHE (no vendoring).
set -euo pipefail

ME="sdk-go.sh"
log() { echo "[$ME] $*" >&2; }
die() { echo "[$ME] ERROR: $*" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${STREAMSPACE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamspace}"
SDK="$ROOT/sdk/go"

find_go() {
  if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
    export PATH="/usr/local/go/bin:$PATH"
  fi
  command -v go >/dev/null 2>&1 || die "go is required (Go >= 1.26 on PATH or in /usr/local/go/bin)"
  export GOTOOLCHAIN=local GOFLAGS="-buildvcs=false" CGO_ENABLED=0
}

# source_hash: sha256 over the paths and contents of every file in sdk/go, in a stable order.
source_hash() {
  (cd "$SDK" && find . -type f -not -path './.*' -print0 | LC_ALL=C sort -z \
    | xargs -0 sha256sum | sha256sum | cut -c1-16)
}

bin_dir() { echo "$CACHE/bin/streamspace-go-agent-$(source_hash)"; }

install_agent() {
  local dir tmp
  dir="$(bin_dir)"
  if [[ -x "$dir/streamspace-go-agent" ]] && "$dir/streamspace-go-agent" --version >/dev/null 2>&1; then
    ln -sfn "$dir/streamspace-go-agent" "$CACHE/bin/streamspace-go-agent"
    echo "$dir/streamspace-go-agent"; return 0
  fi
  find_go
  mkdir -p "$CACHE/bin"
  tmp="$(mktemp -d "$CACHE/bin/.tmp.XXXXXX")"
  log "go build ./cmd/streamspace-go-agent"
  if ! (cd "$SDK" && go build -p 2 -trimpath -ldflags "-s -w" -o "$tmp/streamspace-go-agent" ./cmd/streamspace-go-agent) >&2; then
    rm -rf "$tmp"
    die "go build of sdk/go/cmd/streamspace-go-agent failed (is the Go module proxy reachable?)"
  fi
  chmod 755 "$tmp"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  "$dir/streamspace-go-agent" --version >&2 || die "streamspace-go-agent --version failed after the build"
  ln -sfn "$dir/streamspace-go-agent" "$CACHE/bin/streamspace-go-agent"
  echo "$dir/streamspace-go-agent"
}

run_tests() {
  find_go
  cd "$SDK"
  log "go vet ./..."
  go vet -p 2 ./...
  log "go test ./..."
  go test -p 2 -count=1 ./...
}

cmd="${1:-install}"
shift || true
case "$cmd" in
  install) install_agent ;;
  test) run_tests ;;
  path) echo "$(bin_dir)/streamspace-go-agent" ;;
  *) echo "usage: $0 install|test|path" >&2; exit 2 ;;
esac
