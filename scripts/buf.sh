#!/usr/bin/env bash
# Lints the protocol, checks it for breaking changes and generates the Go SDK's code, with
# pinned tools built from the Go module proxy (the Buf Schema Registry is never contacted:
# buf.gen.yaml names local plugins only, and the well-known types come bundled with buf).
#
#   scripts/buf.sh install            install buf, protoc-gen-go, protoc-gen-go-grpc (no-op when cached)
#   scripts/buf.sh lint               buf lint (rules and exceptions: buf.yaml)
#   scripts/buf.sh breaking           buf breaking against the released snapshot (proto/released/)
#   scripts/buf.sh breaking-selftest  prove `breaking` catches a renumbered field and lets an added one pass
#   scripts/buf.sh generate           regenerate sdk/go/gen/ (buf.gen.yaml)
#   scripts/buf.sh check              fail if sdk/go/gen/ differs from what `generate` would write
#   scripts/buf.sh snapshot           rewrite proto/released/streamspace-v1.binpb from proto/ (run at a release)
#   scripts/buf.sh env                install if needed, then print `export PATH=...` for eval
#   scripts/buf.sh versions           print the pinned versions
#
# The tools live in "$CACHE/bin/buf-<version>/" so a version bump rebuilds.
# STREAMSPACE_CACHE overrides the cache dir (default ${XDG_CACHE_HOME:-$HOME/.cache}/streamspace).
set -euo pipefail

