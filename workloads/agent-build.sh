#!/usr/bin/env bash
# Recreate the shipped "agent-build" trace: a coding agent building a C
# extension and testing it. Traced: build msgpack's C extension from its
# sdist with gcc (through pip, without build isolation), install it into a
# virtual environment, and run msgpack's test suite against it. The virtual
# environment with setuptools and pytest is made before tracing starts.
# Needs root, gcc and the Python headers (Debian: python3-dev).
#
# Usage: workloads/agent-build.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
. workloads/_agent-common.sh

if [ "${1:-}" = "--traced-part" ]; then
    work=$2
    "$work/venv/bin/pip" install -q --no-index --no-build-isolation \
        "$work/msgpack-$msgpack_version"
    cd "$work/msgpack-$msgpack_version/test"
    "$work/venv/bin/python" -m pytest -q -p no:cacheprovider .
    exit 0
fi

out=${1:-src/paracell/data/traces/agent-build}
paracell=${PARACELL:-paracell}
prepare_sources
work=$(mktemp -d /tmp/paracell-agent-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
unpack_msgpack "$work"
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install -q -U --no-index --find-links "$wheelhouse" \
    pytest setuptools wheel
"$paracell" trace -o "$out" --force --name agent-build --kind agent \
    --recreate workloads/agent-build.sh -- \
    bash workloads/agent-build.sh --traced-part "$work"
