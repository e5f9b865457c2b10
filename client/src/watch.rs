//! `GET /v1/watch`: a key's, a prefix's or a range's changes, streamed as one JSON object per
//! line, and [`Watch`], the client side that resumes by itself.

use std::collections::VecDeque;
use std::time::Duration;

use percent_encoding::percent_encode;
use serde::{Deserialize, Serialize};

use crate::client::{Client, KEY_ESCAPES};
use crate::error::{ApiError, ClientError};
use crate::types::{ErrorBody, KeyValue};

/// What to watch, and from when.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchRequest {
    /// The key, or the start of the range.
    pub key: Vec<u8>,
    /// Empty: `key` alone; one zero byte: every key from `key` on; else the end of
    /// `[key, range_end)` (etcd's convention). See [`WatchRequest::prefix`].
    pub range_end: Vec<u8>,
    /// The first revision to report; 0: changes after the current revision.
    pub start_revision: u64,
    /// Report each key's state before the change too.
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    /// Report the revision the watch is synced to every few seconds, even when nothing changes.
    pub progress_notify: bool,
}

impl WatchRequest {
    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        let mut range_end = key.clone();
        while let Some(last) = range_end.pop() {
            if last < u8::MAX {
                range_end.push(last + 1);
                return Self { key, range_end, ..Self::default() };
            }
        }
        // No key after them all: every key from the prefix on (from the least key, for all).
        let key = if key.is_empty() { vec![0] } else { key };
        Self { key, range_end: vec![0], ..Self::default() }
    }

    /// One key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into(), ..Self::default() }
    }
}

/// One line of a watch's stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchResponse {
    /// With `created`: the store's revision as the watch started. With events or `progress`:
    /// every change up to this revision has been reported, so a watch resumed from the next
    /// one misses nothing and repeats nothing.
    pub revision: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub created: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub progress: bool,
    /// The watch ended; no line follows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub canceled: bool,
    /// When cancelled because the changes it needs are compacted: the compaction revision.
    /// Re-list at or after it, then watch from the listing's revision + 1.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compact_revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// The changes of whole revisions, in order: a transaction's are never split.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<WatchEvent>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The key after the change. For a delete: the key, with `mod_revision` the delete's
    /// revision and everything else empty (etcd's shape).
    pub kv: KeyValue,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Put,
    Delete,
}

/// How long a resuming watch waits before connecting again.
const RECONNECT: Duration = Duration::from_millis(200);

/// A watch that resumes by itself: when its connection breaks (a member restarting, a network
/// fault) it connects again — to the next of its members, when it has several — from the
/// revision after the last it reported, so the events it yields have no gap and no duplicate.
/// It ends when a member cancels it because compaction passed it, or refuses it as invalid; a
/// member that stops sends it on to another.
pub struct Watch {
    /// The members it may watch through; it moves to the next when a connection fails.
    members: Vec<Client>,
    current: usize,
    request: WatchRequest,
    /// The revision to resume from; 0 until the first connection says where "now" is.
    next: u64,
    response: Option<reqwest::Response>,
    buffer: Vec<u8>,
    ready: VecDeque<WatchResponse>,
    created: bool,
    ended: bool,
    /// The member ended the watch for a reason of its own (it is stopping): go elsewhere.
    dropped: bool,
}

impl Client {
    /// Watches `request`'s keys through this member; see [`Watch`].
    pub fn watch(&self, request: WatchRequest) -> Watch {
        Watch::across(vec![self.clone()], request)
    }
}

impl Watch {
    /// Watches `request`'s keys through any of `members`, moving to the next when one fails.
    pub fn across(members: Vec<Client>, request: WatchRequest) -> Watch {
        let next = request.start_revision;
        Watch {
            members,
            current: 0,
            request,
            next,
            response: None,
            buffer: Vec::new(),
            ready: VecDeque::new(),
            created: false,
            ended: false,
            dropped: false,
        }
    }

    /// Where the watch resumes if its connection breaks: the revision after the last it
    /// reported every change up to (0 before it first connected, for a watch from now).
    pub fn next_revision(&self) -> u64 {
        self.next
    }

    /// The member the watch is reading from, or would connect to next.
    pub fn member_url(&self) -> Option<&str> {
        self.member().map(Client::base_url)
    }

    fn member(&self) -> Option<&Client> {
        self.members.get(self.current % self.members.len().max(1))
    }

    /// Gives up the connection, to resume through the next member after a pause.
    async fn move_on(&mut self) {
        self.response = None;
        self.buffer.clear();
        self.current = self.current.wrapping_add(1);
        tokio::time::sleep(RECONNECT).await;
    }

