"""utils.py: torchvision fallback, atomic checkpoints, the learning-rate schedule."""
import math
import os
import subprocess
import sys

import pytest
import torch

import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_torchvision_timm_open_clip_import_after_fallback():
    code = ("import utils; utils.register_torchvision_fallbacks(); "
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


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    utils.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, str(path))
    assert utils.load_checkpoint(str(path))["epoch"] == 1

    real_save = torch.save

    def crash_half_way(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        utils.save_checkpoint({"epoch": 2}, str(path))
    monkeypatch.setattr(torch, "save", real_save)
    assert utils.load_checkpoint(str(path))["epoch"] == 1  # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["checkpoint.pth"]  # and no temporary file is left behind


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        utils.load_checkpoint(str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        utils.load_checkpoint(str(bad))


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
