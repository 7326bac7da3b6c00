# memprobe: a static binary in an empty image, running as a non-root user.
#
#   docker build -t memprobe:0.1.0 .       (the tag the manifests under deploy/ use)
#
# The `runtime` stage only copies the binary from `build`, so an image can also be made from
# a binary built elsewhere: podman build --build-context build=DIR --target runtime .
# (DIR holding `memprobe` and `memprobe-fleet`), which is how the tests build it without
# pulling the Rust image.

# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 builds each architecture
# in its own (emulated) build stage, from TARGETARCH.
FROM rust:1.95-slim-bookworm AS build
ARG TARGETARCH=amd64
WORKDIR /src
# musl-gcc: the C of ring (the fleet's TLS), built for the static target.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
RUN case "$TARGETARCH" in \
      amd64) echo x86_64-unknown-linux-musl > /target ;; \
      arm64) echo aarch64-unknown-linux-musl > /target ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH (amd64 or arm64)" >&2; exit 1 ;; \
    esac \
    && rustup target add "$(cat /target)"
COPY . .
RUN cargo build --release --locked --target "$(cat /target)" --bin memprobe --bin memprobe-fleet \
    && cp "target/$(cat /target)/release/memprobe" "target/$(cat /target)/release/memprobe-fleet" /

FROM scratch AS runtime
LABEL org.opencontainers.image.title="memprobe" \
      org.opencontainers.image.description="Memory-aware health sidecar for Kurento Media Server: drain, then restart, before the OOM killer" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
# memprobe-fleet holds the Kubernetes client of --fleet kubernetes and --events; memprobe
# starts it from beside its own executable, only when one of them has a request to make.
COPY --from=build /memprobe /memprobe-fleet /
USER 65532:65532
EXPOSE 8899
ENTRYPOINT ["/memprobe"]
