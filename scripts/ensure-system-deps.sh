#!/usr/bin/env bash
# Installs the Debian packages a target needs (chromium for the HTML report test, nginx, wrk, h2load and
# valgrind for benchmarks) when they are missing. Idempotent; prints what it does. Usage: ensure-system-deps.sh CMD...
set -euo pipefail
declare -A package_for=( [chromium]=chromium [nginx]=nginx-light [wrk]=wrk [valgrind]=valgrind [callgrind_control]=valgrind [h2load]=nghttp2-client [nghttp]=nghttp2-client )
missing=()
for cmd in "$@"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
    missing+=("${package_for[$cmd]:-$cmd}")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "ensure-system-deps: installing ${missing[*]} from Debian packages"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
