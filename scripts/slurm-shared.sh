# Sourced by slurm-local.sh and slurm-nodes.sh: what both clusters share on this machine.
# Needs $state (the cluster's state folder) and $db_pass; the caller names itself in $me.

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    shift 2
    for _ in $(seq $((limit * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "$me: $what did not come up; see $state/log" >&2
    exit 1
}

fresh_accounting() {  # fresh_accounting DATABASE: munge and MariaDB up, an empty database
    local db=$1
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge "$state/log"
    [ -s /etc/munge/munge.key ] || mungekey -c -f -k /etc/munge/munge.key
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 400 /etc/munge/munge.key
    munge -n >/dev/null 2>&1 || runuser -u munge -- /usr/sbin/munged
    wait_for 10 munge munge -n
    if ! mysqladmin ping >/dev/null 2>&1; then
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
        (mysqld_safe --skip-networking=0 --bind-address=127.0.0.1 >"$state/log/mysql.log" 2>&1 &)
        wait_for 30 mariadb mysqladmin ping
    fi
    # A cold start numbers jobs from 1 again: accounting starts afresh with it, or sacct
    # would mix this cluster's jobs with an earlier one's of the same ids.
    mysql -e "DROP DATABASE IF EXISTS $db"
    mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$db_pass';
              GRANT ALL ON $db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}
