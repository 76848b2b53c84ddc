#!/usr/bin/env bash
# A throwaway PostgreSQL on 127.0.0.1 for the tests: scripts/pg-local.sh up|down|url
# Debian's postgresql package; the cluster lives under $PG_LOCAL_DIR (default /tmp).
set -euo pipefail
dir=${PG_LOCAL_DIR:-/tmp/resnest-bench-pg}
port=${PG_LOCAL_PORT:-55432}
password=${PG_LOCAL_PASSWORD:-bench-local}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
url="postgresql+psycopg://bench@127.0.0.1:$port/resnest"

as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case "${1:-}" in
up)
    [ -n "$bin" ] || { echo "pg-local: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
    if [ -f "$dir/data/postmaster.pid" ] && as_postgres "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        echo "$url"; exit 0
    fi
    rm -rf "$dir" && mkdir -p "$dir" && chown postgres "$dir" 2>/dev/null || true
    as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 >/dev/null
    as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=200" start >/dev/null
    as_postgres "$bin/psql" -h "$dir" -p "$port" -U postgres -q -c \
        "CREATE USER bench PASSWORD '$password'" -c "CREATE DATABASE resnest OWNER bench"
    echo "$url"
    ;;
down)
    [ -d "$dir/data" ] && as_postgres "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null || true
    rm -rf "$dir"
    ;;
url)
    echo "$url"
    ;;
*)
    echo "usage: $0 up|down|url   (the password is \$PG_LOCAL_PASSWORD, default bench-local)" >&2
    exit 2
    ;;
esac
