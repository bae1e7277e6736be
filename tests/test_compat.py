"""compat.py: torchvision, timm and open_clip import on a CPU-only torch; nothing is registered at import."""
import os
import subprocess
import sys

import pytest
import torch

import compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_torchvision_timm_open_clip_import_after_fallback():
    code = ("import compat; compat.register_torchvision_fallbacks(); "
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
    assert compat.nms_reference(boxes, scores, 0.325).tolist() == [1, 2]  # only box 0 is above 0.325
    assert compat.nms_reference(boxes, scores, 0.3).tolist() == [1]
    assert compat.nms_reference(boxes, scores, 0.5).tolist() == [1, 0]  # 2 suppressed by 0 (0.95)


@pytest.mark.slow
def test_importing_the_project_registers_nothing():
    """No import side effect: importing every module leaves torchvision unregistered and unimported."""
    code = ("import sys, torch; import compat, data, models, teachers, lars, iboot, pretrain, classifier, knn; "
            "print(compat._FALLBACK_LIB is None, 'torchvision' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "True False False"
