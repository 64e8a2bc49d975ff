#!/usr/bin/env bash
# What hostile clients cost the mirror and the agent (docs/benchmarks.md, "Security"): a cached
# layer asked for as a manifest by 8 clients at once, 200 clients that ask for it and never read,
# /pieces with 64 piece sizes, and 200 such readers at an agent's registry port. Prints peak RSS
# growth, CPU seconds and the latency of /v2/ meanwhile. Figures, not pass/fail: compare two
# builds with POOLCAST_BIN=/path/to/poolcast (default: this tree's release build).
#   usage: [READERS=200] [POOLCAST_BIN=...] scripts/bench-hostile.sh [BLOB_MiB=300]
size_mib=${1:-300}
readers=${READERS:-200}   # clients that never read
name=bench-hostile need=""
source "$(dirname "$0")/bench-lib.sh"
bin=${POOLCAST_BIN:-$bin}
start_registry
upload_blob "$size_mib" bench/layer
# A fresh mirror for each scenario (the same cache), so no figure carries another's peak.
mirror_pid=""
fresh_mirror() {
  [ -n "$mirror_pid" ] && kill "$mirror_pid" && wait "$mirror_pid" 2>/dev/null || true
  mirror_port=$(free_port)
  "$bin" mirror --listen "127.0.0.1:$mirror_port" --upstream "http://127.0.0.1:$reg_port" \
    --cache-dir "$work/cache" >>"$work/mirror.log" 2>&1 & pids+=($!)
  mirror_pid=$!
  mirror="http://127.0.0.1:$mirror_port"
  wait_http "$mirror/healthz"
  curl -sf -o /dev/null "$mirror/v2/bench/layer/blobs/$digest"   # cached, and verified once
}
fresh_mirror
cpu_secs() { awk '{printf "%.2f", ($14+$15)/100}' "/proc/$1/stat"; }
rss_mib() { awk '/VmRSS/{printf "%.1f", $2/1024}' "/proc/$1/status"; }

python3 - "$mirror_port" "$digest" "$mirror_pid" <<'EOP'
import socket, sys, threading, time, urllib.request
port, digest, pid = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def hwm(): return int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM")][0].split()[1]) / 1024
def ping():
    t = time.monotonic(); urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=60).read(); return time.monotonic() - t
base = hwm()
def manifest():
    try: urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/bench/layer/manifests/{digest}", timeout=120).read()
    except Exception: pass
askers = [threading.Thread(target=manifest) for _ in range(8)]
for a in askers: a.start()
time.sleep(0.05); slow = ping()
for a in askers: a.join()
print(f"manifest by layer digest, 8 at once: peak RSS +{hwm() - base:.0f} MiB, /v2/ meanwhile {slow*1000:.0f} ms")
EOP

stalled() {  # PORT PATH COUNT PID LABEL
python3 - "$@" <<'EOP'
import socket, sys, time
port, path, count, pid, label = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
def status(key): return int([l for l in open(f"/proc/{pid}/status") if l.startswith(key)][0].split()[1]) / 1024
base = status("VmHWM")
socks = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    socks.append(s)
time.sleep(5)
print(f"{label}: {count} readers that never read: peak RSS +{status('VmHWM') - base:.0f} MiB, RSS now {status('VmRSS'):.0f} MiB")
for s in socks: s.close()
EOP
}
fresh_mirror
stalled "$mirror_port" "/v2/bench/layer/blobs/$digest" "$readers" "$mirror_pid" mirror
fresh_mirror

cpu=$(cpu_secs "$mirror_pid"); hwm=$(peak_rss_mib "$mirror_pid")
for k in $(seq 1 64); do
  curl -s -o /dev/null "$mirror/v2/bench/layer/pieces/$digest?pieceSize=$((k * 65536))"
done
echo "/pieces with 64 piece sizes: $(awk -v a="$cpu" -v b="$(cpu_secs "$mirror_pid")" 'BEGIN{printf "%.1f", b-a}') CPU s, peak RSS $hwm -> $(peak_rss_mib "$mirror_pid") MiB"

agent_port=$(free_port); peer_port=$(free_port)
"$bin" agent --listen "127.0.0.1:$agent_port" --peer-listen "127.0.0.1:$peer_port" --mirror "$mirror" \
  --download-pattern source --pool bench --node bench --cache-dir "$work/agent" >"$work/agent.log" 2>&1 & pids+=($!)
agent_pid=$!
wait_http "http://127.0.0.1:$agent_port/healthz"
curl -sf -o /dev/null "http://127.0.0.1:$agent_port/v2/bench/layer/blobs/$digest"
stalled "$agent_port" "/v2/bench/layer/blobs/$digest" "$readers" "$agent_pid" agent
