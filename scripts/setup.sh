#!/usr/bin/env bash
# corral setup: host packages, npm deps, and the guest artifacts (kernel, agent, initramfs,
# base image, upper-disk template), cached by a hash of their inputs.
#
#   scripts/setup.sh            install/build what is missing or stale (a no-op when all is current)
#   scripts/setup.sh --check    boot the cached artifacts once and wait for the agent's HELLO
#   scripts/setup.sh --only kernel|agent|jail|initramfs|base|upper   (developer aid: build one step)
#
# Cache: ${CORRAL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/corral} (as src/runtime/artifacts.ts)
#   kernel/<hash>/{vmlinux,config,version}
#   agent/<hash>/corral-agent
#   jail/<hash>/corral-jail    (the VM process launcher, a host binary: native/jail)
#   initramfs/<hash>/initramfs.cpio
#   images/corral-base/<hash>/{rootfs.erofs,config.json}
#   upper/<hash>/upper.ext4
#   artifacts.json             <- the only file the TypeScript runtime reads
# Each <hash> directory is built as .tmp-* next to it and renamed into place (atomic); a
# step whose inputs (files, package versions, and the text of the step's own bash function)
# did not change is skipped.
#
# The qemu command line that boots these artifacts (qemu 7.2, TCG; boot_check below runs it):
#   qemu-system-x86_64 \
#     -M microvm,acpi=off,x-option-roms=off,isa-serial=on,rtc=on,pit=on,pic=on \
#     -m 256 -smp 1 -cpu max -accel tcg \
#     -nodefaults -no-user-config -nographic -no-reboot \
#     -kernel vmlinux -initrd initramfs.cpio \
#     -append "console=ttyS0 quiet reboot=t panic=-1 cryptomgr.notests mitigations=off audit=0
#              8250.nr_uarts=1 random.trust_cpu=on tsc_early_khz=<host kHz> noapictimer
#              corral.lower=/dev/vda corral.lowerfs=erofs corral.upper=/dev/vdb corral.hostname=NAME" \
#     -serial file:console.log \
#     -device virtio-serial-device \
#     -chardev socket,id=agent,path=AGENT.sock      (host listens; or server=on,wait=off) \
#     -device virtserialport,chardev=agent,name=corral.agent \
#     -drive id=lower,file=rootfs.erofs,format=raw,if=none,read-only=on \
#     -device virtio-blk-device,drive=lower         (first -device virtio-blk-device = /dev/vda) \
#     -drive id=upper,file=upper.ext4,format=raw,if=none \
#     -device virtio-blk-device,drive=upper         (second = /dev/vdb) \
#     -qmp unix:QMP.sock,server=on,wait=off
# `noapictimer` is for TCG only (see the findings above boot_check); under KVM use -cpu host.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CORRAL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/corral}"
STEP="(start)"

log() { printf 'corral setup: %s\n' "$*" >&2; }
die() { printf 'corral setup: FAILED in step "%s": %s\n' "$STEP" "$*" >&2; exit 1; }
on_err() {
  local rc=$?
  printf 'corral setup: FAILED in step "%s" (exit %s, line %s)\n' "$STEP" "$rc" "${BASH_LINENO[0]}" >&2
  exit "$rc"
}
trap on_err ERR

TMPDIRS=()
cleanup() { local d; for d in "${TMPDIRS[@]}"; do [[ -n "$d" && -e "$d" ]] && rm -rf -- "$d"; done; return 0; }
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# helpers

sha() { sha256sum | cut -c1-16; }

# hash of: the text of the named bash functions (the build recipe) + extra strings on stdin
recipe_hash() {
  { declare -f "$@"; cat; } | sha
}

pkgver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none; }

# new_tmp KIND HASH -> sets TMP to a fresh temp dir next to the final one (same filesystem)
new_tmp() {
  mkdir -p "$CACHE/$1"
  TMP="$(mktemp -d "$CACHE/$1/.tmp-$2-XXXXXX")"
  TMPDIRS+=("$TMP")
}

