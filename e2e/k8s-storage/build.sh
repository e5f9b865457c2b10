#!/usr/bin/env bash
# Builds Kubernetes' own storage tests — the apiserver's etcd3 store, watcher and compaction
# tests, the watch cache's tests over etcd3, and the generic registry's tests — with etcd's
# embedded test cluster replaced by cluster_shim.go, which starts real `metastore` processes
# instead (laid over the vendored package with `go test -overlay`; the tree is not edited). The
# test binaries are cached outside the clone and rebuilt only when the shim or this script
# changes.
#
#   e2e/k8s-storage/build.sh    prints the directory holding the test binaries
#
# Run one: METASTORE_BIN=<metastore binary> [METASTORE_MEMBERS=3] <dir>/etcd3.test -test.v
# Cold: under 2 minutes on 2 cores (the source comes from e2e/local/kubernetes-source.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

CACHE="${METASTORE_K8S_CACHE:-/var/cache/metastore/kubernetes}"
OUT="$CACHE/storage-tests"
# Which test binary holds which package.
PACKAGES=(
  "etcd3:k8s.io/apiserver/pkg/storage/etcd3"
  "cacher:k8s.io/apiserver/pkg/storage/tests"
  "registry:k8s.io/apiserver/pkg/registry/generic/registry"
)

log() { echo "k8s-storage: $*" >&2; }

go=/usr/lib/go-1.19/bin/go
stamp="$( (cat "$here/cluster_shim.go" "$0" "$here/../local/kubernetes-source.sh"; "$go" version 2>/dev/null) |
  sha256sum | cut -d' ' -f1)"
if [[ -f "$OUT/stamp" && "$(cat "$OUT/stamp")" == "$stamp" ]]; then
  echo "$OUT"
  exit 0
fi

# Kubernetes 1.20 builds in GOPATH mode (its module files do not satisfy Go 1.19's vendoring
# checks): the tree sits at $GOPATH/src/k8s.io/kubernetes and its vendor/ resolves imports.
work="$CACHE/storage-tests-build"
tree="$work/gopath/src/k8s.io/kubernetes"
"$here/../local/kubernetes-source.sh" "$tree"

# The overlay: the shim in place of cluster.go, every other file of the package gone.
integration="$tree/vendor/go.etcd.io/etcd/integration"
{
  echo '{"Replace": {'
  for f in "$integration"/*.go; do
    [[ "$f" == "$integration/cluster.go" ]] || echo "\"$f\": \"\","
  done
  echo "\"$integration/cluster.go\": \"$here/cluster_shim.go\""
  echo '}}'
} >"$work/overlay.json"

rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp"
(
  cd "$tree"
  export PATH="/usr/lib/go-1.19/bin:$PATH" GO111MODULE=off GOPATH="$work/gopath" GOPROXY=off CGO_ENABLED=0
  export GOCACHE="$work/gocache"
  for entry in "${PACKAGES[@]}"; do
    name="${entry%%:*}" package="${entry#*:}"
    log "building $package"
    # vet would type-check the shim against the package it replaces; the tests are not ours.
    go test -c -vet=off -overlay "$work/overlay.json" -o "$OUT.tmp/$name.test" "./vendor/$package"
  done
)
echo "$stamp" >"$OUT.tmp/stamp"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
rm -rf "$work"
log "built into $OUT"
echo "$OUT"
