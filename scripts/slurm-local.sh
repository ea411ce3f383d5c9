#!/usr/bin/env bash
# Bring up / tear down a real one-node Slurm cluster on localhost from the
# Debian/Ubuntu packages, for the launcher tests and CI.
#
#   eval "$(scripts/slurm-local.sh up)"   # install if needed, start, print the exports its jobs need
#   scripts/slurm-local.sh status         # daemons, sinfo, squeue (exit 1 when not healthy)
#   scripts/slurm-local.sh down           # stop what `up` started (harmless when nothing is up)
#
# Runs as root (SlurmUser=root; munged runs as the munge user). Only the export
# line goes to stdout, everything else to stderr. `up` on a healthy cluster only
# prints the export line; otherwise it starts a *fresh* cluster (no old jobs,
# job ids restart at 1).
#
# Environment:
#   SLURM_LOCAL_DIR         state dir: slurm.conf, state, spool, db, logs, pids  [/tmp/slurm-local]
#   SLURM_LOCAL_TIMEOUT     seconds to wait for the node to become idle           [60]
#   SLURM_LOCAL_ACCOUNTING  1: run slurmdbd + a private MariaDB so `sacct` works  [1]
#                           0: no accounting (fewer packages, ~2 s faster start)
#
# Why accounting: submitit reads job states *only* via `sacct`. Without slurmdbd,
# sacct fails ("Slurm accounting storage is disabled"), submitit logs "Bypassing
# sacct error" and reports every job as UNKNOWN. job.done()/result() still work
# for jobs that write their result pickle (success or Python exception), but a
# job killed before that (scancel, timeout, node failure) never counts as done.
# With SLURM_LOCAL_ACCOUNTING=0 use `scontrol show job` / `squeue -t all`
# instead (finished jobs stay there for MinJobAge seconds); finished jobs are
# also listed in $SLURM_LOCAL_DIR/log/jobcomp.txt.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
CONF=$DIR/slurm.conf
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
ACCOUNTING=${SLURM_LOCAL_ACCOUNTING:-1}
NODE=$(hostname -s)
DB_SOCK=$DIR/db/mysqld.sock

log() { echo "slurm-local: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Is process $1 alive (not a zombie) and still running program $2 (guards against pid reuse)?
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $stat == "$1 ($2) "[!ZX]* ]]
}

# Print the pid recorded in $DIR/run/<name>.pid if that process is still alive.
live_pid() {
    local f=$DIR/run/$1.pid pid
    [[ -s $f ]] || return 1
    pid=$(<"$f")
    alive "$pid" "$1" || return 1
    echo "$pid"
}

# What `up` and `status` print: the cluster's config, and the launcher settings this node can satisfy
# (no GPUs, one CPU and 2 GB per job: the launcher's defaults ask for a GPU node).
exports() {
    echo "export SLURM_CONF=$CONF METAPLASTIC_SLURM_GPUS=0 METAPLASTIC_SLURM_CPUS=1 METAPLASTIC_SLURM_MEM_GB=2"
}

node_state() { SLURM_CONF=$CONF sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1; }

healthy() {
    [[ -f $CONF ]] && live_pid slurmctld >/dev/null && live_pid slurmd >/dev/null || return 1
    if grep -q '^AccountingStorageType=accounting_storage/slurmdbd' "$CONF"; then
        live_pid slurmdbd >/dev/null && live_pid mariadbd >/dev/null || return 1
    fi
    [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]
}

# Wait up to $1 seconds for command "${@:2}" to succeed.
wait_for() {
    local t=$1 i
    shift
    for ((i = 0; i < t * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sinfo >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    if [[ $ACCOUNTING == 1 ]]; then
        command -v slurmdbd >/dev/null || missing+=(slurmdbd)
        # Only MariaDB is supported; do not fight an installed MySQL server.
        if ! command -v mariadb-install-db >/dev/null; then
            if command -v mysqld >/dev/null; then
                log "warning: a non-MariaDB mysqld is installed; running without accounting"
                ACCOUNTING=0
            else
                missing+=(mariadb-server)
            fi
        fi
    fi
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]} (apt-get, log in $DIR/log/apt.log)"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confold "${missing[@]}"; } </dev/null >"$DIR/log/apt.log" 2>&1 ||
        { tail -n 20 "$DIR/log/apt.log" >&2; die "apt-get failed"; }
}

