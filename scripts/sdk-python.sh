#!/usr/bin/env bash
# The Python reference agent (sdk/python, package streamspace-agent):
#
#   scripts/sdk-python.sh install    venv in "$CACHE/venv-sdk-python" with grpcio-tools and the
#                                    package; prints the path of `streamspace-python-agent` on the
#                                    last line (cached: a second run with nothing changed is a
#                                    no-op and needs no network)
#   scripts/sdk-python.sh generate   regenerate sdk/python/streamspace_agent/_gen from proto/
#   scripts/sdk-python.sh check      fail (naming the file) if the committed generated code is
#                                    not what `generate` produces now
#   scripts/sdk-python.sh test       the package's unit tests (unittest, no extra dependencies)
#
# Generation: grpcio-tools' protoc writes `from streamspace.v1 import common_pb2`, which only
# resolves with the generated root on sys.path. Rather than touch sys.path, one post-step
# rewrites exactly that import prefix to `from streamspace_agent._gen.streamspace.v1 import`
# (see rewrite_imports). Nothing else in the generated files is changed.
#
# STREAMSPACE_CACHE overrides the cache dir (default ${XDG_CACHE_HOME:-$HOME/.cache}/streamspace).
# Under CI=true nothing is skipped: a missing python3 or a failing test is a failure.
set -euo pipefail

