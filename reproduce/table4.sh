#!/usr/bin/env bash
# Table 4: temporal pooling of the T features before the loss. The pooled CLIP run is the default
# setting that Tables 5-8 share.
# The runs and evaluations are declared in reproduce/plan.py (TABLES); common.sh runs those not done yet.
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_table 4 "temporal pooling"
