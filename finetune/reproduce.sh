#!/usr/bin/env bash
# Rebuild the shipped checkpoints and their cards from the photos in ../shared (CPU recipes).
#
#   bash finetune/reproduce.sh teacher   # train dctnet_w64.toon (renderer target), export, eval/teacher_card.yaml
#   bash finetune/reproduce.sh w48       # prune dctnet_w64.toon -> 48 (Taylor), distil + scratch control, export,
#                                        #   eval/w48_card.yaml
#   bash finetune/reproduce.sh widths    # prune + short distillation for widths 56, 40, 32, export
#   bash finetune/reproduce.sh report    # eval/quality_vs_latency.yaml + its CPU overlay (LPIPS vs latency of all widths)
#   bash finetune/reproduce.sh all       # the four in order
#
# Every training step resumes (--ckpt_path last), so an interrupted stage can simply be run again.
# Run folders go to runs/ (git-ignored); exported checkpoints to checkpoints/ (dctnet_w48.toon to the
# package's dctnet_lite/weights/), or runs/ for the intermediate pruned-only and scratch models; a
# re-exported file has a new sha256, so update its row of the weights table (dctnet_lite/registry.py)
# before loading it by name. Timings: checkpoints/README.md.
# The photos are PHOTOS (default ../shared/data/portraits/train, the recipes' default: the shared data
# folder next to the checkout); every stage passes it on (--data.photo_root, --data, --images).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
PHOTOS=${PHOTOS:-../shared/data/portraits/train}
[ -d "$PHOTOS" ] || { echo "reproduce.sh: photo folder $PHOTOS not found (set PHOTOS=...)" >&2; exit 2; }
# Two trainings share the 2 cores of the reference machine: one thread each.
THREADS=${THREADS:-1}
# CPU recipes are overlays of the GPU ones: --config base.yaml --config base_cpu.yaml
TEACHER_CPU=(--config finetune/teacher_w64.yaml --config finetune/teacher_w64_cpu.yaml)
DISTILL_CPU=(--config finetune/distill_w48.yaml --config finetune/distill_w48_cpu.yaml)
SCRATCH_CPU=("${DISTILL_CPU[@]}" --config finetune/scratch_w48_cpu.yaml)

train() {  # train --config ... [overrides...]
    OMP_NUM_THREADS=$THREADS dctnet-lite train "$@" --data.photo_root "$PHOTOS" --ckpt_path last
}

teacher() {
    THREADS=2 train "${TEACHER_CPU[@]}"
    dctnet-lite export runs/teacher_w64_cpu/checkpoints/last.ckpt -o checkpoints/dctnet_w64.toon.safetensors --dtype fp16
    dctnet-lite eval --config eval/teacher_card.yaml --images "$PHOTOS"
}

w48() {
    dctnet-lite prune --config prune/uniform.yaml --width 48 --data "$PHOTOS"   # -> runs/pruned-w48.safetensors
    train "${DISTILL_CPU[@]}" > runs/distill_w48_cpu.log 2>&1 &
    train "${SCRATCH_CPU[@]}" > runs/scratch_w48_cpu.log 2>&1 &
    wait
    dctnet-lite export runs/distill_w48_cpu/checkpoints/last.ckpt -o dctnet_lite/weights/dctnet_w48.toon.safetensors --dtype fp16
    dctnet-lite export runs/scratch_w48_cpu/checkpoints/last.ckpt -o runs/toon-w48-scratch.safetensors --dtype fp16
    dctnet-lite eval --config eval/w48_card.yaml --images "$PHOTOS"
}

widths() {
    # The w48 distillation recipe, re-pointed at each pruned width, with a short budget (150 steps).
    for w in 56 40 32; do
        dctnet-lite prune --config prune/uniform.yaml --width $w --data "$PHOTOS"   # -> runs/pruned-w$w.safetensors
    done
    for w in 56 40 32; do
        train "${DISTILL_CPU[@]}" --model.init_checkpoint runs/pruned-w$w.safetensors \
            --trainer.default_root_dir runs/distill_w${w}_cpu --trainer.max_steps 150 \
            --trainer.val_check_interval 75 > runs/distill_w${w}_cpu.log 2>&1 &
        # at most two at a time
        if [ "$w" = 56 ]; then :; else wait; fi
    done
    wait
    for w in 56 40 32; do
        dctnet-lite export runs/distill_w${w}_cpu/checkpoints/last.ckpt -o checkpoints/dctnet_w$w.toon.safetensors --dtype fp16
    done
}

report() {
    dctnet-lite eval --config eval/quality_vs_latency.yaml --config eval/quality_vs_latency_cpu.yaml --images "$PHOTOS"
}

case "${1:-}" in
    teacher|w48|widths|report) "$1" ;;
    all) teacher; w48; widths; report ;;
    *) sed -n 2,9p "$0" >&2; exit 2 ;;
esac
