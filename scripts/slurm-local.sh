#!/usr/bin/env bash
# A real single-node SLURM on this machine, for tests and demos: scripts/slurm-local.sh up|down|status
#
# Debian's slurmctld, slurmd, slurmdbd, munge and mariadb-server, started as plain daemons
# (no systemd), as root. Accounting through slurmdbd, so that sacct works. Two fake GPU
# types, v100 and a100 (gres.conf with AutoDetect=off and /dev/null, /dev/zero as devices),
# in two partitions: gpu (default) and debug.
set -euo pipefail

state=${SLURM_LOCAL_DIR:-/var/lib/resnest-bench-slurm}
conf=/etc/slurm
host=$(hostname -s)
cpus=$(nproc)
mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024))
db_pass=slurm-local

need_root() { [ "$(id -u)" = 0 ] || { echo "slurm-local: run as root" >&2; exit 1; }; }

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

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    shift 2
    for _ in $(seq $((limit * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "slurm-local: $what did not come up; see $state/log" >&2
    exit 1
}

up() {
    need_root
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
    # munge
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    [ -s /etc/munge/munge.key ] || mungekey -c -f -k /etc/munge/munge.key
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 400 /etc/munge/munge.key
    pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
    wait_for 10 munge munge -n
    # MariaDB for accounting
    if ! mysqladmin ping >/dev/null 2>&1; then
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
        (mysqld_safe --skip-networking=0 --bind-address=127.0.0.1 >"$state/log/mysql.log" 2>&1 &)
        wait_for 30 mariadb mysqladmin ping
    fi
    # A cold start numbers jobs from 1 again: accounting starts afresh with it, or sacct
    # would mix this cluster's jobs with an earlier one's of the same ids.
    mysql -e "DROP DATABASE IF EXISTS slurm_acct_db"
    mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$db_pass';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    # SLURM
    pgrep -x slurmdbd >/dev/null || slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -i -Q add cluster local >/dev/null 2>&1 || true
    pgrep -x slurmctld >/dev/null || slurmctld
    pgrep -x slurmd >/dev/null || slurmd
    wait_for 30 "the node" sh -c "sinfo -h -o %t | grep -qE '^(idle|mix|alloc)'"
    echo "slurm-local: up ($host: $cpus CPUs, gres gpu:v100:1,gpu:a100:1; partitions gpu, debug)"
}

down() {
    need_root
    for daemon in slurmd slurmctld slurmdbd; do
        pkill -x "$daemon" 2>/dev/null || true
    done
    mysqladmin shutdown >/dev/null 2>&1 || true
    pkill -x munged 2>/dev/null || true
    for _ in $(seq 50); do
        running=0
        for daemon in slurmd slurmctld slurmdbd mariadbd munged; do
            pgrep -x "$daemon" >/dev/null && running=1
        done
        [ "$running" = 0 ] && break
        sleep 0.2
    done
    rm -rf "$state"
    echo "slurm-local: down"
}

case "${1:-}" in
up) up ;;
down) down ;;
status)
    sinfo && sacct -n -X -S now-1hour | tail -n 5
    ;;
*)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
