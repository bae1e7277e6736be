"""Test setup: run offline, on few threads, with the project root importable and torchvision usable
(tests import torchvision and timm directly to compare against them)."""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402
import torch  # noqa: E402

import compat  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
compat.register_torchvision_fallbacks()


@pytest.fixture(scope="session")
def small_root(tmp_path_factory):
    """The small synthetic set (helpers.make_small_set) and two pretrain.py-style checkpoints, A and B."""
    from helpers import make_small_set, save_tiny_checkpoint
    root = tmp_path_factory.mktemp("small")
    make_small_set(root / "data")
    save_tiny_checkpoint(root / "A.pth", seed=0)
    save_tiny_checkpoint(root / "B.pth", seed=1)
    return root
