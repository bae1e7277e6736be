#!/usr/bin/env bash
# Table 3: the additional SSL loss against a momentum (EMA) video encoder; plain rows shared with Table 1.
# The runs and evaluations are declared in reproduce/plan.py (TABLES); common.sh runs those not done yet.
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_table 3 "additional SSL loss"
