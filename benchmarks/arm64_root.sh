#!/usr/bin/env bash
# An arm64 Debian root with ai-edge-litert, for running TFLite under qemu-aarch64 (user mode) on an
# x86 host: the "Raspberry Pi 4 without a Pi" half of benchmarks/arm_xnnpack.py.
#
#   sudo bash benchmarks/arm64_root.sh          # idempotent: only does what is missing
#
# Steps (times on a 2-core x86 machine): debootstrap --foreign, minbase + python3/venv/pip (~25 s);
# second stage under qemu-aarch64-static via binfmt_misc + chroot (~5 min); aarch64 wheels of
# ai-edge-litert and numpy downloaded by the host's pip (~3 s); venv /opt/litert in the root and an
# offline pip install into it, under emulation (~40 s); a fake /proc/cpuinfo in the root (see below).
#
# Settings (environment variables, all optional):
#   EC_ARM64_ROOT        the root (default: <repo>/../.cache/arm64-root)
#   EC_ARM64_SUITE       Debian suite (default: bookworm)
#   EC_DEBIAN_MIRROR     mirror for debootstrap (default: the first Debian URI in apt's sources, else
#                        http://deb.debian.org/debian)
#   EC_LITERT_VERSION    ai-edge-litert version (default: 2.3.0)
#   EC_HOST_PYTHON       host python with pip, used only to download wheels (default: python3)
#
# Needs root (debootstrap, chroot, binfmt_misc). If no aarch64 binfmt handler is registered, one is
# registered for the duration of the script (qemu-aarch64-static, "F" flag so it works in the
# chroot) and removed again at the end.
#
# Why a fake /proc/cpuinfo: qemu-aarch64 7.2 passes the host's (x86) /proc/cpuinfo through, and the
# cpuinfo library inside TFLite/XNNPACK crashes (SIGSEGV in Interpreter creation) parsing it. With
# `qemu-aarch64 -L <root>` guest paths resolve inside the root first, so <root>/proc/cpuinfo (a plain
# file, as long as nothing is mounted on <root>/proc) describes Cortex-A72 cores as on a Pi 4.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
ROOT="${EC_ARM64_ROOT:-$(cd "$repo/.." && pwd)/.cache/arm64-root}"
SUITE="${EC_ARM64_SUITE:-bookworm}"
LITERT_VERSION="${EC_LITERT_VERSION:-2.3.0}"
HOST_PYTHON="${EC_HOST_PYTHON:-python3}"
VENV=/opt/litert                      # inside the root
WHEELS=/opt/wheels-arm64              # inside the root

exec 3>&2                             # progress messages, even while a step's output is redirected
log() { printf '[arm64_root] %s\n' "$*" >&3; }
die() { log "error: $*"; exit 1; }
timed() {  # timed LABEL cmd...: run, then log the wall time
  local label="$1" t0 t1; shift
  t0=$(date +%s)
  "$@"
  t1=$(date +%s)
  log "$label: $((t1 - t0)) s"
}

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and binfmt_misc need it)"

