#!/usr/bin/env bash
# All GPU checks plus a short bench, in one go on the GPU test machine. Installs nothing from the network.
# From the project root, with the device kit copied to .devkit/:  bash scripts/gpu_check.sh [OUT_DIR]
set -uo pipefail
OUT_DIR="${1:-${OUT:-/tmp/traceinfer-gpu}}"
mkdir -p "$OUT_DIR"
[ -f .devkit/setup.sh ] && source .devkit/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider 2>&1 | tee "$OUT_DIR/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
python3 -m traceinfer.cli bench --num-requests 64 --json "$OUT_DIR/bench_short.json" 2>&1 | tee "$OUT_DIR/bench_short.log"
bench_rc=${PIPESTATUS[0]}
echo "gpu tests rc=$tests_rc, short bench rc=$bench_rc"
exit $(( tests_rc || bench_rc ))
