//! `metastore-bench`: one workload against metaStore or etcd, reported as a table row and,
//! with `--json`, as JSON.
//!
//!   metastore-bench --system metastore --endpoints http://127.0.0.1:12380 --workload put --clients 64
//!   metastore-bench --system etcd --endpoints http://127.0.0.1:2379 --workload get --clients 64

mod load;
mod target;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::load::{Plan, Workload};
use crate::target::{Endpoint, System};

#[derive(Parser)]
#[command(name = "metastore-bench", version, about = "Load generator for metaStore and etcd")]
struct Cli {
    #[arg(long, value_enum, default_value_t = System::Metastore)]
    system: System,
    /// Client URLs of the members to send to, comma separated (metaStore: the client port;
    /// etcd: its client URL, which serves the v3 JSON gateway). Clients spread over them.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:12380")]
    endpoints: Vec<String>,
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    workload: Workload,
    /// Concurrent clients (closed loop), or senders (open loop).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Open loop: requests per second in all. Without it, closed loop.
    #[arg(long)]
    rate: Option<u64>,
    /// Distinct keys, chosen uniformly.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Write every key once first, so reads find values.
    #[arg(long)]
    preload: bool,
    /// Print the header line before the row.
    #[arg(long)]
    header: bool,
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metastore-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    let endpoints = cli
        .endpoints
        .iter()
        .map(|url| Endpoint::new(cli.system, url))
        .collect::<anyhow::Result<Vec<Endpoint>>>()?;
    let value = vec![b'v'; cli.value_size];
    if cli.preload {
        load::preload(&endpoints, cli.keys, &value).await?;
    }
    let plan = Plan {
        system: cli.system,
        workload: cli.workload,
        clients: cli.clients.max(1),
        keys: cli.keys,
        value_size: cli.value_size,
        duration: Duration::from_secs(cli.duration),
        rate: cli.rate,
    };
    let outcome = load::run(&plan, &endpoints).await?;
    if cli.header {
        println!("{}", load::Outcome::HEADER);
    }
    println!("{}", outcome.row());
    if cli.json {
        println!("{}", serde_json::to_string(&outcome)?);
    }
    Ok(())
}
