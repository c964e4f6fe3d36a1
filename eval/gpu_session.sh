#!/usr/bin/env bash
# Every GPU figure of eval/PERF.md, results in $OUT. Not yet run on a GPU, so its duration is unknown;
# `fast` compiles per shape and is expected to take longest.
#
#   OUT=/some/dir bash eval/gpu_session.sh                 # all stages, in order
#   OUT=/some/dir bash eval/gpu_session.sh fast accuracy   # some stages (one device call each
#                                                          #   when a call is limited to 10 minutes)
#
#   floor.md        measured bf16 matmul and device-to-device copy ceilings, and the floor per width
#   gpu.json        bench: dctnet_w64.toon/dctnet_w48.toon x 512/1024/2048 x batch 1/8 x fp32/fp16/bf16 x eager/channels_last
#   gpu_fast.json   bench: the same at bf16 with channels_last, torch.compile and CUDA graphs
#   files_*.json    file-to-file stages (decode, model, encode) and sequential vs overlapped
#                   cartoonize_files at 1024 px: fp32 eager, bf16 CUDA graphs (+ PNG level 1, + host resize)
#   accuracy.json   every variant against fp32 (TF32 off): abs/relative error and LPIPS
#   *.log           what each step printed
#
# Photos: $PHOTOS (default ../shared/data/portraits/train, else the astronaut sample of scikit-image).
# Afterwards: add gpu.json and gpu_fast.json to `extra_bench` of eval/quality_vs_latency.yaml and fill eval/PERF.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to a folder for the results}
mkdir -p "$OUT"
PHOTOS=${PHOTOS:-../shared/data/portraits/train}
DEVICE=${DEVICE:-cuda}   # DEVICE=cpu checks the script here (slowly)
if [ ! -e "$PHOTOS" ]; then
    PHOTOS=$(python3 -m dctnet_lite.sample)
fi
status=0
step() {  # step <name> <command...>: run, keep its output, remember a failure, go on
    local name=$1; shift
    echo "== $name: $*" | tee "$OUT/$name.log"
    "$@" >> "$OUT/$name.log" 2>&1 || { echo "   $name exited $?" | tee -a "$OUT/$name.log"; status=1; }
    tail -n 25 "$OUT/$name.log"
}
stages=${*:-floor bench fast files accuracy}
for stage in $stages; do
    case $stage in
    floor)
        step env nvidia-smi
        step floor sh -c "python3 eval/perf_floor.py --measure --device $DEVICE --precision bf16 > '$OUT/floor.md'" ;;
    bench)      # eager and channels_last at every precision (no compilation: a few minutes)
        step bench dctnet-lite bench --checkpoint dctnet_w64.toon dctnet_w48.toon --device "$DEVICE" --resolutions 512 1024 2048 \
            --batch 1 8 --precision fp32 fp16 bf16 --backend eager channels_last \
            --warmup 10 --repeats 50 --output "$OUT/gpu.json" ;;
    fast)       # bf16 with torch.compile and CUDA graphs (compilation per shape: the slow part)
        step fast dctnet-lite bench --checkpoint dctnet_w64.toon dctnet_w48.toon --device "$DEVICE" --resolutions 512 1024 2048 \
            --batch 1 8 --precision bf16 --backend channels_last compile cudagraphs \
            --warmup 10 --repeats 50 --no-cold-start --output "$OUT/gpu_fast.json" ;;
    files)      # file to file at 1024 px: fp32 eager, then the bf16 CUDA-graph path
        step files_fp32 dctnet-lite bench --checkpoint dctnet_w48.toon --device "$DEVICE" --resolutions 1024 \
            --precision fp32 --backend eager --warmup 3 --repeats 10 --no-cold-start \
            --files "$PHOTOS" --files-size 1024 --output "$OUT/files_fp32.json"
        step files_bf16 dctnet-lite bench --checkpoint dctnet_w48.toon --device "$DEVICE" --resolutions 1024 \
            --precision bf16 --backend cudagraphs --warmup 3 --repeats 10 --no-cold-start \
            --files "$PHOTOS" --files-size 1024 --output "$OUT/files_bf16_cudagraphs.json"
        # the same with the fast PNG level and with resizing on the host, to size those two levers
        step files_png1 dctnet-lite bench --checkpoint dctnet_w48.toon --device "$DEVICE" --resolutions 1024 \
            --precision bf16 --backend cudagraphs --warmup 3 --repeats 10 --no-cold-start \
            --files "$PHOTOS" --files-size 1024 --files-png-level 1 --output "$OUT/files_bf16_png1.json"
        step files_hostresize dctnet-lite bench --checkpoint dctnet_w48.toon --device "$DEVICE" --resolutions 1024 \
            --precision bf16 --backend cudagraphs --warmup 3 --repeats 10 --no-cold-start \
            --files "$PHOTOS" --files-size 1024 --files-resize host --output "$OUT/files_bf16_hostresize.json" ;;
    accuracy)
        step accuracy dctnet-lite accuracy --checkpoint dctnet_w64.toon dctnet_w48.toon --images "$PHOTOS" --limit 8 \
            --size 1024 --device "$DEVICE" --precision fp32 fp16 bf16 \
            --backend eager channels_last compile cudagraphs --output "$OUT/accuracy.json" ;;
    *) echo "unknown stage $stage (floor bench fast files accuracy)" >&2; exit 2 ;;
    esac
done
exit $status
