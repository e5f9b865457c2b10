//! What the node's, the operator's and the end-to-end test suites share to run real processes:
//! ports nobody else takes, child processes that log to a file and die with the test, and the
//! workspace's own binaries; a sandbox for tests that change the network; and (feature `s3`)
//! an S3 server for tests of backups; (feature `tls`) certificate authorities and certificates.

mod process;
#[cfg(feature = "s3")]
pub mod s3;
pub mod sandbox;
#[cfg(feature = "tls")]
pub mod tls;

pub use process::{available, chart, free_port, tail, workspace_binary, Process};
