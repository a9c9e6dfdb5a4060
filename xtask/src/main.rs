//! `cargo xtask …`: what cargo cannot do — toolchain setup, the local lab, the demo and the test run.
mod bench;
mod bench_l7;
mod bench_tunnel;
mod codegen;
mod demo;
mod deploy;
mod lab;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

/// Weft developer tasks.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring this machine to a working state (root): Debian packages, nightly rust-src, bpf-linker
    /// built against nightly's LLVM, cargo-deny, kubectl present, bpffs mounted, cgroup v2 found.
    /// Idempotent.
    Setup(setup::SetupArgs),
    /// The local lab: a multi-node cluster shape on this machine (netns + cgroups).
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Set up, start the lab, deploy examples/, drive traffic, put it in the mesh, apply
    /// examples/traffic/ (canary, dark launch, fault injection) and print what happened.
    Demo,
    /// Run every check: fmt, clippy, unit, privileged (netns/eBPF) and lab end-to-end tests.
    Test(test::TestArgs),
    /// Check the Kubernetes manifests in deploy/: render every kustomization, parse and assert the
    /// objects, `kubectl apply --dry-run=client` them, match their flags with the binaries.
    DeployCheck,
    /// Regenerate checked-in generated files (deploy/crds/), or `--check` that they are current.
    Codegen(codegen::CodegenArgs),
    /// Benchmarks (root; print a table with ratios against a baseline run in the same invocation).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup(args) if args.build_only => setup::build_only(),
        Command::Setup(_) => setup::run(setup::Mode::Full),
        Command::Lab(cmd) => lab::run(cmd),
        Command::Demo => demo::run(),
        Command::Test(args) => test::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Codegen(args) => codegen::run(args),
        Command::DeployCheck => deploy::run(),
    }
}
