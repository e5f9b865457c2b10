//! The bank: multi-key transactions under faults. Accounts start with equal balances; tellers
//! move money between two accounts with one transaction each (compares on both accounts' mod
//! revisions, then two puts), and an auditor reads every account — in one transaction, as a
//! linearizable listing, as a stale one, and at past revisions — from any member. Whatever
//! fails, every read at every revision must find every account and the same total: a
//! transaction half applied, or a read that mixes two revisions, shows as money made or lost.
//! Linearizable audits must also never see the store's revision go back.

use std::sync::{Arc, Mutex};

use metastore_client::{
    Client, ClientError, CompareResult, CompareTarget, Consistency, KeyValue, RangeRequest, TxnCompare,
    TxnOp, TxnOpResponse, TxnRange, TxnRequest, TxnResponse,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::member::{Failure, Member};

const PREFIX: &str = "bank/";
/// Each account's opening balance.
const OPENING: u64 = 100;

/// What the bank's clients did and every violation the auditor found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct BankReport {
    pub accounts: usize,
    pub transfers: usize,
    pub transfers_refused: usize,
    pub transfers_unknown: usize,
    /// Reads of every account, by kind.
    pub audits: usize,
    pub past_audits: usize,
    pub stale_audits: usize,
    pub violations: Vec<String>,
}

#[derive(Clone)]
pub struct Bank {
    accounts: usize,
    /// The revision the accounts were opened at: a read of an earlier state (a stale read from
    /// a member still catching up) rightly finds none.
    opened: u64,
    report: Arc<Mutex<BankReport>>,
}

fn account(i: usize) -> String {
    format!("{PREFIX}{i:03}")
}

/// `[bank/, bank0)`: every account.
fn all_accounts() -> TxnRange {
    TxnRange { key: PREFIX.as_bytes().to_vec(), range_end: b"bank0".to_vec(), ..TxnRange::default() }
}

/// The violations of the bank's invariant in one read of every account, if any.
pub fn audit(accounts: usize, kvs: &[KeyValue]) -> Option<String> {
    let mut total = 0u64;
    for kv in kvs {
        let text = String::from_utf8_lossy(&kv.value);
        match text.parse::<u64>() {
            Ok(balance) => total += balance,
            Err(_) => {
                return Some(format!("{} holds {text:?}, not a balance", String::from_utf8_lossy(&kv.key)))
            }
        }
    }
    let expected = accounts as u64 * OPENING;
    if kvs.len() != accounts || total != expected {
        return Some(format!("{} accounts holding {total}, not {accounts} holding {expected}", kvs.len()));
    }
    None
}

