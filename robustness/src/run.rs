//! One run: start a cluster, let clients record a history while the nemesis strikes, heal,
//! read every key's final value, and judge.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::bank::{Bank, BankReport};
use crate::checker::{self, Verdict};
use crate::cluster::Cluster;
use crate::history::{Operation, Outcome};
use crate::leases::{Holder, LeaseReport};
use crate::member::{Member, Protocol};
use crate::nemesis::{self, Fault, Nemesis, Schedule};
use crate::watchers::{WatchReport, Watcher};
use crate::workload::{ClientTask, Recorder, Workload};

#[derive(Debug, Clone)]
pub struct Config {
    pub binary: PathBuf,
    pub members: u64,
    pub clients: usize,
    pub keys: usize,
    pub duration: Duration,
    pub seed: u64,
    pub nemesis: Nemesis,
    pub workload: Workload,
    pub hold: Duration,
    pub settle: Duration,
    /// Members snapshot and purge their log after this many entries: kept small, so that
    /// snapshots are taken, sent and installed under every nemesis.
    pub snapshot_entries: u64,
    /// Members compact to all but this many revisions (0: never), so that compactions commit
    /// and history is deleted under every nemesis.
    pub compaction_retention: u64,
    /// Accounts of the bank that transactions move money between (0: no bank).
    pub bank_accounts: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub nemesis: Nemesis,
    pub seed: u64,
    pub operations: usize,
    /// Of the operations, those made through etcd's gRPC API (the rest through HTTP).
    pub grpc_operations: usize,
    pub ok: usize,
    pub refused: usize,
    pub failed: usize,
    pub unknown: usize,
    pub faults: Vec<Fault>,
    /// Elections the faults caused: the term at the end less the term at the start.
    pub elections: u64,
    pub verdict: Verdict,
    /// Acknowledged writes the healed cluster does not reflect.
    pub lost_writes: Vec<Operation>,
    /// Transactions under the same faults, and whether any read found them torn.
    pub bank: BankReport,
    /// Watch streams under the same faults, and whether any strayed from the history.
    pub watch: WatchReport,
    /// Leases under the same faults, and whether any key went before its time.
    pub leases: LeaseReport,
    pub seconds: f64,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Linearizable
            && self.lost_writes.is_empty()
            && self.bank.violations.is_empty()
            && self.watch.violations.is_empty()
            && self.leases.violations.is_empty()
    }

    pub fn summary(&self) -> String {
        let verdict = match &self.verdict {
            Verdict::Linearizable => "linearizable".to_string(),
            Verdict::NotLinearizable { key, stuck_at } => {
                format!("NOT LINEARIZABLE on {key} at {stuck_at:?}")
            }
            Verdict::Inconclusive { key } => format!("INCONCLUSIVE on {key} (search budget exhausted)"),
        };
        let bank = &self.bank;
        let bank = format!(
            "bank: {} transfers ({} refused, {} unknown), {} audits ({} at past revisions, {} stale), {} violations{}",
            bank.transfers,
            bank.transfers_refused,
            bank.transfers_unknown,
            bank.audits,
            bank.past_audits,
            bank.stale_audits,
            bank.violations.len(),
            bank.violations.first().map(|v| format!(": {v}")).unwrap_or_default()
        );
        let watch = &self.watch;
        let watch = format!(
            "watch: {} watchers, {} events, {} restarts, {} violations{}",
            watch.watchers,
            watch.events,
            watch.restarts,
            watch.violations.len(),
            watch.violations.first().map(|v| format!(": {v}")).unwrap_or_default()
        );
        let leases = &self.leases;
        let leases = format!(
            "leases: {} granted ({} over gRPC), {} keep-alives, {} expired, {} violations{}",
            leases.leases,
            leases.grpc_leases,
            leases.keep_alives,
            leases.expired,
            leases.violations.len(),
            leases.violations.first().map(|v| format!(": {v}")).unwrap_or_default()
        );
        format!(
            "nemesis {:?} seed {}: {} ops ({} over gRPC; {} ok, {} refused, {} failed, {} unknown) in {:.1} s, {} faults, {} elections; {}; {} lost acknowledged writes; {bank}; {watch}; {leases}",
            self.nemesis,
            self.seed,
            self.operations,
            self.grpc_operations,
            self.ok,
            self.refused,
            self.failed,
            self.unknown,
            self.seconds,
            self.faults.len(),
            self.elections,
            verdict,
            self.lost_writes.len()
        )
    }
}

pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut member_args = vec!["--snapshot-entries".to_string(), config.snapshot_entries.to_string()];
    if config.compaction_retention > 0 {
        let retention = config.compaction_retention.to_string();
        member_args.extend(["--auto-compaction-mode".into(), "revision".into()]);
        member_args.extend(["--auto-compaction-retention".into(), retention]);
    }
    let cluster = Cluster::start(
        config.binary.clone(),
        config.members,
        config.nemesis.partitions(),
        member_args,
        config.nemesis.needs_tls(),
    )?;
    let first_leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let first_term = cluster.client(first_leader).cluster().await?.term;
    let members: Vec<_> = cluster.ids().iter().map(|id| cluster.client(*id)).collect();
    let credentials = cluster.credentials().cloned();
    // Every kind of client comes in both protocols: even ones speak HTTP, odd ones gRPC.
    let protocol = |i: usize| if i.is_multiple_of(2) { Protocol::Http } else { Protocol::Grpc };
    let through = |protocol: Protocol| -> anyhow::Result<Vec<Member>> {
        members.iter().map(|m| Member::new(protocol, m.clone(), credentials.as_ref())).collect()
    };
    let cluster = tokio::sync::Mutex::new(cluster);

    let bank = match config.bank_accounts {
        0 => None,
        accounts => Some(Bank::open(&members[0], accounts).await?),
    };
    let recorder = Recorder::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    let watch_report = Arc::new(Mutex::new(WatchReport { watchers: WATCHERS, ..WatchReport::default() }));
    let watchers: Vec<Arc<Watcher>> = (0..WATCHERS)
        .map(|i| {
            // Each starts on another member, and moves on when its member fails.
            let mut through = members.clone();
            through.rotate_left(i % members.len().max(1));
            Arc::new(Watcher::new(through, protocol(i), credentials.clone(), watch_report.clone()))
        })
        .collect();
    let lease_report = Arc::new(Mutex::new(LeaseReport::default()));
    for id in 0..HOLDERS {
        let holder =
            Holder { id, members: through(protocol(id))?, seed: config.seed, report: lease_report.clone() };
        clients.push(tokio::spawn(holder.run(stopped.clone())));
    }
    let (stop_watching, watching) = tokio::sync::watch::channel(false);
    let watcher_tasks: Vec<_> = watchers
        .iter()
        .map(|w| {
            let (w, watching) = (w.clone(), watching.clone());
            tokio::spawn(async move { w.run(watching).await })
        })
        .collect();
    if let Some(bank) = &bank {
        for teller in 0..2usize {
            let seed = config.seed.wrapping_mul(31).wrapping_add(teller as u64);
            let members = through(protocol(teller))?;
            clients.push(tokio::spawn(bank.clone().teller(members, seed, stopped.clone())));
        }
        let seed = config.seed.wrapping_mul(37);
        clients.push(tokio::spawn(bank.clone().auditor(members.clone(), seed, stopped.clone())));
    }
    for id in 0..config.clients {
        let task = ClientTask {
            id,
            keys: config.keys,
            workload: config.workload,
            members: through(protocol(id))?,
            recorder: recorder.clone(),
            seed: config.seed,
        };
        clients.push(tokio::spawn(task.run(stopped.clone())));
    }
    let schedule = Schedule { nemesis: config.nemesis, hold: config.hold, settle: config.settle };
    let faults = {
        let nemesis = nemesis::run(&cluster, schedule, config.seed, started, stopped.clone());
        let deadline = async {
            tokio::time::sleep(config.duration).await;
            let _ = stop.send(true);
        };
        let (faults, ()) = tokio::join!(nemesis, deadline);
        faults
    };
    for client in clients {
        client.await.context("client task")?;
    }
    let faults = match faults {
        Ok(faults) => faults,
        Err(e) => anyhow::bail!("the nemesis failed: {e:#}\n{}", cluster.lock().await.logs()),
    };

    // Everything healed: the final state, read linearizably, must hold every acknowledged write.
    let mut cluster = cluster.into_inner();
    cluster.heal()?;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let last_term = cluster.client(leader).cluster().await?.term;
    let keys: Vec<String> = recorder.history().by_key().keys().map(|k| k.to_string()).collect();
    let mut finals = BTreeMap::new();
    for key in keys {
        let value = read_final(&cluster, &recorder, leader, &key).await?;
        finals.insert(key, value);
    }
    // The final reads are part of the history: the checker then also judges the final state.
    let history = recorder.history();
    let verdict = checker::check(&history);
    let through = cluster.client(leader).range(&crate::run::one_key()).await?.revision;
    for watcher in &watchers {
        watcher.final_check(&cluster.client(leader), through).await;
    }
    let _ = stop_watching.send(true);
    for task in watcher_tasks {
        task.await.context("watcher task")?;
    }
    let watch = watch_report.lock().map(|r| r.clone()).unwrap_or_default();
    let leases = lease_report.lock().map(|r| r.clone()).unwrap_or_default();
    let bank = match bank {
        Some(bank) => {
            bank.final_audit(&cluster.client(leader)).await;
            bank.report()
        }
        None => BankReport::default(),
    };
    let lost_writes = checker::lost_writes(&history, &finals);
    let count = |o: Outcome| history.operations.iter().filter(|op| op.outcome == o).count();
    let grpc_operations = history
        .operations
        .iter()
        .filter(|op| op.client != usize::MAX && protocol(op.client) == Protocol::Grpc)
        .count();
    let report = Report {
        nemesis: config.nemesis,
        seed: config.seed,
        operations: history.operations.len(),
        grpc_operations,
        ok: count(Outcome::Ok),
        refused: count(Outcome::Refused),
        failed: count(Outcome::Failed),
        unknown: count(Outcome::Unknown),
        faults,
        elections: last_term.saturating_sub(first_term),
        verdict,
        lost_writes,
        bank,
        watch,
        leases,
        seconds: started.elapsed().as_secs_f64(),
    };
    if !report.passed() {
        eprintln!("{}", cluster.logs());
    }
    Ok(report)
}

/// Watchers of every key, each through all members.
const WATCHERS: usize = 2;
/// Clients holding leases, one after another.
const HOLDERS: usize = 2;

/// A listing of at most one key: what the store's revision is read with.
pub(crate) fn one_key() -> metastore_client::RangeRequest {
    metastore_client::RangeRequest { limit: Some(1), ..Default::default() }
}

async fn read_final(
    cluster: &Cluster,
    recorder: &Recorder,
    leader: u64,
    key: &str,
) -> anyhow::Result<Option<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match recorder.read_final(&cluster.client(leader), key).await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() > deadline => anyhow::bail!("final read of {key}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
