#!/usr/bin/env bash
# Smoke check (not a pytest test): a plain sbatch script whose srun step runs 2 tasks.
#   bash tests/cluster/smoke_sbatch.sh            # 1 node x 2 tasks
#   NODES=2 bash tests/cluster/smoke_sbatch.sh    # 2 nodes x 1 task (needs SLURM_NODES=2 cluster)
set -euo pipefail
NODES=${NODES:-1}
NTASKS=2
dir=$(mktemp -d /tmp/smoke_sbatch_XXXX)
cat >"$dir/job.sh" <<'JOB'
#!/bin/bash
#SBATCH --job-name=smoke_sbatch
#SBATCH --time=2
#SBATCH --cpus-per-task=1
echo "batch on $(hostname) nodelist=$SLURM_JOB_NODELIST"
srun --kill-on-bad-exit=1 bash -c 'echo "task $SLURM_PROCID/$SLURM_NTASKS node $SLURM_NODEID host $(hostname)"'
JOB
t0=$(date +%s)
# --wait: sbatch returns when the job ends, with the job's exit code; bound it anyway
timeout 120 sbatch --wait --parsable -N "$NODES" --ntasks="$NTASKS" --ntasks-per-node=$((NTASKS / NODES)) \
    -o "$dir/out_%j.txt" "$dir/job.sh" >"$dir/jobid" || { echo "FAIL: sbatch --wait rc=$?"; cat "$dir"/out_*.txt; exit 1; }
jid=$(cat "$dir/jobid")
cat "$dir/out_$jid.txt"
n=$(grep -c '^task ' "$dir/out_$jid.txt")
for i in $(seq 30); do
    state=$(sacct -n -X -P -j "$jid" -o State | tail -n 1)
    [ "$state" = COMPLETED ] && break
    sleep 1
done
echo "job $jid: $n task lines, sacct $state, $(($(date +%s) - t0)) s"
[ "$n" -eq "$NTASKS" ] && [ "$state" = COMPLETED ] && echo OK || { echo FAIL; exit 1; }
