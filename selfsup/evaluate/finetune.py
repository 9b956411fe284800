"""Fine-tuning: the whole encoder with a new linear head on a labelled (few-label) set, with
light augmentation for images (random resized crop and flip), AdamW, warm-up + cosine schedule. The
backbone learns at a fraction of the head's rate so the pretrained features are adjusted, not
overwritten; for a ViT, layer-wise decay lowers it further for earlier blocks (BEiT, Bao et
al., 2022). The supervised baseline is the same procedure from a randomly initialised backbone
at the full rate, on the same labels with the same number of steps; both train for at least
`epochs` passes over the labels, so a larger label budget trains longer.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from selfsup.evaluate.features import extract_features
from selfsup.evaluate.linear import fit_logistic_regression
from selfsup.optim import lr_factor
from selfsup.precision import autocast, grad_scaler


@dataclass
class FinetuneSettings:
    steps: int = 300                   # at least; more when `epochs` passes over the labels need more
    # Passes over the labelled images at least, so that a larger label budget trains longer (fine-tuning and
    # the from-scratch baseline alike): 300 steps of 128 are 70 epochs of 550 images but 0.7 of 55,000.
    epochs: float = 10.0
    batch_size: int = 128
    lr: float = 2e-3                   # the head's learning rate (AdamW)
    backbone_lr_scale: float = 0.1     # backbone lr = lr * this (1.0 for the from-scratch baseline)
    layer_decay: float = 0.0           # ViT: block i of n learns at scale * decay^(n - i); 0 = off
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip_p: float = 0.5
    # Start the head from a linear probe on the frozen features (LP-FT, Kumar et al., 2022): a random
    # head's first gradients would otherwise distort the pretrained features before it has learned.
    probe_init: bool = True


    def steps_for(self, labelled: int) -> int:
        """Training steps for `labelled` images: `steps`, or `epochs` passes when that is more."""
        return max(self.steps, math.ceil(self.epochs * labelled / min(self.batch_size, labelled)))


class Classifier(nn.Module):
    """backbone + linear head; `prepare(samples, gen)` turns stored samples into the backbone's input
    (augmented when a generator is given: training; plain when it is None: evaluation)."""

    def __init__(self, backbone: nn.Module, num_classes: int, prepare: Callable):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, num_classes)
        self.prepare = prepare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def lr_scales(backbone: nn.Module, settings: FinetuneSettings) -> list[tuple[list[nn.Parameter], float]]:
    """(parameters, lr scale) groups of the backbone: one group, or one per ViT block with layer decay."""
    blocks = getattr(backbone, "blocks", None)
    if not settings.layer_decay or blocks is None:
        return [(list(backbone.parameters()), settings.backbone_lr_scale)]
    depth = len(blocks)
    in_block = {id(p): i + 1 for i, block in enumerate(blocks) for p in block.parameters()}
    groups: dict[int, list] = {}
    for name, p in backbone.named_parameters():
        # Patch and position embeddings count as layer 0, the final norm as layer depth + 1.
        layer = in_block.get(id(p), 0 if not name.startswith("norm") else depth + 1)
        groups.setdefault(layer, []).append(p)
    return [(params, settings.backbone_lr_scale * settings.layer_decay ** (depth + 1 - layer))
            for layer, params in sorted(groups.items())]


def _optimizer(model: Classifier, settings: FinetuneSettings) -> torch.optim.AdamW:
    groups = []
    for params, scale in lr_scales(model.backbone, settings) + [(list(model.head.parameters()), 1.0)]:
        for decay in (True, False):
            chosen = [p for p in params if (p.ndim > 1) == decay]
            if chosen:
                groups.append(dict(params=chosen, lr_scale=scale, weight_decay=settings.weight_decay if decay else 0.0))
    return torch.optim.AdamW(groups, lr=settings.lr)


def finetune(backbone: nn.Module, train, test, settings: FinetuneSettings, prepare: Callable,
             seed: int = 0, device: str | torch.device = "cpu", precision: str = "fp32",
             progress: bool = False, desc: str = "fine-tune") -> dict:
    """Train a copy of `backbone` with a new head on `train`; top-1 on `test` and the final train loss.
    prepare(samples, gen or None) makes the backbone's input (the modality's finetune_input)."""
    if train.labels is None or test.labels is None:
        raise ValueError("fine-tuning needs labelled train and test sets")
    device = torch.device(device)
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    model, loss = train_classifier(backbone, train, num_classes, settings, prepare, seed, device, precision,
                                   progress, desc)
    return {"top1": accuracy(model, test, device, precision), "final_train_loss": loss}


def train_classifier(backbone: nn.Module, train, num_classes: int, settings: FinetuneSettings, prepare: Callable,
                     seed: int, device: torch.device, precision: str, progress: bool = False,
                     desc: str = "fine-tune") -> tuple[Classifier, float]:
    """A copy of `backbone` with a new head, trained on the labelled `train`; and its final train loss."""
    torch.manual_seed(seed)
    model = Classifier(copy.deepcopy(backbone), num_classes, prepare).to(device)
    # Every weight trains, also of an encoder that was a momentum teacher (DINO's evaluated encoder has
    # requires_grad off) or had a frozen part in pretraining (MoCo v3's patch projection).
    model.requires_grad_(True)
    if settings.probe_init:
        init_head_from_probe(model, train, num_classes, device, precision)
    optimizer = _optimizer(model, settings)
    scaler = grad_scaler(device.type, precision)
    gen = torch.Generator(device=device).manual_seed(seed)
    order_gen = torch.Generator().manual_seed(seed)
    batch_size = min(settings.batch_size, len(train))
    steps = settings.steps_for(len(train))
    warmup = round(settings.warmup_fraction * steps)
    order, position, loss = torch.randperm(len(train), generator=order_gen), 0, torch.tensor(float("nan"))
    model.train()
    for step in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        if position + batch_size > len(order):
            order, position = torch.randperm(len(train), generator=order_gen), 0
        idx = order[position:position + batch_size]
        position += batch_size
        factor = lr_factor(step, steps, warmup)
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * group["lr_scale"] * factor
        x = model.prepare(train.samples[idx].to(device), gen)
        with autocast(device.type, precision):
            loss = F.cross_entropy(model(x).float(), train.labels[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return model, loss.item()


@torch.no_grad()
def init_head_from_probe(model: Classifier, train, num_classes: int, device, precision: str) -> None:
    """Set the head to the logistic regression fitted on the backbone's frozen (eval-mode) features."""
    feats = backbone_features(model, train.samples, device, precision)
    probe = fit_logistic_regression(feats, train.labels, num_classes, weight_decay=1e-3)
    # The probe standardises features: logits = ((f - mean) / std) @ W + b; fold that into the head.
    weight = probe.weight / probe.std[:, None]
    model.head.weight.copy_(weight.T)
    model.head.bias.copy_(probe.bias - probe.mean @ weight)
    model.train()


@torch.no_grad()
def backbone_features(model: Classifier, samples: torch.Tensor, device, precision: str,
                      batch_size: int = 1024) -> torch.Tensor:
    """(N, D) features of the model's backbone in eval mode, on plain (unaugmented) input, on the CPU."""
    model.eval()
    return extract_features(lambda batch: model.backbone(model.prepare(batch)), samples, batch_size, device,
                            precision, normalize=False)


@torch.no_grad()
def class_logits(model: Classifier, data, device: torch.device, precision: str, batch_size: int = 1024) -> torch.Tensor:
    """(N, K) float32 logits of the model for every sample of `data`, on plain input, on the CPU."""
    model.eval()
    logits = []
    for start in range(0, len(data), batch_size):
        x = model.prepare(data.samples[start:start + batch_size].to(device))
        with autocast(device.type, precision):
            logits.append(model(x).float().cpu())
    return torch.cat(logits)


def accuracy(model: Classifier, test, device: torch.device, precision: str, batch_size: int = 1024) -> float:
    predicted = class_logits(model, test, device, precision, batch_size).argmax(1)
    return (predicted == test.labels).float().mean().item()
