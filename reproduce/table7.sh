#!/usr/bin/env bash
# Table 7: online backbone 3D ResNet-50 (default run) vs 3D ResNet-101.
# The runs and evaluations are declared in reproduce/plan.py (TABLES); common.sh runs those not done yet.
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_table 7 "backbone architecture"
