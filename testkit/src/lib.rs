//! What the node's, the operator's and the end-to-end test suites share to run real processes:
//! ports nobody else takes, child processes that log to a file and die with the test, and the
//! workspace's own binaries.

mod process;

pub use process::{available, free_port, tail, workspace_binary, Process};
