"""Shared helpers: torchvision import fallback, distributed setup, logging, atomic checkpoints.

Everything here is used by more than one script (pretrain.py and the evaluation scripts), so it
lives in one place, as in DINO's utils.py.
"""
import glob
import importlib.util
import os

import torch


# ----------------------------------------------------------------------------------------------
# torchvision on a CPU-only torch
# ----------------------------------------------------------------------------------------------
# The torchvision wheel that pairs with torch 2.13.0 is a CUDA build. On a CPU-only torch its
# compiled extension (_C.so) cannot load, and `import torchvision` then dies in
# torchvision/_meta_registrations.py with "operator torchvision::nms does not exist", because
# torch.library.register_fake refuses an operator that was never defined. timm and open_clip
# import torchvision, so they die too. Defining the operators (with pure-torch kernels) before
# torchvision is imported fixes that; when the extension does load we do nothing at all.

_TORCHVISION_FALLBACK_LIB = None


def _nms_reference(dets, scores, iou_threshold):
    """Greedy non-maximum suppression: indices of kept boxes, by decreasing score."""
    order = scores.argsort(descending=True)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    suppressed = torch.zeros(dets.shape[0], dtype=torch.bool, device=dets.device)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=dets.device)


def _torchvision_extension_loads():
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True  # torchvision not installed: nothing to fix
    libraries = glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so")) + glob.glob(
        os.path.join(os.path.dirname(spec.origin), "_C*.pyd"))
    if not libraries:
        return False
    try:
        torch.ops.load_library(libraries[0])
        return True
    except (OSError, RuntimeError, ImportError):
        return False


def register_torchvision_fallbacks():
    """Make `import torchvision` (and so timm, open_clip) work when torchvision's C++ ops cannot load.

    Returns True when fallbacks were registered, False when nothing was needed.
    """
    global _TORCHVISION_FALLBACK_LIB
    if _TORCHVISION_FALLBACK_LIB is not None:
        return True
    if "torchvision" in __import__("sys").modules or _torchvision_extension_loads():
        return False
    lib = torch.library.Library("torchvision", "DEF")
    # Schemas as torchvision's C++ declares them (csrc/ops/nms.cpp).
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    for key in ("CPU", "CUDA"):
        lib.impl("nms", _nms_reference, key)
    _TORCHVISION_FALLBACK_LIB = lib
    return True
