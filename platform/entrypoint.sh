#!/bin/sh
# One image, one process per container: the first argument says which.
#   web | worker | beat | gateway   the long-running processes (same as platform/Procfile)
#   migrate                          release step: database migrations
#   wait-for-migrations              exits once the database schema is current (init step)
#   manage <args>                    any manage.py command (e.g. adduser)
#   healthcheck                      Docker HEALTHCHECK of whichever process runs here
# Anything else is executed as given (e.g. `sh` for debugging).
set -eu

# The application root (/app in the image): manage.py and the packages live there, whatever
# directory `docker exec` / `kubectl exec` starts in.
cd "$(dirname "$0")/.."

process_file="${TMPDIR:-/tmp}/modelyard-process"
cmd="${1:-web}"
[ "$#" -gt 0 ] && shift

mark() {
    # Remembered for `healthcheck`, which Docker runs as a separate process. Best effort: a
    # read-only /tmp only costs the Docker health status (Kubernetes uses its own probes).
    echo "$1" > "$process_file" 2>/dev/null || true
}

http_ok() {
    python - "$1" <<'PY'
import sys
import urllib.request

# Host and scheme as the reverse proxy would send them: Django checks ALLOWED_HOSTS and
# would redirect plain HTTP to HTTPS.
request = urllib.request.Request(
    sys.argv[1], headers={"Host": "localhost", "X-Forwarded-Proto": "https"}
)
with urllib.request.urlopen(request, timeout=10) as response:
    sys.exit(0 if response.status == 200 else 1)
PY
}

case "$cmd" in
    web)
        mark web
        # One /metrics for all gunicorn workers: prometheus_client sums the per-process files
        # here. Emptied at every start, or counters of dead workers would linger.
        export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-${TMPDIR:-/tmp}/modelyard-prometheus}"
        rm -rf "$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
        exec gunicorn config.wsgi:application \
            --bind "0.0.0.0:${PORT:-8000}" \
            --workers "${WEB_CONCURRENCY:-3}" --threads "${WEB_THREADS:-4}" \
            --timeout 300 --graceful-timeout 30 \
            --worker-tmp-dir "${TMPDIR:-/tmp}" \
            --access-logfile - "$@"
        ;;
    worker)
        mark worker
        exec celery -A config worker --loglevel "${LOG_LEVEL:-INFO}" \
            --queues default,builds,rollouts,batch,monitoring \
            --concurrency "${WORKER_CONCURRENCY:-2}" "$@"
        ;;
    beat)
        mark beat
        exec celery -A config beat --loglevel "${LOG_LEVEL:-INFO}" \
            --schedule "${BEAT_SCHEDULE:-/data/celerybeat-schedule}" "$@"
        ;;
    gateway)
        mark gateway
        exec python -m gateway --host 0.0.0.0 --port "${PORT:-8001}" "$@"
        ;;
    migrate)
        exec python manage.py migrate --no-input
        ;;
    wait-for-migrations)
        # Processes of a new version wait for its release step instead of failing on
        # tables that do not exist yet.
        until python manage.py migrate --check >/dev/null 2>&1; do
            echo "waiting for database migrations (the migrate job/service)"
            sleep 5
        done
        ;;
    manage)
        exec python manage.py "$@"
        ;;
    healthcheck)
        case "$(cat "$process_file" 2>/dev/null || echo unknown)" in
            web) http_ok "http://127.0.0.1:${PORT:-8000}/healthz" ;;
            gateway) http_ok "http://127.0.0.1:${PORT:-8001}/healthz" ;;
            worker) exec celery -A config inspect ping -d "celery@$(hostname)" --timeout 10 ;;
            beat)
                # Beat rewrites its schedule file as it sends tasks (every 15 s here).
                exec python -c "import glob, os, sys, time; files = glob.glob(os.environ.get('BEAT_SCHEDULE', '/data/celerybeat-schedule') + '*'); sys.exit(0 if files and time.time() - max(map(os.path.getmtime, files)) < 600 else 1)"
                ;;
            *) exit 0 ;;  # a one-off command (migrate, manage): nothing to check
        esac
        ;;
    *)
        exec "$cmd" "$@"
        ;;
esac
