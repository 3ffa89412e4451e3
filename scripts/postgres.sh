#!/usr/bin/env bash
# A throw-away PostgreSQL server on loopback, for the sweep tests against a real RDB storage.
#   url=$(bash scripts/postgres.sh start DIR)   # installs PostgreSQL (Debian) if missing, prints the URL
#   bash scripts/postgres.sh stop DIR
# Exits non-zero, saying why, where no server can be installed or started.
set -euo pipefail
action=${1:?usage: postgres.sh start|stop DIR}
dir=${2:?usage: postgres.sh start|stop DIR}
port=${ECON_POSTGRES_PORT:-54329}

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

as_owner() {  # PostgreSQL refuses to run as root: use its own system user then
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$action" in
start)
  bin=$(find_bin)
  if [ -z "$bin" ]; then
    echo "postgres.sh: installing PostgreSQL from Debian's packages" >&2
    if [ "$(id -u)" = 0 ]; then apt_get=(apt-get); else apt_get=(sudo -n apt-get); fi
    { "${apt_get[@]}" update -q && DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -q \
        --no-install-recommends postgresql; } >&2 \
      || { echo "postgres.sh: could not install PostgreSQL" >&2; exit 1; }
    bin=$(find_bin)
  fi
  mkdir -p "$dir/data"
  [ "$(id -u)" = 0 ] && chown -R postgres "$dir"
  as_owner "$bin/initdb" -D "$dir/data" -A trust -U econ >/dev/null
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null \
    || { cat "$dir/server.log" >&2; exit 1; }
  echo "postgresql://econ@127.0.0.1:$port/postgres"
  ;;
stop)
  bin=$(find_bin)
  [ -n "$bin" ] && [ -f "$dir/data/postmaster.pid" ] && as_owner "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null
  rm -rf "$dir"
  ;;
*) echo "usage: postgres.sh start|stop DIR" >&2; exit 2 ;;
esac
