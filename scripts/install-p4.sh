#!/usr/bin/env bash
# Install the prebuilt p4lang toolchain (bmv2 simple_switch_grpc with P4Runtime, p4c-bm2-ss)
# named by CYBERSTAR_P4_ARCHIVE: its Debian runtime packages, then the archive unpacked at /
# (its paths start with opt/p4/ and its binaries look for their libraries under /opt/p4).
# Without the setting this does nothing: bmv2 and p4c stay optional (see the README).
# Idempotent: an archive already unpacked (same sha256, recorded in /opt/p4) is not unpacked again.
set -euo pipefail

# What the archive's README lists; bookworm's names.
RUNTIME_PACKAGES=(
  libabsl20220623 libboost-iostreams1.74.0 libboost-program-options1.74.0 libc-ares2 libgc1
  libgmp10 libgrpc++1.51 libgrpc29 libjsoncpp25 libnanomsg5 libpcap0.8 libprotobuf32 libre2-9
  libssl3 libthrift-0.17.0 libxxhash0
)
PREFIX=/opt/p4
STAMP="$PREFIX/.cyberstar-archive-sha256"

log() { printf 'install-p4: %s\n' "$*" >&2; }

archive="${CYBERSTAR_P4_ARCHIVE:-}"
if [ -z "$archive" ]; then
  log "CYBERSTAR_P4_ARCHIVE is not set: bmv2 and p4c are not installed (optional; see README)"
  exit 0
fi
if [ ! -f "$archive" ]; then
  log "CYBERSTAR_P4_ARCHIVE=$archive: no such file (relative paths are taken from $(pwd))"
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (it installs apt packages and unpacks into $PREFIX)"
  exit 1
fi
listing=$(tar -tJf "$archive")
for tool in simple_switch_grpc p4c-bm2-ss; do
  if ! grep -qx "opt/p4/bin/$tool" <<<"$listing"; then
    log "$archive is not the p4lang toolchain archive: it has no opt/p4/bin/$tool"
    exit 1
  fi
done

missing=()
for pkg in "${RUNTIME_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing the toolchain's runtime packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

sum=$(sha256sum "$archive" | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$sum" ] && [ -x "$PREFIX/bin/simple_switch_grpc" ] \
    && [ -x "$PREFIX/bin/p4c-bm2-ss" ]; then
  log "$PREFIX already holds $(basename "$archive")"
else
  tar -xJf "$archive" -C / --no-same-owner
  echo "$sum" > "$STAMP"
  log "unpacked $(basename "$archive") into $PREFIX"
fi

# Both binaries must start: a missing shared library shows here, not in the first test.
for tool in simple_switch_grpc p4c-bm2-ss; do
  if ! version=$("$PREFIX/bin/$tool" --version 2>&1); then
    log "$PREFIX/bin/$tool does not run: $version"
    exit 1
  fi
  log "$tool: $(printf '%s' "$version" | tail -n 1)"
done
