//! `mesh-agent`: Weft's per-node agent.
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mesh_agent::ebpf::Programs;

/// Weft's per-node agent: loads the eBPF capture programs and (with later releases) runs the
/// node-local proxy for the meshed pods on this node.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), also read from RUST_LOG.
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect Weft's eBPF programs.
    #[command(subcommand)]
    Bpf(BpfCommand),
}

#[derive(Subcommand)]
enum BpfCommand {
    /// Load every Weft program into the kernel (the verifier runs), print their names and ids,
    /// then unload them. Exit status 0 means this kernel accepts Weft's data path. Needs root.
    Check {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Bpf(BpfCommand::Check { json }) => {
            let programs = Programs::load().context("loading Weft's eBPF programs")?;
            let progs = programs.programs();
            if json {
                let v: Vec<_> = progs
                    .iter()
                    .map(|(name, id)| serde_json::json!({"name": name, "id": id}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<20} {:>8}", "PROGRAM", "ID");
                for (name, id) in &progs {
                    println!("{name:<20} {id:>8}");
                }
                println!("ok: {} programs loaded and verified", progs.len());
            }
            Ok(())
        }
    }
}
