# reproduce/common.sh: what every reproduce/tableN.sh sources.
#
# It holds the launcher (torchrun over GPUS_PER_NODE x NNODES, or plain python on the CPU with
# SMOKE=1), the paper's settings for pretraining and for each evaluation protocol (Sections 4.1-4.2),
# and the reuse of shared runs: a pretraining run lives in $RUNS/<name> where <name> spells out its
# settings (e.g. iboot_clip_vit_b16_nopool_slow_r50_k400_e100_b104), so the CLIP and DINO rows that
# Tables 1-4 share, or the 200-epoch CLIP run of Tables 6, 9, 10 and 11, train once. A finished run
# leaves $RUNS/<name>/DONE; a finished evaluation leaves $RUNS/<name>/evals/<eval>.done. An
# interrupted run is simply started again: pretrain.py resumes from $RUNS/<name>/checkpoint.pth.
#
# Every evaluation writes one JSON record into $RESULTS with run = "<pretrain run>__<eval>", which
# is all reproduce/collect.py needs to place it in a table cell.
#
# Environment (defaults in brackets):
#   GPUS_PER_NODE [8]  NNODES [1]  NODE_RANK [0]  MASTER_ADDR [127.0.0.1]  MASTER_PORT [29500]
#   RUNS [runs]  RESULTS [results]  SMOKE [0]  DRY_RUN [0] (print the commands, run nothing)
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

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
RUNS=${RUNS:-runs}
RESULTS=${RESULTS:-results}
SMOKE=${SMOKE:-0}
DRY_RUN=${DRY_RUN:-0}
DATA=${DATA:-data}
K400=${K400:-$DATA/k400}
K600=${K600:-$DATA/k600}
UCF101=${UCF101:-$DATA/ucf101}
HMDB51=${HMDB51:-$DATA/hmdb51}
SSV2=${SSV2:-$DATA/ssv2}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then PYTHON="$REPO_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-$([[ "$SMOKE" == 1 ]] && echo 1 || echo 0)}
WORLD_SIZE=$((GPUS_PER_NODE * NNODES))
SMOKE_DATA="$RUNS/synthetic"

log() { echo "[reproduce $(date +%H:%M:%S)] $*" >&2; }

