#!/usr/bin/env bash
# What TLS costs, side by side in one run: a 3-member metaStore and a 3-member etcd, each
# twice (plain, and TLS on both ports with client certificates demanded of clients and peers,
# as a production cluster runs), the same load over etcd's gRPC API, which both serve. A row
# runs ROUNDS rounds, each round every one of the four clusters in turn, and shows each
# cluster's median round (by throughput).
#
#   bench/compare-tls.sh                          # put and get at C = 64, 3 rounds of 10 s
#   DURATION=30 ROUNDS=5 CLIENTS="64 256" bench/compare-tls.sh
#
# Needs etcd and etcdctl (apt-get install etcd-server etcd-client) and openssl (for the
# bench's certificates only: metaStore itself uses rustls). Builds metaStore with --release.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CLIENTS="${CLIENTS:-64}"
WORKLOADS="${WORKLOADS:-put get}"
KEYS="${KEYS:-10000}"

for tool in etcd etcdctl openssl; do
  command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 2; }
done
cargo build --release --locked --bin metastore --bin metastore-bench >&2
bin="${CARGO_TARGET_DIR:-target}/release"

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done; done
  rm -rf "$work"
}
trap cleanup EXIT

# One CA; one certificate for 127.0.0.1 that every member presents as server and as client
# (both extended key usages), and one for the load generator.
pki="$work/pki"
mkdir -p "$pki"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 2 -subj "/CN=bench CA" 2>/dev/null
issue() { # name extensions
  openssl req "${ec[@]}" -keyout "$pki/$1.key" -out "$pki/$1.csr" -subj "/CN=$1" 2>/dev/null
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
    -out "$pki/$1.crt" -extfile <(printf '%b' "$2") 2>/dev/null
}
issue member "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature"
issue client "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature"
client_tls=(--cacert "$pki/ca.crt" --cert "$pki/client.crt" --key "$pki/client.key")

# Each cluster: a port base (members on base+1..3 for clients, base+11..13 for peers).
start_metastore() { # name base tls
  local scheme=http flags=() cluster="" i
  if [[ $3 == 1 ]]; then
    scheme=https
    flags=(--cert-file "$pki/member.crt" --key-file "$pki/member.key" --trusted-ca-file "$pki/ca.crt"
      --client-cert-auth --peer-cert-file "$pki/member.crt" --peer-key-file "$pki/member.key"
      --peer-trusted-ca-file "$pki/ca.crt")
  fi
  for i in 1 2 3; do cluster+="${cluster:+,}$scheme://127.0.0.1:$(($2 + 10 + i))"; done
  for i in 1 2 3; do
    "$bin/metastore" --member-id "$i" --cluster "$cluster" --port "$(($2 + i))" --data-dir "$work/$1-$i" \
      "${flags[@]}" >>"$work/$1-$i.log" 2>&1 &
    pids+=($!); disown $!
  done
}
start_etcd() { # name base tls
  local scheme=http flags=() cluster="" i
  if [[ $3 == 1 ]]; then
    scheme=https
    flags=(--cert-file "$pki/member.crt" --key-file "$pki/member.key" --trusted-ca-file "$pki/ca.crt"
      --client-cert-auth --peer-cert-file "$pki/member.crt" --peer-key-file "$pki/member.key"
      --peer-trusted-ca-file "$pki/ca.crt" --peer-client-cert-auth)
  fi
  for i in 1 2 3; do cluster+="${cluster:+,}$1-$i=$scheme://127.0.0.1:$(($2 + 10 + i))"; done
  for i in 1 2 3; do
    etcd --name "$1-$i" --data-dir "$work/$1-$i" \
      --listen-peer-urls "$scheme://127.0.0.1:$(($2 + 10 + i))" \
      --initial-advertise-peer-urls "$scheme://127.0.0.1:$(($2 + 10 + i))" \
      --listen-client-urls "$scheme://127.0.0.1:$(($2 + i))" --advertise-client-urls "$scheme://127.0.0.1:$(($2 + i))" \
      --initial-cluster "$cluster" --log-level error "${flags[@]}" >>"$work/$1-$i.log" 2>&1 &
    pids+=($!); disown $!
  done
}
endpoints() { # base tls
  local scheme=http
  [[ $2 == 1 ]] && scheme=https
  echo "$scheme://127.0.0.1:$(($1 + 1)),$scheme://127.0.0.1:$(($1 + 2)),$scheme://127.0.0.1:$(($1 + 3))"
}

