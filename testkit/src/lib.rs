//! What the node's, the operator's and the end-to-end test suites share to run real processes:
//! ports nobody else takes, child processes that log to a file and die with the test, and the
//! workspace's own binaries; and a sandbox for tests that change the network.

mod process;
pub mod sandbox;

pub use process::{available, chart, free_port, tail, workspace_binary, Process};
