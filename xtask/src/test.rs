//! `cargo xtask test`: every check, least powerful first — fmt, clippy, unit and in-process tests,
//! privileged tests (netns/eBPF, root), then the lab end-to-end tests. Nothing is skipped: a step
//! that cannot set up fails the run.
use std::time::Instant;

use anyhow::bail;

use crate::{setup, util};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Leave out fmt, clippy and deny, loudly (quick local iterations;
    /// CI never uses it). Tests themselves are never left out.
    #[arg(long)]
    pub no_lint: bool,
}

/// (name, cargo arguments, extra environment)
type Step = (
    &'static str,
    Vec<&'static str>,
    Vec<(&'static str, &'static str)>,
);

pub fn run(args: TestArgs) -> anyhow::Result<()> {
    util::require_root("`cargo xtask test` (privileged and lab tests)")?;
    setup::run(setup::Mode::Ensure)?;
    let mut steps: Vec<Step> = vec![];
    if args.no_lint {
        eprintln!(
            "NOTE: --no-lint: fmt, clippy and deny are NOT run; this is not a full check (CI never passes --no-lint)"
        );
    } else {
        steps.push(("fmt", vec!["fmt", "--all", "--", "--check"], vec![]));
        steps.push((
            "clippy",
            vec![
                "clippy",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ],
            vec![],
        ));
        steps.push((
            "deny",
            vec!["deny", "check", "bans", "licenses", "sources"],
            vec![],
        ));
    }
    // One build of every binary, shared by the test steps below (the lab runs them).
    steps.push(("build", vec!["build", "--bins"], vec![]));
    // Checked-in generated files (deploy/crds/) match the code.
    steps.push((
        "generated files",
        vec!["xtask", "codegen", "--check"],
        vec![],
    ));
    // deploy/: kustomize renders, objects parse and say what they should, client dry-run applies,
    // the flags exist in the binaries just built (needs kubectl; a few seconds).
    steps.push(("deploy manifests", vec!["xtask", "deploy-check"], vec![]));
    // Unit, in-process integration and privileged (root: netns, cgroups, eBPF) tests.
    steps.push(("unit + privileged tests", vec!["test"], vec![]));
    // Lab end-to-end tests share one lab at a time: one test thread.
    steps.push((
        "lab + capture + tunnel + l7 e2e tests",
        vec![
            "test",
            "-p",
            "xtask",
            "--features",
            "e2e",
            "--test",
            "lab_e2e",
            "--test",
            "capture_e2e",
            "--test",
            "tunnel_e2e",
            "--test",
            "l7_e2e",
            "--",
            "--test-threads=1",
        ],
        vec![("WEFT_LAB_NO_BUILD", "1")],
    ));
    let mut results = vec![];
    for (name, argv, env) in &steps {
        println!("==> {name}: cargo {}", argv.join(" "));
        let t = Instant::now();
        let mut cmd = util::cargo();
        cmd.args(argv);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let ok = util::run(&mut cmd).is_ok();
        results.push((*name, ok, t.elapsed().as_secs_f64()));
        if !ok {
            break;
        }
    }
    println!("\nsummary:");
    for (name, ok, secs) in &results {
        println!(
            "  {:<26} {:<4} {secs:>7.1}s",
            name,
            if *ok { "ok" } else { "FAIL" }
        );
    }
    if results.iter().any(|(_, ok, _)| !ok) || results.len() != steps.len() {
        bail!("cargo xtask test failed");
    }
    println!("all {} steps passed", results.len());
    Ok(())
}
