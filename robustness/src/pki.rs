//! Certificates for a run whose members speak TLS on both ports. Each rotation moves every
//! member to the next CA as an operator renews a cluster's certificates (both CAs trusted, new
//! certificates, the old CA dropped), files replaced under running members; the clients trust
//! every CA of the run from the start, so only the members' reloading is on trial.

use std::path::{Path, PathBuf};

use metastore_client::tls::{ClientTls, Identity};
use metastore_testkit::tls::{replace, Authority};

/// CAs made for a run: rotations beyond them start over from the first.
const AUTHORITIES: usize = 32;

/// The run's CAs and the files members and clients read.
pub struct Pki {
    dir: PathBuf,
    /// The CAs members' certificates come from, in rotation order.
    authorities: Vec<Authority>,
    current: usize,
}

/// What the clients present and trust.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub files: ClientTls,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    /// Writes the first CA's certificates for members on `hosts` (id, address), and the
    /// clients' own.
    pub fn new(dir: &Path, hosts: &[(u64, String)]) -> anyhow::Result<Self> {
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir)?;
        let authorities: Vec<Authority> =
            (0..AUTHORITIES).map(|i| Authority::new(&format!("run CA {i}"))).collect();
        let trusted_by_clients: String = authorities.iter().map(Authority::pem).collect();
        replace(&dir.join("clients-trust.crt"), &trusted_by_clients);
        // Clients' certificates come from a CA of their own, which members always trust.
        let client_ca = Authority::new("clients' CA");
        replace(&dir.join("client-ca.crt"), client_ca.pem());
        client_ca.issue("robustness", &[]).write(&dir, "client");
        let pki = Self { dir, authorities, current: 0 };
        pki.trust(&[0]);
        pki.issue(0, hosts);
        Ok(pki)
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// The flags that give member `id` its certificates.
    pub fn member_flags(&self, id: u64) -> Vec<String> {
        let (peer, client) = (format!("member-{id}-peer"), format!("member-{id}-client"));
        [
            "--peer-cert-file",
            &self.path(&format!("{peer}.crt")),
            "--peer-key-file",
            &self.path(&format!("{peer}.key")),
            "--peer-trusted-ca-file",
            &self.path("peer-ca.crt"),
            "--cert-file",
            &self.path(&format!("{client}.crt")),
            "--key-file",
            &self.path(&format!("{client}.key")),
            "--trusted-ca-file",
            &self.path("client-ca.crt"),
            "--client-cert-auth",
        ]
        .map(String::from)
        .to_vec()
    }

    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        let files = ClientTls {
            ca: Some(self.dir.join("clients-trust.crt")),
            identity: Some(Identity { cert: self.dir.join("client.crt"), key: self.dir.join("client.key") }),
        };
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name));
        Ok(Credentials {
            files,
            ca_pem: read("clients-trust.crt")?,
            cert_pem: read("client.crt")?,
            key_pem: read("client.key")?,
        })
    }

    /// Members trust the CAs numbered `cas` for peers.
    fn trust(&self, cas: &[usize]) {
        let bundle: String = cas.iter().map(|&i| self.authorities[i].pem()).collect();
        replace(&self.dir.join("peer-ca.crt"), &bundle);
    }

    /// Every member gets peer and client-port certificates from CA `ca`.
    fn issue(&self, ca: usize, hosts: &[(u64, String)]) {
        for (id, host) in hosts {
            let names = [host.as_str(), "127.0.0.1", "localhost"];
            let name = format!("member-{id}");
            self.authorities[ca].issue(&name, &names).write(&self.dir, &format!("{name}-peer"));
            self.authorities[ca].issue(&name, &names).write(&self.dir, &format!("{name}-client"));
        }
    }

    /// The CA the next renewal moves to.
    pub fn next(&self) -> usize {
        (self.current + 1) % self.authorities.len()
    }

    /// The first half of a rotation: the next CA trusted beside the current one.
    pub fn trust_next(&self) {
        self.trust(&[self.current, self.next()]);
    }

    /// The second: certificates from the next CA.
    pub fn issue_next(&self, hosts: &[(u64, String)]) {
        self.issue(self.next(), hosts);
    }

    /// Probes of what members present and accept: clients that trust CA `trusted` alone, one
    /// presenting the clients' certificate (for client ports), one a peer certificate of CA
    /// `peer` (for peer ports).
    pub fn probes(&self, trusted: usize, peer: usize) -> (ClientTls, ClientTls) {
        let ca = self.dir.join(format!("probe-ca-{trusted}.crt"));
        replace(&ca, self.authorities[trusted].pem());
        let peer_name = format!("probe-peer-{peer}");
        self.authorities[peer].issue("probe", &[]).write(&self.dir, &peer_name);
        let probe = |name: &str| ClientTls {
            ca: Some(ca.clone()),
            identity: Some(Identity {
                cert: self.dir.join(format!("{name}.crt")),
                key: self.dir.join(format!("{name}.key")),
            }),
        };
        (probe("client"), probe(&peer_name))
    }

    /// The CA members' certificates come from now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The last: the previous CA no longer trusted.
    pub fn drop_previous(&mut self) {
        self.current = self.next();
        self.trust(&[self.current]);
    }
}
