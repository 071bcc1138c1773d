#!/usr/bin/env bash
# A real NetBox (PyPI `netbox`) with PostgreSQL and Redis from Debian, on loopback only.
#
#   netbox.sh setup   install + migrate once; cached outside the clone, keyed by version
#   netbox.sh start   clean database from the template, gunicorn, the background worker
#                     (rqworker: custom field provisioning and purges run there, as in any
#                     real NetBox), admin user + API token; static files (CSS, JS, fonts)
#                     collected once per cache and served by WhiteNoise in front of NetBox
#   netbox.sh stop    stop gunicorn, the worker, redis and postgres (by PID)
#   netbox.sh env     print the variables of the running instance
#   netbox.sh kill-gunicorn | restart-gunicorn
#                     SIGKILL the NetBox server (and start it again), for the fault tests
#   netbox.sh global-unique on|off
#                     NetBox's ENFORCE_GLOBAL_UNIQUE (a configuration revision; the
#                     harness starts with it off), for the overlapping-address tests
#
# Cache: $PNBO_CACHE_DIR/netbox-<version>/ (venv, conf, PostgreSQL data with a migrated
# template database). State of a running instance: $PNBO_HARNESS_DIR/netbox/.
set -euo pipefail

NETBOX_VERSION="${NETBOX_VERSION:-4.7.3}"
WHITENOISE_VERSION="6.12.0"
CACHE="${PNBO_CACHE_DIR:-/var/cache/proxmox-netbox-operator}/netbox-${NETBOX_VERSION}"
STATE="${PNBO_HARNESS_DIR:-/tmp/pnbo-harness}/netbox"
PG_PORT="${PNBO_PG_PORT:-55432}"
REDIS_PORT="${PNBO_REDIS_PORT:-56379}"
NETBOX_PORT="${PNBO_NETBOX_PORT:-58000}"
PG_BIN="/usr/lib/postgresql/15/bin"
VENV="$CACHE/venv"
ROOT="$CACHE/root"
PGDATA="$CACHE/pgdata"

log() { printf '[netbox] %s\n' "$*" >&2; }

find_python() {
  local root candidates p
  root="$(pyenv root 2>/dev/null || echo /root/.pyenv)"
  candidates=(python3.13 python3.12 "$root"/versions/3.13*/bin/python3 "$root"/versions/3.12*/bin/python3)
  for p in "${candidates[@]}"; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
      command -v "$p"
      return 0
    fi
  done
  echo "netbox.sh: NetBox ${NETBOX_VERSION} needs Python >= 3.12; none found (looked for python3.12/3.13 and pyenv versions)" >&2
  return 1
}

as_postgres() { runuser -u postgres -- "$@"; }

pg_start() {
  mkdir -p "$STATE"
  if [ -f "$PGDATA/postmaster.pid" ] && as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    return 0
  fi
  rm -f "$PGDATA/postmaster.pid"
  as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$CACHE/postgres.log" -w -t 60 \
    -o "-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" start >/dev/null
}

pg_stop() {
  if [ -d "$PGDATA" ] && as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null || true
  fi
}

psql_admin() { as_postgres psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }

redis_start() {
  mkdir -p "$STATE"
  if [ -f "$STATE/redis.pid" ] && kill -0 "$(cat "$STATE/redis.pid")" 2>/dev/null; then
    return 0
  fi
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log" --dir "$STATE"
  for _ in $(seq 50); do [ -f "$STATE/redis.pid" ] && break; sleep 0.1; done
}

redis_stop() {
  if [ -f "$STATE/redis.pid" ]; then
    kill "$(cat "$STATE/redis.pid")" 2>/dev/null || true
    rm -f "$STATE/redis.pid"
  fi
}

write_config() {
  mkdir -p "$ROOT/conf"
  local secret pepper
  secret="$(cat "$CACHE/secret_key" 2>/dev/null || { head -c 64 /dev/urandom | base64 -w0 | tr -dc 'A-Za-z0-9' | head -c 60 > "$CACHE/secret_key"; cat "$CACHE/secret_key"; })"
  pepper="$(cat "$CACHE/pepper" 2>/dev/null || { head -c 64 /dev/urandom | base64 -w0 | tr -dc 'A-Za-z0-9' | head -c 60 > "$CACHE/pepper"; cat "$CACHE/pepper"; })"
  cat > "$ROOT/conf/configuration.py" <<EOF
# Local throwaway NetBox for tests and the demo (loopback only).
ALLOWED_HOSTS = ['127.0.0.1', 'localhost']
DATABASES = {'default': {'ENGINE': 'django.db.backends.postgresql', 'NAME': 'netbox', 'USER': 'postgres',
                         'PASSWORD': '', 'HOST': '127.0.0.1', 'PORT': '$PG_PORT', 'CONN_MAX_AGE': 300}}
REDIS = {
    'tasks': {'HOST': '127.0.0.1', 'PORT': $REDIS_PORT, 'DATABASE': 0, 'SSL': False},
    'caching': {'HOST': '127.0.0.1', 'PORT': $REDIS_PORT, 'DATABASE': 1, 'SSL': False},
}
SECRET_KEY = '$secret'
API_TOKEN_PEPPERS = {1: '$pepper'}
CENSUS_REPORTING_ENABLED = False
RELEASE_CHECK_URL = None
MAX_PAGE_SIZE = 1000
LOGIN_REQUIRED = True
EOF
  # NetBox serves no static files unless DEBUG is on; WhiteNoise serves what collectstatic
  # put in STATIC_ROOT ($ROOT/static). gunicorn --chdir $ROOT imports this module.
  cat > "$ROOT/harness_wsgi.py" <<'EOF'
from django.conf import settings
from netbox.wsgi import application as netbox_application
from whitenoise import WhiteNoise

application = WhiteNoise(netbox_application, root=settings.STATIC_ROOT, prefix=settings.STATIC_URL)
EOF
}

