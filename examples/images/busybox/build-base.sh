#!/usr/bin/env bash
# Builds busybox:latest into the engine (default: /var/lib/pyswarm) from Debian's static
# busybox and the Dockerfile beside this script. Idempotent: an existing image is kept.
# If no daemon is running, one is started for the build and stopped afterwards.
set -euo pipefail
PYSWARM=${1:-pyswarm}
here=$(cd "$(dirname "$0")" && pwd)
run_dir=${PYSWARM_RUN:-/run/pyswarm}

started=""
if ! "$PYSWARM" version >/dev/null 2>&1; then
  "$PYSWARM" daemon -d
  started=$(cat "$run_dir/pyswarm.pid")
fi
stop_started() {
  if [ -n "$started" ]; then kill "$started" 2>/dev/null || true; fi
}
trap stop_started EXIT

if "$PYSWARM" image inspect busybox:latest >/dev/null 2>&1; then
  echo "busybox:latest is already built"
  exit 0
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"; stop_started' EXIT
cp -a "$here/." "$ctx/"
cp /bin/busybox "$ctx/busybox"
"$PYSWARM" image build -t busybox:latest "$ctx"
