"""utils.py: torchvision fallback, run records, precision, progress, the learning-rate schedule."""
import math
import os
import subprocess
import sys

import pytest
import torch

import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_torchvision_timm_open_clip_import_after_fallback():
    code = ("import utils; "
            "import torchvision, timm, open_clip, torch; "
            "b = torch.tensor([[0., 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]]); "
            "s = torch.tensor([0.9, 0.8, 0.7]); "
            "print(torch.ops.torchvision.nms(b, s, 0.5).tolist())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=120)
    assert out.returncode == 0, out.stderr
    # Boxes 0 and 1 overlap with IoU 81/119 = 0.68 > 0.5, so box 1 is suppressed; box 2 is apart.
    assert out.stdout.strip().splitlines()[-1] == "[0, 2]"


def test_nms_reference_against_hand_computed_iou():
    boxes = torch.tensor([[0., 0, 2, 2], [1, 0, 3, 2], [0, 0, 2, 2.1]])
    scores = torch.tensor([0.5, 0.9, 0.4])
    # IoU(box1, box0) = 2 / 6 = 0.333; IoU(box1, box2) = 2 / 6.2 = 0.323; IoU(box0, box2) = 4 / 4.2 = 0.95.
    assert utils._nms_reference(boxes, scores, 0.325).tolist() == [1, 2]  # only box 0 is above 0.325
    assert utils._nms_reference(boxes, scores, 0.3).tolist() == [1]
    assert utils._nms_reference(boxes, scores, 0.5).tolist() == [1, 0]  # 2 suppressed by 0 (0.95)


def test_warmup_cosine_lr_hand_values():
    # 10 warm-up steps to 2.0, then cosine over 90 steps to 0.
    assert utils.warmup_cosine_lr(0, 100, 10, 2.0) == 0.0
    assert utils.warmup_cosine_lr(5, 100, 10, 2.0) == pytest.approx(1.0)
    assert utils.warmup_cosine_lr(10, 100, 10, 2.0) == pytest.approx(2.0)
    assert utils.warmup_cosine_lr(55, 100, 10, 2.0) == pytest.approx(1.0)  # half-way: cos(pi/2)=0
    assert utils.warmup_cosine_lr(40, 100, 10, 2.0) == pytest.approx(1.0 + math.cos(math.pi / 3))
    assert utils.warmup_cosine_lr(100, 100, 10, 2.0) == pytest.approx(0.0)
    # SSv2 fine-tuning: 0.08 -> 0.15 over the warm-up
    assert utils.warmup_cosine_lr(3, 40, 6, 0.15, warmup_start_lr=0.08) == pytest.approx(0.115)


def test_write_result_one_file_per_record(tmp_path):
    rec = dict(run="iboot_clip", dataset="ucf101", split="1", metric="top1", value=92.6)
    path = utils.write_result(str(tmp_path), rec)
    import json
    assert json.load(open(path))["value"] == 92.6
    utils.write_result(str(tmp_path), dict(rec, value=93.0))  # same cell: replaced, not duplicated
    assert len(os.listdir(tmp_path)) == 1


def test_progress_without_a_terminal_prints_plain_lines_every_log_every(capsys):
    """In a SLURM .out file (stderr not a terminal) progress is one plain line every log_every
    iterations and at the end, with no carriage returns."""
    progress = utils.Progress(total=7, desc="epoch 1/2", log_every=3)
    for i in range(7):
        progress.update(loss=f"{i:.1f}")
    progress.close()
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split(" |")[0] for line in lines] == ["epoch 1/2 [3/7] loss 2.0", "epoch 1/2 [6/7] loss 5.0",
                                                        "epoch 1/2 [7/7] loss 6.0"]
    assert "\r" not in captured.out + captured.err


def test_config_records_code_packages_and_command(tmp_path, monkeypatch):
    import argparse
    import json
    monkeypatch.setattr(sys, "argv", ["pretrain.py", "--epochs", "3", "--teacher", "a b"])
    utils.save_config(argparse.Namespace(epochs=3, teacher="a b"), str(tmp_path))
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    env = config["environment"]
    assert config["epochs"] == 3
    assert env["command"].endswith("pretrain.py --epochs 3 --teacher 'a b'")
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert env["git_commit"].split("+")[0] == (head or "unknown")
    assert env["versions"]["torch"] == torch.__version__ and set(env["versions"]) >= {"timm", "open_clip_torch", "av"}
    assert env["world_size"] == 1


def test_precision_flag_resolves_the_same_everywhere():
    cpu = torch.device("cpu")
    assert utils.resolve_precision("auto", cpu) == "fp32"
    for p in ("bf16", "fp16", "fp32"):
        assert utils.resolve_precision(p, cpu) == p  # taken as given on every device
    with pytest.raises(ValueError, match="--precision"):
        utils.resolve_precision("int8", cpu)
    conv = torch.nn.Conv3d(3, 4, 3, padding=1)
    with utils.autocast(cpu, "bf16"):
        assert conv(torch.randn(1, 3, 4, 8, 8)).dtype == torch.bfloat16
    with utils.autocast(cpu, "fp32"):
        assert conv(torch.randn(1, 3, 4, 8, 8)).dtype == torch.float32
    assert utils.grad_scaler(cpu, "fp16").is_enabled() and not utils.grad_scaler(cpu, "bf16").is_enabled()


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
    utils.check_training_precision and this test."""
    assert _bf16_weight_grad_error(4) < 0.01 and _bf16_weight_grad_error(3) < 0.01
    assert not _bf16_weight_grad_error(2) < 0.01
    with pytest.raises(ValueError, match="--precision bf16 with --num_frames 2"):
        utils.check_training_precision(torch.device("cpu"), "bf16", 2)
    utils.check_training_precision(torch.device("cpu"), "bf16", 4)
    utils.check_training_precision(torch.device("cpu"), "fp32", 2)
