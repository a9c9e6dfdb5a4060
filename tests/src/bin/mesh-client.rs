//! mesh-client: the load generator Weft's tests, demos and benchmarks use.

use std::process::ExitCode;

use clap::Parser;
use mesh_tests::client::{Args, run};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    mesh_tests::init_tracing_with_default("warn");
    match run(&args).await {
        Ok(summary) => {
            if args.json {
                match serde_json::to_string(&summary) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("mesh-client: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", summary.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mesh-client: {e}");
            ExitCode::from(2)
        }
    }
}
