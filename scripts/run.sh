#!/usr/bin/env bash
# Run Berth in the foreground: Redis (when nothing answers at REDIS_URL), a Celery worker, Daphne on a
# unix socket, and the front listener (project/front.py) on HOST:PORT in front of it.
# Ctrl-C stops all of them.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${PORT:-8000}"
HOST="${HOST:-127.0.0.1}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
NODE="${BERTH_NODE:-$(hostname)}"
mkdir -p var

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

redis_up() { .venv/bin/python - "$REDIS_URL" <<'PY'
import sys, redis
try:
    redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1, socket_timeout=1).ping()
except Exception:
    sys.exit(1)
PY
}

pids=()
stop_all() {
  trap - INT TERM EXIT
  say "stopping Berth"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

# 1. Redis.
if ! redis_up; then
  read -r rhost rport < <(.venv/bin/python -c "
import sys; from urllib.parse import urlparse
u = urlparse(sys.argv[1]); print(u.hostname or '127.0.0.1', u.port or 6379)" "$REDIS_URL")
  case "$rhost" in
    127.*|localhost|::1) ;;
    *) die "nothing answers at REDIS_URL=$REDIS_URL: start that Redis, or unset REDIS_URL to use a local one" ;;
  esac
  command -v redis-server >/dev/null || die "redis-server is missing: apt-get install redis-server (make run does it as root)"
  say "starting redis-server on $rhost:$rport"
  mkdir -p var/redis
  redis-server --bind "$rhost" --port "$rport" --dir "$PWD/var/redis" --save "" --appendonly no \
    --logfile "$PWD/var/redis/redis.log" &
  pids+=($!)
  for _ in $(seq 50); do redis_up && break; sleep 0.1; done
  redis_up || die "redis-server did not answer at $REDIS_URL (see var/redis/redis.log)"
fi

# 2. The worker: the only process that changes engine state.
say "starting the Celery worker (queue node.$NODE)"
.venv/bin/celery -A project worker -Q "node.$NODE" -n "berth@$NODE" --concurrency "${WORKER_CONCURRENCY:-4}" \
  --loglevel INFO &
pids+=($!)

# 3. The web server: Daphne on a unix socket, behind the front listener, which owns the public port
#    (it splices the Docker API's attach/exec streams itself: docs/architecture.md).
DAPHNE_SOCK="${BERTH_DAPHNE_SOCKET:-$PWD/var/daphne.sock}"
say "starting Daphne on $DAPHNE_SOCK"
rm -f "$DAPHNE_SOCK"
.venv/bin/daphne -u "$DAPHNE_SOCK" --proxy-headers project.asgi:application &
pids+=($!)
for _ in $(seq 100); do [ -S "$DAPHNE_SOCK" ] && break; sleep 0.1; done
[ -S "$DAPHNE_SOCK" ] || die "Daphne did not create $DAPHNE_SOCK"
DOCKER_SOCK="${BERTH_DOCKER_SOCKET:-$PWD/var/docker.sock}"
say "starting the front listener on $HOST:$PORT and $DOCKER_SOCK"
.venv/bin/python project/front.py --listen "$HOST:$PORT" --listen "unix:$DOCKER_SOCK" --upstream "$DAPHNE_SOCK" \
  --secret-file "${BERTH_DATA_DIR:-$PWD/var}/front_secret" &
pids+=($!)

printf '\n\033[1;32mBerth is running at http://%s:%s/\033[0m  (Ctrl-C stops it)\n' "$HOST" "$PORT"
printf 'docker CLI: DOCKER_HOST=unix://%s (or tcp://%s:%s)\n\n' "$DOCKER_SOCK" "$HOST" "$PORT"

# Whichever child ends first ends the run.
set +e
wait -n "${pids[@]}"
status=$?
set -e
say "a Berth process exited ($status)"
exit "$status"
