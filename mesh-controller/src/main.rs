//! `mesh-controller`: Weft's cluster controller.
//!
//! Config sources (Kubernetes / a directory of YAML), translation into per-node config, the config
//! stream and the certificate authority arrive with the controller issue. Until then this binary
//! only describes itself; it does not pretend to run.
use clap::Parser;

/// Weft's cluster controller: watches Kubernetes (or a directory of YAML) and the mesh policies,
/// streams per-node config to the agents and signs workload certificates.
///
/// This build has no subcommands yet: the config sources, config stream (:15010) and certificate
/// service (:15012) are not implemented in this release.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "mesh-controller {}: nothing to run yet — the controller is not implemented in this release (see `--help`)",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
