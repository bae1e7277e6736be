"""LARS against hand-computed steps, and the parameter groups it is given."""
import pytest
import torch
from torch import nn

import lars


class TwoParams(nn.Module):
    """A 2-element weight (as a 1x2 matrix, so LARS applies) and a 1-element bias."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
        self.bias = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))


def _set_grads(model):
    model.weight.grad = torch.tensor([[0.3, 0.4]], dtype=torch.float64)
    model.bias.grad = torch.tensor([0.5], dtype=torch.float64)


def test_two_steps_match_hand_computation():
    model = TwoParams()
    opt = lars.build_lars(model, lr=1.0, weight_decay=0.1, momentum=0.9, trust_coefficient=0.001)
    # Step 1: ||w|| = 5, ||g|| = 0.5, trust = 0.001 * 5 / (0.5 + 0.1 * 5 + 1e-8) = 0.00499999995
    # d = (g + 0.1 w) * trust = [0.6, 0.8] * trust = [0.00299999997, 0.00399999996]; buf = d
    # w = [3, 4] - 1.0 * buf = [2.99700000003, 3.99600000004]
    # bias: no weight decay, no trust ratio: buf = 0.5, b = 1 - 0.5 = 0.5
    _set_grads(model)
    opt.step()
    torch.testing.assert_close(model.weight.data, torch.tensor([[2.99700000003, 3.99600000004]],
                                                               dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(model.bias.data, torch.tensor([0.5], dtype=torch.float64), rtol=0, atol=1e-12)
    # Step 2 (same grads): ||w|| = 4.99500000005, trust = 0.001 * 4.995 / (0.5 + 0.4995 + 1e-8)
    # = 0.0049974987; d = ([0.3, 0.4] + 0.1 w) * trust = [0.00299699997, 0.00399599996]
    # buf = 0.9 * [0.00299999997, 0.00399999996] + d = [0.00569699994, 0.00759599992]
    # w = [2.99700000003, 3.99600000004] - buf = [2.99130300009, 3.98840400012]
    # bias: buf = 0.9 * 0.5 + 0.5 = 0.95, b = 0.5 - 0.95 = -0.45
    _set_grads(model)
    opt.step()
    torch.testing.assert_close(model.weight.data, torch.tensor([[2.9913030000869547, 3.98840400011594]],
                                                               dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(model.bias.data, torch.tensor([-0.45], dtype=torch.float64), rtol=0, atol=1e-12)


def test_lr_scales_the_step_and_zero_grad_leaves_weight_alone():
    model = TwoParams()
    opt = lars.build_lars(model, lr=0.5, weight_decay=0.0, momentum=0.9)
    model.weight.grad = torch.tensor([[0.3, 0.4]], dtype=torch.float64)
    model.bias.grad = torch.zeros(1, dtype=torch.float64)
    opt.step()
    # wd 0: trust = 0.001 * 5 / (0.5 + 1e-8); step = lr * trust * g = 0.5 * 0.00999999980 * [0.3, 0.4]
    expected = torch.tensor([[3.0, 4.0]], dtype=torch.float64) - 0.5 * (0.005 / (0.5 + 1e-8)) * \
        torch.tensor([[0.3, 0.4]], dtype=torch.float64)
    torch.testing.assert_close(model.weight.data, expected, rtol=0, atol=1e-12)
    assert model.bias.item() == 1.0


def test_param_groups_split_biases_and_norm_and_skip_frozen():
    model = nn.Sequential(nn.Conv3d(3, 4, 3), nn.BatchNorm3d(4), nn.Flatten(), nn.Linear(8, 2),
                          nn.LayerNorm(2))
    frozen = nn.Linear(2, 2)
    frozen.requires_grad_(False)
    model.add_module("frozen", frozen)
    decay, no_decay = lars.lars_param_groups(model, weight_decay=1e-6)
    assert decay["weight_decay"] == 1e-6 and decay["always_adapt"] is True
    assert no_decay["weight_decay"] == 0.0 and no_decay["always_adapt"] is False
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == ids([model[0].weight, model[3].weight])
    assert ids(no_decay["params"]) == ids([model[0].bias, model[1].weight, model[1].bias, model[3].bias,
                                           model[4].weight, model[4].bias])


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="momentum"):
        lars.build_lars(nn.Linear(2, 2), lr=0.1, weight_decay=0.0, momentum=1.5)
    with pytest.raises(ValueError, match="lr"):
        lars.build_lars(nn.Linear(2, 2), lr=-1.0, weight_decay=0.0)


def reference_lars_step(params, groups_wd, lr, momentum, buffers, tc=0.001, eps=1e-8):
    """PySlowFast's LARS (slowfast/models/optimizer.py, apex LARC without clipping) written out: for
    weights, d = (g + wd p) * tc ||p|| / (||g|| + wd ||p|| + eps); biases and norm parameters plain SGD."""
    with torch.no_grad():
        for p, (wd, adapt) in zip(params, groups_wd):
            if p.grad is None:
                continue
            d = p.grad
            if adapt:
                p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                if p_norm > 0 and g_norm > 0:
                    d = (d + wd * p) * (tc * p_norm / (g_norm + p_norm * wd + eps))
            if id(p) not in buffers:
                buffers[id(p)] = d.clone()
            else:
                buffers[id(p)].mul_(momentum).add_(d)
            p.add_(buffers[id(p)], alpha=-lr)


def test_timm_lars_matches_pyslowfast_formula_on_slow_tiny():
    """Five steps of lars.build_lars (timm's Lars) on slow_tiny give bit-identical weights to the
    PySlowFast formula applied by hand with the same parameter groups."""
    import models
    torch.manual_seed(0)
    a = models.build_encoder("slow_tiny")
    b = models.build_encoder("slow_tiny")
    b.load_state_dict(a.state_dict())
    opt = lars.build_lars(a, lr=0.3, weight_decay=1e-6)
    groups = lars.lars_param_groups(b, 1e-6)
    flags = {id(p): (g["weight_decay"], g["always_adapt"]) for g in groups for p in g["params"]}
    params_b = [p for p in b.parameters()]
    buffers = {}
    x = torch.randn(2, 3, 2, 32, 32)
    for _ in range(5):
        for net in (a, b):
            net.zero_grad()
            net(x).pow(2).mean().backward()
        opt.step()
        reference_lars_step(params_b, [flags[id(p)] for p in params_b], 0.3, 0.9, buffers)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
