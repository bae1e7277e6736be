#!/usr/bin/env bash
# Table 11: semi-supervised K400 (1% and 10% of the labels per class): iBoot (the 200-epoch run),
# the public rhoBYOL checkpoint (RHOBYOL_CKPT, PySlowFast format) fine-tuned the same way, and a
# network trained from scratch on the same subsets (the "Supervised" row).
# The runs and evaluations are declared in reproduce/plan.py (TABLES); common.sh runs those not done yet.
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_table 11 "semi-supervised K400"
