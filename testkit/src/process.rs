//! Child processes a test runs (members, the operator, a control plane): each logs to a file
//! and is killed when dropped, so a failed test leaves nothing running.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `command`, its output appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> std::io::Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(annotate(format!("cannot open {}", log.display())))?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(annotate(format!("cannot start {name} ({command:?})")))?;
        Ok(Self { name: name.to_string(), child, log: log.to_path_buf() })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether it exited on its own, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL once `grace` has passed. How it exited, if it did by itself.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        let _ = Command::new("kill").arg("-TERM").arg(self.id().to_string()).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }

    /// SIGKILL: a crash, as far as the process can tell.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last lines of its log, for a failure message.
    pub fn tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

fn annotate(what: String) -> impl FnOnce(std::io::Error) -> std::io::Error {
    move |e| std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A free port on 127.0.0.1 below Linux's ephemeral range, so that outgoing connections cannot
/// take it between this check and the bind. Different test processes start at different
/// places in the range.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7_919);
    loop {
        let port = (20_000 + seed.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A binary of this workspace, built beside the running executable: a test's
/// (`<target>/debug/deps/..`) or a binary's (`<target>/release/..`); `Err` says how to build it.
pub fn workspace_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut dir = exe.parent().ok_or("no target directory")?;
    if dir.ends_with("deps") {
        dir = dir.parent().ok_or("no target directory")?;
    }
    let bin = dir.join(name);
    if !bin.exists() {
        return Err(format!("{} is missing: `cargo test --workspace` builds it", bin.display()));
    }
    Ok(bin)
}

/// The chart named `name` in this checkout's `charts/`.
///
/// Found from the package directory cargo names when it runs a test, not the one compiled in: a
/// test executable reused from a shared target directory may have been built in another
/// checkout of the same sources, which can be gone by now.
pub fn chart(name: &str) -> PathBuf {
    // Run by hand, without cargo: the checkout this was built in (testkit sits beside the
    // other packages, one level below the workspace root).
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    package.join("..").join("charts").join(name)
}

/// Whether `program` runs at all (`program arg` exits successfully).
pub fn available(program: &Path, arg: &str) -> bool {
    Command::new(program).arg(arg).output().is_ok_and(|o| o.status.success())
}
