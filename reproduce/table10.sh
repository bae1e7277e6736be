#!/usr/bin/env bash
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Table 10: comparison with the state of the art: the 200-epoch, 32x13 CLIP run (shared with Tables
# 6, 9, 11): K400 linear, UCF101 split 1 and 3-split average, HMDB51 split 1, SSv2 with 3 test views at
# 8x8 and 16x8; and the fully supervised row trained from scratch on each downstream set.
begin_table 10 "comparison with the state of the art"
pretrain iboot_clip_vit_b16_slow_r50_k400_e200_b416 200 416 "$K400" --arch slow_r50 --teacher clip_vit_b16
for ev in linear ucf_s1 ucf_avg hmdb_s1 ssv2_3v ssv2_16x8; do
    evaluate iboot_clip_vit_b16_slow_r50_k400_e200_b416 slow_r50 "$ev"
done
for ev in ucf_s1 hmdb_s1 ssv2; do evaluate scratch slow_r50 "$ev"; done
end_table 10
