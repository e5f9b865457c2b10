//! The command line (every flag also readable from a `METASTORE_*` environment variable), and
//! its resolution into what a member needs to start.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use reqwest::Url;

use crate::listener::Limits;
use crate::network::{PeerToken, TokenError};
use crate::tls::TlsFiles;
use crate::types::{Member, NodeId};

/// A member of a metaStore cluster: a strongly consistent, replicated key-value store.
///
/// With no flags, runs a single-member cluster on 127.0.0.1 (clients on port 12380, peers on
/// 12379, data in data/1).
#[derive(Parser, Debug, Clone)]
#[command(name = "metastore", version)]
pub struct Args {
    /// This member's raft id (1-based). With --cluster, the Nth URL is this member's peer URL.
    #[arg(long, env = "METASTORE_MEMBER_ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub member_id: Option<u64>,

    /// Take the member id from the host name's StatefulSet ordinal: pod `name-0` is member 1.
    #[arg(long, env = "METASTORE_MEMBER_ID_FROM_HOSTNAME", conflicts_with = "member_id")]
    pub member_id_from_hostname: bool,

    /// The initial members' peer URLs, comma separated; member N listens on the Nth.
    #[arg(long, env = "METASTORE_CLUSTER", value_delimiter = ',')]
    pub cluster: Vec<String>,

    /// Port of the client HTTP API.
    #[arg(long, env = "METASTORE_PORT", default_value_t = 12380)]
    pub port: u16,

    /// Port of the peer (raft) listener; defaults to the port of this member's peer URL.
    #[arg(long, env = "METASTORE_PEER_PORT")]
    pub peer_port: Option<u16>,

    /// Address both listeners bind to (0.0.0.0 in a container). Without it, the client API
    /// listens on 127.0.0.1 and the peer listener on the host of this member's --cluster URL
    /// (or of --advertise-peer-url without one), so
    /// the seed's three commands, with each machine's address in --cluster, form a cluster
    /// across machines as they are.
    #[arg(long, env = "METASTORE_BIND_ADDRESS")]
    pub bind_address: Option<IpAddr>,

    /// Peer URL other members use to reach this one; defaults to this member's --cluster URL.
    #[arg(long, env = "METASTORE_ADVERTISE_PEER_URL")]
    pub advertise_peer_url: Option<String>,

    /// Client URL published in the membership; defaults to http://<bind address>:<port>.
    #[arg(long, env = "METASTORE_ADVERTISE_CLIENT_URL")]
    pub advertise_client_url: Option<String>,

    /// Where the member keeps its data; defaults to data/<member id>.
    #[arg(long, env = "METASTORE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// A file holding the cluster's peer token: members answer peer traffic only from
    /// holders of the same token. Off when neither this nor METASTORE_PEER_TOKEN is set.
    #[arg(long, env = "METASTORE_PEER_TOKEN_FILE", conflicts_with = "peer_token")]
    pub peer_token_file: Option<PathBuf>,

    /// The cluster's peer token itself (prefer --peer-token-file: a command line is visible to
    /// every local user).
    #[arg(long, env = "METASTORE_PEER_TOKEN", hide_env_values = true)]
    pub peer_token: Option<String>,

    /// Most connections each listener serves at once; more wait to be accepted.
    #[arg(long, env = "METASTORE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// A connection must send a request's headers within this (else it is closed): bounds
    /// slow-loris clients and idle keep-alive connections.
    #[arg(long, env = "METASTORE_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// A request must be answered within this (body included), or its connection is closed.
    #[arg(long, env = "METASTORE_REQUEST_TIMEOUT_MS", default_value_t = 60_000)]
    pub request_timeout_ms: u64,

    /// Start without bootstrapping: wait to be added to an existing cluster by its leader.
    #[arg(long, env = "METASTORE_JOIN")]
    pub join: bool,

    /// Log format.
    #[arg(long, env = "METASTORE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Leader heartbeat interval, in milliseconds.
    #[arg(long, env = "METASTORE_HEARTBEAT_INTERVAL_MS", default_value_t = 100)]
    pub heartbeat_interval_ms: u64,

    /// Shortest election timeout, in milliseconds; each timeout is drawn from [min, 1.5*min).
    #[arg(long, env = "METASTORE_ELECTION_TIMEOUT_MS", default_value_t = 300)]
    pub election_timeout_ms: u64,

    /// Take a snapshot (and purge the log behind it) after this many applied entries.
    #[arg(long, env = "METASTORE_SNAPSHOT_ENTRIES", default_value_t = 10_000)]
    pub snapshot_entries: u64,

    /// How the leader knows it still leads when it names a linearizable read's index.
    #[arg(long, env = "METASTORE_LINEARIZABLE_READS", value_enum, default_value_t = LinearizableReads::Lease)]
    pub linearizable_reads: LinearizableReads,

