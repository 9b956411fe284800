"""NT-Xent against a direct loop over eq. 1 of Chen et al. (2020), and the SimCLR head layout."""
import math

import pytest
import torch
from torch import nn

from selfsup.methods.heads import mlp
from selfsup.methods.losses import multi_view_nt_xent, nt_xent


def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb)


def reference_nt_xent(z1, z2, t, decoupled=False):
    """Eq. 1, literally: 2N anchors; anchor i's positive is its twin; denominator sums over k != i
    (and k != the twin for DCL, Yeh et al. 2022, eq. 6)."""
    n = len(z1)
    z = [list(map(float, row)) for row in z1.tolist()] + [list(map(float, row)) for row in z2.tolist()]
    total = 0.0
    for i in range(2 * n):
        pos = i + n if i < n else i - n
        num = math.exp(_cos(z[i], z[pos]) / t)
        den = 0.0
        for k in range(2 * n):
            if k != i and not (decoupled and k == pos):
                den += math.exp(_cos(z[i], z[k]) / t)
        total += -math.log(num / den)
    return total / (2 * n)


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("n", [2, 5])
@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_matches_loop_reference(n, t, decoupled):
    torch.manual_seed(n * 10 + int(t * 10))
    z1, z2 = torch.randn(n, 6) * 3, torch.randn(n, 6)
    got = nt_xent(z1, z2, t, decoupled).item()
    assert got == pytest.approx(reference_nt_xent(z1, z2, t, decoupled), rel=1e-5, abs=1e-5)


def test_decoupled_loss_of_a_perfect_pair_is_the_negatives_log_sum_exp():
    # DCL drops the positive from the denominator, so aligned pairs give a loss below zero that
    # NT-Xent (bounded below by 0) cannot reach: -1/t + log(2N - 2) with orthogonal negatives.
    n, t = 4, 0.5
    z = torch.eye(8)[:n]
    assert nt_xent(z, z.clone(), t, decoupled=True).item() == pytest.approx(-1 / t + math.log(2 * n - 2), rel=1e-5)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_nt_xent_symmetric(t):
    torch.manual_seed(1)
    z1, z2 = torch.randn(5, 7), torch.randn(5, 7)
    torch.testing.assert_close(nt_xent(z1, z2, t), nt_xent(z2, z1, t), atol=1e-6, rtol=1e-6)


def test_nt_xent_scale_invariant():
    torch.manual_seed(2)
    z1, z2 = torch.randn(4, 5), torch.randn(4, 5)
    torch.testing.assert_close(nt_xent(z1, z2, 0.5), nt_xent(10 * z1, 0.1 * z2, 0.5), atol=1e-5, rtol=1e-5)


def test_aligned_separated_lower_than_random():
    torch.manual_seed(3)
    n, t = 4, 0.5
    z = torch.eye(8)[:n] * 2.0                         # orthogonal, one per pair
    aligned = nt_xent(z, z.clone(), t).item()
    # positive similarity 1, 2N-2 negatives with similarity 0
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + (2 * n - 2)))
    assert aligned == pytest.approx(expected, rel=1e-5)
    rand = nt_xent(torch.randn(n, 8), torch.randn(n, 8), t).item()
    assert aligned < rand


def test_gradient_reaches_both_inputs():
    torch.manual_seed(4)
    z1 = torch.randn(3, 4, requires_grad=True)
    z2 = torch.randn(3, 4, requires_grad=True)
    nt_xent(z1, z2, 0.5).backward()
    for z in (z1, z2):
        assert z.grad is not None
        assert torch.isfinite(z.grad).all()
        assert z.grad.abs().sum() > 0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        nt_xent(torch.randn(4, 8), torch.randn(4, 7))
    with pytest.raises(ValueError):
        nt_xent(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(ValueError):
        nt_xent(torch.randn(8), torch.randn(8))


def test_mlp_is_linear_bn_relu_linear():
    head = mlp([8, 16, 4])
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (head[0].in_features, head[0].out_features) == (8, 16)
    assert head[1].num_features == 16
    assert (head[3].in_features, head[3].out_features) == (16, 4)
    torch.manual_seed(0)
    assert head(torch.randn(5, 8)).shape == (5, 4)


def test_mlp_needs_two_sizes():
    with pytest.raises(ValueError):
        mlp([8])


def multi_view_reference(z, t, decoupled=False):
    """Direct loops over the multi-positive NT-Xent: every other view of a sample is a positive
    (and, for DCL, absent from the denominator)."""
    views, n, _ = z.shape
    flat = [torch.nn.functional.normalize(z[v, i], dim=0) for v in range(views) for i in range(n)]
    total = 0.0
    for a in range(views * n):
        positives = [p for p in range(views * n) if p != a and p % n == a % n]
        denom = sum(math.exp(float(flat[a] @ flat[k]) / t) for k in range(views * n)
                    if k != a and not (decoupled and k in positives))
        total += -sum(math.log(math.exp(float(flat[a] @ flat[p]) / t) / denom) for p in positives) / len(positives)
    return total / (views * n)


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("views,n,t", [(2, 3, 0.5), (3, 2, 0.1), (6, 4, 0.2)])
def test_multi_view_nt_xent_matches_loops(views, n, t, decoupled):
    torch.manual_seed(1)
    z = torch.randn(views, n, 5)
    assert multi_view_nt_xent(z, t, decoupled).item() == pytest.approx(multi_view_reference(z, t, decoupled), rel=1e-5)


@pytest.mark.parametrize("decoupled", [False, True])
def test_multi_view_nt_xent_with_two_views_is_nt_xent(decoupled):
    torch.manual_seed(2)
    z = torch.randn(2, 7, 4)
    assert multi_view_nt_xent(z, 0.3, decoupled).item() == pytest.approx(
        nt_xent(z[0], z[1], 0.3, decoupled).item(), rel=1e-6)