mirror() {
  if [ -n "${EC_DEBIAN_MIRROR:-}" ]; then echo "$EC_DEBIAN_MIRROR"; return; fi
  local m
  m=$(grep -rhoE '^(URIs:[[:space:]]*|deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)[a-z]+://[^[:space:]]+/debian/?([[:space:]]|$)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | grep -oE '[a-z]+://[^[:space:]]+' | head -n1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

need_pkgs=()
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
command -v qemu-aarch64-static >/dev/null || need_pkgs+=(qemu-user-static)
command -v qemu-aarch64 >/dev/null || need_pkgs+=(qemu-user)
command -v gcc >/dev/null || need_pkgs+=(gcc)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  apt-get update -qq
  timed "apt-get install" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
flock 9

# ---- binfmt for the chroot steps (only registered if needed, removed on exit) ------------------
registered=""
cleanup() {
  if [ -n "$registered" ] && [ -e "/proc/sys/fs/binfmt_misc/$registered" ]; then
    echo -1 > "/proc/sys/fs/binfmt_misc/$registered" || true
    log "removed binfmt handler $registered"
  fi
}
trap cleanup EXIT

ensure_binfmt() {
  [ -n "$registered" ] && return 0
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
      || die "cannot mount binfmt_misc: the chroot steps need it (or register qemu-aarch64-static yourself)"
  fi
  local f
  for f in /proc/sys/fs/binfmt_misc/*; do
    [ -f "$f" ] || continue
    if grep -q '^enabled' "$f" 2>/dev/null && grep -q 'magic 7f454c460201010000000000000000000200b700' "$f" 2>/dev/null; then
      if grep -q '^flags:.*F' "$f" || [ -x "$ROOT$(sed -n 's/^interpreter //p' "$f")" ]; then
        return 0   # an aarch64 handler usable inside the chroot already exists
      fi
    fi
  done
  local interp
  interp="$(command -v qemu-aarch64-static)"
  # ELF64, little endian, e_machine = 0xb7 (AArch64); F = open the interpreter now (chroot-proof)
  printf '%s' ":ec-aarch64:M::\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:$interp:F" \
    > /proc/sys/fs/binfmt_misc/register || die "cannot register a binfmt handler for aarch64"
  registered=ec-aarch64
  log "registered binfmt handler ec-aarch64 -> $interp"
}

in_root() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$ROOT" "$@"; }

# ---- 1. debootstrap --------------------------------------------------------------------------
if [ -x "$ROOT/usr/bin/python3" ] && [ ! -e "$ROOT/debootstrap" ]; then
  log "base system present in $ROOT"
else
  if [ ! -x "$ROOT/debootstrap/debootstrap" ]; then
    [ -e "$ROOT" ] && [ -n "$(ls -A "$ROOT" 2>/dev/null)" ] \
      && die "$ROOT exists but is neither complete nor a first-stage root: remove it and rerun"
    mkdir -p "$ROOT"
    m="$(mirror)"
    log "debootstrap first stage ($SUITE, arm64, minbase) from $m"
    timed "debootstrap --foreign" debootstrap --arch=arm64 --foreign --variant=minbase \
      --include=python3,python3-venv,python3-pip "$SUITE" "$ROOT" "$m" >"$ROOT.debootstrap1.log" 2>&1 \
      || die "debootstrap first stage failed, see $ROOT.debootstrap1.log"
  fi
  ensure_binfmt
  log "debootstrap second stage under emulation (several minutes)"
  timed "debootstrap --second-stage" chroot "$ROOT" /debootstrap/debootstrap --second-stage \
    >"$ROOT.debootstrap2.log" 2>&1 || die "second stage failed, see $ROOT.debootstrap2.log"
fi

# ---- 2. fake /proc/cpuinfo (always refreshed: the processor count follows the host) ------------
if mountpoint -q "$ROOT/proc"; then
  log "warning: something is mounted on $ROOT/proc; qemu -L runs will see the host's cpuinfo"
else
  ncpu=$(( $(sed -E 's/.*[-,]//' /sys/devices/system/cpu/possible 2>/dev/null || echo 3) + 1 ))
  [ "$ncpu" -lt 4 ] && ncpu=4
  {
    for ((i = 0; i < ncpu; i++)); do
      printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
      printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
    done
    printf 'Hardware\t: BCM2835\nModel\t\t: Cortex-A72 (Raspberry Pi 4 stand-in under qemu-aarch64)\n'
  } > "$ROOT/proc/cpuinfo"
fi

# ---- 3. ai-edge-litert + numpy in a venv inside the root ---------------------------------------
pyver=$(cd "$ROOT/usr/bin" && ls python3.* 2>/dev/null | grep -E '^python3\.[0-9]+$' | sort -V | tail -n1 | sed 's/python//')
[ -n "$pyver" ] || die "no python3.X in $ROOT/usr/bin"
site="$ROOT$VENV/lib/python$pyver/site-packages"
if [ -d "$site/ai_edge_litert-$LITERT_VERSION.dist-info" ] && ls -d "$site"/numpy-*.dist-info >/dev/null 2>&1; then
  log "ai-edge-litert $LITERT_VERSION present in $ROOT$VENV"
else
  glibc=$(sed -n '/^Package: libc6$/,/^$/s/^Version: \([0-9]*\.[0-9]*\).*/\1/p' "$ROOT/var/lib/dpkg/status" | head -n1)
  glibc_minor=${glibc#*.}
  plats=(--platform manylinux2014_aarch64)
  for ((v = 17; v <= ${glibc_minor:-36}; v++)); do plats+=(--platform "manylinux_2_${v}_aarch64"); done
  abi="cp${pyver/./}"
  mkdir -p "$ROOT$WHEELS"
  log "downloading aarch64 wheels (python $pyver, glibc $glibc) with the host's pip"
  timed "pip download" "$HOST_PYTHON" -m pip download -q --dest "$ROOT$WHEELS" "${plats[@]}" \
    --python-version "$pyver" --implementation cp --abi "$abi" --only-binary=:all: \
    "ai-edge-litert==$LITERT_VERSION" numpy
  ensure_binfmt
  if [ ! -x "$ROOT$VENV/bin/pip" ]; then
    timed "python3 -m venv (emulated)" in_root python3 -m venv "$VENV"
  fi
  timed "pip install (emulated, offline)" in_root "$VENV/bin/pip" install -q --no-index \
    --find-links "$WHEELS" "ai-edge-litert==$LITERT_VERSION" numpy
fi

log "ready: $ROOT (run with: qemu-aarch64 -cpu cortex-a72 -L $ROOT $ROOT/usr/bin/python3 ..., PYTHONPATH=$VENV/lib/python$pyver/site-packages)"
