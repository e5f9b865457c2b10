//! Watchers under faults: each watches every key from revision 1 through any member, resuming
//! by itself across failures, and its stream is checked as it comes against what a stream of
//! the committed history must be. Every revision is a change, so a watch of every key sees
//! every revision: in order, none missing, none twice; each event's previous value (and
//! version, create revision) follows from the events before it. At the end the state the
//! stream built must equal the healed cluster's keys at the revision the watcher reached.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metastore_client::{
    Client, Consistency, EventKind, KeyValue, RangeRequest, Watch, WatchRequest, WatchResponse,
};
use serde::Serialize;

use crate::member::{watch_line, Etcd, Protocol};
use crate::pki::Credentials;

/// How long a watcher may make no progress on the healed cluster before it counts as stuck.
const STUCK: Duration = Duration::from_secs(30);
/// How long a gRPC watcher waits before resuming on the next member.
const RECONNECT: Duration = Duration::from_millis(200);

/// A stream being checked: the keys as its events have left them.
#[derive(Debug, Default)]
pub struct StreamCheck {
    keys: BTreeMap<Vec<u8>, KeyValue>,
    /// The revision the next event must have.
    next: u64,
}

impl StreamCheck {
    /// A stream from the first write to an empty store.
    pub fn from_start() -> Self {
        Self { keys: BTreeMap::new(), next: metastore_client::EMPTY_STORE_REVISION + 1 }
    }

    /// A stream continuing from `listing`, every key as of `revision`.
    pub fn from_listing(listing: Vec<KeyValue>, revision: u64) -> Self {
        Self { keys: listing.into_iter().map(|kv| (kv.key.clone(), kv)).collect(), next: revision + 1 }
    }

    pub fn next_revision(&self) -> u64 {
        self.next
    }

    pub fn keys(&self) -> &BTreeMap<Vec<u8>, KeyValue> {
        &self.keys
    }

    /// Checks one line of the stream and applies its events.
    pub fn line(&mut self, line: &WatchResponse) -> Result<(), String> {
        if line.created || line.canceled {
            return Ok(());
        }
        if line.progress {
            if line.revision + 1 != self.next {
                return Err(format!(
                    "progress to {} while the events reached {}",
                    line.revision,
                    self.next - 1
                ));
            }
            return Ok(());
        }
        let mut revision = None;
        for event in &line.events {
            let at = event.kv.mod_revision;
            match revision {
                Some(current) if at == current => {}
                _ if at == self.next => {
                    revision = Some(at);
                    self.next += 1;
                }
                _ => return Err(format!("an event at revision {at} where {} was due", self.next)),
            }
            self.event(event)?;
        }
        if line.revision + 1 != self.next {
            return Err(format!(
                "a line through revision {} whose events reached {}",
                line.revision,
                self.next - 1
            ));
        }
        Ok(())
    }

    fn event(&mut self, event: &metastore_client::WatchEvent) -> Result<(), String> {
        let key = String::from_utf8_lossy(&event.kv.key).into_owned();
        let before = self.keys.get(&event.kv.key);
        if event.prev_kv.as_ref() != before {
            return Err(format!(
                "{key} at {}: previous {:?}, but the stream had {before:?}",
                event.kv.mod_revision, event.prev_kv
            ));
        }
        match event.kind {
            EventKind::Put => {
                let (version, created) =
                    before.map_or((1, event.kv.mod_revision), |b| (b.version + 1, b.create_revision));
                if (event.kv.version, event.kv.create_revision) != (version, created) {
                    return Err(format!(
                        "{key} at {}: version {} created {}, not {version} created {created}",
                        event.kv.mod_revision, event.kv.version, event.kv.create_revision
                    ));
                }
                self.keys.insert(event.kv.key.clone(), event.kv.clone());
            }
            EventKind::Delete => {
                if self.keys.remove(&event.kv.key).is_none() {
                    return Err(format!("{key} deleted at {} while absent", event.kv.mod_revision));
                }
            }
        }
        Ok(())
    }
}

