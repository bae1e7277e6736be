#!/usr/bin/env bash
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Table 5: temporal views for the online network: v1 = v_ref (1 clip), v_ref + v1 (2), v_ref + v1 + v2
# (3, the default run). Adds SSv2 fine-tuning (40 epochs, 1 clip x 1 crop test).
begin_table 5 "number of temporal views"
ablation iboot_clip_vit_b16_nc1_slow_r50_k400_e100_b104 slow_r50 ssv2 -- --teacher clip_vit_b16 --num_clips 1
ablation iboot_clip_vit_b16_nc2_slow_r50_k400_e100_b104 slow_r50 ssv2 -- --teacher clip_vit_b16 --num_clips 2
ablation iboot_clip_vit_b16_slow_r50_k400_e100_b104 slow_r50 ssv2 -- --teacher clip_vit_b16
end_table 5
