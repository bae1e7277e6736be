#!/usr/bin/env bash
# The paper's central comparison at CPU scale, on any labelled video set: iBoot with the offline teacher
# against rhoBYOL with its PySlowFast recipe, at equal budget (the same data, encoder, epochs, batch),
# for 3 seeds, with the k-NN top-1 (k=20) of the validation split after every epoch beside the teacher's
# own frame features and random initialisation (Tables 1 and 9's claims; docs/learning.md).
#
#   bash reproduce/mini.sh --data_root ../shared/data/weizmann              # train.csv / val.csv in the folder
#   bash reproduce/mini.sh --dataset ucf101 --data_root /data/ucf101        # or any data set pretrain.py reads
#   bash reproduce/mini.sh --data_root DIR --train_list A.csv --val_list B.csv --seeds 0 1 2 --epochs 60 --linear
#
# Runs on the CPU with plain python (one process); the runs go to $RUNS/mini/<data>/<method>_s<seed>,
# and $OUT (default reproduce/out) gets mini.md, mini.csv, mini.png and mini_monitors.png.
# SMOKE=1: the same on the synthetic set, tiny (about a minute).
# shellcheck source=reproduce/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LAUNCH=python
OUT=${OUT:-reproduce/out}
t0=$SECONDS
plan=$("$PYTHON" reproduce/plan.py --mini "$@")
folder=$(head -n 1 <<< "$plan")
log "CPU-scale comparison: iBoot vs rhoBYOL, runs in $folder"
tail -n +2 <<< "$plan" | run_steps
"$PYTHON" reproduce/collect.py --mini "$folder" --out "$OUT"
log "done in $((SECONDS - t0)) s"
