#!/usr/bin/env bash
# metaStore and etcd side by side on this machine, in one run: a 3-member cluster of each on
# 127.0.0.1, both acknowledging writes only after an fsync on a majority (etcd's defaults;
# metaStore's only mode), the same workloads from the same load generator, one table with the
# ratio metaStore/etcd per row.
#
#   bench/compare-etcd.sh                 # C = 1 16 64 256, 3 rounds of 10 s per row
#   DURATION=30 ROUNDS=1 CLIENTS="64 256" bench/compare-etcd.sh
#   WORKLOADS="txn past-get" bench/compare-etcd.sh   # also: mixed cas create (see --help)
#   PROTOCOLS=grpc CHECK_PERF="s m l xl" bench/compare-etcd.sh
#
# Every workload runs over each of PROTOCOLS ("grpc http" by default): etcd's v3 gRPC API,
# which both systems serve, so both are driven by the same requests encoded by the same code;
# and each system's HTTP/1.1 JSON API (metaStore's /v1, etcd's v3 gateway).
#
# C = 1 has two rows per workload, one client on the leader and one on a follower of each
# system (a single client's figures are those of the member it talks to); larger C spread
# their clients over all three members.
#
# A row runs ROUNDS rounds, each metaStore then etcd, and shows each system's median round (by
# throughput): on a shared machine a neighbour's burst then spoils one round, not the row.
#
# Then watch fan-out (FANOUT_WATCHERS watchers of one prefix, 1 000 by default, while
# FANOUT_RATE writes a second go in; FANOUT_WATCHERS=0 skips it): delivery latency and CPU.
#
# Then `etcdctl check perf` (etcd's own pass/fail test of a cluster's write throughput and
# latency, 60 s per load) against each system at each load of CHECK_PERF ("s m l" by default;
# CHECK_PERF="" skips it; needs etcdctl: apt-get install etcd-client).
#
# Then, for each system: start to first write, resident memory idle and under load, disk and
# restart-to-ready with BIG_KEYS keys (1 000 000 by default), and failover (kill -9 of the
# leader to the next successful write).
#
# Last, on fresh clusters, growth: the store grows by GROWTH_STEP new keys at a time up to
# GROWTH_KEYS (250 000 and 1 000 000 by default; GROWTH_KEYS=0 skips it), and after each step
# writes of keys never written before run DURATION seconds with one client on the leader and
# with 64 clients on all members. Their p99 must stay flat as the data grows: a snapshot that
# copied the store would make it climb.
#
# Needs etcd (apt-get install etcd-server). Builds metaStore with --release (the first time,
# RocksDB's C++ takes a long while).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CLIENTS="${CLIENTS:-1 16 64 256}"
WORKLOADS="${WORKLOADS:-put get stale-get txn}"
PROTOCOLS="${PROTOCOLS:-grpc http}"
CHECK_PERF="${CHECK_PERF-s m l}"
KEYS="${KEYS:-10000}"
PROFILE="${PROFILE:-release}"
BIG_KEYS="${BIG_KEYS:-1000000}"
GROWTH_KEYS="${GROWTH_KEYS:-1000000}"
GROWTH_STEP="${GROWTH_STEP:-250000}"
FANOUT_WATCHERS="${FANOUT_WATCHERS:-1000}"
FANOUT_RATE="${FANOUT_RATE:-1000}"

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
  for pid in "${pids[@]}"; do while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done; done
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
etcd_pids=(); ms_pids=()

# etcd: 3 members, default durability.
etcd_cluster="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
start_etcd() { # [state]
  etcd_pids=()
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$work/etcd$i" \
      --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
      --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
      --initial-cluster "$etcd_cluster" --initial-cluster-state "${1:-new}" --log-level error \
      >>"$work/etcd$i.log" 2>&1 &
    etcd_pids+=($!); pids+=($!); disown $!
  done
}
etcd_endpoints="http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793"

# metaStore: 3 members.
ms_cluster="http://127.0.0.1:24791,http://127.0.0.1:24792,http://127.0.0.1:24793"
start_metastore() {
  ms_pids=()
  for i in 1 2 3; do
    "$bin/metastore" --member-id "$i" --cluster "$ms_cluster" --port "2480$i" --data-dir "$work/ms$i" \
      >>"$work/ms$i.log" 2>&1 &
    ms_pids+=($!); pids+=($!); disown $!
  done
}
ms_endpoints="http://127.0.0.1:24801,http://127.0.0.1:24802,http://127.0.0.1:24803"

