#!/usr/bin/env bash
# Hawser quick start: installs what is needed, builds, and runs the main job.
# Until the netns lab lands (issue "hawser lab"), the main job is the identity
# demo: a control plane CA on loopback, a node bootstrapping with its token,
# workload certificates for its pods (and a refusal for a pod on another node),
# and mTLS between two workloads.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/hawser-target}"
cargo build --locked -p hawser -p hawser-control-plane
"$CARGO_TARGET_DIR/debug/hawser" demo identity --out hawser-demo
