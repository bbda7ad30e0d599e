#!/usr/bin/env bash
# Builds, checks and pushes the StreamSpace container image (Containerfile at the repo root:
# FROM scratch, both binaries, UID/GID 65532) with buildah: no daemon, no registry needed.
#
#   scripts/image.sh build [--release] [--bin-dir DIR] [--tag NAME:TAG] [--oci-archive PATH]
#       Stage the build context from the compiled binaries (copies with debug info stripped,
#       the shared libraries ldd lists for them, CA certificates, passwd/group), build the
#       Containerfile on it and tag it NAME:TAG (default
#       ghcr.io/streamspace-dev/streamspace:<version under [workspace.package] in Cargo.toml>).
#       --oci-archive PATH also exports the image as an OCI archive (gzip layers).
#       Binaries come from --bin-dir DIR, else $CARGO_TARGET_DIR/debug (target/debug when
#       unset); --release uses .../release and runs `cargo build --release` of the two
#       binaries first (a no-op when they are fresh). Without --release nothing is compiled.
#   scripts/image.sh check PATH
#       Unpack the OCI archive's layers into a temporary root filesystem and run both
#       binaries from it, chrooted as the image's user: --version, --help, then the control
#       plane serving on SQLite in /var/lib/streamspace (loopback, ports 0) with an agent
#       attached over mTLS. Also: the config's User is numeric UID:GID and not root, the
#       entrypoint is the control plane, there is no shell, /var/lib/streamspace is the user's.
#       Needs root (chroot), tar and python3; not buildah.
#   scripts/image.sh push [NAME:TAG] [buildah push options...]
#       Push the local image NAME:TAG (built with --tag NAME:TAG) to docker://NAME:TAG, with
#       the machine's registries.conf, policy and credentials (`scripts/image.sh buildah login
#       ghcr.io` first, or pass --creds USER:TOKEN).
#   scripts/image.sh buildah ARGS...
#       Run buildah on this script's image store (images, inspect, login, rmi ...).
#   scripts/image.sh clean
#       Remove every image and container in that store, and the store.
#
# The image store (vfs driver, no daemon, chroot isolation) and its config live in
# $CACHE/image, CACHE = ${STREAMSPACE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamspace};
# nothing is written to /etc (buildah running as root keeps its small blob-info cache in
# /var/lib/containers/cache). buildah itself: `scripts/tools.sh install buildah` (Debian).
# SOURCE_DATE_EPOCH, when set, fixes the image's timestamps (buildah --timestamp).
set -euo pipefail

