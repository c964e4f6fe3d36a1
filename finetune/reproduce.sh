#!/usr/bin/env bash
# Rebuild the shipped checkpoints and their cards from the photos in ../shared (CPU recipes).
#
#   bash finetune/reproduce.sh teacher   # train toon-w64 (renderer target), export, eval/teacher_card.yaml
#   bash finetune/reproduce.sh w48       # prune toon-w64 -> 48 (Taylor), distil + scratch control, export,
#                                        #   eval/w48_card.yaml
#   bash finetune/reproduce.sh widths    # prune + short distillation for widths 56, 40, 32, export
#   bash finetune/reproduce.sh report    # eval/quality_vs_latency.yaml (LPIPS vs latency of all widths)
#   bash finetune/reproduce.sh all       # the four in order
#
# Every training step resumes (--ckpt_path last), so an interrupted stage can simply be run again.
# Run folders go to runs/ (git-ignored); exported checkpoints to checkpoints/ (or runs/ for the
# intermediate pruned-only and scratch models). Timings: checkpoints/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
PHOTOS=${PHOTOS:-../shared/data/portraits/train}
[ -d "$PHOTOS" ] || { echo "reproduce.sh: photo folder $PHOTOS not found (set PHOTOS=...)" >&2; exit 2; }
# Two trainings share the 2 cores of the reference machine: one thread each.
THREADS=${THREADS:-1}

train() {  # train <recipe> [overrides...]
    OMP_NUM_THREADS=$THREADS dctnet-lite train --config "$@" --ckpt_path last
}

teacher() {
    OMP_NUM_THREADS=2 dctnet-lite train --config finetune/teacher_w64_cpu.yaml --ckpt_path last
    dctnet-lite export runs/teacher_w64_cpu/checkpoints/last.ckpt -o checkpoints/toon-w64.safetensors --dtype fp16
    dctnet-lite eval --recipe eval/teacher_card.yaml
}

w48() {
    dctnet-lite prune --recipe prune/w48.yaml                       # -> runs/pruned-w48.safetensors
    train finetune/distill_w48_cpu.yaml > runs/distill_w48_cpu.log 2>&1 &
    train finetune/scratch_w48_cpu.yaml > runs/scratch_w48_cpu.log 2>&1 &
    wait
    dctnet-lite export runs/distill_w48_cpu/checkpoints/last.ckpt -o checkpoints/toon-w48.safetensors --dtype fp16
    dctnet-lite export runs/scratch_w48_cpu/checkpoints/last.ckpt -o runs/toon-w48-scratch.safetensors --dtype fp16
    dctnet-lite eval --recipe eval/w48_card.yaml
}

widths() {
    # The w48 distillation recipe, re-pointed at each pruned width, with a short budget (150 steps).
    for w in 56 40 32; do
        dctnet-lite prune --recipe prune/w$w.yaml                   # -> runs/pruned-w$w.safetensors
    done
    for w in 56 40 32; do
        train finetune/distill_w48_cpu.yaml --model.init_checkpoint runs/pruned-w$w.safetensors \
            --trainer.default_root_dir runs/distill_w${w}_cpu --trainer.max_steps 150 \
            --trainer.val_check_interval 75 > runs/distill_w${w}_cpu.log 2>&1 &
        # at most two at a time
        if [ "$w" = 56 ]; then :; else wait; fi
    done
    wait
    for w in 56 40 32; do
        dctnet-lite export runs/distill_w${w}_cpu/checkpoints/last.ckpt -o checkpoints/toon-w$w.safetensors --dtype fp16
    done
}

report() {
    dctnet-lite eval --recipe eval/quality_vs_latency.yaml
}

case "${1:-}" in
    teacher|w48|widths|report) "$1" ;;
    all) teacher; w48; widths; report ;;
    *) sed -n 2,9p "$0" >&2; exit 2 ;;
esac