# name system base tls
clusters=("ms-plain metastore 25100 0" "ms-tls metastore 25200 1" "etcd-plain etcd 25300 0" "etcd-tls etcd 25400 1")
for c in "${clusters[@]}"; do
  read -r name system base tls <<<"$c"
  "start_$system" "$name" "$base" "$tls"
done
for c in "${clusters[@]}"; do
  read -r name system base tls <<<"$c"
  tls_flags=()
  [[ $tls == 1 ]] && tls_flags=("${client_tls[@]}")
  ready=""
  for _ in $(seq 300); do
    if etcdctl --endpoints "$(endpoints "$base" "$tls")" "${tls_flags[@]}" --dial-timeout 1s put bench-probe x >/dev/null 2>&1; then
      ready=1; break
    fi
    sleep 0.1
  done
  [[ -n $ready ]] || { echo "$name never took a write; its logs are in $work" >&2; trap - EXIT; exit 1; }
  "$bin/metastore-bench" --system "$system" --protocol grpc --endpoints "$(endpoints "$base" "$tls")" \
    "${tls_flags[@]}" --keys "$KEYS" --preload --duration 0 >/dev/null
done

bench() { # system base tls workload clients
  local tls_flags=()
  [[ $3 == 1 ]] && tls_flags=("${client_tls[@]}")
  "$bin/metastore-bench" --system "$1" --protocol grpc --endpoints "$(endpoints "$2" "$3")" "${tls_flags[@]}" \
    --workload "$4" --clients "$5" --keys "$KEYS" --duration "$DURATION" --json | tail -1
}

echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), gRPC, median of $ROUNDS rounds of ${DURATION}s per row, 256-byte values, $KEYS keys"
printf '%-8s %4s | %9s %9s %6s %6s | %9s %9s %6s %6s | %8s %8s\n' workload C \
  "ms plain" "ms TLS" "ops x" "p99 x" "etcd pl." "etcd TLS" "ops x" "p99 x" "TLS ms/e" "p99 m/e"
for workload in $WORKLOADS; do
  for c in $CLIENTS; do
    results=()
    for cluster in "${clusters[@]}"; do results+=(""); done
    for _ in $(seq "$ROUNDS"); do
      for i in "${!clusters[@]}"; do
        read -r name system base tls <<<"${clusters[$i]}"
        results[i]+="$(bench "$system" "$base" "$tls" "$workload" "$c")"$'\n'
      done
    done
    python3 - "$workload" "$c" "${results[@]}" <<'PY'
import json, sys

def median_round(lines):
    rounds = sorted((json.loads(l) for l in lines.splitlines() if l.strip()), key=lambda r: r["throughput"])
    return rounds[len(rounds) // 2]

workload, c = sys.argv[1], sys.argv[2]
mp, mt, ep, et = (median_round(a) for a in sys.argv[3:7])
ratio = lambda a, b: a / b if b else float("nan")
print(f"{workload:<8} {c:>4} | {mp['throughput']:>9.0f} {mt['throughput']:>9.0f} "
      f"{ratio(mt['throughput'], mp['throughput']):>6.2f} {ratio(mt['p99_ms'], mp['p99_ms']):>6.2f} | "
      f"{ep['throughput']:>9.0f} {et['throughput']:>9.0f} "
      f"{ratio(et['throughput'], ep['throughput']):>6.2f} {ratio(et['p99_ms'], ep['p99_ms']):>6.2f} | "
      f"{ratio(mt['throughput'], et['throughput']):>8.2f} {ratio(mt['p99_ms'], et['p99_ms']):>8.2f}")
PY
  done
done
echo "# ops x / p99 x: TLS over plain for the same system; TLS ms/e, p99 m/e: metaStore over etcd, both with TLS"
