//! What the local suite does inside its sandbox (`metastore_testkit::sandbox`):
//! - mount a private copy over `/etc/hosts`, so that glibc's resolver (used by the operator and
//!   the members) finds pod names such as `demo-0.demo-peer.e2e.svc`;
//! - give pods addresses of a pod network (Kubernetes refuses loopback addresses in
//!   Endpoints) on a loopback of its own, with ports no other test can take.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _};
use metastore_testkit::sandbox;

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
        anyhow::ensure!(sandbox::inside(), "refusing to mount over /etc/hosts outside the sandbox");
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

/// Inside the sandbox: brings its loopback up and makes every pod-network address local.
pub fn set_up_network() -> anyhow::Result<()> {
    sandbox::must("ip", &["link", "set", "lo", "up"])?;
    sandbox::must("ip", &["route", "add", "local", POD_NETWORK, "dev", "lo"])?;
    Ok(())
}
