"""Pretraining objectives: iBoot (paper Sec. 3, Eq. 1, Algorithm 1, ablations of Sec. 4.3) and the
rhoBYOL baseline (Feichtenhofer et al. CVPR 2021, as in PySlowFast).

- `regression_loss(online, target)`: 2 - 2 cos over the last dim (Eq. 1, per sample).
- `IBoot(encoder, teachers, temporal_pool=True, extra_ssl=False, momentum=0.996)`: the online video
  encoder f_theta plus one linear map W per frozen image teacher f_phi. forward(clips) takes
  [v_ref, v1, v2, ...]: the teachers see v_ref frame by frame, the encoder sees the other clips
  concatenated in one batch (Algorithm 1), or v_ref itself when only one clip is given (Table 5's
  "v1 = v_ref" row). Options: temporal pooling on/off (Table 4), teacher ensembles (Table 2), an
  extra momentum-encoder SSL loss (Table 3).
- `RhoBYOL(encoder, rho clips)`: online encoder + projector + predictor against an EMA target
  (encoder + projector), loss over every ordered pair of clips (Tables 1 and 9).
- `momentum_schedule`, `ema_update`.

Both objectives return dict(loss=scalar, **terms for logging), take `update_momentum(progress)` before
and `after_step()` (EMA update) after each optimizer step, and expose `checkpoint_state()` /
`load_checkpoint_state()` with keys "encoder", "heads", "ema" (teachers are never saved).
"""
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

import augment


def regression_loss(online, target):
    """2 - 2 cos(online, target) over the last dim; shape (N, ...). Computed in float32 so that an
    autocast forward does not lose precision in the normalisation."""
    online = F.normalize(online.float(), dim=-1)
    target = F.normalize(target.float(), dim=-1)
    return 2.0 - 2.0 * (online * target).sum(dim=-1)


