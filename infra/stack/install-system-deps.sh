#!/usr/bin/env bash
# Installs the Debian packages the local stack runs: haproxy, prometheus, prometheus-alertmanager, chromium
# (headless, for the report test) and iproute2 (`ip`: the network-namespace test hosts of `make test-hosts`).
# As root it runs apt-get; otherwise it prints the exact command and fails.
set -euo pipefail
declare -A pkg=([haproxy]=haproxy [prometheus]=prometheus [prometheus-alertmanager]=prometheus-alertmanager
                [chromium]=chromium [ip]=iproute2)
missing=()
for bin in "${!pkg[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("${pkg[$bin]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing system packages: ${missing[*]}" >&2
  echo "  fix: run as root: sudo sh -c '$cmd'" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}"
# Debian's maintainer scripts would start the packaged services; the stack starts its own instances.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
sh -c "$cmd"
