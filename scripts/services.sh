#!/usr/bin/env bash
# Starts PostgreSQL, RabbitMQ and Mosquitto on 127.0.0.1 unless they already answer.
set -euo pipefail
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() {
  for _ in $(seq 1 60); do up "$1" && return 0; sleep 1; done
  echo "$2 did not come up on port $1" >&2; return 1
}
if ! up 5432; then
  echo "Starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  wait_for 5432 PostgreSQL
fi
if ! up 5672; then
  echo "Starting RabbitMQ"
  rabbitmq-server -detached
  wait_for 5672 RabbitMQ
fi
rabbitmqctl await_startup >/dev/null 2>&1 || true
if ! up 1883; then
  echo "Starting Mosquitto"
  mosquitto -d -c /etc/mosquitto/mosquitto.conf
  wait_for 1883 Mosquitto
fi
