# syntax=docker/dockerfile:1
# The hookrelay image: hookrelay-control, hookrelay-agent and the hookrelay CLI in /usr/local/bin, CA certificates,
# nothing else; it runs as uid/gid 65532 (the chart's podSecurityContext). The chart (charts/hookrelay) starts the
# binaries by name. Build at the repository root with podman, buildah or docker (BuildKit):
#
#   podman build -t registry.example.com/hookrelay:0.1.0 .
#
# Build arguments:
#   RUST_IMAGE     builder: a Rust toolchain of the workspace's rust-version (1.88, edition 2024) or newer, cargo's
#                  home in /usr/local/cargo, gcc and make (jemalloc's build), ca-certificates. Default: the official
#                  rust image of that version.
#   RUNTIME_IMAGE  runtime: glibc and libgcc_s, all the binaries link (`ldd`). Default: distroless cc, Debian 12,
#                  nonroot; the builder is Debian 12 too, so the glibc the binaries were linked against is there.
#   CARGO_PROFILE  release (default: fat LTO, one codegen unit, ~10+ minutes on two cores) or dev (a quick build
#                  for testing the Dockerfile itself, never for production).
# Both images are arguments so that a machine without access to a container registry can build from bases it
# made itself (e.g. a debootstrap'd Debian 12 root imported with `podman import`).
ARG RUST_IMAGE=docker.io/library/rust:1.88-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
ARG CARGO_PROFILE=release
WORKDIR /src
COPY . .
# The registry and target directories are cache mounts: a rebuild after a source change recompiles only the
# workspace. The binaries are copied out of the cached target directory, which is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eu; \
    cargo build --locked --profile "$CARGO_PROFILE" \
      --bin hookrelay-control --bin hookrelay-agent --bin hookrelay; \
    dir=$CARGO_PROFILE; [ "$dir" = dev ] && dir=debug; \
    mkdir -p /out; \
    cp "target/$dir/hookrelay-control" "target/$dir/hookrelay-agent" "target/$dir/hookrelay" /out/; \
    /out/hookrelay-control --version; /out/hookrelay-agent --version; /out/hookrelay --version

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="hookrelay" \
      org.opencontainers.image.description="hookrelay-control, hookrelay-agent and the hookrelay CLI" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /out/hookrelay-control /out/hookrelay-agent /out/hookrelay /usr/local/bin/
USER 65532:65532
# The data directories are volumes in the chart (the root filesystem is read-only there); /tmp too.
WORKDIR /tmp
CMD ["hookrelay", "--help"]
