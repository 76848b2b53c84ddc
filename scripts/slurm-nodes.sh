#!/usr/bin/env bash
# A real multi-node SLURM on this one machine:
#   scripts/slurm-nodes.sh up [N]|down|status|kill-node I|start-node I
# (`up` also as scripts/slurm-local.sh up --nodes N). kill-node crashes node I (its whole
# process namespace dies at once); start-node boots it again and returns it to service.
#
# Each node is a host of its own: a network namespace on a private bridge (10.231.7.0/24,
# which exists only between the namespaces this script makes), with its own hostname (UTS),
# mounts (its own /etc/hosts, its own /tmp/ray) and process namespace, under a small holder
# process that reaps its children. slurmctld and slurmdbd run in this machine's namespace
# on the bridge address; one slurmd runs in each node. The cluster has its own configuration
# (/etc/slurm-nodes, SLURM_CONF=/etc/slurm-nodes/slurm.conf), its own ports (6827-6829) and
# its own accounting database, so it runs beside the single-node cluster of slurm-local.sh.
# Each node has the fake GPU types v100 and a100, as the single-node cluster does.
set -euo pipefail

state=${SLURM_NODES_DIR:-/var/lib/resnest-bench-slurm-nodes}
conf=/etc/slurm-nodes
export SLURM_CONF=$conf/slurm.conf
bridge=rbslurm0
net=10.231.7
host=$(hostname -s)
cpus=$(nproc)
mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024))
db_pass=slurm-local
db=slurm_acct_db_nodes

me=slurm-nodes
# shellcheck source=scripts/slurm-shared.sh
. "$(dirname "$0")/slurm-shared.sh"

need_root() { [ "$(id -u)" = 0 ] || { echo "slurm-nodes: run as root" >&2; exit 1; }; }

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_config() {  # write_config N
    local n=$1 i
    mkdir -p "$conf" "$state"/{ctld,log,run}
    {
        echo "ClusterName=nodes"
        echo "SlurmctldHost=$host($net.1)"
        echo "SlurmctldPort=6827"
        echo "SlurmdPort=6828"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "AuthType=auth/munge"
        echo "AuthInfo=cred_expire=5"
        echo "CredType=cred/munge"
        echo "StateSaveLocation=$state/ctld"
        echo "SlurmdSpoolDir=$state/spool-%n"
        echo "SlurmctldPidFile=$state/run/slurmctld.pid"
        echo "SlurmdPidFile=$state/run/slurmd-%n.pid"
        echo "SlurmctldLogFile=$state/log/slurmctld.log"
        echo "SlurmdLogFile=$state/log/slurmd-%n.log"
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        echo "SwitchType=switch/none"
        echo "MpiDefault=none"
        echo "ReturnToService=2"
        echo "SchedulerType=sched/backfill"
        echo "SchedulerParameters=bf_interval=1,sched_interval=2"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_CPU"
        echo "GresTypes=gpu"
        echo "AccountingStorageType=accounting_storage/slurmdbd"
        echo "AccountingStorageHost=$net.1"
        echo "AccountingStoragePort=6829"
        echo "AccountingStorageTRES=gres/gpu,gres/gpu:v100,gres/gpu:a100"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "JobCompType=jobcomp/none"
        echo "MinJobAge=5"
        echo "KillWait=5"
        echo "SlurmdTimeout=10"
        echo "InactiveLimit=0"
        for i in $(seq "$n"); do
            echo "NodeName=node$i NodeAddr=$net.$((i + 1)) CPUs=$cpus RealMemory=$mem Gres=gpu:v100:1,gpu:a100:1 State=UNKNOWN"
        done
        echo "PartitionName=gpu Nodes=node[1-$n] Default=YES MaxTime=INFINITE State=UP"
        echo "PartitionName=debug Nodes=node[1-$n] MaxTime=INFINITE State=UP"
    } > "$conf/slurm.conf"
    {
        echo "AutoDetect=off"
        echo "NodeName=node[1-$n] Name=gpu Type=v100 File=/dev/null"
        echo "NodeName=node[1-$n] Name=gpu Type=a100 File=/dev/zero"
    } > "$conf/gres.conf"
    cat > "$conf/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=$host
DbdPort=6829
SlurmUser=root
PidFile=$state/run/slurmdbd.pid
LogFile=$state/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=$db_pass
StorageLoc=$db
EOF
    chmod 600 "$conf/slurmdbd.conf"
    # Every node resolves every other, and the controller, the same way.
    {
        echo "127.0.0.1 localhost"
        echo "$net.1 $host"
        for i in $(seq "$n"); do echo "$net.$((i + 1)) node$i"; done
    } > "$state/hosts"
}

