#!/usr/bin/env bash
# A local Redis Cluster for the benches (three masters, three replicas on 127.0.0.1), from
# Debian's redis-server and redis-cli, the same shape the tests start (tests/api/helpers.rs).
#   bash benches/redis-cluster.sh start [BASE_PORT]   # prints REDIS_CLUSTER_URLS=...
#   bash benches/redis-cluster.sh stop [BASE_PORT]
# Ports BASE_PORT..BASE_PORT+5 (default 7100) and their cluster-bus ports (+10000) must be free.
set -euo pipefail
action="${1:?start or stop}"
base="${2:-7100}"
dir="${TMPDIR:-/tmp}/sessiond-bench-cluster-$base"
ports=$(seq "$base" $((base + 5)))

case "$action" in
start)
  mkdir -p "$dir"
  for p in $ports; do
    redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "nodes-$p.conf" --cluster-node-timeout 1000 \
      --save "" --appendonly no --dir "$dir" --logfile "$p.log" --daemonize yes \
      --pidfile "$dir/$p.pid"
  done
  for p in $ports; do
    for _ in $(seq 1 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  # shellcheck disable=SC2046
  redis-cli --cluster create $(for p in $ports; do printf '127.0.0.1:%s ' "$p"; done) \
    --cluster-replicas 1 --cluster-yes >/dev/null
  for _ in $(seq 1 100); do
    ok=1
    for p in $ports; do
      redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' || ok=0
    done
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
  [ "$ok" = 1 ] || { echo "cluster did not reach cluster_state:ok" >&2; exit 1; }
  echo "REDIS_CLUSTER_URLS=$(for p in $ports; do printf 'redis://127.0.0.1:%s,' "$p"; done | sed 's/,$//')"
  ;;
stop)
  for p in $ports; do
    if [ -f "$dir/$p.pid" ]; then kill "$(cat "$dir/$p.pid")" 2>/dev/null || true; fi
  done
  rm -rf "$dir"
  ;;
*) echo "usage: $0 start|stop [BASE_PORT]" >&2; exit 2 ;;
esac
