#!/usr/bin/env bash
# What the fan-out bed itself can carry, without poolcast: N network namespaces on one bridge,
# each link shaped with tc tbf both ways exactly as edge-tests' Bed does, nginx (sendfile) in
# every node, and every node downloading a 16 MiB range from K other nodes at once (so every
# node also serves K ranges). Prints the links' steady-state use (bytes leaving every eth0 from
# 15 to 65 % of the ideal time, against N x the slower of download and upload) and the time
# until the last range landed, against the ideal K*16 MiB at that slower rate.
#
#   scripts/bench-bed-capacity.sh [NODES] [K] [MBIT | DOWN/UP] [MTU]    # defaults 16 4 50 1500
#   scripts/bench-bed-capacity.sh 16 4 50/10 1500     # download 50 mbit, upload 10 mbit
#
# Every namespace runs TCP ${CONGESTION:-cubic} as the Bed does (CONGESTION=host keeps the machine's).
# Needs root, iproute2, nginx and curl. Cleans up after itself, also on Ctrl-C.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
N=${1:-16}
K=${2:-4}
RATES=${3:-50}
MTU=${4:-1500}
DOWN=${RATES%/*}                 # mbit, whole numbers
UP=${RATES#*/}
[[ $DOWN =~ ^[1-9][0-9]*$ && $UP =~ ^[1-9][0-9]*$ ]] || { echo "bench-bed-capacity: rates $RATES: write MBIT or DOWN/UP in whole mbit, e.g. 50 or 50/10" >&2; exit 2; }
burst() {                        # bytes: 10 ms at the rate, at least 16 KiB and two packets
  local b=$(($1 * 1000000 / 8 / 100))
  b=$((b > 16384 ? b : 16384))
  echo $((b > 2 * MTU ? b : 2 * MTU))
}
RATE=$(( (DOWN < UP ? DOWN : UP) * 1000000 / 8 ))     # bytes/s of the slower direction
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

# The ARP table is one for all namespaces, its limits only in the machine's own (as the Bed does).
for k in 2:65536 3:131072; do
  f=/proc/sys/net/ipv4/neigh/default/gc_thresh${k%:*}
  (( $(cat "$f") >= ${k#*:} )) || echo "${k#*:}" >"$f"
done
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
  [ "${CONGESTION:-cubic}" = host ] || ip netns exec "$ns" sysctl -qw "net.ipv4.tcp_congestion_control=${CONGESTION:-cubic}"
  tc -n "$ns" qdisc add dev eth0 root tbf rate "${UP}mbit" burst "$(burst "$UP")" latency 50ms
  tc -n "$P-hub" qdisc add dev "h$i" root tbf rate "${DOWN}mbit" burst "$(burst "$DOWN")" latency 50ms
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
    (ip netns exec "$P-$i" curl -sSf -o /dev/null "http://$(addr "$j"):8080/blob"
     date +%s.%N >"$DIR/end.$i.$k") &
    pids+=($!)
  done
done
# The steady state: from 15 % to 65 % of the ideal time, when every flow is under way.
ideal=$(awk -v k="$K" -v r="$RATE" 'BEGIN { print k * 16 * 1048576 / r }')
sleep "$(awk -v i="$ideal" 'BEGIN { print 0.15 * i }')"
a=$(tx); ta=$(date +%s.%N)
sleep "$(awk -v i="$ideal" 'BEGIN { print 0.5 * i }')"
b=$(tx); tb=$(date +%s.%N)
wait "${pids[@]}" || true
end=$(sort -n "$DIR"/end.* | tail -1)
awk -v a="$a" -v b="$b" -v ta="$ta" -v tb="$tb" -v n="$N" -v r="$RATE" -v k="$K" -v m="$MTU" \
    -v s="$start" -v e="$end" -v down="$DOWN" -v up="$UP" 'BEGIN {
  ideal = k * 16 * 1048576 / r
  printf "%d nodes x %d flows, %d mbit down / %d up, MTU %d: links in use %.2f of capacity (steady, headers included); ", n, k, down, up, m, (b - a) / (tb - ta) / (n * r)
  printf "last range after %.2f s, ideal %.2f s (%.2f)\n", e - s, ideal, (e - s) / ideal
}'
