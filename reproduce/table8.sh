#!/usr/bin/env bash
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Table 8: pretraining on K600 instead of K400; adds the K400 linear evaluation (100 epochs, 10x3 test).
begin_table 8 "pretraining data set"
ablation iboot_clip_vit_b16_slow_r50_k400_e100_b104 slow_r50 linear -- --teacher clip_vit_b16
pretrain iboot_clip_vit_b16_slow_r50_k600_e100_b104 100 104 "$K600" --arch slow_r50 --teacher clip_vit_b16
for ev in knn linear hmdb_s1 ucf_s1; do evaluate iboot_clip_vit_b16_slow_r50_k600_e100_b104 slow_r50 "$ev"; done
end_table 8
