#!/usr/bin/env bash
# Builds a real Kubernetes control plane (kube-apiserver and kube-controller-manager v1.20.2) from
# Debian's `kubernetes` source package (kubernetes-source.sh), offline, and caches the binaries
# outside the clone. No container images can be pulled on the build machines and no registry we
# reach ships these binaries.
#
#   e2e/local/control-plane.sh        prints the directory holding the binaries (builds if needed)
#
# Cold: about 8 minutes on 2 cores and 2.2 GiB of disk; afterwards: instant.
set -euo pipefail

CACHE="${METASTORE_K8S_CACHE:-/var/cache/metastore/kubernetes}"
BIN="$CACHE/bin"

log() { echo "control-plane: $*" >&2; }

if [[ -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" ]]; then
  echo "$BIN"
  exit 0
fi

tree="$CACHE/src/kubernetes-1.20.2"
"$(dirname "$0")/kubernetes-source.sh" "$tree"

log "building kube-apiserver and kube-controller-manager (several minutes)"
(
  cd "$tree"
  export PATH="/usr/lib/go-1.19/bin:$PATH" GOPROXY=off CGO_ENABLED=0 GOFLAGS=-mod=vendor
  export KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 KUBE_GIT_TREE_STATE=clean
  export GOCACHE="$CACHE/gocache"
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$CACHE/build.log" 2>&1 ||
    { tail -40 "$CACHE/build.log" >&2; exit 1; }
)
mkdir -p "$BIN.tmp"
cp "$tree/_output/bin/kube-apiserver" "$tree/_output/bin/kube-controller-manager" "$BIN.tmp/"
rm -rf "$BIN" && mv "$BIN.tmp" "$BIN"
# The tree and Go's cache are 2 GiB; only the binaries are worth keeping.
rm -rf "$tree" "$CACHE/gocache"
log "built into $BIN"
echo "$BIN"
