//! `metastore-bench`: one workload against metaStore or etcd, reported as a table row and,
//! with `--json`, as JSON.
//!
//!   metastore-bench --system metastore --endpoints http://127.0.0.1:12380 --workload put --clients 64
//!   metastore-bench --system etcd --endpoints http://127.0.0.1:2379 --workload get --clients 64
//!   metastore-bench --system metastore --protocol grpc --workload txn --clients 256

mod fanout;
mod grpc;
mod load;
mod target;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::load::{Distribution, KeySpace, Plan, Workload};
use crate::target::{Endpoint, Protocol, Role, System};

/// Which of the endpoints the load goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Target {
    /// Every endpoint, clients spread evenly.
    All,
    /// The one that leads.
    Leader,
    /// The first that says it follows.
    Follower,
}

#[derive(Parser)]
#[command(name = "metastore-bench", version, about = "Load generator for metaStore and etcd")]
struct Cli {
    #[arg(long, value_enum, default_value_t = System::Metastore)]
    system: System,
    /// How requests go: each system's HTTP/1.1 JSON API (etcd's v3 gateway), or etcd's v3
    /// gRPC API, which both serve on the same port.
    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    protocol: Protocol,
    /// gRPC: HTTP/2 connections to each member, requests taking them in turn.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    connections: u32,
    /// Client URLs of the members to send to, comma separated (metaStore: the client port;
    /// etcd: its client URL). Clients spread over them.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:12380")]
    endpoints: Vec<String>,
    /// Which endpoints to send to; each is asked whether it leads before the load.
    #[arg(long, value_enum, default_value_t = Target::All)]
    target: Target,
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    workload: Workload,
    /// Concurrent clients (closed loop), or senders (open loop).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    clients: u32,
    /// Open loop: requests per second in all. Without it, closed loop.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    rate: Option<u64>,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    keys: u32,
    /// How requests choose among the keys.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    distribution: Distribution,
    /// The Zipf distribution's exponent s (YCSB's 0.99 by default).
    #[arg(long, default_value_t = 0.99)]
    zipf_exponent: f64,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Write every key once first, so reads find values.
    #[arg(long)]
    preload: bool,
    /// Number the preloaded keys from this one: preloading again from where the last preload
    /// ended grows the store.
    #[arg(long, default_value_t = 0)]
    first_key: usize,
    /// TLS (https:// endpoints, gRPC only): the CAs members' certificates come from.
    #[arg(long, value_name = "FILE")]
    cacert: Option<std::path::PathBuf>,
    /// TLS: the certificate to present, for members that demand one.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// TLS: the key of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<std::path::PathBuf>,
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
    let tls = match &cli.cacert {
        Some(ca) => Some(grpc::tls(ca, cli.cert.as_deref().zip(cli.key.as_deref()))?),
        None => None,
    };
    let mut endpoints = cli
        .endpoints
        .iter()
        .map(|url| Endpoint::new(cli.system, cli.protocol, url, cli.connections as usize, tls.as_ref()))
        .collect::<anyhow::Result<Vec<Endpoint>>>()?;
    let keys = KeySpace::new(cli.keys as usize, cli.distribution, cli.zipf_exponent)?;
    let value = vec![b'v'; cli.value_size];
    if cli.preload {
        load::preload(&endpoints, cli.first_key, keys.count(), &value).await?;
    }
    match cli.target {
        Target::All => {}
        Target::Leader => endpoints = vec![choose(endpoints, Role::Leader).await?],
        Target::Follower => endpoints = vec![choose(endpoints, Role::Follower).await?],
    }
    let plan = Plan {
        system: cli.system,
        protocol: cli.protocol,
        workload: cli.workload,
        clients: cli.clients as usize,
        keys,
        value_size: cli.value_size,
        duration: Duration::from_secs(cli.duration),
        rate: cli.rate,
    };
    let outcome = match plan.workload {
        Workload::WatchFanout => fanout::run(&plan, &endpoints).await?,
        _ => load::run(&plan, &endpoints).await?,
    };
    if cli.header {
        println!("{}", load::Outcome::HEADER);
    }
    println!("{}", outcome.row());
    if cli.json {
        println!("{}", serde_json::to_string(&outcome)?);
    }
    Ok(())
}

/// The first of `endpoints` that has `role`, by its own account; endpoints that do not answer
/// are passed over.
async fn choose(endpoints: Vec<Endpoint>, role: Role) -> anyhow::Result<Endpoint> {
    let mut others = Vec::new();
    for endpoint in endpoints {
        match endpoint.role().await {
            Ok(r) if r == role => return Ok(endpoint),
            Ok(r) => others.push(format!("{}: {r:?}", endpoint.url())),
            Err(e) => others.push(format!("{}: {e:#}", endpoint.url())),
        }
    }
    anyhow::bail!("no endpoint is a {role:?} (the cluster may be electing): {others:?}")
}
