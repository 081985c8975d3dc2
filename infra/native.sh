#!/usr/bin/env bash
# Run the whole platform natively on one machine, on 127.0.0.1 only, without Docker:
# SeaweedFS (compose's flags, every port chosen and clear of the others), its buckets (`federation storage
# init`), Airflow standalone with this repository's DAGs, the query service and one node per site.
#
#   infra/native.sh start     # set up (first time) and start everything; prints where things are
#   infra/native.sh status    # which processes run
#   infra/native.sh stop      # stop everything (data, keys and tokens stay in $FEDERATION_NATIVE)
#
# Environment (all optional):
#   FEDERATION_NATIVE   state folder: settings.yaml, secrets/, data/, airflow/, service/, tokens/, logs/
#                       (default ./native)
#   NATIVE_PORT_BASE    first of 21 ports (default 18300): S3 +0, S3 gRPC +1, master +2/+3, volume +4/+5,
#                       filer +6/+7, Airflow +10, its log servers +11/+12 (Airflow binds those to every
#                       interface; nothing else listens beyond 127.0.0.1), query service +20
#   NATIVE_SITES_DIR    site configurations (default infra/sites of this repository)
#   PYTHON              the interpreter with the federation package (default .venv/bin/python)
# See docs/operations.md, "Run it natively".
set -euo pipefail
umask 077  # keys, tokens, raw uploads, the Airflow password: readable by this user only

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PY="${PYTHON:-$REPO/.venv/bin/python}"
BIN="$(dirname "$PY")"
DIR="$(mkdir -p "${FEDERATION_NATIVE:-native}" && cd "${FEDERATION_NATIVE:-native}" && pwd)"
BASE="${NATIVE_PORT_BASE:-18300}"
SITES_DIR="${NATIVE_SITES_DIR:-$REPO/infra/sites}"
S3_PORT=$BASE; AIRFLOW_PORT=$((BASE + 10)); SERVICE_PORT=$((BASE + 20))
SERVICE_URL="http://127.0.0.1:$SERVICE_PORT"
fed() { "$PY" -m federation.cli "$@"; }

say() { printf '%s\n' "$*"; }

wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local until=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > until)); then say "error: $what did not come up; see $DIR/logs"; exit 1; fi
    sleep 1
  done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_bg() {  # start_bg NAME COMMAND...: in its own session, pid in run/NAME.pid, output in logs/NAME.log
  local name=$1; shift
  if [ -f "$DIR/run/$name.pid" ] && kill -0 "$(cat "$DIR/run/$name.pid")" 2>/dev/null; then
    say "  $name already runs (pid $(cat "$DIR/run/$name.pid"))"; return
  fi
  setsid "$@" >>"$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$DIR/run/$name.pid"
  say "  $name started (pid $!, log $DIR/logs/$name.log)"
}

setup() {
  mkdir -p "$DIR"/{secrets,data,logs,run,tokens,airflow,service,node-logs}
  chmod 700 "$DIR/secrets" "$DIR/tokens"
  if [ -f "$DIR/settings.yaml" ] && ! grep -q "endpoint: http://127.0.0.1:$S3_PORT\$" "$DIR/settings.yaml"; then
    say "error: $DIR/settings.yaml was written for another NATIVE_PORT_BASE ($(grep -o 'endpoint: .*' \
      "$DIR/settings.yaml")); start with that base, or delete settings.yaml to write it again"
    exit 1
  fi
  if [ ! -f "$DIR/settings.yaml" ]; then
    cat >"$DIR/settings.yaml" <<EOF
# written by infra/native.sh; every key: docs/operations.md, "Settings reference"
storage:
  kind: s3
  endpoint: http://127.0.0.1:$S3_PORT
  secrets_dir: secrets
sites_dir: $SITES_DIR
pseudonym_key_file: secrets/pseudonym.key
report_dir: consortium-report
audit_log: audit/queries.jsonl
EOF
  fi
  if [ ! -f "$DIR/secrets/pseudonym.key" ]; then
    (umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(32))' >"$DIR/secrets/pseudonym.key")
  fi
  fed storage identities --config "$DIR/settings.yaml" --out "$DIR/secrets/s3.json" >/dev/null
}

