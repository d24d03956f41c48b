#!/usr/bin/env bash
# Puts a consul binary (1.8.7, from Debian 11's package) into the folder given as $1.
# Consul is in no current Debian release nor on PyPI/npm, so this asks the mirror
# the machine's own apt already uses for the bullseye suite, with a private apt
# state so the machine's own apt configuration is left untouched.
set -euo pipefail
dest=${1:?usage: fetch_consul.sh DEST_DIR}
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The first Debian archive URI the machine's apt names (deb822 or one-line format),
# skipping the security archive, which has no 'bullseye' suite of its own.
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
  echo "fetch_consul: no Debian mirror found in the machine's apt configuration" >&2
  exit 1
fi

mkdir -p "$work/lists/partial" "$work/archives/partial"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
opt=""
[ -f "$keyring" ] && opt="[signed-by=$keyring] "
echo "deb ${opt}${mirror} bullseye main" > "$work/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
          -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
apt-get -qq "${apt_opts[@]}" update
(cd "$work" && apt-get -qq "${apt_opts[@]}" download consul)
dpkg-deb -x "$work"/consul_*.deb "$work/x"
install -m 0755 "$work/x/usr/bin/consul" "$dest/consul"
# The whole output is read first: head closing the pipe early would fail the script under pipefail.
version=$("$dest/consul" version)
echo "${version%%$'\n'*}"
