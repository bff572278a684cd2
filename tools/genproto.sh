#!/usr/bin/env bash
# Regenerate conch/_pb/rpc_pb2.py and rpc_pb2_grpc.py from conch/_pb/rpc.proto.
#
#   bash tools/genproto.sh           # regenerate in place (commit the result)
#   bash tools/genproto.sh --check   # regenerate into a temp dir; exit 1 if the committed
#                                    # stubs differ (CI runs this)
#
# Uses grpcio-tools==1.63.0, always that version, so that the output is byte-identical
# everywhere. It is the oldest grpcio-tools whose output targets protobuf 5 (protobuf 5.26.1
# gencode, GRPC_GENERATED_VERSION 1.63.0), which is what lets conch require only
# grpcio>=1.63.0 and protobuf>=5.26.1 while still running on today's grpcio/protobuf
# (docs/decisions/0007-dependency-floors.md). That grpcio-tools itself requires protobuf<6, so
# it is deliberately NOT in the `test` extra (it would hold every test venv at protobuf 5.x):
# if the interpreter does not have exactly that version, this script installs it, without its
# dependencies (protoc needs none), into .genproto/ (git-ignored) and runs it from there.
# It ships wheels for CPython 3.8-3.12; on a newer Python set PYTHON=python3.12 (or 3.11):
# the output does not depend on the interpreter. Set PYTHON to choose the interpreter
# (default: python, else python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if command -v python >/dev/null 2>&1; then PY=python; else PY=python3; fi
fi

WANT_TOOLS="1.63.0"
HAVE_TOOLS="$("$PY" -c 'from importlib.metadata import version; print(version("grpcio-tools"))' 2>/dev/null || true)"
PROTOC=("$PY" -m grpc_tools.protoc)
if [ "$HAVE_TOOLS" != "$WANT_TOOLS" ]; then
    # a private copy: PYTHONPATH comes before site-packages, so it wins over another version
    tools_dir="$ROOT/.genproto/grpcio-tools-$WANT_TOOLS"
    if [ ! -f "$tools_dir/grpc_tools/protoc.py" ]; then
        echo "genproto: installing grpcio-tools==$WANT_TOOLS into .genproto/ (no dependencies)" >&2
        rm -rf "$tools_dir.tmp"
        if ! "$PY" -m pip install -q --disable-pip-version-check --no-deps --only-binary=:all: \
            --target "$tools_dir.tmp" "grpcio-tools==$WANT_TOOLS" >&2; then
            rm -rf "$tools_dir.tmp"
            echo "genproto: cannot install grpcio-tools==$WANT_TOOLS for $PY (it has wheels for" \
                "CPython 3.8-3.12; try PYTHON=python3.12)" >&2
            exit 2
        fi
        mv "$tools_dir.tmp" "$tools_dir"
    fi
    PROTOC=(env PYTHONPATH="$tools_dir" "$PY" -m grpc_tools.protoc)
fi
HAVE_TOOLS="$(PYTHONPATH="${tools_dir:-}" "$PY" -c 'from importlib.metadata import version; print(version("grpcio-tools"))')"
if [ "$HAVE_TOOLS" != "$WANT_TOOLS" ]; then
    echo "genproto: grpcio-tools $HAVE_TOOLS found, $WANT_TOOLS required (output must be byte-identical)" >&2
    exit 2
fi

PROTO=conch/_pb/rpc.proto
FILES=(conch/_pb/rpc_pb2.py conch/_pb/rpc_pb2_grpc.py)

gen() {  # gen OUTDIR
    "${PROTOC[@]}" -I. --python_out="$1" --grpc_python_out="$1" "$PROTO"
}

case "${1:-}" in
    "")
        gen .
        echo "genproto: regenerated ${FILES[*]}"
        ;;
    --check)
        tmp="$(mktemp -d)"
        trap 'rm -rf "$tmp"' EXIT
        gen "$tmp"
        stale=0
        for f in "${FILES[@]}"; do
            if ! diff -u "$f" "$tmp/$f" >"$tmp/diff.txt" 2>&1; then
                echo "genproto: $f is stale or missing; run: bash tools/genproto.sh" >&2
                head -n 40 "$tmp/diff.txt" >&2
                stale=1
            fi
        done
        if [ "$stale" -ne 0 ]; then exit 1; fi
        echo "genproto: stubs are up to date"
        ;;
    *)
        echo "usage: bash tools/genproto.sh [--check]" >&2
        exit 2
        ;;
esac