remove_network() {  # the bridge, the nodes' namespaces and their veth pairs
    local i
    for i in $(ip netns list 2>/dev/null | awk '/^rbnode[0-9]+/ {print $1}'); do
        ip netns delete "$i" 2>/dev/null || true
    done
    # A namespace that a process still holds outlives its name, and keeps its veth pair: the
    # host's end (rbnodeN-br) would make `ip link add` fail with "File exists". Deleting
    # that end deletes the pair.
    for i in $(ip -o link show 2>/dev/null | awk -F': ' '$2 ~ /^rbnode[0-9]+-br@/ {sub(/@.*/, "", $2); print $2}'); do
        ip link delete "$i" 2>/dev/null || true
    done
    ip link delete "$bridge" 2>/dev/null || true
}

start_network() {  # start_network N: the bridge, and a namespace on a veth pair per node
    local n=$1 i
    # A network left by a cluster whose daemons are gone (a killed run, a restored machine)
    # would make `ip link add` fail with "File exists": no live cluster owns it, so it goes.
    if ip link show "$bridge" >/dev/null 2>&1 || ip netns list 2>/dev/null | grep -q '^rbnode[0-9]' \
        || ip -o link show 2>/dev/null | grep -q ': rbnode[0-9]*-br@'; then
        echo "slurm-nodes: removing a network no running cluster owns ($bridge, rbnode namespaces and veth pairs)" >&2
        remove_network
    fi
    ip link add "$bridge" type bridge
    ip addr add "$net.1/24" dev "$bridge"
    ip link set "$bridge" up
    for i in $(seq "$n"); do
        ip netns add "rbnode$i"
        ip link add "rbnode$i-br" type veth peer name eth0 netns "rbnode$i"
        ip link set "rbnode$i-br" master "$bridge" up
        ip -n "rbnode$i" addr add "$net.$((i + 1))/24" dev eth0
        ip -n "rbnode$i" link set eth0 up
        ip -n "rbnode$i" link set lo up
    done
}

# The holder of a node: PID 1 of the node's process namespace, reaping whatever ends there.
REAPER='import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.5)'

start_node() {  # start_node I: the node's holder, then its slurmd inside it
    local i=$1 node=node$1 launcher holder
    mkdir -p "$state/spool-$node" "$state/tmp-$node"
    nsenter --net="/var/run/netns/rbnode$i" unshare --uts --mount --pid --fork --mount-proc \
        sh -c "hostname $node; mount --bind $state/hosts /etc/hosts; mkdir -p /tmp/ray;
               mount -t tmpfs tmpfs /tmp/ray; exec python3 -c '$REAPER'" \
        >"$state/log/holder-$node.log" 2>&1 &
    launcher=$!
    holder=""
    for _ in $(seq 50); do
        holder=$(pgrep -P "$launcher" | head -n 1 || true)
        [ -n "$holder" ] && [ "$(nsenter -t "$holder" -u hostname 2>/dev/null)" = "$node" ] && break
        sleep 0.1
    done
    [ -n "$holder" ] || { echo "slurm-nodes: $node's holder did not start" >&2; exit 1; }
    echo "$holder" > "$state/run/holder-$node.pid"
    nsenter -t "$holder" -n -u -m -p env SLURM_CONF="$SLURM_CONF" slurmd -N "$node"
}