# Static files, once per cache (collectstatic skips unchanged files anyway); installs
# WhiteNoise into venvs made before it was part of the setup.
ensure_static() {
  if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('whitenoise') != '$WHITENOISE_VERSION')" 2>/dev/null; then
    log "installing whitenoise==$WHITENOISE_VERSION"
    "$VENV/bin/pip" install -q "whitenoise==$WHITENOISE_VERSION"
  fi
  if [ ! -f "$CACHE/.static-ready" ] || [ ! -f "$ROOT/static/netbox.css" ]; then
    log "collecting static files into $ROOT/static"
    NETBOX_ROOT="$ROOT" "$VENV/bin/netbox" collectstatic --no-input >"$CACHE/collectstatic.log" 2>&1 || {
      tail -30 "$CACHE/collectstatic.log" >&2
      exit 1
    }
    touch "$CACHE/.static-ready"
  fi
}

cmd_setup() {
  if [ -f "$CACHE/.ready" ]; then
    log "cached: $CACHE"
    return 0
  fi
  local t0 py
  t0=$(date +%s)
  py="$(find_python)"
  mkdir -p "$CACHE"
  if [ ! -x "$VENV/bin/netbox" ]; then
    log "installing netbox==${NETBOX_VERSION} into $VENV ($py)"
    rm -rf "$VENV"
    "$py" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q "netbox==${NETBOX_VERSION}" gunicorn "whitenoise==${WHITENOISE_VERSION}"
  fi
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    log "initialising PostgreSQL in $PGDATA"
    mkdir -p "$PGDATA"
    chown -R postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    as_postgres "$PG_BIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  chown postgres:postgres "$CACHE"
  pg_start
  redis_start
  write_config
  psql_admin -c "DROP DATABASE IF EXISTS netbox WITH (FORCE)" >/dev/null
  psql_admin -c "CREATE DATABASE netbox" >/dev/null
  log "migrating (about 6-7 minutes on 2 cores)"
  NETBOX_ROOT="$ROOT" "$VENV/bin/netbox" migrate --no-input >"$CACHE/migrate.log" 2>&1 || {
    tail -30 "$CACHE/migrate.log" >&2
    exit 1
  }
  psql_admin -c "DROP DATABASE IF EXISTS netbox_template WITH (FORCE)" >/dev/null
  psql_admin -c "CREATE DATABASE netbox_template TEMPLATE netbox" >/dev/null
  touch "$CACHE/.ready"
  log "setup done in $(( $(date +%s) - t0 )) s"
}

cmd_start() {
  cmd_setup
  mkdir -p "$STATE"
  cmd_stop_gunicorn
  cmd_stop_worker
  pg_start
  redis_start
  write_config
  ensure_static
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" flushall >/dev/null
  psql_admin -c "DROP DATABASE IF EXISTS netbox WITH (FORCE)" >/dev/null
  psql_admin -c "CREATE DATABASE netbox TEMPLATE netbox_template" >/dev/null
  local password
  password="$(head -c 24 /dev/urandom | base64 -w0 | tr -dc 'A-Za-z0-9' | head -c 20)"
  # One Django start creates the admin user and a v2 write token; the plaintext token is
  # printed once, to a file readable by root only.
  umask 077
  NETBOX_ROOT="$ROOT" NB_ADMIN_PASSWORD="$password" "$VENV/bin/netbox" shell >"$STATE/token.out" 2>"$STATE/nbshell.log" <<'PYEOF'
import os
from users.models import User, Token
u = User.objects.create_superuser('admin', 'admin@example.invalid', os.environ['NB_ADMIN_PASSWORD'])
t = Token(user=u, version=2, write_enabled=True, description='proxmox-netbox-operator tests')
t.save()
# Tests of several clusters reuse the same addresses: global uniqueness starts off
# (`netbox.sh global-unique on` turns it on for the tests of both settings).
from core.models import ConfigRevision
r = ConfigRevision(data={'ENFORCE_GLOBAL_UNIQUE': False}, comment='proxmox-netbox-operator tests')
r.save()
r.activate()
print('TOKEN=nbt_%s.%s' % (t.key, t.token))
PYEOF
  local token
  token="$(sed -n 's/^TOKEN=//p' "$STATE/token.out" | tail -1)"
  [ -n "$token" ] || { cat "$STATE/nbshell.log" >&2; echo "netbox.sh: could not create the API token" >&2; exit 1; }
  printf '%s' "$token" > "$STATE/token"
  printf '%s' "$password" > "$STATE/admin_password"
  rm -f "$STATE/token.out"
  start_gunicorn
  NETBOX_ROOT="$ROOT" nohup "$VENV/bin/netbox" rqworker high default low >"$STATE/rqworker.log" 2>&1 &
  echo $! > "$STATE/rqworker.pid"
  wait_ready
}

