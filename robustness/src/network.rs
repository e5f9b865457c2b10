//! A network of its own for each member, so that faults can cut links between them: every
//! member in a network namespace with a veth link into one bridge, at 10.99.<run>.<id>; the
//! clients reach them from the runner's namespace over the bridge. Partitions are iptables
//! rules in a member's namespace dropping what it receives from another member; healing
//! flushes them. Only inside the sandbox (`metastore_testkit::sandbox`): nothing outlives it.

use metastore_testkit::sandbox::{self, must};

use std::sync::atomic::{AtomicU32, Ordering};

/// Runs in one sandbox each get their own names and subnet, so that nothing a previous run
/// left behind can get in the way.
static RUNS: AtomicU32 = AtomicU32::new(0);

pub struct Network {
    ids: Vec<u64>,
    run: u32,
}

impl Network {
    pub fn namespace(&self, id: u64) -> String {
        format!("ms{}-{id}", self.run)
    }

    pub fn address(&self, id: u64) -> String {
        format!("10.99.{}.{id}", self.run)
    }

    fn bridge(&self) -> String {
        format!("msbr{}", self.run)
    }
}

impl Network {
    /// Builds the bridge and one namespace per member.
    pub fn create(ids: &[u64]) -> std::io::Result<Self> {
        let network = Self { ids: ids.to_vec(), run: RUNS.fetch_add(1, Ordering::Relaxed) % 250 };
        if network.run == 0 {
            // Named namespaces live under /run/netns: a tmpfs of the sandbox's own.
            std::fs::create_dir_all("/run/netns")?;
            must("mount", &["-t", "tmpfs", "tmpfs", "/run/netns"])?;
            must("ip", &["link", "set", "lo", "up"])?;
        }
        let bridge = network.bridge();
        must("ip", &["link", "add", &bridge, "type", "bridge"])?;
        must("ip", &["addr", "add", &format!("10.99.{}.254/24", network.run), "dev", &bridge])?;
        must("ip", &["link", "set", &bridge, "up"])?;
        for id in ids {
            let (ns, veth) = (network.namespace(*id), format!("msv{}x{id}", network.run));
            must("ip", &["netns", "add", &ns])?;
            must("ip", &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            must("ip", &["link", "set", &veth, "master", &bridge, "up"])?;
            let cidr = format!("{}/24", network.address(*id));
            must("ip", &["netns", "exec", &ns, "ip", "addr", "add", &cidr, "dev", "eth0"])?;
            must("ip", &["netns", "exec", &ns, "ip", "link", "set", "eth0", "up"])?;
            must("ip", &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    /// Member `to` no longer receives anything member `from` sends.
    pub fn block(&self, from: u64, to: u64) -> std::io::Result<()> {
        let source = self.address(from);
        must(
            "ip",
            &["netns", "exec", &self.namespace(to), "iptables", "-A", "INPUT", "-s", &source, "-j", "DROP"],
        )
    }

    /// Every link works again.
    pub fn heal(&self) -> std::io::Result<()> {
        for id in &self.ids {
            must("ip", &["netns", "exec", &self.namespace(*id), "iptables", "-F", "INPUT"])?;
        }
        Ok(())
    }
}

/// Runs the body of test `name`, which cuts links between members, where they can have
/// networks of their own: inside the sandbox, re-running the test there when this is not it.
/// Skips, saying what is missing, on a machine that cannot make the sandbox.
pub fn run_test_with_own_networks<F>(name: &str, body: impl FnOnce() -> F)
where
    F: std::future::Future<Output = ()>,
{
    if !sandbox::inside() {
        if let Err(missing) = sandbox::can_isolate(&[("iptables", "--version")]) {
            eprintln!("SKIPPED: {name} needs {missing}");
            return;
        }
        assert!(sandbox::rerun_test_inside(name).expect("unshare"), "{name} failed (output above)");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(body());
}

impl Drop for Network {
    /// Takes the namespaces and the bridge down once the members have stopped. Best effort:
    /// the sandbox's end removes whatever is left.
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = must("ip", &["netns", "del", &self.namespace(*id)]);
        }
        let _ = must("ip", &["link", "del", &self.bridge()]);
    }
}
