#!/usr/bin/env bash
# Run a real single-node Apache Kafka broker (KRaft, broker+controller) on 127.0.0.1 without Docker.
#
#   deploy/kafka/broker.sh start    fetch jars (Maven Central, cached), format storage, start, wait until ready
#   deploy/kafka/broker.sh stop     stop it cleanly (SIGTERM, then SIGKILL after a grace period)
#   deploy/kafka/broker.sh status   exit 0 when it answers on its port
#   deploy/kafka/broker.sh restart
#
# Settings (environment): METACART_BROKER_HOME (state, logs, pid; default <repo>/var/kafka),
# METACART_BROKER_PORT (9092), METACART_BROKER_CONTROLLER_PORT (9093), METACART_BROKER_HEAP (512m),
# METACART_BROKER_LIB (jar cache; default <repo>/.cache/kafka-lib), METACART_BROKER_TIMEOUT_S (90).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
home="${METACART_BROKER_HOME:-$repo/var/kafka}"
port="${METACART_BROKER_PORT:-9092}"
cport="${METACART_BROKER_CONTROLLER_PORT:-9093}"
heap="${METACART_BROKER_HEAP:-512m}"
lib="${METACART_BROKER_LIB:-$repo/.cache/kafka-lib}"
timeout_s="${METACART_BROKER_TIMEOUT_S:-90}"
pidfile="$home/broker.pid"

log() { printf '[broker] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

fetch_jars() {
  if [ -f "$lib/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || { log "Maven (mvn) is required to fetch the Kafka jars"; exit 1; }
  command -v java >/dev/null || { log "Java 17+ is required to run the broker"; exit 1; }
  log "fetching Kafka jars from Maven Central into $lib"
  rm -rf "$lib.tmp"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$lib.tmp" >&2
  rm -rf "$lib" && mv "$lib.tmp" "$lib" && touch "$lib/.complete"
  log "$(ls "$lib"/*.jar | wc -l) jars ready"
}

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid; pid="$(cat "$pidfile")"
  kill -0 "$pid" 2>/dev/null && { echo "$pid"; return 0; }
  return 1
}

start() {
  if pid="$(running_pid)"; then
    log "already running (pid $pid) on 127.0.0.1:$port"; return 0
  fi
  if port_open "$port"; then
    log "port $port is taken by another process; set METACART_BROKER_PORT"; exit 1
  fi
  fetch_jars
  mkdir -p "$home/data" "$home/logs"
  sed -e "s#@PORT@#$port#g" -e "s#@CONTROLLER_PORT@#$cport#g" -e "s#@DATA_DIR@#$home/data#g" \
      "$here/server.properties.in" > "$home/server.properties"
  if [ ! -f "$home/cluster.id" ]; then
    # 16 random bytes as unpadded base64url: the 22-character form Kafka expects.
    head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' > "$home/cluster.id"
  fi
  local t0; t0=$(date +%s%N)
  java -cp "$lib/*" -Dlog4j2.configurationFile="$here/log4j2.properties" -Dkafka.logs.dir="$home/logs" \
       kafka.tools.StorageTool format --cluster-id="$(cat "$home/cluster.id")" \
       -c "$home/server.properties" --ignore-formatted >"$home/logs/format.log" 2>&1 \
    || { log "storage format failed:"; cat "$home/logs/format.log" >&2; exit 1; }
  nohup java -Xms"$heap" -Xmx"$heap" -XX:+UseG1GC -Djava.awt.headless=true \
       -Dlog4j2.configurationFile="$here/log4j2.properties" -Dkafka.logs.dir="$home/logs" \
       -cp "$lib/*" kafka.Kafka "$home/server.properties" >"$home/logs/stdout.log" 2>&1 &
  echo $! > "$pidfile"
  local deadline=$(( $(date +%s) + timeout_s ))
  until port_open "$port"; do
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      log "broker exited during start; last lines of its logs:"
      tail -n 30 "$home/logs/stdout.log" "$home/logs/broker.log" >&2 2>/dev/null || true
      exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "broker not ready after ${timeout_s}s"; stop; exit 1
    fi
    sleep 0.2
  done
  log "ready on 127.0.0.1:$port (pid $(cat "$pidfile")) in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then rm -f "$pidfile"; log "not running"; return 0; fi
  kill -TERM "$pid"
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then log "no clean exit in 30s; killing"; kill -KILL "$pid"; fi
  rm -f "$pidfile"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if port_open "$port"; then log "up on 127.0.0.1:$port"; else log "down"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
