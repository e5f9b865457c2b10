//! A sandbox for tests that change the network or mounts: the test re-runs itself in private
//! mount, network and PID namespaces (`unshare`), as root. Whatever it mounts, the interfaces,
//! addresses and firewall rules it makes, and every process it starts stay inside and vanish
//! with it: it is the init process of its PID namespace, so the kernel kills the rest when it
//! exits, whatever way it ends.

use std::path::Path;
use std::process::Command;

/// Set in the re-run test that runs inside the sandbox.
pub const SANDBOX_ENV: &str = "METASTORE_TEST_SANDBOX";

/// Whether this process runs inside the sandbox.
pub fn inside() -> bool {
    std::env::var_os(SANDBOX_ENV).is_some()
}

/// Runs `program args` again inside the sandbox and returns whether it succeeded.
pub fn rerun_inside(program: &Path, args: &[String]) -> std::io::Result<bool> {
    let status = Command::new("unshare")
        .args(["--mount", "--net", "--pid", "--fork", "--kill-child", "--propagation", "private", "--"])
        .arg(program)
        .args(args)
        .env(SANDBOX_ENV, "1")
        .status()?;
    Ok(status.success())
}

/// Runs the test `name` of the current test binary again inside the sandbox.
pub fn rerun_test_inside(name: &str) -> std::io::Result<bool> {
    let exe = std::env::current_exe()?;
    let args = [name, "--exact", "--nocapture", "--test-threads=1"].map(str::to_string);
    rerun_inside(&exe, &args)
}

/// Whether this machine can make the sandbox (root, `unshare`, `ip`, and whatever else
/// `programs` names, each with an argument that makes it exit 0); `Err` says what is missing.
pub fn can_isolate(programs: &[(&str, &str)]) -> Result<(), String> {
    let uid = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
    });
    if uid.as_deref() != Some("0") {
        return Err("root, for private mount, network and PID namespaces (unshare)".into());
    }
    for (program, arg) in [("unshare", "--version"), ("ip", "-V")].iter().chain(programs) {
        if !crate::available(Path::new(program), arg) {
            return Err(format!("`{program}`"));
        }
    }
    Ok(())
}

/// Runs a command inside the sandbox that must succeed (`ip`, `iptables`, `mount`).
pub fn must(program: &str, args: &[&str]) -> std::io::Result<()> {
    if !inside() {
        return Err(std::io::Error::other(format!("refusing to run {program} outside the sandbox")));
    }
    let output = Command::new(program).args(args).output()?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(std::io::Error::other(format!("{program} {}: {stderr}", args.join(" "))));
    }
    Ok(())
}
