"""torchvision, timm and open_clip on a CPU-only torch: the one compatibility shim of the project.

    import_module(name)   a module of torchvision, timm or open_clip (e.g. "timm.optim"), on any torch
    import_timm() / import_open_clip()   the libraries themselves

The torchvision wheel that pairs with torch 2.13.0 is a CUDA build. On a CPU-only torch its compiled
extension (_C.so) cannot load, and `import torchvision` then dies in torchvision/_meta_registrations.py
with "operator torchvision::nms does not exist", because torch.library.register_fake refuses an
operator that was never defined. timm and open_clip import torchvision, so they die too. Defining the
operators (with pure-torch kernels) before torchvision is imported fixes that; when the extension does
load nothing is registered. Nothing happens at import of this module: the functions above register
the operators on their first call, so every module that needs one of these libraries calls them
instead of importing the library at its top.
"""
import glob
import importlib
import importlib.util
import os
import sys

import torch

_FALLBACK_LIB = None


def nms_reference(dets, scores, iou_threshold):
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
    folder = os.path.dirname(spec.origin)
    libraries = glob.glob(os.path.join(folder, "_C*.so")) + glob.glob(os.path.join(folder, "_C*.pyd"))
    if not libraries:
        return False
    try:
        torch.ops.load_library(libraries[0])
        return True
    except (OSError, RuntimeError, ImportError):
        return False


def register_torchvision_fallbacks():
    """Make `import torchvision` work when torchvision's C++ ops cannot load. Returns True when the
    fallbacks are registered (now or before), False when nothing was needed or torchvision is imported."""
    global _FALLBACK_LIB
    if _FALLBACK_LIB is not None:
        return True
    if "torchvision" in sys.modules or _torchvision_extension_loads():
        return False
    lib = torch.library.Library("torchvision", "DEF")
    # Schemas as torchvision's C++ declares them (csrc/ops/nms.cpp).
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    for key in ("CPU", "CUDA"):
        lib.impl("nms", nms_reference, key)
    _FALLBACK_LIB = lib
    return True


def import_module(name):
    """importlib.import_module(name) once the torchvision fallbacks are in place."""
    register_torchvision_fallbacks()
    return importlib.import_module(name)


def import_timm():
    return import_module("timm")


def import_open_clip():
    """open_clip (a second to import: only CLIP teachers call this)."""
    return import_module("open_clip")
