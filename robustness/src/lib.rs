//! metaStore's robustness suite, in the spirit of Jepsen and etcd's robustness tests: concurrent
//! clients record what they saw against a real cluster while a nemesis injects faults; a
//! linearizability checker judges the history, and the healed cluster must still hold every
//! acknowledged write. Beside them a bank ([`bank`]) moves money with multi-key transactions
//! while an auditor checks that no read, at any revision, finds money made or lost, and
//! watchers ([`watchers`]) check that their streams are the committed history, and lease
//! holders ([`leases`]) that no key goes before its lease's time. Every kind of client comes in
//! both of the APIs the client port serves, metaStore's HTTP and etcd's gRPC ([`member`]).

pub mod bank;
pub mod checker;
pub mod cluster;
pub mod history;
pub mod leases;
pub mod member;
pub mod nemesis;
pub mod network;
pub mod pki;
pub mod run;
pub mod watchers;
pub mod workload;