ME="image.sh"
log() { echo "[$ME] $*" >&2; }
die() { echo "[$ME] ERROR: $*" >&2; exit 1; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${STREAMSPACE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamspace}"
IMAGE_DIR="$CACHE/image"
STORE="$IMAGE_DIR/store"

DEFAULT_NAME="ghcr.io/streamspace-dev/streamspace"
BINS=(streamspace-control-plane streamspace-agent)
APP_ID=65532 # UID and GID; the Containerfile's USER and --chown say the same

TMPS=() PIDS=()
cleanup() {
  local p d
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for d in "${TMPS[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT
# tmpdir VAR NAME : set VAR to a new directory under the cache (the store's disk), removed on exit
tmpdir() {
  mkdir -p "$IMAGE_DIR/tmp"
  local d
  d="$(mktemp -d "$IMAGE_DIR/tmp/$2.XXXXXX")"
  TMPS+=("$d")
  printf -v "$1" '%s' "$d"
}

workspace_version() {
  local v
  v="$(awk '/^\[/ { in_ws = ($0 == "[workspace.package]") }
            in_ws && /^version *=/ { gsub(/^version *= *"|".*$/, ""); print; exit }' "$ROOT/Cargo.toml")"
  [[ -n "$v" ]] || die "no version under [workspace.package] in $ROOT/Cargo.toml"
  echo "$v"
}

# --- buildah on a private store -------------------------------------------------------------

BAH_POLICY="$IMAGE_DIR/conf/policy.json"

setup_buildah() {
  if ! buildah --version >/dev/null 2>&1; then
    die "buildah not found: scripts/tools.sh install buildah (Debian package 'buildah', needs root)"
  fi
  mkdir -p "$IMAGE_DIR/conf" "$IMAGE_DIR/tmp" "$STORE/root" "$STORE/run"
  # Our own storage.conf, so a system one (overlay options, another graphroot) does not apply.
  cat >"$IMAGE_DIR/conf/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$STORE/root"
runroot = "$STORE/run"
EOF
  # Only for reading our own store (build FROM scratch, export to an archive).
  echo '{"default": [{"type": "insecureAcceptAnything"}]}' >"$BAH_POLICY"
  export CONTAINERS_STORAGE_CONF="$IMAGE_DIR/conf/storage.conf"
  export BUILDAH_ISOLATION=chroot
  export TMPDIR="$IMAGE_DIR/tmp" # layer tarballs while committing/pushing (default /var/tmp)
}

bah() { buildah --root "$STORE/root" --runroot "$STORE/run" --storage-driver vfs "$@"; }

# --- staging ----------------------------------------------------------------------------------

# ldd_deps FILE : the absolute paths of the shared objects FILE loads (none when static)
ldd_deps() {
  local out
  if ! out="$(LC_ALL=C ldd "$1" 2>&1)"; then
    [[ "$out" == *"not a dynamic executable"* ]] && return 0
    die "ldd $1 failed: $out"
  fi
  if grep -q 'not found' <<<"$out"; then die "ldd $1: a library is missing on this machine:"$'\n'"$out"; fi
  # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)";
  # linux-vdso has no file.
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out"
}

# stage BIN_DIR CTX : the build context the Containerfile describes
stage() {
  local bin_dir="$1" ctx="$2" rootfs="$2/rootfs" b deps lib ca=/etc/ssl/certs/ca-certificates.crt
  local -a libs=()
  command -v objcopy >/dev/null || die "objcopy not found (Debian package binutils)"
  command -v ldd >/dev/null || die "ldd not found (Debian package libc-bin)"
  [[ -f "$ca" ]] || die "$ca not found (Debian package ca-certificates)"
  mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$ctx/var-lib-streamspace"
  chmod 1777 "$rootfs/tmp"
  for b in "${BINS[@]}"; do
    [[ -x "$bin_dir/$b" ]] || die "$bin_dir/$b not found: build it (cargo build --workspace --bins), or pass --bin-dir DIR or --release"
    objcopy --strip-debug "$bin_dir/$b" "$rootfs/usr/local/bin/$b" || die "objcopy --strip-debug $bin_dir/$b failed"
    chmod 0755 "$rootfs/usr/local/bin/$b"
    deps="$(ldd_deps "$bin_dir/$b")"
    [[ -z "$deps" ]] || mapfile -t -O "${#libs[@]}" libs <<<"$deps"
  done
  if ((${#libs[@]})); then
    while read -r lib; do
      mkdir -p "$rootfs$(dirname "$lib")"
      cp -L --preserve=mode "$lib" "$rootfs$lib" # the loader is a symlink on Debian: copy the file
    done < <(printf '%s\n' "${libs[@]}" | sort -u)
  fi
  cp -L "$ca" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  cat >"$rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
streamspace:x:$APP_ID:$APP_ID:streamspace:/var/lib/streamspace:/sbin/nologin
EOF
  cat >"$rootfs/etc/group" <<EOF
root:x:0:
nobody:x:65534:
streamspace:x:$APP_ID:
EOF
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
  chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  log "staged $(du -sh "$rootfs" | cut -f1) root filesystem: ${BINS[*]} (debug info stripped)${libs[*]:+, }$(printf '%s\n' "${libs[@]}" | sort -u | xargs -r -n1 basename | paste -sd' ')"
}

# --- commands ---------------------------------------------------------------------------------

cmd_build() {
  local release=0 bin_dir="" tag="" archive="" version profile target_dir ctx created revision iid
  local -a ts=()
  while (($#)); do
    case "$1" in
      --release) release=1; shift ;;
      --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift 2 ;;
      --tag) tag="${2:?--tag needs NAME:TAG}"; shift 2 ;;
      --oci-archive) archive="${2:?--oci-archive needs a path}"; shift 2 ;;
      *) die "build: unknown argument '$1' (--release, --bin-dir DIR, --tag NAME:TAG, --oci-archive PATH)" ;;
    esac
  done
  version="$(workspace_version)"
  tag="${tag:-$DEFAULT_NAME:$version}"
  [[ -z "$archive" || "$archive" != *:* ]] || die "--oci-archive: the path cannot contain ':' (buildah's oci-archive:PATH:REF syntax)"
  setup_buildah

  if [[ -z "$bin_dir" ]]; then
    profile=debug; ((release)) && profile=release
    target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
    bin_dir="$target_dir/$profile"
    if ((release)); then
      log "cargo build --release (streamspace-control-plane, streamspace-agent) into $target_dir"
      (cd "$ROOT" && cargo build --release -p streamspace-control-plane -p streamspace-agent --bins) \
        || die "cargo build --release failed"
    fi
  fi
  [[ -d "$bin_dir" ]] || die "$bin_dir: no such directory (build the binaries with cargo build --workspace --bins, or pass --bin-dir DIR or --release)"
  bin_dir="$(cd "$bin_dir" && pwd)"

  tmpdir ctx context
  stage "$bin_dir" "$ctx"

  if [[ -n "${SOURCE_DATE_EPOCH:-}" ]]; then
    ts=(--timestamp "$SOURCE_DATE_EPOCH")
    created="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
  else
    created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  fi
  revision="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
  if [[ "$revision" != unknown ]] && ! git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null; then revision+="-dirty"; fi

  log "buildah build -t $tag (binaries from $bin_dir)"
  bah build --signature-policy "$BAH_POLICY" --isolation chroot --pull=never --format oci "${ts[@]}" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "CREATED=$created" \
    --iidfile "$ctx/iid" -f "$ROOT/Containerfile" -t "$tag" "$ctx" >&2 \
    || die "buildah build failed"
  iid="$(cat "$ctx/iid")"
  # The previous build of this tag is now untagged: drop it (and anything else dangling).
  bah rmi --prune >/dev/null 2>&1 || true

  if [[ -n "$archive" ]]; then
    mkdir -p "$(dirname "$archive")"
    rm -f "$archive.tmp"
    bah push --signature-policy "$BAH_POLICY" --compression-format gzip --quiet \
      "$iid" "oci-archive:$archive.tmp:$tag" >&2 || die "buildah push oci-archive:$archive failed"
    mv -f "$archive.tmp" "$archive"
    log "OCI archive $archive ($(du -h "$archive" | cut -f1))"
  fi
  log "built $tag (${iid:0:19}, $(bah images --format '{{.Size}}' "$tag" 2>/dev/null || echo '?') unpacked)"
}

# oci_plan LAYOUT_DIR : prints "user U", "entrypoint JSON", "version V", then "layer PATH" per
# layer, bottom first, from the OCI layout's index.json, manifest and config
oci_plan() {
  python3 - "$1" <<'PY'
import json, os, sys
top = sys.argv[1]
def blob(desc):
    algo, hexd = desc["digest"].split(":", 1)
    return os.path.join(top, "blobs", algo, hexd)
def load(desc):
    with open(blob(desc)) as f:
        return json.load(f)
with open(os.path.join(top, "index.json")) as f:
    node = json.load(f)
while "manifests" in node:  # an index (possibly nested): take its first manifest
    if not node["manifests"]:
        sys.exit("index.json lists no manifest")
    node = load(node["manifests"][0])
config = load(node["config"])
cfg = config.get("config") or {}
print("user", cfg.get("User", ""))
print("entrypoint", json.dumps(cfg.get("Entrypoint") or []))
print("version", (cfg.get("Labels") or {}).get("org.opencontainers.image.version", ""))
for layer in node["layers"]:
    print("layer", blob(layer))
PY
}

# in_image ROOTFS USER CMD... : run CMD from ROOTFS as USER with an empty environment
in_image() {
  local rootfs="$1" user="$2" chroot
  shift 2
  chroot="$(command -v chroot)" || die "chroot not found (Debian package coreutils)"
  env -i PATH=/usr/local/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    "$chroot" --userspec="$user" "$rootfs" "$@"
}

# wait_log LOG PID WHAT PATTERN : wait (30 s at most) until LOG has PATTERN; fail if PID exits first
wait_log() {
  local logf="$1" pid="$2" what="$3" pattern="$4" i
  for ((i = 0; i < 300; i++)); do
    grep -q "$pattern" "$logf" && return 0
    kill -0 "$pid" 2>/dev/null || die "check: $what exited inside the image:"$'\n'"$(cat "$logf")"
    sleep 0.1
  done
  die "check: $what did not log '$pattern' within 30 s:"$'\n'"$(cat "$logf")"
}

# stop PID WHAT LOG : SIGTERM, and require a clean exit
stop() {
  local rc=0
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" || rc=$?
  ((rc == 0)) || die "check: $2 exited with status $rc on SIGTERM:"$'\n'"$(cat "$3")"
}

# serve_and_attach DIR ROOTFS USER : from the image's root filesystem, as USER, write a PKI and
# a tokens file into /var/lib/streamspace, serve the control plane there (SQLite, loopback,
# ports 0) and attach an agent to it over mTLS; both must stop cleanly on SIGTERM
serve_and_attach() {
  local dir="$1" rootfs="$2" user="$3" state=/var/lib/streamspace/check cp_pid agent_pid addr b out chroot
  chroot="$(command -v chroot)"
  for b in "ca" "server --ca-dir $state --dns localhost --ip 127.0.0.1" "agent --ca-dir $state --id check"; do
    # shellcheck disable=SC2086 # $b is the subcommand and its flags
    out="$(in_image "$rootfs" "$user" /usr/local/bin/streamspace-control-plane certs $b --out "$state" 2>&1)" \
      || die "check: certs $b failed as $user (is /var/lib/streamspace writable?):"$'\n'"$out"
  done
  echo "check-token-0123456789,check,admin" >"$rootfs$state/tokens.csv"
  chown "$user" "$rootfs$state/tokens.csv"

  (exec env -i PATH=/usr/local/bin "$chroot" --userspec="$user" "$rootfs" \
    /usr/local/bin/streamspace-control-plane --log-format json serve --kubernetes false \
    --database-url "sqlite://$state/streamspace.db" --tokens-file "$state/tokens.csv" \
    --tls-cert "$state/server.crt" --tls-key "$state/server.key" --agent-ca "$state/ca.crt" \
    --api-addr 127.0.0.1:0 --agent-addr 127.0.0.1:0 >"$dir/control-plane.log" 2>&1) &
  cp_pid=$!
  PIDS+=("$cp_pid")
  wait_log "$dir/control-plane.log" "$cp_pid" "the control plane" '"control plane serving"'
  addr="$(sed -n 's/.*"agent_addr":"\([^"]*\)".*/\1/p' "$dir/control-plane.log" | head -1)"
  [[ -n "$addr" ]] || die "check: no agent_addr in the control plane's log:"$'\n'"$(cat "$dir/control-plane.log")"

  (exec env -i PATH=/usr/local/bin "$chroot" --userspec="$user" "$rootfs" \
    /usr/local/bin/streamspace-agent --log-format json --agent-id check --platform process \
    --data-dir "$state/agent" --control-plane-url "https://$addr" --tls-server-name localhost \
    --tls-cert "$state/agent-check.crt" --tls-key "$state/agent-check.key" --ca-cert "$state/ca.crt" \
    >"$dir/agent.log" 2>&1) &
  agent_pid=$!
  PIDS+=("$agent_pid")
  wait_log "$dir/agent.log" "$agent_pid" "the agent" '"connected to the control plane"'
  wait_log "$dir/control-plane.log" "$cp_pid" "the control plane" '"agent attached"'
  stop "$agent_pid" "the agent" "$dir/agent.log"
  stop "$cp_pid" "the control plane" "$dir/control-plane.log"
}

cmd_check() {
  local archive="${1:?usage: $0 check PATH (an OCI archive from build --oci-archive)}"
  local dir rootfs key val user="" entrypoint="" version="" uid gid b out layers=0 sh
  [[ -f "$archive" ]] || die "check: $archive not found"
  [[ "$(id -u)" == 0 ]] || die "check runs the binaries with chroot as the image's user, which needs root"
  command -v python3 >/dev/null || die "python3 not found"
  tmpdir dir check
  rootfs="$dir/rootfs"
  mkdir -p "$dir/oci" "$rootfs"
  tar -xf "$archive" -C "$dir/oci" || die "check: $archive is not a tar archive"
  [[ -f "$dir/oci/index.json" ]] || die "check: $archive has no index.json (not an OCI archive)"

  while read -r key val; do
    case "$key" in
      user) user="$val" ;;
      entrypoint) entrypoint="$val" ;;
      version) version="$val" ;;
      layer)
        tar -xpf "$val" --numeric-owner -C "$rootfs" || die "check: cannot unpack layer $val"
        if [[ -n "$(find "$rootfs" -name '.wh.*' -print -quit)" ]]; then
          die "check: layer $val has whiteout files, unexpected in an image built FROM scratch"
        fi
        layers=$((layers + 1)) ;;
    esac
  done < <(oci_plan "$dir/oci" || echo "error")
  ((layers)) || die "check: could not read the image's manifest and config from $archive"

  [[ "$user" =~ ^([0-9]+):([0-9]+)$ ]] || die "check: config User '$user' is not numeric UID:GID"
  uid="${BASH_REMATCH[1]}" gid="${BASH_REMATCH[2]}"
  ((uid != 0 && gid != 0)) || die "check: config User '$user' is root"
  [[ "$entrypoint" == '["/usr/local/bin/streamspace-control-plane"]' ]] \
    || die "check: Entrypoint is $entrypoint, expected [\"/usr/local/bin/streamspace-control-plane\"]"
  for sh in bin/sh usr/bin/sh bin/bash usr/bin/bash bin/busybox usr/bin/busybox; do
    [[ ! -e "$rootfs/$sh" && ! -L "$rootfs/$sh" ]] || die "check: the image has a shell: /$sh"
  done
  [[ "$(stat -c %u:%g "$rootfs/var/lib/streamspace")" == "$uid:$gid" ]] \
    || die "check: /var/lib/streamspace is owned by $(stat -c %u:%g "$rootfs/var/lib/streamspace"), not $uid:$gid"

  for b in "${BINS[@]}"; do
    out="$(in_image "$rootfs" "$user" "/usr/local/bin/$b" --version 2>&1)" \
      || die "check: $b --version failed inside the image as $user:"$'\n'"$out"
    [[ "$out" == "$b $version" ]] || die "check: $b --version printed '$out', expected '$b $version' (the image's version label)"
    out="$(in_image "$rootfs" "$user" "/usr/local/bin/$b" --help 2>&1)" \
      || die "check: $b --help failed inside the image as $user:"$'\n'"$out"
    [[ "$out" == *Usage:* ]] || die "check: $b --help printed no usage:"$'\n'"$out"
  done
  serve_and_attach "$dir" "$rootfs" "$user"

  log "ok: ${BINS[*]} run from the image as $user (--version = $version, --help; serve on SQLite in /var/lib/streamspace, an agent attached over mTLS); no shell"
  log "size: archive $(du -h "$archive" | cut -f1) ($layers layer(s), gzip), root filesystem $(du -sh --exclude=check "$rootfs" | cut -f1) unpacked"
}

cmd_push() {
  local ref
  ref="$DEFAULT_NAME:$(workspace_version)"
  if (($#)) && [[ "$1" != -* ]]; then ref="$1"; shift; fi
  setup_buildah
  bah inspect --type image "$ref" >/dev/null 2>&1 \
    || die "no image $ref in $STORE: build it first (scripts/image.sh build --release --tag $ref)"
  log "buildah push $* $ref docker://$ref"
  bah push "$@" "$ref" "docker://$ref"
}

cmd_clean() {
  setup_buildah
  bah rm --all >/dev/null 2>&1 || true
  bah rmi --all --force >/dev/null 2>&1 || true
  rm -rf "$STORE" "$IMAGE_DIR/tmp"
  log "removed the image store $STORE"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  build) cmd_build "$@" ;;
  check) cmd_check "$@" ;;
  push) cmd_push "$@" ;;
  buildah) setup_buildah; bah "$@" ;;
  clean) cmd_clean ;;
  *)
    echo "usage: $0 build [--release] [--bin-dir DIR] [--tag NAME:TAG] [--oci-archive PATH]" >&2
    echo "       $0 check OCI_ARCHIVE | push [NAME:TAG] [buildah push options] | buildah ARGS... | clean" >&2
    exit 2 ;;
esac
