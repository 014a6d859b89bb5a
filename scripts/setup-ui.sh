#!/usr/bin/env bash
# corral setup, UI part: Debian's chromium, which the inspector test drives headless through
# playwright-core (test/inspector). Called by scripts/setup.sh; safe to run alone. A no-op
# when chromium is installed. Playwright's own browser download is never used: the browser
# comes from Debian's packages like everything else the project installs.
set -Eeuo pipefail

log() { printf 'corral setup-ui: %s\n' "$*" >&2; }

installed() {
  [[ $(dpkg-query -W -f='${Status}' chromium 2>/dev/null || true) == "install ok installed" ]]
}

installed && exit 0
if ((EUID != 0)); then
  log "chromium is missing and this is not root: apt-get install chromium (the inspector test is skipped without it)"
  exit 0
fi
log "installing chromium…"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium >&2
installed || { log "chromium is still not installed after apt-get"; exit 1; }
log "chromium $(dpkg-query -W -f='${Version}' chromium)"
