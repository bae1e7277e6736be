#!/usr/bin/env bash
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Table 2: an ensemble of image models (DINO + CLIP) as targets; single-teacher rows shared with Table 1.
begin_table 2 "ensembles of image models"
ablation iboot_dino_vit_b16_nopool_slow_r50_k400_e100_b104 slow_r50 -- --teacher dino_vit_b16 --no_temporal_pool
ablation iboot_clip_vit_b16_nopool_slow_r50_k400_e100_b104 slow_r50 -- --teacher clip_vit_b16 --no_temporal_pool
ablation iboot_dino_clip_nopool_slow_r50_k400_e100_b104 slow_r50 -- --teacher dino_vit_b16+clip_vit_b16 --no_temporal_pool
end_table 2