start_gunicorn() {
  "$VENV/bin/gunicorn" --chdir "$ROOT" --bind "127.0.0.1:$NETBOX_PORT" \
    --workers 2 --threads 3 --timeout 600 --keep-alive 30 --preload --daemon --pid "$STATE/gunicorn.pid" \
    --env NETBOX_ROOT="$ROOT" --access-logfile /dev/null --error-logfile "$STATE/gunicorn.log" harness_wsgi
}

wait_ready() {
  local token
  token="$(cat "$STATE/token")"
  for _ in $(seq 120); do
    if curl -fs -o /dev/null -H "Authorization: Bearer $token" "http://127.0.0.1:$NETBOX_PORT/api/status/" 2>/dev/null; then
      log "ready on http://127.0.0.1:$NETBOX_PORT"
      return 0
    fi
    sleep 0.5
  done
  tail -30 "$STATE/gunicorn.log" >&2
  echo "netbox.sh: NetBox did not answer /api/status/ within 60 s" >&2
  exit 1
}

# SIGKILL of gunicorn's master and workers (a crashed NetBox server: requests in flight
# die with their transactions), for the fault tests.
cmd_kill_gunicorn() {
  local file="$STATE/gunicorn.pid" pid
  [ -f "$file" ] || return 0
  pid="$(cat "$file")"
  # The master is stopped first: between the workers' death and its own it would boot a
  # new worker, which would outlive it holding the port.
  kill -STOP "$pid" 2>/dev/null || true
  pkill -KILL -P "$pid" 2>/dev/null || true
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$file"
  # The listening socket closes with the last process that holds it.
  for _ in $(seq 150); do port_in_use || break; sleep 0.1; done
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$NETBOX_PORT") 2>/dev/null; }

# ENFORCE_GLOBAL_UNIQUE as NetBox's active configuration revision (configuration.py leaves it
# unset so that it can change while NetBox runs; NetBox reads the revision from its cache
# on every request).
cmd_global_unique() {
  local value
  case "$1" in
    on) value=True ;;
    off) value=False ;;
    *) echo "usage: $0 global-unique on|off" >&2; exit 2 ;;
  esac
  NETBOX_ROOT="$ROOT" PNBO_GLOBAL_UNIQUE="$value" "$VENV/bin/netbox" shell >/dev/null 2>"$STATE/global-unique.log" <<'PYEOF'
import os
from core.models import ConfigRevision
revision = ConfigRevision(data={'ENFORCE_GLOBAL_UNIQUE': os.environ['PNBO_GLOBAL_UNIQUE'] == 'True'},
                          comment='proxmox-netbox-operator tests')
revision.save()
revision.activate()
PYEOF
}

cmd_restart_gunicorn() {
  cmd_kill_gunicorn
  start_gunicorn
  wait_ready
}

# Stops the process whose PID is in $STATE/$1 and waits up to 5 s for it to go.
stop_pidfile() {
  local file="$STATE/$1"
  if [ -f "$file" ]; then
    local pid
    pid="$(cat "$file")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$file"
  fi
}

cmd_stop_gunicorn() { stop_pidfile gunicorn.pid; }
cmd_stop_worker() { stop_pidfile rqworker.pid; }

cmd_stop() {
  cmd_stop_gunicorn
  cmd_stop_worker
  redis_stop
  pg_stop
}

cmd_env() {
  cat <<EOF
NETBOX_URL=http://127.0.0.1:$NETBOX_PORT
NETBOX_TOKEN=$(cat "$STATE/token")
NETBOX_ADMIN_USER=admin
NETBOX_ADMIN_PASSWORD=$(cat "$STATE/admin_password")
NETBOX_ROOT=$ROOT
NETBOX_VENV=$VENV
EOF
}

case "${1:-}" in
  setup) cmd_setup ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  env) cmd_env ;;
  kill-gunicorn) cmd_kill_gunicorn ;;
  global-unique) cmd_global_unique "${2:-}" ;;
  restart-gunicorn) cmd_restart_gunicorn ;;
  *) echo "usage: $0 setup|start|stop|env|kill-gunicorn|restart-gunicorn|global-unique on|off" >&2; exit 2 ;;
esac
