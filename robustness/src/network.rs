//! A network of its own for each member, so that faults can cut links between them: every
//! member in a network namespace with a veth link into one bridge, at 10.99.0.<id>; the
//! clients reach them from the runner's namespace over the bridge. Partitions are iptables
//! rules in a member's namespace dropping what it receives from another member; healing
//! flushes them. Only inside the sandbox (`metastore_testkit::sandbox`): nothing outlives it.

use metastore_testkit::sandbox::must;

const BRIDGE: &str = "msbr0";
const RUNNER_ADDRESS: &str = "10.99.0.254/24";

pub struct Network {
    ids: Vec<u64>,
}

pub fn namespace(id: u64) -> String {
    format!("ms{id}")
}

pub fn address(id: u64) -> String {
    format!("10.99.0.{id}")
}

impl Network {
    /// Builds the bridge and one namespace per member.
    pub fn create(ids: &[u64]) -> std::io::Result<Self> {
        // Named namespaces live under /run/netns: a tmpfs of the sandbox's own.
        std::fs::create_dir_all("/run/netns")?;
        must("mount", &["-t", "tmpfs", "tmpfs", "/run/netns"])?;
        must("ip", &["link", "set", "lo", "up"])?;
        must("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        must("ip", &["addr", "add", RUNNER_ADDRESS, "dev", BRIDGE])?;
        must("ip", &["link", "set", BRIDGE, "up"])?;
        for id in ids {
            let (ns, veth) = (namespace(*id), format!("msv{id}"));
            must("ip", &["netns", "add", &ns])?;
            must("ip", &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            must("ip", &["link", "set", &veth, "master", BRIDGE, "up"])?;
            let cidr = format!("{}/24", address(*id));
            must("ip", &["netns", "exec", &ns, "ip", "addr", "add", &cidr, "dev", "eth0"])?;
            must("ip", &["netns", "exec", &ns, "ip", "link", "set", "eth0", "up"])?;
            must("ip", &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(Self { ids: ids.to_vec() })
    }

    /// Member `to` no longer receives anything member `from` sends.
    pub fn block(&self, from: u64, to: u64) -> std::io::Result<()> {
        let source = address(from);
        must("ip", &["netns", "exec", &namespace(to), "iptables", "-A", "INPUT", "-s", &source, "-j", "DROP"])
    }

    /// Every link works again.
    pub fn heal(&self) -> std::io::Result<()> {
        for id in &self.ids {
            must("ip", &["netns", "exec", &namespace(*id), "iptables", "-F", "INPUT"])?;
        }
        Ok(())
    }
}
