//! Sample workloads for Weft's end-to-end tests: `mesh-echo` (server) and `mesh-client`
//! (load generator). The library only holds what both binaries share.

/// Generated types for `weft.echo.v1` (see `proto/echo.proto`).
pub mod proto {
    tonic::include_proto!("weft.echo.v1");
}