    /// Automatic compaction of history, as etcd's: `periodic` keeps a duration of it,
    /// `revision` a number of revisions (see --auto-compaction-retention).
    #[arg(long, env = "METASTORE_AUTO_COMPACTION_MODE", value_enum, default_value_t = AutoCompactionMode::Periodic)]
    pub auto_compaction_mode: AutoCompactionMode,

    /// How much history automatic compaction keeps: a duration in periodic mode (`1h`, `30m`,
    /// `90s`; a bare number is hours, as in etcd), a number of revisions in revision mode.
    /// 0 (the default) keeps everything.
    #[arg(long, env = "METASTORE_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,

    /// How often a gRPC watch that asked for progress notifications gets one: a duration like
    /// 10m or 1s (etcd's --experimental-watch-progress-notify-interval, also accepted).
    #[arg(
        long,
        env = "METASTORE_WATCH_PROGRESS_NOTIFY_INTERVAL",
        alias = "experimental-watch-progress-notify-interval",
        default_value = "10m",
        value_parser = positive_duration
    )]
    pub watch_progress_notify_interval: Duration,

    /// Start a new cluster from a backup: a member whose data dir holds no store yet is seeded
    /// from this snapshot file (from GET /v1/snapshot or `etcdctl snapshot save`), keeping its
    /// keys, history and revisions, with --cluster's members and a new cluster id. Give the
    /// same file to every member of --cluster, or give --cluster this member alone and add the
    /// others (started with --join) later. A store that already exists is never replaced.
    /// With --join, the file is optional: when it is there, this member restores alone (and
    /// removes the file once restored); when it is not, it joins as usual. The operator starts
    /// every pod of a restored cluster so, and fetches the file into the first pod only.
    #[arg(long, env = "METASTORE_RESTORE_FROM", value_name = "FILE")]
    pub restore_from: Option<PathBuf>,

    /// The client port's certificate (PEM, leaf first, then any intermediates): with
    /// --key-file, the client port speaks only TLS (https://). Read again whenever it changes.
    #[arg(long, env = "METASTORE_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,

    /// The private key of --cert-file (PEM).
    #[arg(long, env = "METASTORE_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,

    /// CAs (PEM bundle) whose client certificates the client port checks: demanded with
    /// --client-cert-auth, checked when presented without it.
    #[arg(long, env = "METASTORE_TRUSTED_CA_FILE", requires = "cert_file")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Demand of every client a certificate from --trusted-ca-file (`--client-cert-auth=true`,
    /// as etcd's command lines say it, works too).
    #[arg(
        long,
        env = "METASTORE_CLIENT_CERT_AUTH",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub client_cert_auth: bool,

    /// The peer port's certificate (PEM): with it the peer port speaks only TLS, peer URLs are
    /// https://, and this member presents it when it calls other members, so it must allow both
    /// server and client authentication. Read again whenever it changes.
    #[arg(long, env = "METASTORE_PEER_CERT_FILE", requires_all = ["peer_key_file", "peer_trusted_ca_file"])]
    pub peer_cert_file: Option<PathBuf>,

    /// The private key of --peer-cert-file (PEM).
    #[arg(long, env = "METASTORE_PEER_KEY_FILE", requires = "peer_cert_file")]
    pub peer_key_file: Option<PathBuf>,

    /// CAs (PEM bundle) whose certificates peers must present, and the peer port's own must
    /// come from.
    #[arg(long, env = "METASTORE_PEER_TRUSTED_CA_FILE", requires = "peer_cert_file")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Accepted for etcd's command lines: a TLS peer port always demands certificates.
    #[arg(
        long,
        env = "METASTORE_PEER_CLIENT_CERT_AUTH",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub peer_client_cert_auth: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `metastore` does besides running a member.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Write a snapshot of a stopped member's store to FILE, sealed as --restore-from takes it:
    /// how a cluster that lost its majority for good starts over from the most advanced member
    /// left (it holds what that member applied).
    ExportSnapshot {
        /// The stopped member's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Where to write the snapshot.
        file: PathBuf,
    },
}

/// A duration as Go writes one, which is what etcd's flags take: `10m`, `1h30m`, `10m0s`,
/// `1.5s`, `500ms`; `None` for anything else.
pub fn go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "h" => 3_600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            // Go accepts both micro signs: U+00B5 and U+03BC.
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * seconds;
    }
    // Go's durations end at 2^63 - 1 nanoseconds (about 292 years), and so do etcd's flags.
    let longest = Duration::from_nanos(i64::MAX as u64);
    Duration::try_from_secs_f64(total).ok().filter(|d| !text.is_empty() && *d <= longest)
}