ME="buf.sh"
log() { echo "[$ME] $*" >&2; }
die() { echo "[$ME] ERROR: $*" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${STREAMSPACE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamspace}"

# Pinned versions. protoc-gen-go comes from the google.golang.org/protobuf module; the
# generated code's runtime requirements (sdk/go/go.mod) must be at least these.
BUF_VERSION="v1.75.0"
PROTOC_GEN_GO_VERSION="v1.36.12"
PROTOC_GEN_GO_GRPC_VERSION="v1.6.2"

# One directory for the three tools: the buf version names it, the plugin versions are part
# of the key too so bumping any of them rebuilds.
BUF_DIR="$CACHE/bin/buf-$BUF_VERSION-go-$PROTOC_GEN_GO_VERSION-grpc-$PROTOC_GEN_GO_GRPC_VERSION"

SNAPSHOT="proto/released/streamspace-v1.binpb"
GEN_DIR="sdk/go/gen"

find_go() {
  if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
    export PATH="/usr/local/go/bin:$PATH"
  fi
  command -v go >/dev/null 2>&1 || die "go is required to build buf (Go >= 1.26 on PATH or in /usr/local/go/bin)"
}

installed() {
  [[ -x "$BUF_DIR/buf" && -x "$BUF_DIR/protoc-gen-go" && -x "$BUF_DIR/protoc-gen-go-grpc" ]] \
    && "$BUF_DIR/buf" --version >/dev/null 2>&1
}

install_buf() {
  if installed; then return 0; fi
  find_go
  local tmp pkg
  mkdir -p "$CACHE/bin"
  tmp="$(mktemp -d "$CACHE/bin/.tmp.XXXXXX")"
  for pkg in "github.com/bufbuild/buf/cmd/buf@$BUF_VERSION" \
             "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION" \
             "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"; do
    log "go install $pkg (buf takes a few minutes when cold)"
    if ! GOBIN="$tmp" GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-buildvcs=false" \
          go install -p 2 -trimpath -ldflags "-s -w" "$pkg" >&2; then
      rm -rf "$tmp"
      die "go install $pkg failed (is the Go module proxy reachable?)"
    fi
  done
  chmod 755 "$tmp"
  rm -rf "$BUF_DIR"
  mv "$tmp" "$BUF_DIR"
  "$BUF_DIR/buf" --version >&2 || die "buf --version failed after install"
}

# buf finds the plugins named in buf.gen.yaml (local: protoc-gen-go...) on PATH.
use_buf() {
  install_buf
  export PATH="$BUF_DIR:$PATH"
  # No telemetry, no registry: everything here works offline.
  export BUF_CACHE_DIR="$CACHE/buf-cache"
  cd "$ROOT"
  [[ -f buf.yaml ]] || die "buf.yaml not found at $ROOT"
}



do_lint() {
  use_buf
  buf lint
  log "lint: OK"
}

do_breaking() {
  use_buf
  [[ -f "$SNAPSHOT" ]] || die "$SNAPSHOT is missing: make it with 'scripts/buf.sh snapshot'"
  buf breaking --against "$SNAPSHOT"
  log "breaking: OK (proto/ is wire- and JSON-compatible with $SNAPSHOT)"
}

# breaking-selftest: the check must fail on a real break and pass on a harmless addition.
# Each fixture is a copy of the workspace (buf.yaml + proto/) with one sed edit applied.
do_breaking_selftest() {
  use_buf
  [[ -f "$SNAPSHOT" ]] || die "$SNAPSHOT is missing: make it with 'scripts/buf.sh snapshot'"
  local tmp out file="streamspace/v1/agent.proto"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN

  fixture() { # fixture NAME SED-EXPR : copy the workspace to $tmp/NAME and apply SED-EXPR to agent.proto
    rm -rf "${tmp:?}/$1"; mkdir -p "$tmp/$1"
    cp buf.yaml "$tmp/$1/"; cp -r proto "$tmp/$1/"
    grep -q -- "$3" "$tmp/$1/proto/$file" || die "selftest fixture '$1': '$3' not found in $file (update the fixture)"
    sed -i -e "$2" "$tmp/$1/proto/$file"
    ! cmp -s "proto/$file" "$tmp/$1/proto/$file" || die "selftest fixture '$1' changed nothing"
  }

  # 1. A renumbered field (Heartbeat.sequence 1 -> 9) breaks the wire.
  fixture renumber 's/^\(  uint64 sequence = \)1;/\19;/' '  uint64 sequence = 1;'
  if out="$(cd "$tmp/renumber" && buf breaking --against "$ROOT/$SNAPSHOT" 2>&1)"; then
    die "selftest: renumbering Heartbeat.sequence was NOT reported as breaking"
  fi
  grep -q 'sequence' <<<"$out" || die "selftest: breaking failed but did not name the field 'sequence': $out"
  log "selftest 1/3: renumbered field rejected: $(grep -m1 sequence <<<"$out")"

  # 2. A deleted field (Hello.fencing_token) breaks the wire.
  fixture delete '/^  uint64 fencing_token = 7;/d' '  uint64 fencing_token = 7;'
  if out="$(cd "$tmp/delete" && buf breaking --against "$ROOT/$SNAPSHOT" 2>&1)"; then
    die "selftest: deleting Hello.fencing_token was NOT reported as breaking"
  fi
  grep -q 'fencing_token' <<<"$out" || die "selftest: breaking failed but did not name the field 'fencing_token': $out"
  log "selftest 2/3: deleted field rejected: $(grep -m1 fencing_token <<<"$out")"

  # 3. An added field (Heartbeat.selftest_extra = 99) is compatible.
  fixture add 's/^\(  uint64 sequence = 1;\)/\1\n  string selftest_extra = 99;/' '  uint64 sequence = 1;'
  if ! out="$(cd "$tmp/add" && buf breaking --against "$ROOT/$SNAPSHOT" 2>&1)"; then
    die "selftest: adding a field was reported as breaking: $out"
  fi
  log "selftest 3/3: added field accepted"
  log "breaking-selftest: OK"
}

# generate_into DIR : run buf generate with its output rooted at DIR (buf.gen.yaml's out is relative)
generate_into() {
  local out="$1"
  buf generate --template buf.gen.yaml -o "$out"
}

do_generate() {
  use_buf
  local tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  generate_into "$tmp"
  rm -rf "$GEN_DIR"
  mkdir -p "$(dirname "$GEN_DIR")"
  mv "$tmp/$GEN_DIR" "$GEN_DIR"
  log "generated $GEN_DIR"
}

do_check() {
  use_buf
  local tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  generate_into "$tmp"
  if ! diff -ru "$GEN_DIR" "$tmp/$GEN_DIR" >&2; then
    die "$GEN_DIR is out of date with proto/: run 'scripts/buf.sh generate' and commit the result"
  fi
  log "check: $GEN_DIR matches proto/"
}

do_snapshot() {
  use_buf
  mkdir -p "$(dirname "$SNAPSHOT")"
  buf build -o "$SNAPSHOT"
  log "wrote $SNAPSHOT ($(wc -c <"$SNAPSHOT") bytes): commit it with the release"
}

cmd="${1:-install}"
shift || true
case "$cmd" in
  install) install_buf; log "tools in $BUF_DIR: buf $BUF_VERSION, protoc-gen-go $PROTOC_GEN_GO_VERSION, protoc-gen-go-grpc $PROTOC_GEN_GO_GRPC_VERSION" ;;
  lint) do_lint ;;
  breaking) do_breaking ;;
  breaking-selftest) do_breaking_selftest ;;
  generate) do_generate ;;
  check) do_check ;;
  snapshot) do_snapshot ;;
  env) install_buf; echo "export PATH=\"$BUF_DIR:\$PATH\"" ;;
  versions) echo "buf=$BUF_VERSION protoc-gen-go=$PROTOC_GEN_GO_VERSION protoc-gen-go-grpc=$PROTOC_GEN_GO_GRPC_VERSION" ;;
  *) echo "usage: $0 install|lint|breaking|breaking-selftest|generate|check|snapshot|env|versions" >&2; exit 2 ;;
esac
