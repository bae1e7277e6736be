"""--precision: the same meaning in every script and on every device that supports it.

    PRECISIONS                        auto, bf16, fp16, fp32
    resolve(flag, device)             auto -> bf16 on a GPU that has it, fp32 elsewhere
    check_training(device, p, T)      refuse the one combination whose gradients are wrong
    autocast(device, p) / grad_scaler(device, p)   the forward's context and fp16's loss scaling
"""
import contextlib

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve(flag, device):
    """"auto" is bf16 on a GPU that supports it and fp32 elsewhere (a CPU without bf16 units runs
    bf16 slower than fp32); bf16/fp16/fp32 are taken as given on every device."""
    if flag not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {flag!r}")
    if flag != "auto":
        return flag
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def check_training(device, precision, num_frames):
    """Refuse the one combination where the CPU's bf16 gives wrong gradients: in torch 2.13 the CPU
    bf16 Conv3d weight gradient is garbage (inf, NaN, 1e35) for clips of exactly 2 frames through a
    temporal kernel of 3 (the Slow networks' res4 and res5), while the forward pass, the input
    gradient, fp16 and every other frame count are right (measured; tests/test_precision.py keeps a
    canary that fails once torch fixes it). Call it where the encoder is trained."""
    if device.type == "cpu" and precision == "bf16" and num_frames == 2:
        raise ValueError("--precision bf16 with --num_frames 2 on the CPU: torch's CPU bf16 Conv3d weight gradient "
                         "is wrong for 2-frame clips (inf/NaN); use --num_frames 3 or more, or --precision fp32")


def autocast(device, precision):
    """Autocast context for a resolved precision; fp32 runs without autocast."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(device, precision):
    """Loss scaling for fp16 (bf16 and fp32 need none): a GradScaler that is a no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
