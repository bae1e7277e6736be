#!/usr/bin/env bash
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Table 1: image-based models of different supervision as the target network (rhoBYOL baseline).
# Rows of Tables 1-3 use frame-wise losses: their DINO/CLIP numbers (48.0 / 53.1) are Table 4's
# rows without temporal pooling. k-NN of every 20th checkpoint of the rhoBYOL and CLIP rows feeds the
# convergence plot (k-NN against epochs).
# rhoBYOL trains with PySlowFast's BYOL_SlowR50_8x8.yaml augmentation (random resized crop, jitter
# 0.6/0.6/0.6/0.15), the recipe of [19]; iBoot with the paper's (Section 4.1). One extra row, not in the
# paper: rhoBYOL trained with iBoot's recipe, to see what the recipe alone changes.
begin_table 1 "image models as target network"
ablation rhobyol_slow_r50_k400_e100_b104 slow_r50 -- --method rhobyol --num_clips 2 --augmentation pyslowfast_byol
ablation rhobyol_paperaug_slow_r50_k400_e100_b104 slow_r50 -- --method rhobyol --num_clips 2 --augmentation paper
ablation iboot_swav_r50w2_nopool_slow_r50_k400_e100_b104 slow_r50 -- --teacher swav_r50w2 --no_temporal_pool
ablation iboot_dino_vit_b16_nopool_slow_r50_k400_e100_b104 slow_r50 -- --teacher dino_vit_b16 --no_temporal_pool
ablation iboot_clip_vit_b16_nopool_slow_r50_k400_e100_b104 slow_r50 -- --teacher clip_vit_b16 --no_temporal_pool
ablation iboot_deit_b16_nopool_slow_r50_k400_e100_b104 slow_r50 -- --teacher deit_b16 --no_temporal_pool
knn_curve rhobyol_slow_r50_k400_e100_b104 100
knn_curve iboot_clip_vit_b16_nopool_slow_r50_k400_e100_b104 100
end_table 1
