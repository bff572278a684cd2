#!/usr/bin/env bash
# Cluster smoke test (SPEC.md, "conch-smoke.sh"): runs the smoke sequence against the cluster in
# CONCH_ENDPOINTS; with none set, against a 3-member local cluster it starts itself, and then
# also the drills. Prints one line per step and PASS/FAIL; exits 0 only on PASS.
set -euo pipefail
# the Python that has conch installed: the one behind the `conch` on PATH, else python3
py=python3
if conch_bin=$(command -v conch 2>/dev/null); then
  first=$(head -n1 "$conch_bin")
  case "$first" in '#!'*python*) py=${first#\#!} ;; esac
fi
exec "$py" -m conch.smoke "$@"
