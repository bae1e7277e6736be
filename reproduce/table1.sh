#!/usr/bin/env bash
# Table 1: image-based models of different supervision as the target network (rhoBYOL baseline).
# Rows of Tables 1-3 use frame-wise losses: their DINO/CLIP numbers (48.0 / 53.1) are Table 4's
# rows without temporal pooling. k-NN of every 20th checkpoint of the rhoBYOL and CLIP rows feeds the
# convergence plot (k-NN against epochs).
# rhoBYOL trains with PySlowFast's BYOL_SlowR50_8x8.yaml augmentation (random resized crop, jitter
# 0.6/0.6/0.6/0.15), the recipe of [19]; iBoot with the paper's (Section 4.1). One extra row, not in the
# paper: rhoBYOL trained with iBoot's recipe, to see what the recipe alone changes.
# The runs and evaluations are declared in reproduce/plan.py (TABLES); common.sh runs those not done yet.
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_table 1 "image models as target network"
