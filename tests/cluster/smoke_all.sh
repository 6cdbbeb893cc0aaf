#!/usr/bin/env bash
# Run the quick smoke checks against the running cluster (about 1-2 minutes). Exit 1 if any fails.
#   bash tests/cluster/smoke_all.sh            (after: bash tests/cluster/slurm_up.sh)
cd "$(dirname "$0")/../.." || exit 1
PY=${PY:-.venv/bin/python}
nodes=$(sinfo -h -N -p debug -o %N | sort -u | wc -l)
fail=0
run() {
    local t0=$(date +%s)
    echo "=== $*"
    if timeout 300 "$@" >/tmp/smoke_all.log 2>&1; then
        echo "    OK ($(($(date +%s) - t0)) s)"
    else
        echo "    FAILED ($(($(date +%s) - t0)) s):"; tail -n 30 /tmp/smoke_all.log; fail=1
    fi
}
run bash tests/cluster/smoke_sbatch.sh
run "$PY" tests/cluster/smoke_submitit_dist.py --tasks-per-node 2
run "$PY" tests/cluster/smoke_hydra.py --tasks-per-node 2
if [ "$nodes" -ge 2 ]; then
    run env NODES=2 bash tests/cluster/smoke_sbatch.sh
    run "$PY" tests/cluster/smoke_submitit_dist.py --nodes 2 --tasks-per-node 1
    run "$PY" tests/cluster/smoke_hydra.py --nodes 2 --tasks-per-node 1
else
    echo "=== single-node cluster: 2-node checks skipped"
fi
run "$PY" tests/cluster/smoke_preempt.py --scenario usr2
exit $fail
