//! Compiles the controller ↔ agent protos when the `proto` feature is on (never for eBPF).
fn main() {
    println!("cargo:rerun-if-changed=proto");
    #[cfg(feature = "proto")]
    if let Err(e) = tonic_prost_build::configure().compile_protos(
        &[
            "proto/weft/config/v1/config.proto",
            "proto/istio/v1/auth/ca.proto",
        ],
        &["proto"],
    ) {
        panic!("compiling protos (protoc from protobuf-compiler, `cargo xtask setup`): {e}");
    }
}
