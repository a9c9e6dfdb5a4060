# syntax=docker/dockerfile:1.7
# mesh-controller image. Build from the repository root:
#   docker build -f deploy/docker/controller.Dockerfile -t weft/mesh-controller:dev .
# (Not built in this repository's CI: no container runtime there. See deploy/README.md.)
ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN} AS build
# protoc compiles mesh-common's protos (the controller needs no eBPF toolchain).
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mesh-controller \
 && install -D -m 0755 target/release/mesh-controller /out/mesh-controller

FROM debian:${DEBIAN}-slim
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/mesh-controller /usr/local/bin/mesh-controller
# Non-root (the Deployment also sets runAsUser 65532 and a read-only root filesystem).
USER 65532:65532
EXPOSE 15010 15012 15014
ENTRYPOINT ["/usr/local/bin/mesh-controller"]
CMD ["run", "--source", "kube"]
