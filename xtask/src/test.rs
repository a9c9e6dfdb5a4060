#[derive(clap::Args)]
pub struct TestArgs {}
pub fn run(_a: TestArgs) -> anyhow::Result<()> { anyhow::bail!("todo") }
