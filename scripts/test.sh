#!/usr/bin/env bash
# The test command. Installs the real parts the integration tests drive (the CNCF registry,
# skopeo, containerd, htpasswd, and the benchmark tools) when they are missing, then runs every
# test in the workspace. Extra arguments go to `cargo nextest run`.
#
#   scripts/test.sh                         # everything
#   scripts/test.sh --test harness_smoke    # one integration-test binary
#
# Safe to run repeatedly: a machine that has everything skips apt entirely.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package that provides it
tools=(
  "docker-registry:docker-registry"
  "skopeo:skopeo"
  "containerd:containerd"
  "ctr:containerd"
  "htpasswd:apache2-utils"
  "nginx:nginx"
  "wrk:wrk"
  "curl:curl"
)
# nginx lives in /usr/sbin, which a non-login root shell may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

missing=()
for pair in "${tools[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair%%:*}")
done

if ((${#missing[@]})); then
  echo "test.sh: missing ${missing[*]}; installing with apt-get" >&2
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "test.sh: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo -n)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q </dev/null
  "${sudo[@]}" apt-get install -y -q \
    docker-registry skopeo containerd apache2-utils nginx wrk curl </dev/null
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test.sh: cargo-nextest missing; installing it with cargo install" >&2
  cargo install cargo-nextest --locked </dev/null
fi

exec cargo nextest run --workspace --no-fail-fast "$@" </dev/null
