"""monitors.py against hand-computed values."""
import math

import pytest
import torch

import monitors


def test_cosine_hand_computed():
    online = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    target = torch.tensor([[1.0, 1.0], [0.0, 5.0]])
    # row 0: 1 / sqrt(2); row 1: 1; mean (1 / sqrt(2) + 1) / 2
    assert monitors.cosine(online, target) == pytest.approx((1 / math.sqrt(2) + 1) / 2, abs=1e-6)


def test_cosine_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        monitors.cosine(torch.ones(2, 3), torch.ones(3, 3))


def test_centered_cosine_of_a_constant_prediction_is_zero():
    # The student predicts the same vector for every row: high raw cosine with non-negative targets,
    # none of their variation.
    target = torch.tensor([[1.0, 0.2], [0.8, 0.4], [1.2, 0.0]])
    online = target.mean(dim=0, keepdim=True).expand(3, 2).clone()
    assert monitors.cosine(online, target) > 0.95
    assert monitors.centered_cosine(online, target) == pytest.approx(0.0, abs=1e-6)


def test_centered_cosine_hand_computed():
    # centred target rows: [1, 0], [-1, 0]; centred online rows: [1, 1], [-1, -1]: cos 1/sqrt(2) each
    target = torch.tensor([[3.0, 5.0], [1.0, 5.0]])
    online = torch.tensor([[2.0, 2.0], [0.0, 0.0]])
    assert monitors.centered_cosine(online, target) == pytest.approx(1 / math.sqrt(2), abs=1e-6)


def test_per_dim_std_collapsed_batch_is_zero():
    x = torch.tensor([[1.0, 2.0, 3.0]]).repeat(5, 1)
    assert monitors.per_dim_std(x) == pytest.approx(0.0, abs=1e-7)
    # the same direction at different norms is still a collapse after normalisation
    assert monitors.per_dim_std(x * torch.arange(1.0, 6.0).view(5, 1)) == pytest.approx(0.0, abs=1e-7)


def test_per_dim_std_hand_computed():
    # rows [1, 0] and [-1, 0]: dim 0 has values +-1 (population std 1), dim 1 is 0: mean 0.5
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert monitors.per_dim_std(x) == pytest.approx(0.5, abs=1e-7)
    # raw (not normalised): rows [2, 0], [0, 0] -> dim 0 std 1, dim 1 std 0 -> 0.5; normalised: [1, 0], [0, 0]
    # (a zero row stays zero) -> dim 0 std 0.5 -> 0.25
    y = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    assert monitors.per_dim_std(y, normalize=False) == pytest.approx(0.5, abs=1e-7)
    assert monitors.per_dim_std(y) == pytest.approx(0.25, abs=1e-7)


def test_per_dim_std_orthonormal_rows():
    # the D one-hot rows of size D: each dim takes 1 once and 0 (D-1) times: std sqrt(1/D - 1/D^2)
    d = 8
    assert monitors.per_dim_std(torch.eye(d)) == pytest.approx(math.sqrt(1 / d - 1 / d ** 2), abs=1e-6)


@pytest.mark.parametrize("n", [1, 4, 16])
def test_effective_rank_identity_is_its_size(n):
    assert monitors.effective_rank(torch.eye(n)) == pytest.approx(n, rel=1e-9)
    # an identity-like matrix: orthonormal rows (a rotation) scaled by a constant
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(0)))
    assert monitors.effective_rank(3.0 * q) == pytest.approx(n, rel=1e-6)


def test_effective_rank_rank_one_and_hand_computed():
    u = torch.tensor([[1.0], [2.0], [3.0]])
    assert monitors.effective_rank(u @ torch.tensor([[1.0, -1.0, 0.5, 2.0]])) == pytest.approx(1.0, abs=1e-6)
    # singular values 1, 1, 2: p = (1/4, 1/4, 1/2), H = (1/2) ln 4 + (1/2) ln 2 = (3/2) ln 2, exp = 2 sqrt(2)
    x = torch.diag(torch.tensor([1.0, 1.0, 2.0]))
    assert monitors.effective_rank(x) == pytest.approx(2 * math.sqrt(2), rel=1e-9)


def test_effective_rank_centered_ignores_the_mean():
    # rows: a common offset plus +-e1: uncentred rank about 2, centred exactly 1
    x = torch.tensor([[5.0, 5.0, 1.0], [5.0, 5.0, -1.0]])
    assert monitors.effective_rank(x) > 1.1
    assert monitors.effective_rank(x, center=True) == pytest.approx(1.0, abs=1e-9)
    assert monitors.effective_rank(torch.zeros(3, 4)) == 0.0


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="expected a tensor"):
        monitors.effective_rank(torch.ones(3))
    with pytest.raises(ValueError, match="no rows"):
        monitors.per_dim_std(torch.ones(0, 3))
    with pytest.raises(ValueError, match="at least 2 rows"):
        monitors.centered_cosine(torch.ones(1, 3), torch.ones(1, 3))
