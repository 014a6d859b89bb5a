#!/usr/bin/env bash
# corral setup: host packages, npm deps, and the guest artifacts (kernel, agent, initramfs,
# base image, upper-disk template), cached by a hash of their inputs.
#
#   scripts/setup.sh            install/build what is missing or stale (a no-op when all is current):
#                               Debian's packaged kernel, nothing compiled but the small agent
#   scripts/setup.sh --kernel custom   also build the custom kernel (~5 min on 2 idle cores)
#   scripts/setup.sh --kernel custom --background   the same in a detached process (after the
#                               demo): prints where its log goes and returns at once
#   scripts/setup.sh --kernel debian|auto   the default (auto and debian differ only at run time)
#   scripts/setup.sh --check    boot the cached artifacts once and wait for the agent's HELLO
#                               (the kernel CORRAL_KERNEL=debian|custom|auto picks, as the runtime)
#   scripts/setup.sh --only kernel|debian-kernel|agent|jail|initramfs|base|upper   (developer aid)
#
# Cache: ${CORRAL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/corral} (as src/runtime/artifacts.ts)
#   debian-kernel/<hash>/{vmlinux,config,version,package,modules/NN-name.ko}
#                               Debian's linux-image-amd64 (its vmlinuz unpacked to the vmlinux)
#                               and the modules corral needs, in load order
#   kernel/<hash>/{vmlinux,config,version}          the custom kernel, when built
#   agent/<hash>/corral-agent
#   jail/<hash>/corral-jail    (the VM process launcher, a host binary: native/jail)
#   initramfs/<hash>/initramfs.cpio                 one per kernel (the Debian one has modules)
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
#                    (acpi=on for Debian's kernel: it finds its virtio-mmio devices through ACPI)
#     -m 256 -smp 1 -cpu max -accel tcg \
#     -nodefaults -no-user-config -nographic -no-reboot \
#     -kernel vmlinux -initrd initramfs.cpio \
#     -append "console=ttyS0 quiet reboot=t panic=-1 cryptomgr.notests mitigations=off audit=0
#              8250.nr_uarts=1 random.trust_cpu=on tsc_early_khz=<host kHz> no_timer_check tsc=reliable
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
# Under KVM use -cpu host. No `noapictimer` any more (src/vm/qemuArgs.ts says why; with it
# Debian's kernel has no tick at all and hangs right after mounting the root).
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
# reporting: one line per step with its time ("cached" when there was nothing to do), and a
# progress line every few seconds while something slow runs

STEP_CACHED=
STEP_NOTES=()
step_note() { STEP_NOTES+=("$*"); log "  $*…"; }

elapsed() { # START (an $EPOCHREALTIME) -> "0.04 s", "12.3 s", "5 min 02 s"
  local ms=$(( (${EPOCHREALTIME/./} - ${1/./}) / 1000 ))
  if ((ms < 10000)); then printf '%d.%02d s' $((ms / 1000)) $((ms % 1000 / 10))
  elif ((ms < 120000)); then printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100))
  else printf '%d min %02d s' $((ms / 60000)) $((ms / 1000 % 60)); fi
}

# run_step LABEL FUNCTION: runs it, then says "LABEL  cached" or "LABEL  done in N s (notes)"
run_step() {
  local label=$1 t0=$EPOCHREALTIME
  STEP_CACHED= STEP_NOTES=()
  "$2"
  local what="done"; [[ -n $STEP_CACHED ]] && what="cached"
  log "$(printf '%-24s %-7s %s' "$label" "$what" "$(elapsed "$t0")")${STEP_DETAIL:+  $STEP_DETAIL}"
  STEP_DETAIL=
}
STEP_DETAIL=

# with_progress LABEL COMMAND…: runs COMMAND with its output in a log, printing "LABEL: 10 s…"
# every 5 s (on a terminal, one line rewritten in place); on failure shows the log's tail.
# PROGRESS_PROBE, if set, names a function whose output is added to each progress line.
with_progress() {
  local label=$1; shift
  local out; out=$(mktemp "${TMPDIR:-/tmp}/corral-setup.XXXXXX"); TMPDIRS+=("$out")
  local t0=$EPOCHREALTIME tty=
  [[ -t 2 ]] && tty=1
  ("$@") >"$out" 2>&1 &
  local pid=$! rc=0 next=5 extra
  while kill -0 "$pid" 2>/dev/null; do
    sleep 0.2
    if (( ${EPOCHREALTIME%.*} - ${t0%.*} >= next )); then
      extra=; [[ -n ${PROGRESS_PROBE:-} ]] && extra=$("$PROGRESS_PROBE" 2>/dev/null || true)
      if [[ -n $tty ]]; then printf '\rcorral setup:   %s: %s%s\033[K' "$label" "$(elapsed "$t0")" "${extra:+, $extra}" >&2
      else log "  $label: $(elapsed "$t0")${extra:+, $extra}"; fi
      next=$((next + (tty ? 1 : 10)))
    fi
  done
  [[ -n $tty ]] && ((next > 5)) && printf '\r\033[K' >&2
  wait "$pid" || rc=$?
  if ((rc != 0)); then
    tail -40 "$out" | sed 's/^/  | /' >&2
    die "$label failed (exit $rc)"
  fi
  rm -f "$out"
}

