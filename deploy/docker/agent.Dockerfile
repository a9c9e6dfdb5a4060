# syntax=docker/dockerfile:1.7
# mesh-agent image. Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t weft/mesh-agent:dev .
# (Not built in this repository's CI: no container runtime there. See deploy/README.md.)
#
# The eBPF programs are built by mesh-agent's build.rs with nightly + rust-src + bpf-linker linked
# against nightly's own LLVM. `cargo xtask setup --build-only` installs exactly that, the same code
# path as on a development machine, without the machine-level steps (bpffs, kernel checks).
ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN} AS build
# The nightly the eBPF build uses (the one developed with: rustc 1.97.0-nightly e50aa6fba
# 2026-05-19, LLVM 22). Pinned by date; build.rs and xtask call it `nightly`, so it is linked
# under that name.
ARG RUST_NIGHTLY=nightly-2026-05-20
RUN rustup toolchain install "${RUST_NIGHTLY}" --profile minimal --component rust-src \
 && host="$(rustc -vV | sed -n 's/^host: //p')" \
 && ln -s "${RUSTUP_HOME}/toolchains/${RUST_NIGHTLY}-${host}" "${RUSTUP_HOME}/toolchains/nightly-${host}" \
 && rustc +nightly -vV
WORKDIR /src
COPY . .
# protobuf-compiler, nightly rust-src, bpf-linker built against nightly's LLVM.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=weft-agent-target \
    cargo xtask setup --build-only \
 && cargo build --release --locked -p mesh-agent \
 && install -D -m 0755 target/release/mesh-agent /out/mesh-agent

FROM debian:${DEBIAN}-slim
# mesh-agent shells out to bpftool only for `mesh-agent bpf progs` (debugging with kubectl exec);
# nothing else at runtime.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends bpftool \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/mesh-agent /usr/local/bin/mesh-agent
# Runs as root, privileged (eBPF, setns into pod network namespaces): see deploy/base/agent.yaml.
EXPOSE 15020
ENTRYPOINT ["/usr/local/bin/mesh-agent"]
CMD ["run"]
