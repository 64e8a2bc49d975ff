# Shared by the benchmark scripts: a work dir cleaned on exit, a release build, a registry with
# one random blob. Source it after setting `name` (used in messages) and `need` (tools).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
for tool in docker-registry curl python3 $need; do
  command -v "$tool" >/dev/null || { echo "$name: $tool is missing (run scripts/test.sh once, or apt-get install it)" >&2; exit 1; }
done
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin poolcast
bin="$root/target/release/poolcast"
work=$(mktemp -d /tmp/poolcast-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "$name: $1 did not come up" >&2; exit 1; }
peak_rss_mib() { awk '/VmHWM/{printf "%.1f", $2/1024}' "/proc/$1/status"; }

# start_registry: sets reg_port and starts the CNCF registry on it.
start_registry() {
  reg_port=$(free_port)
  cat > "$work/registry.yml" <<EOR
version: 0.1
storage: { filesystem: { rootdirectory: $work/registry } }
http: { addr: 127.0.0.1:$reg_port }
log: { level: error, accesslog: { disabled: true } }
EOR
  docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 & pids+=($!)
  wait_http "http://127.0.0.1:$reg_port/v2/"
}

# upload_blob MiB REPO: a random blob pushed to REPO; sets `digest` and keeps it at $work/blob.
upload_blob() {
  echo "$name: making a $1 MiB blob" >&2
  head -c $(($1 << 20)) /dev/urandom > "$work/blob"
  digest="sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)"
  local loc sep
  loc=$(curl -s -D - -o /dev/null -X POST "http://127.0.0.1:$reg_port/v2/$2/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
  case "$loc" in http*) ;; *) loc="http://127.0.0.1:$reg_port$loc" ;; esac
  sep='?'; [[ "$loc" == *\?* ]] && sep='&'
  curl -sf -X PUT -H "Content-Type: application/octet-stream" -T "$work/blob" "${loc}${sep}digest=$digest" -o /dev/null
}

# metric URL NAME: the sum of a Prometheus metric's samples.
metric() { curl -s "$1/metrics" | awk -v m="$2" '$1==m || index($1, m"{")==1 {s+=$2} END{printf "%.0f", s}'; }