/// A progress interval: a Go duration from a millisecond up (shorter would keep a watch
/// sending nothing but progress).
fn positive_duration(text: &str) -> Result<Duration, String> {
    match go_duration(text) {
        Some(d) if d >= Duration::from_millis(1) => Ok(d),
        _ => Err(format!("{text:?} is not a duration of 1ms or more, like 10m, 30s or 500ms")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AutoCompactionMode {
    Periodic,
    Revision,
}

/// What automatic compaction keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// History of at least this long ago is forgotten.
    Periodic(Duration),
    /// All but this many most recent revisions are forgotten.
    Revisions(u64),
}

/// Reads `--auto-compaction-retention` for `mode`; `None` when it keeps everything.
fn auto_compaction(mode: AutoCompactionMode, retention: &str) -> Result<Option<AutoCompaction>, ConfigError> {
    let retention = retention.trim();
    let invalid = || ConfigError::AutoCompaction(retention.to_string());
    let policy = match mode {
        AutoCompactionMode::Revision => AutoCompaction::Revisions(retention.parse().map_err(|_| invalid())?),
        // As etcd reads it: a bare number is hours, anything else a Go duration.
        AutoCompactionMode::Periodic => AutoCompaction::Periodic(match retention.parse::<u64>() {
            Ok(hours) => Duration::from_secs(hours.saturating_mul(3_600)),
            Err(_) => go_duration(retention).ok_or_else(invalid)?,
        }),
    };
    Ok(match policy {
        AutoCompaction::Revisions(0) => None,
        AutoCompaction::Periodic(d) if d.is_zero() => None,
        policy => Some(policy),
    })
}

/// How the leader confirms its leadership for linearizable reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LinearizableReads {
    /// A quorum round at most every election timeout; in between, a lease that assumes
    /// members' monotonic clocks advance at rates within a third of each other.
    Lease,
    /// A quorum round for every read (shared by concurrent reads): no clock assumption, for
    /// virtual machines that can be frozen whole and resumed.
    ReadIndex,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How a member with empty storage starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Initialize raft with these members (identical on every member of a static cluster).
    Static(BTreeMap<NodeId, Member>),
    /// Wait to be added by a leader (or initialized with `POST /v1/cluster/init`); or, if
    /// `restore` names a file that exists, seed the store from it as a cluster of this member
    /// alone, which the others then join.
    Join { restore: Option<PathBuf> },
    /// Seed the store from a snapshot file, then form a cluster of these members (identical on
    /// every member restored from the same file).
    Restore { snapshot: PathBuf, members: BTreeMap<NodeId, Member> },
}

/// Raft timing and log compaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftTuning {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_entries: u64,
    pub linearizable_reads: LinearizableReads,
}

impl RaftTuning {
    /// The leader's read lease per leadership confirmation: the shortest election timeout,
    /// two thirds of the lease openraft's followers grant (`election_timeout_max`).
    pub fn read_lease(&self) -> Option<Duration> {
        (self.linearizable_reads == LinearizableReads::Lease)
            .then(|| Duration::from_millis(self.election_timeout_ms))
    }
}

/// Everything a member needs to start, resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub id: NodeId,
    /// What other members and clients are told about this one.
    pub member: Member,
    pub peer_listen: SocketAddr,
    pub client_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub bootstrap: Bootstrap,
    pub raft: RaftTuning,
    pub log_format: LogFormat,
    pub peer_token: Option<PeerToken>,
    pub limits: Limits,
    /// Automatic compaction, if any.
    pub auto_compaction: Option<AutoCompaction>,
    /// How often a watch that asked for progress notifications gets one.
    pub watch_progress_every: Duration,
    /// The release this member reports (`GET /v1/cluster`).
    pub version: &'static str,
    /// TLS on the client port, if any.
    pub client_tls: Option<TlsFiles>,
    /// TLS on the peer port and on calls to peers, if any.
    pub peer_tls: Option<TlsFiles>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "--auto-compaction-retention {0:?} is not a retention: a duration like 1h, 30m or 90s \
         (periodic mode), or a number of revisions (revision mode)"
    )]
    AutoCompaction(String),
    #[error("member id {id} has no peer URL: --cluster lists {count} URL(s)")]
    NoPeerUrl { id: NodeId, count: usize },
    #[error("a joining member needs --advertise-peer-url (or its URL in --cluster)")]
    JoinWithoutPeerUrl,
    #[error("invalid URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("host name {0:?} does not end in a StatefulSet ordinal like `name-0`")]
    NoOrdinal(String),
    #[error("cannot read the host name: {0}")]
    Hostname(String),
    #[error("cannot find an address to listen on for peer URL host {host:?}: {reason}")]
    PeerHost { host: String, reason: String },
    #[error("the election timeout ({election}ms) must be at least three heartbeats ({heartbeat}ms each)")]
    Timing { election: u64, heartbeat: u64 },
    #[error(transparent)]
    PeerToken(#[from] TokenError),
    #[error("--client-cert-auth needs --trusted-ca-file: the CAs client certificates must come from")]
    ClientCertAuthWithoutCa,
    #[error("{flag} URL {url:?} must be {expected}://: {why}")]
    Scheme { flag: &'static str, url: String, expected: &'static str, why: &'static str },
}

/// Member id from a StatefulSet pod name: the ordinal after the last `-`, plus one.
pub fn member_id_from_hostname(hostname: &str) -> Result<NodeId, ConfigError> {
    hostname
        .rsplit_once('-')
        .and_then(|(_, ordinal)| ordinal.parse::<u64>().ok())
        .and_then(|ordinal| ordinal.checked_add(1))
        .ok_or_else(|| ConfigError::NoOrdinal(hostname.to_string()))
}

fn hostname() -> Result<String, ConfigError> {
    if let Ok(name) = std::env::var("HOSTNAME") {
        if !name.is_empty() {
            return Ok(name);
        }
    }
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .map_err(|e| ConfigError::Hostname(e.to_string()))
}

/// A member URL: `http://host:port`, or `https://` for TLS. Used for flags and for members
/// added through the API.
pub fn parse_url(url: &str) -> Result<Url, ConfigError> {
    let parsed =
        Url::parse(url).map_err(|e| ConfigError::BadUrl { url: url.into(), reason: e.to_string() })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(ConfigError::BadUrl {
            url: url.into(),
            reason: "expected http://host:port or https://host:port".into(),
        });
    }
    Ok(parsed)
}