    /// The next line of the watch: `created` once, then events and progress; `None` once it
    /// has ended. An error is final too: the request is invalid, or the member answered
    /// something that is not a watch.
    pub async fn next(&mut self) -> Option<Result<WatchResponse, ClientError>> {
        loop {
            if let Some(line) = self.ready.pop_front() {
                return Some(Ok(line));
            }
            if self.ended {
                return None;
            }
            let Some(response) = self.response.as_mut() else {
                match self.connect().await {
                    Ok(response) => self.response = Some(response),
                    Err(e) if e.is_retryable() || matches!(e, ClientError::Transport { .. }) => {
                        self.move_on().await;
                    }
                    Err(e) => {
                        self.ended = true;
                        return Some(Err(e));
                    }
                }
                continue;
            };
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    self.buffer.extend_from_slice(&chunk);
                    if let Err(e) = self.take_lines() {
                        self.ended = true;
                        return Some(Err(e));
                    }
                    if std::mem::take(&mut self.dropped) {
                        self.move_on().await;
                    }
                }
                // The stream broke or ended without a cancellation: resume.
                Ok(None) | Err(_) => self.move_on().await,
            }
        }
    }

    async fn connect(&self) -> Result<reqwest::Response, ClientError> {
        let Some(client) = self.member() else {
            let message = "a watch through no member".to_string();
            return Err(ClientError::Protocol { url: String::new(), message });
        };
        let r = &self.request;
        let mut url = format!(
            "{}/v1/watch?key={}&start_revision={}",
            client.base_url(),
            percent_encode(&r.key, KEY_ESCAPES),
            self.next
        );
        if !r.range_end.is_empty() {
            url.push_str(&format!("&range_end={}", percent_encode(&r.range_end, KEY_ESCAPES)));
        }
        for (flag, name) in [
            (r.prev_kv, "prev_kv"),
            (r.no_put, "no_put"),
            (r.no_delete, "no_delete"),
            (r.progress_notify, "progress_notify"),
        ] {
            if flag {
                url.push_str(&format!("&{name}=true"));
            }
        }
        // A watch lasts as long as it is wanted: no overall deadline.
        let request = client.http().get(&url).timeout(Duration::from_secs(u32::MAX as u64));
        let response =
            request.send().await.map_err(|source| ClientError::Transport { url: url.clone(), source })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => Err(ClientError::Api(ApiError { status, body })),
            Err(_) => Err(ClientError::Protocol { url, message: format!("status {status}: {text}") }),
        }
    }

    /// Moves every whole line of the buffer to `ready`, keeping track of where to resume.
    fn take_lines(&mut self) -> Result<(), ClientError> {
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line: WatchResponse = serde_json::from_slice(&line).map_err(|e| ClientError::Protocol {
                url: "/v1/watch".to_string(),
                message: format!("a watch line that is not JSON: {e}"),
            })?;
            if line.created {
                if self.next == 0 {
                    self.next = line.revision + 1;
                }
                // A resumed watch is the same watch: its client hears of its creation once.
                if std::mem::replace(&mut self.created, true) {
                    continue;
                }
            } else if line.canceled && line.compact_revision == 0 {
                // Not the watch's end, only this member's (it is stopping, or cannot read its
                // store): resume through another.
                self.dropped = true;
                self.buffer.clear();
                return Ok(());
            } else if line.canceled {
                self.ended = true;
            } else {
                self.next = self.next.max(line.revision + 1);
            }
            self.ready.push_back(line);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_watch_names_the_range_of_keys_that_start_with_it() {
        assert_eq!(WatchRequest::prefix("app/").range_end, b"app0");
        assert_eq!(WatchRequest::prefix(vec![b'a', 0xff]).range_end, b"b");
        assert_eq!(WatchRequest::prefix(vec![0xff]).range_end, [0]);
        let all = WatchRequest::prefix(Vec::new());
        assert_eq!((all.key, all.range_end), (vec![0], vec![0]), "every key, as etcd names them");
    }

    #[test]
    fn lines_carry_only_what_they_say() {
        let created = WatchResponse { revision: 7, created: true, ..WatchResponse::default() };
        assert_eq!(serde_json::to_string(&created).expect("encode"), r#"{"revision":7,"created":true}"#);
        let line = r#"{"revision":9,"events":[{"type":"delete","kv":{"key":"YQ==","value":"","create_revision":0,"mod_revision":9,"version":0}}]}"#;
        let parsed: WatchResponse = serde_json::from_str(line).expect("decode");
        assert_eq!(parsed.events[0].kind, EventKind::Delete);
        assert_eq!(parsed.events[0].kv.mod_revision, 9);
    }

    #[test]
    fn a_resuming_watch_picks_up_after_the_last_revision_it_reported() {
        let mut watch = Client::new("http://127.0.0.1:1").watch(WatchRequest::prefix("a"));
        watch.buffer.extend_from_slice(
            b"{\"revision\":4,\"created\":true}\n{\"revision\":6,\"progress\":true}\n{\"rev",
        );
        watch.take_lines().expect("lines");
        assert_eq!(watch.next, 7);
        assert_eq!(watch.ready.len(), 2);
        assert_eq!(watch.buffer, b"{\"rev", "half a line waits for the rest");
        // The same watch, reconnected: its creation is not news, and it resumes where it was.
        watch.buffer = b"{\"revision\":9,\"created\":true}\n".to_vec();
        watch.take_lines().expect("lines");
        assert_eq!((watch.next, watch.ready.len()), (7, 2));
        // A member that stops ends its watches without a compaction revision: not the end.
        watch.buffer = b"{\"revision\":0,\"canceled\":true,\"cancel_reason\":\"stopping\"}\n".to_vec();
        watch.take_lines().expect("lines");
        assert!(watch.dropped && !watch.ended);
        assert_eq!((watch.next, watch.ready.len()), (7, 2), "nothing to yield, and it resumes from 7");
    }
}
