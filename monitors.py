"""Learning monitors: pure functions on feature tensors (no model, no data, no state).

Every function takes float tensors (N, D) of N samples (a batch, a held-out set) and returns a Python
float, so a training loop can log them once per epoch.

    cosine(online, target)               mean cosine of matching rows: the held-out student-teacher
                                         agreement (iBoot's loss is 2 - 2 x this, per online clip)
    centered_cosine(online, target)      the same after subtracting each side's mean over the rows: how
                                         much of the sample-to-sample variation of the target the student
                                         follows. A student that outputs one constant vector (the mean
                                         target) has a high cosine() but centered_cosine() 0
    per_dim_std(features)                std across the rows of each dimension of the L2-normalised
                                         features, averaged over dimensions (SimSiam's collapse monitor):
                                         0 for a collapsed batch (every row the same direction); about
                                         1 / sqrt(D) for features spread over the sphere
    effective_rank(features)             exp of the entropy of the normalised singular values (Roy &
                                         Vetterli 2007): 1 for rank-one features, min(N, D) when every
                                         singular value is equal
"""
import math

import torch
import torch.nn.functional as F


def _check(x, name):
    if not torch.is_tensor(x) or x.dim() != 2:
        raise ValueError(f"{name}: expected a tensor (N, D), got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: no rows")
    return x.detach().float()


def cosine(online, target):
    """Mean over rows of cos(online_i, target_i); online and target (N, D) of the same shape."""
    online, target = _check(online, "cosine online"), _check(target, "cosine target")
    if online.shape != target.shape:
        raise ValueError(f"cosine: shapes differ: {tuple(online.shape)} vs {tuple(target.shape)}")
    return F.cosine_similarity(online, target, dim=1, eps=1e-12).mean().item()


def centered_cosine(online, target):
    """cosine() after subtracting the column mean over the rows from each side (needs N >= 2)."""
    online, target = _check(online, "centered_cosine online"), _check(target, "centered_cosine target")
    if online.shape[0] < 2:
        raise ValueError("centered_cosine: needs at least 2 rows")
    return cosine(online - online.mean(dim=0, keepdim=True), target - target.mean(dim=0, keepdim=True))


def per_dim_std(features, normalize=True):
    """Mean over dimensions of the population std (divisor N) across rows, of the L2-normalised rows
    (normalize=True, SimSiam) or the raw ones. 0 when all rows are equal (collapse)."""
    x = _check(features, "per_dim_std")
    if normalize:
        x = F.normalize(x, dim=1, eps=1e-12)
    return x.std(dim=0, unbiased=False).mean().item()


def effective_rank(features, center=False, eps=1e-12):
    """exp(H(p)), p = s / sum(s) for the singular values s of the (N, D) matrix (Roy & Vetterli 2007),
    H the Shannon entropy in nats. center=True subtracts the column mean first (the rank of the
    variation, not counting the mean direction). 0 singular values contribute nothing (0 log 0 = 0).
    A zero matrix has no singular values above 0: its effective rank is defined here as 0."""
    x = _check(features, "effective_rank")
    if center:
        x = x - x.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x.double())
    total = s.sum()
    if total <= eps:
        return 0.0
    p = s / total
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())
