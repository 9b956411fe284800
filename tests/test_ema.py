"""The shared momentum machinery: momentum_copy, ema_update by hand, BYOL's cosine_momentum schedule."""
import math

import pytest
import torch
from torch import nn

from selfsup.methods.momentum import cosine_momentum, ema_update, momentum_copy


def small_net():
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def test_momentum_copy_is_a_frozen_distinct_copy():
    torch.manual_seed(0)
    online = small_net()
    target = momentum_copy(online)
    online_state, target_state = online.state_dict(), target.state_dict()
    assert online_state.keys() == target_state.keys()
    for name in online_state:
        assert torch.equal(online_state[name], target_state[name]), name
        assert online_state[name].data_ptr() != target_state[name].data_ptr(), f"{name} shares storage"
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())      # the online network is left trainable
    with torch.no_grad():
        online[0].weight.add_(1.0)
    assert not torch.equal(online[0].weight, target[0].weight)


def test_ema_update_by_hand():
    torch.manual_seed(1)
    online = small_net()
    target = momentum_copy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online.train()
    online(torch.randn(8, 4) * 3 + 1)                 # moves the online BN running statistics
    before = {k: v.clone() for k, v in target.state_dict().items()}
    m = 0.9
    ema_update(target, online, m)

    online_params = dict(online.named_parameters())
    for name, p in target.named_parameters():
        expected = m * before[name] + (1 - m) * online_params[name].detach()
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)
        assert not torch.allclose(p.detach(), online_params[name].detach())   # not simply copied
    for name, b in target.named_buffers():
        assert torch.equal(b, dict(online.named_buffers())[name]), f"buffer {name} not copied"
    assert int(target[1].num_batches_tracked) == 1
    assert all(not p.requires_grad for p in target.parameters())


def test_ema_update_momentum_bounds():
    torch.manual_seed(2)
    online = small_net()
    target = momentum_copy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    frozen = [p.clone() for p in target.parameters()]
    ema_update(target, online, 1.0)                   # m = 1: the target does not move
    for p, f in zip(target.parameters(), frozen):
        assert torch.equal(p, f)
    ema_update(target, online, 0.0)                   # m = 0: the target becomes the online network
    for p, o in zip(target.parameters(), online.parameters()):
        torch.testing.assert_close(p, o.detach())


@pytest.mark.parametrize("base", [0.99, 0.996, 0.5])
def test_cosine_momentum_values(base):
    assert cosine_momentum(base, 0.0) == pytest.approx(base, abs=1e-12)
    assert cosine_momentum(base, 0.5) == pytest.approx((1 + base) / 2, abs=1e-12)
    assert cosine_momentum(base, 1.0) == pytest.approx(1.0, abs=1e-12)
    # the paper's formula at an arbitrary point: 1 - (1 - base) (cos(pi k / K) + 1) / 2
    assert cosine_momentum(base, 0.3) == pytest.approx(1 - (1 - base) * (math.cos(math.pi * 0.3) + 1) / 2)
    values = [cosine_momentum(base, k / 10) for k in range(11)]
    assert all(a < b for a, b in zip(values, values[1:]))     # rises monotonically


def test_cosine_momentum_clamps_progress_outside_0_1():
    assert cosine_momentum(0.99, -0.5) == pytest.approx(0.99, abs=1e-12)
    assert cosine_momentum(0.99, -100.0) == pytest.approx(0.99, abs=1e-12)
    assert cosine_momentum(0.99, 1.5) == pytest.approx(1.0, abs=1e-12)
    assert cosine_momentum(0.99, 7.0) == pytest.approx(1.0, abs=1e-12)


def test_cosine_momentum_final_value():
    assert cosine_momentum(0.9, 1.0, final=0.99) == pytest.approx(0.99)
    assert cosine_momentum(0.9, 0.5, final=0.99) == pytest.approx((0.9 + 0.99) / 2)


def test_ema_update_can_leave_the_targets_own_statistics():
    torch.manual_seed(3)
    online = small_net()
    target = momentum_copy(online)
    online.train()
    online(torch.randn(8, 4) * 3 + 1)                 # the online statistics move, the target's do not
    own = {k: v.clone() for k, v in target.named_buffers()}
    ema_update(target, online, 0.5, copy_buffers=False)
    assert all(torch.equal(b, own[name]) for name, b in target.named_buffers())
    assert not torch.equal(target[1].running_mean, online[1].running_mean)