# publish TMPDIR FINAL: atomic rename; if another run won the race, keep theirs
publish() {
  chmod 755 "$1"
  if ! mv -T -- "$1" "$2" 2>/dev/null; then
    [[ -d "$2" ]] || die "could not move $1 to $2"
    rm -rf -- "$1"
  fi
}

json_str() { # minimal JSON string escaping (paths and versions only)
  local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"
}

# ---------------------------------------------------------------------------------------------
# 1. Debian packages

PACKAGES=(qemu-system-x86 qemu-utils busybox-static erofs-utils e2fsprogs linux-source-6.1 build-essential
  bc flex bison libelf-dev libssl-dev cpio musl-tools xz-utils docker-registry nats-server)

missing_packages() { # prints the packages of "$@" that are not installed (one dpkg-query call)
  local -A ok=()
  local pkg status
  while read -r pkg status; do
    [[ $status == "install ok installed" ]] && ok[${pkg%%:*}]=1
  done < <(dpkg-query -W -f='${Package} ${Status}\n' "$@" 2>/dev/null || true)
  for pkg in "$@"; do [[ -n ${ok[$pkg]:-} ]] || printf '%s\n' "$pkg"; done
}

step_packages() {
  STEP="debian packages"
  local missing
  mapfile -t missing < <(missing_packages "${PACKAGES[@]}")
  ((${#missing[@]} == 0)) && return 0
  ((EUID == 0)) || die "missing packages (${missing[*]}) and not root: run as root or apt-get install them"
  log "installing ${missing[*]}…"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2
  mapfile -t missing < <(missing_packages "${PACKAGES[@]}")
  ((${#missing[@]} == 0)) || die "still missing after apt-get install: ${missing[*]}"
}

# ---------------------------------------------------------------------------------------------
# 2. npm

step_npm() {
  STEP="npm dependencies"
  [[ -f "$ROOT/package.json" ]] || return 0
  local stamp="$ROOT/node_modules/.package-lock.json"
  if [[ -f "$ROOT/package-lock.json" ]]; then
    if [[ ! -d "$ROOT/node_modules" || ! -f "$stamp" || "$ROOT/package-lock.json" -nt "$stamp" ]]; then
      log "npm ci…"
      (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error) >&2
      touch "$stamp"
    fi
  elif [[ ! -d "$ROOT/node_modules" ]]; then
    log "npm install…"
    (cd "$ROOT" && npm install --no-audit --no-fund --loglevel=error) >&2
  fi
}

# ---------------------------------------------------------------------------------------------
# 3a. guest kernel

KERNEL_TARBALL=/usr/src/linux-source-6.1.tar.xz
KERNEL_FRAGMENT="$ROOT/native/kernel/corral.config"

build_kernel() { # $1 = temp output dir
  local out=$1 src="$1/src"
  mkdir -p "$src"
  tar -xJf "$KERNEL_TARBALL" -C "$src" --strip-components=1 \
    --exclude='*/tools/testing'
  local mk=(make -C "$src" -s ARCH=x86_64 KBUILD_BUILD_USER=corral KBUILD_BUILD_HOST=corral
    KBUILD_BUILD_TIMESTAMP="corral")
  { "${mk[@]}" tinyconfig &&
    (cd "$src" && ./scripts/kconfig/merge_config.sh -m -O . .config "$KERNEL_FRAGMENT") &&
    "${mk[@]}" olddefconfig; } >"$out/config.log" 2>&1 || { cat "$out/config.log" >&2; die "kernel configuration failed"; }
  # every option of the fragment must have survived olddefconfig
  local missing=() line opt val got
  while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
      opt=${BASH_REMATCH[1]} val=${BASH_REMATCH[2]}
      got=$(grep -m1 "^$opt=" "$src/.config" | cut -d= -f2- || true)
      [[ "$got" == "$val" ]] || missing+=("$opt=$val (got: ${got:-not set})")
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set ]]; then
      opt=${BASH_REMATCH[1]}
      if grep -q "^$opt=" "$src/.config"; then missing+=("$opt unset (got: set)"); fi
    fi
  done <"$KERNEL_FRAGMENT"
  if ((${#missing[@]})); then
    printf '  %s\n' "${missing[@]}" >&2
    die "kernel options of native/kernel/corral.config did not land after olddefconfig (above)"
  fi
  "${mk[@]}" -j"$(nproc)" vmlinux >"$out/build.log" 2>&1 || { tail -40 "$out/build.log" >&2; die "kernel build failed"; }
  cp "$src/vmlinux" "$out/vmlinux"
  cp "$src/.config" "$out/config"
  "${mk[@]}" kernelrelease >"$out/version"
  rm -rf "$src" "$out/build.log" "$out/config.log"
}

step_kernel() {
  STEP="guest kernel"
  [[ -f $KERNEL_TARBALL ]] || die "$KERNEL_TARBALL missing (package linux-source-6.1)"
  [[ -f $KERNEL_FRAGMENT ]] || die "$KERNEL_FRAGMENT missing"
  # inputs: the fragment's options (not its comments), the source package, the compiler, the recipe
  KERNEL_HASH=$({ grep -E '^(CONFIG_|# CONFIG_[A-Za-z0-9_]+ is not set)' "$KERNEL_FRAGMENT"
    pkgver linux-source-6.1; gcc --version | head -1; } | recipe_hash build_kernel)
  KERNEL_DIR="$CACHE/kernel/$KERNEL_HASH"
  if [[ -f "$KERNEL_DIR/vmlinux" ]]; then log "kernel cached"; return 0; fi
  log "building kernel (~5 min on 2 idle cores, longer on a busy host)…"
  local t0=$SECONDS
  new_tmp kernel "$KERNEL_HASH"
  build_kernel "$TMP"
  publish "$TMP" "$KERNEL_DIR"
  log "kernel $(cat "$KERNEL_DIR/version") built in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------------------------
# 3b. guest agent (static, PID 1)

AGENT_SRC="$ROOT/native/agent"

build_agent() { # $1 = temp output dir
  if [[ -n "${CORRAL_AGENT_BIN:-}" ]]; then
    install -m 755 "$CORRAL_AGENT_BIN" "$1/corral-agent"
  else
    make -C "$AGENT_SRC" -s OUT="$1" >&2
  fi
  [[ -x "$1/corral-agent" ]] || die "agent build produced no $1/corral-agent"
  if file_is_dynamic "$1/corral-agent"; then die "corral-agent is not a static binary"; fi
}

file_is_dynamic() { # true if the ELF has a PT_INTERP (program interpreter)
  LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'
}

step_agent() {
  STEP="guest agent"
  local inputs
  if [[ -n "${CORRAL_AGENT_BIN:-}" ]]; then
    [[ -f "$CORRAL_AGENT_BIN" ]] || die "CORRAL_AGENT_BIN=$CORRAL_AGENT_BIN does not exist"
    inputs=$(sha256sum <"$CORRAL_AGENT_BIN")
  else
    local n=0
    while [[ ! -f "$AGENT_SRC/Makefile" ]]; do
      [[ -n "${CORRAL_WAIT_AGENT:-}" ]] || die "$AGENT_SRC/Makefile missing (set CORRAL_AGENT_BIN=prebuilt-binary to use one)"
      ((n++ == 0)) && log "waiting for $AGENT_SRC/Makefile…"
      sleep 5
    done
    inputs=$(cd "$AGENT_SRC" && find . -type f \( -name '*.c' -o -name '*.h' -o -name 'Makefile' -o -name '*.mk' \) \
      -not -path './build/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum;
      musl-gcc --version 2>/dev/null | head -1; gcc --version | head -1; pkgver musl-tools)
  fi
  AGENT_HASH=$(printf '%s\n' "$inputs" | recipe_hash build_agent file_is_dynamic)
  AGENT_DIR="$CACHE/agent/$AGENT_HASH"
  if [[ -x "$AGENT_DIR/corral-agent" ]]; then log "agent cached"; return 0; fi
  log "building agent…"
  new_tmp agent "$AGENT_HASH"
  build_agent "$TMP"
  publish "$TMP" "$AGENT_DIR"
}

# ---------------------------------------------------------------------------------------------
# 3b'. VM process launcher (static, runs on the host): each qemu starts jailed through it

JAIL_SRC="$ROOT/native/jail"

build_jail() { # $1 = temp output dir
  make -C "$JAIL_SRC" -s OUT="$1" >&2
  [[ -x "$1/corral-jail" ]] || die "jail build produced no $1/corral-jail"
  if file_is_dynamic "$1/corral-jail"; then die "corral-jail is not a static binary"; fi
}

step_jail() {
  STEP="VM launcher (corral-jail)"
  local inputs
  inputs=$(cd "$JAIL_SRC" && find . -type f \( -name '*.c' -o -name 'Makefile' \) -not -path './build/*' -print0 |
    LC_ALL=C sort -z | xargs -0 sha256sum; musl-gcc --version 2>/dev/null | head -1; gcc --version | head -1; pkgver musl-tools)
  JAIL_HASH=$(printf '%s\n' "$inputs" | recipe_hash build_jail file_is_dynamic)
  JAIL_DIR="$CACHE/jail/$JAIL_HASH"
  if [[ -x "$JAIL_DIR/corral-jail" ]]; then log "VM launcher cached"; return 0; fi
  log "building VM launcher…"
  new_tmp jail "$JAIL_HASH"
  build_jail "$TMP"
  publish "$TMP" "$JAIL_DIR"
}

# ---------------------------------------------------------------------------------------------
# 3c. initramfs: /init (the agent) + the mount points it needs, uncompressed newc cpio
# (uncompressed: nothing to decompress under TCG, and the agent is small)

build_initramfs() { # $1 = temp output dir, $2 = agent binary
  local st="$1/staging"
  mkdir -p "$st"/{dev,proc,sys,mnt/lower,mnt/upper,mnt/root,tmp}
  install -m 755 "$2" "$st/init"
  chmod 1777 "$st/tmp"
  # the kernel opens /dev/console for PID 1 before /init runs (devtmpfs is not mounted yet)
  if ((EUID == 0)); then mknod -m 600 "$st/dev/console" c 5 1; mknod -m 666 "$st/dev/null" c 1 3; fi
  find "$st" -exec touch -h -d @0 {} +
  (cd "$st" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) >"$1/initramfs.cpio"
  rm -rf "$st"
}

step_initramfs() {
  STEP="initramfs"
  INITRAMFS_HASH=$(printf '%s\n' "$AGENT_HASH" "$EUID" | recipe_hash build_initramfs)
  INITRAMFS_DIR="$CACHE/initramfs/$INITRAMFS_HASH"
  if [[ -f "$INITRAMFS_DIR/initramfs.cpio" ]]; then log "initramfs cached"; return 0; fi
  log "building initramfs…"
  new_tmp initramfs "$INITRAMFS_HASH"
  build_initramfs "$TMP" "$AGENT_DIR/corral-agent"
  publish "$TMP" "$INITRAMFS_DIR"
}

# ---------------------------------------------------------------------------------------------
# 3d. default image corral/base: busybox rootfs as a read-only erofs image + its config

BUSYBOX=/bin/busybox

build_base_image() { # $1 = temp output dir
  local st="$1/rootfs"
  # merged-/usr layout: everything in usr/bin; bin, sbin and usr/sbin point at it
  mkdir -p "$st"/{usr/bin,etc,dev,proc,sys,mnt,run,tmp,var/tmp,root,home}
  ln -s usr/bin "$st/bin"; ln -s usr/bin "$st/sbin"; ln -s bin "$st/usr/sbin"
  chmod 1777 "$st/tmp" "$st/var/tmp"; chmod 700 "$st/root"
  install -m 755 "$BUSYBOX" "$st/usr/bin/busybox"
  # one symlink per applet (sh, env, mount, …), all to the host busybox's own path,
  # /usr/bin/busybox or /bin/busybox: both resolve in this layout
  "$BUSYBOX" --install -s "$st/usr/bin"
  [[ -L "$st/usr/bin/sh" ]] || die "busybox --install made no sh"
  cat >"$st/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
  cat >"$st/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
GROUP
  cat >"$st/etc/hosts" <<'HOSTS'
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
HOSTS
  printf 'hosts: files dns\n' >"$st/etc/nsswitch.conf"
  : >"$st/etc/resolv.conf"
  printf 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n' >"$st/etc/profile"
  find "$st" -exec touch -h -d @0 {} +
  # uncompressed: the image is ~2 MB and decompression costs more than reads under TCG
  mkfs.erofs --quiet --all-root -T0 -U 00000000-0000-0000-0000-000000000000 "$1/rootfs.erofs" "$st" >/dev/null 2>&1 \
    || mkfs.erofs --all-root -T0 "$1/rootfs.erofs" "$st" >&2
  cat >"$1/config.json" <<'JSON'
{
  "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
  "entrypoint": [],
  "cmd": ["/bin/sh"],
  "workdir": "/",
  "user": "0:0"
}
JSON
  rm -rf "$st"
}

step_base_image() {
  STEP="base image corral/base"
  [[ -x $BUSYBOX ]] || die "$BUSYBOX missing (package busybox-static)"
  file_is_dynamic "$BUSYBOX" && die "$BUSYBOX is not static (install busybox-static, not busybox)"
  BASE_HASH=$(printf '%s\n' "$(pkgver busybox-static)" "$(pkgver erofs-utils)" | recipe_hash build_base_image)
  BASE_DIR="$CACHE/images/corral-base/$BASE_HASH"
  if [[ -f "$BASE_DIR/rootfs.erofs" ]]; then log "image corral/base cached"; return 0; fi
  log "building image corral/base…"
  new_tmp images/corral-base "$BASE_HASH"
  build_base_image "$TMP"
  publish "$TMP" "$BASE_DIR"
}

# ---------------------------------------------------------------------------------------------
# 3e. upper-disk template: sparse ext4 with upper/ and work/ (copied per sandbox with
# cp --sparse=always, or a qcow2 overlay on a template's copy). A journal: the virtual disk
# has a volatile write cache (a qcow2 overlay maps a newly written cluster only at the
# guest's next flush), so a killed VM loses what was not flushed, and only a journaled fs
# comes back consistent from that (without one, files written and synced before a kill came
# back missing or "Structure needs cleaning" in 3 of 12 restarts). A 4 MiB journal: sandbox
# writes are small, and a journal's zeroes are holes. No metadata_csum (crc32c in software is
# slow under TCG); inode tables zeroed up front so the guest runs no lazyinit.

UPPER_SIZE=1G

build_upper() { # $1 = temp output dir
  local st="$1/staging"
  mkdir -p "$st/upper" "$st/work"
  truncate -s "$UPPER_SIZE" "$1/upper.ext4"
  mkfs.ext4 -F -q -L corral-upper -m 0 -O ^metadata_csum -J size=4 \
    -E root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0,nodiscard -d "$st" "$1/upper.ext4"
  fallocate --dig-holes "$1/upper.ext4" 2>/dev/null || true # zeroed inode tables -> holes
  rm -rf "$st"
}

step_upper() {
  STEP="upper-disk template"
  UPPER_HASH=$(printf '%s\n' "$(pkgver e2fsprogs)" "$UPPER_SIZE" | recipe_hash build_upper)
  UPPER_DIR="$CACHE/upper/$UPPER_HASH"
  if [[ -f "$UPPER_DIR/upper.ext4" ]]; then log "upper template cached"; return 0; fi
  log "building upper-disk template…"
  new_tmp upper "$UPPER_HASH"
  build_upper "$TMP"
  publish "$TMP" "$UPPER_DIR"
}

# ---------------------------------------------------------------------------------------------
# 3f. artifacts.json (the runtime's only entry point into the cache), written atomically

host_tsc_khz() { # the host's TSC frequency in kHz, for tsc_early_khz= (empty if unknown)
  local mhz
  mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | head -1 || true)
  [[ -n $mhz ]] || mhz=$(sed -n 's/^cpu MHz[[:space:]]*: *\([0-9.]*\)/\1/p' /proc/cpuinfo | head -1)
  [[ -n $mhz ]] && awk -v m="$mhz" 'BEGIN { printf "%d", m * 1000 + 0.5 }'
  return 0
}

step_manifest() {
  STEP="artifacts.json"
  local qemu tsc; qemu=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 not found"
  tsc=$(host_tsc_khz)
  local out="$CACHE/artifacts.json" tmp="$CACHE/.artifacts.json.$$"
  TMPDIRS+=("$tmp")
  cat >"$tmp" <<JSON
{
  "kernel": $(json_str "$KERNEL_DIR/vmlinux"),
  "kernelVersion": $(json_str "$(cat "$KERNEL_DIR/version")"),
  "kernelConfig": $(json_str "$KERNEL_DIR/config"),
  "initramfs": $(json_str "$INITRAMFS_DIR/initramfs.cpio"),
  "agent": $(json_str "$AGENT_DIR/corral-agent"),
  "jail": $(json_str "$JAIL_DIR/corral-jail"),
  "images": {
    "corral/base": {
      "rootfs": $(json_str "$BASE_DIR/rootfs.erofs"),
      "fstype": "erofs",
      "config": $(json_str "$BASE_DIR/config.json")
    }
  },
  "upperTemplate": $(json_str "$UPPER_DIR/upper.ext4"),
  "qemu": $(json_str "$qemu"),
  "tscKhz": ${tsc:-null},
  "hashes": {
    "kernel": "$KERNEL_HASH",
    "agent": "$AGENT_HASH",
    "jail": "$JAIL_HASH",
    "initramfs": "$INITRAMFS_HASH",
    "corral/base": "$BASE_HASH",
    "upperTemplate": "$UPPER_HASH"
  }
}
JSON
  if cmp -s "$tmp" "$out"; then rm -f "$tmp"; else mv -f "$tmp" "$out"; log "wrote $out"; fi
}

# ---------------------------------------------------------------------------------------------
# 4. boot check: one cold boot of the cached artifacts, until the agent's HELLO
#
# Findings (qemu 7.2 microvm, TCG, 2-core host under load from other jobs; this kernel):
# - microvm accepts acpi=off,x-option-roms=off,isa-serial=on,rtc=on,pit=on,pic=on. With
#   acpi=off qemu appends virtio_mmio.device=512@0xfeb00e00:12 … (one per -device, highest
#   address first) and qboot provides an MP table (SMP works: -smp 2 boots).
# - Block devices: the first `-device virtio-blk-device` on the command line is /dev/vda, the
#   second /dev/vdb (checked via /sys/block/vd*/ro and size).
# - Spawn -> /init ~0.65-0.85 s (guest CLOCK_BOOTTIME at /init 0.65-0.96 s); ~80 ms of it is
#   qemu start before the guest runs. About 250 ms of that is the kernel calibrating the
#   local APIC timer against the PIT (TCG has no TSC-deadline timer; `-cpu max,+tsc-deadline`
#   is refused). `noapictimer` skips it: /init at ~0.45-0.6 s; the cost is a little more
#   idle CPU (PIT as the clock event: 1.6 % vs 0.8 % with 1 vCPU, 4.6 % vs 3.2 % with 2).
#   `-cpu qemu64` is ~40 ms faster than `-cpu max` but lacks x86-64-v2 (SSE4.2, POPCNT)
#   that current distro binaries may need: keep `max`.
# - Power-off: with no ACPI the kernel cannot power off: reboot(RB_POWER_OFF) prints
#   "System halted" and qemu keeps running. reboot(RB_AUTOBOOT) with `reboot=t` and
#   `-no-reboot` makes qemu exit ~30 ms later.
# - With the agent (and noapictimer): spawn -> HELLO 0.75-1.3 s on a loaded host (load 4-5
#   on 2 cores; guest CLOCK_BOOTTIME at HELLO 0.54-0.88 s, of which the agent's own init
#   -- mounting erofs/ext4/overlay, devpts, lo -- 86-145 ms); SHUTDOWN -> qemu exit ~50 ms.
# - Kernel build: 13-21 min on 2 cores shared with other jobs (~5 min on an idle machine);
#   vmlinux 21 MB. The fragment check runs right after olddefconfig (~30 s in), so a bad
#   fragment fails fast.

boot_check() {
  STEP="boot check"
  local m="$CACHE/artifacts.json"
  [[ -f $m ]] || die "no $m: run scripts/setup.sh first"
  command -v node >/dev/null || die "node not found"
  local dir; dir=$(mktemp -d "${TMPDIR:-/tmp}/corral-check.XXXXXX"); TMPDIRS+=("$dir")
  log "boot check (cold boot under ${CORRAL_ACCEL:-tcg})…"
  CHECK_DIR="$dir" MANIFEST="$m" ACCEL="${CORRAL_ACCEL:-tcg}" node --input-type=module -e "$BOOT_CHECK_JS" >&2 \
    || { log "console output:"; sed 's/^/  | /' "$dir/console.log" >&2 || true; die "the VM did not boot to the agent's HELLO"; }
  if [[ -n "${CORRAL_CHECK_VERBOSE:-}" ]]; then log "console output:"; sed 's/^/  | /' "$dir/console.log" >&2; fi
}

BOOT_CHECK_JS=$(cat <<'JS'
import { spawn } from 'node:child_process';
import { readFileSync, copyFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { execFileSync } from 'node:child_process';
const env = process.env, dir = env.CHECK_DIR;
const a = JSON.parse(readFileSync(env.MANIFEST, 'utf8'));
const base = a.images['corral/base'];
const upper = `${dir}/upper.ext4`;
execFileSync('cp', ['--sparse=always', a.upperTemplate, upper]);
const agentSock = `${dir}/agent.sock`;
const cmdline = ['console=ttyS0', 'quiet', 'reboot=t', 'panic=-1', 'cryptomgr.notests', 'mitigations=off',
  'audit=0', '8250.nr_uarts=1', 'random.trust_cpu=on', ...(a.tscKhz ? [`tsc_early_khz=${a.tscKhz}`] : []),
  ...(env.ACCEL === 'tcg' ? ['noapictimer'] : []),
  'corral.lower=/dev/vda', `corral.lowerfs=${base.fstype}`, 'corral.upper=/dev/vdb', 'corral.hostname=corral-check'];
const argv = ['-M', 'microvm,acpi=off,x-option-roms=off,isa-serial=on,rtc=on,pit=on,pic=on',
  '-accel', env.ACCEL, '-cpu', env.ACCEL === 'kvm' ? 'host' : 'max', '-m', '256', '-smp', '1',
  '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
  '-kernel', a.kernel, '-initrd', a.initramfs, '-append', cmdline.join(' '),
  '-serial', `file:${dir}/console.log`,
  '-device', 'virtio-serial-device',
  '-chardev', `socket,id=agent,path=${agentSock}`,
  '-device', 'virtserialport,chardev=agent,name=corral.agent',
  '-drive', `id=lower,file=${base.rootfs},format=raw,if=none,read-only=on`, '-device', 'virtio-blk-device,drive=lower',
  '-drive', `id=upper,file=${upper},format=raw,if=none`, '-device', 'virtio-blk-device,drive=upper'];
if (env.CORRAL_CHECK_VERBOSE) console.log([a.qemu, ...argv].map(s => /[\s"]/.test(s) ? JSON.stringify(s) : s).join(' '));
const fail = (msg) => { console.error(`corral setup: boot check: ${msg}`); try { vm.kill('SIGKILL'); } catch {} process.exit(1); };
let vm, t0, hello = false;
const srv = createServer((sock) => {
  const tConn = performance.now() - t0;
  let buf = Buffer.alloc(0);
  sock.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    if (hello || buf.length < 12) return;
    const len = buf.readUInt32LE(0), type = buf.readUInt16LE(8);
    if (type !== 1 || len > 4096) fail(`first frame is type ${type} (len ${len}), not HELLO`);
    if (buf.length < 12 + len) return;
    hello = true;
    const p = buf.subarray(12, 12 + len);
    const proto = p.readUInt32LE(0), vlen = p.readUInt32LE(4), ver = p.subarray(8, 8 + vlen).toString();
    const bootMs = p.readUInt32LE(8 + vlen), initMs = p.readUInt32LE(12 + vlen);
    const tHello = performance.now() - t0;
    console.error(`corral setup: boot check: HELLO protocol ${proto}, agent ${ver}; qemu spawn -> agent connected ${tConn.toFixed(0)} ms, -> HELLO ${tHello.toFixed(0)} ms (guest: boot ${bootMs} ms, agent init ${initMs} ms)`);
    const shutdown = Buffer.alloc(12); shutdown.writeUInt16LE(10, 8);
    sock.write(shutdown);
    const killer = setTimeout(() => { console.error('corral setup: boot check: no poweroff after SHUTDOWN in 10 s, killing qemu'); vm.kill('SIGKILL'); }, 10000);
    vm.on('exit', () => { clearTimeout(killer); console.error(`corral setup: boot check: qemu exited ${(performance.now() - t0).toFixed(0)} ms after spawn`); process.exit(0); });
  });
  sock.on('error', () => {});
});
srv.listen(agentSock, () => {
  t0 = performance.now();
  vm = spawn(a.qemu, argv, { stdio: ['ignore', 'inherit', 'inherit'] });
  vm.on('exit', (code, sig) => { if (!hello) fail(`qemu exited (${code ?? sig}) before HELLO`); });
  setTimeout(() => fail(`no HELLO within ${env.CORRAL_CHECK_TIMEOUT_MS ?? 60000} ms`), Number(env.CORRAL_CHECK_TIMEOUT_MS ?? 60000)).unref();
});
JS
)

# ---------------------------------------------------------------------------------------------
# main

LOCK_FD=
take_lock() { # one setup at a time per cache (tests and benches may start it concurrently)
  exec {LOCK_FD}>"$CACHE/.setup.lock"
  if ! flock -n "$LOCK_FD"; then
    log "another setup is running on $CACHE, waiting…"
    flock "$LOCK_FD"
  fi
}

main() {
  local only="" mode=build
  while (($#)); do
    case $1 in
      --check) mode=check ;;
      --only) only=${2:?--only needs a step}; shift ;;
      -h|--help) sed -n '2,8p' "${BASH_SOURCE[0]}"; exit 0 ;;
      *) die "unknown argument $1" ;;
    esac
    shift
  done
  mkdir -p "$CACHE"
  take_lock
  # under the lock, a temp dir left in one of our own cache dirs is from a run that was killed
  # (other tools sharing the cache keep their own dirs: leave those alone)
  rm -rf -- "$CACHE"/{kernel,agent,jail,initramfs,upper,images/corral-base}/.tmp-* "$CACHE"/.artifacts.json.* 2>/dev/null || true
  if [[ $mode == check ]]; then boot_check; return; fi
  case $only in
    "") ;;
    kernel) step_kernel; return ;;
    agent) step_agent; return ;;
    jail) step_jail; return ;;
    initramfs) step_agent; step_initramfs; return ;;
    base) step_base_image; return ;;
    upper) step_upper; return ;;
    *) die "unknown step $only" ;;
  esac
  local t0=$SECONDS
  step_packages
  bash "$ROOT/scripts/setup-ui.sh"
  bash "$ROOT/scripts/setup-guest-env.sh"
  step_npm
  step_kernel
  step_agent
  step_jail
  step_initramfs
  step_base_image
  step_upper
  step_manifest
  STEP="done"
  log "ready ($((SECONDS - t0)) s): $CACHE/artifacts.json"
}

main "$@"; exit $?
