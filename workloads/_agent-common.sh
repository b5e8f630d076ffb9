# Shared by the agent workload scripts: a local wheel house and the msgpack
# source tree, prepared before tracing so the traced part needs no network.
# Sourced, not run.

wheelhouse=${PARACELL_WHEELHOUSE:-/tmp/paracell-wheelhouse}
python=${PYTHON:-python3}
msgpack_version=1.2.4

prepare_sources() {
    mkdir -p "$wheelhouse"
    if [ ! -f "$wheelhouse/.complete-$msgpack_version" ]; then
        "$python" -m pip download -q -d "$wheelhouse" --only-binary :all: \
            pytest setuptools wheel
        "$python" -m pip download -q -d "$wheelhouse" --no-deps --no-binary :all: \
            "msgpack==$msgpack_version"
        touch "$wheelhouse/.complete-$msgpack_version"
    fi
}

# Unpack the msgpack sdist (C sources and its test suite) into $1.
unpack_msgpack() {
    tar -xzf "$wheelhouse/msgpack-$msgpack_version.tar.gz" -C "$1"
}
