"""precision.py: --precision means the same everywhere; the CPU bf16 Conv3d canary; bench/gpu_check.sh,
the GPU paths' check, runs (and without a GPU says so in one line)."""
import os
import subprocess
import sys

import pytest
import torch

import precision


def test_precision_flag_resolves_the_same_everywhere():
    cpu = torch.device("cpu")
    assert precision.resolve("auto", cpu) == "fp32"
    for p in ("bf16", "fp16", "fp32"):
        assert precision.resolve(p, cpu) == p  # taken as given on every device
    with pytest.raises(ValueError, match="--precision"):
        precision.resolve("int8", cpu)
    conv = torch.nn.Conv3d(3, 4, 3, padding=1)
    with precision.autocast(cpu, "bf16"):
        assert conv(torch.randn(1, 3, 4, 8, 8)).dtype == torch.bfloat16
    with precision.autocast(cpu, "fp32"):
        assert conv(torch.randn(1, 3, 4, 8, 8)).dtype == torch.float32
    assert precision.grad_scaler(cpu, "fp16").is_enabled() and not precision.grad_scaler(cpu, "bf16").is_enabled()


def _bf16_weight_grad_error(frames):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(16, 8, (3, 1, 1), padding=(1, 0, 0), bias=False)
    x = torch.randn(4, 16, frames, 8, 8)
    conv(x).sum().backward()
    reference, conv.weight.grad = conv.weight.grad.clone(), None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    y.float().sum().backward()
    return ((conv.weight.grad - reference).abs().max() / reference.abs().max()).item()


def test_cpu_bf16_two_frame_conv3d_bug_is_refused():
    """Canary: torch's CPU bf16 Conv3d weight gradient through a temporal kernel of 3 is garbage for
    2-frame clips and right for 3 or 4. When this assertion fails, torch has fixed the bug: remove
    precision.check_training and this test."""
    assert _bf16_weight_grad_error(4) < 0.01 and _bf16_weight_grad_error(3) < 0.01
    assert not _bf16_weight_grad_error(2) < 0.01
    with pytest.raises(ValueError, match="--precision bf16 with --num_frames 2"):
        precision.check_training(torch.device("cpu"), "bf16", 2)
    precision.check_training(torch.device("cpu"), "bf16", 4)
    precision.check_training(torch.device("cpu"), "fp32", 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: run bench/gpu_check.sh itself")
def test_the_gpu_check_without_a_gpu_is_one_failed_line(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(["bash", os.path.join(root, "bench", "gpu_check.sh")], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path)))
    assert proc.returncode == 1
    assert proc.stdout.startswith("FAILED cuda (") and "no CUDA GPU visible to torch" in proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1
