#!/usr/bin/env bash
# Captures of a short engine run under nsys, for the nsys reader's fixtures and oracles: one with CUDA graph
# nodes traced (--cuda-graph-trace=node) and one with each graph launch as one item, each exported to SQLite
# with the figures `nsys stats` prints for it (csv). On the GPU test machine, from the project root:
#   source .devkit/setup.sh && bash scripts/capture_nsys.sh OUT_DIR [extra profile options]
set -euo pipefail
OUT_DIR="${1:?usage: capture_nsys.sh OUT_DIR [profile options]}"; shift
mkdir -p "$OUT_DIR"
nsys --version
for mode in node graph; do
  cap="$OUT_DIR/$mode"
  nsys profile -t cuda,nvtx,osrt -s none --cpuctxsw=none --capture-range=cudaProfilerApi --capture-range-end=stop \
    --cuda-graph-trace=$mode -f true -o "$cap" \
    python3 -m traceinfer.cli profile --workload chatbot --model synthetic:tiny --num-requests 8 --output-len 24 \
      --probes default --overhead-passes 0 --report-formats none --no-perfetto --out "$cap.run" "$@"
  nsys export -t sqlite --force-overwrite=true -o "$cap.sqlite" "$cap.nsys-rep"
  for report in nvtx_sum nvtx_gpu_proj_sum cuda_gpu_kern_sum; do
    nsys stats -q --force-overwrite=true -r "$report" --format csv -o "$cap" "$cap.nsys-rep"
  done
  ls -la "$OUT_DIR"
done
