#!/usr/bin/env bash
# Fuzzes what StreamSpace parses from the outside (fuzz/fuzz_targets/*.rs) with
# cargo fuzz (libFuzzer) on the nightly toolchain:
#   agent_frame        an agent's protobuf frame, decoded and checked as the control plane does
#   api_request        a CreateSessionRequest, converted and validated as the API does
#   quantity_duration  CPU/memory quantities and durations
#   crd_session        a Session object's JSON, converted as the controller does
#
#   scripts/fuzz.sh list                     the targets
#   scripts/fuzz.sh run TARGET [SECONDS]     fuzz one target (default 60 s); prints the
#                                            executions libFuzzer ran
#   scripts/fuzz.sh smoke [SECONDS]          every target for SECONDS (default 15), as CI does
#   scripts/fuzz.sh cmin TARGET              minimize TARGET's corpus in place
#
# Builds are debug builds with overflow checks (what CI smoke-tests is what
# long runs fuzz, and an optimized build of the control plane's dependencies
# would take a quarter of an hour here); they still run ~50-100k inputs/s.
# Corpora live in fuzz/corpus/<target>/ (committed: seeds plus what runs found
# worth keeping); a crash is written to fuzz/artifacts/<target>/ and fails the
# run. Builds use no sanitizer (-s none): the code under test is safe Rust, so
# what fuzzing finds is panics, aborts, timeouts and memory blow-ups, which
# libFuzzer reports without one.
#
# cargo-fuzz is installed into $CACHE/bin/cargo-fuzz-<version> and builds go to
# $CACHE/fuzz-target, so a second run rebuilds only what changed.
set -euo pipefail

ME="fuzz.sh"
log() { echo "[$ME] $*" >&2; }
die() { echo "[$ME] ERROR: $*" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${STREAMSPACE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamspace}"
CARGO_FUZZ_VERSION="0.13.2"
FUZZ_DIR="$CACHE/bin/cargo-fuzz-$CARGO_FUZZ_VERSION"
TARGET_DIR="$CACHE/fuzz-target"
TARGETS=(agent_frame api_request quantity_duration crd_session)

nightly() {
  rustup run nightly rustc --version >/dev/null 2>&1 \
    || die "the nightly toolchain is required (rustup toolchain install nightly)"
}

install_cargo_fuzz() {
  if [[ -x "$FUZZ_DIR/bin/cargo-fuzz" ]]; then return 0; fi
  log "cargo install cargo-fuzz $CARGO_FUZZ_VERSION (a minute or two when cold)"
  local tmp
  mkdir -p "$CACHE/bin"
  tmp="$(mktemp -d "$CACHE/bin/.tmp.XXXXXX")"
  if ! CARGO_TARGET_DIR="$tmp/target" cargo install --quiet --locked --root "$tmp" \
        --version "$CARGO_FUZZ_VERSION" cargo-fuzz >&2; then
    rm -rf "$tmp"
    die "cargo install cargo-fuzz $CARGO_FUZZ_VERSION failed (is crates.io reachable?)"
  fi
  rm -rf "$tmp/target"
  chmod 755 "$tmp"
  rm -rf "$FUZZ_DIR"
  mv "$tmp" "$FUZZ_DIR"
}

fuzz() { # fuzz ARGS... : cargo +nightly fuzz ARGS in fuzz/'s parent
  (cd "$ROOT" && PATH="$FUZZ_DIR/bin:$PATH" cargo +nightly fuzz "$@")
}

known() {
  local t
  for t in "${TARGETS[@]}"; do [[ "$t" == "$1" ]] && return 0; done
  die "unknown target '$1' (${TARGETS[*]})"
}

# run_target TARGET SECONDS BUILD_FLAGS... : fuzz for SECONDS; prints the executions done
run_target() {
  local target="$1" secs="$2" log_file
  shift 2
  mkdir -p "$ROOT/fuzz/corpus/$target" "$ROOT/fuzz/artifacts/$target"
  log_file="$(mktemp)"
  log "fuzzing $target for ${secs}s"
  if ! fuzz run "$@" -s none --target-dir "$TARGET_DIR" "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$ROOT/fuzz/artifacts/$target/" -print_final_stats=1 >"$log_file" 2>&1; then
    tail -n 60 "$log_file" >&2
    rm -f "$log_file"
    die "$target: libFuzzer found a failure (input in fuzz/artifacts/$target/)"
  fi
  local execs
  execs="$(awk '/stat::number_of_executed_units/ {print $2}' "$log_file" | tail -n 1)"
  rm -f "$log_file"
  echo "$target: ${execs:-?} executions in ${secs}s, no failure"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  list) printf '%s\n' "${TARGETS[@]}" ;;
  run)
    [[ $# -ge 1 ]] || die "usage: scripts/fuzz.sh run TARGET [SECONDS]"
    known "$1"
    nightly; install_cargo_fuzz
    run_target "$1" "${2:-60}" --dev
    ;;
  smoke)
    nightly; install_cargo_fuzz
    secs="${1:-15}"
    fuzz build --dev -s none --target-dir "$TARGET_DIR" >&2
    for t in "${TARGETS[@]}"; do run_target "$t" "$secs" --dev; done
    ;;
  cmin)
    [[ $# -eq 1 ]] || die "usage: scripts/fuzz.sh cmin TARGET"
    known "$1"
    nightly; install_cargo_fuzz
    fuzz cmin -s none --dev --target-dir "$TARGET_DIR" "$1" "fuzz/corpus/$1"
    ;;
  *) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
