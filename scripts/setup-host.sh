#!/usr/bin/env bash
# Prepare a Debian 12 host for cyberstar: apt packages, kernel headers for BCC, bpffs.
# Idempotent: every step checks before it acts. Must run as root.
set -euo pipefail

APT_PACKAGES=(
  python3 python3-venv python3-dev python3-pip
  python3-bpfcc bpfcc-tools libbpfcc
  clang llvm libbpf-dev bpftool
  linux-headers-amd64
  mininet bridge-utils iproute2 iputils-ping tcpdump ethtool nftables conntrack
  nginx
  etcd-server etcd-client
  build-essential pkg-config git util-linux
)

log() { printf 'setup-host: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (it installs apt packages, links kernel headers and mounts bpffs)"
  exit 1
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  log "apt packages already installed"
fi

# etcd-server's and nginx's packages start system-wide services where systemd runs; cyberstar
# starts its own (nginx is the benchmarks' server, in a namespace).
for service in etcd nginx; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    systemctl disable --now "$service" >/dev/null 2>&1 || true
  fi
done

# BCC compiles against /lib/modules/$(uname -r)/build. Debian ships no headers for a foreign
# running kernel; its 6.1 headers work for the helpers and structs cyberstar uses.
kdir="/lib/modules/$(uname -r)"
if [ ! -e "$kdir/build" ] || [ ! -e "$kdir/source" ]; then
  hdr=$(find /usr/src -maxdepth 1 -type d -name 'linux-headers-*-amd64' | sort -V | tail -n 1)
  common=$(find /usr/src -maxdepth 1 -type d -name 'linux-headers-*-common' | sort -V | tail -n 1)
  if [ -z "$hdr" ] || [ -z "$common" ]; then
    log "no Debian kernel headers under /usr/src; is linux-headers-amd64 installed?"
    exit 1
  fi
  mkdir -p "$kdir"
  [ -e "$kdir/build" ] || ln -sfn "$hdr" "$kdir/build"
  [ -e "$kdir/source" ] || ln -sfn "$common" "$kdir/source"
  log "linked $kdir/build -> $hdr and $kdir/source -> $common"
fi

if ! mountpoint -q /sys/fs/bpf; then
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf
  log "mounted bpffs on /sys/fs/bpf"
fi
if [ -d /sys/kernel/debug ] && ! mountpoint -q /sys/kernel/debug; then
  mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
fi
if [ -d /sys/kernel/tracing ] && ! mountpoint -q /sys/kernel/tracing; then
  mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
fi
