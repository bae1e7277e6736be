#!/usr/bin/env bash
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Table 3: the additional SSL loss against a momentum (EMA) video encoder; plain rows shared with Table 1.
begin_table 3 "additional SSL loss"
ablation iboot_dino_vit_b16_nopool_slow_r50_k400_e100_b104 slow_r50 -- --teacher dino_vit_b16 --no_temporal_pool
ablation iboot_dino_vit_b16_nopool_ssl_slow_r50_k400_e100_b104 slow_r50 -- --teacher dino_vit_b16 --no_temporal_pool --extra_ssl
ablation iboot_clip_vit_b16_nopool_slow_r50_k400_e100_b104 slow_r50 -- --teacher clip_vit_b16 --no_temporal_pool
ablation iboot_clip_vit_b16_nopool_ssl_slow_r50_k400_e100_b104 slow_r50 -- --teacher clip_vit_b16 --no_temporal_pool --extra_ssl
end_table 3
