#!/usr/bin/env bash
# Table 8: pretraining on K600 instead of K400; adds the K400 linear evaluation (100 epochs, 10x3 test).
# The runs and evaluations are declared in reproduce/plan.py (TABLES); common.sh runs those not done yet.
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_table 8 "pretraining data set"
