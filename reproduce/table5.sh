#!/usr/bin/env bash
# Table 5: temporal views for the online network: v1 = v_ref (1 clip), v_ref + v1 (2), v_ref + v1 + v2
# (3, the default run). Adds SSv2 fine-tuning (40 epochs, 1 clip x 1 crop test).
# The runs and evaluations are declared in reproduce/plan.py (TABLES); common.sh runs those not done yet.
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_table 5 "number of temporal views"
