#!/usr/bin/env bash
# Host packages the guest environment needs (src/guestenv/): nftables enforces sandbox network
# policies on the host (see src/guestenv/netfilter.ts); slirp4netns is a jailed VM's network,
# outside qemu's network namespace (src/vm/jail.ts). Idempotent: a no-op when installed.
#
#   bash scripts/setup-guest-env.sh
set -Eeuo pipefail

PACKAGES=(nftables slirp4netns)

missing=()
for p in "${PACKAGES[@]}"; do
  [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" == "install ok installed" ]] || missing+=("$p")
done
((${#missing[@]} == 0)) && exit 0
if ((EUID != 0)); then
  printf 'corral setup-guest-env: missing packages (%s) and not root: apt-get install them\n' "${missing[*]}" >&2
  exit 1
fi
printf 'corral setup-guest-env: installing %s…\n' "${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2 \
  || { apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 &&
       apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2; }
