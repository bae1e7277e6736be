#!/usr/bin/env bash
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Table 7: online backbone 3D ResNet-50 (default run) vs 3D ResNet-101.
begin_table 7 "backbone architecture"
ablation iboot_clip_vit_b16_slow_r50_k400_e100_b104 slow_r50 -- --teacher clip_vit_b16
ablation iboot_clip_vit_b16_slow_r101_k400_e100_b104 slow_r101 -- --teacher clip_vit_b16
end_table 7
