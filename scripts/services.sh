#!/usr/bin/env bash
# `make services`: starts the machine's PostgreSQL, RabbitMQ and Mosquitto on 127.0.0.1
# unless they already answer (outside systemd too). The demo and the tests do not need
# it: they start private instances when these cannot serve (HOCBA_SERVICES=auto).
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
# The sign shards' exchange type (README "Fairness between schools"); online, idempotent.
rabbitmq-plugins enable rabbitmq_consistent_hash_exchange >/dev/null
if ! up 1883; then
  echo "Starting Mosquitto"
  # systemd makes its runtime folder (the pid file's); outside systemd nobody does.
  install -d -o mosquitto -g mosquitto /run/mosquitto
  mosquitto -d -c /etc/mosquitto/mosquitto.conf
  wait_for 1883 Mosquitto
fi
