# Sourced by the Postgres demo and benchmark: a throwaway PostgreSQL on 127.0.0.1 with
# wal_level=logical in a directory of the caller's. initdb and postgres refuse to run as root:
# as root they run as the `postgres` user (created by Debian's postgresql package).

# The newest installed PostgreSQL's bin directory; installs Debian's package when missing and
# running as root.
pg_bin_dir() {
  local bin
  bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
  if [ -z "$bin" ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "error: PostgreSQL is not installed (apt-get install postgresql)" >&2
      return 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
  fi
  echo "$bin"
}

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# pg_start BIN DIR PORT [extra postgres options]: initdb in DIR (trust auth, superuser
# `postgres`) and start the server, waiting until it accepts connections.
pg_start() {
  local bin="$1" dir="$2" port="$3"; shift 3
  mkdir -p "$dir"
  chmod 755 "$(dirname "$dir")"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  as_pg "$bin/initdb" -D "$dir" -U postgres --auth=trust >/dev/null
  as_pg "$bin/pg_ctl" -D "$dir" -l "$dir/log" -w -o "-p $port -c listen_addresses=127.0.0.1 -k $dir -c wal_level=logical $*" start >/dev/null
}

# pg_stop BIN DIR: stops the server at once (nothing to keep).
pg_stop() { as_pg "$1/pg_ctl" -D "$2" -m immediate stop >/dev/null 2>&1 || true; }
