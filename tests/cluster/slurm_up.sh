#!/usr/bin/env bash
# Bring up a local Slurm cluster with real accounting (slurmdbd + MariaDB) for CI.
#
#   bash tests/cluster/slurm_up.sh                  # as root; default SLURM_NODES=auto (see below)
#   SLURM_NODES=1 bash tests/cluster/slurm_up.sh    # 1 node named after this machine's hostname
#   SLURM_NODES=2 bash tests/cluster/slurm_up.sh    # 2 nodes node1,node2 (one network namespace each)
#
# Idempotent: a second run reuses running daemons and only restarts slurmctld/slurmd when
# the generated slurm.conf changed (e.g. SLURM_NODES changed) or a daemon is not running.
# Needs root, apt (Debian 12 packages: Slurm 22.05) on a machine without systemd.
# See tests/cluster/README.md for what it sets up and why.
#
# Environment knobs:
#   SLURM_NODES=auto|1|2|N     number of Slurm nodes. N>1: one slurmd per network namespace (own IP and
#                              hostname), needs CAP_NET_ADMIN. auto (default): 2 if network namespaces
#                              work here, else 1 (with a warning). Tests: `sinfo -h -N | wc -l`.
#   SLURM_CPUS_PER_NODE=4      CPUs declared per node (more than the machine has: oversubscription on purpose)
#   SLURM_UP_TIMEOUT=240       seconds allowed for the daemons to come up (apt time not included)
#   SLURM_CRED_EXPIRE=10       AuthInfo=cred_expire: a requeued job may restart cred_expire+1 s after the requeue
#   SLURM_SKIP_APT=1           never call apt-get (fail if the packages are missing)
set -euo pipefail

T0=$(date +%s)
NODES_REQ=${SLURM_NODES:-auto}
CPUS=${SLURM_CPUS_PER_NODE:-4}
UP_TIMEOUT=${SLURM_UP_TIMEOUT:-240}
CRED_EXPIRE=${SLURM_CRED_EXPIRE:-10}
CLUSTER=ci
ACCOUNT=ci
PARTITION=debug
DB_PASS=slurmci          # local-only MariaDB user; the DB listens on the unix socket only
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
NET_PREFIX=10.77.0       # multi-node: node i has ${NET_PREFIX}.i, the host side of the bridge .254
BRIDGE=slurmbr0
HOSTS_TAG="# slurm-ci-node"

log() { printf '[slurm_up %3ss] %s\n' "$(($(date +%s) - T0))" "$*"; }

dump_logs() {
    echo "================ slurm_up: diagnostics ================" >&2
    for f in "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmdbd.log "$LOG_DIR"/slurmd-*.log \
             "$LOG_DIR"/mariadb.err /var/log/munge/munged.log; do
        [ -f "$f" ] || continue
        echo "----- tail -n 40 $f" >&2
        tail -n 40 "$f" >&2 || true
    done
    echo "----- processes" >&2
    ps -eo pid,user,args | grep -E 'slurm|munge|mariadb|mysql' | grep -v grep >&2 || true
    echo "----- sinfo" >&2
    timeout 10 sinfo -N -l >&2 2>&1 || true
}

die() {
    echo "slurm_up: ERROR: $*" >&2
    dump_logs
    exit 1
}

# wait_for DESCRIPTION SECONDS CMD... : poll CMD every second until it succeeds.
# If WAIT_PIDFILE/WAIT_NAME are set, fail at once when that daemon has exited.
wait_for() {
    local what=$1 secs=$2 out=""
    shift 2
    local end=$(($(date +%s) + secs))
    until out=$("$@" 2>&1); do
        if [ -n "${WAIT_PIDFILE:-}" ] && ! pid_alive "$WAIT_PIDFILE" "$WAIT_NAME"; then
            sleep 1
            pid_alive "$WAIT_PIDFILE" "$WAIT_NAME" || die "$WAIT_NAME exited while waiting for: $what"
        fi
        if [ "$(date +%s)" -ge "$end" ]; then
            die "timed out after ${secs}s waiting for: $what (last output: $(printf '%s' "$out" | tail -n 3))"
        fi
        sleep 1
    done
}