# launch SCRIPT ARGS...: torchrun on every node (same command, NODE_RANK differs), or python on CPU.
launch() {
    local cmd
    if [[ "$SMOKE" == 1 ]]; then
        cmd=("$PYTHON" "$@")
    else
        cmd=(torchrun --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" --node_rank "$NODE_RANK"
             --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" "$@")
    fi
    echo "+ ${cmd[*]}" >&2
    if [[ "$DRY_RUN" == 1 ]]; then return 0; fi
    "${cmd[@]}"
}

# per_gpu GLOBAL_BATCH: the per-GPU batch that keeps the paper's global batch on $WORLD_SIZE GPUs.
# With SyncBN (pretrain.py uses it under torchrun) the batch-norm statistics are over the global
# batch, so 52 clips on each of 8 GPUs train the same model as 13 on each of 32, memory permitting.
per_gpu() {
    local global=$1
    if [[ -n "${BATCH_PER_GPU:-}" ]]; then
        if (( BATCH_PER_GPU * WORLD_SIZE != global )); then
            log "WARNING: BATCH_PER_GPU=$BATCH_PER_GPU x $WORLD_SIZE GPUs = $((BATCH_PER_GPU * WORLD_SIZE)), not the paper's global batch $global (lr follows the linear scaling rule)"
        fi
        echo "$BATCH_PER_GPU"; return
    fi
    local b=$(((global + WORLD_SIZE - 1) / WORLD_SIZE))
    if (( b * WORLD_SIZE != global )); then
        log "WARNING: global batch $global does not divide over $WORLD_SIZE GPUs; using $b per GPU = $((b * WORLD_SIZE))"
    fi
    if (( b > 13 )); then
        log "NOTE: the paper's global batch $global on $WORLD_SIZE GPUs means $b clips per GPU (paper: 13 on $((global / 13)) GPUs); set BATCH_PER_GPU if it does not fit in memory"
    fi
    echo "$b"
}

# eval_batch GLOBAL_BATCH: the per-GPU batch of an evaluation that keeps the paper's global batch
# (64 or 128 videos) on $WORLD_SIZE GPUs; the evaluation scripts take the batch per GPU.
eval_batch() {
    local global=$1
    if (( global % WORLD_SIZE )); then
        echo "error: the paper's evaluation batch $global does not divide over $WORLD_SIZE GPUs" >&2; exit 2
    fi
    echo $((global / WORLD_SIZE))
}

# teacher_weights TEACHERS ("a" or "a+b"): --teacher_weights for pretrain.py, or nothing.
teacher_weights() {
    local spec=$1 out="" n_set=0 n=0 t var w
    IFS='+' read -ra names <<< "$spec"
    for t in "${names[@]}"; do
        n=$((n + 1))
        if [[ "$SMOKE" == 1 ]]; then w=random; else
            var="TEACHER_WEIGHTS_$(echo "$t" | tr '[:lower:]:-' '[:upper:]__')"
            w=${!var:-}
        fi
        [[ -n "$w" ]] && n_set=$((n_set + 1))
        out="${out:+$out+}$w"
    done
    if (( n_set == 0 )); then return 0; fi
    if (( n_set != n )); then
        echo "error: set TEACHER_WEIGHTS_<NAME> for every teacher of '$spec' or for none" >&2; exit 2
    fi
    echo "--teacher_weights $out"
}

# Smoke-scale overrides (argparse keeps the last value of a flag, so these win over the paper's).
SMOKE_PRETRAIN=(--dataset synthetic --data_root "$SMOKE_DATA" --arch slow_tiny --crop_size 32 --num_frames 2
                --stride 4 --epochs 2 --max_iters_per_epoch 1 --batch_size_per_gpu 2 --warmup_epochs 0
                --num_workers 0 --device cpu --knn_eval no --saveckp_freq 1 --log_every 1)
SMOKE_EVAL=(--dataset synthetic --data_root "$SMOKE_DATA" --crop_size 32 --num_frames 2 --stride 4
            --test_crop_size 37 --batch_size_per_gpu 4 --num_workers 0 --device cpu)  # 37 = 32 x 256 / 224
SMOKE_TRAINING=(--epochs 1 --max_iters_per_epoch 2 --test_clips 1 --test_crops 1)  # linear, fine-tuning, semi-sup.

# pretrain NAME EPOCHS GLOBAL_BATCH DATASET_ROOT PRETRAIN_FLAGS...
#   Trains $RUNS/NAME unless it is finished already (the shared-run reuse).
pretrain() {
    local name=$1 epochs=$2 global=$3 root=$4; shift 4
    local out="$RUNS/$name"
    if [[ -f "$out/DONE" ]]; then log "reusing finished run $name"; return 0; fi
    local teacher="" prev="" a
    for a in "$@"; do [[ "$prev" == "--teacher" ]] && teacher=$a; prev=$a; done
    local args=(pretrain.py --output_dir "$out" --epochs "$epochs")
    if [[ "$SMOKE" == 1 ]]; then
        args+=("$@" "${SMOKE_PRETRAIN[@]}")
    else
        args+=(--dataset kinetics --data_root "$root" --train_list "$root/train.csv"
               --batch_size_per_gpu "$(per_gpu "$global")" "$@")
    fi
    # shellcheck disable=SC2046
    [[ -n "$teacher" ]] && args+=($(teacher_weights "$teacher"))
    log "pretraining $name"
    local t0=$SECONDS
    launch "${args[@]}"
    [[ "$DRY_RUN" == 1 ]] || { touch "$out/DONE"; log "finished $name in $((SECONDS - t0)) s"; }
}

# Record fields for the runs without a pretrain.py checkpoint (the evaluation scripts read method,
# teacher, data and epochs from a pretrain.py checkpoint's args themselves).
meta_flags() {
    case "$1" in
        scratch) echo "--method supervised --teacher - --pretrain_epochs 0" ;;
        rhobyol_public) echo "--method rhobyol --teacher - --pretrain_data k400 --pretrain_epochs 200" ;;
    esac
}

