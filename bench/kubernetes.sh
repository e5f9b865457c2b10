#!/usr/bin/env bash
# kube-apiserver on etcd and on metaStore, side by side on this machine: the same real
# control plane (kube-apiserver and kube-controller-manager v1.20.2, e2e/local/control-plane.sh)
# over a 3-member etcd 3.4 cluster and over a 3-member metaStore cluster, every member's URL in
# --etcd-servers, both fsyncing every acknowledged write on a majority, one after the other, the same workload from the same clients:
# OBJECTS ConfigMaps created by CLIENTS concurrent clients (each with its own connection) while a
# watch measures create-to-event latency, full paged lists, merge patches, deletes. One Markdown
# table: throughput and p50/p99 per step, and metaStore's ratio to etcd.
#
#   bench/kubernetes.sh                          # 5 000 objects, 32 clients, 2 rounds
#   OBJECTS=2000 CLIENTS=16 ROUNDS=3 bench/kubernetes.sh
#
# Rounds alternate which system goes first (so each goes first once in the default two); the
# table shows each one's median round (with two, the better one).
# Needs etcd (apt-get install etcd-server); builds everything else with --release.
set -euo pipefail
cd "$(dirname "$0")/.."

OBJECTS="${OBJECTS:-5000}"
CLIENTS="${CLIENTS:-32}"
ROUNDS="${ROUNDS:-2}"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/metastore/target}"
METASTORE_K8S_BIN="$(e2e/local/control-plane.sh)"
export METASTORE_K8S_BIN
echo "== building metaStore and the benchmark (release)" >&2
cargo build --release --locked -p metastore-node --bin metastore -p metastore-e2e --bin apiserver-bench >&2
exec "$CARGO_TARGET_DIR/release/apiserver-bench" --objects "$OBJECTS" --clients "$CLIENTS" --rounds "$ROUNDS"