# pid_alive PIDFILE NAME : the pid in PIDFILE is alive and its command name is NAME
pid_alive() {
    local pid
    [ -f "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

# stop_pidfile PIDFILE NAME : TERM the process, wait up to 15 s, then KILL
stop_pidfile() {
    local pid i
    pid_alive "$1" "$2" || { rm -f "$1"; return 0; }
    pid=$(cat "$1")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 30); do
        [ -d "/proc/$pid" ] || break
        sleep 0.5
    done
    [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$1"
}

[ "$(id -u)" -eq 0 ] || { echo "slurm_up: must run as root" >&2; exit 1; }
[[ "$NODES_REQ" =~ ^(auto|[1-9][0-9]?)$ ]] || { echo "slurm_up: SLURM_NODES must be auto or 1..99" >&2; exit 1; }
for v in CPUS UP_TIMEOUT CRED_EXPIRE; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "slurm_up: $v must be a positive integer, got '${!v}'" >&2; exit 1; }
done
[ "$CRED_EXPIRE" -ge 5 ] || { echo "slurm_up: SLURM_CRED_EXPIRE must be >= 5" >&2; exit 1; }

# ---------------------------------------------------------------- packages
need_pkgs=()
for bin_pkg in slurmctld:slurmctld slurmd:slurmd slurmdbd:slurmdbd sbatch:slurm-client \
               munged:munge mariadbd:mariadb-server; do
    command -v "${bin_pkg%%:*}" >/dev/null 2>&1 || need_pkgs+=("${bin_pkg##*:}")
done
if [ "$NODES_REQ" != 1 ]; then
    command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
    [ "${SLURM_SKIP_APT:-0}" = 1 ] && die "missing packages and SLURM_SKIP_APT=1: ${need_pkgs[*]}"
    log "apt-get install ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Keep maintainer scripts from starting daemons with the package defaults: we start them below.
    policy_created=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy_created=1
    fi
    apt_ok=0
    for attempt in 1 2 3; do
        if apt-get update -qq && apt-get install -y -qq --no-install-recommends \
                -o Dpkg::Options::=--force-confold "${need_pkgs[@]}" >/tmp/slurm_up_apt.log 2>&1; then
            apt_ok=1
            break
        fi
        log "apt-get failed (attempt $attempt), retrying"
        sleep 5
    done
    [ "$policy_created" = 1 ] && rm -f /usr/sbin/policy-rc.d
    if [ "$apt_ok" != 1 ]; then
        tail -n 30 /tmp/slurm_up_apt.log >&2 || true
        die "apt-get install failed"
    fi
    log "packages installed"
fi
# The slurm-wlm-mysql-plugin (a dependency of slurmdbd) provides accounting_storage_mysql.
PLUGIN_DIR=$(dirname "$(find /usr/lib -name accounting_storage_slurmdbd.so 2>/dev/null | head -n 1)")
[ -f "$PLUGIN_DIR/accounting_storage_mysql.so" ] || die "accounting_storage_mysql.so not found (slurm-wlm-mysql-plugin)"

install -d -m 755 "$LOG_DIR" "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /run/slurm

# ---------------------------------------------------------------- how many nodes
netns_works() {
    command -v ip >/dev/null && command -v nsenter >/dev/null && command -v unshare >/dev/null || return 1
    ip link show "$BRIDGE" >/dev/null 2>&1 && ip netns list | grep -q '^slurm-node1' && return 0
    ip netns add slurm-probe || return 1
    local ok=0
    if ip link add slurmprobe0 type veth peer name slurmprobe1 netns slurm-probe \
        && ip link add slurmprobebr type bridge \
        && nsenter --net=/run/netns/slurm-probe unshare --uts sh -c 'hostname probe'; then
        ok=1
    fi
    ip link del slurmprobe0 2>/dev/null
    ip link del slurmprobebr 2>/dev/null
    ip netns del slurm-probe 2>/dev/null
    [ "$ok" = 1 ]
}
if [ "$NODES_REQ" = auto ]; then
    if netns_works >/dev/null 2>&1; then
        NODES=2
    else
        NODES=1
        echo "slurm_up: WARNING: network namespaces unavailable here (no CAP_NET_ADMIN/veth/bridge?):" \
             "falling back to a single node; multi-node tests must skip" >&2
    fi
else
    NODES=$NODES_REQ
fi
log "SLURM_NODES=$NODES_REQ -> $NODES node(s)"

# ---------------------------------------------------------------- hostname resolution
HOST=$(hostname -s)
if ! getent hosts "$HOST" >/dev/null 2>&1; then
    log "adding $HOST to /etc/hosts"
    echo "127.0.0.1 $HOST" >>/etc/hosts
fi

# ---------------------------------------------------------------- munge
install -d -o munge -g munge -m 755 /run/munge
install -d -o munge -g munge -m 700 /var/log/munge /etc/munge
install -d -o munge -g munge -m 711 /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
if ! pid_alive /run/munge/munged.pid munged; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
fi
wait_for "munge credential round trip" 20 bash -c 'munge -n | unmunge'

# ---------------------------------------------------------------- MariaDB
mysql_up() { mariadb-admin --protocol=socket -uroot ping; }
if ! mysql_up >/dev/null 2>&1; then
    install -d -o mysql -g mysql -m 755 /run/mysqld
    if [ ! -d /var/lib/mysql/mysql ]; then
        log "initialising MariaDB data directory"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/tmp/slurm_up_mariadb_install.log 2>&1 \
            || { cat /tmp/slurm_up_mariadb_install.log >&2; die "mariadb-install-db failed"; }
    fi
    log "starting mariadbd"
    touch "$LOG_DIR/mariadb.err"
    chown mysql:mysql "$LOG_DIR/mariadb.err"
    # Settings Slurm's accounting guide recommends (lock wait timeout, log file size).
    setsid nohup mariadbd --user=mysql --skip-networking \
        --pid-file=/run/mysqld/mysqld.pid --socket=/run/mysqld/mysqld.sock \
        --log-error="$LOG_DIR/mariadb.err" \
        --innodb-lock-wait-timeout=900 --innodb-buffer-pool-size=1024M \
        </dev/null >/dev/null 2>&1 &
    wait_for "mariadbd to answer ping" 60 mysql_up
fi
mariadb --protocol=socket -uroot <<SQL || die "could not create the slurm database/user"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

# ---------------------------------------------------------------- topology
if [ "$NODES" -eq 1 ]; then
    NODE_NAMES=("$HOST")
    CTLD_ADDR=127.0.0.1
    NODE_LINES="NodeName=$HOST NodeAddr=127.0.0.1 NodeHostname=$HOST"
else
    NODE_NAMES=()
    NODE_LINES=""
    for i in $(seq 1 "$NODES"); do
        NODE_NAMES+=("node$i")
        NODE_LINES+="NodeName=node$i NodeAddr=$NET_PREFIX.$i NodeHostname=node$i"$'\n'
    done
    CTLD_ADDR=$NET_PREFIX.254
fi
REAL_MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n 1)
[ -n "$REAL_MEM" ] || REAL_MEM=1024
NODE_SPEC="CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$REAL_MEM State=UNKNOWN"
NODE_LINES=$(printf '%s\n' "$NODE_LINES" | sed '/^$/d' | sed "s/\$/ $NODE_SPEC/")
NODE_LIST=$(IFS=,; echo "${NODE_NAMES[*]}")

