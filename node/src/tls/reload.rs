//! Reading a listener's TLS files again when they change: Kubernetes renews a mounted Secret's
//! files in place, and a member that never looked again would go down with its first
//! certificate, a year after it started.

use std::sync::Arc;
use std::time::Duration;

use metastore_client::tls::{self as pem, TlsError};
use tokio::sync::watch;

use super::{Material, TlsFiles};

/// How often the files are read. They are small (a Secret's are on tmpfs), and a second is
/// well inside any renewal margin.
const EVERY: Duration = Duration::from_secs(1);

/// A listener's TLS material, as of the last time its files could be used.
#[derive(Clone, Debug)]
pub struct Reloading {
    current: watch::Receiver<Arc<Material>>,
}

impl Reloading {
    /// Reads `files` now (a member must not start without usable ones) and then every second,
    /// for as long as a clone of this is held. `listener` names it in the log.
    pub fn start(files: TlsFiles, listener: &'static str) -> Result<Self, TlsError> {
        let contents = read(&files)?;
        let material = Material::build(&files, &contents)?;
        let (updates, current) = watch::channel(Arc::new(material));
        tokio::spawn(follow(files, contents, updates, listener));
        Ok(Self { current })
    }

    /// The material new connections use.
    pub fn current(&self) -> Arc<Material> {
        self.current.borrow().clone()
    }
}

fn read(files: &TlsFiles) -> Result<Vec<Vec<u8>>, TlsError> {
    files.paths().map(|path| pem::read(path)).collect()
}

/// Files read again: their contents, and what they make.
type Reread = (Vec<Vec<u8>>, Result<Material, TlsError>);

/// Reads the files every [`EVERY`], and publishes what they make whenever they change. Files
/// caught half-renewed (a new certificate beside the old key) are refused, once, and read
/// again until they make sense; until then the previous material stays in use.
async fn follow(
    files: TlsFiles,
    mut loaded: Vec<Vec<u8>>,
    updates: watch::Sender<Arc<Material>>,
    listener: &'static str,
) {
    let mut refused: Option<Result<Vec<Vec<u8>>, String>> = None;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = updates.closed() => return,
        }
        let (files_now, seen) = (files.clone(), loaded.clone());
        let reading = tokio::task::spawn_blocking(move || -> Result<Option<Reread>, TlsError> {
            let contents = read(&files_now)?;
            if contents == seen {
                return Ok(None);
            }
            let built = Material::build(&files_now, &contents);
            Ok(Some((contents, built)))
        });
        let outcome = match reading.await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(listener, error = %e, "reading the TLS files failed");
                continue;
            }
        };
        match outcome {
            Ok(None) => {}
            Ok(Some((contents, Ok(material)))) => {
                tracing::info!(
                    listener,
                    cert = %files.cert.display(),
                    "TLS files changed: new connections use them"
                );
                updates.send_replace(Arc::new(material));
                loaded = contents;
                refused = None;
            }
            Ok(Some((contents, Err(e)))) => {
                let now = Ok(contents);
                if refused.as_ref() != Some(&now) {
                    tracing::warn!(listener, error = %e, "TLS files changed but cannot be used; keeping the previous ones");
                    refused = Some(now);
                }
            }
            Err(e) => {
                let now = Err(e.to_string());
                if refused.as_ref() != Some(&now) {
                    tracing::warn!(listener, error = %e, "cannot read the TLS files; keeping the previous ones");
                    refused = Some(now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use metastore_testkit::tls::{replace, Authority};

    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn renewed_files_are_used_once_they_make_sense_together() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Authority::new("CA");
        replace(&dir.path().join("ca.crt"), ca.pem());
        let files = ca.issue("first", &["127.0.0.1"]).write(dir.path(), "member");
        let tls = TlsFiles {
            cert: files.cert.clone(),
            key: files.key.clone(),
            client_ca: Some(dir.path().join("ca.crt")),
            require_client_cert: true,
        };
        let reloading = Reloading::start(tls, "test").expect("usable files");
        let first = reloading.current();

        // Caught half-renewed: the new certificate beside the old key is not used.
        let renewed = ca.issue("renewed", &["127.0.0.1"]);
        replace(&files.cert, &renewed.cert);
        tokio::time::sleep(EVERY * 3).await;
        assert!(Arc::ptr_eq(&reloading.current(), &first), "a certificate without its key is never used");

        replace(&files.key, &renewed.key);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::ptr_eq(&reloading.current(), &first) {
            assert!(Instant::now() < deadline, "the renewed pair was never used");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_ne!(reloading.current().identity.cert, first.identity.cert);

        // Files that vanish leave the last good ones in use.
        let now = reloading.current();
        std::fs::remove_file(&files.key).expect("remove");
        tokio::time::sleep(EVERY * 3).await;
        assert!(Arc::ptr_eq(&reloading.current(), &now));
    }
}
