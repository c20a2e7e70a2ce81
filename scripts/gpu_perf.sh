#!/usr/bin/env bash
# Where the time goes on the GPU, for issue 15's before/after: the bench, batch 1, and an nsys profile of each.
# From the project root on the GPU machine, with the device kit in .devkit/:  bash scripts/gpu_perf.sh TAG [OUT_DIR]
# Leaves TAG.tar.gz (bench JSON, reports, nsys tables) and TAG.log in OUT_DIR.
set -uo pipefail
TAG="${1:?tag}"
OUT_DIR="${2:-${OUT:-/tmp/traceinfer-gpu}}"
W="/tmp/perf-$TAG"; mkdir -p "$W" "$OUT_DIR"
[ -f .devkit/setup.sh ] && source .devkit/setup.sh
exec > >(tee "$OUT_DIR/$TAG.log") 2>&1
B1="--num-requests 1 --min-input-len 128 --max-input-len 128 --min-output-len 512 --max-output-len 512"
ti() { echo "+ traceinfer $*"; python3 -m traceinfer.cli "$@"; }
ti bench --json "$W/bench.json" | tail -25
ti bench $B1 --json "$W/batch1.json" | tail -25
ti profile --workload bench --nsys --overhead-passes 0 --no-progress --out "$W/run-bench" | tail -15
ti nsys-stats "$W/run-bench" --top 25 > "$W/nsys-bench.txt"; head -120 "$W/nsys-bench.txt"
ti profile --workload bench $B1 --nsys --overhead-passes 0 --no-progress --out "$W/run-b1" | tail -15
ti nsys-stats "$W/run-b1" --top 40 > "$W/nsys-b1.txt"; head -120 "$W/nsys-b1.txt"
for r in run-bench run-b1; do cp "$W/$r/report.md" "$W/$r-report.md" 2>/dev/null; cp "$W/$r/nsys_stats.json" "$W/$r-nsys_stats.json" 2>/dev/null; done
tar -czf "$OUT_DIR/$TAG.tar.gz" -C "$W" bench.json batch1.json nsys-bench.txt nsys-b1.txt run-bench-report.md run-b1-report.md run-bench-nsys_stats.json run-b1-nsys_stats.json
