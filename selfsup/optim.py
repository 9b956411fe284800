"""Optimizers (SGD, LARS, AdamW) with weight decay kept off biases and norm layers, and the
warm-up + cosine learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al., 2017), as used by SimCLR and BYOL.

    For a parameter group with ``decay=True``: g <- g + wd * p; g <- g * tc * ||p|| / ||g||;
    buf <- momentum * buf + g; p <- p - lr * buf. Groups with ``decay=False`` (biases, norm
    layers) take plain momentum SGD steps.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, eps=eps, decay=True))

    @torch.no_grad()
    def step(self, closure=None):
        """One update; `closure` (torch.optim's contract, which Lightning uses) recomputes the loss and
        gradients first and its loss is returned."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Multi-tensor kernels over each group's parameters: a per-parameter loop costs a dozen small
        # kernels a tensor, which on a GPU is launch overhead paid on every step.
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            buffers = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_mul_(buffers, group["momentum"])
            if group["decay"]:
                if group["weight_decay"]:
                    grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                p_norms = torch.stack(torch._foreach_norm(params))
                g_norms = torch.stack(torch._foreach_norm(grads))
                ratios = torch.where((p_norms > 0) & (g_norms > 0),
                                     group["trust_coefficient"] * p_norms / (g_norms + group["eps"]), 1.0)
                # buf += ratio * g with the ratio left on the device (a host copy would wait for the norms)
                torch._foreach_addcmul_(buffers, list(ratios.to(grads[0].dtype).unbind()), grads)
            else:
                torch._foreach_add_(buffers, grads)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss


def param_groups(model: nn.Module, weight_decay: float, constant_lr=(), bias_lr_scale: float = 1.0) -> list[dict]:
    """Weights get weight decay (and LARS adaptation); biases and norm parameters (ndim <= 1) get neither,
    and take `bias_lr_scale` times the schedule's learning rate (the group's `lr_scale`).

    Parameters in ``constant_lr`` (SimSiam's predictor) go in groups of their own marked
    ``constant_lr=True``: the trainer warms their lr up but never decays it.
    """
    constant = {id(p) for p in constant_lr}
    grouped: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            grouped.setdefault((p.ndim > 1, id(p) in constant), []).append(p)
    # The two scheduled groups always exist, in this order, so checkpoints of earlier runs still load.
    layout = [(True, False), (False, False)] + [key for key in ((True, True), (False, True)) if key in grouped]
    return [dict(params=grouped.get((decay, fixed), []), weight_decay=weight_decay if decay else 0.0,
                 decay=decay, constant_lr=fixed, lr_scale=1.0 if decay else bias_lr_scale) for decay, fixed in layout]


def bias_lr_scale(model: nn.Module, cfg) -> float:
    """The model's learning-rate scale for the parameters LARS steps without its trust ratio (Barlow
    Twins' 0.024): a LARS setting in its paper, so 1 under SGD and AdamW."""
    return getattr(model, "bias_lr_scale", 1.0) if cfg.name == "lars" else 1.0


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    constant_lr = model.constant_lr_parameters() if hasattr(model, "constant_lr_parameters") else ()
    groups = param_groups(model, cfg.weight_decay, constant_lr, bias_lr_scale(model, cfg))
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    return LARS(groups, lr=cfg.lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient)


def apply_hyperparameters(optimizer: torch.optim.Optimizer, cfg, bias_scale: float = 1.0) -> None:
    """Set the config's momentum / betas / weight decay and the bias learning-rate scale
    (`bias_lr_scale`) on restored groups (load_state_dict brings back the saved ones), keeping biases
    and norm layers free of weight decay."""
    for group in optimizer.param_groups:
        group["weight_decay"] = cfg.weight_decay if group["decay"] else 0.0
        group["lr_scale"] = 1.0 if group["decay"] else bias_scale
        for key, value in (("momentum", cfg.momentum), ("betas", cfg.betas),
                           ("trust_coefficient", cfg.trust_coefficient)):
            if key in group:
                group[key] = value


def schedule_progress(step: int, total_steps: int, warmup_steps: int, knots=()) -> float:
    """How far the decay is at `step`: 0 at the warm-up's end, 1 at the last step, linear in the step
    between the points (warm-up end, 0), each knot (step, progress) and (total_steps, 1). A time budget
    that re-plans the step count after the decay has begun leaves a knot where it did, so the rate goes
    on from where it was instead of jumping (selfsup.budget)."""
    points = [(warmup_steps, 0.0), *((s, p) for s, p in knots), (total_steps, 1.0)]
    for (start, done), (end, then) in zip(points, points[1:]):
        if step < end:
            return done + (step - start) * (then - done) / max(1, end - start)
    return 1.0


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str = "cosine",
              min_ratio: float = 0.0, knots=()) -> float:
    """Linear warm-up from 1/warmup to 1 over warmup_steps, then cosine decay to min_ratio (or constant)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = schedule_progress(step, total_steps, warmup_steps, knots)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def peak_lr(optim_cfg, batch_size: int) -> float:
    """The schedule's peak: optim.lr, or with optim.lr_per_images = N, optim.lr x batch_size / N."""
    return optim_cfg.lr * batch_size / optim_cfg.lr_per_images if optim_cfg.lr_per_images else optim_cfg.lr


def set_learning_rates(optimizer, optim_cfg, step: int, total_steps: int, warmup_steps: int, batch_size: int,
                       knots=()) -> float:
    """Set every parameter group's lr for `step`: the schedule's (warm-up, then cosine or constant, through
    the knots a time budget's late re-plans left), or the constant one for groups the method keeps
    constant after warm-up, times the group's lr_scale. Returns the schedule's lr."""
    peak = peak_lr(optim_cfg, batch_size)
    lr = peak * lr_factor(step, total_steps, warmup_steps, optim_cfg.schedule, optim_cfg.min_lr_ratio, knots)
    constant_lr = peak * lr_factor(step, total_steps, warmup_steps, "constant")
    for group in optimizer.param_groups:
        group["lr"] = (constant_lr if group.get("constant_lr") else lr) * group.get("lr_scale", 1.0)
    return lr
