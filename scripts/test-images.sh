#!/usr/bin/env bash
# corral test images: OCI layouts and disk images the image tests push to a loopback registry
# or boot from, built offline (no registry, no network except the Debian mirror for the
# python image) and cached by a hash of their inputs. setup.sh calls this at its end.
#
#   scripts/test-images.sh          build what is missing (a no-op when all is current)
#
# Also installs the Debian packages that OCI images need at run time (attr: setfattr, for
# opaque directories; zstd: zstd layers) and those the image tests and benchmark use
# (docker-registry, skopeo, apache2-utils: htpasswd, debootstrap).
#
# Cache: ${CORRAL_CACHE_DIR:-$HOME/.cache/corral}
#   test-images/<hash>/{busybox,multilayer,multiarch,python,squash}/   OCI image layouts
#   test-images/<hash>/disks/root.{raw,qcow2,vmdk}              ext4 busybox roots
#   test-images.json                                             <- what the tests read
#
# The images:
#   busybox     one gzip layer: a busybox root (absolute applet symlinks), /marker = busybox
#   multilayer  gzip layer 1: busybox + /etc/deleteme, /data/old/{a,b}, /data/keep
#               zstd layer 2: whiteout of /etc/deleteme, opaque /data/old with only c,
#               /data/link -> /data/keep (absolute), /data/hard (hard link to /data/keep)
#   multiarch   an image index: linux/amd64 (busybox + /marker = amd64), linux/arm64 (/marker)
#   python      Debian bookworm minbase + python3-minimal (debootstrap, configured mirror)
#   squash      7 gzip layers, so that layers 1-6 are squashed into one (src/image/squash.ts):
#               s0: busybox + /etc/zero-del, /data/opq/{x,y}, /data/over = 0, /lnk0 -> etc
#               s1: /data/over = 1, /data/sl -> /etc, /data/tmpfile
#               s2: /data/over = 2, /data/d1/a          s3: whiteout of /etc/zero-del
#               s4: opaque /data/opq with only z         s5: /data/sl a dir with f, /lnk0 a dir with g
#               s6: whiteout of /data/tmpfile, /data/h1 + /data/h2 hard links, /data/over = 6
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CORRAL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/corral}"
STEP="(start)"
log() { printf 'corral test-images: %s\n' "$*" >&2; }
die() { printf 'corral test-images: FAILED in step "%s": %s\n' "$STEP" "$*" >&2; exit 1; }
trap 'printf "corral test-images: FAILED in step \"%s\" (line %s)\n" "$STEP" "$LINENO" >&2' ERR

TMPDIRS=()
cleanup() { local d; for d in "${TMPDIRS[@]}"; do [[ -n "$d" && -e "$d" ]] && rm -rf -- "$d"; done; return 0; }
trap cleanup EXIT

pkgver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none; }

PACKAGES=(attr zstd erofs-utils docker-registry skopeo apache2-utils debootstrap qemu-utils e2fsprogs busybox-static)

step_packages() {
  STEP="debian packages"
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" == "install ok installed" ]] || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && { STEP_CACHED=1; return 0; }
  ((EUID == 0)) || die "missing packages (${missing[*]}) and not root: apt-get install them"
  log "  apt-get install ${missing[*]}…"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2
  # The packaged registry service listens on all interfaces: the tests start their own.
  if systemctl is-active --quiet docker-registry 2>/dev/null; then systemctl disable --now docker-registry >&2 || true; fi
}

# The Debian mirror apt uses (deb822 sources first, then sources.list).
debian_mirror() {
  local m=""
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    m=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
  fi
  if [[ -z $m && -f /etc/apt/sources.list ]]; then
    m=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ { print $2; exit }' /etc/apt/sources.list)
  fi
  printf '%s' "${m:-http://deb.debian.org/debian}"
}

# Reproducible tar of a directory's contents (GNU tar, numeric root owner, sorted, mtime 0).
rtar() { # $1 = dir, $2 = out.tar
  tar --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$1" -cf "$2" .
}

busybox_root() { # $1 = dir
  local st=$1
  mkdir -p "$st"/{usr/bin,etc,dev,proc,sys,tmp,root,data}
  ln -s usr/bin "$st/bin"; ln -s usr/bin "$st/sbin"
  chmod 1777 "$st/tmp"; chmod 700 "$st/root"
  install -m 755 /bin/busybox "$st/usr/bin/busybox"
  /bin/busybox --install -s "$st/usr/bin"
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$st/etc/passwd"
  printf 'root:x:0:\n' >"$st/etc/group"
}