/// What the watchers saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct WatchReport {
    pub watchers: usize,
    pub events: usize,
    /// Times a watcher was cancelled (compaction overtook it) and started over from a listing.
    pub restarts: usize,
    pub violations: Vec<String>,
}

/// One watcher: watches every key through `members`, in its protocol, checking as it goes.
pub struct Watcher {
    members: Vec<Client>,
    protocol: Protocol,
    /// What gRPC channels present and trust, when members speak TLS.
    credentials: Option<Credentials>,
    check: Arc<Mutex<StreamCheck>>,
    report: Arc<Mutex<WatchReport>>,
    /// The member its watch last read from, for a report on a watch that falls behind.
    serving: Arc<Mutex<Option<String>>>,
}

fn everything() -> WatchRequest {
    WatchRequest { prev_kv: true, ..WatchRequest::prefix(Vec::new()) }
}

/// What a watcher does after a line of its stream.
enum Next {
    Continue,
    /// The watch was cancelled (compaction overtook it): start over from a listing.
    Restart,
    Stop,
}

impl Watcher {
    pub fn new(
        members: Vec<Client>,
        protocol: Protocol,
        credentials: Option<Credentials>,
        report: Arc<Mutex<WatchReport>>,
    ) -> Self {
        Self {
            members,
            protocol,
            credentials,
            check: Arc::new(Mutex::new(StreamCheck::from_start())),
            report,
            serving: Arc::default(),
        }
    }

    fn note(&self, change: impl FnOnce(&mut WatchReport)) {
        if let Ok(mut report) = self.report.lock() {
            change(&mut report);
        }
    }

    /// Watches until `stop` says so; a violation ends it.
    pub async fn run(&self, stop: tokio::sync::watch::Receiver<bool>) {
        match self.protocol {
            Protocol::Http => self.run_http(stop).await,
            Protocol::Grpc => self.run_grpc(stop).await,
        }
    }

    /// Through the HTTP API's watch, which resumes across members by itself.
    async fn run_http(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut watch =
            Watch::across(self.members.clone(), WatchRequest { start_revision: 1, ..everything() });
        loop {
            let line = tokio::select! {
                line = watch.next() => line,
                _ = stop.wait_for(|stop| *stop) => return,
            };
            let next = match line {
                Some(Ok(line)) => self.take(&line, watch.member_url()),
                Some(Err(e)) => {
                    self.note(|r| r.violations.push(format!("the watch failed: {e}")));
                    Next::Stop
                }
                None => Next::Restart,
            };
            match next {
                Next::Continue => {}
                Next::Restart => match self.restart().await {
                    Some(next) => {
                        let request = WatchRequest { start_revision: next, ..everything() };
                        watch = Watch::across(self.members.clone(), request);
                    }
                    None => return,
                },
                Next::Stop => return,
            }
        }
    }

    /// Through etcd's gRPC Watch, resumed here as an etcd client resumes it: when the stream
    /// breaks, on the next member, from the revision after the last one seen.
    async fn run_grpc(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let members: Vec<Etcd> =
            match self.members.iter().map(|m| Etcd::new(m.base_url(), self.credentials.as_ref())).collect() {
                Ok(members) => members,
                Err(e) => return self.note(|r| r.violations.push(format!("no gRPC channel: {e:#}"))),
            };
        for turn in 0.. {
            let member = &members[turn % members.len()];
            let from = self.check.lock().map(|c| c.next_revision()).unwrap_or(1);
            let opened = tokio::select! {
                opened = member.watch_everything(from) => opened,
                _ = stop.wait_for(|stop| *stop) => return,
            };
            if let Ok(mut answers) = opened {
                loop {
                    let answer = tokio::select! {
                        answer = answers.message() => answer,
                        _ = stop.wait_for(|stop| *stop) => return,
                    };
                    // A stream that breaks or ends resumes elsewhere.
                    let Ok(Some(answer)) = answer else { break };
                    let line = watch_line(answer);
                    let next = match line.canceled {
                        true if line.compact_revision > 0 => Next::Restart,
                        // Cancelled for a reason of the member's own (it is stopping).
                        true => break,
                        false => self.take(&line, Some(member.url())),
                    };
                    match next {
                        Next::Continue => {}
                        Next::Restart if self.restart().await.is_some() => break,
                        Next::Restart | Next::Stop => return,
                    }
                }
            }
            tokio::time::sleep(RECONNECT).await;
        }
    }

