#!/usr/bin/env bash
# Rebuild the shipped checkpoints and their cards from the photos in ../shared (CPU recipes).
#
#   bash finetune/reproduce.sh teacher   # train dctnet_w64.toon (renderer target), export, eval/teacher_card.yaml
#   bash finetune/reproduce.sh w48       # prune dctnet_w64.toon -> 48 (Taylor), distil + scratch control, export,
#                                        #   eval/w48_card.yaml
#   bash finetune/reproduce.sh widths    # prune + short distillation for widths 56, 40, 32, export
#   bash finetune/reproduce.sh report    # eval/quality_vs_latency.yaml + its CPU overlay (LPIPS vs latency of all widths)
#   bash finetune/reproduce.sh official  # the official family: teacher official_c32n4.toon, the criteria tables,
#                                        #   prunes c24 (l1) / c16 (taylor) / half the MACs (lamp), their distillations
#                                        #   from it + scratch controls, the cross-family c24 (taught by dctnet_w64.toon),
#                                        #   exports, eval/official_*card.yaml
#   bash finetune/reproduce.sh all       # teacher, w48, widths, report, official in order
#
# Every training step resumes (--ckpt_path last), so an interrupted stage can simply be run again.
# Run folders go to runs/ (git-ignored); exported checkpoints to checkpoints/ (the default's file is
# linked from the package's dctnet_lite/weights/), or runs/ for the intermediate pruned-only and scratch models; a
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
OFFICIAL_CPU=(--config finetune/distill_official_c24.yaml --config finetune/distill_official_c24_cpu.yaml)

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
    dctnet-lite export runs/distill_w48_cpu/checkpoints/last.ckpt -o checkpoints/dctnet_w48.toon.safetensors --dtype fp16
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

