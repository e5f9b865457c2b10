//! The local suite's sandbox: the test re-runs itself in private mount, network and PID
//! namespaces (`unshare`), where it may
//! - mount a private copy over `/etc/hosts`, so that glibc's resolver (used by the operator and
//!   the members) finds pod names such as `demo-0.demo-peer.e2e.svc`;
//! - give pods addresses of a pod network (Kubernetes refuses loopback addresses in
//!   Endpoints) on a loopback of its own, with ports no other test can take;
//! - and know that every process it started dies with it, whatever way it ends.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _};

/// Set in the re-executed test that runs inside the sandbox.
pub const SANDBOX_ENV: &str = "METASTORE_E2E_SANDBOX";
/// The pod network: every address in it is local to the sandbox.
pub const POD_NETWORK: &str = "10.244.0.0/16";

#[derive(Clone)]
pub struct HostsFile {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    path: PathBuf,
    original: String,
    names: BTreeMap<String, Ipv4Addr>,
}

impl HostsFile {
    /// Copies `/etc/hosts` into `dir` and mounts the copy over it. Only inside the sandbox.
    pub fn take_over(dir: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(inside(), "refusing to mount over /etc/hosts outside the sandbox");
        let original = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let path = dir.join("hosts");
        std::fs::write(&path, &original)?;
        let status = Command::new("mount").arg("--bind").arg(&path).arg("/etc/hosts").status()?;
        if !status.success() {
            bail!("mount --bind {} /etc/hosts failed", path.display());
        }
        Ok(Self { inner: Arc::new(Mutex::new(Inner { path, original, names: BTreeMap::new() })) })
    }

    pub fn add(&self, ip: Ipv4Addr, names: &[String]) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().map_err(|_| anyhow::anyhow!("hosts file lock poisoned"))?;
        for name in names {
            inner.names.insert(name.clone(), ip);
        }
        inner.write()
    }

    pub fn remove(&self, names: &[String]) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().map_err(|_| anyhow::anyhow!("hosts file lock poisoned"))?;
        for name in names {
            inner.names.remove(name);
        }
        inner.write()
    }
}

impl Inner {
    /// Rewrites the file in place: the bind mount follows the inode, not the name.
    fn write(&self) -> anyhow::Result<()> {
        let mut text = self.original.clone();
        text.push_str("\n# metaStore end-to-end pods\n");
        for (name, ip) in &self.names {
            text.push_str(&format!("{ip}\t{name}\n"));
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.path)
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        file.write_all(text.as_bytes())?;
        Ok(())
    }
}

/// Whether this process runs inside the sandbox.
pub fn inside() -> bool {
    std::env::var_os(SANDBOX_ENV).is_some()
}

/// Runs the test `name` of the current test binary again inside the sandbox, as the init
/// process of its PID namespace: when it exits, the kernel kills everything it started.
/// Returns whether it passed.
pub fn rerun_inside(name: &str) -> anyhow::Result<bool> {
    let exe = std::env::current_exe()?;
    let status = Command::new("unshare")
        .args(["--mount", "--net", "--pid", "--fork", "--kill-child", "--propagation", "private", "--"])
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(SANDBOX_ENV, "1")
        .status()
        .context("cannot run unshare")?;
    Ok(status.success())
}

/// Inside the sandbox: brings its loopback up and makes every pod-network address local.
pub fn set_up_network() -> anyhow::Result<()> {
    anyhow::ensure!(inside(), "refusing to change the network outside the sandbox");
    for args in [vec!["link", "set", "lo", "up"], vec!["route", "add", "local", POD_NETWORK, "dev", "lo"]] {
        let status = Command::new("ip").args(&args).status().context("cannot run ip (iproute2)")?;
        anyhow::ensure!(status.success(), "ip {} failed", args.join(" "));
    }
    Ok(())
}

/// Whether this machine can make the sandbox: root, `unshare` and `ip`.
pub fn can_isolate() -> Result<(), String> {
    let uid = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
    });
    if uid.as_deref() != Some("0") {
        return Err("root, for private mount, network and PID namespaces (unshare)".into());
    }
    if !metastore_testkit::available(Path::new("unshare"), "--version") {
        return Err("`unshare` (util-linux)".into());
    }
    if !metastore_testkit::available(Path::new("ip"), "-V") {
        return Err("`ip` (iproute2)".into());
    }
    Ok(())
}
