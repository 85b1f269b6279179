#!/usr/bin/env bash
# The cluster suite against a real Dask scheduler and two workers, all on 127.0.0.1, stopped by
# process id at the end: `make test-cluster` (CI runs it). Usage: tests/cluster/run.sh [VENV]
set -euo pipefail
VENV=${1:-.venv}
work=$(mktemp -d)
pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap stop EXIT
"$VENV/bin/dask" scheduler --host 127.0.0.1 --port 0 --no-dashboard --scheduler-file "$work/scheduler.json" \
    >"$work/scheduler.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/scheduler.json" ] && break; sleep 0.2; done
address=$("$VENV/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['address'])" "$work/scheduler.json")
for n in 1 2; do
    "$VENV/bin/dask" worker "$address" --host 127.0.0.1 --nthreads 1 --nworkers 1 --resources qconvert=1 \
        --no-dashboard --name "worker-$n" >"$work/worker-$n.log" 2>&1 &
    pids+=($!)
done
"$VENV/bin/python" - "$address" <<'PY'
import sys
from distributed import Client
with Client(sys.argv[1], timeout=60) as client:
    client.wait_for_workers(2, timeout=60)
PY
echo "cluster suite on $address (2 workers)"
DASK_SCHEDULER_ADDRESS="$address" "$VENV/bin/pytest" -q -p no:cacheprovider tests/cluster