def momentum_schedule(progress, base=0.996):
    """BYOL / PySlowFast MOMENTUM_ANNEALING: m = 1 - (1 - base) (cos(pi p) + 1) / 2, p in [0, 1]."""
    progress = min(max(float(progress), 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_update(target, online, m):
    """target <- m * target + (1 - m) * online for parameters; buffers (BN running stats) are copied."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(m).add_(o.detach(), alpha=1.0 - m)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)


def mlp_head(dim_in, hidden, dim_out):
    """Projector / predictor as PySlowFast's rhoBYOL MLPHead (NUM_MLP_LAYERS=2, BN_MLP=True):
    Linear (no bias, BN follows) -> BN -> ReLU -> Linear (bias), no BN after the last layer."""
    return nn.Sequential(nn.Linear(dim_in, hidden, bias=False), nn.BatchNorm1d(hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, dim_out))


def _check_clips(clips, min_clips, who):
    if not isinstance(clips, (list, tuple)) or len(clips) < min_clips:
        raise ValueError(f"{who}: expected a list of at least {min_clips} clips (N, 3, T, H, W), got "
                         f"{type(clips).__name__} of length {len(clips) if hasattr(clips, '__len__') else '?'}")
    shape = clips[0].shape
    for i, c in enumerate(clips):
        if c.ndim != 5 or c.shape[1] != 3:
            raise ValueError(f"{who}: clip {i} has shape {tuple(c.shape)}, expected (N, 3, T, H, W)")
        if c.shape != shape:
            raise ValueError(f"{who}: clips differ in shape: {tuple(shape)} vs {tuple(c.shape)} (clip {i})")


def _pairwise_byol_loss(preds, targets):
    """PySlowFast's rhoBYOL normalisation (tools/train_net.py contrastive_forward, SEQUENTIAL): each
    clip k's prediction is regressed on the EMA key of every other clip, averaged over the rho-1
    others, and the per-clip losses are summed: sum_k mean_{j != k} (2 - 2 cos(p_k, z_j)), each term
    averaged over the batch. (PySlowFast writes it as -cos / T with T=0.5, the same up to a constant.)
    For rho = 2 this is BYOL's symmetric loss. `preds` and `targets` are lists of (N, D)."""
    rho = len(preds)
    total = preds[0].new_zeros((), dtype=torch.float32)
    for k in range(rho):
        for j in range(rho):
            if j != k:
                total = total + regression_loss(preds[k], targets[j]).mean()
    return total / (rho - 1)


class _MomentumMixin:
    """EMA bookkeeping shared by IBoot(extra_ssl=True) and RhoBYOL."""

    def _build_momentum_branch(self, feat_dim, proj_hidden, proj_dim, momentum):
        self.projector = mlp_head(feat_dim, proj_hidden, proj_dim)
        self.predictor = mlp_head(proj_dim, proj_hidden, proj_dim)
        # The EMA target starts as an exact copy (PySlowFast copies at iteration 0) and never gets grads.
        self.ema_encoder = copy.deepcopy(self.encoder)
        self.ema_projector = copy.deepcopy(self.projector)
        for p in list(self.ema_encoder.parameters()) + list(self.ema_projector.parameters()):
            p.requires_grad_(False)
        self.base_momentum = momentum
        self.momentum = momentum

    def _ema_modules(self):
        return nn.ModuleDict(dict(encoder=self.ema_encoder, projector=self.ema_projector))

    @torch.no_grad()
    def _ema_targets(self, clips):
        """EMA (encoder + projector) of each clip, one forward per clip like PySlowFast's key encoder
        with several clips (batched_inference off), so its BN sees one clip's batch at a time."""
        return [self.ema_projector(self.ema_encoder(c).mean(dim=-1)) for c in clips]

    def _ema_step(self):
        ema_update(self.ema_encoder, self.encoder, self.momentum)
        ema_update(self.ema_projector, self.projector, self.momentum)

    def _sync_momentum_branch(self):
        conv = nn.SyncBatchNorm.convert_sync_batchnorm
        self.projector, self.predictor = conv(self.projector), conv(self.predictor)
        self.ema_encoder, self.ema_projector = conv(self.ema_encoder), conv(self.ema_projector)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]


class IBoot(nn.Module, _MomentumMixin):
    """iBoot objective. `encoder.forward(x (N,3,T,H,W)) -> (N, feat_dim, T)`; each teacher maps
    frames (N,3,H,W) in [0,1] to (N, teacher.dim) with its own normalisation and is kept frozen."""

    def __init__(self, encoder, teachers, temporal_pool=True, extra_ssl=False, momentum=0.996,
                 proj_hidden=4096, proj_dim=256, input_norm=None):
        super().__init__()
        if isinstance(teachers, nn.Module):
            teachers = [teachers]
        if len(teachers) == 0:
            raise ValueError("IBoot needs at least one teacher (--teacher)")
        self.encoder = encoder
        self.teachers = nn.ModuleList(teachers)
        for t in self.teachers:
            t.requires_grad_(False)
            t.eval()
        # W of Eq. 1: "a linear transformation" from the online feature size to each teacher's size.
        self.heads = nn.ModuleList([nn.Linear(encoder.feat_dim, t.dim) for t in self.teachers])
        self.temporal_pool = temporal_pool
        self.extra_ssl = extra_ssl
        self.input_norm = input_norm or augment.student_input
        self.momentum = 1.0
        if extra_ssl:
            # Table 3: a momentum copy of the online branch as an extra target. The paper gives no
            # details; we use rhoBYOL's projector/predictor sizes (2048-4096-256, 256-4096-256).
            self._build_momentum_branch(encoder.feat_dim, proj_hidden, proj_dim, momentum)

    def train(self, mode=True):
        super().train(mode)
        for t in self.teachers:  # frozen teachers always run in eval mode (no BN/dropout updates)
            t.eval()
        return self

    def teacher_features(self, v_ref):
        """Algorithm 1: v_ref (N,3,T,H,W) -> frames (N*T,3,H,W) -> each teacher -> list of (N,T,D)."""
        N, _, T, H, W = v_ref.shape
        frames = v_ref.transpose(1, 2).reshape(N * T, 3, H, W)
        with torch.no_grad():
            return [t(frames).reshape(N, T, -1).float() for t in self.teachers]

    def forward(self, clips):
        _check_clips(clips, 1, "IBoot")
        v_ref = clips[0]
        online_clips = list(clips[1:]) if len(clips) > 1 else [clips[0]]
        n_online, N = len(online_clips), v_ref.shape[0]
        # Concat([v1, v2]) as in Algorithm 1: one forward, BN sees all online clips together.
        online_in = self.input_norm(torch.cat(online_clips, dim=0))
        feats = self.encoder(online_in)  # (n*N, C, T)
        q_all = self.teacher_features(v_ref)
        if not self.temporal_pool and feats.shape[-1] != q_all[0].shape[1]:
            raise ValueError(f"IBoot with temporal pooling off needs as many online features as teacher "
                             f"frames: encoder gave T={feats.shape[-1]}, v_ref has T={q_all[0].shape[1]}")
        out = {}
        teacher_loss = 0.0
        for i, (head, q) in enumerate(zip(self.heads, q_all)):
            if self.temporal_pool:  # Table 4 default: average the T features on both sides
                k = head(feats.mean(dim=-1)).unflatten(0, (n_online, N))  # (n, N, D)
                q = q.mean(dim=1)  # (N, D)
                per_clip = regression_loss(k, q.unsqueeze(0)).mean(dim=1)  # (n,)
            else:  # frame-wise: online frame t against teacher frame t, averaged over frames
                k = head(feats.transpose(1, 2)).unflatten(0, (n_online, N))  # (n, N, T, D)
                per_clip = regression_loss(k, q.unsqueeze(0)).mean(dim=(1, 2))  # (n,)
            term = per_clip.sum()  # Eq. 1: summed over the online clips, averaged over the batch
            out[f"loss_teacher{i}" if len(self.heads) > 1 else "loss_teacher"] = term.detach()
            teacher_loss = teacher_loss + term  # Table 2 ensembles: sum over teachers
        loss = teacher_loss
        if self.extra_ssl:
            ssl = self._extra_ssl_loss(feats, online_in, v_ref, n_online, N)
            out["loss_ssl"] = ssl.detach()
            out["momentum"] = torch.tensor(self.momentum)
            loss = loss + ssl
        out["loss"] = loss
        return out

    def _extra_ssl_loss(self, feats, online_in, v_ref, n_online, N):
        """Table 3's extra target. Choice (the paper gives no details): rhoBYOL-style between the
        online clips, prediction of clip k against the EMA projection of every other online clip,
        normalised as PySlowFast's rhoBYOL (sum over clips, mean over the others). The online
        features are the ones already computed for the teacher loss (pooled over T, as in BYOL).
        With a single online clip the EMA target sees v_ref instead (with one clip in total that is
        the same clip)."""
        preds = self.predictor(self.projector(feats.mean(dim=-1))).unflatten(0, (n_online, N)).unbind(0)
        if n_online >= 2:
            targets = self._ema_targets(list(online_in.chunk(n_online, dim=0)))
            return _pairwise_byol_loss(list(preds), targets)
        target = self._ema_targets([self.input_norm(v_ref)])[0]
        return regression_loss(preds[0], target).mean()

    def update_momentum(self, progress):
        if self.extra_ssl:
            self.momentum = momentum_schedule(progress, self.base_momentum)

    @torch.no_grad()
    def after_step(self):
        if self.extra_ssl:
            self._ema_step()

    def convert_sync_batchnorm(self):
        """SyncBN for everything but the frozen teachers (paper: synchronised BN across GPUs)."""
        self.encoder = nn.SyncBatchNorm.convert_sync_batchnorm(self.encoder)
        if self.extra_ssl:
            self._sync_momentum_branch()
        return self

    def _head_modules(self):
        mods = dict(W=self.heads)
        if self.extra_ssl:
            mods.update(projector=self.projector, predictor=self.predictor)
        return nn.ModuleDict(mods)

    def checkpoint_state(self):
        return dict(encoder=self.encoder.state_dict(), heads=self._head_modules().state_dict(),
                    ema=self._ema_modules().state_dict() if self.extra_ssl else {})

    def load_checkpoint_state(self, d):
        for key in ("encoder", "heads"):
            if key not in d:
                raise ValueError(f"IBoot checkpoint has no '{key}' entry (keys: {sorted(d)})")
        self.encoder.load_state_dict(d["encoder"])
        self._head_modules().load_state_dict(d["heads"])
        if self.extra_ssl:
            if not d.get("ema"):
                raise ValueError("IBoot checkpoint has no 'ema' state but --extra_ssl is on")
            self._ema_modules().load_state_dict(d["ema"])


class RhoBYOL(nn.Module, _MomentumMixin):
    """rhoBYOL baseline as PySlowFast's BYOL_SlowR50_8x8: encoder (pooled over T) -> projector
    feat_dim-4096-256 -> predictor 256-4096-256 against an EMA (encoder + projector) target, momentum
    0.996 cosine-annealed to 1, loss over every ordered pair of the rho clips (`_pairwise_byol_loss`).
    Like PySlowFast (SEQUENTIAL), each clip runs through the online network in its own forward, so BN
    statistics are per clip as in BYOL."""

    def __init__(self, encoder, momentum=0.996, proj_hidden=4096, proj_dim=256, input_norm=None):
        super().__init__()
        self.encoder = encoder
        self.input_norm = input_norm or augment.student_input
        self._build_momentum_branch(encoder.feat_dim, proj_hidden, proj_dim, momentum)

    @property
    def heads(self):
        return nn.ModuleDict(dict(projector=self.projector, predictor=self.predictor))

    def forward(self, clips):
        _check_clips(clips, 2, "RhoBYOL")
        clips = [self.input_norm(c) for c in clips]
        preds = [self.predictor(self.projector(self.encoder(c).mean(dim=-1))) for c in clips]
        targets = self._ema_targets(clips)
        loss = _pairwise_byol_loss(preds, targets)
        return dict(loss=loss, momentum=torch.tensor(self.momentum))

    def update_momentum(self, progress):
        self.momentum = momentum_schedule(progress, self.base_momentum)

    @torch.no_grad()
    def after_step(self):
        self._ema_step()

    def convert_sync_batchnorm(self):
        self.encoder = nn.SyncBatchNorm.convert_sync_batchnorm(self.encoder)
        self._sync_momentum_branch()
        return self

    def checkpoint_state(self):
        return dict(encoder=self.encoder.state_dict(), heads=self.heads.state_dict(),
                    ema=self._ema_modules().state_dict())

    def load_checkpoint_state(self, d):
        for key in ("encoder", "heads", "ema"):
            if key not in d:
                raise ValueError(f"RhoBYOL checkpoint has no '{key}' entry (keys: {sorted(d)})")
        self.encoder.load_state_dict(d["encoder"])
        self.heads.load_state_dict(d["heads"])
        self._ema_modules().load_state_dict(d["ema"])

