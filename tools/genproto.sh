#!/usr/bin/env bash
# Regenerate conch/_pb/rpc_pb2.py and rpc_pb2_grpc.py from conch/_pb/rpc.proto.
#
#   bash tools/genproto.sh           # regenerate in place (commit the result)
#   bash tools/genproto.sh --check   # regenerate into a temp dir; exit 1 if the committed
#                                    # stubs differ (CI runs this)
#
# Needs grpcio-tools==1.85.1 (pinned in the `test` extra) so that the output is byte-identical
# everywhere. Set PYTHON to choose the interpreter (default: python, else python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if command -v python >/dev/null 2>&1; then PY=python; else PY=python3; fi
fi

WANT_TOOLS="1.85.1"
HAVE_TOOLS="$("$PY" -c 'from importlib.metadata import version; print(version("grpcio-tools"))' 2>/dev/null || true)"
if [ -z "$HAVE_TOOLS" ]; then
    echo "genproto: grpcio-tools is not installed for $PY; pip install 'grpcio-tools==$WANT_TOOLS'" >&2
    exit 2
fi
if [ "$HAVE_TOOLS" != "$WANT_TOOLS" ]; then
    echo "genproto: grpcio-tools $HAVE_TOOLS found, $WANT_TOOLS required (output must be byte-identical)" >&2
    exit 2
fi

PROTO=conch/_pb/rpc.proto
FILES=(conch/_pb/rpc_pb2.py conch/_pb/rpc_pb2_grpc.py)

gen() {  # gen OUTDIR
    "$PY" -m grpc_tools.protoc -I. --python_out="$1" --grpc_python_out="$1" "$PROTO"
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
