#!/usr/bin/env bash
# Puts files of Debian packages into a folder, without installing the packages:
#   fetch_deb.sh SUITE PACKAGE DEST_DIR PATH_IN_PACKAGE...   the given files of one package, flat into DEST_DIR
#   fetch_deb.sh --tree SUITE DEST_ROOT PACKAGE...           the whole of each package, under DEST_ROOT as under /
# e.g. Consul (1.8.7, in no current Debian release nor on PyPI/npm) from bullseye's `consul`, Prometheus (2.42) with
# promtool from bookworm's `prometheus`, and the files its web pages read (its own, and the JavaScript packages its
# symlinks point into, which resolve inside one tree). It asks the mirror the machine's own apt already uses, with a
# private apt state, so the machine's own apt configuration is left untouched.
set -euo pipefail
usage="usage: fetch_deb.sh SUITE PACKAGE DEST_DIR PATH_IN_PACKAGE... | fetch_deb.sh --tree SUITE DEST_ROOT PACKAGE..."
tree=""
if [ "${1:-}" = "--tree" ]; then tree=1; shift; fi
suite=${1:?$usage}
if [ -n "$tree" ]; then
  dest=${2:?$usage}
  shift 2
  packages=("$@")
else
  packages=("${2:?$usage}")
  dest=${3:?$usage}
  shift 3
fi
[ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The first Debian archive URI the machine's apt names (deb822 or one-line format),
# skipping the security archive, which has no plain suite (bullseye, bookworm) of its own.
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  mirror=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}' "$f" | grep -v -- '-security' | head -n1 || true)
  [ -n "$mirror" ] && break
done
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' /etc/apt/sources.list | grep -v -- '-security' | head -n1 || true)
fi
if [ -z "$mirror" ]; then
  echo "fetch_deb: no Debian mirror found in the machine's apt configuration" >&2
  exit 1
fi

mkdir -p "$work/lists/partial" "$work/archives/partial"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
opt=""
[ -f "$keyring" ] && opt="[signed-by=$keyring] "
echo "deb ${opt}${mirror} ${suite} main" > "$work/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
          -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
apt-get -qq "${apt_opts[@]}" update
(cd "$work" && apt-get -qq "${apt_opts[@]}" download "${packages[@]}")
if [ -n "$tree" ]; then
  for package in "${packages[@]}"; do
    dpkg-deb -x "$work"/"${package}"_*.deb "$dest"
    echo "fetch_deb: $package ($suite) into $dest"
  done
  exit 0
fi
package=${packages[0]}
dpkg-deb -x "$work"/"${package}"_*.deb "$work/x"
for path in "$@"; do
  install -m 0755 "$work/x/${path#/}" "$dest/$(basename "$path")"
  echo "fetch_deb: $dest/$(basename "$path") from $package ($suite)"
done