start_storage() {
  for p in $(seq "$BASE" $((BASE + 7))); do
    port_free "$p" || { [ -f "$DIR/run/seaweedfs.pid" ] && kill -0 "$(cat "$DIR/run/seaweedfs.pid")" 2>/dev/null; } \
      || { say "error: port $p is taken; choose another NATIVE_PORT_BASE"; exit 1; }
  done
  # compose's flags (docker-compose.yml, service seaweedfs), with this machine's ports and paths
  start_bg seaweedfs "$BIN/weed" server -dir="$DIR/data" -s3 -s3.config="$DIR/secrets/s3.json" \
    -master.telemetry=false -volume.max=200 -master.volumeSizeLimitMB=1024 -s3.port.iceberg=0 -s3.port.lance=0 \
    -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port=$S3_PORT -s3.port.grpc=$((BASE + 1)) -master.port=$((BASE + 2)) -master.port.grpc=$((BASE + 3)) \
    -volume.port=$((BASE + 4)) -volume.port.grpc=$((BASE + 5)) -filer.port=$((BASE + 6)) \
    -filer.port.grpc=$((BASE + 7))
  fed storage init --config "$DIR/settings.yaml" --wait 120 | sed 's/^/  /'
}

start_airflow() {
  export AIRFLOW_HOME="$DIR/airflow" AIRFLOW__CORE__DAGS_FOLDER="$REPO/dags" AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=$AIRFLOW_PORT \
    AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$((BASE + 11)) AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=$((BASE + 12)) \
    AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$AIRFLOW_PORT/execution/" \
    FEDERATION_CONFIG="$DIR/settings.yaml" FEDERATION_SERVER="$SERVICE_URL" \
    FEDERATION_CREDENTIALS="$DIR/tokens/consortium-report" GX_ANALYTICS_ENABLED=false PATH="$BIN:$PATH"
  port_free "$AIRFLOW_PORT" || [ -f "$DIR/run/airflow.pid" ] || { say "error: port $AIRFLOW_PORT is taken"; exit 1; }
  start_bg airflow "$PY" -m airflow standalone
  wait_for 240 "Airflow" "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$AIRFLOW_PORT/api/v2/version', timeout=2)"
}

start_service() {
  local state="$DIR/service"
  if [ ! -f "$state/users.sqlite" ]; then
    fed users add admin --role admin --state "$state" >"$DIR/tokens/admin" 2>/dev/null
    fed users add analyst --role analyst --state "$state" >"$DIR/tokens/analyst" 2>/dev/null
    fed users add consortium-report --role analyst --state "$state" >"$DIR/tokens/consortium-report" 2>/dev/null
    for f in "$SITES_DIR"/*.yaml; do
      site=$(basename "$f" .yaml)
      fed users add "node-$site" --role node --site "$site" --state "$state" >"$DIR/tokens/node-$site" 2>/dev/null
    done
    chmod 600 "$DIR"/tokens/*
  fi
  port_free "$SERVICE_PORT" || [ -f "$DIR/run/service.pid" ] || { say "error: port $SERVICE_PORT is taken"; exit 1; }
  start_bg service env -u FEDERATION_CONFIG "$PY" -m federation.cli serve --state "$state" --port "$SERVICE_PORT"
  wait_for 60 "the query service" "$PY" -c "import urllib.request; urllib.request.urlopen('$SERVICE_URL/v1/health', timeout=2)"
  for f in "$SITES_DIR"/*.yaml; do
    site=$(basename "$f" .yaml)
    start_bg "node-$site" "$PY" -m federation.cli node --site "$site" --server "$SERVICE_URL" \
      --service-key "$state/service.pub" --token-file "$DIR/tokens/node-$site" --config "$DIR/settings.yaml" \
      --log "$DIR/node-logs/$site.jsonl"
  done
}

stop_all() {
  shopt -s nullglob
  local pids=("$DIR"/run/node-*.pid "$DIR/run/service.pid" "$DIR/run/airflow.pid" "$DIR/run/seaweedfs.pid")
  for f in "${pids[@]}"; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -KILL -- "-$pid" 2>/dev/null || true
      say "  stopped $(basename "$f" .pid)"
    fi
    rm -f "$f"
  done
}

status() {
  shopt -s nullglob
  for f in "$DIR"/run/*.pid; do
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then state=running; else state=stopped; fi
    printf '  %-16s %-8s pid %s\n' "$(basename "$f" .pid)" "$state" "$pid"
  done
}

case "${1:-}" in
  start)
    trap 'say "start failed; stop what did start with: infra/native.sh stop"' ERR
    say "state in $DIR; ports $BASE-$((BASE + 20)) on 127.0.0.1"
    setup
    say "SeaweedFS (S3 on 127.0.0.1:$S3_PORT) and its buckets:"
    start_storage
    say "query service ($SERVICE_URL) and one node per site in $SITES_DIR:"
    start_service
    say "Airflow standalone (http://127.0.0.1:$AIRFLOW_PORT; admin password in $DIR/airflow/simple_auth_manager_passwords.json.generated):"
    start_airflow
    say "ready. settings: $DIR/settings.yaml; tokens: $DIR/tokens/; stop with: infra/native.sh stop"
    ;;
  stop) stop_all ;;
  status) status ;;
  *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
