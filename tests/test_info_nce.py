"""info_nce against a direct loop over InfoNCE (MoCo, He et al. 2020, eq. 1), with a queue and in-batch keys."""
import math

import pytest
import torch

from selfsup.methods.losses import info_nce


def _unit(row):
    norm = math.sqrt(sum(float(x) ** 2 for x in row))
    return [float(x) / norm for x in row]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def reference_info_nce(query, positive, negatives, t):
    """l_i = -log exp(q_i.k_i/t) / (exp(q_i.k_i/t) + sum_n exp(q_i.n/t)); negatives of row i: the queue's
    rows, or (no queue) the other rows' positives."""
    q = [_unit(r) for r in query.tolist()]
    k = [_unit(r) for r in positive.tolist()]
    total = 0.0
    for i in range(len(q)):
        negs = [_unit(r) for r in negatives.tolist()] if negatives is not None else \
            [k[j] for j in range(len(k)) if j != i]
        pos = math.exp(_dot(q[i], k[i]) / t)
        den = pos + sum(math.exp(_dot(q[i], n) / t) for n in negs)
        total += -math.log(pos / den)
    return total / len(q)


@pytest.mark.parametrize("n,k", [(2, 3), (5, 11), (2, 1)])
@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_info_nce_with_a_queue_matches_loop(n, k, t):
    torch.manual_seed(n * 100 + k + int(t * 100))
    q, pos, neg = torch.randn(n, 6) * 2, torch.randn(n, 6), torch.randn(k, 6) * 0.5
    got = info_nce(q, pos, neg, t).item()
    assert got == pytest.approx(reference_info_nce(q, pos, neg, t), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("n", [2, 3, 7])
@pytest.mark.parametrize("t", [0.1, 0.2, 0.5])
def test_info_nce_with_in_batch_keys_matches_loop(n, t):
    torch.manual_seed(n + int(t * 10))
    q, pos = torch.randn(n, 5), torch.randn(n, 5) * 3
    got = info_nce(q, pos, None, t).item()
    assert got == pytest.approx(reference_info_nce(q, pos, None, t), rel=1e-5, abs=1e-6)


def test_info_nce_is_not_symmetric_in_its_arguments():
    """Rows are queries: swapping query and positive changes the softmax's direction (the loop agrees)."""
    torch.manual_seed(0)
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    ab, ba = info_nce(a, b, None, 0.2).item(), info_nce(b, a, None, 0.2).item()
    assert ab == pytest.approx(reference_info_nce(a, b, None, 0.2), rel=1e-5)
    assert ba == pytest.approx(reference_info_nce(b, a, None, 0.2), rel=1e-5)
    assert abs(ab - ba) > 1e-4


def test_info_nce_perfect_pairs_and_orthogonal_negatives():
    t = 0.2
    q = torch.eye(6)[:2] * 3.0
    neg = torch.eye(6)[2:]                          # 4 negatives, cosine 0
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 4))
    assert info_nce(q, q.clone(), neg, t).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_runs_in_fp32_under_bf16_autocast():
    torch.manual_seed(1)
    q, pos, neg = torch.randn(8, 16), torch.randn(8, 16), torch.randn(32, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = info_nce(q, pos, neg, 0.07)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(info_nce(q, pos, neg, 0.07).item(), rel=1e-6)


def test_info_nce_gradient_reaches_only_what_requires_it():
    torch.manual_seed(2)
    q = torch.randn(3, 4, requires_grad=True)
    pos, neg = torch.randn(3, 4), torch.randn(5, 4)
    info_nce(q, pos, neg, 0.2).backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_info_nce_shape_errors():
    with pytest.raises(ValueError, match="query and positive"):
        info_nce(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(ValueError, match="negatives"):
        info_nce(torch.randn(4, 8), torch.randn(4, 8), torch.randn(5, 7))
    with pytest.raises(ValueError):
        info_nce(torch.randn(8), torch.randn(8))
