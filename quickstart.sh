#!/usr/bin/env bash
# Hawser quick start (run as root: the lab is made of network namespaces):
# installs what is needed, builds, brings up the local lab mesh (2 nodes, the
# control plane, a node proxy per node, hawser-cni chained after Debian's
# bridge + host-local plugins) and applies the examples, then says what to try.
# `hawser lab down` removes all of it.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/hawser-target}"
cargo build --locked -p hawser -p hawser-node-proxy -p hawser-control-plane -p hawser-cni -p hawser-tests --bins
export PATH="$CARGO_TARGET_DIR/debug:$PATH"
hawser lab up
# Each apply returns once every node proxy runs the change.
hawser lab apply -f examples/01-enroll/namespace-enrolled.yaml
hawser lab apply -f examples/01-enroll/workloads.yaml
hawser lab apply -f examples/02-routes/
echo
hawser lab status
cat <<TRY

The lab is up with examples 01 (an enrolled namespace) and 02 (mesh routes).
First:  export PATH="$CARGO_TARGET_DIR/debug:\$PATH"
Then try:
  hawser lab exec demo/client -- curl -s http://echo/           # through the mesh (mTLS)
  hawser verify-mtls demo/client demo/echo                      # proof from the wire
  hawser lab exec routes/client -- hawser-echo client --count 100 http://echo/ | tail -1   # ~80/20 v1/v2
  hawser lab exec routes/client -- curl -s -H 'x-version: v2' http://echo/ | grep Hostname
  hawser lab exec routes/client -- curl -s -o /dev/null -w '%{http_code}\n' 'http://echo/slow?delay=2s'   # 504 after 0.5 s
  hawser status routes                                          # what the control plane accepted
  hawser lab conformance                                        # the Gateway API mesh conformance cases
Walk-throughs (authorization, verifying mTLS, …): examples/README.md
Remove everything: hawser lab down
TRY
