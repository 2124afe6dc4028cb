#!/usr/bin/env bash
# Builds the repository's Dockerfile (the chart's default image) on a machine that reaches no container registry,
# and checks what it built. CI runs it from the repository root as an optional step of .ci/run:
#
#   bash charts/tools/build-image.sh
#
# No base image can be pulled, so both are made here, offline but for Debian's mirror:
#   - the runtime base: a Debian bookworm root from debootstrap (minbase), copied into an image from scratch,
#     localhost/hookrelay-ci-runtime;
#   - the builder base: that root plus gcc, make and libc6-dev from Debian, this machine's Rust toolchain (the
#     sysroot of `rustc`, bin/ and lib/ only) and the CA certificates this machine trusts (cargo fetches crates
#     through the same network), as localhost/hookrelay-ci-rust.
# Both are rebuilt only when missing. The Dockerfile is built with them as RUST_IMAGE and RUNTIME_IMAGE and with
# CARGO_PROFILE=dev: the release profile's fat LTO takes 10+ minutes of two cores, the dev build about 3.5 minutes
# cold. It runs as `buildah build --isolation chroot`: in this sandbox crun cannot start containers (`setrlimit
# RLIMIT_NOFILE: Operation not permitted`, then `cgroups in hybrid mode not supported`), chroot isolation needs no
# OCI runtime. Then, in the image: the three binaries answer --version as uid 65532, and control starts and stops.
#
# The committed Dockerfile is what is built; only its base images differ from a registry build. Work files live in
# target/image-ci. buildah and debootstrap are installed from Debian's packages when missing (as root); when they
# cannot be, the script says SKIPPED and exits 0. Every later failure exits 1.
set -euo pipefail
cd "$(dirname "$0")/../.."

WORK=target/image-ci
RUNTIME_BASE=localhost/hookrelay-ci-runtime:bookworm
RUST_BASE=localhost/hookrelay-ci-rust:bookworm
IMAGE=localhost/hookrelay:ci
MIRROR=http://deb.debian.org/debian
started=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$1" "$(($(date +%s) - started))"; }
die() { printf 'build-image.sh: %s\n' "$1" >&2; exit 1; }

step "tools"
# The tools are the one part allowed to be missing: without them the image is not built, and that is said loudly.
skip() { printf '\n!!! SKIPPED: the image is not built: %s\nimage: 0 passed, 0 failed, 1 skipped\n' "$1"; exit 0; }
if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
  [ "$(id -u)" -eq 0 ] || skip "buildah and debootstrap are missing, and installing them needs root"
  apt-get update -qq || skip "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null \
    || skip "apt-get install buildah debootstrap failed"
fi
buildah --version
mkdir -p "$WORK"

if ! buildah inspect --type image "$RUNTIME_BASE" >/dev/null 2>&1; then
  step "runtime base: debootstrap bookworm (minbase) into an image from scratch"
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; die "debootstrap failed"; }
  ctr=$(buildah from --quiet scratch)
  mnt=$(buildah mount "$ctr")
  tar -C "$WORK/rootfs" -c . | tar -C "$mnt" -x
  buildah umount "$ctr" >/dev/null
  buildah commit --quiet "$ctr" "$RUNTIME_BASE" >/dev/null
  buildah rm "$ctr" >/dev/null
  rm -rf "$WORK/rootfs"
fi

if ! buildah inspect --type image "$RUST_BASE" >/dev/null 2>&1; then
  step "builder base: gcc, make, this machine's Rust toolchain and CA certificates"
  sysroot=$(rustc --print sysroot)
  ctr=$(buildah from --quiet "$RUNTIME_BASE")
  trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
  buildah run --isolation chroot "$ctr" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev make ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*'
  mnt=$(buildah mount "$ctr")
  mkdir -p "$mnt/usr/local/rust" "$mnt/usr/local/cargo" "$mnt/usr/local/share/ca-certificates"
  cp -a "$sysroot/bin" "$sysroot/lib" "$mnt/usr/local/rust/"
  rm -rf "$mnt/usr/local/rust/lib/rustlib/src" "$mnt/usr/local/rust/lib/rustlib/"*/analysis
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$mnt/usr/local/share/ca-certificates/"
  fi
  buildah umount "$ctr" >/dev/null
  buildah config --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  buildah run --isolation chroot "$ctr" -- sh -c 'update-ca-certificates >/dev/null && rustc --version && cargo --version'
  buildah commit --quiet "$ctr" "$RUST_BASE" >/dev/null
  buildah rm "$ctr" >/dev/null
  trap - EXIT
fi

step "build the Dockerfile (CARGO_PROFILE=dev, bases $RUST_BASE and $RUNTIME_BASE)"
build_started=$(date +%s)
buildah build --isolation chroot --quiet \
  --build-arg RUST_IMAGE="$RUST_BASE" --build-arg RUNTIME_IMAGE="$RUNTIME_BASE" --build-arg CARGO_PROFILE=dev \
  -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; die "buildah build failed (log: $WORK/build.log)"; }
echo "built $IMAGE in $(($(date +%s) - build_started))s"

step "check the image"
ctr=$(buildah from --quiet "$IMAGE")
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
user=$(buildah inspect --format '{{.OCIv1.Config.User}}' "$ctr")
[ "$user" = "65532:65532" ] || die "the image runs as '$user', not 65532:65532"
# The runtime base made here has a shell (distroless, the default, has none): it drives the checks.
buildah run --isolation chroot --user 65532:65532 "$ctr" -- sh -ec '
  [ "$(id -u)" = 65532 ]
  for bin in hookrelay-control hookrelay-agent hookrelay; do command -v "$bin" >/dev/null; "$bin" --version; done
  [ -s /etc/ssl/certs/ca-certificates.crt ]
  : >/tmp/out
  hookrelay-control --listen 127.0.0.1:0 --data-dir /tmp/hookrelay-control >/tmp/out 2>/tmp/err &
  pid=$!
  for _ in $(seq 50); do grep -q "listening on" /tmp/out && break; sleep 0.2; done
  grep "listening on" /tmp/out || { cat /tmp/err; exit 1; }
  kill -TERM "$pid"; wait "$pid"
  echo "control started and stopped in the image as uid $(id -u)"'
buildah rm "$ctr" >/dev/null
trap - EXIT
buildah rmi "$IMAGE" >/dev/null

step "image: PASS"
echo "image: 1 passed, 0 failed"
