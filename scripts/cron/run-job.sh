#!/usr/bin/env bash
# Run one creditrelay cron job from the install directory: its .env is read, runs of the same job never
# overlap (flock), and output is appended to logs/<job>.log. Usage: run-job.sh poll|reconcile|cleanup|backup [args…]
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
job="$1"; shift
mkdir -p "$here/logs"
cd "$here"
if [ "$job" = backup ]; then
  exec flock -n "$here/logs/$job.lock" "$here/deploy/backup.sh" "$@" >>"$here/logs/$job.log" 2>&1
fi
exec flock -n "$here/logs/$job.lock" "$here/.venv/bin/creditrelay" "$job" "$@" >>"$here/logs/$job.log" 2>&1
