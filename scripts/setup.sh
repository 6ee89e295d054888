#!/usr/bin/env bash
# Install everything Baponi needs on Debian/Ubuntu, then serve or test.
#
#   scripts/setup.sh serve [baponi serve options]   install, then start the server
#   scripts/setup.sh test  [pytest options]         install (with dev tools), then lint,
#                                                   type-check and run the whole test suite
set -euo pipefail

cd "$(dirname "$0")/.."
mode=${1:-}
case "$mode" in
  serve|test) shift ;;
  *) echo "usage: scripts/setup.sh serve|test [options]" >&2; exit 2 ;;
esac

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# System packages: bubblewrap (the sandbox), a C compiler and static libc (the sandbox's
# init and gate are built once from baponi_core/_sandbox/agent.c and gate.c), the
# sandboxed interpreters (python3 with pip, bash, node with npm), venv for the server.
need=()
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v cc >/dev/null || need+=(gcc)
[ -e "/usr/lib/$(uname -m)-linux-gnu/libc.a" ] || need+=(libc6-dev)
[ -x /usr/bin/python3 ] || need+=(python3)
/usr/bin/python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# e2fsprogs: each thread home is an ext4 filesystem of its own (mkfs.ext4, resize2fs).
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v losetup >/dev/null || need+=(mount)
# skopeo and umoci: `baponi runtimes import` (every image source to an OCI layout; the
# layers unpacked rootless, inside the root). busybox-static: the tests' own small images.
command -v skopeo >/dev/null || need+=(skopeo)
command -v umoci >/dev/null || need+=(umoci)
if [ "$mode" = test ]; then dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static); fi
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
# The default runtime image is built with mmdebstrap (a Debian root) and umoci (OCI image).
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v openssl >/dev/null || need+=(openssl)
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
[ -e /usr/lib/x86_64-linux-gnu/libseccomp.so.2 ] || [ -e /usr/lib/aarch64-linux-gnu/libseccomp.so.2 ] \
  || need+=(libseccomp2)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The server's own virtual environment.
[ -x .venv/bin/python ] || python3 -m venv .venv
extra=""
[ "$mode" = test ] && extra="[dev]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}"
# Build the sandbox's init and gate now rather than at the server's first start.
.venv/bin/python -c 'from baponi_core._sandbox import agent, gate; agent.binary(); gate.binary()'

# The default runtime: an OCI image layout built once per set of pinned inputs
# (scripts/runtime/) into a cache outside the checkout, then imported as `default`.
layout=$(scripts/runtime/build.sh --where)
if [ -f "$layout/index.json" ]; then
  echo "default runtime image: $layout (cached)"
else
  echo "building the default runtime image into $layout (a few minutes, once)"
  cache=$(dirname "$(dirname "$layout")")
  as_root env BAPONI_CACHE="$cache" scripts/runtime/build.sh "$layout"
  [ "$(id -u)" = 0 ] || as_root chown -R "$(id -u):$(id -g)" "$cache"
  # Layouts of earlier pins are no longer needed: each import made a copy of its own.
  find "$(dirname "$layout")" -mindepth 1 -maxdepth 1 -name 'default-*' ! -path "$layout" \
    -exec rm -rf {} +
fi
# Imported unless `default` already comes from this very layout (its path names the pins).
imported() {
  .venv/bin/baponi runtimes list 2>/dev/null | awk -v want="source=oci:$layout" \
    '$1 == "default" { for (i = 2; i <= NF; i++) if ($i == want) found = 1 } END { exit !found }'
}
if .venv/bin/baponi runtimes --help >/dev/null 2>&1 && ! imported; then
  echo "importing the default runtime image as the runtime default"
  .venv/bin/baponi runtimes import default "oci:$layout" --replace
fi

if [ "$mode" = serve ]; then
  exec .venv/bin/baponi serve "$@"
fi

# The suite runs its sandboxes on that image too (tests/harness.py: default_image).
export BAPONI_TEST_IMAGE="$layout"

# Node tools the tests run (Azurite, the MCP Inspector), pinned by package-lock.json.
npm ci --no-audit --no-fund --loglevel=error >/dev/null

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
cc -fsyntax-only -Wall -Wextra -Werror baponi_core/_sandbox/agent.c baponi_core/_sandbox/gate.c
# Two workers, each with its own session servers (tests/harness.py is built for runs side
# by side): most of the suite waits on sandboxes and servers, so two halve its time here.
.venv/bin/python -m pytest -n 2 "$@"
