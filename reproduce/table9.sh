#!/usr/bin/env bash
# Table 9: video encoder initialisation, 200 epochs, 32x13: rhoBYOL from scratch, rhoBYOL from an
# inflated self-supervised (BYOL) ImageNet ResNet-50 (IMAGENET_R50), and iBoot (shared with Table 6).
# rhoBYOL rows: PySlowFast's BYOL_SlowR50_8x8.yaml augmentation; inflation as PySlowFast's
# utils/checkpoint.py inflate_weight (the 2D kernel repeated over the temporal taps / their number).
# The runs and evaluations are declared in reproduce/plan.py (TABLES); common.sh runs those not done yet.
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_table 9 "video encoder initialisation"
