#!/usr/bin/env bash
# A real single-node SLURM on this machine, for tests and demos:
#   scripts/slurm-local.sh up [--nodes N]|down|status
# With --nodes N (2 or more), a multi-node cluster on network namespaces instead, beside this
# one (scripts/slurm-nodes.sh). `down` stops both.
#
# Debian's slurmctld, slurmd, slurmdbd, munge and mariadb-server, started as plain daemons
# (no systemd), as root. Accounting through slurmdbd, so that sacct works. Two fake GPU
# types, v100 and a100 (gres.conf with AutoDetect=off and /dev/null, /dev/zero as devices),
# in two partitions: gpu (default) and debug. Associations, limits and QOS are enforced, as
# at a site (root's association comes with the cluster; tests add QOS limits of their own).
set -euo pipefail

state=${SLURM_LOCAL_DIR:-/var/lib/resnest-bench-slurm}
conf=/etc/slurm
host=$(hostname -s)
cpus=$(nproc)
mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024))
db_pass=slurm-local

me=slurm-local
# shellcheck source=scripts/slurm-shared.sh
. "$(dirname "$0")/slurm-shared.sh"

need_root() { [ "$(id -u)" = 0 ] || { echo "slurm-local: run as root" >&2; exit 1; }; }

# This cluster's daemons, found by their pid files: a multi-node cluster's daemons of the
# same names may run beside them.
alive() { [ -s "$state/run/$1.pid" ] && kill -0 "$(cat "$state/run/$1.pid")" 2>/dev/null; }

write_config() {
    mkdir -p "$conf" "$state"/{ctld,d,log,mysql,run}
    cat > "$conf/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
CredType=cred/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu,gres/gpu:v100,gres/gpu:a100
AccountingStorageEnforce=associations,limits,qos
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=5
KillWait=30
InactiveLimit=0
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:v100:1,gpu:a100:1 State=UNKNOWN
PartitionName=gpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=debug Nodes=$host MaxTime=INFINITE State=UP
EOF
    cat > "$conf/gres.conf" <<EOF
AutoDetect=off
NodeName=$host Name=gpu Type=v100 File=/dev/null
NodeName=$host Name=gpu Type=a100 File=/dev/zero
EOF
    cat > "$conf/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$state/run/slurmdbd.pid
LogFile=$state/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=$db_pass
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$conf/slurmdbd.conf"
}

# SLURM daemons on this machine that neither this script nor slurm-nodes.sh started: their
# pids are in neither cluster's pid files, and their SLURM_CONF is not the nodes' one.
foreign_daemons() {
    local ours=" " f pid
    for f in "$state"/run/*.pid; do
        [ -s "$f" ] && ours="$ours$(cat "$f") "
    done
    for pid in $(pgrep -x slurmctld; pgrep -x slurmd; pgrep -x slurmdbd); do
        case "$ours" in *" $pid "*) continue ;; esac
        # gone since pgrep, or a zombie (a daemon shut down, not yet reaped): not running
        case "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" in "" | Z) continue ;; esac
        tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" \
            | grep -qx 'SLURM_CONF=/etc/slurm-nodes/slurm.conf' && continue
        echo "$(cat "/proc/$pid/comm" 2>/dev/null) (pid $pid)"
    done
}

refuse_foreign() {
    local others
    others=$(foreign_daemons | paste -sd, -)
    if [ -n "$others" ]; then
        echo "slurm-local: a SLURM this script did not start is running here ($others):" \
            "left alone, and so is $conf" >&2
        exit 1
    fi
    if [ -f "$conf/slurm.conf" ] && ! grep -qx "StateSaveLocation=$state/ctld" "$conf/slurm.conf"; then
        echo "slurm-local: $conf/slurm.conf was not written by this script; move it away to use it" >&2
        exit 1
    fi
}

up() {
    need_root
    refuse_foreign
    if sinfo -h >/dev/null 2>&1 && sacct -n -X >/dev/null 2>&1; then
        # Running: make sure it runs this script's configuration.
        before=$(cat "$conf/slurm.conf" "$conf/gres.conf" 2>/dev/null | sha256sum)
        write_config
        if [ "$before" != "$(cat "$conf/slurm.conf" "$conf/gres.conf" | sha256sum)" ]; then
            scontrol reconfigure
            echo "slurm-local: already up; configuration updated"
        else
            echo "slurm-local: already up"
        fi
        return 0
    fi
    write_config
    fresh_accounting slurm_acct_db
    # SLURM
    alive slurmdbd || slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -i -Q add cluster local >/dev/null 2>&1 || true
    alive slurmctld || slurmctld
    alive slurmd || slurmd
    wait_for 30 "the node" sh -c "sinfo -h -o %t | grep -qE '^(idle|mix|alloc)'"
    echo "slurm-local: up ($host: $cpus CPUs, gres gpu:v100:1,gpu:a100:1; partitions gpu, debug)"
}

down() {
    need_root
    "$(dirname "$0")/slurm-nodes.sh" down >/dev/null
    for daemon in slurmd slurmctld slurmdbd; do
        alive "$daemon" && kill "$(cat "$state/run/$daemon.pid")" 2>/dev/null || true
    done
    mysqladmin shutdown >/dev/null 2>&1 || true
    pkill -x munged 2>/dev/null || true
    for _ in $(seq 50); do
        running=0
        for daemon in slurmd slurmctld slurmdbd; do
            alive "$daemon" && running=1
        done
        pgrep -x mariadbd >/dev/null && running=1
        pgrep -x munged >/dev/null && running=1
        [ "$running" = 0 ] && break
        sleep 0.2
    done
    rm -rf "$state"
    echo "slurm-local: down"
}

case "${1:-}" in
up)
    if [ "${2:-}" = "--nodes" ] && [ "${3:-1}" != 1 ]; then
        exec "$(dirname "$0")/slurm-nodes.sh" up "${3:-}"
    fi
    up
    ;;
down) down ;;
status)
    sinfo && sacct -n -X -S now-1hour | tail -n 5
    ;;
-h | --help | help)
    cat <<EOF
usage: $0 up [--nodes N]|down|status

A real single-node SLURM on this machine for the tests and demos, as root, without systemd.
What it does to the machine:
  up      writes /etc/slurm (slurm.conf, gres.conf, slurmdbd.conf), keeps its
          state and logs in $state, starts munged and MariaDB if they are not running,
          DROPS and recreates the MariaDB database slurm_acct_db (SLURM's accounting: a cold
          start numbers jobs from 1 again), and starts slurmdbd, slurmctld and slurmd.
          Refuses, changing nothing, where a SLURM it did not start is running or
          /etc/slurm/slurm.conf is another one's.
  up --nodes N
          a cluster of N nodes in network namespaces beside it (scripts/slurm-nodes.sh:
          /etc/slurm-nodes, its own ports and database).
  down    stops both clusters' SLURM daemons, MariaDB and munged (whoever started those two),
          and removes $state; /etc/slurm stays.
  status  sinfo and the last jobs.
EOF
    ;;
*)
    echo "usage: $0 up [--nodes N]|down|status|--help" >&2
    exit 2
    ;;
esac
