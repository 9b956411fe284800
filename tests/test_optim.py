"""The learning-rate schedule, weight-decay groups and LARS, checked by hand."""
import math

import pytest
import torch
from torch import nn

from selfsup.config import OptimConfig, _merge_layers, load_config
from selfsup.errors import ConfigError
from selfsup.optim import LARS, build_optimizer, lr_factor, param_groups, peak_lr, schedule_progress, set_learning_rates


# ---------------------------------------------------------------- lr_factor

def test_warmup_is_linear():
    for step in range(10):
        assert lr_factor(step, 100, 10) == pytest.approx((step + 1) / 10)
    assert lr_factor(0, 100, 4) == pytest.approx(0.25)


def test_peak_right_after_warmup():
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(0, 100, 0) == pytest.approx(1.0)


@pytest.mark.parametrize("min_ratio", [0.0, 0.1])
def test_cosine_midpoint_and_end(min_ratio):
    total, warm = 110, 10
    mid = warm + (total - warm) // 2
    assert lr_factor(mid, total, warm, "cosine", min_ratio) == pytest.approx(min_ratio + (1 - min_ratio) * 0.5)
    assert lr_factor(total, total, warm, "cosine", min_ratio) == pytest.approx(min_ratio)
    assert lr_factor(total + 5, total, warm, "cosine", min_ratio) == pytest.approx(min_ratio)
    # a quarter of the way: 0.5 * (1 + cos(pi / 4))
    q = warm + (total - warm) // 4
    expected = min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi / 4))
    assert lr_factor(q, total, warm, "cosine", min_ratio) == pytest.approx(expected)


def test_cosine_is_monotone_after_warmup():
    values = [lr_factor(s, 50, 5) for s in range(5, 51)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_constant_schedule_stays_one():
    for step in range(10, 100, 7):
        assert lr_factor(step, 100, 10, "constant", 0.1) == 1.0
    assert lr_factor(3, 100, 10, "constant") == pytest.approx(0.4)


# ---------------------------------------------------------------- param groups

def ids(params):
    return {id(p) for p in params}


def test_param_groups_keep_decay_off_biases_and_norms():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3, 4), nn.LayerNorm(4))
    model[0].bias.requires_grad_(True)
    groups = param_groups(model, 0.01)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.01 and decay["decay"] is True
    assert no_decay["weight_decay"] == 0.0 and no_decay["decay"] is False
    assert ids(decay["params"]) == ids([model[0].weight, model[3].weight])
    assert ids(no_decay["params"]) == ids([model[0].bias, model[1].weight, model[1].bias, model[3].bias,
                                           model[4].weight, model[4].bias])


def test_param_groups_skip_frozen():
    model = nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.1)
    assert len(decay["params"]) == 1 and len(no_decay["params"]) == 0


def test_param_groups_put_constant_lr_parameters_in_marked_groups_after_the_scheduled_ones():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    groups = param_groups(model, 0.1, constant_lr=model[1].parameters())
    assert [(g["decay"], g["constant_lr"]) for g in groups] == [(True, False), (False, False), (True, True),
                                                               (False, True)]
    assert [ids(g["params"]) for g in groups] == [ids([model[0].weight]), ids([model[0].bias]),
                                                  ids([model[1].weight]), ids([model[1].bias])]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0, 0.1, 0.0]
    # without constant-lr parameters the layout is the usual two groups, so older checkpoints still load
    assert [(g["decay"], g["constant_lr"]) for g in param_groups(model, 0.1)] == [(True, False), (False, False)]


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW), ("lars", LARS)])
def test_build_optimizer(name, cls):
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, OptimConfig(name=name, lr=0.5, weight_decay=0.01))
    assert isinstance(opt, cls)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    assert all(g["lr"] == 0.5 for g in opt.param_groups)


# ---------------------------------------------------------------- LARS by hand

def _norm(values):
    return math.sqrt(sum(v * v for v in values))


def test_lars_steps_match_docstring_formula():
    lr, momentum, wd, tc = 0.5, 0.9, 0.1, 0.02
    w = nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    b = nn.Parameter(torch.tensor([0.3, -0.7]))
    opt = LARS([dict(params=[w], weight_decay=wd, decay=True), dict(params=[b], weight_decay=0.0, decay=False)],
               lr=lr, momentum=momentum, trust_coefficient=tc)

    pw = w.detach().flatten().tolist()
    pb = b.detach().tolist()
    buf_w, buf_b = None, None
    grads = [([0.2, -0.1, 0.4, 0.3], [1.0, -2.0]), ([-0.5, 0.25, 0.1, 0.0], [0.5, 0.5])]
    for gw, gb in grads:
        w.grad = torch.tensor(gw).view(2, 2)
        b.grad = torch.tensor(gb)
        opt.step()

        # weight (lars group): g <- g + wd*p; g <- g * tc*||p||/||g||; buf <- m*buf + g; p <- p - lr*buf
        g = [gi + wd * pi for gi, pi in zip(gw, pw)]
        ratio = tc * _norm(pw) / _norm(g)
        g = [gi * ratio for gi in g]
        buf_w = g if buf_w is None else [momentum * bi + gi for bi, gi in zip(buf_w, g)]
        pw = [pi - lr * bi for pi, bi in zip(pw, buf_w)]
        # bias (plain momentum SGD, no decay, no trust ratio)
        buf_b = list(gb) if buf_b is None else [momentum * bi + gi for bi, gi in zip(buf_b, gb)]
        pb = [pi - lr * bi for pi, bi in zip(pb, buf_b)]

        torch.testing.assert_close(w.detach().flatten(), torch.tensor(pw), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.detach(), torch.tensor(pb), rtol=1e-5, atol=1e-6)