/// Checks that a new member's peer URL speaks as this member's does (`own`): a member of a
/// TLS cluster would otherwise be called in clear text, peer token and all.
pub fn check_peer_scheme(url: &str, own: &str) -> Result<(), ConfigError> {
    let (theirs, ours) = (parse_url(url)?, parse_url(own)?);
    if theirs.scheme() == ours.scheme() {
        return Ok(());
    }
    let (expected, why) = match ours.scheme() {
        "https" => ("https", "this cluster's peers speak TLS"),
        _ => ("http", "this cluster's peers speak plain HTTP"),
    };
    Err(ConfigError::Scheme { flag: "peer", url: url.into(), expected, why })
}

/// What TLS on the peer port needs.
const PEER_TLS_FLAGS: &str = "TLS needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file";
/// What TLS on the client port needs.
const CLIENT_TLS_FLAGS: &str = "TLS needs --cert-file and --key-file";

/// Checks that `url`, given by `flag`, says TLS exactly when its port speaks it (`tls`);
/// `needs` says what TLS would take.
fn check_scheme(flag: &'static str, url: &str, tls: bool, needs: &'static str) -> Result<(), ConfigError> {
    let scheme_error = |expected, why| ConfigError::Scheme { flag, url: url.into(), expected, why };
    match (parse_url(url)?.scheme() == "https", tls) {
        (true, false) => Err(scheme_error("http", needs)),
        (false, true) => Err(scheme_error("https", "the port speaks TLS")),
        _ => Ok(()),
    }
}

