#!/usr/bin/env bash
# Fetch VictoriaMetrics from Debian trixie into CACHE_DIR without touching this machine's apt state, and print
# the path of its binary. Bookworm's package (1.79) predates OTLP ingestion (1.92+); trixie's (1.112) has it.
#
#   scripts/fetch-victoria-metrics.sh CACHE_DIR
#
# apt-get runs with a private source list, list directory and cache (all under CACHE_DIR), so the machine's
# /etc/apt, /var/lib/apt/lists and /var/cache/apt never change; the .deb is unpacked with `dpkg -x`, never
# installed. Idempotent: a second run finds the binary and only prints its path.
set -euo pipefail
if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 CACHE_DIR" >&2
    exit 2
fi
mkdir -p "$1"
cache=$(cd "$1" && pwd)
binary=$cache/root/usr/bin/victoria-metrics
# Two runs on one cache (parallel test jobs) take turns; the second finds the first one's binary.
exec 9>"$cache/.lock"
flock 9
if [ -x "$binary" ] && "$binary" -version >/dev/null 2>&1; then
    echo "$binary"
    exit 0
fi

mkdir -p "$cache/sources" "$cache/preferences.d" "$cache/lists/partial" "$cache/apt-cache/archives/partial" "$cache/debs"
cat >"$cache/sources/trixie.sources" <<SOURCES
Types: deb
URIs: ${DEBIAN_MIRROR:-http://deb.debian.org/debian}
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
apt_private=(
    -o Dir::Etc::SourceList=/dev/null
    -o "Dir::Etc::SourceParts=$cache/sources"
    -o "Dir::State::Lists=$cache/lists"
    -o "Dir::Cache=$cache/apt-cache"
    -o Dir::Etc::Preferences=/dev/null
    -o "Dir::Etc::PreferencesParts=$cache/preferences.d"
    -o APT::Sandbox::User=root
)
apt-get -q "${apt_private[@]}" update >&2
(cd "$cache/debs" && rm -f victoria-metrics_*.deb && apt-get -q "${apt_private[@]}" download victoria-metrics/trixie >&2)
deb=$(ls "$cache"/debs/victoria-metrics_*.deb)
rm -rf "$cache/root.new"
dpkg -x "$deb" "$cache/root.new"
rm -rf "$cache/root" && mv "$cache/root.new" "$cache/root"
echo "unpacked victoria-metrics $(dpkg-deb -f "$deb" Version) into $cache/root" >&2
rm -f "$deb"
echo "$binary"