# ---------------------------------------------------------------------------------------------
# 1. Debian packages

# What the default path needs (no kernel compile). kmod: modprobe resolves the Debian kernel's
# module dependencies; xz-utils unpacks its vmlinuz.
PACKAGES=(qemu-system-x86 qemu-utils busybox-static erofs-utils e2fsprogs build-essential
  cpio musl-tools xz-utils kmod docker-registry nats-server)
# What building the custom kernel adds (setup --kernel custom).
CUSTOM_KERNEL_PACKAGES=(linux-source-6.1 bc flex bison libelf-dev libssl-dev)

missing_packages() { # prints the packages of "$@" that are not installed (one dpkg-query call)
  local -A ok=()
  local pkg status
  while read -r pkg status; do
    [[ $status == "install ok installed" ]] && ok[${pkg%%:*}]=1
  done < <(dpkg-query -W -f='${Package} ${Status}\n' "$@" 2>/dev/null || true)
  for pkg in "$@"; do [[ -n ${ok[$pkg]:-} ]] || printf '%s\n' "$pkg"; done
}

APT_UPDATED=
apt_update() { # once per run
  [[ -n $APT_UPDATED ]] && return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  APT_UPDATED=1
}

install_packages() { # PACKAGE… : installs those missing; returns 1 (and says nothing) when none was
  local missing
  mapfile -t missing < <(missing_packages "$@")
  ((${#missing[@]} == 0)) && return 1
  ((EUID == 0)) || die "missing packages (${missing[*]}) and not root: run as root or apt-get install them"
  step_note "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  with_progress "apt-get" bash -c 'apt-get -o DPkg::Lock::Timeout=600 update -qq &&
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@"' apt "${missing[@]}"
  APT_UPDATED=1
  mapfile -t missing < <(missing_packages "$@")
  ((${#missing[@]} == 0)) || die "still missing after apt-get install: ${missing[*]}"
  return 0
}

step_packages() {
  STEP="debian packages"
  install_packages "${PACKAGES[@]}" || STEP_CACHED=1
}

# ---------------------------------------------------------------------------------------------
# 2. npm

step_npm() {
  STEP="npm dependencies"
  STEP_CACHED=1
  [[ -f "$ROOT/package.json" ]] || return 0
  local stamp="$ROOT/node_modules/.package-lock.json"
  if [[ -f "$ROOT/package-lock.json" ]]; then
    if [[ ! -d "$ROOT/node_modules" || ! -f "$stamp" || "$ROOT/package-lock.json" -nt "$stamp" ]]; then
      STEP_CACHED=
      with_progress "npm ci" bash -c 'cd "$1" && npm ci --no-audit --no-fund --loglevel=error' npm "$ROOT"
      touch "$stamp"
    fi
  elif [[ ! -d "$ROOT/node_modules" ]]; then
    STEP_CACHED=
    with_progress "npm install" bash -c 'cd "$1" && npm install --no-audit --no-fund --loglevel=error' npm "$ROOT"
  fi
}

step_dist() { # the CLI, detached host and workers bundled into JavaScript (src/runtime/dist.ts)
  STEP="precompiled runtime"
  local check="$ROOT/node_modules/.corral-dist/check.mjs"
  if [[ -f $check ]] && node -e 'import(process.argv[1]).then((m) => process.exit(m.distFresh() ? 0 : 1), () => process.exit(1))' "$check"; then
    STEP_CACHED=1
    return 0
  fi
  (cd "$ROOT" && node --import tsx scripts/build-dist.ts --force >/dev/null) || die "bundling the runtime failed (scripts/build-dist.ts)"
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

custom_kernel_hash() { # sets KERNEL_HASH/KERNEL_DIR from the custom kernel's inputs
  # inputs: the fragment's options (not its comments), the source package, the compiler, the recipe
  KERNEL_HASH=$({ grep -E '^(CONFIG_|# CONFIG_[A-Za-z0-9_]+ is not set)' "$KERNEL_FRAGMENT"
    pkgver linux-source-6.1; gcc --version | head -1; } | recipe_hash build_kernel)
  KERNEL_DIR="$CACHE/kernel/$KERNEL_HASH"
}

kernel_progress() { # for with_progress: how far the compile is
  local n; n=$(find "$TMP/src" -name '*.o' 2>/dev/null | wc -l)
  ((n > 0)) && printf '%d objects compiled' "$n"
}

# The custom kernel: built only when asked for (--kernel custom), or found in the cache.
step_kernel() {
  STEP="custom kernel"
  [[ -f $KERNEL_FRAGMENT ]] || die "$KERNEL_FRAGMENT missing"
  if [[ $KERNEL_CHOICE != custom ]]; then
    # Not asked for: use it if an earlier --kernel custom built it for these inputs.
    KERNEL_DIR=
    if [[ $(pkgver linux-source-6.1) != none ]]; then
      custom_kernel_hash
      [[ -f "$KERNEL_DIR/vmlinux" ]] || KERNEL_DIR=
    fi
    STEP_CACHED=1
    if [[ -n $KERNEL_DIR ]]; then STEP_DETAIL="$(cat "$KERNEL_DIR/version")"
    else STEP_DETAIL="not built (npm run setup -- --kernel custom: ~5 min, boots faster)"; fi
    return 0
  fi
  install_packages "${CUSTOM_KERNEL_PACKAGES[@]}" || true
  [[ -f $KERNEL_TARBALL ]] || die "$KERNEL_TARBALL missing (package linux-source-6.1)"
  custom_kernel_hash
  if [[ -f "$KERNEL_DIR/vmlinux" ]]; then STEP_CACHED=1; STEP_DETAIL="$(cat "$KERNEL_DIR/version")"; return 0; fi
  step_note "compiling linux-source-6.1 with native/kernel/corral.config (~5 min on 2 idle cores, longer on a busy host)"
  new_tmp kernel "$KERNEL_HASH"
  PROGRESS_PROBE=kernel_progress with_progress "kernel compile" build_kernel "$TMP"
  publish "$TMP" "$KERNEL_DIR"
  STEP_DETAIL="$(cat "$KERNEL_DIR/version")"
}

# ---------------------------------------------------------------------------------------------
# 3a'. Debian's packaged kernel: the default, nothing to compile
#
# linux-image-amd64 (the generic flavour). linux-image-cloud-amd64 is smaller and boots ~8 %
# faster under TCG (13 modules to load, ext4 built in) but has no 9p (CONFIG_NET_9P is not
# set), which volumes need. The package is downloaded (apt-get download)
# and unpacked into the cache, not installed on the host: no initramfs-tools run, nothing in
# /boot. Its vmlinuz is a bzImage with an xz payload; booting the uncompressed vmlinux through
# PVH saves the ~2 s decompression costs under TCG. The drivers corral needs are modules
# there: modprobe (kmod) resolves them with their dependencies, in load order, into
# modules/NN-name.ko, which the initramfs carries and the agent loads first thing
# (native/agent/boot.c). Its virtio-mmio devices come through ACPI (no
# VIRTIO_MMIO_CMDLINE_DEVICES), so it boots with microvm acpi=on. It needs >= 128 MiB of RAM:
# it keeps ~60 MiB for itself, and at 96 MiB (enough without modules) a boot panicked out of
# memory while the agent loaded the modules (seen once in a suite run under load).

DEBIAN_KERNEL_META=linux-image-amd64
# What native/kernel/corral.config builds in and the agent or the host relies on: the
# virtio-mmio transport, disks, the agent's port, the entropy source, the NIC, 9p volumes,
# the erofs lowers, the overlay root and the ext4 upper.
DEBIAN_KERNEL_MODULES=(virtio_mmio virtio_blk virtio_console virtio_rng virtio_net 9pnet_virtio 9p erofs overlay ext4)
# Where they and their dependencies are, under lib/modules/<release>/kernel/.
DEBIAN_KERNEL_TREES=(drivers/virtio drivers/block/virtio_blk.ko drivers/char drivers/net/virtio_net.ko
  drivers/net/net_failover.ko net/core net/9p fs lib crypto arch)

debian_kernel_package() { # prints "PACKAGE VERSION" of the image package the meta-package pulls
  # apt-cache takes seconds on a busy machine: its answer is kept until apt's lists change
  local stamp_file="$CACHE/debian-kernel/resolved" stamp line
  stamp="$DEBIAN_KERNEL_META $({ stat -c %n:%Y.%s /var/lib/apt/lists /etc/apt/sources.list /etc/apt/sources.list.d /etc/apt/preferences.d 2>/dev/null || true; } | tr '\n' ' ')"
  if [[ -f $stamp_file ]] && { IFS= read -r line; [[ $line == "$stamp" ]]; } <"$stamp_file"; then
    sed -n 2p "$stamp_file"
    return 0
  fi
  local dep ver
  dep=$(apt-cache depends "$DEBIAN_KERNEL_META" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -1 || true)
  if [[ -z $dep ]]; then
    ((EUID == 0)) || die "apt does not know $DEBIAN_KERNEL_META: run apt-get update as root"
    apt_update
    dep=$(apt-cache depends "$DEBIAN_KERNEL_META" | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -1)
  fi
  [[ -n $dep ]] || die "no kernel image package behind $DEBIAN_KERNEL_META (apt-cache depends)"
  ver=$(apt-cache policy "$dep" | sed -n 's/^ *Candidate: //p')
  [[ -n $ver && $ver != "(none)" ]] || die "$dep has no installable version (apt-cache policy $dep)"
  mkdir -p "${stamp_file%/*}"
  printf '%s\n%s %s\n' "$stamp" "$dep" "$ver" >"$stamp_file.$$" && mv -f "$stamp_file.$$" "$stamp_file"
  printf '%s %s\n' "$dep" "$ver"
}

unpack_vmlinux() { # VMLINUZ OUT: the ELF inside a bzImage with an xz payload
  local off
  for off in $(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$1" | cut -d: -f1); do
    # a stream followed by the bzImage's trailer: --single-stream stops at its end
    if { tail -c +$((off + 1)) "$1" || true; } | xz -dcq --single-stream >"$2" 2>/dev/null &&
      [[ $(head -c 4 "$2" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]]; then
      return 0
    fi
  done
  die "no xz-compressed ELF found in $1"
}

# Debian signs each module (an appended signature: the signature, a 12-byte struct
# module_signature whose last 4 bytes are its length, big-endian, and a 28-byte marker). The
# guest kernel checks it at every load, and under TCG that check cost ~0.4 s of the ~0.9 s the
# agent took to load 23 modules (guest-timed, 5 boots each way). The files come from a
# package apt verified and go into our own initramfs: drop the signatures. The kernel does
# not enforce them (no MODULE_SIG_FORCE, no lockdown without secure boot); it notes an
# unsigned load as taint E, which changes nothing in the guest.
strip_module_signature() { # FILE
  local marker='~Module signature appended~' size len
  [[ $(tail -c 28 "$1" | head -c 27) == "$marker" ]] || return 0
  size=$(stat -c %s "$1")
  len=$(tail -c 32 "$1" | head -c 4 | od -An -tu1 | awk '{ print (($1 * 256 + $2) * 256 + $3) * 256 + $4 }')
  ((len > 0 && len < size - 40)) || die "$1: bad module signature length $len"
  truncate -s $((size - 40 - len)) "$1"
}

build_debian_kernel() { # $1 = temp output dir, $2 = package, $3 = version
  local out=$1 x="$1/x" deb
  mkdir -p "$x" "$out/modules"
  (cd "$out" && apt-get download -q "$2=$3") >"$out/download.log" 2>&1 ||
    { cat "$out/download.log" >&2; die "apt-get download $2=$3 failed"; }
  deb=$(ls "$out"/*.deb)
  # Only the trees the modules and their dependencies live in (writing all 400 MB of modules
  # doubled this step); the check below fails the step if a dependency lies outside them.
  # Debian names the package after the release: linux-image-6.1.0-57-amd64 has 6.1.0-57-amd64
  local mods="./lib/modules/${2#linux-image-}"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$x" --wildcards './boot/vmlinuz-*' './boot/config-*' "$mods/modules.*" \
    "${DEBIAN_KERNEL_TREES[@]/#/$mods/kernel/}"
  rm -f "$deb" "$out/download.log"
  local release=${2#linux-image-} vmlinuz
  vmlinuz="$x/boot/vmlinuz-$release"
  [[ -f $vmlinuz && -d "$x/${mods#./}/kernel" ]] || die "$2 has no boot/vmlinuz-$release or lib/modules/$release/kernel"
  unpack_vmlinux "$vmlinuz" "$out/vmlinux"
  cp "$x/boot/config-$release" "$out/config"
  printf '%s\n' "$release" >"$out/version"
  printf '%s %s\n' "$2" "$3" >"$out/package"
  depmod -b "$x" "$release"
  local -A seen=()
  local n=0 m kind path
  for m in "${DEBIAN_KERNEL_MODULES[@]}"; do
    # dependencies first, then the module; "builtin NAME" lines need nothing
    while read -r kind path _; do
      [[ $kind == insmod && -z ${seen[$path]:-} ]] || continue
      seen[$path]=1
      install -m 644 "$path" "$out/modules/$(printf '%02d' "$n")-${path##*/}"
      strip_module_signature "$out/modules/$(printf '%02d' "$n")-${path##*/}"
      n=$((n + 1))
    done < <(modprobe -d "$x" -S "$release" --show-depends "$m" || die "modprobe: no module $m in $2")
  done
  ((n > 0)) || die "no modules resolved from $2"
  # every module's build-time dependencies (its modinfo depends=) must be loaded before it
  local have=" " f dep
  for f in "$out"/modules/*.ko; do
    for dep in $(modinfo -F depends "$f" | tr ',' ' '); do
      [[ $have == *" ${dep//-/_} "* ]] || die "module ${f##*/} needs $dep, which is not loaded before it (outside DEBIAN_KERNEL_TREES?)"
    done
    f=${f##*/}; f=${f#*-}; f=${f%.ko}; have+="${f//-/_} "
  done
  rm -rf "$x"
}

step_debian_kernel() {
  STEP="debian kernel"
  DEBIAN_KERNEL_DIR=
  [[ $KERNEL_CHOICE == custom-only ]] && { STEP_CACHED=1; STEP_DETAIL="skipped"; return 0; }
  local pkg ver line
  line=$(debian_kernel_package)
  pkg=${line% *} ver=${line#* }
  DEBIAN_KERNEL_HASH=$(printf '%s\n' "$pkg" "$ver" "${DEBIAN_KERNEL_MODULES[*]}" "${DEBIAN_KERNEL_TREES[*]}" "$(pkgver kmod)" "$(pkgver xz-utils)" |
    recipe_hash build_debian_kernel unpack_vmlinux strip_module_signature)
  DEBIAN_KERNEL_DIR="$CACHE/debian-kernel/$DEBIAN_KERNEL_HASH"
  if [[ -f "$DEBIAN_KERNEL_DIR/vmlinux" ]]; then
    STEP_CACHED=1
  else
    step_note "apt-get download $pkg ($ver), unpack its vmlinux and ${#DEBIAN_KERNEL_MODULES[@]} modules with their dependencies"
    new_tmp debian-kernel "$DEBIAN_KERNEL_HASH"
    with_progress "$pkg" build_debian_kernel "$TMP" "$pkg" "$ver"
    publish "$TMP" "$DEBIAN_KERNEL_DIR"
  fi
  STEP_DETAIL="$(cat "$DEBIAN_KERNEL_DIR/version"), $(find "$DEBIAN_KERNEL_DIR/modules" -name '*.ko' | wc -l) modules"
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
  if [[ -x "$AGENT_DIR/corral-agent" ]]; then STEP_CACHED=1; return 0; fi
  new_tmp agent "$AGENT_HASH"
  with_progress "agent build" build_agent "$TMP"
  publish "$TMP" "$AGENT_DIR"
}

# ---------------------------------------------------------------------------------------------
# 3b'. VM process launcher (static, runs on the host): each qemu starts jailed through it

JAIL_SRC="$ROOT/native/jail"

build_jail() { # $1 = temp output dir
  make -C "$JAIL_SRC" -s OUT="$1" >&2
  [[ -x "$1/corral-jail" ]] || die "jail build produced no $1/corral-jail"
  [[ -f "$1/corral-ropen.so" ]] || die "jail build produced no $1/corral-ropen.so"
  if file_is_dynamic "$1/corral-jail"; then die "corral-jail is not a static binary"; fi
}

step_jail() {
  STEP="VM launcher (corral-jail)"
  local inputs
  inputs=$(cd "$JAIL_SRC" && find . -type f \( -name '*.c' -o -name 'Makefile' \) -not -path './build/*' -print0 |
    LC_ALL=C sort -z | xargs -0 sha256sum; musl-gcc --version 2>/dev/null | head -1; gcc --version | head -1; pkgver musl-tools)
  JAIL_HASH=$(printf '%s\n' "$inputs" | recipe_hash build_jail file_is_dynamic)
  JAIL_DIR="$CACHE/jail/$JAIL_HASH"
  if [[ -x "$JAIL_DIR/corral-jail" && -f "$JAIL_DIR/corral-ropen.so" ]]; then STEP_CACHED=1; return 0; fi
  new_tmp jail "$JAIL_HASH"
  build_jail "$TMP"
  publish "$TMP" "$JAIL_DIR"
}

# ---------------------------------------------------------------------------------------------
# 3c. initramfs: /init (the agent) + the mount points it needs, uncompressed newc cpio
# (uncompressed: nothing to decompress under TCG, and the agent is small)

build_initramfs() { # $1 = temp output dir, $2 = agent binary, $3 = a kernel's modules dir (optional)
  local st="$1/staging"
  mkdir -p "$st"/{dev,proc,sys,mnt/lower,mnt/upper,mnt/root,tmp}
  install -m 755 "$2" "$st/init"
  chmod 1777 "$st/tmp"
  # a modular kernel's drivers, loaded by the agent in name order (native/agent/boot.c)
  if [[ -n ${3:-} ]]; then mkdir -p "$st/modules"; cp "$3"/*.ko "$st/modules/"; fi
  # the kernel opens /dev/console for PID 1 before /init runs (devtmpfs is not mounted yet)
  if ((EUID == 0)); then mknod -m 600 "$st/dev/console" c 5 1; mknod -m 666 "$st/dev/null" c 1 3; fi
  find "$st" -exec touch -h -d @0 {} +
  (cd "$st" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) >"$1/initramfs.cpio"
  rm -rf "$st"
}

# initramfs_for KERNEL_HASH MODULES_DIR -> sets IRD (its directory); MODULES_DIR may be empty
initramfs_for() {
  local hash; hash=$(printf '%s\n' "$AGENT_HASH" "$EUID" "$1" | recipe_hash build_initramfs)
  IRD="$CACHE/initramfs/$hash"
  [[ -f "$IRD/initramfs.cpio" ]] && return 1
  new_tmp initramfs "$hash"
  build_initramfs "$TMP" "$AGENT_DIR/corral-agent" "$2"
  publish "$TMP" "$IRD"
}

step_initramfs() { # one per kernel: the custom kernel's holds the agent, the Debian one's its modules too
  STEP="initramfs"
  STEP_CACHED=1
  INITRAMFS_DIR= DEBIAN_INITRAMFS_DIR=
  if [[ -n $KERNEL_DIR ]]; then initramfs_for "" "" && STEP_CACHED=; INITRAMFS_DIR=$IRD; fi
  if [[ -n $DEBIAN_KERNEL_DIR ]]; then
    initramfs_for "$DEBIAN_KERNEL_HASH" "$DEBIAN_KERNEL_DIR/modules" && STEP_CACHED=
    DEBIAN_INITRAMFS_DIR=$IRD
  fi
  return 0
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
  if [[ -f "$BASE_DIR/rootfs.erofs" ]]; then STEP_CACHED=1; return 0; fi
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
  if [[ -f "$UPPER_DIR/upper.ext4" ]]; then STEP_CACHED=1; return 0; fi
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

kernel_json() { # DIR INITRAMFS_DIR ACPI MIN_MEMORY_MIB [PACKAGE]: one entry of "kernels"
  printf '{ "kernel": %s, "initramfs": %s, "version": %s, "config": %s, "acpi": %s, "minMemoryMib": %s%s }' \
    "$(json_str "$1/vmlinux")" "$(json_str "$2/initramfs.cpio")" "$(json_str "$(cat "$1/version")")" \
    "$(json_str "$1/config")" "$3" "$4" "${5:+, \"package\": $(json_str "$5")}"
}

step_manifest() {
  STEP="artifacts.json"
  local qemu tsc; qemu=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 not found"
  tsc=$(host_tsc_khz)
  local out="$CACHE/artifacts.json" tmp="$CACHE/.artifacts.json.$$"
  TMPDIRS+=("$tmp")
  # "kernels": each kernel there is, with how to boot it; the runtime picks one
  # (CORRAL_KERNEL=debian|custom|auto, src/runtime/kernel.ts). The top-level "kernel" and
  # "initramfs" are what runtimes before that read (they boot with acpi=off): the custom
  # kernel when it is built, else the Debian one.
  local kernels=() legacy_dir legacy_ird legacy_hash
  if [[ -n $DEBIAN_KERNEL_DIR ]]; then
    kernels+=("\"debian\": $(kernel_json "$DEBIAN_KERNEL_DIR" "$DEBIAN_INITRAMFS_DIR" true 128 "$(cat "$DEBIAN_KERNEL_DIR/package")")")
    legacy_dir=$DEBIAN_KERNEL_DIR legacy_ird=$DEBIAN_INITRAMFS_DIR legacy_hash=$DEBIAN_KERNEL_HASH
  fi
  if [[ -n $KERNEL_DIR ]]; then
    kernels+=("\"custom\": $(kernel_json "$KERNEL_DIR" "$INITRAMFS_DIR" false 64)")
    legacy_dir=$KERNEL_DIR legacy_ird=$INITRAMFS_DIR legacy_hash=$KERNEL_HASH
  fi
  [[ -n ${legacy_dir:-} ]] || die "no kernel: neither the Debian one nor the custom one is there"
  local joined; joined=$(printf ',\n    %s' "${kernels[@]}"); joined=${joined:2}
  cat >"$tmp" <<JSON
{
  "kernel": $(json_str "$legacy_dir/vmlinux"),
  "kernelVersion": $(json_str "$(cat "$legacy_dir/version")"),
  "kernelConfig": $(json_str "$legacy_dir/config"),
  "initramfs": $(json_str "$legacy_ird/initramfs.cpio"),
  "kernels": {
$joined
  },
  "agent": $(json_str "$AGENT_DIR/corral-agent"),
  "jail": $(json_str "$JAIL_DIR/corral-jail"),
  "jailRamShim": $(json_str "$JAIL_DIR/corral-ropen.so"),
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
    "kernel": "$legacy_hash",
    "agent": "$AGENT_HASH",
    "jail": "$JAIL_HASH",
    "initramfs": "${legacy_ird##*/}",
    "corral/base": "$BASE_HASH",
    "upperTemplate": "$UPPER_HASH"
  }
}
JSON
  if cmp -s "$tmp" "$out"; then rm -f "$tmp"; STEP_CACHED=1; else mv -f "$tmp" "$out"; STEP_DETAIL="wrote $out"; fi
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
// the kernel the runtime would pick (src/runtime/kernel.ts): CORRAL_KERNEL, else custom if built
const kernels = a.kernels ?? { custom: { kernel: a.kernel, initramfs: a.initramfs, acpi: false } };
const choice = env.CORRAL_KERNEL || 'auto';
const kname = choice === 'auto' ? (kernels.custom ? 'custom' : 'debian') : choice;
const k = kernels[kname];
if (!k) { console.error(`corral setup: boot check: CORRAL_KERNEL=${choice}: no such kernel in ${env.MANIFEST} (there: ${Object.keys(kernels).join(', ')})`); process.exit(1); }
const upper = `${dir}/upper.ext4`;
execFileSync('cp', ['--sparse=always', a.upperTemplate, upper]);
const agentSock = `${dir}/agent.sock`;
const cmdline = ['console=ttyS0', 'quiet', 'reboot=t', 'panic=-1', 'cryptomgr.notests', 'mitigations=off',
  'audit=0', '8250.nr_uarts=1', 'random.trust_cpu=on', ...(a.tscKhz ? [`tsc_early_khz=${a.tscKhz}`] : []),
  // as src/vm/qemuArgs.ts: no noapictimer (Debian's kernel, with ACPI, then has no tick at
  // all and hangs after mounting the root)
  'no_timer_check', 'tsc=reliable',
  'corral.lower=/dev/vda', `corral.lowerfs=${base.fstype}`, 'corral.upper=/dev/vdb', 'corral.hostname=corral-check'];
const argv = ['-M', `microvm,acpi=${k.acpi ? 'on' : 'off'},x-option-roms=off,isa-serial=on,rtc=on,pit=on,pic=on`,
  '-accel', env.ACCEL, '-cpu', env.ACCEL === 'kvm' ? 'host' : 'max', '-m', '256', '-smp', '1',
  '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
  '-kernel', k.kernel, '-initrd', k.initramfs, '-append', cmdline.join(' '),
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
    console.error(`corral setup: boot check: kernel ${kname} ${k.version ?? ''}: HELLO protocol ${proto}, agent ${ver}; qemu spawn -> agent connected ${tConn.toFixed(0)} ms, -> HELLO ${tHello.toFixed(0)} ms (guest: boot ${bootMs} ms, agent init ${initMs} ms)`);
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

# A custom kernel build runs under a lock of its own, not the one above: in the background
# (after the demo) it takes minutes, and other setups go on meanwhile.
KERNEL_LOCK_FD=
take_kernel_lock() { # nonblocking with "try": returns 1 if a build holds it
  exec {KERNEL_LOCK_FD}>"$CACHE/.kernel-build.lock"
  if ! flock -n "$KERNEL_LOCK_FD"; then
    [[ ${1:-} == try ]] && { exec {KERNEL_LOCK_FD}>&-; KERNEL_LOCK_FD=; return 1; }
    log "a custom kernel build is running on $CACHE, waiting…"
    flock "$KERNEL_LOCK_FD"
  fi
}

custom_kernel_cached() {
  [[ $(pkgver linux-source-6.1) != none ]] || return 1
  custom_kernel_hash
  [[ -f "$KERNEL_DIR/vmlinux" ]]
}

start_background_kernel() {
  STEP="custom kernel (background)"
  local logf="$CACHE/custom-kernel.log"
  if custom_kernel_cached; then log "custom kernel $(cat "$KERNEL_DIR/version") cached"; return 0; fi
  if ! take_kernel_lock try; then log "a custom kernel build is already running (log: $logf)"; return 0; fi
  exec {KERNEL_LOCK_FD}>&-
  setsid nohup bash "$ROOT/scripts/setup.sh" --kernel custom </dev/null >"$logf" 2>&1 &
  log "building the custom kernel in the background (pid $!, ~5 min on 2 idle cores; log: $logf)."
  log "Sandboxes keep using Debian's kernel until it is there, then use it (CORRAL_KERNEL=debian keeps Debian's)."
}

step_ui() { # chromium for the inspector test (scripts/setup-ui.sh)
  STEP="chromium"
  if [[ -z $(missing_packages chromium) ]]; then STEP_CACHED=1; return 0; fi
  with_progress "apt-get install chromium" bash "$ROOT/scripts/setup-ui.sh"
}

step_guest_env() { # nftables for network policies, slirp4netns for jailed NICs (scripts/setup-guest-env.sh)
  STEP="nftables, slirp4netns"
  if [[ -z $(missing_packages nftables slirp4netns) ]]; then STEP_CACHED=1; return 0; fi
  with_progress "apt-get install nftables slirp4netns" bash "$ROOT/scripts/setup-guest-env.sh"
}

KERNEL_CHOICE=auto

main() {
  local only="" mode=build background=
  while (($#)); do
    case $1 in
      --check) mode=check ;;
      --only) only=${2:?--only needs a step}; shift ;;
      --kernel)
        KERNEL_CHOICE=${2:-}
        [[ $KERNEL_CHOICE =~ ^(debian|custom|auto)$ ]] ||
          die "--kernel must be one of debian, custom, auto (got \"$KERNEL_CHOICE\")"
        shift ;;
      --background) background=1 ;;
      -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
      *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
  done
  [[ -z $background || $KERNEL_CHOICE == custom ]] || die "--background goes with --kernel custom"
  mkdir -p "$CACHE"
  if [[ -n $background ]]; then start_background_kernel; return; fi
  local t0=$EPOCHREALTIME
  local kernel_locked=
  if [[ $KERNEL_CHOICE == custom ]]; then
    take_kernel_lock
    kernel_locked=1
    rm -rf -- "$CACHE"/kernel/.tmp-* 2>/dev/null || true
    run_step "debian packages" step_packages
    run_step "custom kernel" step_kernel
  fi
  take_lock
  # under the lock, a temp dir left in one of our own cache dirs is from a run that was killed
  # (other tools sharing the cache keep their own dirs: leave those alone); a custom kernel's
  # only when no build holds its lock
  rm -rf -- "$CACHE"/{agent,jail,initramfs,upper,images/corral-base,debian-kernel}/.tmp-* "$CACHE"/.artifacts.json.* 2>/dev/null || true
  if [[ -z $kernel_locked ]] && take_kernel_lock try; then
    rm -rf -- "$CACHE"/kernel/.tmp-* 2>/dev/null || true
    exec {KERNEL_LOCK_FD}>&-
  fi
  if [[ $mode == check ]]; then boot_check; return; fi
  case $only in
    "") ;;
    kernel) KERNEL_CHOICE=custom; step_kernel; return ;;
    debian-kernel) step_debian_kernel; return ;;
    agent) step_agent; return ;;
    jail) step_jail; return ;;
    initramfs) step_kernel; step_debian_kernel; step_agent; step_initramfs; return ;;
    base) step_base_image; return ;;
    upper) step_upper; return ;;
    *) die "unknown step $only (one of kernel, debian-kernel, agent, initramfs, base, upper)" ;;
  esac
  [[ -n $kernel_locked ]] || run_step "debian packages" step_packages
  run_step "chromium" step_ui
  run_step "nftables, slirp4netns" step_guest_env
  run_step "npm dependencies" step_npm
  run_step "precompiled runtime" step_dist
  [[ -n $kernel_locked ]] || run_step "custom kernel" step_kernel
  run_step "debian kernel" step_debian_kernel
  run_step "guest agent" step_agent
  run_step "VM launcher" step_jail
  run_step "initramfs" step_initramfs
  run_step "image corral/base" step_base_image
  run_step "upper-disk template" step_upper
  run_step "artifacts.json" step_manifest
  STEP="done"
  log "ready in $(elapsed "$t0"): $CACHE/artifacts.json"
}
main "$@"; exit $?