/// A URL's text without a trailing slash, as stored in the membership.
fn normalized(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

impl Args {
    /// The client API stays on the loopback address unless told otherwise, as etcd's does.
    fn client_bind_address(&self) -> IpAddr {
        self.bind_address.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Peers are listened for where the peer URL says they will come (raftexample's rule),
    /// unless told otherwise.
    fn peer_bind_address(&self, peer_url: &Url) -> Result<IpAddr, ConfigError> {
        if let Some(address) = self.bind_address {
            return Ok(address);
        }
        let host = peer_url.host_str().unwrap_or_default();
        // An IPv6 literal comes bracketed.
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(ip);
        }
        let unresolved = |reason: String| ConfigError::PeerHost { host: host.to_string(), reason };
        let mut found =
            std::net::ToSocketAddrs::to_socket_addrs(&(host, 0)).map_err(|e| unresolved(e.to_string()))?;
        found.next().map(|a| a.ip()).ok_or_else(|| unresolved("it has no address".into()))
    }

    fn client_tls(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.cert_file.clone()?,
            key: self.key_file.clone()?,
            client_ca: self.trusted_ca_file.clone(),
            require_client_cert: self.client_cert_auth,
        })
    }

    fn peer_tls(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.peer_cert_file.clone()?,
            key: self.peer_key_file.clone()?,
            client_ca: Some(self.peer_trusted_ca_file.clone()?),
            require_client_cert: true,
        })
    }

    pub fn resolve(&self) -> Result<NodeConfig, ConfigError> {
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err(ConfigError::ClientCertAuthWithoutCa);
        }
        let (client_tls, peer_tls) = (self.client_tls(), self.peer_tls());
        let id = match (self.member_id, self.member_id_from_hostname) {
            (Some(id), _) => id,
            (None, true) => member_id_from_hostname(&hostname()?)?,
            (None, false) => 1,
        };
        let cluster: Vec<String> = if self.cluster.is_empty() && !self.join {
            // Alone: the one member is this one, where it listens for peers. Advertising the
            // default port whatever `--peer-port` says sent members added later elsewhere.
            let host = self.client_bind_address();
            let host = if host.is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { host };
            let scheme = if peer_tls.is_some() { "https" } else { "http" };
            vec![format!("{scheme}://{}", SocketAddr::new(host, self.peer_port.unwrap_or(12379)))]
        } else {
            self.cluster.iter().map(|u| normalized(u.trim())).filter(|u| !u.is_empty()).collect()
        };
        for url in &cluster {
            check_scheme("--cluster", url, peer_tls.is_some(), PEER_TLS_FLAGS)?;
        }
        let index = usize::try_from(id - 1).unwrap_or(usize::MAX);
        let peer_url = match (&self.advertise_peer_url, cluster.get(index)) {
            // A static member must be in the membership it proposes: else it would fail to
            // initialize (or, given none at all, be taken for a cluster of one).
            (Some(_), None) if !self.join => return Err(ConfigError::NoPeerUrl { id, count: cluster.len() }),
            (Some(url), _) => normalized(url),
            (None, Some(url)) => url.clone(),
            (None, None) if self.join => return Err(ConfigError::JoinWithoutPeerUrl),
            (None, None) => return Err(ConfigError::NoPeerUrl { id, count: cluster.len() }),
        };
        check_scheme("--advertise-peer-url", &peer_url, peer_tls.is_some(), PEER_TLS_FLAGS)?;
        let parsed = parse_url(&peer_url)?;
        // Listened for where --cluster says this member is; an advertised URL (which may be a
        // NAT's or a load balancer's) only without one.
        let listen_url = match cluster.get(index) {
            Some(url) => parse_url(url)?,
            None => parsed.clone(),
        };
        let peer_port = self.peer_port.or(parsed.port_or_known_default()).unwrap_or(12379);
        let client_url = match &self.advertise_client_url {
            Some(url) => normalized(url),
            None => {
                let host = self.client_bind_address();
                let host = if host.is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { host };
                let scheme = if client_tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{}", SocketAddr::new(host, self.port))
            }
        };
        check_scheme("--advertise-client-url", &client_url, client_tls.is_some(), CLIENT_TLS_FLAGS)?;
        let bootstrap = if self.join {
            Bootstrap::Join { restore: self.restore_from.clone() }
        } else {
            // Every member of a static cluster must propose the identical initial membership,
            // so it holds only what all of them know: the peer URLs.
            let members = cluster
                .iter()
                .enumerate()
                .map(|(i, url)| (i as u64 + 1, Member { peer_url: url.clone(), ..Member::default() }))
                .collect();
            match &self.restore_from {
                Some(snapshot) => Bootstrap::Restore { snapshot: snapshot.clone(), members },
                None => Bootstrap::Static(members),
            }
        };
        if self.election_timeout_ms < 3 * self.heartbeat_interval_ms {
            return Err(ConfigError::Timing {
                election: self.election_timeout_ms,
                heartbeat: self.heartbeat_interval_ms,
            });
        }
        Ok(NodeConfig {
            id,
            // The incarnation comes from the store when it is opened.
            member: Member { peer_url, client_url, incarnation: String::new() },
            peer_listen: SocketAddr::new(self.peer_bind_address(&listen_url)?, peer_port),
            client_listen: SocketAddr::new(self.client_bind_address(), self.port),
            data_dir: self.data_dir.clone().unwrap_or_else(|| PathBuf::from("data").join(id.to_string())),
            bootstrap,
            raft: RaftTuning {
                heartbeat_interval_ms: self.heartbeat_interval_ms,
                election_timeout_ms: self.election_timeout_ms,
                snapshot_entries: self.snapshot_entries,
                linearizable_reads: self.linearizable_reads,
            },
            log_format: self.log_format,
            limits: Limits {
                max_connections: self.max_connections.max(1),
                header_timeout: Duration::from_millis(self.header_timeout_ms.max(100)),
                request_timeout: Duration::from_millis(self.request_timeout_ms.max(100)),
            },
            peer_token: match (&self.peer_token, &self.peer_token_file) {
                (Some(token), _) => Some(PeerToken::new(token)?),
                (None, Some(path)) => Some(PeerToken::from_file(path)?),
                (None, None) => None,
            },
            auto_compaction: auto_compaction(self.auto_compaction_mode, &self.auto_compaction_retention)?,
            watch_progress_every: self.watch_progress_notify_interval,
            version: crate::VERSION,
            client_tls,
            peer_tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(args: &[&str]) -> Result<NodeConfig, ConfigError> {
        let mut argv = vec!["metastore"];
        argv.extend_from_slice(args);
        Args::try_parse_from(argv).expect("flags parse").resolve()
    }

    const SEED_CLUSTER: &str = "http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379";

    #[test]
    fn a_peer_token_comes_from_a_file_or_the_environment_and_must_be_strong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").expect("write");
        let c = resolve(&["--peer-token-file", file.to_str().expect("utf-8")]).expect("resolves");
        assert!(c.peer_token.is_some());
        assert!(resolve(&[]).expect("resolves").peer_token.is_none(), "off unless configured");
        let weak = resolve(&["--peer-token", "secret"]);
        assert!(matches!(weak, Err(ConfigError::PeerToken(TokenError::TooShort(6)))));
        let missing = resolve(&["--peer-token-file", "/nonexistent/token"]);
        assert!(matches!(missing, Err(ConfigError::PeerToken(TokenError::Unreadable { .. }))));
    }

    #[test]
    fn certificates_make_the_urls_https_and_a_url_that_disagrees_is_refused() {
        let c = resolve(&["--cert-file", "c.crt", "--key-file", "c.key"]).expect("resolves");
        assert_eq!(c.member.client_url, "https://127.0.0.1:12380");
        assert_eq!(c.member.peer_url, "http://127.0.0.1:12379", "the peer port stays plain");
        let client = c.client_tls.expect("client TLS");
        assert_eq!((client.client_ca, client.require_client_cert), (None, false));

        let peer_flags =
            ["--peer-cert-file", "p.crt", "--peer-key-file", "p.key", "--peer-trusted-ca-file", "ca.crt"];
        let c = resolve(&peer_flags).expect("resolves");
        assert_eq!(c.member.peer_url, "https://127.0.0.1:12379");
        assert_eq!(c.member.client_url, "http://127.0.0.1:12380");
        assert!(c.peer_tls.expect("peer TLS").require_client_cert, "peers always present certificates");

        let mut plain_cluster = peer_flags.to_vec();
        plain_cluster.extend(["--cluster", SEED_CLUSTER]);
        assert!(matches!(resolve(&plain_cluster), Err(ConfigError::Scheme { expected: "https", .. })));
        let https_cluster = SEED_CLUSTER.replace("http://", "https://");
        let refused = resolve(&["--cluster", &https_cluster]).expect_err("no certificates");
        assert!(refused.to_string().contains("--peer-cert-file"), "{refused}");
        let advertised =
            resolve(&["--advertise-client-url", "https://db.example:12380"]).expect_err("plain port");
        assert!(matches!(
            advertised,
            ConfigError::Scheme { flag: "--advertise-client-url", expected: "http", .. }
        ));
    }

    #[test]
    fn half_a_tls_configuration_is_refused_by_the_command_line() {
        let parse = |args: &[&str]| Args::try_parse_from([&["metastore"], args].concat());
        assert!(parse(&["--cert-file", "c.crt"]).is_err(), "a certificate needs its key");
        assert!(
            parse(&["--peer-cert-file", "p.crt", "--peer-key-file", "p.key"]).is_err(),
            "peers need a CA"
        );
        let no_ca =
            parse(&["--cert-file", "c.crt", "--key-file", "c.key", "--client-cert-auth"]).expect("parses");
        assert_eq!(
            no_ca.resolve(),
            Err(ConfigError::ClientCertAuthWithoutCa),
            "client certificates need a CA"
        );
        // etcd's spelling of the booleans.
        let etcd_style = ["--cert-file", "c.crt", "--key-file", "c.key", "--trusted-ca-file", "ca.crt"];
        let on = parse(&[&etcd_style[..], &["--client-cert-auth=true"]].concat()).expect("parses");
        assert!(on.client_cert_auth);
        let off =
            parse(&[&etcd_style[..], &["--client-cert-auth=false", "--peer-client-cert-auth=true"]].concat());
        assert!(!off.expect("parses").client_cert_auth);
        let c = parse(&[
            "--cert-file",
            "c.crt",
            "--key-file",
            "c.key",
            "--trusted-ca-file",
            "ca.crt",
            "--client-cert-auth",
        ])
        .expect("parses")
        .resolve()
        .expect("resolves");
        let client = c.client_tls.expect("client TLS");
        assert_eq!((client.client_ca, client.require_client_cert), (Some(PathBuf::from("ca.crt")), true));
    }

    #[test]
    fn no_flags_is_a_single_member_on_localhost() {
        let c = resolve(&[]).expect("resolves");
        assert_eq!(c.id, 1);
        assert_eq!(c.client_listen, "127.0.0.1:12380".parse().expect("addr"));
        assert_eq!(c.peer_listen, "127.0.0.1:12379".parse().expect("addr"));
        assert_eq!(c.data_dir, PathBuf::from("data/1"));
        let Bootstrap::Static(members) = c.bootstrap else { panic!("expected a static bootstrap") };
        assert_eq!(members.keys().copied().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn a_restore_seeds_the_static_membership() {
        let c =
            resolve(&["--member-id", "2", "--cluster", SEED_CLUSTER, "--restore-from", "backup.snapshot"])
                .expect("resolves");
        let Bootstrap::Restore { snapshot, members } = c.bootstrap else { panic!("expected a restore") };
        assert_eq!(snapshot, PathBuf::from("backup.snapshot"));
        assert_eq!(members.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3], "every --cluster member");
    }

    #[test]
    fn a_joining_member_restores_alone_only_from_a_file_that_is_there() {
        let c = resolve(&[
            "--join",
            "--advertise-peer-url",
            "http://demo-0.demo-peer.default.svc:12379",
            "--bind-address",
            "0.0.0.0",
            "--restore-from",
            "seed.snapshot",
        ])
        .expect("resolves");
        assert_eq!(c.bootstrap, Bootstrap::Join { restore: Some(PathBuf::from("seed.snapshot")) });
    }

    #[test]
    fn a_lone_member_advertises_the_peer_port_it_listens_on() {
        let c = resolve(&["--peer-port", "27379", "--port", "27380"]).expect("resolves");
        assert_eq!(c.peer_listen, "127.0.0.1:27379".parse().expect("addr"));
        assert_eq!(c.member.peer_url, "http://127.0.0.1:27379");
        let Bootstrap::Static(members) = c.bootstrap else { panic!("expected a static bootstrap") };
        assert_eq!(members[&1].peer_url, "http://127.0.0.1:27379");
    }

    #[test]
    fn the_seed_flags_give_member_two_its_own_url_and_data_dir() {
        let c =
            resolve(&["--member-id", "2", "--cluster", SEED_CLUSTER, "--port", "22380"]).expect("resolves");
        assert_eq!(c.member.peer_url, "http://127.0.0.1:22379");
        assert_eq!(c.peer_listen.port(), 22379);
        assert_eq!(c.client_listen.port(), 22380);
        assert_eq!(c.member.client_url, "http://127.0.0.1:22380");
        assert_eq!(c.data_dir, PathBuf::from("data/2"));
        let Bootstrap::Static(members) = c.bootstrap else { panic!("expected a static bootstrap") };
        assert_eq!(members.len(), 3);
        assert_eq!(members[&3].peer_url, "http://127.0.0.1:32379");
    }

    #[test]
    fn peers_are_listened_for_on_the_host_of_the_members_own_url_and_clients_on_loopback() {
        let cluster = "http://10.0.0.1:12379,http://127.0.0.2:22379,http://[::1]:32379";
        let c = resolve(&["--member-id", "2", "--cluster", cluster]).expect("resolves");
        assert_eq!(c.peer_listen, "127.0.0.2:22379".parse().expect("addr"));
        assert_eq!(c.client_listen, "127.0.0.1:12380".parse().expect("addr"), "clients stay on loopback");
        let c = resolve(&["--member-id", "3", "--cluster", cluster]).expect("resolves");
        assert_eq!(c.peer_listen, "[::1]:32379".parse().expect("addr"));
        let c = resolve(&["--member-id", "1", "--cluster", "http://localhost:12379"]).expect("resolves");
        assert!(c.peer_listen.ip().is_loopback(), "a host name is resolved: {}", c.peer_listen);
        let c = resolve(&["--member-id", "1", "--cluster", cluster, "--bind-address", "0.0.0.0"])
            .expect("resolves");
        assert_eq!(c.peer_listen, "0.0.0.0:12379".parse().expect("addr"), "an explicit address wins");
        assert_eq!(c.client_listen, "0.0.0.0:12380".parse().expect("addr"));
    }

    #[test]
    fn every_static_member_proposes_the_same_membership() {
        let boot =
            |id: &str, port: &str| resolve(&["--member-id", id, "--cluster", SEED_CLUSTER, "--port", port]);
        let a = boot("1", "12380").expect("1").bootstrap;
        let b = boot("3", "32380").expect("3").bootstrap;
        assert_eq!(a, b);
    }

    #[test]
    fn auto_compaction_reads_etcds_retentions() {
        let periodic = |r: &str| auto_compaction(AutoCompactionMode::Periodic, r);
        let hour = Duration::from_secs(3_600);
        assert_eq!(periodic("0"), Ok(None), "the default keeps everything");
        assert_eq!(periodic("1"), Ok(Some(AutoCompaction::Periodic(hour))), "a bare number is hours");
        assert_eq!(periodic("30m"), Ok(Some(AutoCompaction::Periodic(hour / 2))));
        assert_eq!(periodic("90s"), Ok(Some(AutoCompaction::Periodic(Duration::from_secs(90)))));
        assert_eq!(periodic("1h30m"), Ok(Some(AutoCompaction::Periodic(hour + hour / 2))), "Go's form too");
        assert_eq!(periodic("soon"), Err(ConfigError::AutoCompaction("soon".into())));
        let revision = |r: &str| auto_compaction(AutoCompactionMode::Revision, r);
        assert_eq!(revision("1000"), Ok(Some(AutoCompaction::Revisions(1_000))));
        assert_eq!(revision("0"), Ok(None));
        assert!(revision("1h").is_err());
    }

    #[test]
    fn durations_are_read_as_go_writes_them() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration("10m"), Some(ms(600_000)));
        assert_eq!(go_duration("10m0s"), Some(ms(600_000)), "as Go prints one");
        assert_eq!(go_duration("1h30m"), Some(ms(5_400_000)));
        assert_eq!(go_duration("1.5s"), Some(ms(1_500)));
        assert_eq!(go_duration("500ms"), Some(ms(500)));
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        assert_eq!(go_duration("3\u{b5}s"), Some(Duration::from_micros(3)));
        assert_eq!(go_duration("3\u{3bc}s"), Some(Duration::from_micros(3)), "the Greek mu too");
        assert_eq!(go_duration("2562047h"), Some(Duration::from_secs(2_562_047 * 3_600)), "Go's longest");
        for bad in ["", "10", "m", "1x", "-1s", "1s-", "1.5.2s", "2562048h", "3000000000000000h"] {
            assert_eq!(go_duration(bad), None, "{bad:?}");
        }
        let interval =
            |v: &str| resolve(&["--watch-progress-notify-interval", v]).map(|c| c.watch_progress_every);
        assert_eq!(resolve(&[]).expect("resolves").watch_progress_every, ms(600_000), "etcd's default");
        assert_eq!(interval("1s"), Ok(ms(1_000)));
        let etcds =
            Args::try_parse_from(["metastore", "--experimental-watch-progress-notify-interval", "2s"]);
        assert_eq!(etcds.expect("etcd's name").watch_progress_notify_interval, ms(2_000));
        for refused in ["0s", "1ns", "3000000000000000h"] {
            let args = Args::try_parse_from(["metastore", "--watch-progress-notify-interval", refused]);
            assert!(args.is_err(), "{refused}");
        }
    }

    #[test]
    fn a_member_id_beyond_the_cluster_list_is_refused() {
        let err = resolve(&["--member-id", "4", "--cluster", SEED_CLUSTER]).expect_err("refused");
        assert_eq!(err, ConfigError::NoPeerUrl { id: 4, count: 3 });
    }

    #[test]
    fn a_static_member_outside_its_cluster_list_is_refused_even_with_an_advertised_url() {
        let alone = resolve(&["--cluster", ",", "--advertise-peer-url", "http://10.0.0.1:12379"]);
        assert_eq!(alone.expect_err("refused"), ConfigError::NoPeerUrl { id: 1, count: 0 });
        let beyond =
            resolve(&["--member-id", "4", "--cluster", SEED_CLUSTER, "--advertise-peer-url", "http://h:1"]);
        assert_eq!(beyond.expect_err("refused"), ConfigError::NoPeerUrl { id: 4, count: 3 });
    }

    #[test]
    fn a_joining_member_needs_a_peer_url() {
        assert_eq!(resolve(&["--join"]).expect_err("refused"), ConfigError::JoinWithoutPeerUrl);
        let c = resolve(&[
            "--join",
            "--member-id",
            "5",
            "--advertise-peer-url",
            "http://demo-4.demo-peer.default.svc:12379/",
            "--bind-address",
            "0.0.0.0",
        ])
        .expect("resolves");
        assert_eq!(c.bootstrap, Bootstrap::Join { restore: None });
        assert_eq!(c.member.peer_url, "http://demo-4.demo-peer.default.svc:12379");
        assert_eq!(c.peer_listen, "0.0.0.0:12379".parse().expect("addr"));
    }

    #[test]
    fn statefulset_ordinals_map_to_member_ids() {
        assert_eq!(member_id_from_hostname("demo-0"), Ok(1));
        assert_eq!(member_id_from_hostname("my-store-12"), Ok(13));
        assert!(member_id_from_hostname("demo").is_err());
        assert!(member_id_from_hostname("demo-x").is_err());
    }

    #[test]
    fn malformed_urls_are_refused_with_the_url_named() {
        let err = resolve(&["--cluster", "not a url"]).expect_err("refused");
        assert!(matches!(err, ConfigError::BadUrl { url, .. } if url == "not a url"));
    }

    #[test]
    fn an_election_timeout_shorter_than_three_heartbeats_is_refused() {
        let err = resolve(&["--heartbeat-interval-ms", "200", "--election-timeout-ms", "300"])
            .expect_err("refused");
        assert!(matches!(err, ConfigError::Timing { .. }));
    }
}
