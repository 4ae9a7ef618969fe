# A throwaway PostgreSQL server for the tests that need a real database (sourced by .ci/run).
#
# pg_start: initdb into a temp dir (trust auth, loopback only, a free port) as an unprivileged user, start the
# server and export MEDJP_TEST_POSTGRES_URL. pg_stop: stop that server by its process id and delete the dir.
# Debian's `postgresql` package provides the binaries; it is installed with apt-get when absent and we are root.
# Without binaries nothing is exported, and the PostgreSQL tests skip with that reason.

PG_DIR=""
PG_PID=""

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$dir" ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    # Install only the server: the host must not start Debian's own cluster as a service.
    # A new machine's package lists may be empty or stale: refresh them first.
    apt-get update -q >&2 || true
    apt-get install -y -q postgresql >&2 || true
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  fi
  echo "$dir"
}

pg_as_owner() {
  # initdb and postgres refuse to run as root.
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u "$PG_USER" -- "$@"
  else
    "$@"
  fi
}

pg_start() {
  local bin port
  bin=$(pg_bin)
  if [ -z "$bin" ]; then
    echo "postgresql binaries not found: the PostgreSQL tests will skip" >&2
    return 0
  fi
  PG_USER=$(id -un)
  if [ "$(id -u)" -eq 0 ]; then
    PG_USER=$(id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody)
  fi
  PG_DIR=$(mktemp -d /tmp/medjp-pg.XXXXXX)
  chown "$PG_USER" "$PG_DIR"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  pg_as_owner "$bin/initdb" -D "$PG_DIR/data" -U medjp --auth=trust -E UTF8 --no-locale >/dev/null
  pg_as_owner "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $PG_DIR -c max_connections=200 -c fsync=off" start >/dev/null
  PG_PID=$(head -n 1 "$PG_DIR/data/postmaster.pid")
  export MEDJP_TEST_POSTGRES_URL="postgresql://medjp@127.0.0.1:$port/postgres"
  echo "$("$bin/postgres" --version) (pid $PG_PID) at $MEDJP_TEST_POSTGRES_URL" >&2
}

pg_stop() {
  if [ -n "$PG_PID" ] && kill -0 "$PG_PID" 2>/dev/null; then
    kill -INT "$PG_PID"  # fast shutdown: disconnect clients, no checkpoint wait
    for _ in $(seq 100); do
      kill -0 "$PG_PID" 2>/dev/null || break
      sleep 0.1
    done
  fi
  [ -n "$PG_DIR" ] && rm -rf "$PG_DIR"
  PG_PID=""
  PG_DIR=""
}
