#!/usr/bin/env bash
# Recreate the shipped "agent-pip" trace: what a coding agent does when it
# sets up a project. Traced: create a virtual environment, install pytest
# and its dependencies into it from local wheels, then run msgpack's test
# suite on its pure-Python implementation. The wheels and the msgpack sdist
# are downloaded from PyPI before tracing starts. Needs root and python3
# with the venv module.
#
# Usage: workloads/agent-pip.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
. workloads/_agent-common.sh

if [ "${1:-}" = "--traced-part" ]; then
    work=$2
    "$python" -m venv "$work/venv"
    "$work/venv/bin/pip" install -q --no-index --find-links "$wheelhouse" pytest
    cd "$work/msgpack-$msgpack_version"
    MSGPACK_PUREPYTHON=1 PYTHONPATH=. "$work/venv/bin/python" -m pytest -q -p no:cacheprovider test
    exit 0
fi

out=${1:-src/paracell/data/traces/agent-pip}
paracell=${PARACELL:-paracell}
prepare_sources
work=$(mktemp -d /tmp/paracell-agent-pip.XXXXXX)
trap 'rm -rf "$work"' EXIT
unpack_msgpack "$work"
"$paracell" trace -o "$out" --force --name agent-pip --kind agent \
    --recreate workloads/agent-pip.sh -- \
    bash workloads/agent-pip.sh --traced-part "$work"