impl Bank {
    /// Opens `accounts` accounts in one transaction, retrying until a member takes it.
    pub async fn open(member: &Client, accounts: usize) -> anyhow::Result<Self> {
        let txn = TxnRequest {
            compare: vec![TxnCompare::key(account(0), CompareResult::Equal, CompareTarget::Version(0))],
            success: (0..accounts).map(|i| TxnOp::put(account(i), OPENING.to_string())).collect(),
            failure: vec![],
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match member.txn(&txn).await {
                // Failed compares: an earlier attempt whose answer was lost opened the bank.
                Ok(_) => break,
                Err(e) if std::time::Instant::now() > deadline => anyhow::bail!("opening the bank: {e}"),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
        // Its answer may have been lost and a retry refused: the accounts say when they opened.
        let listing = RangeRequest { prefix: Some(PREFIX.into()), ..RangeRequest::default() };
        let opened = member.range(&listing).await?.kvs.iter().map(|kv| kv.create_revision).max().unwrap_or(0);
        let report = BankReport { accounts, ..BankReport::default() };
        Ok(Self { accounts, opened, report: Arc::new(Mutex::new(report)) })
    }

    pub fn report(&self) -> BankReport {
        self.report.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn note(&self, change: impl FnOnce(&mut BankReport)) {
        if let Ok(mut report) = self.report.lock() {
            change(&mut report);
        }
    }

    fn check(&self, how: &str, revision: u64, kvs: &[KeyValue]) {
        let accounts = if revision < self.opened { 0 } else { self.accounts };
        if let Some(violation) = audit(accounts, kvs) {
            self.note(|r| r.violations.push(format!("{how} at revision {revision}: {violation}")));
        }
    }

    /// Moves money between random accounts until `stop` says so.
    pub async fn teller(self, members: Vec<Member>, seed: u64, stop: tokio::sync::watch::Receiver<bool>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let (first, end) = (all_accounts().key, all_accounts().range_end);
        while !*stop.borrow() {
            let member = &members[rng.random_range(0..members.len())];
            let Ok((revision, kvs)) = member.list(&first, &end).await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            self.check("a teller's read", revision, &kvs);
            if kvs.len() < 2 {
                continue;
            }
            let from = &kvs[rng.random_range(0..kvs.len())];
            let to = &kvs[rng.random_range(0..kvs.len())];
            let balance = String::from_utf8_lossy(&from.value).parse::<u64>().unwrap_or(0);
            if from.key == to.key || balance == 0 {
                continue;
            }
            let amount = rng.random_range(1..=balance);
            let credited = String::from_utf8_lossy(&to.value).parse::<u64>().unwrap_or(0) + amount;
            let transfer = [
                (from.key.as_slice(), from.mod_revision, (balance - amount).to_string().into_bytes()),
                (to.key.as_slice(), to.mod_revision, credited.to_string().into_bytes()),
            ];
            match member.swap(&transfer).await {
                Ok(()) => self.note(|r| r.transfers += 1),
                Err(Failure::Refused) => self.note(|r| r.transfers_refused += 1),
                Err(_) => {
                    self.note(|r| r.transfers_unknown += 1);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Reads every account in every way there is until `stop` says so.
    pub async fn auditor(self, members: Vec<Client>, seed: u64, stop: tokio::sync::watch::Receiver<bool>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut latest = 0u64;
        let mut seen_revisions: Vec<u64> = Vec::new();
        while !*stop.borrow() {
            let member = &members[rng.random_range(0..members.len())];
            let listing = RangeRequest { prefix: Some(PREFIX.into()), ..RangeRequest::default() };
            let answered = match rng.random_range(0..4) {
                0 => {
                    let read =
                        TxnRequest { success: vec![TxnOp::Range(all_accounts())], ..Default::default() };
                    let answer = member.txn(&read).await;
                    let kvs = answer.as_ref().ok().and_then(|a| ranged(a).map(|kvs| (a.revision, kvs)));
                    if let Some((revision, kvs)) = kvs {
                        self.check("a transaction's range", revision, kvs);
                        self.saw(&mut latest, revision, "a transaction's range");
                        seen_revisions.push(revision);
                        self.note(|r| r.audits += 1);
                    }
                    answer.is_ok()
                }
                1 => {
                    let page = member.range(&listing).await;
                    if let Ok(page) = &page {
                        self.check("a linearizable listing", page.revision, &page.kvs);
                        self.saw(&mut latest, page.revision, "a linearizable listing");
                        seen_revisions.push(page.revision);
                        self.note(|r| r.audits += 1);
                    }
                    page.is_ok()
                }
                2 => {
                    let stale = RangeRequest { consistency: Consistency::Stale, ..listing };
                    let page = member.range(&stale).await;
                    if let Ok(page) = &page {
                        self.check("a stale listing", page.revision, &page.kvs);
                        self.note(|r| r.stale_audits += 1);
                    }
                    page.is_ok()
                }
                _ => {
                    // Past revisions: compaction may have taken them (410), which is no violation.
                    let Some(&at) = seen_revisions.get(rng.random_range(0..seen_revisions.len().max(1)))
                    else {
                        continue;
                    };
                    let past = RangeRequest { revision: Some(at), ..listing };
                    match member.range(&past).await {
                        Ok(page) => {
                            self.check("a listing at a past revision", at, &page.kvs);
                            self.note(|r| r.past_audits += 1);
                            true
                        }
                        Err(ClientError::Api(e)) if e.status == 410 => {
                            seen_revisions.retain(|r| *r > at);
                            true
                        }
                        Err(_) => false,
                    }
                }
            };
            if !answered {
                // A member down or a cluster without a leader: do not spin against it.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            if seen_revisions.len() > 1_000 {
                seen_revisions.drain(..500);
            }
        }
    }

    /// Reads every account once more on the healed cluster, retrying until it answers.
    pub async fn final_audit(&self, member: &Client) {
        let listing = RangeRequest { prefix: Some(PREFIX.into()), ..RangeRequest::default() };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match member.range(&listing).await {
                Ok(page) => {
                    self.check("the final listing", page.revision, &page.kvs);
                    return;
                }
                Err(e) if std::time::Instant::now() > deadline => {
                    self.note(|r| r.violations.push(format!("the final listing failed: {e}")));
                    return;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
    }

    /// A linearizable read invoked after another completed never sees an older store.
    fn saw(&self, latest: &mut u64, revision: u64, how: &str) {
        if revision < *latest {
            let went_back = format!("{how} saw revision {revision} after one at {latest}");
            self.note(|r| r.violations.push(went_back));
        }
        *latest = (*latest).max(revision);
    }
}

/// The accounts a one-range transaction read.
fn ranged(answer: &TxnResponse) -> Option<&[KeyValue]> {
    match answer.responses.first() {
        Some(TxnOpResponse::Range(range)) => Some(&range.kvs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(i: usize, balance: u64) -> KeyValue {
        KeyValue {
            key: account(i).into_bytes(),
            value: balance.to_string().into_bytes(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn the_audit_passes_a_whole_bank_and_catches_money_made_lost_or_missing() {
        assert_eq!(audit(3, &[kv(0, 100), kv(1, 150), kv(2, 50)]), None);
        assert!(audit(3, &[kv(0, 100), kv(1, 100), kv(2, 50)]).is_some(), "half a transfer");
        assert!(audit(3, &[kv(0, 100), kv(1, 200)]).is_some(), "an account missing");
        let mut torn = kv(2, 0);
        torn.value = b"garbage".to_vec();
        assert!(audit(3, &[kv(0, 150), kv(1, 150), torn]).is_some());
    }

    #[test]
    fn a_state_before_the_bank_opened_holds_no_account_and_no_later_one_is_empty() {
        let bank = Bank { accounts: 2, opened: 5, report: Arc::default() };
        bank.check("a stale read", 0, &[]);
        assert!(bank.report().violations.is_empty());
        bank.check("a stale read", 5, &[]);
        bank.check("a stale read", 4, &[kv(0, 100), kv(1, 100)]);
        assert_eq!(bank.report().violations.len(), 2);
    }

    #[test]
    fn a_linearizable_read_that_goes_back_in_revisions_is_a_violation() {
        let bank = Bank { accounts: 1, opened: 1, report: Arc::default() };
        let mut latest = 0;
        bank.saw(&mut latest, 5, "a read");
        bank.saw(&mut latest, 5, "a read");
        assert!(bank.report().violations.is_empty());
        bank.saw(&mut latest, 4, "a read");
        assert_eq!(bank.report().violations.len(), 1);
    }
}
