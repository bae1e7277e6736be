#!/usr/bin/env bash
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Table 11: semi-supervised K400 (1% and 10% of the labels per class): iBoot (the 200-epoch run),
# the public rhoBYOL checkpoint (RHOBYOL_CKPT, PySlowFast format) fine-tuned the same way, and a
# network trained from scratch on the same subsets (the "Supervised" row).
begin_table 11 "semi-supervised K400"
pretrain iboot_clip_vit_b16_slow_r50_k400_e200_b416 200 416 "$K400" --arch slow_r50 --teacher clip_vit_b16
if [[ "$SMOKE" == 1 && -z "${RHOBYOL_CKPT:-}" ]]; then
    # Smoke stand-in for the public rhoBYOL checkpoint: the (shared) smoke rhoBYOL run of Table 1.
    pretrain rhobyol_slow_r50_k400_e100_b104 100 104 "$K400" --arch slow_r50 --method rhobyol --num_clips 2 \
        --augmentation pyslowfast_byol
fi
for run in iboot_clip_vit_b16_slow_r50_k400_e200_b416 rhobyol_public scratch; do
    for ev in semi1 semi10; do evaluate "$run" slow_r50 "$ev"; done
done
end_table 11
