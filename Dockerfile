# memprobe: a static binary in an empty image, running as a non-root user.
#
#   docker build -t memprobe:0.1.0 .       (the tag the manifests under deploy/ use)
#
# The `runtime` stage only copies the binary from `build`, so an image can also be made from
# a binary built elsewhere: podman build --build-context build=DIR --target runtime .
# (DIR holding `memprobe`), which is how the tests build it without pulling the Rust image.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
RUN rustup target add x86_64-unknown-linux-musl
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
    && cp target/x86_64-unknown-linux-musl/release/memprobe /memprobe

FROM scratch AS runtime
LABEL org.opencontainers.image.title="memprobe" \
      org.opencontainers.image.description="Memory-aware health sidecar for Kurento Media Server: drain, then restart, before the OOM killer" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build /memprobe /memprobe
USER 65532:65532
EXPOSE 8899
ENTRYPOINT ["/memprobe"]