# ---------------------------------------------------------------- config files
NEW_CONF=$(mktemp)
cat >"$NEW_CONF" <<EOF
# Generated by tests/cluster/slurm_up.sh -- local CI cluster (SLURM_NODES=$NODES). Do not edit.
ClusterName=$CLUSTER
SlurmctldHost=$HOST($CTLD_ADDR)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire (default 120 s) is also how long a requeued job waits before it may start again
# (its EligibleTime is set to requeue time + cred_expire + 1): keep requeues fast.
AuthInfo=cred_expire=$CRED_EXPIRE
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
LaunchParameters=send_gids
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ReturnToService=2
# The declared CPUs/memory override what slurmd detects (oversubscription on purpose).
SlurmdParameters=config_overrides
# Scheduling
SchedulerType=sched/backfill
# main scheduler and backfill every 2 s (defaults 60 s / 30 s): an eligible requeued job starts quickly
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
PriorityType=priority/basic
# Job lifecycle: fast kills, requeue allowed, finished jobs kept 5 min in slurmctld
KillWait=5
MinJobAge=300
JobRequeue=1
InactiveLimit=0
Waittime=0
MessageTimeout=20
SlurmctldTimeout=60
SlurmdTimeout=60
UnkillableStepTimeout=60
# Accounting (slurmdbd + MariaDB): sacct works, submitit reads real states
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
# Nodes and partition
$NODE_LINES
PartitionName=$PARTITION Nodes=$NODE_LIST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
CONF_CHANGED=1
if [ -f "$CONF_DIR/slurm.conf" ] && cmp -s "$NEW_CONF" "$CONF_DIR/slurm.conf"; then
    CONF_CHANGED=0
