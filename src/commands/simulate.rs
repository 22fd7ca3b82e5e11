//! `devin-etl simulate`: serve the simulator of the API (crate `devin-sim`) until Ctrl-C.

use std::net::{IpAddr, SocketAddr};

use devin_sim::{Simulator, SimulatorConfig};

pub async fn run(host: IpAddr, port: u16, sessions: usize, seed: u64) -> anyhow::Result<()> {
    let sim = Simulator::new(SimulatorConfig { sessions, seed, ..SimulatorConfig::default() });
    let running = sim.serve(SocketAddr::new(host, port)).await?;
    // The benchmark reads the URL from this line.
    println!("simulator serving {sessions} sessions at {} (token {}); Ctrl-C to stop", running.base_url(), sim.token());
    tokio::signal::ctrl_c().await?;
    running.shutdown().await;
    Ok(())
}