up() {  # up N
    local n=${1:-2} i
    need_root
    [ "$n" -ge 2 ] 2>/dev/null || { echo "slurm-nodes: --nodes expects 2 or more" >&2; exit 2; }
    if alive "$state/run/slurmctld.pid"; then
        if sinfo -h -N -o %n | grep -qx "node$n" && ! sinfo -h -N -o %n | grep -qx "node$((n + 1))"; then
            echo "slurm-nodes: already up ($n nodes)"
            return 0
        fi
        down >/dev/null
    fi
    rm -rf "$state"
    write_config "$n"
    fresh_accounting "$db"
    start_network "$n"
    alive "$state/run/slurmdbd.pid" || slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -i -Q add cluster nodes >/dev/null 2>&1 || true
    slurmctld
    for i in $(seq "$n"); do start_node "$i"; done
    wait_for 30 "the nodes" sh -c "[ \$(sinfo -h -N -p gpu -o %t | grep -cE '^(idle|mix|alloc)') = $n ]"
    echo "slurm-nodes: up ($n nodes node1-node$n on $net.0/24; SLURM_CONF=$SLURM_CONF)"
}

down() {
    local pidfile
    need_root
    for pidfile in "$state"/run/holder-*.pid; do  # a node's whole process namespace
        [ -s "$pidfile" ] && kill -KILL "$(cat "$pidfile")" 2>/dev/null || true
    done
    for pidfile in "$state/run/slurmctld.pid" "$state/run/slurmdbd.pid"; do
        alive "$pidfile" && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    for _ in $(seq 50); do
        alive "$state/run/slurmctld.pid" || alive "$state/run/slurmdbd.pid" || break
        sleep 0.2
    done
    remove_network
    mysql -e "DROP DATABASE IF EXISTS $db" 2>/dev/null || true
    rm -rf "$state" "$conf"
    echo "slurm-nodes: down"
}

kill_node() {  # kill_node I: the node crashes (everything on it dies at once)
    need_root
    local pidfile="$state/run/holder-node$1.pid"
    [ -s "$pidfile" ] || { echo "slurm-nodes: no node$1 running" >&2; exit 2; }
    kill -KILL "$(cat "$pidfile")"
    rm -f "$pidfile"
    echo "slurm-nodes: node$1 killed"
}

start_again() {  # start_again I: a killed node boots again and returns to service
    need_root
    [ -d "$state/run" ] || { echo "slurm-nodes: not up: scripts/slurm-local.sh up --nodes N" >&2; exit 2; }
    if alive "$state/run/holder-node$1.pid"; then
        echo "slurm-nodes: node$1 is running" >&2
        exit 2
    fi
    grep -q "^NodeName=node$1 " "$conf/slurm.conf" || { echo "slurm-nodes: no node$1 in $conf/slurm.conf" >&2; exit 2; }
    start_node "$1"
    wait_for 60 "node$1" sh -c "sinfo -h -N -p gpu -n node$1 -o %t | grep -qE '^(idle|mix|alloc)$'"
    echo "slurm-nodes: node$1 back"
}

case "${1:-}" in
up) up "${2:-2}" ;;
down) down ;;
kill-node | start-node)
    [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "slurm-nodes: $1 needs a node number, e.g. $1 2" >&2; exit 2; }
    if [ "$1" = kill-node ]; then kill_node "$2"; else start_again "$2"; fi
    ;;
status)
    SLURM_CONF=$SLURM_CONF sinfo -N && sacct -n -X -S now-1hour | tail -n 5
    ;;
*)
    echo "usage: $0 up [N]|down|status|kill-node I|start-node I" >&2
    exit 2
    ;;
esac