fi
install -m 644 "$NEW_CONF" "$CONF_DIR/slurm.conf"
rm -f "$NEW_CONF"

NEW_DBD=$(mktemp)
cat >"$NEW_DBD" <<EOF
# Generated by tests/cluster/slurm_up.sh. Do not edit.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$LOG_DIR/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
DBD_CHANGED=1
if [ -f "$CONF_DIR/slurmdbd.conf" ] && cmp -s "$NEW_DBD" "$CONF_DIR/slurmdbd.conf"; then
    DBD_CHANGED=0
fi
install -m 600 "$NEW_DBD" "$CONF_DIR/slurmdbd.conf"
rm -f "$NEW_DBD"

# ---------------------------------------------------------------- slurmdbd
if [ "$DBD_CHANGED" = 1 ]; then
    stop_pidfile /run/slurm/slurmdbd.pid slurmdbd
fi
if ! pid_alive /run/slurm/slurmdbd.pid slurmdbd; then
    log "starting slurmdbd"
    slurmdbd || die "slurmdbd failed to start"
fi
# The first start creates the tables: give it time.
WAIT_PIDFILE=/run/slurm/slurmdbd.pid WAIT_NAME=slurmdbd \
    wait_for "slurmdbd to answer sacctmgr" 90 timeout 10 sacctmgr -n -P show cluster

if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
    log "registering cluster $CLUSTER"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster failed"
fi
if ! sacctmgr -n -P show account format=account | grep -qx "$ACCOUNT"; then
    log "registering account $ACCOUNT"
    sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="CI jobs" Organization=ci >/dev/null \
        || die "sacctmgr add account failed"
fi
CI_USERS="root ${SUDO_USER:-} ${SLURM_CI_USERS:-}"
for u in $CI_USERS; do
    id "$u" >/dev/null 2>&1 || continue
    if ! sacctmgr -n -P show assoc where user="$u" account="$ACCOUNT" format=user | grep -qx "$u"; then
        sacctmgr -i add user "$u" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" Cluster="$CLUSTER" >/dev/null \
            || die "sacctmgr add user $u failed"
    fi
done

# ---------------------------------------------------------------- network namespaces (multi-node)
ns_setup() {
    sysctl -qw net.ipv4.ip_forward=0 >/dev/null 2>&1 || true
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge || die "cannot create bridge $BRIDGE (needs CAP_NET_ADMIN)"
    fi
    ip addr replace "$NET_PREFIX.254/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    local i ns veth
    for i in $(seq 1 "$NODES"); do
        ns=slurm-node$i
        veth=vslurm$i
        ip netns list | grep -qw "^$ns" || ip netns add "$ns" || die "ip netns add $ns failed"
        if ! ip link show "$veth" >/dev/null 2>&1; then
            ip netns exec "$ns" ip link del eth0 >/dev/null 2>&1 || true
            ip link add "$veth" type veth peer name eth0 netns "$ns" || die "veth for $ns failed"
        fi
        ip link set "$veth" master "$BRIDGE"
        ip link set "$veth" up
        ip netns exec "$ns" ip link set lo up
        ip netns exec "$ns" ip addr replace "$NET_PREFIX.$i/24" dev eth0
        ip netns exec "$ns" ip link set eth0 up
        # No default route on purpose: only the node subnet is reachable. With a route to the
        # host's DNS server (unreachable from here, no NAT) every reverse lookup done by
        # torch's TCPStore waits for the resolver timeout (10 s per init_process_group).
        ip netns exec "$ns" ip route del default >/dev/null 2>&1 || true
    done
    # Names of the nodes resolve everywhere through the shared /etc/hosts.
    local tmp
    tmp=$(mktemp)
    grep -v "$HOSTS_TAG" /etc/hosts >"$tmp" || true
    for i in $(seq 1 "$NODES"); do
        echo "$NET_PREFIX.$i node$i $HOSTS_TAG" >>"$tmp"
    done
    cat "$tmp" >/etc/hosts   # keep the inode (bind-mounted /etc/hosts in containers)
    rm -f "$tmp"
}
if [ "$NODES" -gt 1 ]; then
    ns_setup
