//! `metastore-robustness`: one run of a workload against a local cluster under a nemesis.
//!
//!   metastore-robustness --nemesis kill-leader --duration 60 --seed 7
//!
//! Prints what happened and the verdict; exits 1 on an anomaly or a lost write.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use metastore_robustness::nemesis::Nemesis;
use metastore_robustness::run::{run, Config};
use metastore_robustness::workload::Workload;
use metastore_testkit::sandbox;

#[derive(Parser)]
#[command(name = "metastore-robustness", version, about = "Fault injection with a linearizability checker")]
struct Cli {
    /// The faults to inject. The partition nemeses need root: the run moves into private
    /// network namespaces.
    #[arg(long, value_enum, default_value_t = Nemesis::KillLeader)]
    nemesis: Nemesis,
    /// Run every nemesis in turn, each for `--duration`.
    #[arg(long)]
    all: bool,
    #[arg(long, value_enum, default_value_t = Workload::Mixed)]
    workload: Workload,
    /// Seconds of load per nemesis.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 3)]
    members: u64,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// How many keys the clients share: fewer keys, more contention.
    #[arg(long, default_value_t = 5)]
    keys: usize,
    /// Milliseconds a fault lasts, and quiet time after it heals.
    #[arg(long, default_value_t = 2_000)]
    hold_ms: u64,
    #[arg(long, default_value_t = 2_000)]
    settle_ms: u64,
    /// Members snapshot and purge their log after this many entries: small by default, so that
    /// snapshots are taken, sent and installed under every nemesis.
    #[arg(long, default_value_t = 500)]
    snapshot_entries: u64,
    /// Members compact history to all but this many revisions (revision-mode auto-compaction),
    /// so that compactions commit and history is deleted under every nemesis; 0 keeps it all.
    #[arg(long, default_value_t = 1_000)]
    compaction_retention: u64,
    /// Accounts of the bank that two tellers move money between with transactions while an
    /// auditor checks every read of them; 0: no bank.
    #[arg(long, default_value_t = 8)]
    bank_accounts: usize,
    /// The `metastore` binary; by default the one next to this binary.
    #[arg(long)]
    metastore: Option<PathBuf>,
    /// Print each report as JSON too.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let binary = match cli.metastore.clone().map(Ok).unwrap_or_else(sibling_metastore) {
        Ok(binary) => binary,
        Err(e) => {
            eprintln!("metastore-robustness: {e}");
            return ExitCode::from(2);
        }
    };
    let mut nemeses = if cli.all { Nemesis::all().to_vec() } else { vec![cli.nemesis] };
    if sandbox::inside() {
        // A new network namespace starts with its loopback down; members without networks of
        // their own live on it.
        if let Err(e) = sandbox::must("ip", &["link", "set", "lo", "up"]) {
            eprintln!("metastore-robustness: {e}");
            return ExitCode::from(2);
        }
    }
    // Partitions cut links between members in network namespaces of their own: the whole run
    // moves into a sandbox, where nothing it changes outlives it.
    if nemeses.iter().any(|n| n.partitions()) && !sandbox::inside() {
        match sandbox::can_isolate(&[("iptables", "--version")]) {
            Ok(()) => {
                let args: Vec<String> = std::env::args().skip(1).collect();
                let exe = std::env::current_exe().unwrap_or_else(|_| "metastore-robustness".into());
                return match sandbox::rerun_inside(&exe, &args) {
                    Ok(true) => ExitCode::SUCCESS,
                    Ok(false) => ExitCode::FAILURE,
                    Err(e) => {
                        eprintln!("metastore-robustness: cannot enter the sandbox: {e}");
                        ExitCode::from(2)
                    }
                };
            }
            Err(missing) if cli.all => {
                eprintln!("SKIPPED: the partition nemeses need {missing}");
                nemeses.retain(|n| !n.partitions());
            }
            Err(missing) => {
                eprintln!("metastore-robustness: {:?} needs {missing}", cli.nemesis);
                return ExitCode::from(2);
            }
        }
    }
    let mut passed = true;
    for nemesis in nemeses {
        let config = Config {
            binary: binary.clone(),
            members: cli.members,
            clients: cli.clients,
            keys: cli.keys,
            duration: Duration::from_secs(cli.duration),
            seed: cli.seed,
            nemesis,
            workload: cli.workload,
            hold: Duration::from_millis(cli.hold_ms),
            settle: Duration::from_millis(cli.settle_ms),
            snapshot_entries: cli.snapshot_entries,
            compaction_retention: cli.compaction_retention,
            bank_accounts: cli.bank_accounts,
        };
        match run(&config).await {
            Ok(report) => {
                println!("{}", report.summary());
                if cli.json {
                    println!("{}", serde_json::to_string(&report).unwrap_or_default());
                }
                passed &= report.passed();
            }
            Err(e) => {
                eprintln!("metastore-robustness: {nemesis:?}: {e:#}");
                passed = false;
            }
        }
    }
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn sibling_metastore() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let binary = exe.with_file_name("metastore");
    anyhow::ensure!(binary.exists(), "no metastore binary next to {}: pass --metastore", exe.display());
    Ok(binary)
}
