#!/usr/bin/env bash
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Table 9: video encoder initialisation, 200 epochs, 32x13: rhoBYOL from scratch, rhoBYOL from an
# inflated self-supervised (BYOL) ImageNet ResNet-50 (IMAGENET_R50), and iBoot (shared with Table 6).
# rhoBYOL rows: PySlowFast's BYOL_SlowR50_8x8.yaml augmentation; inflation as PySlowFast's
# utils/checkpoint.py inflate_weight (the 2D kernel repeated over the temporal taps / their number).
begin_table 9 "video encoder initialisation"
if [[ "$SMOKE" == 1 ]]; then IMAGENET_R50=$(smoke_2d_init); fi
pretrain rhobyol_slow_r50_k400_e200_b416 200 416 "$K400" --arch slow_r50 --method rhobyol --num_clips 2 \
    --augmentation pyslowfast_byol
if [[ -n "${IMAGENET_R50:-}" ]]; then
    pretrain rhobyol_inflated_slow_r50_k400_e200_b416 200 416 "$K400" --arch slow_r50 --method rhobyol \
        --num_clips 2 --augmentation pyslowfast_byol --init "$IMAGENET_R50" --inflation mean
else
    log "WARNING: IMAGENET_R50 is not set: the 'rhoBYOL (inflated)' row stays missing"
fi
pretrain iboot_clip_vit_b16_slow_r50_k400_e200_b416 200 416 "$K400" --arch slow_r50 --teacher clip_vit_b16
for run in rhobyol_slow_r50_k400_e200_b416 rhobyol_inflated_slow_r50_k400_e200_b416 \
           iboot_clip_vit_b16_slow_r50_k400_e200_b416; do
    [[ -f "$RUNS/$run/DONE" || "$DRY_RUN" == 1 ]] || continue
    for ev in knn hmdb_s1 ucf_s1; do evaluate "$run" slow_r50 "$ev"; done
done
knn_curve rhobyol_slow_r50_k400_e200_b416 200
knn_curve iboot_clip_vit_b16_slow_r50_k400_e200_b416 200
end_table 9
