#!/usr/bin/env bash
# The end-to-end scenarios on kind: create a cluster from kind-config.yaml, build the image and
# load it, install the chart, run the scenarios, delete the cluster (KEEP_CLUSTER=1 keeps it).
# Without docker or kind it says so and exits 0: the local provider covers this machine.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER="${KIND_CLUSTER:-metastore-e2e}"
IMAGE="metastore:$(sed -n 's/^appVersion: "\(.*\)"/\1/p' charts/metastore-operator/Chart.yaml)"

for tool in docker kind kubectl helm; do
  if ! command -v "$tool" >/dev/null; then
    echo "SKIPPED: the kind end-to-end suite needs $tool"
    exit 0
  fi
done
if ! docker info >/dev/null 2>&1; then
  echo "SKIPPED: the kind end-to-end suite needs a running Docker engine"
  exit 0
fi

if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config kind-config.yaml --wait 120s
fi
if [[ -z "${KEEP_CLUSTER:-}" ]]; then
  trap 'kind delete cluster --name "$CLUSTER"' EXIT
fi

docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

context="kind-$CLUSTER"
helm upgrade --install ops charts/metastore-operator --kube-context "$context" \
  --namespace metastore-system --create-namespace --wait --timeout 3m
kubectl --context "$context" create namespace e2e --dry-run=client -o yaml |
  kubectl --context "$context" apply -f -

METASTORE_E2E_KIND_CONTEXT="$context" METASTORE_HELM="$(command -v helm)" \
  cargo test -p metastore-e2e --test kind -- --nocapture