build_images() { # $1 = temp output dir
  local out=$1 w="$1/work"
  mkdir -p "$w" "$out/layers"

  # busybox
  busybox_root "$w/bb"; echo busybox >"$w/bb/marker"
  rtar "$w/bb" "$out/layers/busybox.tar"

  # multilayer
  busybox_root "$w/m1"
  echo old >"$w/m1/etc/deleteme"; mkdir -p "$w/m1/data/old"
  echo a >"$w/m1/data/old/a"; echo b >"$w/m1/data/old/b"; echo keep >"$w/m1/data/keep"
  echo multilayer >"$w/m1/marker"
  rtar "$w/m1" "$out/layers/m1.tar"
  mkdir -p "$w/m2/etc" "$w/m2/data/old"
  : >"$w/m2/etc/.wh.deleteme"; : >"$w/m2/data/old/.wh..wh..opq"
  echo c >"$w/m2/data/old/c"; echo keep2 >"$w/m2/data/keep"
  ln "$w/m2/data/keep" "$w/m2/data/hard"; ln -s /data/keep "$w/m2/data/link"
  rtar "$w/m2" "$out/layers/m2.tar"

  # squash
  busybox_root "$w/s0"; echo squash >"$w/s0/marker"; echo zero >"$w/s0/etc/zero-del"
  mkdir -p "$w/s0/data/opq"; echo x >"$w/s0/data/opq/x"; echo y >"$w/s0/data/opq/y"; echo 0 >"$w/s0/data/over"
  ln -s etc "$w/s0/lnk0"
  mkdir -p "$w"/s{1,2,3,4,5,6}/data
  echo 1 >"$w/s1/data/over"; ln -s /etc "$w/s1/data/sl"; echo t >"$w/s1/data/tmpfile"
  echo 2 >"$w/s2/data/over"; mkdir -p "$w/s2/data/d1"; echo a >"$w/s2/data/d1/a"
  mkdir -p "$w/s3/etc"; : >"$w/s3/etc/.wh.zero-del"
  mkdir -p "$w/s4/data/opq"; : >"$w/s4/data/opq/.wh..wh..opq"; echo z >"$w/s4/data/opq/z"
  mkdir -p "$w/s5/data/sl" "$w/s5/lnk0"; echo f >"$w/s5/data/sl/f"; echo g >"$w/s5/lnk0/g"
  : >"$w/s6/data/.wh.tmpfile"; echo hard >"$w/s6/data/h1"; ln "$w/s6/data/h1" "$w/s6/data/h2"; echo 6 >"$w/s6/data/over"
  for i in 0 1 2 3 4 5 6; do rtar "$w/s$i" "$out/layers/s$i.tar"; done

  # multiarch
  busybox_root "$w/amd"; echo amd64 >"$w/amd/marker"
  rtar "$w/amd" "$out/layers/amd64.tar"
  mkdir -p "$w/arm"; echo arm64 >"$w/arm/marker"
  rtar "$w/arm" "$out/layers/arm64.tar"

  # python: Debian bookworm minbase + python3-minimal
  local mirror; mirror=$(debian_mirror)
  log "debootstrap bookworm + python3-minimal from $mirror (~1 min)…"
  debootstrap --variant=minbase --include=python3-minimal bookworm "$w/py" "$mirror" >"$out/debootstrap.log" 2>&1 \
    || { tail -20 "$out/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$w/py"/var/cache/apt/archives/*.deb "$w/py"/var/lib/apt/lists/* "$w/py"/dev/* "$w/py"/var/log/*
  [[ -x "$w/py/usr/bin/python3" ]] || die "no python3 in the debootstrap root"
  rtar "$w/py" "$out/layers/python.tar"

  # OCI layouts
  node --input-type=module -e "$OCI_LAYOUT_JS" "$out" >&2

  # disk images: ext4 busybox roots in each format
  busybox_root "$w/disk"; echo disk >"$w/disk/marker"
  mkdir -p "$out/disks"
  truncate -s 64M "$out/disks/root.raw"
  mkfs.ext4 -F -q -L corral-disk -m 0 -O ^has_journal,^metadata_csum -E root_owner=0:0,nodiscard -d "$w/disk" "$out/disks/root.raw"
  qemu-img convert -q -f raw -O qcow2 "$out/disks/root.raw" "$out/disks/root.qcow2"
  qemu-img convert -q -f raw -O vmdk "$out/disks/root.raw" "$out/disks/root.vmdk"

  rm -rf "$w" "$out/layers"
}

# Writes OCI image layouts (oci-layout, index.json, blobs/sha256/*) from the layer tars.
OCI_LAYOUT_JS=$(cat <<'JS'
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
const out = process.argv[1];
const sha = (b) => createHash('sha256').update(b).digest('hex');
function layout(name, top) {
  const dir = join(out, name);
  mkdirSync(join(dir, 'blobs', 'sha256'), { recursive: true });
  const put = (bytes) => { const h = sha(bytes); writeFileSync(join(dir, 'blobs', 'sha256', h), bytes); return { digest: `sha256:${h}`, size: bytes.length }; };
  const image = ({ arch, layers, config }) => {
    const descs = [], diffIds = [];
    for (const l of layers) {
      const tar = readFileSync(join(out, 'layers', l.tar));
      diffIds.push(`sha256:${sha(tar)}`);
      const blob = l.zstd ? execFileSync('zstd', ['-q', '-c', '-3'], { input: tar, maxBuffer: 1 << 30 }) : gzipSync(tar, { level: 6 });
      descs.push({ mediaType: `application/vnd.oci.image.layer.v1.tar+${l.zstd ? 'zstd' : 'gzip'}`, ...put(blob) });
    }
    const cfg = put(Buffer.from(JSON.stringify({
      architecture: arch, os: 'linux', created: '1970-01-01T00:00:00Z',
      config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], ...config },
      rootfs: { type: 'layers', diff_ids: diffIds },
    })));
    const m = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...cfg }, layers: descs }));
    return { mediaType: 'application/vnd.oci.image.manifest.v1+json', ...put(m), platform: { architecture: arch, os: 'linux' } };
  };
  let desc;
  if (top.index) {
    const ms = top.index.map(image);
    const idx = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: ms }));
    desc = { mediaType: 'application/vnd.oci.image.index.v1+json', ...put(idx) };
  } else {
    const { platform, ...d } = image(top);
    desc = d;
  }
  writeFileSync(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: [{ ...desc, annotations: { 'org.opencontainers.image.ref.name': 'latest' } }] }));
}
layout('busybox', { arch: 'amd64', layers: [{ tar: 'busybox.tar' }], config: { Cmd: ['/bin/sh'], WorkingDir: '/' } });
layout('multilayer', { arch: 'amd64', layers: [{ tar: 'm1.tar' }, { tar: 'm2.tar', zstd: true }],
  config: { Cmd: ['/bin/sh'], Env: ['PATH=/usr/bin:/bin', 'IMAGE_VAR=from-image'], WorkingDir: '/data', User: '0:0' } });
layout('multiarch', { index: [
  { arch: 'amd64', layers: [{ tar: 'amd64.tar' }], config: { Cmd: ['/bin/sh'] } },
  { arch: 'arm64', layers: [{ tar: 'arm64.tar' }], config: { Cmd: ['/bin/sh'] } },
] });
layout('squash', { arch: 'amd64', layers: [0, 1, 2, 3, 4, 5, 6].map((i) => ({ tar: `s${i}.tar` })), config: { Cmd: ['/bin/sh'], WorkingDir: '/' } });
layout('python', { arch: 'amd64', layers: [{ tar: 'python.tar' }], config: { Cmd: ['python3'], Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'LANG=C.UTF-8'] } });
JS
)

step_images() {
  STEP="test images"
  local hash
  hash=$( { declare -f build_images busybox_root rtar debian_mirror; printf '%s\n' "$OCI_LAYOUT_JS" "$(debian_mirror)" \
    "$(pkgver busybox-static)" "$(pkgver debootstrap)" "$(pkgver zstd)" "$(pkgver qemu-utils)" "$(pkgver e2fsprogs)"; } | sha256sum | cut -c1-16)
  local dir="$CACHE/test-images/$hash"
  if [[ ! -f "$dir/python/index.json" ]]; then
    log "  building the test images (~3 min the first time; debootstrap is most of it)…"
    mkdir -p "$CACHE/test-images"
    local tmp; tmp=$(mktemp -d "$CACHE/test-images/.partial-$hash-XXXXXX"); TMPDIRS+=("$tmp")
    # a progress line every 10 s while it builds
    build_images "$tmp" &
    local pid=$! t0=$SECONDS rc=0
    while kill -0 "$pid" 2>/dev/null; do
      sleep 1
      (( (SECONDS - t0) % 10 == 0 )) && kill -0 "$pid" 2>/dev/null && log "  test images: $((SECONDS - t0)) s…"
    done
    wait "$pid" || rc=$?
    ((rc == 0)) || die "building the test images failed (exit $rc)"
    chmod 755 "$tmp"
    mv -T -- "$tmp" "$dir" 2>/dev/null || { [[ -d $dir ]] || die "could not publish $dir"; rm -rf -- "$tmp"; }
  else
    STEP_CACHED=1
  fi
  local m="$CACHE/test-images.json" t="$CACHE/.test-images.json.$$"
  TMPDIRS+=("$t")
  printf '{\n  "dir": "%s",\n  "layouts": ["busybox", "multilayer", "multiarch", "python", "squash"],\n  "disks": { "raw": "%s", "qcow2": "%s", "vmdk": "%s" }\n}\n' \
    "$dir" "$dir/disks/root.raw" "$dir/disks/root.qcow2" "$dir/disks/root.vmdk" >"$t"
  if cmp -s "$t" "$m"; then rm -f "$t"; else mv -f "$t" "$m"; fi
}

main() {
  mkdir -p "$CACHE"
  exec {LOCK_FD}>"$CACHE/.test-images.lock"
  flock "$LOCK_FD"
  rm -rf -- "$CACHE"/test-images/.partial-* "$CACHE"/.test-images.json.* 2>/dev/null || true
  run_step "debian packages" step_packages
  run_step "test images" step_images
}

STEP_CACHED=
# run_step LABEL FUNCTION: runs it, then says "LABEL  cached|done  N s" (as scripts/setup.sh)
run_step() {
  local t0=$EPOCHREALTIME
  STEP_CACHED=
  "$2"
  local ms=$(( (${EPOCHREALTIME/./} - ${t0/./}) / 1000 ))
  log "$(printf '%-24s %-7s %d.%02d s' "$1" "$([[ -n $STEP_CACHED ]] && echo cached || echo done)" $((ms / 1000)) $((ms % 1000 / 10)))"
}

main "$@"
