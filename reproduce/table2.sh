#!/usr/bin/env bash
# Table 2: an ensemble of image models (DINO + CLIP) as targets; single-teacher rows shared with Table 1.
# The runs and evaluations are declared in reproduce/plan.py (TABLES); common.sh runs those not done yet.
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_table 2 "ensembles of image models"