# weights_of NAME [CHECKPOINT]: the --pretrained value for a run ("scratch" has none).
weights_of() {
    local name=$1 ckpt=${2:-checkpoint.pth}
    case "$name" in
        scratch) echo scratch ;;
        rhobyol_public)
            if [[ "$SMOKE" == 1 && -z "${RHOBYOL_CKPT:-}" ]]; then
                # Smoke stand-in for the public checkpoint: the smoke rhoBYOL run of Table 1.
                echo "$RUNS/rhobyol_slow_r50_k400_e100_b104/checkpoint.pth"
            else echo "${RHOBYOL_CKPT:-}"; fi ;;
        *) echo "$RUNS/$name/$ckpt" ;;
    esac
}

# PySlowFast's settings where the paper is silent (README, "Protocols"), spelled out on every command:
# test views of 256 (DATA.TEST_CROP_SIZE) with test clips at delta * i / K (USE_OFFSET_SAMPLING False);
# fine-tuning recipes of configs/contrastive_ssl/finetune_ucf_Slow_R50_syn8.yaml (UCF101, HMDB51) and
# finetune_SSv2_Slow_R50_syn8.yaml (SSv2: ssv2.py's segment sampling); semi-supervised: the linear
# protocol's augmentation (no colour jitter) and PySlowFast's default dropout 0.5.
PROTOCOL_TEST=(--test_crop_size 256 --test_spacing uniform)
PROTOCOL_UCF=(--dropout 0.8 --train_jitter pyslowfast)
PROTOCOL_SSV2=(--sampling ssv2 --dropout 0.5 --train_jitter none)
PROTOCOL_SEMI=(--dropout 0.5 --train_jitter none)

# evaluate NAME ARCH EVAL: one evaluation protocol (paper settings, Section 4.2) of run NAME.
#   EVAL: knn | knn_eNNNN (k-NN of checkpoint_NNNN.pth) | ucf_s1 | ucf_avg | hmdb_s1 | ssv2
#         | ssv2_3v | ssv2_16x8 | linear | semi1 | semi10
evaluate() {
    local name=$1 arch=$2 ev=$3
    local done_flag="$RUNS/$name/evals/$ev.done"
    if [[ -f "$done_flag" ]]; then log "reusing $ev of $name"; return 0; fi
    local ckpt=checkpoint.pth
    [[ "$ev" =~ ^knn_e([0-9]+)$ ]] && ckpt="checkpoint_${BASH_REMATCH[1]}.pth"
    local weights; weights=$(weights_of "$name" "$ckpt")
    local script flags
    case "$ev" in
        knn|knn_e*) script=eval_knn.py
            flags=(--dataset kinetics --data_root "$K400" --nb_knn 20 --batch_size_per_gpu "$(eval_batch 64)") ;;
        ucf_s1|ucf_avg) script=finetune.py
            flags=(--dataset ucf101 --data_root "$UCF101" --split "$([[ $ev == ucf_avg ]] && echo all || echo 1)"
                   --epochs 196 --batch_size_per_gpu "$(eval_batch 128)" --lr 0.0025 --test_clips 10 --test_crops 3
                   "${PROTOCOL_UCF[@]}") ;;
        hmdb_s1) script=finetune.py
            flags=(--dataset hmdb51 --data_root "$HMDB51" --split 1
                   --epochs 196 --batch_size_per_gpu "$(eval_batch 128)" --lr 0.0025 --test_clips 10 --test_crops 3
                   "${PROTOCOL_UCF[@]}") ;;
        ssv2|ssv2_3v|ssv2_16x8) script=finetune.py
            # Table 5 tests 1 view (the paper follows [19]); Table 10 reports "3 v": SSv2's test frames
            # are fixed (ssv2.py), so its 3 views are 1 clip x 3 crops; at 8x8 and at 16x8 frames.
            local views=(--test_clips 1 --test_crops 1)
            [[ "$ev" != ssv2 ]] && views=(--test_clips 1 --test_crops 3)
            flags=(--dataset ssv2 --data_root "$SSV2" --epochs 40 --batch_size_per_gpu "$(eval_batch 64)" --lr 0.15
                   "${views[@]}" "${PROTOCOL_SSV2[@]}")
            [[ "$ev" == ssv2_16x8 ]] && flags+=(--num_frames 16) ;;
        linear) script=eval_linear.py
            flags=(--dataset kinetics --data_root "$K400" --epochs 100 --batch_size_per_gpu "$(eval_batch 64)"
                   --lr 1.0 --test_clips 10 --test_crops 3) ;;
        semi1|semi10) script=semisup.py
            flags=(--dataset kinetics --data_root "$K400" --fraction "${ev#semi}" --subset_dir "$RUNS/splits"
                   --epochs 100 --batch_size_per_gpu "$(eval_batch 64)" --lr 0.01 --test_clips 10 --test_crops 3
                   "${PROTOCOL_SEMI[@]}") ;;
        *) echo "error: unknown evaluation '$ev'" >&2; exit 2 ;;
    esac
    flags+=("${PROTOCOL_TEST[@]}")
    if [[ "$weights" == "" ]]; then
        log "WARNING: skipping $ev of $name: its weights are not given (see README.md, Reproducing the paper)"; return 0
    fi
    # shellcheck disable=SC2207
    local args=("$script" --arch "$arch" --pretrained "$weights" --run_name "${name}__${ev}"
                --results_dir "$RESULTS" --output_dir "$RUNS/$name/evals/$ev" "${flags[@]}" $(meta_flags "$name"))
    if [[ "$SMOKE" == 1 ]]; then
        args+=("${SMOKE_EVAL[@]}" --arch slow_tiny)
        [[ "$script" != eval_knn.py ]] && args+=("${SMOKE_TRAINING[@]}")
        # The synthetic set has no official splits: the 3-split average runs as split 1.
        [[ "$script" == finetune.py ]] && args+=(--split 1)
    fi
    log "evaluating $name: $ev"
    launch "${args[@]}"
    [[ "$DRY_RUN" == 1 ]] || { mkdir -p "$(dirname "$done_flag")"; touch "$done_flag"; }
}

