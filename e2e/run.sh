#!/usr/bin/env bash
# Runs the end-to-end scenarios on one cluster provider.
#
#   e2e/run.sh local   a real kube-apiserver + kube-controller-manager built from source and
#                      run on this machine, the operator as a process (needs root; what CI runs)
#   e2e/run.sh kind    a kind cluster with the image built and loaded (needs docker and kind)
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-local}" in
  local)
    METASTORE_K8S_BIN="$(e2e/local/control-plane.sh)"
    METASTORE_HELM="$(scripts/install-helm.sh)/helm"
    export METASTORE_K8S_BIN METASTORE_HELM
    cargo build --workspace --bins
    exec cargo test -p metastore-e2e --test local -- --nocapture
    ;;
  kind)
    exec e2e/kind/run.sh
    ;;
  *)
    echo "usage: e2e/run.sh [local|kind]" >&2
    exit 2
    ;;
esac
