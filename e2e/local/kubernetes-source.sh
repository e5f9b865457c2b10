#!/usr/bin/env bash
# Unpacks Kubernetes v1.20.2's source, with its vendored dependencies, from Debian's
# `kubernetes` source package (the one complete Kubernetes source any registry we reach offers),
# ready to build with Go 1.19: fetched once into the cache, checked against its checksum, and
# patched where the vendored code breaks under a newer Go.
#
#   e2e/local/kubernetes-source.sh DIR   unpacks the tree into DIR (replacing what is there)
#
# Used by control-plane.sh (kube-apiserver, kube-controller-manager) and by
# e2e/k8s-storage/build.sh (Kubernetes' own storage tests).
set -euo pipefail

CACHE="${METASTORE_K8S_CACHE:-/var/cache/metastore/kubernetes}"
VERSION=1.20.5+really1.20.2
ORIG="kubernetes_${VERSION}.orig.tar.gz"
ORIG_SHA256=b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc
tree="$(realpath -m "${1:?usage: kubernetes-source.sh DIR}")"

log() { echo "kubernetes-source: $*" >&2; }

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
  rm -f "$apt_dir"/sources.list.d/*
  for f in /etc/apt/sources.list.d/*.sources; do
    if [[ -e "$f" ]]; then
      sed 's/^Types: deb$/Types: deb-src/' "$f" >"$apt_dir/sources.list.d/$(basename "$f")"
    fi
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    if [[ -e "$f" ]]; then sed -n 's/^deb /deb-src /p' "$f"; fi
  done >"$apt_dir/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
    -o "Dir::State::Lists=$apt_dir/lists")
  apt-get "${apt_opts[@]}" update -qq
  # Whichever Debian revision of the package the archive has now: they share this upstream
  # tarball, which the checksum pins.
  apt-get "${apt_opts[@]}" source --download-only -qq kubernetes >/dev/null
  echo "$ORIG_SHA256  $ORIG" | sha256sum -c --status ||
    { log "no $ORIG with the expected checksum (Debian 12's kubernetes source package)"; exit 1; }
fi

rm -rf "$tree"
mkdir -p "$tree"
log "unpacking into $tree"
tar -xzf "$CACHE/src/$ORIG" -C "$tree" --strip-components=1

# The vendored reflect2 v1.0.1 segfaults under Go >= 1.18 at the first custom resource; Debian's
# v1.0.2 is the fix.
log "replacing the vendored reflect2 with v1.0.2"
rm -rf "$tree/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$tree/vendor/github.com/modern-go/reflect2"
find "$tree/vendor/github.com/modern-go/reflect2" -name '*_test.go' -delete
sed -i 's#github.com/modern-go/reflect2 v1.0.1#github.com/modern-go/reflect2 v1.0.2#' "$tree/go.mod" "$tree/vendor/modules.txt"
find "$tree/staging" -name go.mod -exec sed -i 's#github.com/modern-go/reflect2 v1.0.1#github.com/modern-go/reflect2 v1.0.2#' {} +
