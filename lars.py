"""LARS for pretraining (paper Section 4.1), as PySlowFast uses it for rhoBYOL: timm's Lars with the
parameter grouping of PySlowFast.

Facts taken from PySlowFast (slowfast/models/optimizer.py: `LARS` wrapper and `construct_optimizer`):
- SGD with momentum 0.9 underneath (PyTorch SGD semantics: buf = m * buf + d, first step buf = d;
  p -= lr * buf; no dampening, no Nesterov).
- For every LARS parameter, the gradient is replaced by
      trust_ratio * (g + wd * p),   trust_ratio = tc * ||p|| / (||g|| + wd * ||p|| + eps)
  with tc = 0.001 and eps = 1e-8, not clipped (clip=False). timm.optim.Lars computes exactly this
  (trust_clip=False); `always_adapt=True` keeps the trust ratio on when --weight_decay is 0, as in
  PySlowFast. One corner differs: when ||g|| is 0, PySlowFast leaves the gradient untouched while timm
  still adds wd * p (a parameter that gets no gradient at all decays by lr * wd * p per step).
- Biases, BN weights/biases and any 1-D parameter get neither weight decay nor the trust ratio
  (PySlowFast: BN params in a group with apply_LARS=False and BN.WEIGHT_DECAY=0, other 1-D params
  in a zero-decay group that LARS skips via ignore_1d_param).
`lars_param_groups(model, weight_decay)` builds those two groups; frozen parameters (a teacher, an
EMA branch) are left out because they have requires_grad=False.
"""
from torch import nn

import compat


def _is_norm(module):
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))


def lars_param_groups(model, weight_decay):
    """Two groups: weights (weight decay + trust ratio) and biases/norm/1-D params (neither)."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        norm = _is_norm(module)
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if norm or p.ndim <= 1 or name.endswith("bias"):
                no_decay.append(p)
            else:
                decay.append(p)
    return [dict(params=decay, weight_decay=weight_decay, always_adapt=True),
            dict(params=no_decay, weight_decay=0.0, always_adapt=False)]


def build_lars(model, lr, weight_decay, momentum=0.9, trust_coefficient=0.001, eps=1e-8):
    """timm's Lars over lars_param_groups(model): the pretraining optimiser of the paper."""
    if lr < 0:
        raise ValueError(f"LARS: lr must be >= 0, got {lr}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"LARS: momentum must be in [0, 1), got {momentum}")
    if weight_decay < 0:
        raise ValueError(f"LARS: weight_decay must be >= 0, got {weight_decay}")
    Lars = compat.import_module("timm.optim").Lars
    return Lars(lars_param_groups(model, weight_decay), lr=lr, momentum=momentum, trust_coeff=trust_coefficient,
                eps=eps, trust_clip=False)
