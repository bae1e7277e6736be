#!/usr/bin/env bash
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Table 4: temporal pooling of the T features before the loss. The pooled CLIP run is the default
# setting that Tables 5-8 share.
begin_table 4 "temporal pooling"
ablation iboot_dino_vit_b16_nopool_slow_r50_k400_e100_b104 slow_r50 -- --teacher dino_vit_b16 --no_temporal_pool
ablation iboot_dino_vit_b16_slow_r50_k400_e100_b104 slow_r50 -- --teacher dino_vit_b16
ablation iboot_clip_vit_b16_nopool_slow_r50_k400_e100_b104 slow_r50 -- --teacher clip_vit_b16 --no_temporal_pool
ablation iboot_clip_vit_b16_slow_r50_k400_e100_b104 slow_r50 -- --teacher clip_vit_b16
end_table 4