def test_lars_zero_weight_takes_unscaled_step():
    w = nn.Parameter(torch.zeros(2, 2))
    opt = LARS([dict(params=[w], weight_decay=0.0, decay=True)], lr=0.1, trust_coefficient=0.001)
    w.grad = torch.ones(2, 2)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((2, 2), -0.1))


def reference_lars_step(optimizer: LARS) -> None:
    """LARS as a loop over parameters, one at a time: the formula of the class docstring, written the
    obvious way, against which the multi-tensor step is checked."""
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    if p_norm > 0 and g_norm > 0:
                        g = g * (group["trust_coefficient"] * p_norm / (g_norm + group["eps"]))
                state = optimizer.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = g.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])


def test_multi_tensor_lars_equals_the_per_parameter_loop_over_20_steps():
    """Weight-decay and no-decay groups, constant-lr groups (SimSiam's predictor) at their own lr, a
    parameter that gets no gradient for the first steps (DINO's frozen last layer) and one that starts
    at zero (its trust ratio falls back to 1)."""
    torch.manual_seed(0)

    def model():
        torch.manual_seed(1)
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 8), nn.ReLU(),
                            nn.Linear(8, 5), nn.Linear(5, 3, bias=False))
        nn.init.zeros_(net[5].weight)
        return net

    fast_net, loop_net = model(), model()
    optimizers = [LARS(param_groups(net, 0.05, constant_lr=net[3].parameters()), lr=0.3, momentum=0.9,
                       trust_coefficient=0.02) for net in (fast_net, loop_net)]
    for step in range(20):
        x = torch.randn(6, 3, 6, 6)
        for net, optimizer in zip((fast_net, loop_net), optimizers):
            for group in optimizer.param_groups:          # a schedule: the constant-lr groups keep theirs
                group["lr"] = 0.3 if group["constant_lr"] else 0.3 * (1 - step / 20)
            optimizer.zero_grad(set_to_none=True)
            net[6].weight.requires_grad_(step >= 3)
            net(x).square().mean().backward()
        optimizers[0].step()
        reference_lars_step(optimizers[1])
    for fast, loop in zip(fast_net.parameters(), loop_net.parameters()):
        torch.testing.assert_close(fast, loop, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fast_net[0].weight, model()[0].weight)       # the optimizers did move the weights
    for fast, loop in zip(fast_net.parameters(), loop_net.parameters()):
        torch.testing.assert_close(optimizers[0].state[fast]["momentum_buffer"],
                                   optimizers[1].state[loop]["momentum_buffer"], rtol=1e-5, atol=1e-6)


def test_a_rate_given_per_256_images_follows_the_batch_size():
    per_256 = load_config(overrides=["optim.lr=0.3", "optim.lr_per_images=256", "optim.schedule=constant"]).optim
    assert peak_lr(per_256, 4096) == pytest.approx(4.8) and peak_lr(per_256, 256) == pytest.approx(0.3)
    assert peak_lr(load_config(overrides=["optim.lr=0.3"]).optim, 4096) == 0.3          # 0: as it stands
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    assert set_learning_rates(optimizer, per_256, 50, 100, 10, batch_size=1024) == pytest.approx(1.2)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.2)


def test_the_decay_runs_straight_without_knots_and_through_each_knot_a_late_re_plan_left():
    assert [schedule_progress(s, 110, 10) for s in (10, 60, 110, 200)] == [0.0, 0.5, 1.0, 1.0]
    knots = [[60, 0.5]]                                    # at step 60 the plan moved the end from 110 to 80
    assert schedule_progress(60, 80, 10, knots) == 0.5 and schedule_progress(70, 80, 10, knots) == 0.75
    assert schedule_progress(35, 80, 10, knots) == 0.25    # before the knot: as the old plan had it
    assert lr_factor(59, 110, 10) == pytest.approx(lr_factor(59, 80, 10, knots=knots))
    assert lr_factor(80, 80, 10, knots=knots) == pytest.approx(0.0)


def test_schedule_knots_go_with_the_run_length_that_made_them():
    knotted = ["train.steps=100", "train.minutes=1", "train.schedule_knots=[[60,0.5]]"]
    assert load_config(overrides=knotted).train.schedule_knots == [[60, 0.5]]
    merged = _merge_layers([{"train": {"steps": 100, "schedule_knots": [[60, 0.5]]}}, {"train": {"epochs": 2}}])
    assert "schedule_knots" not in merged["train"] and merged["train"]["epochs"] == 2
    with pytest.raises(ConfigError, match="train.schedule_knots must be"):
        load_config(overrides=["train.steps=50", "train.schedule_knots=[[60,0.5]]"])