official() {
    # The official generator as a teacher (its card: checkpoints/README.md), 2 threads.
    THREADS=2 train --config finetune/teacher_official.yaml --config finetune/teacher_official_cpu.yaml
    dctnet-lite export runs/teacher_official_cpu/checkpoints/last.ckpt -o checkpoints/official_c32n4.toon.safetensors --dtype fp16
    dctnet-lite eval --config eval/official_teacher_card.yaml --images "$PHOTOS"
    # The criteria tables of prune/README.md ("The official family"); 2 threads, one at a time.
    for c in 24 16; do
        OMP_NUM_THREADS=2 python3 prune/compare_criteria.py --checkpoint official_c32n4.toon --width $c --calibration "$PHOTOS" \
            --calib-images 8 --calib-size 256 --readme prune/README.md --marker official_c$c --json prune/criteria_official_c$c.json
    done
    OMP_NUM_THREADS=2 python3 prune/compare_criteria.py --checkpoint official_c32n4.toon --macs-budget 0.5 --criteria l1,lamp,taylor,random \
        --calibration "$PHOTOS" --calib-images 8 --calib-size 256 --readme prune/README.md --marker official_macs50 \
        --json prune/criteria_official_macs50.json
    # The prunes: c24 (l1, official_c24n4.toon's init), c16 (taylor), half the MACs (lamp, global ranking).
    dctnet-lite prune --config prune/official_c24.yaml --checkpoint official_c32n4.toon --data "$PHOTOS"   # -> runs/pruned-official-c24.safetensors
    dctnet-lite prune --config prune/official_c24.yaml --config prune/official_c16.yaml --data "$PHOTOS"   # -> runs/pruned-official-c16.safetensors
    dctnet-lite prune --config prune/official_c24.yaml --config prune/official_macs50.yaml --data "$PHOTOS"   # -> runs/pruned-official-macs50.safetensors
    # Distillations from official_c32n4.toon (500 steps each), the cross-family c24 (from dctnet_w64.toon)
    # and the scratch controls (random init, same recipe, teacher and steps): two at a time, one thread each.
    THREADS=2 train "${OFFICIAL_CPU[@]}" --model.init_checkpoint runs/pruned-official-c24.safetensors \
        --model.teacher_checkpoint official_c32n4.toon --trainer.default_root_dir runs/distill_official_c24_same \
        > runs/distill_official_c24_same.log 2>&1   # official_c24n4.toon (it ran alone, 2 threads)
    train "${OFFICIAL_CPU[@]}" --config finetune/distill_official_c16_cpu.yaml > runs/distill_official_c16.log 2>&1 &
    train "${OFFICIAL_CPU[@]}" --config finetune/distill_official_macs50_cpu.yaml > runs/distill_official_macs50.log 2>&1 &
    wait
    train "${OFFICIAL_CPU[@]}" --config finetune/distill_official_c24_w64_cpu.yaml > runs/distill_official_c24_w64.log 2>&1 &
    train "${OFFICIAL_CPU[@]}" --config finetune/distill_official_c16_cpu.yaml --config finetune/scratch_official_c16_cpu.yaml \
        > runs/scratch_official_c16.log 2>&1 &
    wait
    train "${OFFICIAL_CPU[@]}" --config finetune/scratch_official_c24_cpu.yaml > runs/scratch_official_c24.log 2>&1
    THREADS=2 train "${OFFICIAL_CPU[@]}" --config finetune/distill_official_macs50_cpu.yaml --config finetune/scratch_official_macs50_cpu.yaml \
        > runs/scratch_official_macs50.log 2>&1
    # The criterion check after distillation (prune/README.md): c24 Taylor-pruned, same recipe, not exported.
    dctnet-lite prune --config prune/official_c24.yaml --checkpoint official_c32n4.toon --criterion taylor --data "$PHOTOS" \
        -o runs/pruned-official-c24-taylor.safetensors
    THREADS=2 train "${OFFICIAL_CPU[@]}" --model.init_checkpoint runs/pruned-official-c24-taylor.safetensors \
        --model.teacher_checkpoint official_c32n4.toon --trainer.default_root_dir runs/distill_official_c24_taylor \
        > runs/distill_official_c24_taylor.log 2>&1
    dctnet-lite export runs/distill_official_c24_same/checkpoints/last.ckpt -o checkpoints/official_c24n4.toon.safetensors --dtype fp16
    dctnet-lite export runs/distill_official_c16_cpu/checkpoints/last.ckpt -o checkpoints/official_c16n4.toon.safetensors --dtype fp16
    dctnet-lite export runs/distill_official_macs50_cpu/checkpoints/last.ckpt -o checkpoints/official_macs50n4.toon.safetensors --dtype fp16
    dctnet-lite export runs/distill_official_c24_w64_cpu/checkpoints/last.ckpt -o runs/official_c24n4-w64.safetensors --dtype fp16   # not shipped
    for n in c16 c24 macs50; do
        dctnet-lite export runs/scratch_official_${n}_cpu/checkpoints/last.ckpt -o runs/official_${n}n4-scratch.safetensors --dtype fp16
    done
    # The cards' figures at fp32 (the CPU's auto precision may be bf16)
    for card in official_c24 official_c16 official_macs50 official_c24_controls official_c24_cross official_c24_w64; do
        DCTNET_LITE_CPU_AUTO_PRECISION=fp32 dctnet-lite eval --config eval/${card}_card.yaml --images "$PHOTOS"
    done
    # Speed against c32 (noisy on a shared VM: medians and ratios within one run)
    dctnet-lite bench --checkpoint official_c32n4.toon official_c24n4.toon official_c16n4.toon official_macs50n4.toon \
        --precision bf16 fp32 --threads 2 --resolutions 512 1024 --no-cold-start --repeats 7
}

case "${1:-}" in
    teacher|w48|widths|report|official) "$1" ;;
    all) teacher; w48; widths; report; official ;;
    *) sed -n 2,13p "$0" >&2; exit 2 ;;
esac
