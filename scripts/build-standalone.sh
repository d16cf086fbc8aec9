#!/usr/bin/env bash
# Builds wattlens as a self-contained program for hosts without a suitable Python (Ubuntu 22.04's 3.10 is
# fine for pip, RHEL 9's 3.9 and Debian 11's 3.9 are not): PyInstaller bundles the interpreter, the standard
# library and every dependency into one directory tree.
#
#   dist/wattlens-<version>-linux-<arch>.tar.gz  unpacks to wattlens/bin/wattlens (+ wattlens/bin/_internal);
#                                               `tar -C /opt -xzf` gives /opt/wattlens/bin/wattlens, the path
#                                               systemd/wattlens.service runs (docs/bare-metal.md)
#   dist/wattlens-<version>-linux-<arch>.tar.gz.sha256
#
# A directory tree rather than PyInstaller's one-file mode: nothing is unpacked to /tmp at each start (which
# fails where /tmp is noexec, and costs start time), and the unit's hardening applies unchanged.
#
# The program needs a glibc at least as new as the build host's: build on the oldest distribution to support.
# The release workflow builds in Debian 11 (glibc 2.31: Debian 11+, Ubuntu 20.04+, RHEL 9+).
#
#   PYTHON=path   a Python >= 3.10 with PyInstaller installed (pip install '.[dev]'), built with a shared
#                 libpython (Debian: apt-get install libpython3.X); default: python3
# The Kubernetes API watch (kubernetes_api) is left out: it is a DaemonSet feature, and the image has it.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
version=$("$python" -c 'import exporter; print(exporter.__version__)')
arch=$(uname -m)
out=build/standalone
name="wattlens-$version-linux-$arch"

# Meters are imported by name when tried (exporter/meters/registry.py), which PyInstaller cannot follow: every
# module of exporter.meters is collected, so a new meter needs no line here.
"$python" -m PyInstaller --noconfirm --log-level WARN --onedir --strip --name wattlens \
    --distpath "$out/dist" --workpath "$out/work" --specpath "$out" --paths "$PWD" \
    --hidden-import uvloop._noop --collect-submodules exporter.meters \
    --exclude-module kubernetes_asyncio --exclude-module aiohttp --exclude-module tkinter \
    --exclude-module pytest --exclude-module _pytest --exclude-module hypothesis --exclude-module setuptools \
    --exclude-module pip --exclude-module mypy --exclude-module pydantic.mypy --exclude-module kubernetes_validate \
    exporter/__main__.py

rm -rf "$out/stage" && mkdir -p "$out/stage/wattlens/bin"
cp -a "$out/dist/wattlens/." "$out/stage/wattlens/bin/"
"$out/stage/wattlens/bin/wattlens" --version >/dev/null  # it runs here, at least
mkdir -p dist
tar -C "$out/stage" --owner=0 --group=0 --numeric-owner -czf "dist/$name.tar.gz" wattlens
(cd dist && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
echo "dist/$name.tar.gz: $(du -h "dist/$name.tar.gz" | cut -f1) compressed, $(du -sh "$out/stage/wattlens" | cut -f1) unpacked"
