#!/usr/bin/env bash
# Builds a real Kubernetes control plane (kube-apiserver and kube-controller-manager v1.20.2) from
# Debian's `kubernetes` source package, offline, and caches the binaries outside the clone.
# No container images can be pulled on the build machines and no registry we reach ships these
# binaries; Debian's source package is the one complete Kubernetes source with its dependencies.
#
#   e2e/local/control-plane.sh        prints the directory holding the binaries (builds if needed)
#
# Cold: about 8 minutes on 2 cores and 2.2 GiB of disk; afterwards: instant.
set -euo pipefail

CACHE="${METASTORE_K8S_CACHE:-/var/cache/metastore/kubernetes}"
VERSION=1.20.5+really1.20.2
ORIG="kubernetes_${VERSION}.orig.tar.gz"
ORIG_SHA256=b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc
BIN="$CACHE/bin"

log() { echo "control-plane: $*" >&2; }

if [[ -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" ]]; then
  echo "$BIN"
  exit 0
fi

need_packages=()
for p in golang-1.19-go golang-github-modern-go-reflect2-dev rsync make openssl etcd-server dpkg-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need_packages+=("$p")
done
if ((${#need_packages[@]})); then
  log "installing ${need_packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_packages[@]}" >/dev/null
fi

mkdir -p "$CACHE/src"
cd "$CACHE/src"
if ! echo "$ORIG_SHA256  $ORIG" | sha256sum -c --status 2>/dev/null; then
  # The source comes from the same archive the machine's binary packages come from: a deb-src
  # twin of each configured deb source, in a private apt configuration.
  log "fetching Debian's kubernetes source package"
  apt_dir="$CACHE/apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/sources.list.d"
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -e "$f" ]] && sed 's/^Types: deb$/Types: deb-src/' "$f" >"$apt_dir/sources.list.d/$(basename "$f")"
  done
  if [[ -s /etc/apt/sources.list ]]; then
    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list >"$apt_dir/sources.list"
  else
    : >"$apt_dir/sources.list"
  fi
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
    -o "Dir::State::Lists=$apt_dir/lists")
  apt-get "${apt_opts[@]}" update -qq
  apt-get "${apt_opts[@]}" source --download-only -qq "kubernetes=1.20.5+really1.20.2-1.1+deb12u1" >/dev/null
  echo "$ORIG_SHA256  $ORIG" | sha256sum -c --status || { log "checksum mismatch for $ORIG"; exit 1; }
fi

tree="$CACHE/src/kubernetes-1.20.2"
rm -rf "$tree"
mkdir -p "$tree"
log "unpacking"
tar -xzf "$ORIG" -C "$tree" --strip-components=1

# The vendored reflect2 v1.0.1 segfaults under Go >= 1.18 at the first custom resource; Debian's
# v1.0.2 is the fix.
log "replacing the vendored reflect2 with v1.0.2"
rm -rf "$tree/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$tree/vendor/github.com/modern-go/reflect2"
find "$tree/vendor/github.com/modern-go/reflect2" -name '*_test.go' -delete
sed -i 's#github.com/modern-go/reflect2 v1.0.1#github.com/modern-go/reflect2 v1.0.2#' "$tree/go.mod" "$tree/vendor/modules.txt"
find "$tree/staging" -name go.mod -exec sed -i 's#github.com/modern-go/reflect2 v1.0.1#github.com/modern-go/reflect2 v1.0.2#' {} +

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
