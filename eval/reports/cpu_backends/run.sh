#!/usr/bin/env bash
# The INT8 artefacts and the CPU backends table of eval/reports/cpu_backends/ (issue 15), from the
# repository root. Photos: ../shared/data/portraits/train (its train split calibrates, its val
# split measures). Artefacts go to runs/cpu_backends/ (git-ignored; about 1-10 MB each).
set -euo pipefail
PHOTOS=${PHOTOS:-../shared/data/portraits/train}
OUT=runs/cpu_backends
REPORT=eval/reports/cpu_backends
mkdir -p "$OUT"
export OMP_NUM_THREADS=2
for ck in official_c24n4.toon dctnet_w48.toon; do
  dctnet-lite quantize --checkpoint "$ck" --calibration "$PHOTOS" -o "$OUT/$ck.int8.onnx" --threads 2 --json \
    > "$REPORT/quantize_$ck.json" || true   # exit 1 when the bound is missed: the artefact is still written
done
python3 "$REPORT/run_bench.py" --int8 "$OUT/official_c24n4.toon.int8.onnx" "$OUT/dctnet_w48.toon.int8.onnx" \
  --threads 2 -o "$REPORT/bench.json" | tee "$OUT/bench.log"
python3 "$REPORT/int8_vs_tf.py" --calibration "$PHOTOS" --threads 2 | tee "$REPORT/int8_vs_tf.txt"
