#!/usr/bin/env bash
# What the fan-out bed itself can carry, without poolcast: N network namespaces on one bridge,
# each link shaped with tc tbf both ways exactly as edge-tests' Bed does, nginx (sendfile) in
# every node, and every node downloading a 16 MiB range from K other nodes at once. Prints the
# links' steady-state use (bytes leaving every eth0 over 6 s, against N x rate) and the time
# until the last range landed, against the ideal N*K*16 MiB / (N x rate).
#
#   scripts/bench-bed-capacity.sh [NODES] [K] [MBIT] [MTU]     # defaults 16 4 50 1500
#
# Needs root, iproute2, nginx and curl. Cleans up after itself, also on Ctrl-C.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
N=${1:-16}
K=${2:-4}
MBIT=${3:-50}
MTU=${4:-1500}
RATE=$((MBIT * 1000000 / 8))     # bytes/s
BURST=$((RATE / 100 > 16384 ? RATE / 100 : 16384))
BURST=$((BURST > 2 * MTU ? BURST : 2 * MTU))
P=bedcap$$
DIR=$(mktemp -d)
chmod 755 "$DIR"   # nginx workers run unprivileged

cleanup() {
  for pidfile in "$DIR"/*/pid; do [[ -f $pidfile ]] && kill "$(cat "$pidfile")" 2>/dev/null || true; done
  for i in $(seq 1 "$N"); do ip netns del "$P-$i" 2>/dev/null || true; done
  ip netns del "$P-hub" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

ip netns add "$P-hub"
ip -n "$P-hub" link add br0 type bridge
ip -n "$P-hub" link set br0 up
for i in $(seq 1 "$N"); do
  ns="$P-$i"
  ip netns add "$ns"
  ip link add "h$i" netns "$P-hub" type veth peer name eth0 netns "$ns"
  ip -n "$P-hub" link set "h$i" master br0
  ip -n "$P-hub" link set "h$i" up
  ip -n "$ns" addr add "10.88.$((i / 250)).$((i % 250 + 1))/16" dev eth0
  ip -n "$ns" link set eth0 mtu "$MTU" up
  ip -n "$P-hub" link set "h$i" mtu "$MTU"
  ip -n "$ns" link set lo up
  tc -n "$ns" qdisc add dev eth0 root tbf rate "${MBIT}mbit" burst "$BURST" latency 50ms
  tc -n "$P-hub" qdisc add dev "h$i" root tbf rate "${MBIT}mbit" burst "$BURST" latency 50ms
  mkdir -p "$DIR/$i"
  cat >"$DIR/$i/nginx.conf" <<EOF
daemon on; worker_processes 1; pid $DIR/$i/pid; error_log /dev/null;
events {} http { access_log off; sendfile on;
  server { listen 10.88.$((i / 250)).$((i % 250 + 1)):8080; root $DIR; } }
EOF
  ip netns exec "$ns" nginx -c "$DIR/$i/nginx.conf" -p "$DIR/$i"
done
head -c 16M /dev/urandom >"$DIR/blob"
addr() { echo "10.88.$(($1 / 250)).$(($1 % 250 + 1))"; }
tx() {
  local t=0 v
  for i in $(seq 1 "$N"); do
    v=$(ip netns exec "$P-$i" cat /sys/class/net/eth0/statistics/tx_bytes)
    t=$((t + v))
  done
  echo "$t"
}

start=$(date +%s.%N)
pids=()
for i in $(seq 1 "$N"); do
  for k in $(seq 1 "$K"); do
    j=$(((i + k * 3 - 1) % N + 1))
    [[ $j == "$i" ]] && j=$((j % N + 1))
    ip netns exec "$P-$i" curl -sSf -o /dev/null "http://$(addr "$j"):8080/blob" &
    pids+=($!)
  done
done
sleep 2
a=$(tx); ta=$(date +%s.%N)
sleep 6
b=$(tx); tb=$(date +%s.%N)
wait "${pids[@]}" || true
end=$(date +%s.%N)
awk -v a="$a" -v b="$b" -v ta="$ta" -v tb="$tb" -v n="$N" -v r="$RATE" -v k="$K" -v m="$MTU" \
    -v s="$start" -v e="$end" 'BEGIN {
  ideal = k * 16 * 1048576 / r
  printf "%d nodes x %d flows, %d mbit, MTU %d: links in use %.2f of capacity (steady, headers included); ", n, k, r * 8 / 1e6, m, (b - a) / (tb - ta) / (n * r)
  printf "last range after %.2f s, ideal %.2f s (%.2f)\n", e - s, ideal, (e - s) / ideal
}'