# A standard ablation row (Section 4.3): 100 epochs, 13 x 8 = 104 clips, K400; k-NN, HMDB51 and
# UCF101 split 1 fine-tuning. ablation NAME ARCH [EXTRA_EVALS...] -- PRETRAIN_FLAGS...
ablation() {
    local name=$1 arch=$2; shift 2
    local evals=(knn hmdb_s1 ucf_s1)
    while [[ $# -gt 0 && "$1" != "--" ]]; do evals+=("$1"); shift; done
    [[ $# -gt 0 ]] && shift
    pretrain "$name" 100 104 "$K400" --arch "$arch" "$@"
    local ev; for ev in "${evals[@]}"; do evaluate "$name" "$arch" "$ev"; done
}

# k-NN of the checkpoints every 20 epochs (every epoch in smoke mode): the convergence plot.
knn_curve() {
    local name=$1 epochs=$2 every=20 e
    [[ "$SMOKE" == 1 ]] && { epochs=2; every=1; }
    for ((e = every; e <= epochs; e += every)); do
        evaluate "$name" slow_r50 "$(printf 'knn_e%04d' "$e")"
    done
}

# Smoke mode: a 2D ResNet-style state dict that inflates onto slow_tiny, standing in for
# IMAGENET_R50 (a real one would be a BYOL ResNet-50, see README).
smoke_2d_init() {
    local path="$RUNS/smoke_2d_resnet.pth"
    if [[ ! -f "$path" && "$DRY_RUN" != 1 ]]; then
        mkdir -p "$RUNS"
        "$PYTHON" - "$path" <<'EOF'
import sys, torch
import models
sd3d = models.build_encoder("slow_tiny").state_dict()
# 3D kernels (O, I, t, k, k) -> 2D (O, I, k, k): what an ImageNet ResNet of this shape would hold.
sd2d = {k: (v.mean(2) if v.dim() == 5 else v) for k, v in sd3d.items()}
torch.save(sd2d, sys.argv[1])
EOF
    fi
    echo "$path"
}

begin_table() {
    TABLE_T0=$SECONDS
    log "Table $1: $2 | $( [[ $SMOKE == 1 ]] && echo 'SMOKE (CPU, synthetic, tiny)' || echo "$NNODES node(s) x $GPUS_PER_NODE GPU(s)")"
}
end_table() { log "Table $1 done in $((SECONDS - TABLE_T0)) s; collect with: $PYTHON reproduce/collect.py --runs $RUNS --results $RESULTS"; }
