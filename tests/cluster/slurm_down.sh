#!/usr/bin/env bash
# Stop the local CI Slurm cluster started by tests/cluster/slurm_up.sh.
# Tolerant: anything not running is skipped; always exits 0.
#
#   bash tests/cluster/slurm_down.sh            # cancel jobs, stop slurmd(s), slurmctld, slurmdbd, MariaDB, munged
#   SLURM_DOWN_KEEP_DB=1 bash ...               # keep MariaDB + munged running (faster next slurm_up)
#   SLURM_DOWN_PURGE=1 bash ...                 # also delete slurmctld state, spool and the network namespaces
set -u

log() { echo "[slurm_down] $*"; }

# stop_pidfile PIDFILE NAME : TERM, wait up to 15 s, then KILL (only if the pid really is NAME)
stop_pidfile() {
    local f=$1 name=$2 pid i
    [ -f "$f" ] || return 0
    pid=$(cat "$f" 2>/dev/null)
    if [ -n "$pid" ] && [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null
        for i in $(seq 30); do
            [ -d "/proc/$pid" ] || break
            sleep 0.5
        done
        if [ -d "/proc/$pid" ]; then
            log "$name did not stop, killing"
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    rm -f "$f"
}

# 1. cancel jobs so that no job step (slurmstepd + tasks) outlives its slurmd
if command -v squeue >/dev/null 2>&1 && timeout 10 scontrol ping >/dev/null 2>&1; then
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null
        for i in $(seq 20); do
            [ -z "$(timeout 5 squeue -h -t R,CG,S -o %A 2>/dev/null)" ] && break
            sleep 1
        done
    fi
fi

# 2. slurm daemons
for f in /run/slurm/slurmd-*.pid; do
    [ -e "$f" ] && stop_pidfile "$f" slurmd
done
stop_pidfile /run/slurm/slurmctld.pid slurmctld
stop_pidfile /run/slurm/slurmdbd.pid slurmdbd
left=$(pgrep -x slurmstepd 2>/dev/null | tr '\n' ' ')
[ -n "$left" ] && log "warning: slurmstepd still running (pids $left): jobs were not cancelled in time"

# 3. MariaDB and munge
if [ "${SLURM_DOWN_PURGE:-0}" = 1 ] && timeout 10 mariadb-admin --protocol=socket -uroot ping >/dev/null 2>&1; then
    # job ids restart at 1 without slurmctld state: drop the accounting DB too, or sacct -j N
    # would also list the old jobs with the same ids
    log "dropping the accounting database"
    timeout 30 mariadb --protocol=socket -uroot -e 'DROP DATABASE IF EXISTS slurm_acct_db' 2>/dev/null
fi
if [ "${SLURM_DOWN_KEEP_DB:-0}" != 1 ]; then
    if [ -f /run/mysqld/mysqld.pid ]; then
        log "stopping mariadbd"
        timeout 30 mariadb-admin --protocol=socket -uroot shutdown 2>/dev/null \
            || stop_pidfile /run/mysqld/mysqld.pid mariadbd
    fi
    stop_pidfile /run/munge/munged.pid munged
fi

# 4. optional cleanup
if [ "${SLURM_DOWN_PURGE:-0}" = 1 ]; then
    log "purging state, spool and network namespaces"
    rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*
    for ns in $(ip netns list 2>/dev/null | awk '/^slurm-node[0-9]+/ {print $1}'); do
        ip netns del "$ns" 2>/dev/null
    done
    ip link del slurmbr0 2>/dev/null
    if grep -q '# slurm-ci-node' /etc/hosts 2>/dev/null; then
        tmp=$(mktemp)
        grep -v '# slurm-ci-node' /etc/hosts >"$tmp"
        cat "$tmp" >/etc/hosts
        rm -f "$tmp"
    fi
fi
log "done"
exit 0
