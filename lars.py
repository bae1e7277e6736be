"""LARS optimizer (You et al. 2017) as PySlowFast uses it for rhoBYOL, and iBoot's paper for pretraining.

Facts taken from PySlowFast (slowfast/models/optimizer.py: `LARS` wrapper and `construct_optimizer`):
- SGD with momentum 0.9 underneath (PyTorch SGD semantics: buf = m * buf + d, first step buf = d;
  p -= lr * buf; no dampening, no Nesterov).
- For every LARS parameter, the gradient is replaced by
      trust_ratio * (g + wd * p),   trust_ratio = tc * ||p|| / (||g|| + wd * ||p|| + eps)
  with tc = 0.001 and eps = 1e-8; PySlowFast builds it with clip=False (the ratio scales the lr, it is
  not clipped to min(ratio, lr)). When ||p|| or ||g|| is 0 the gradient is left untouched (and, as
  there, no weight decay is added either).
- Biases, BN weights/biases and any 1-D parameter get neither weight decay nor the trust ratio
  (PySlowFast: BN params in a group with apply_LARS=False and BN.WEIGHT_DECAY=0, other 1-D params
  in a zero-decay group that LARS skips via ignore_1d_param).
`lars_param_groups(model, weight_decay)` builds those two groups; frozen parameters (a teacher, an
EMA branch) are left out because they have requires_grad=False.
"""
import torch
from torch import nn


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
    return [dict(params=decay, weight_decay=weight_decay, lars=True),
            dict(params=no_decay, weight_decay=0.0, lars=False)]


class LARS(torch.optim.Optimizer):
    """SGD + momentum with a layer-wise trust ratio; groups with lars=False are plain SGD + momentum
    (with their own weight_decay, 0 from lars_param_groups)."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=1e-6, trust_coefficient=0.001, eps=1e-8):
        if lr < 0:
            raise ValueError(f"LARS: lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"LARS: momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"LARS: weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, lars=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, lr, mom = group["weight_decay"], group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["lars"] and p.ndim > 1:
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    if p_norm > 0 and g_norm > 0:
                        trust = group["trust_coefficient"] * p_norm / (g_norm + wd * p_norm + group["eps"])
                        d = (d + wd * p) * trust
                elif not group["lars"] and wd != 0:
                    d = d + wd * p
                state = self.state[p]
                if mom != 0:
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = d.clone()
                    else:
                        state["momentum_buffer"].mul_(mom).add_(d)
                    d = state["momentum_buffer"]
                p.add_(d, alpha=-lr)
        return loss
