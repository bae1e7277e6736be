# reproduce/common.sh: what every reproduce/tableN.sh sources: the environment's defaults, the launcher
# and the done-markers. What runs is declared in reproduce/plan.py (runs, evaluations, tables, the
# paper's protocols); `run_table N` runs the steps plan.py lists for table N that are not done yet.
#
# A finished pretraining run leaves $RUNS/<run>/DONE and a finished evaluation $RUNS/<run>/evals/<eval>.done,
# so a run several tables share trains once; each marker holds the command that finished the step, and one
# written by another command stops the table. An interrupted run is simply started again: the scripts
# resume from $RUNS/<run>/checkpoint.pth.
#
# Environment (defaults in brackets):
#   GPUS_PER_NODE [8]  NNODES [1]  NODE_RANK [0]  MASTER_ADDR [127.0.0.1]  MASTER_PORT [29500]
#   RUNS [runs]  RESULTS [results]  SMOKE [0] (CPU, synthetic, tiny)  DRY_RUN [0] (print the commands, run nothing)
#   DATA [data]: K400=$DATA/k400 K600=$DATA/k600 UCF101=$DATA/ucf101 HMDB51=$DATA/hmdb51 SSV2=$DATA/ssv2
#     (Kinetics roots hold train.csv / val.csv in PySlowFast "path label" format)
#   TEACHER_WEIGHTS_<NAME> (e.g. TEACHER_WEIGHTS_CLIP_VIT_B16=/w/clip_b16.pt) for offline teachers
#   IMAGENET_R50 (Table 9: BYOL ResNet-50, torchvision-layout state dict)
#   RHOBYOL_CKPT (Table 11: the public PySlowFast rhoBYOL checkpoint)
#   BATCH_PER_GPU: force a per-GPU batch (the global batch, and with it the lr, then changes)
#   PYTHON [.venv/bin/python if present, else python3]

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

export GPUS_PER_NODE=${GPUS_PER_NODE:-8} NNODES=${NNODES:-1} NODE_RANK=${NODE_RANK:-0}
export MASTER_ADDR=${MASTER_ADDR:-127.0.0.1} MASTER_PORT=${MASTER_PORT:-29500}
export RUNS=${RUNS:-runs} RESULTS=${RESULTS:-results} SMOKE=${SMOKE:-0} DRY_RUN=${DRY_RUN:-0} DATA=${DATA:-data}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then PYTHON="$REPO_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-$([[ "$SMOKE" == 1 ]] && echo 1 || echo 0)}

log() { echo "[reproduce $(date +%H:%M:%S)] $*" >&2; }

# launch SCRIPT ARGS...: torchrun on every node (the same command; NODE_RANK differs), or one python
# process (SMOKE=1, or LAUNCH=python as reproduce/mini.sh sets it).
launch() {
    local cmd logs status=0
    if [[ "$SMOKE" == 1 || "${LAUNCH:-torchrun}" == python ]]; then
        cmd=("$PYTHON" "$@")
    else
        cmd=(torchrun --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" --node_rank "$NODE_RANK"
             --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" "$@")
    fi
    echo "+ ${cmd[*]}" >&2
    if [[ "$DRY_RUN" == 1 ]]; then return 0; fi
    if [[ "${cmd[0]}" != torchrun ]]; then "${cmd[@]}"; return; fi
    logs=$(mktemp -d "${TMPDIR:-/tmp}/iboot_torchrun.XXXXXX")
    torchrun --log-dir "$logs" "${cmd[@]:1}" || status=$?
    if (( status != 0 )); then rank_error "$logs" >&2; fi
    rm -rf "$logs"
    return "$status"
}

# rank_error LOG_DIR: the one line a failed rank ended with (its torchrun error file, written by cli.py),
# printed again after torchrun's report so that it is the last thing a failed step prints.
rank_error() {
    local attempt line
    attempt=$(find "$1" -mindepth 2 -maxdepth 2 -type d -name 'attempt_*' | sort -V | tail -n 1)
    [[ -n "$attempt" ]] || return 0
    line=$(find "$attempt" -name error.json -print0 | sort -z | xargs -0 -r -n 1 sed -n \
        's/^{"message": "\(.*\)", "timestamp": [0-9]*}$/\1/p' | head -n 1)
    if [[ -n "$line" ]]; then printf '%s\n' "${line//\\\"/\"}"; fi
}

# run_steps: every "done-marker TAB command" line of standard input that has no done-marker yet. A marker
# holds the command that finished its step: one written by another command (other data, flags, a smoke
# run in the same RUNS) stops the table with one line instead of standing in for this step.
run_steps() {
    local marker command
    while IFS=$'\t' read -r marker command; do
        if [[ -f "$marker" ]]; then
            if [[ "$(< "$marker")" == "$command" ]]; then log "reusing ${marker#"$RUNS"/} (done)"; continue; fi
            echo "error: $marker: this step was done by another command (the marker holds it), not by: $command;" \
                 "give RUNS another folder, or remove the marker to run this command" >&2
            return 2
        fi
        log "running ${marker#"$RUNS"/}"
        eval "launch $command"
        [[ "$DRY_RUN" == 1 ]] || { mkdir -p "$(dirname "$marker")"; printf '%s\n' "$command" > "$marker"; }
    done
}

# run_table N TITLE: the steps of reproduce/plan.py --table N.
run_table() {
    local t0=$SECONDS steps
    log "Table $1: $2 | $( [[ $SMOKE == 1 ]] && echo 'SMOKE (CPU, synthetic, tiny)' || echo "$NNODES node(s) x $GPUS_PER_NODE GPU(s)")"
    steps=$("$PYTHON" reproduce/plan.py --table "$1")
    run_steps <<< "$steps"
    log "Table $1 done in $((SECONDS - t0)) s; collect with: $PYTHON reproduce/collect.py --runs $RUNS --results $RESULTS"
}
