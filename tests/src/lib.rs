//! Sample workloads for Weft's end-to-end tests: `mesh-echo` (server) and `mesh-client`
//! (load generator). The binaries are thin; the logic lives here so it can be unit-tested.

pub mod client;
pub mod echo;

/// Generated types for `weft.echo.v1` (see `proto/echo.proto`).
pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("weft.echo.v1");
}

/// Initialise tracing to stderr, honouring `RUST_LOG` (default `info`).
pub fn init_tracing() {
    init_tracing_with_default("info");
}

/// Initialise tracing to stderr, honouring `RUST_LOG` (else `default`).
pub fn init_tracing_with_default(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