ME="sdk-python.sh"
log() { echo "[$ME] $*" >&2; }
die() { echo "[$ME] ERROR: $*" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SDK="$ROOT/sdk/python"
GEN="$SDK/streamspace_agent/_gen"
CACHE="${STREAMSPACE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamspace}"
VENV="$CACHE/venv-sdk-python"

# Pinned generator: the generated code names the grpcio / protobuf versions it needs
# (pyproject.toml's dependencies follow them).
GRPCIO_TOOLS_VERSION="1.85.1"

find_python() {
  local py
  for py in python3.11 python3 python; do
    if command -v "$py" >/dev/null 2>&1 \
        && "$py" -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; then
      echo "$py"; return 0
    fi
  done
  die "python >= 3.10 with the venv module is required (apt-get install -y python3 python3-venv)"
}

# A fingerprint of everything the installed venv depends on: the pins, this script and the
# package's sources. Unchanged -> the venv is reused without touching the network.
fingerprint() {
  (
    cd "$SDK"
    echo "grpcio-tools=$GRPCIO_TOOLS_VERSION"
    sha256sum "$ROOT/scripts/sdk-python.sh" | cut -d' ' -f1
    find . -type f \( -name '*.py' -o -name '*.pyi' -o -name '*.toml' -o -name '*.md' \) \
      -not -path './build/*' -not -path '*/__pycache__/*' -not -path '*.egg-info/*' \
      | LC_ALL=C sort | xargs sha256sum
  ) | sha256sum | cut -d' ' -f1
}

# ensure_venv: the venv with the pinned grpcio-tools (and so grpcio and protobuf).
ensure_venv() {
  local py
  if [[ -x "$VENV/bin/python" ]] \
      && "$VENV/bin/python" -c "import grpc_tools, sys; from importlib.metadata import version; sys.exit(version('grpcio-tools') != '$GRPCIO_TOOLS_VERSION')" >/dev/null 2>&1; then
    return 0
  fi
  py="$(find_python)"
  mkdir -p "$CACHE"
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$py" -m venv "$VENV" || die "$py -m venv $VENV failed"
  fi
  log "pip install grpcio-tools==$GRPCIO_TOOLS_VERSION"
  PIP_ROOT_USER_ACTION=ignore "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      "grpcio-tools==$GRPCIO_TOOLS_VERSION" >&2 \
    || die "pip install grpcio-tools==$GRPCIO_TOOLS_VERSION failed (is PyPI reachable?)"
}

cmd_install() {
  local stamp want
  stamp="$VENV/.streamspace-stamp"
  want="$(fingerprint)"
  if [[ -x "$VENV/bin/streamspace-python-agent" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
      && "$VENV/bin/python" -c 'import grpc_tools, streamspace_agent.client' >/dev/null 2>&1; then
    echo "$VENV/bin/streamspace-python-agent"
    return 0
  fi
  ensure_venv
  rm -f "$stamp"
  log "pip install ./sdk/python"
  # Not editable: the executable runs the code as committed. The package's own version does
  # not change with its sources, so it is reinstalled (without its dependencies) every time.
  PIP_ROOT_USER_ACTION=ignore "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$SDK" >&2 \
    && PIP_ROOT_USER_ACTION=ignore "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      --force-reinstall --no-deps "$SDK" >&2 \
    || die "pip install ./sdk/python failed (is PyPI reachable for setuptools and the dependencies?)"
  rm -rf "$SDK/build" "$SDK"/*.egg-info
  "$VENV/bin/streamspace-python-agent" --version >&2 || die "streamspace-python-agent --version failed after install"
  echo "$want" > "$stamp"
  echo "$VENV/bin/streamspace-python-agent"
}

# The venv's python with grpcio-tools.
tools_python() {
  ensure_venv
  echo "$VENV/bin/python"
}

# rewrite_imports DIR: make the generated cross-file imports package-relative to
# streamspace_agent._gen (the only change to protoc's output).
rewrite_imports() {
  local f
  while IFS= read -r f; do
    sed -i -e 's/^from streamspace\.v1 import /from streamspace_agent._gen.streamspace.v1 import /' "$f"
  done < <(find "$1" -type f \( -name '*.py' -o -name '*.pyi' \))
}

# generate_into DIR: the generated tree for every proto/streamspace/v1/*.proto.
generate_into() {
  local out="$1" py
  py="$(tools_python)"
  mkdir -p "$out/streamspace/v1"
  (cd "$ROOT/proto" && "$py" -m grpc_tools.protoc -I . \
      --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" streamspace/v1/*.proto) \
    || die "grpc_tools.protoc failed"
  rewrite_imports "$out"
  local pkg
  for pkg in "$out" "$out/streamspace" "$out/streamspace/v1"; do
    echo '"""Generated by scripts/sdk-python.sh generate from proto/. Do not edit."""' > "$pkg/__init__.py"
  done
}

cmd_generate() {
  local tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  generate_into "$tmp/gen"
  rm -rf "$GEN"
  cp -r "$tmp/gen" "$GEN"
  log "generated $(find "$GEN" -type f | wc -l) files in ${GEN#"$ROOT"/}"
}

cmd_check() {
  local tmp out
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  generate_into "$tmp/gen"
  if ! out="$(diff -r -x __pycache__ "$tmp/gen" "$GEN" 2>&1)"; then
    echo "$out" | sed -e "s#$tmp/gen#<regenerated>#g" -e "s#$ROOT/##g" | head -40 >&2
    die "generated code in ${GEN#"$ROOT"/} differs from proto/ (the files named above): run scripts/sdk-python.sh generate and commit, never edit generated files by hand"
  fi
  log "generated code matches proto/"
}

cmd_test() {
  local py
  py="$(dirname "$(cmd_install | tail -1)")/python"
  (cd "$SDK" && "$py" -m unittest discover -s tests -t . -v) || die "unit tests failed"
}

# Parallel callers (test processes installing the agent at once) take turns on the venv.
lock_venv() {
  mkdir -p "$CACHE"
  command -v flock >/dev/null 2>&1 || return 0
  exec 9>"$CACHE/.venv-sdk-python.lock"
  flock 9
}

cmd="${1:-}"
shift || true
[[ "$cmd" =~ ^(install|generate|check|test)$ ]] && lock_venv
case "$cmd" in
  install) cmd_install ;;
  generate) cmd_generate ;;
  check) cmd_check ;;
  test) cmd_test ;;
  *) echo "usage: $0 install|generate|check|test" >&2; exit 2 ;;
esac