    /// Checks one line of the stream, read from `member`.
    fn take(&self, line: &WatchResponse, member: Option<&str>) -> Next {
        if line.canceled {
            return Next::Restart;
        }
        if let Ok(mut serving) = self.serving.lock() {
            *serving = member.map(str::to_string);
        }
        match self.check.lock().map(|mut check| check.line(line)) {
            Ok(Ok(())) => {
                self.note(|r| r.events += line.events.len());
                Next::Continue
            }
            Ok(Err(violation)) => {
                self.note(|r| r.violations.push(violation));
                Next::Stop
            }
            Err(_) => Next::Stop,
        }
    }

    /// Lists every key, then continues the check from there; the revision to watch from.
    async fn restart(&self) -> Option<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let everything =
                RangeRequest { limit: Some(metastore_client::MAX_RANGE_LIMIT), ..RangeRequest::default() };
            for member in &self.members {
                if let Ok(page) = member.range(&everything).await {
                    if page.more {
                        self.note(|r| {
                            r.violations
                                .push("more keys than one listing holds: the check needs fewer".into())
                        });
                        return None;
                    }
                    let revision = page.revision;
                    if let Ok(mut check) = self.check.lock() {
                        *check = StreamCheck::from_listing(page.kvs, revision);
                    }
                    self.note(|r| r.restarts += 1);
                    return Some(revision + 1);
                }
            }
            if Instant::now() > deadline {
                self.note(|r| r.violations.push("no member would list the keys to restart a watch".into()));
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// On the healed cluster: once the watcher has reached revision `through`, the keys its
    /// stream built must be the cluster's keys at the revision it reached.
    pub async fn final_check(&self, member: &Client, through: u64) {
        // A watcher slowed by a busy machine may take long; one that stops moving is stuck.
        let mut deadline = Instant::now() + STUCK;
        let mut last = 0;
        // The revision reached and the state the stream built by then, taken together: the
        // leader goes on revoking expired leases, so the stream may move on meanwhile.
        let (reached, built) = loop {
            let (next, keys) = match self.check.lock() {
                Ok(check) if check.next_revision() > through => {
                    (check.next_revision(), Some(check.keys().clone()))
                }
                Ok(check) => (check.next_revision(), None),
                Err(_) => return,
            };
            if let Some(keys) = keys {
                break (next - 1, keys);
            }
            if next != last {
                (last, deadline) = (next, Instant::now() + STUCK);
            }
            if Instant::now() > deadline {
                let serving = self.serving.lock().ok().and_then(|s| s.clone()).unwrap_or_default();
                let stale = RangeRequest {
                    consistency: Consistency::Stale,
                    limit: Some(1),
                    ..RangeRequest::default()
                };
                // Through the run's own client of that member, which holds its credentials.
                let member = self.members.iter().find(|m| m.base_url() == serving).cloned();
                let member = member.unwrap_or_else(|| Client::new(serving.clone()));
                let there = match member.range(&stale).await {
                    Ok(page) => format!("its store at revision {}", page.revision),
                    Err(e) => format!("unreadable: {e}"),
                };
                let reached = next.saturating_sub(1);
                self.note(|r| {
                    r.violations.push(format!(
                        "the watch reached only {reached} of {through}, last through {serving} ({there})"
                    ))
                });
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let listing =
            RangeRequest { revision: Some(reached), limit: Some(10_000), ..RangeRequest::default() };
        match member.range(&listing).await {
            Ok(page) => {
                let stored: BTreeMap<Vec<u8>, KeyValue> =
                    page.kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
                if stored != built {
                    let differ = stored.keys().chain(built.keys()).find(|k| stored.get(*k) != built.get(*k));
                    let key = differ.map(|k| String::from_utf8_lossy(k).into_owned());
                    self.note(|r| {
                        r.violations.push(format!(
                            "the stream's state at {reached} differs from the store's, first at {key:?}"
                        ))
                    });
                }
            }
            Err(e) => self.note(|r| r.violations.push(format!("the final listing at {reached} failed: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use metastore_client::WatchEvent;

    use super::*;

    fn kv(key: &str, value: &str, create: u64, modified: u64, version: u64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: create,
            mod_revision: modified,
            version,
            lease: 0,
        }
    }

    fn put(kv: KeyValue, prev: Option<KeyValue>) -> WatchEvent {
        WatchEvent { kind: EventKind::Put, kv, prev_kv: prev }
    }

    fn delete(key: &str, at: u64, prev: Option<KeyValue>) -> WatchEvent {
        WatchEvent { kind: EventKind::Delete, kv: kv(key, "", 0, at, 0), prev_kv: prev }
    }

    fn line(revision: u64, events: Vec<WatchEvent>) -> WatchResponse {
        WatchResponse { revision, events, ..WatchResponse::default() }
    }

    /// On an empty store (revision 1): a=1 (2), b=1 and a=2 in one transaction (3), delete b (4).
    fn history() -> Vec<WatchResponse> {
        vec![
            line(2, vec![put(kv("a", "1", 2, 2, 1), None)]),
            line(
                3,
                vec![
                    put(kv("b", "1", 3, 3, 1), None),
                    put(kv("a", "2", 2, 3, 2), Some(kv("a", "1", 2, 2, 1))),
                ],
            ),
            line(4, vec![delete("b", 4, Some(kv("b", "1", 3, 3, 1)))]),
        ]
    }

    fn check(lines: &[WatchResponse]) -> Result<StreamCheck, String> {
        let mut check = StreamCheck::from_start();
        for l in lines {
            check.line(l)?;
        }
        Ok(check)
    }

    #[test]
    fn a_whole_stream_passes_and_builds_the_final_state() {
        let check = check(&history()).expect("a whole stream");
        assert_eq!(check.keys().len(), 1);
        assert_eq!(check.next_revision(), 5);
    }

    #[test]
    fn a_gap_is_caught() {
        let mut gap = history();
        gap.remove(1);
        assert!(check(&gap).is_err());
    }

    #[test]
    fn a_duplicate_is_caught() {
        let mut twice = history();
        twice.insert(2, twice[1].clone());
        assert!(check(&twice).is_err());
    }

    #[test]
    fn a_wrong_previous_value_is_caught() {
        let mut wrong = history();
        wrong[1].events[1].prev_kv = Some(kv("a", "0", 2, 2, 1));
        assert!(check(&wrong).is_err());
    }

    #[test]
    fn a_wrong_version_is_caught() {
        let mut wrong = history();
        wrong[1].events[1].kv.version = 1;
        assert!(check(&wrong).is_err());
    }

    #[test]
    fn progress_beyond_the_events_is_caught() {
        let mut ahead = history();
        ahead.insert(1, WatchResponse { revision: 3, progress: true, ..WatchResponse::default() });
        assert!(check(&ahead).is_err(), "progress to 3 while events reached 2: the events at 3 were skipped");
    }

    #[test]
    fn a_restart_continues_from_the_listing() {
        let mut check = StreamCheck::from_listing(vec![kv("a", "2", 1, 2, 2)], 2);
        check
            .line(&line(3, vec![put(kv("a", "3", 1, 3, 3), Some(kv("a", "2", 1, 2, 2)))]))
            .expect("continues");
    }
}
