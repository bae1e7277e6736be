#!/usr/bin/env bash
# Table 10: comparison with the state of the art: the 200-epoch, 32x13 CLIP run (shared with Tables
# 6, 9, 11): K400 linear, UCF101 split 1 and 3-split average, HMDB51 split 1, SSv2 with 3 test views at
# 8x8 and 16x8; and the fully supervised row trained from scratch on each downstream set.
# The runs and evaluations are declared in reproduce/plan.py (TABLES); common.sh runs those not done yet.
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_table 10 "comparison with the state of the art"