# The first write either system acknowledges, polled every 10 ms, in seconds since `$1`.
first_write() { # system endpoint since
  local url
  if [[ $1 == metastore ]]; then url="$2/v1/kv/bench-probe"; else url="$2/v3/kv/put"; fi
  for _ in $(seq 3000); do
    if [[ $1 == metastore ]]; then
      curl -sf -m 1 -XPUT --data x "$url" >/dev/null && break
    else
      curl -sf -m 1 -XPOST -d '{"key":"YmVuY2gtcHJvYmU=","value":"eA=="}' "$url" >/dev/null && break
    fi
    sleep 0.01
  done
  python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$3" "$(now)"
}

rss_mib() { # pids...: resident memory of the processes together, MiB
  local kib=0
  for pid in "$@"; do kib=$((kib + $(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0))); done
  echo $((kib / 1024))
}

t=$(now); start_etcd; etcd_first=$(first_write etcd http://127.0.0.1:23791 "$t")
t=$(now); start_metastore; ms_first=$(first_write metastore http://127.0.0.1:24801 "$t")
sleep 2
etcd_idle=$(rss_mib "${etcd_pids[@]}"); ms_idle=$(rss_mib "${ms_pids[@]}")

bench() { # system endpoints workload clients target [protocol]
  # Finding a leader or follower fails while a cluster elects: try again.
  for _ in 1 2 3; do
    "$bin/metastore-bench" --system "$1" --endpoints "$2" --workload "$3" --clients "$4" --target "$5" \
      --protocol "${6:-http}" --keys "$KEYS" --duration "$DURATION" --json | tail -1 && return
    sleep 1
  done
  return 1
}
# Every key written once, so that reads find values.
for system in metastore etcd; do
  endpoints=$([[ $system == metastore ]] && echo "$ms_endpoints" || echo "$etcd_endpoints")
  "$bin/metastore-bench" --system "$system" --endpoints "$endpoints" --keys "$KEYS" --preload --duration 0 >/dev/null
done

echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), median of $ROUNDS rounds of ${DURATION}s per row, 256-byte values, $KEYS keys"
printf '%-5s %-10s %12s | %10s %8s %8s | %10s %8s %8s | %7s %7s\n' \
  proto workload clients "ms ops/s" "ms p50" "ms p99" "etcd ops/s" "etcd p50" "etcd p99" "ops x" "p99 x"
for protocol in $PROTOCOLS; do
for workload in $WORKLOADS; do
  for c in $CLIENTS; do
    # A single client measures the one member it talks to: both roles, each system alike.
    targets=$([[ $c == 1 ]] && echo "leader follower" || echo all)
    for target in $targets; do
      m=""; e=""
      for _ in $(seq "$ROUNDS"); do
        m+="$(bench metastore "$ms_endpoints" "$workload" "$c" "$target" "$protocol")"$'\n'
        e+="$(bench etcd "$etcd_endpoints" "$workload" "$c" "$target" "$protocol")"$'\n'
      done
      row=$([[ $target == all ]] && echo "$c" || echo "$c $target")
      python3 - "$protocol" "$workload" "$row" "$m" "$e" <<'PY'
import json, sys

def median_round(lines):
    rounds = sorted((json.loads(l) for l in lines.splitlines() if l.strip()), key=lambda r: r["throughput"])
    return rounds[len(rounds) // 2]

protocol, workload, c = sys.argv[1], sys.argv[2], sys.argv[3]
m, e = median_round(sys.argv[4]), median_round(sys.argv[5])
ratio = lambda a, b: a / b if b else float("nan")
print(f"{protocol:<5} {workload:<10} {c:>12} | {m['throughput']:>10.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} | "
      f"{e['throughput']:>10.0f} {e['p50_ms']:>8.2f} {e['p99_ms']:>8.2f} | "
      f"{ratio(m['throughput'], e['throughput']):>7.2f} {ratio(m['p99_ms'], e['p99_ms']):>7.2f}")
PY
    done
  done
done
done

# Watch fan-out: FANOUT_WATCHERS watchers of one prefix over all members while FANOUT_RATE
# writes a second go in; each change's delivery time to each watcher, and the members' CPU.
if (( FANOUT_WATCHERS > 0 )); then
  echo
  printf '%-28s | %10s %8s %8s %9s | %10s %8s %8s %9s\n' \
    "watch fan-out" "ms deliv/s" "ms p50" "ms p99" "ms cpu" "etcd del/s" "etcd p50" "etcd p99" "etcd cpu"
  cpu_ticks() { # pids... -> user + system clock ticks so far
    local total=0 pid
    for pid in "$@"; do total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
    echo "$total"
  }
  fanout() { # protocol system endpoints pids...
    local protocol=$1 system=$2 endpoints=$3; shift 3
    local before after began ended out
    before=$(cpu_ticks "$@"); began=$(now)
    # Over gRPC, a connection per 8 watchers or so: h2 (the generator's HTTP/2) closes a
    # connection whose unread small frames pile up past its budget, as a slow reader of a
    # thousand busy streams on a dozen connections lets them.
    out=$("$bin/metastore-bench" --system "$system" --endpoints "$endpoints" --workload watch-fanout \
      --protocol "$protocol" --connections $((FANOUT_WATCHERS / 24 + 1)) \
      --clients "$FANOUT_WATCHERS" --rate "$FANOUT_RATE" --duration "$DURATION" --json | tail -1)
    after=$(cpu_ticks "$@"); ended=$(now)
    # Members' CPU over the whole run (watchers' setup and the last deliveries included).
    echo "$out" | python3 -c "import json,sys; r=json.load(sys.stdin); t=$((after - before))/$(getconf CLK_TCK)/($ended-$began); print(f\"{r['throughput']:.0f} {r['p50_ms']:.2f} {r['p99_ms']:.2f} {t:.2f} {r['errors']}\")"
  }
  for protocol in $PROTOCOLS; do
    read -r mt mp50 mp99 mcpu merr <<<"$(fanout "$protocol" metastore "$ms_endpoints" "${ms_pids[@]}")"
    read -r et ep50 ep99 ecpu eerr <<<"$(fanout "$protocol" etcd "$etcd_endpoints" "${etcd_pids[@]}")"
    printf '%-28s | %10s %8s %8s %9s | %10s %8s %8s %9s\n' \
      "$protocol: $FANOUT_WATCHERS watchers, $FANOUT_RATE w/s" "$mt" "$mp50" "$mp99" "${mcpu} cores" "$et" "$ep50" "$ep99" "${ecpu} cores"
    (( merr + eerr == 0 )) || echo "missing deliveries: metaStore $merr, etcd $eerr"
  done
fi

# etcdctl check perf: etcd's verdict on each system at each load, with the figures it judged.
if [[ -n "$CHECK_PERF" ]]; then
  if command -v etcdctl >/dev/null; then
    echo
    printf '%-6s | %-44s | %-44s\n' "check perf" "metaStore" "etcd"
    check_perf() { # endpoints load -> "PASS|FAIL: throughput, slowest, stddev"
      local out
      out=$(ETCDCTL_API=3 etcdctl --endpoints "$1" check perf --load "$2" 2>&1 | tr -d '\r') || true
      python3 - "$out" <<'PY'
import re, sys
out = sys.argv[1]
verdict = "PASS" if re.search(r"^PASS$", out, re.M) else "FAIL"
found = lambda pattern: (re.search(pattern, out) or [None, "?"])[1]
throughput = found(r"Throughput (?:is|too low:) (\d+)")
slowest = found(r"Slowest request took ([\d.]+)")
stddev = found(r"Stddev is ([\d.]+)")
print(f"{verdict}: {throughput} w/s, slowest {slowest} s, stddev {stddev} s")
PY
    }
    for load in $CHECK_PERF; do
      printf '%-10s | %-44s | %-44s\n' "$load" "$(check_perf "$ms_endpoints" "$load")" "$(check_perf "$etcd_endpoints" "$load")"
    done
  else
    echo "SKIPPED: etcdctl check perf (apt-get install etcd-client)"
  fi
fi

# Resident memory under load: the peak while 64 clients write.
peak_under_load() { # system endpoints pids...
  local system=$1 endpoints=$2; shift 2
  "$bin/metastore-bench" --system "$system" --endpoints "$endpoints" --workload put --clients 64 \
    --keys "$KEYS" --duration "$DURATION" >/dev/null &
  local load=$! peak=0 now_mib
  while kill -0 "$load" 2>/dev/null; do
    now_mib=$(rss_mib "$@"); ((now_mib > peak)) && peak=$now_mib; sleep 0.2
  done
  echo "$peak"
}
etcd_load=$(peak_under_load etcd "$etcd_endpoints" "${etcd_pids[@]}")
ms_load=$(peak_under_load metastore "$ms_endpoints" "${ms_pids[@]}")

# BIG_KEYS keys: disk used, then the whole cluster killed and restarted until it takes a write.
big() { # system endpoints
  # Many writers: the preload is setup, not a measurement.
  "$bin/metastore-bench" --system "$1" --endpoints "$2" --keys "$BIG_KEYS" --preload --duration 0 \
    --clients 128 >/dev/null
}
big etcd "$etcd_endpoints"; big metastore "$ms_endpoints"
sleep 2
etcd_disk=$(du -sm "$work"/etcd? | awk '{s+=$1} END {print s}')
ms_disk=$(du -sm "$work"/ms? | awk '{s+=$1} END {print s}')
kill -9 "${etcd_pids[@]}" "${ms_pids[@]}"
for pid in "${etcd_pids[@]}" "${ms_pids[@]}"; do while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done; done
t=$(now); start_etcd existing; etcd_restart=$(first_write etcd http://127.0.0.1:23791 "$t")
t=$(now); start_metastore; ms_restart=$(first_write metastore http://127.0.0.1:24801 "$t")

# Failover: kill -9 of the leader, then writes to the others until one is acknowledged.
etcd_leader_index() {
  for i in 1 2 3; do
    local s; s=$(curl -sf -XPOST -d '{}' "http://127.0.0.1:2379$i/v3/maintenance/status") || continue
    python3 -c "import json,sys; s=json.loads(sys.argv[1]); sys.exit(0 if s['header']['member_id']==s['leader'] else 1)" "$s" && { echo "$i"; return; }
  done
}
ms_leader_index() {
  curl -sf "http://127.0.0.1:24801/v1/cluster" | python3 -c "import json,sys; print(json.load(sys.stdin)['leader_id'])"
}
failover() { # system leader-index
  local system=$1 leader=$2 port_base
  if [[ $system == metastore ]]; then
    port_base=2480; kill -9 "${ms_pids[$((leader - 1))]}"
  else
    port_base=2379; kill -9 "${etcd_pids[$((leader - 1))]}"
  fi
  local t; t=$(now)
  local other=$((leader % 3 + 1))
  first_write "$system" "http://127.0.0.1:${port_base}${other}" "$t"
}
sleep 2
etcd_failover=$(failover etcd "$(etcd_leader_index)")
ms_failover=$(failover metastore "$(ms_leader_index)")

echo
printf '%-44s %12s %12s\n' measure metaStore etcd
printf '%-44s %12s %12s\n' "start to first write (s)" "$ms_first" "$etcd_first"
printf '%-44s %12s %12s\n' "failover, kill -9 leader (s)" "$ms_failover" "$etcd_failover"
printf '%-44s %12s %12s\n' "restart to first write, $BIG_KEYS keys (s)" "$ms_restart" "$etcd_restart"
printf '%-44s %12s %12s\n' "resident memory, 3 members idle (MiB)" "$ms_idle" "$etcd_idle"
printf '%-44s %12s %12s\n' "resident memory, under load (MiB)" "$ms_load" "$etcd_load"
printf '%-44s %12s %12s\n' "disk, 3 members, $BIG_KEYS keys (MiB)" "$ms_disk" "$etcd_disk"

((GROWTH_KEYS > 0)) || exit 0
kill -9 "${pids[@]}" 2>/dev/null || true
for pid in "${pids[@]}"; do while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done; done
pids=()
rm -rf "$work"/etcd? "$work"/ms?
start_etcd; first_write etcd http://127.0.0.1:23791 "$(now)" >/dev/null
start_metastore; first_write metastore http://127.0.0.1:24801 "$(now)" >/dev/null
# As after the first start: a fresh static cluster may still change leader once in its first
# second (every member campaigns when it initializes), which fails a preload's in-flight write.
sleep 2
echo
echo "# growth: unique-key writes while the store grows (p99 ms; metaStore/etcd ratio)"
printf '%-12s | %9s %9s %7s | %9s %9s %7s\n' keys "ms C=1" "etcd C=1" "x" "ms C=64" "etcd C=64" "x"
for ((first = 0; first < GROWTH_KEYS; first += GROWTH_STEP)); do
  for system in metastore etcd; do
    endpoints=$([[ $system == metastore ]] && echo "$ms_endpoints" || echo "$etcd_endpoints")
    "$bin/metastore-bench" --system "$system" --endpoints "$endpoints" --keys "$GROWTH_STEP" \
      --first-key "$first" --preload --duration 0 --clients 128 >/dev/null
  done
  m1=$(bench metastore "$ms_endpoints" create 1 leader); e1=$(bench etcd "$etcd_endpoints" create 1 leader)
  m64=$(bench metastore "$ms_endpoints" create 64 all); e64=$(bench etcd "$etcd_endpoints" create 64 all)
  python3 - "$((first + GROWTH_STEP))" "$m1" "$e1" "$m64" "$e64" <<'PY'
import json, sys
keys, (m1, e1, m64, e64) = sys.argv[1], (json.loads(a)["p99_ms"] for a in sys.argv[2:])
ratio = lambda a, b: a / b if b else float("nan")
print(f"{int(keys):>12,} | {m1:>9.2f} {e1:>9.2f} {ratio(m1, e1):>7.2f} | {m64:>9.2f} {e64:>9.2f} {ratio(m64, e64):>7.2f}")
PY
done
