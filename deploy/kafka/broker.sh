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
#
# METACART_BROKER_SECURE=1 starts the same broker secured (server-secure.properties.in): SASL_SSL with
# SCRAM-SHA-512 on the client port, a throw-away CA and broker certificate made with openssl at every
# start (<home>/tls/ca.pem is the CA clients trust), the StandardAuthorizer with no ACLs (super user:
# admin), and one SCRAM user per name in METACART_BROKER_USERS ("admin worker producer intruder"), each
# with a random password in <home>/secrets/<name>.password. Its state is wiped at every start.
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
secure="${METACART_BROKER_SECURE:-0}"
users="${METACART_BROKER_USERS:-admin worker producer intruder}"

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
  local scram=()
  if [ "$secure" = 1 ]; then
    rm -rf "$home/data" "$home/tls" "$home/secrets" "$home/cluster.id"
    make_tls
    make_users
    for user in $users; do
      scram+=(--add-scram "SCRAM-SHA-512=[name=$user,password=$(cat "$home/secrets/$user.password")]")
    done
  fi
  mkdir -p "$home/data" "$home/logs"
  sed -e "s#@PORT@#$port#g" -e "s#@CONTROLLER_PORT@#$cport#g" -e "s#@DATA_DIR@#$home/data#g" \
      "$here/server.properties.in" > "$home/server.properties"
  if [ "$secure" = 1 ]; then
    sed -e "s#@PORT@#$port#g" -e "s#@CONTROLLER_PORT@#$cport#g" -e "s#@TLS_DIR@#$home/tls#g" \
        -e "s#@KEYSTORE_PASSWORD@#$(cat "$home/tls/keystore.password")#g" \
        -e "s#@ADMIN_PASSWORD@#$(cat "$home/secrets/admin.password")#g" \
        "$here/server-secure.properties.in" >> "$home/server.properties"
    chmod 600 "$home/server.properties"
  fi
  if [ ! -f "$home/cluster.id" ]; then
    # 16 random bytes as unpadded base64url: the 22-character form Kafka expects.
    head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' > "$home/cluster.id"
  fi
  local t0; t0=$(date +%s%N)
  java -cp "$lib/*" -Dlog4j2.configurationFile="$here/log4j2.properties" -Dkafka.logs.dir="$home/logs" \
       kafka.tools.StorageTool format --cluster-id="$(cat "$home/cluster.id")" \
       -c "$home/server.properties" --ignore-formatted "${scram[@]}" >"$home/logs/format.log" 2>&1 \
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

random_secret() { head -c24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'; }

make_tls() {
  # A throw-away CA and a broker certificate for 127.0.0.1 only (so that "localhost" does not match:
  # the host name check is testable), signed by it, as a PKCS12 keystore.
  local d="$home/tls"
  command -v openssl >/dev/null || { log "openssl is required for METACART_BROKER_SECURE=1"; exit 1; }
  mkdir -p "$d" && chmod 700 "$d"
  random_secret > "$d/keystore.password"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=metacart test CA" \
      -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
      -keyout "$d/broker.key" -out "$d/broker.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > "$d/ext.cnf"
  openssl x509 -req -in "$d/broker.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
      -extfile "$d/ext.cnf" -out "$d/broker.pem" 2>/dev/null
  openssl pkcs12 -export -in "$d/broker.pem" -inkey "$d/broker.key" -certfile "$d/ca.pem" -name broker \
      -out "$d/broker.p12" -passout "file:$d/keystore.password"
  rm -f "$d/broker.csr" "$d/ext.cnf" "$d/ca.srl" "$d/ca.key"  # nobody can sign another certificate
}

make_users() {
  mkdir -p "$home/secrets" && chmod 700 "$home/secrets"
  for user in $users; do
    (umask 077; random_secret > "$home/secrets/$user.password")
  done
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
