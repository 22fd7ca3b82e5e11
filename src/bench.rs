//! `devin-etl bench`: measures backfill, incremental and no-op runs against the simulator in a separate
//! process, next to the two floors (fetch-only and COPY-only). (Being implemented; see issue 5.)

use crate::config::Settings;

/// Arguments of `devin-etl bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Simulated sessions.
    #[arg(long, default_value_t = 100_000)]
    pub sessions: usize,
}

pub async fn run(_settings: Settings, _args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench is not implemented yet")
}
