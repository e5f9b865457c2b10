#!/usr/bin/env bash
# metaStore and etcd side by side on this machine, in one run: a 3-member cluster of each on
# 127.0.0.1, both acknowledging writes only after an fsync on a majority (etcd's defaults;
# metaStore's only mode), the same workloads from the same load generator, one table with the
# ratio metaStore/etcd per row.
#
#   bench/compare-etcd.sh                 # C = 1 16 64 256, 10 s per row
#   DURATION=30 CLIENTS="64 256" bench/compare-etcd.sh
#
# Needs etcd (apt-get install etcd-server). Builds metaStore with --release (the first time,
# RocksDB's C++ takes a long while).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10}"
CLIENTS="${CLIENTS:-1 16 64 256}"
WORKLOADS="${WORKLOADS:-put get stale-get}"
KEYS="${KEYS:-10000}"
PROFILE="${PROFILE:-release}"

command -v etcd >/dev/null || { echo "etcd not found: apt-get install etcd-server" >&2; exit 2; }
if [[ "$PROFILE" == release ]]; then
  cargo build --release --locked --bin metastore --bin metastore-bench >&2
  bin="${CARGO_TARGET_DIR:-target}/release"
else
  cargo build --locked --bin metastore --bin metastore-bench >&2
  bin="${CARGO_TARGET_DIR:-target}/debug"
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# etcd: 3 members, default durability.
etcd_cluster="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$work/etcd$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --initial-cluster "$etcd_cluster" --initial-cluster-state new --log-level error \
    >"$work/etcd$i.log" 2>&1 &
  pids+=($!)
done
etcd_endpoints="http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793"

# metaStore: 3 members.
ms_cluster="http://127.0.0.1:24791,http://127.0.0.1:24792,http://127.0.0.1:24793"
for i in 1 2 3; do
  "$bin/metastore" --member-id "$i" --cluster "$ms_cluster" --port "2480$i" --data-dir "$work/ms$i" \
    >"$work/ms$i.log" 2>&1 &
  pids+=($!)
done
ms_endpoints="http://127.0.0.1:24801,http://127.0.0.1:24802,http://127.0.0.1:24803"

ready() { for _ in $(seq 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; return 1; }
ready "http://127.0.0.1:23791/health" || { echo "etcd did not start" >&2; exit 1; }
ready "http://127.0.0.1:24801/readyz" || { echo "metaStore did not start" >&2; exit 1; }

bench() { # system endpoints workload clients
  "$bin/metastore-bench" --system "$1" --endpoints "$2" --workload "$3" --clients "$4" \
    --keys "$KEYS" --duration "$DURATION" --json | tail -1
}
# Every key written once, so that reads find values.
for system in metastore etcd; do
  endpoints=$([[ $system == metastore ]] && echo "$ms_endpoints" || echo "$etcd_endpoints")
  "$bin/metastore-bench" --system "$system" --endpoints "$endpoints" --keys "$KEYS" --preload --duration 0 >/dev/null
done

echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), ${DURATION}s per row, 256-byte values, $KEYS keys"
printf '%-10s %7s | %10s %8s %8s | %10s %8s %8s | %7s %7s\n' \
  workload clients "ms ops/s" "ms p50" "ms p99" "etcd ops/s" "etcd p50" "etcd p99" "ops x" "p99 x"
for workload in $WORKLOADS; do
  for c in $CLIENTS; do
    m=$(bench metastore "$ms_endpoints" "$workload" "$c")
    e=$(bench etcd "$etcd_endpoints" "$workload" "$c")
    python3 - "$workload" "$c" "$m" "$e" <<'PY'
import json, sys
workload, c, m, e = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
ratio = lambda a, b: a / b if b else float("nan")
print(f"{workload:<10} {c:>7} | {m['throughput']:>10.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} | "
      f"{e['throughput']:>10.0f} {e['p50_ms']:>8.2f} {e['p99_ms']:>8.2f} | "
      f"{ratio(m['throughput'], e['throughput']):>7.2f} {ratio(m['p99_ms'], e['p99_ms']):>7.2f}")
PY
  done
done