elif grep -q "$HOSTS_TAG" /etc/hosts 2>/dev/null; then
    tmp=$(mktemp)
    grep -v "$HOSTS_TAG" /etc/hosts >"$tmp" || true
    cat "$tmp" >/etc/hosts
    rm -f "$tmp"
fi

# ---------------------------------------------------------------- slurmctld + slurmd
stop_all_slurmd() {
    local f
    for f in /run/slurm/slurmd-*.pid; do
        [ -e "$f" ] && stop_pidfile "$f" slurmd
    done
    return 0
}
nodes_running=1
for n in "${NODE_NAMES[@]}"; do
    pid_alive "/run/slurm/slurmd-$n.pid" slurmd || nodes_running=0
done
if [ "$CONF_CHANGED" = 1 ] || ! pid_alive /run/slurm/slurmctld.pid slurmctld || [ "$nodes_running" = 0 ]; then
    [ "$CONF_CHANGED" = 1 ] && log "slurm.conf changed: (re)starting slurmctld and slurmd"
    stop_all_slurmd
    stop_pidfile /run/slurm/slurmctld.pid slurmctld
    log "starting slurmctld"
    slurmctld || die "slurmctld failed to start"
    WAIT_PIDFILE=/run/slurm/slurmctld.pid WAIT_NAME=slurmctld \
        wait_for "slurmctld to answer" 60 timeout 10 scontrol ping
    for i in $(seq 1 "${#NODE_NAMES[@]}"); do
        n=${NODE_NAMES[$((i - 1))]}
        log "starting slurmd $n"
        install -d -m 755 "/var/spool/slurmd/$n"
        if [ "$NODES" -eq 1 ]; then
            slurmd -N "$n" || die "slurmd $n failed to start"
        else
            # own network namespace (own IP) and own UTS namespace (hostname == node name).
            # nsenter, not `ip netns exec`: the latter remounts /sys without /sys/fs/cgroup and
            # slurmd then fails with "Unable to initialize cgroup plugin".
            nsenter --net="/run/netns/slurm-node$i" unshare --uts sh -c "hostname $n && exec slurmd -N $n" \
                || die "slurmd $n failed to start"
        fi
    done
fi

node_states_ok() {
    local states
    states=$(sinfo -h -N -p "$PARTITION" -o '%N %T' 2>/dev/null) || return 1
    [ "$(printf '%s\n' "$states" | grep -c .)" -eq "${#NODE_NAMES[@]}" ] || return 1
    # idle, mixed or allocated are all usable; anything else (down, drain, unknown...) is not
    ! printf '%s\n' "$states" | awk '{print $2}' | grep -qvE '^(idle|mixed|allocated)$'
}
end=$(($(date +%s) + UP_TIMEOUT))
resumed=0
until node_states_ok; do
    if [ "$resumed" = 0 ] && [ "$(date +%s)" -ge $((end - UP_TIMEOUT + 10)) ] \
        && sinfo -h -N -o '%T' 2>/dev/null | grep -qE 'down|drain|fail'; then
        # e.g. a node left DOWN/DRAIN in a previous run's saved slurmctld state
        log "resuming nodes: $(sinfo -h -N -o '%N %T %E' | tr '\n' ';')"
        scontrol update NodeName="$NODE_LIST" State=RESUME >/dev/null 2>&1 || true
        resumed=1
    fi
    [ "$(date +%s)" -lt "$end" ] || die "nodes not idle after ${UP_TIMEOUT}s: $(sinfo -h -N -o '%N %T %E' | tr '\n' ';')"
    sleep 1
done
wait_for "sacct to answer" 60 sacct -n -X -S now-1minutes
# The cluster must be registered with slurmdbd (ControlHost set) for accounting to be real.
wait_for "slurmctld registered with slurmdbd" 60 bash -c \
    "sacctmgr -n -P show cluster $CLUSTER format=controlhost | grep -q ."

log "cluster '$CLUSTER' up: partition $PARTITION, nodes $NODE_LIST, $CPUS CPUs/node, accounting via slurmdbd"
sinfo -N -o '%N %P %T %c %m'
echo "slurm_up: done in $(($(date +%s) - T0)) s"
