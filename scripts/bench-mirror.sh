#!/usr/bin/env bash
# Hot-cache throughput of one blob through the mirror against nginx (sendfile on) serving the
# same file, and the latency a cached manifest HEAD adds, measured in one run on loopback.
#   usage: scripts/bench-mirror.sh [BLOB_MiB=1024] [RUNS=7]
size_mib=${1:-1024}
runs=${2:-7}
name=bench-mirror need="nginx skopeo"
source "$(dirname "$0")/bench-lib.sh"
start_registry
mirror_port=$(free_port); nginx_port=$(free_port)
upload_blob "$size_mib" bench/blob
# A one-layer image for the manifest HEAD figures.
python3 - "$work/img" <<'EOP'
import hashlib, json, os, sys
root = sys.argv[1]; os.makedirs(f"{root}/blobs/sha256")
def put(b):
    h = hashlib.sha256(b).hexdigest(); open(f"{root}/blobs/sha256/{h}", "wb").write(b); return {"digest": "sha256:" + h, "size": len(b)}
layer = put(b"\0" * 1024)
cfg = put(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode())
man = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": dict(cfg, mediaType="application/vnd.oci.image.config.v1+json"),
    "layers": [dict(layer, mediaType="application/vnd.oci.image.layer.v1.tar")]}).encode())
json.dump({"schemaVersion": 2, "manifests": [dict(man, mediaType="application/vnd.oci.image.manifest.v1+json",
    annotations={"org.opencontainers.image.ref.name": "v1"})]}, open(f"{root}/index.json", "w"))
open(f"{root}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
EOP
skopeo copy -q --dest-tls-verify=false "oci:$work/img:v1" "docker://127.0.0.1:$reg_port/bench/app:v1"

"$bin" mirror --listen "127.0.0.1:$mirror_port" --upstream "http://127.0.0.1:$reg_port" --cache-dir "$work/cache" \
  --manifest-ttl 1h >"$work/mirror.log" 2>&1 & pids+=($!)
mirror_pid=$!
wait_http "http://127.0.0.1:$mirror_port/healthz"
blob_url="http://127.0.0.1:$mirror_port/v2/bench/blob/blobs/$digest"
curl -sf -o /dev/null "$blob_url"   # warm the cache (and the mirror's one-time verification)
curl -sf -o /dev/null "$blob_url"
cached="$work/cache/blobs/sha256/${digest#sha256:}"
[ -f "$cached" ] || { echo "bench-mirror: blob not in the mirror cache" >&2; exit 1; }

mkdir -p "$work/www"
ln "$cached" "$work/www/blob" 2>/dev/null || cp "$cached" "$work/www/blob"
nginx_user=""; [ "$(id -u)" = 0 ] && nginx_user="user root;"   # the cache file is private to its owner
cat > "$work/nginx.conf" <<EON
$nginx_user
daemon off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path $work/nginx-tmp;
  proxy_temp_path $work/nginx-tmp;
  fastcgi_temp_path $work/nginx-tmp;
  uwsgi_temp_path $work/nginx-tmp;
  scgi_temp_path $work/nginx-tmp;
  server { listen 127.0.0.1:$nginx_port; root $work/www; }
}
EON
mkdir -p "$work/nginx-tmp"
nginx -c "$work/nginx.conf" -e "$work/nginx-error.log" 2>/dev/null & pids+=($!)
wait_http "http://127.0.0.1:$nginx_port/blob"
curl -sf -o /dev/null "http://127.0.0.1:$nginx_port/blob" || { echo "bench-mirror: nginx cannot serve the blob" >&2; cat "$work/nginx-error.log" >&2; exit 1; }

speed() { curl -sf -o /dev/null -w '%{speed_download}\n' "$1"; }
median() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
: > "$work/mirror.speeds"; : > "$work/nginx.speeds"
for _ in $(seq "$runs"); do   # interleaved, so both see the same machine state
  speed "$blob_url" >> "$work/mirror.speeds"
  speed "http://127.0.0.1:$nginx_port/blob" >> "$work/nginx.speeds"
done
m=$(median < "$work/mirror.speeds"); n=$(median < "$work/nginx.speeds")

heads=400
urls() { for _ in $(seq "$heads"); do printf 'url = "%s"\noutput = "/dev/null"\n' "$1"; done; }
latency() {  # one connection, kept alive; per-request total time in ms
  urls "$1" > "$work/urls"
  curl -s -I -K "$work/urls" -H 'Accept: application/vnd.oci.image.manifest.v1+json' -w '%{time_total}\n' \
    | awk '{print $1*1000}' | sort -g > "$work/lat"
  awk -v n="$heads" '{a[NR]=$1} END{printf "%.3f %.3f\n", a[int(n/2)], a[int(n*0.99)]}' "$work/lat"
}
curl -s -I -o /dev/null "http://127.0.0.1:$mirror_port/v2/bench/app/manifests/v1"   # cache the tag
read -r mp50 mp99 < <(latency "http://127.0.0.1:$mirror_port/v2/bench/app/manifests/v1")
read -r rp50 rp99 < <(latency "http://127.0.0.1:$reg_port/v2/bench/app/manifests/v1")

awk -v m="$m" -v n="$n" -v size="$size_mib" -v runs="$runs" 'BEGIN{
  printf "hot blob (%d MiB, median of %d, loopback):\n", size, runs;
  printf "  mirror  %8.0f MiB/s\n  nginx   %8.0f MiB/s (sendfile on)\n  ratio   %8.2f of nginx\n", m/1048576, n/1048576, m/n }'
echo "  mirror peak RSS: $(peak_rss_mib "$mirror_pid") MiB"
echo "cached manifest HEAD, one kept-alive connection, $heads requests:"
echo "  through the mirror: p50 ${mp50} ms, p99 ${mp99} ms"
echo "  registry directly:  p50 ${rp50} ms, p99 ${rp99} ms"
