//! Faults, each bounded in time and undone before the next: the nemesis strikes, waits, heals,
//! lets the cluster settle, and strikes again until told to stop.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use serde::Serialize;

use crate::cluster::Cluster;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Nemesis {
    /// No faults: the baseline.
    None,
    /// kill -9 a random member, restart it on its data.
    Kill,
    /// kill -9 the leader, restart it on its data.
    KillLeader,
    /// SIGSTOP the leader, SIGCONT it later: a paused leader must not serve stale reads when it
    /// wakes.
    PauseLeader,
    /// SIGSTOP a random member.
    Pause,
    /// Remove a random member from raft and add it back on an empty store, under load.
    Membership,
    /// Crash a random member and delete its data; restart it with its original flags (it must
    /// be refused, never vote with a forgotten vote), then replace it through raft.
    Wipe,
    /// Split the members into a random minority and majority, cut off from each other both
    /// ways. Needs the sandbox (root).
    Partition,
    /// Cut the leader off from every other member, both ways.
    PartitionLeader,
    /// The leader stops hearing from the others while they still hear it.
    PartitionOneWay,
    /// Members speak TLS on both ports, and every member's certificates move to a new CA as
    /// an operator renews them (both CAs trusted, new certificates, the old CA dropped), files
    /// replaced under the running members.
    RotateCertificates,
}

impl Nemesis {
    pub fn all() -> &'static [Nemesis] {
        &[
            Nemesis::Kill,
            Nemesis::KillLeader,
            Nemesis::Pause,
            Nemesis::PauseLeader,
            Nemesis::Membership,
            Nemesis::Wipe,
            Nemesis::Partition,
            Nemesis::PartitionLeader,
            Nemesis::PartitionOneWay,
            Nemesis::RotateCertificates,
        ]
    }

    /// Whether members must speak TLS.
    pub fn needs_tls(self) -> bool {
        self == Nemesis::RotateCertificates
    }

    /// Whether it cuts links, so that members need networks of their own.
    pub fn partitions(self) -> bool {
        matches!(self, Nemesis::Partition | Nemesis::PartitionLeader | Nemesis::PartitionOneWay)
    }
}

/// One fault done to the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub nemesis: Nemesis,
    pub member: u64,
    /// Seconds since the run started.
    pub at: f64,
}

pub struct Schedule {
    pub nemesis: Nemesis,
    /// How long a fault lasts before it is undone.
    pub hold: Duration,
    /// Quiet time after healing, before the next fault.
    pub settle: Duration,
}

/// Injects faults until `stop` turns true; heals what it did before returning.
pub async fn run(
    cluster: &tokio::sync::Mutex<Cluster>,
    schedule: Schedule,
    seed: u64,
    started: std::time::Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<Fault>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    if schedule.nemesis == Nemesis::None {
        let _ = stop.wait_for(|s| *s).await;
        return Ok(faults);
    }
    loop {
        if sleep_or_stop(&mut stop, schedule.settle).await {
            break;
        }
        let target = {
            let cluster = cluster.lock().await;
            match schedule.nemesis {
                Nemesis::KillLeader
                | Nemesis::PauseLeader
                | Nemesis::PartitionLeader
                | Nemesis::PartitionOneWay => cluster.leader().await,
                _ => cluster.ids().choose(&mut rng).copied(),
            }
        };
        let Some(member) = target else { continue };
        faults.push(Fault { nemesis: schedule.nemesis, member, at: started.elapsed().as_secs_f64() });
        strike(cluster, schedule.nemesis, member, &mut rng).await?;
        let stopping = sleep_or_stop(&mut stop, schedule.hold).await;
        heal(cluster, schedule.nemesis, member).await?;
        if stopping {
            break;
        }
    }
    Ok(faults)
}

async fn strike(
    cluster: &tokio::sync::Mutex<Cluster>,
    nemesis: Nemesis,
    member: u64,
    rng: &mut StdRng,
) -> anyhow::Result<()> {
    let mut cluster = cluster.lock().await;
    let others: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != member).collect();
    match nemesis {
        Nemesis::Partition => {
            // A random minority (at least one member) against the rest.
            let mut ids = cluster.ids();
            ids.shuffle(rng);
            let (few, many) = ids.split_at(((ids.len() - 1) / 2).max(1));
            cluster.partition(few, many, true)?;
        }
        Nemesis::PartitionLeader => cluster.partition(&[member], &others, true)?,
        Nemesis::PartitionOneWay => cluster.partition(&[member], &others, false)?,
        Nemesis::None => {}
        Nemesis::Kill | Nemesis::KillLeader => cluster.kill(member),
        Nemesis::Pause | Nemesis::PauseLeader => cluster.pause(member)?,
        Nemesis::Membership => cluster.remove(member).await?,
        Nemesis::RotateCertificates => cluster.renew_certificates().await?,
        Nemesis::Wipe => {
            cluster.wipe(member)?;
            // Back with its original static flags on an empty disk: the dangerous case.
            cluster.restart(member)?;
        }
    }
    Ok(())
}

async fn heal(cluster: &tokio::sync::Mutex<Cluster>, nemesis: Nemesis, member: u64) -> anyhow::Result<()> {
    let mut cluster = cluster.lock().await;
    match nemesis {
        Nemesis::None => {}
        Nemesis::Kill | Nemesis::KillLeader => cluster.restart(member)?,
        Nemesis::Pause | Nemesis::PauseLeader => cluster.resume(member)?,
        Nemesis::Membership | Nemesis::Wipe => cluster.replace(member).await?,
        Nemesis::RotateCertificates => cluster.distrust_previous_ca().await?,
        Nemesis::Partition | Nemesis::PartitionLeader | Nemesis::PartitionOneWay => cluster.heal_network()?,
    }
    Ok(())
}

/// Sleeps for `duration`; returns early, with `true`, once `stop` turns true.
async fn sleep_or_stop(stop: &mut tokio::sync::watch::Receiver<bool>, duration: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::time::timeout(duration, stop.wait_for(|s| *s)).await.is_ok()
}
