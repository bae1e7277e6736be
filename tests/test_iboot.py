"""iBoot and rhoBYOL objectives against hand computations, with tiny stand-in networks (no models.py,
teachers.py or augment.py needed)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import augment
import iboot

N, T, S = 2, 4, 16


def student_norm(x):
    # PySlowFast Kinetics normalisation, written out: mean 0.45, std 0.225.
    return (x - 0.45) / 0.225


class TinyEncoder(nn.Module):
    """Stand-in for models.SlowResNet: (N,3,T,H,W) -> (N, feat_dim, T)."""

    def __init__(self, feat_dim=6):
        super().__init__()
        self.feat_dim = feat_dim
        self.conv = nn.Conv3d(3, feat_dim, (1, 3, 3), padding=(0, 1, 1))
        self.bn = nn.BatchNorm3d(feat_dim)
        self.calls = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return F.relu(self.bn(self.conv(x))).mean(dim=(3, 4))


class FixedTeacher(nn.Module):
    """Stand-in for teachers.Teacher: frames (N,3,H,W) in [0,1] -> (N, dim), a fixed random map."""

    def __init__(self, dim=5, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.proj = nn.Linear(12, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, 12, generator=g))
            self.proj.bias.copy_(torch.randn(dim, generator=g))
        self.grad_enabled_at_call = []

    def forward(self, frames):
        assert frames.ndim == 4 and frames.shape[1] == 3
        self.grad_enabled_at_call.append(torch.is_grad_enabled())
        return self.proj(F.adaptive_avg_pool2d(frames, 2).flatten(1))


def make_clips(n_clips, seed=0, t=T):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(N, 3, t, S, S, generator=g) for _ in range(n_clips)]


def cos_loss(a, b):
    """2 - 2 cos written out with dot products and norms."""
    return 2 - 2 * (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def manual_teacher_loss(obj, clips, teacher_index=0):
    """Eq. 1 by hand: teacher frame by frame on v_ref, the encoder on the online clips together."""
    teacher, head = obj.teachers[teacher_index], obj.heads[teacher_index]
    v_ref = clips[0]
    online = clips[1:] if len(clips) > 1 else clips[:1]
    with torch.no_grad():
        q = torch.stack([teacher(v_ref[:, :, t]) for t in range(v_ref.shape[2])], dim=1)  # (N,T,D)
    feats = obj.encoder(student_norm(torch.cat(online)))  # (n*N, C, T)
    total = 0.0
    for i in range(len(online)):
        f = feats[i * N:(i + 1) * N]
        if obj.temporal_pool:
            total = total + cos_loss(head(f.mean(-1)), q.mean(1)).mean()
        else:
            per_frame = [cos_loss(head(f[:, :, t]), q[:, t]) for t in range(f.shape[-1])]
            total = total + torch.stack(per_frame, 1).mean()
    return total


def make_iboot(n_teachers=1, **kw):
    torch.manual_seed(0)
    teachers = [FixedTeacher(dim=5 + i, seed=i) for i in range(n_teachers)]
    return iboot.IBoot(TinyEncoder(), teachers, input_norm=student_norm, proj_hidden=16, proj_dim=8, **kw)


def test_regression_loss_known_cosines():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert iboot.regression_loss(e1, e2).item() == pytest.approx(2.0)  # orthogonal
    assert iboot.regression_loss(e1, 3 * e1).item() == pytest.approx(0.0, abs=1e-6)  # same direction
    assert iboot.regression_loss(e1, -2 * e1).item() == pytest.approx(4.0)  # opposite
    # 60 degrees: cos = 0.5 -> 1.0
    assert iboot.regression_loss(e1, torch.tensor([1.0, math.sqrt(3.0)])).item() == pytest.approx(1.0)
    batch = iboot.regression_loss(torch.stack([e1, e1, e1]), torch.stack([e1, e2, -e1]))
    torch.testing.assert_close(batch, torch.tensor([0.0, 2.0, 4.0]))


@pytest.mark.parametrize("temporal_pool", [True, False])
@pytest.mark.parametrize("n_clips", [1, 2, 3])
def test_iboot_forward_matches_manual(temporal_pool, n_clips):
    obj = make_iboot(temporal_pool=temporal_pool)
    clips = make_clips(n_clips)
    out = obj(clips)
    # Online clips go through the encoder once, concatenated (Algorithm 1).
    n_online = max(1, n_clips - 1)
    assert obj.encoder.calls == [n_online * N]
    assert obj.teachers[0].grad_enabled_at_call == [False]  # teacher ran once, under no_grad
    expected = manual_teacher_loss(obj, clips)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    assert out["loss_teacher"].item() == pytest.approx(out["loss"].item(), rel=1e-6)


def test_ensemble_sums_teachers_each_with_its_own_W():
    obj = make_iboot(n_teachers=2)
    assert [h.out_features for h in obj.heads] == [5, 6]
    assert all(h.in_features == 6 for h in obj.heads)
    clips = make_clips(3)
    out = obj(clips)
    expected = manual_teacher_loss(obj, clips, 0) + manual_teacher_loss(obj, clips, 1)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_teacher0"] + out["loss_teacher1"], out["loss"].detach())


@pytest.mark.parametrize("extra_ssl", [False, True])
def test_gradients_reach_online_network_and_W_only(extra_ssl):
    obj = make_iboot(extra_ssl=extra_ssl)
    obj(make_clips(3))["loss"].backward()
    online = list(obj.encoder.parameters()) + list(obj.heads.parameters())
    if extra_ssl:
        online += list(obj.projector.parameters()) + list(obj.predictor.parameters())
    for p in online:
        assert p.grad is not None and p.grad.abs().sum() > 0
    frozen = list(obj.teachers.parameters())
    if extra_ssl:
        frozen += list(obj.ema_encoder.parameters()) + list(obj.ema_projector.parameters())
    for p in frozen:
        assert not p.requires_grad and p.grad is None
    assert {id(p) for p in obj.trainable_parameters()} == {id(p) for p in online}


def test_teachers_stay_in_eval_mode():
    obj = make_iboot()
    obj.train()
    assert obj.encoder.training and not obj.teachers[0].training


def test_sgd_steps_lower_the_loss_against_a_fixed_teacher():
    obj = make_iboot()
    teacher_before = [p.clone() for p in obj.teachers.parameters()]
    opt = torch.optim.SGD(obj.trainable_parameters(), lr=0.1, momentum=0.9)
    clips = make_clips(3, seed=1)
    losses = []
    for _ in range(30):
        loss = obj(clips)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    for a, b in zip(teacher_before, obj.teachers.parameters()):
        assert torch.equal(a, b)


def test_frame_wise_loss_needs_matching_frame_counts():
    obj = make_iboot(temporal_pool=False)
    clips = [make_clips(1, t=4)[0], make_clips(1, t=2)[0]]
    with pytest.raises(ValueError, match="differ in shape"):
        obj(clips)
    with pytest.raises(ValueError, match=r"\(N, 3, T, H, W\)"):
        obj([torch.rand(N, 3, S, S)])


def test_ema_update_matches_formula():
    online, target = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([3.0, 5.0]))
        online.bias.copy_(torch.tensor([-1.0, 0.0]))
        online.running_mean.copy_(torch.tensor([7.0, 8.0]))
        target.weight.copy_(torch.tensor([1.0, 2.0]))
        target.bias.copy_(torch.tensor([1.0, 1.0]))
    iboot.ema_update(target, online, 0.9)
    # 0.9 * [1, 2] + 0.1 * [3, 5] = [1.2, 2.3]; 0.9 * [1, 1] + 0.1 * [-1, 0] = [0.8, 0.9]
    torch.testing.assert_close(target.weight.data, torch.tensor([1.2, 2.3]))
    torch.testing.assert_close(target.bias.data, torch.tensor([0.8, 0.9]))
    torch.testing.assert_close(target.running_mean, torch.tensor([7.0, 8.0]))  # buffers copied


def test_momentum_schedule_values():
    assert iboot.momentum_schedule(0.0) == pytest.approx(0.996)
    assert iboot.momentum_schedule(0.5) == pytest.approx(0.998)
    assert iboot.momentum_schedule(1.0) == pytest.approx(1.0)
    # 1 - 0.01 * (cos(pi/4) + 1) / 2 = 1 - 0.01 * 0.8535534 = 0.99146447
    assert iboot.momentum_schedule(0.25, base=0.99) == pytest.approx(0.99146447, abs=1e-8)


def test_pairwise_loss_counts_every_ordered_pair_once():
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    preds = [e1, e1, e1]
    targets = [e1, e2, -e1]
    # pairs (k, j != k): (0,1)=2 (0,2)=4 (1,0)=0 (1,2)=4 (2,0)=0 (2,1)=2 -> 12, / (rho - 1) = 6
    assert iboot._pairwise_byol_loss(preds, targets).item() == pytest.approx(6.0)
    # rho = 2 is BYOL's symmetric loss: l(p0, z1) + l(p1, z0) = 2 + 0
    assert iboot._pairwise_byol_loss([e1, e1], [e1, e2]).item() == pytest.approx(2.0)


def make_rhobyol():
    torch.manual_seed(0)
    return iboot.RhoBYOL(TinyEncoder(), input_norm=student_norm, proj_hidden=16, proj_dim=8)


def test_rhobyol_rho3_matches_manual():
    obj = make_rhobyol()
    assert [m.__class__ for m in obj.projector] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert obj.projector[0].bias is None and obj.predictor[-1].out_features == 8
    clips = make_clips(3, seed=2)
    out = obj(clips)
    preds = [obj.predictor(obj.projector(obj.encoder(student_norm(c)).mean(-1))) for c in clips]
    with torch.no_grad():
        keys = [obj.ema_projector(obj.ema_encoder(student_norm(c)).mean(-1)) for c in clips]
    pairs = [(k, j) for k in range(3) for j in range(3) if k != j]
    assert len(pairs) == 6
    expected = sum(cos_loss(preds[k], keys[j]).mean() for k, j in pairs) / 2
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    out["loss"].backward()
    assert all(p.grad is None for p in obj.ema_encoder.parameters())
    assert all(p.grad is not None for p in obj.predictor.parameters())


def test_momentum_branch_update():
    obj = make_rhobyol()
    for a, b in zip(obj.ema_encoder.parameters(), obj.encoder.parameters()):
        assert torch.equal(a, b)  # starts as a copy
    with torch.no_grad():
        for p in obj.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in obj.ema_encoder.parameters()]
    obj.update_momentum(1.0)  # m = 1: target frozen
    obj.after_step()
    for a, b in zip(before, obj.ema_encoder.parameters()):
        assert torch.equal(a, b)
    obj.update_momentum(0.0)  # m = 0.996: moves by 0.004 toward the online weights (+1)
    obj.after_step()
    for a, b in zip(before, obj.ema_encoder.parameters()):
        torch.testing.assert_close(b, a + 0.004, rtol=0, atol=1e-6)
    plain = make_iboot()
    plain.update_momentum(0.3)
    plain.after_step()  # no-op without a momentum branch
    assert not hasattr(plain, "ema_encoder")


@pytest.mark.parametrize("n_clips", [2, 3])
def test_extra_ssl_loss_matches_manual(n_clips):
    obj = make_iboot(extra_ssl=True)
    clips = make_clips(n_clips, seed=3)
    out = obj(clips)
    online = clips[1:]
    feats = obj.encoder(student_norm(torch.cat(online))).mean(-1)
    preds = obj.predictor(obj.projector(feats)).split(N)
    with torch.no_grad():
        key = lambda c: obj.ema_projector(obj.ema_encoder(student_norm(c)).mean(-1))  # noqa: E731
        if n_clips == 3:  # v1 and v2 predict each other's EMA projection
            # sum over the 2 ordered pairs / (rho - 1) with rho = 2 online clips
            ssl = (cos_loss(preds[0], key(online[1])).mean() + cos_loss(preds[1], key(online[0])).mean()) / 1
        else:  # one online clip: the EMA target sees v_ref
            ssl = cos_loss(preds[0], key(clips[0])).mean()
    torch.testing.assert_close(out["loss_ssl"], ssl.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"].detach(), out["loss_teacher"] + out["loss_ssl"])


@pytest.mark.parametrize("extra_ssl", [False, True])
def test_checkpoint_state_roundtrip_without_teachers(extra_ssl):
    obj = make_iboot(extra_ssl=extra_ssl)
    opt = torch.optim.SGD(obj.trainable_parameters(), lr=0.1)
    obj(make_clips(3))["loss"].backward()
    opt.step()
    obj.after_step()
    state = obj.checkpoint_state()
    assert set(state) == {"encoder", "heads", "ema"}
    assert set(state["encoder"]) == set(TinyEncoder().state_dict())
    assert {"W.0.weight", "W.0.bias"} <= set(state["heads"])
    assert all(k.startswith(("W.", "projector.", "predictor.")) for k in state["heads"])  # no teacher
    assert bool(state["ema"]) == extra_ssl
    assert all(k.startswith(("encoder.", "projector.")) for k in state["ema"])
    fresh = make_iboot(extra_ssl=extra_ssl)
    fresh.load_checkpoint_state(state)
    obj.eval(), fresh.eval()
    clips = make_clips(3, seed=5)
    torch.testing.assert_close(obj(clips)["loss"], fresh(clips)["loss"])
    with pytest.raises(ValueError, match="heads"):
        fresh.load_checkpoint_state({"encoder": state["encoder"]})


def test_rhobyol_checkpoint_roundtrip_and_needs_two_clips():
    obj = make_rhobyol()
    state = obj.checkpoint_state()
    assert set(state["heads"]) >= {"projector.0.weight", "predictor.3.bias"}
    fresh = make_rhobyol()
    fresh.load_checkpoint_state(state)
    with pytest.raises(ValueError, match="at least 2"):
        obj(make_clips(1))


def test_default_normalisation_is_augment_student_norm():
    """The objectives normalise the online input with augment.student_input (PySlowFast's Kinetics
    mean and std), the one place that normalisation is written."""
    x = torch.rand(1, 3, 2, 4, 4)
    torch.testing.assert_close(augment.student_input(x), student_norm(x))
    torch.testing.assert_close(augment.student_input((x * 255).round().to(torch.uint8)),
                               student_norm((x * 255).round() / 255))
    assert tuple(augment.STUDENT_MEAN) == pytest.approx((0.45, 0.45, 0.45))
    assert iboot.RhoBYOL(TinyEncoder(), proj_hidden=16, proj_dim=8).input_norm is augment.student_input
