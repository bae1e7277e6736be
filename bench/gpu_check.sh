#!/usr/bin/env bash
# bench/gpu_check.sh: the GPU paths of iboot, on one GPU, in under 5 minutes; one line per check.
#
#   bash bench/gpu_check.sh
#
#   cuda      torch sees the GPU (name, torch and CUDA versions, bf16 support)
#   pretrain  pretrain.py under torchrun --nproc_per_node 1: slow_r50, 8x224x224 clips, CLIP ViT-B/16
#             teacher (random weights: offline), bf16 autocast, 4 data workers, 5 iterations, a checkpoint
#   syncbn    under torchrun --nproc_per_node 1 (NCCL): SyncBN's kernels and all-gather give BN's numbers
#             (nn.SyncBatchNorm skips them in one process, and pretraining converts to SyncBN only
#             with 2+), and slow_r50 converted to SyncBN trains a step in DDP with bf16 autocast
#   bench     bench/train.py --device cuda: clips/s, memory, time split, fraction of the bf16 peak
#
# Offline: synthetic videos (cache/synthetic, generated on the first run), random-init teachers. Logs
# and the run folder go to $OUT (a new temporary folder by default). Exit status: the failed checks.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/iboot_gpu_check.XXXXXX")}
export HF_HUB_OFFLINE=1
failed=0

# check NAME SUMMARY_PATTERN COMMAND...: run COMMAND (4 minutes at most), print one line: ok or FAILED,
# the seconds, and the last line of its output that matches SUMMARY_PATTERN (or its last line).
check() {
    local name=$1 pattern=$2 log="$OUT/$1.log" t0=$SECONDS line
    shift 2
    if timeout 240 "$@" > "$log" 2>&1; then
        line=$(grep -E "$pattern" "$log" | tail -n 1)
        echo "ok     $name ($((SECONDS - t0)) s): ${line:-$(tail -n 1 "$log")}"
    else
        echo "FAILED $name ($((SECONDS - t0)) s): $(tail -n 1 "$log")  [log: $log]"
        failed=$((failed + 1))
    fi
}

torchrun1() { "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 "$@"; }

check cuda . "$PYTHON" -c "
import torch
assert torch.cuda.is_available(), 'no CUDA GPU visible to torch'
print(torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda,
      '| bf16', torch.cuda.is_bf16_supported())"
if (( failed )); then exit "$failed"; fi

check pretrain "^epoch 1/1:" torchrun1 pretrain.py --device cuda --precision bf16 --arch slow_r50 \
    --teacher clip_vit_b16 --teacher_weights random --crop_size 224 --num_frames 8 --stride 8 \
    --batch_size_per_gpu 4 --num_workers 4 --epochs 1 --warmup_epochs 0 --max_iters_per_epoch 5 \
    --monitor_videos 8 --knn_eval no --output_dir "$OUT/pretrain"

cat > "$OUT/syncbn.py" <<'PY'
import os
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.modules._functions import SyncBatchNorm as SyncBatchNormFunction
import models, precision
dist.init_process_group("nccl")
device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
torch.cuda.set_device(device)
# SyncBN's own kernels and NCCL exchange (one process: nn.SyncBatchNorm itself would skip them): same as BN
x = torch.randn(4, 64, 8, 28, 28, device=device, requires_grad=True)
w, b = torch.rand(64, device=device, requires_grad=True), torch.randn(64, device=device, requires_grad=True)
y = SyncBatchNormFunction.apply(x, w, b, torch.zeros(64, device=device), torch.ones(64, device=device), 1e-5, 0.1,
                                dist.group.WORLD, 1)
torch.testing.assert_close(y, F.batch_norm(x, None, None, w, b, training=True), rtol=1e-4, atol=1e-4)
y.square().mean().backward()
# slow_r50 converted to SyncBN, in DDP, bf16 autocast: forward and backward
model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(models.build_encoder("slow_r50")).to(device)
model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
with precision.autocast(device, "bf16"):
    out = model(torch.randn(4, 3, 8, 224, 224, device=device))
out.float().square().mean().backward()
grad = torch.stack([p.grad.norm() for p in model.parameters()]).norm().item()
assert torch.isfinite(out.float()).all() and grad > 0 and x.grad is not None, "non-finite output or no gradient"
print(f"SyncBN kernels and NCCL equal BN; slow_r50 with SyncBN in DDP, bf16: output {tuple(out.shape)} {out.dtype}, "
      f"grad norm {grad:.3g}")
dist.destroy_process_group()
PY
PYTHONPATH="$PWD" check syncbn "SyncBN" torchrun1 "$OUT/syncbn.py"

check bench "." "$PYTHON" bench/train.py --device cuda --precision bf16 --batch_sizes 8 --steps 3

echo "$((4 - failed)) of 4 checks passed; logs in $OUT"
exit "$failed"