start_munge() {
    # Reuse a working munged (e.g. one started by the package's service). Probe
    # only a live one: munge keeps retrying a stale socket for seconds.
    local pid
    for pid in $(pgrep -x munged); do
        if alive "$pid" munged && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
            return 0
        fi
    done
    [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key >&2
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    # The package creates the key but not the runtime directory (no systemd here).
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    log "starting munged"
    runuser -u munge -- munged
    cp /run/munge/munged.pid "$DIR/run/munged.pid"
    munge -n </dev/null | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"
}

# Private MariaDB (unix socket only, no TCP port) + slurmdbd.
start_accounting() {
    log "starting mariadbd and slurmdbd"
    local db_opts=(--no-defaults --user=root --datadir="$DIR/db/data"
        --innodb-buffer-pool-size=128M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900)
    # root@localhost authenticates through the unix socket: no password anywhere.
    mariadb-install-db "${db_opts[@]}" --auth-root-authentication-method=socket \
        --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 ||
        die "mariadb-install-db failed (see $DIR/log/mariadb-install.log)"
    setsid mariadbd "${db_opts[@]}" --skip-networking --socket="$DB_SOCK" \
        --pid-file="$DIR/run/mariadbd.pid" --log-error="$DIR/log/mariadb.log" </dev/null >/dev/null 2>&1 &
    wait_for 30 mariadb-admin --socket="$DB_SOCK" ping || die "mariadbd not ready (see $DIR/log/mariadb.log)"
    # slurmdbd reads slurmdbd.conf from the directory of $SLURM_CONF; it must be 0600.
    install -m 0600 /dev/null "$DIR/slurmdbd.conf"
    cat >"$DIR/slurmdbd.conf" <<EOF
DbdHost=localhost
SlurmUser=root
AuthType=auth/munge
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
EOF
    # libmariadb takes the socket path from MYSQL_UNIX_PORT.
    MYSQL_UNIX_PORT=$DB_SOCK slurmdbd || die "slurmdbd failed (see $DIR/log/slurmdbd.log)"
    wait_for 30 sacctmgr -n list cluster || die "slurmdbd not answering (see $DIR/log/slurmdbd.log)"
    sacctmgr -i add cluster local >/dev/null || die "sacctmgr add cluster failed"
}

write_conf() {
    local hw cpus mem acct
    # Hardware line from slurmd, e.g. "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105 UpTime=...".
    hw=$(slurmd -C | head -n1)
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    [[ -n $cpus && -n $mem ]] || die "cannot parse 'slurmd -C': $hw"
    if [[ $ACCOUNTING == 1 ]]; then
        acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"
    else
        acct="AccountingStorageType=accounting_storage/none"
    fi
    cat >"$CONF" <<EOF
# Generated by scripts/slurm-local.sh: one-node test cluster on localhost.
ClusterName=local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Short credential lifetime: a requeued job gets BeginTime = now + cred_expire + 1
# (default 120 s); with the 2 s scheduler pass below it runs again after ~11-13 s.
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
# No cgroups (containers, CI runners).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Jobs without --mem get a per-CPU share of the node instead of all of it.
DefMemPerCPU=$((mem / cpus))
$acct
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
SchedulerType=sched/backfill
# Main scheduling pass every 2 s (default 60 s): nothing else wakes a job whose BeginTime passed.
SchedulerParameters=sched_interval=2
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$(sed "s/^NodeName=[^ ]*/NodeName=$NODE NodeAddr=127.0.0.1/; s/ *UpTime=.*//" <<<"$hw") State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

cmd_up() {
    [[ $EUID -eq 0 ]] || die "must run as root"
    if healthy; then
        log "already up (node $NODE $(node_state))"
        exports
        return 0
    fi
    cmd_down  # clean up a half-up cluster (a daemon died)
    # Fresh cluster: drop job state, spool and accounting database of earlier runs.
    rm -rf "$DIR"/{state,spool,db,slurmdbd.conf}
    mkdir -p "$DIR"/{state,spool,db,log,run}
    install_packages
    start_munge
    write_conf
    export SLURM_CONF=$CONF
    if [[ $ACCOUNTING == 1 ]]; then start_accounting; fi
    log "starting slurmctld and slurmd (logs in $DIR/log)"
    slurmctld -c -f "$CONF" || die "slurmctld failed (see $DIR/log/slurmctld.log)"
    # slurmd passes SLURM_CONF on to slurmstepd, which lets `down` find our job steps.
    slurmd -f "$CONF" -N "$NODE" || die "slurmd failed (see $DIR/log/slurmd.log)"
    local t0=$SECONDS state=
    while ((SECONDS - t0 < TIMEOUT)); do
        if healthy; then
            log "up: node $NODE $(node_state)"
            exports
            return 0
        fi
        state=$(node_state)
        if [[ $state =~ ^(down|drain) ]]; then  # e.g. after an unclean stop
            scontrol update NodeName="$NODE" State=RESUME >&2 || true
        fi
        sleep 1
    done
    log "node state: '${state:-no answer from slurmctld}'"
    tail -n 5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    die "node $NODE not idle after $TIMEOUT s (raise SLURM_LOCAL_TIMEOUT?)"
}

# Stop the daemon recorded in $DIR/run/$1.pid: TERM, then KILL after 10 s.
stop_pid() {
    local pid i
    if pid=$(live_pid "$1"); then
        log "stopping $1 ($pid)"
        kill "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            alive "$pid" "$1" || break
            sleep 0.1
        done
        if alive "$pid" "$1"; then kill -9 "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$DIR/run/$1.pid"
}

cmd_down() {
    [[ -d $DIR/run ]] || return 0
    local pid f
    # Cancel our jobs first: their slurmstepd processes would outlive slurmd.
    if live_pid slurmctld >/dev/null; then
        SLURM_CONF=$CONF scancel --full --partition=debug 2>/dev/null || true
    fi
    stop_pid slurmd
    stop_pid slurmctld
    # Kill leftover job steps of *this* cluster (slurmstepd inherited our SLURM_CONF).
    for f in /proc/[0-9]*/comm; do
        [[ $(cat "$f" 2>/dev/null) == slurmstepd ]] || continue
        pid=${f#/proc/} && pid=${pid%/comm}
        if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$CONF"; then
            log "killing leftover slurmstepd $pid"
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    stop_pid slurmdbd
    stop_pid mariadbd
    stop_pid munged
}

cmd_status() {
    local name pid
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        if pid=$(live_pid "$name"); then log "$name: running ($pid)"; else log "$name: not running (or not started by this script)"; fi
    done
    if ! healthy; then
        log "cluster not up"
        return 1
    fi
    export SLURM_CONF=$CONF
    sinfo >&2
    squeue >&2
    exports
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down && log "down" ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2 && exit 2 ;;
esac
