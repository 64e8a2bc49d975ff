#!/usr/bin/env bash
# N agents on loopback (127.0.0.2, .3, ...) fetch one cold blob at once through a pool mirror
# and a scheduler. Prints how many copies the mirror fetched and served, the bytes that moved
# peer to peer, the time until the last agent had the verified blob, and each agent's peak RSS.
# Links are not shaped here (see edge-tests for shaped links).
#   usage: scripts/bench-p2p.sh [AGENTS=8] [BLOB_MiB=256] [BLOCKSIZE=4MiB]
agents=${1:-8}
size_mib=${2:-256}
blocksize=${3:-4MiB}
name=bench-p2p need=""
source "$(dirname "$0")/bench-lib.sh"
start_registry
upload_blob "$size_mib" bench/blob
mirror_port=$(free_port); sched_port=$(free_port)
"$bin" mirror --listen "127.0.0.1:$mirror_port" --upstream "http://127.0.0.1:$reg_port" --cache-dir "$work/mirror" >"$work/mirror.log" 2>&1 & pids+=($!)
"$bin" scheduler --listen "127.0.0.1:$sched_port" --secret bench >"$work/scheduler.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$mirror_port/healthz"
wait_http "http://127.0.0.1:$sched_port/healthz"
agent_pids=()
for i in $(seq 2 $((agents + 1))); do
  "$bin" agent --listen "127.0.0.$i:6001" --peer-listen "127.0.0.$i:6002" --mirror "http://127.0.0.1:$mirror_port" \
    --scheduler "http://127.0.0.1:$sched_port" --node "node$i" --pool bench --secret bench --cache-dir "$work/agent$i" \
    --blocksize "$blocksize" --ratelimit 0 >"$work/agent$i.log" 2>&1 & pids+=($!); agent_pids+=($!)
done
for i in $(seq 2 $((agents + 1))); do wait_http "http://127.0.0.$i:6001/healthz"; done

start=$(date +%s.%N)
for i in $(seq 2 $((agents + 1))); do
  ( curl -sf -o "$work/out$i" "http://127.0.0.$i:6001/v2/bench/blob/blobs/$digest"; date +%s.%N > "$work/done$i" ) &
done
wait_pulls() { for i in $(seq 2 $((agents + 1))); do while [ ! -f "$work/done$i" ]; do sleep 0.05; done; done; }
wait_pulls
for i in $(seq 2 $((agents + 1))); do
  [ "$(sha256sum "$work/out$i" | cut -d' ' -f1)" = "${digest#sha256:}" ] || { echo "$name: agent $i got a wrong blob" >&2; exit 1; }
done
times=$(for i in $(seq 2 $((agents + 1))); do awk -v s="$start" '{printf "%.2f\n", $1 - s}' "$work/done$i"; done | sort -g)
bytes=$((size_mib << 20))
up=$(metric "http://127.0.0.1:$mirror_port" poolcast_mirror_upstream_bytes_total)
served=$(metric "http://127.0.0.1:$mirror_port" poolcast_mirror_served_bytes_total)
peer=0; for i in $(seq 2 $((agents + 1))); do peer=$((peer + $(metric "http://127.0.0.$i:6001" 'poolcast_agent_peer_bytes_total{direction="in"}'))); done
rss=$(for p in "${agent_pids[@]}"; do peak_rss_mib "$p"; echo; done | sort -g | tail -1)
awk -v n="$agents" -v size="$size_mib" -v bs="$blocksize" -v up="$up" -v served="$served" -v peer="$peer" -v b="$bytes" -v rss="$rss" \
  -v last="$(echo "$times" | tail -1)" -v med="$(echo "$times" | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')" 'BEGIN{
  printf "%d agents, one cold %d MiB blob, pieces of %s, loopback:\n", n, size, bs;
  printf "  all verified; last agent done after %.2f s, median %.2f s\n", last, med;
  printf "  mirror fetched from upstream: %.2f copies\n", up/b;
  printf "  mirror served to the pool:    %.2f copies\n", served/b;
  printf "  moved peer to peer:           %.2f copies (of %d needed)\n", peer/b, n;
  printf "  largest agent peak RSS:       %s MiB\n", rss }'
