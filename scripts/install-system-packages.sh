#!/usr/bin/env bash
# Installs the Debian packages listed in scripts/system-packages.txt that are not installed yet.
# Idempotent and quiet when everything is present; needs root (CI and our machines run as root).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mapfile -t wanted < <(sed -e 's/#.*//' -e '/^\s*$/d' "$here/system-packages.txt")
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's prometheus package starts its own server on :9090 wherever services may start (policy-rc.d allows
# it, systemd runs). The tests run theirs on free ports; a resident one would only scrape and use memory.
# The same for redis-server (:6379) and postgresql (its default cluster on :5432).
for service in prometheus redis-server postgresql; do
  [[ " ${missing[*]} " == *" $service "* ]] || continue
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now "$service" >/dev/null 2>&1 || true
  elif [ -x "/etc/init.d/$service" ]; then
    $SUDO "/etc/init.d/$service" stop >/dev/null 2>&1 || true
  fi
done
