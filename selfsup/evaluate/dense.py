"""Semantic segmentation from a pretrained image encoder, scored by mIoU and pixel accuracy.

Two protocols, as MoCo, DINO and MAE report them:

- ``linear``: the backbone is frozen; a batch norm and a 1x1 convolution classify every cell of its
  last feature map (or of its maps from several depths stacked on the last map's grid), and the logits
  are upsampled (bilinear) to the image. The maps are computed once and cached, so only the head trains.
- ``finetune``: the backbone trains with a light FPN decoder on its last three feature maps
  (lateral 1x1 convolutions, top-down sums, one 3x3 convolution, a 1x1 classifier).

Each trains on the labelled training scenes (or a share of them), checks the validation scenes at a
few points and keeps the best state (chosen on validation only), and is then scored once on the
held-out scenes. Feature maps: a ResNet's stage outputs, a ViT's patch tokens laid out on their grid.
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

from selfsup.data.scenes import SceneSet
from selfsup.errors import ConfigError
from selfsup.optim import lr_factor

MODES = ("linear", "finetune")
# What the linear head reads: the last map, the maps of STACK_LEVELS depths on its grid, or (the default) the one of
# the two the validation scenes prefer: they preferred the stack on every encoder screened (docs/dense.md).
MAPS = ("last", "stack", "auto")
STACK_LEVELS = 4


# Per mode: the linear head's rate was chosen on the validation scenes (docs/dense.md); the fine-tuning
# ones are set in advance, not searched.
MODE_DEFAULTS = {"linear": {"lr": 5e-2, "epochs": 30.0}, "finetune": {"lr": 1e-3, "epochs": 10.0}}


@dataclass
class FitSettings:
    """What `fit`, the fine-tuning loop of the dense tasks and of summaries, reads."""
    epochs: float = 0.0                # passes over the labelled samples (at least `steps` steps)
    steps: int = 300
    batch_size: int = 64
    lr: float = 0.0                    # AdamW; a fine-tuned backbone learns at the same rate
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    checks: int = 5                    # validation checks over training; the best state is kept

    def steps_for(self, samples: int) -> int:
        return max(self.steps, math.ceil(self.epochs * samples / min(self.batch_size, samples)))


@dataclass
class SegmentSettings(FitSettings):
    """epochs and lr 0: the mode's (MODE_DEFAULTS)."""
    mode: str = "linear"               # linear | finetune (detection always fine-tunes)
    decoder_width: int = 64            # the FPN decoder's channels (finetune, detection)
    maps: str = ""                     # linear: last | stack | auto (MAPS; "" = auto); not for finetune

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"segmentation mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.maps and self.maps not in MAPS:
            raise ConfigError(f"segmentation maps must be one of {', '.join(MAPS)}, got {self.maps!r}")
        if self.maps and self.mode != "linear":
            raise ConfigError(f"maps={self.maps} chooses what a frozen linear head reads; the fine-tuned decoder "
                              "reads the last three maps (use --mode linear, or leave --maps out)")
        if self.mode == "linear":
            self.maps = self.maps or "auto"
        self.lr = self.lr or MODE_DEFAULTS[self.mode]["lr"]
        self.epochs = self.epochs or MODE_DEFAULTS[self.mode]["epochs"]
        if self.epochs <= 0 or self.lr <= 0 or self.steps < 1 or self.batch_size < 1 or self.checks < 1:
            raise ConfigError("segmentation epochs, lr, steps, batch size and checks must be positive")


def feature_maps(backbone: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """(B, C, H, W) images -> the backbone's feature maps (B, C_i, H_i, W_i), finest first."""
    if hasattr(backbone, "stage_maps"):
        return backbone.stage_maps(x)
    if hasattr(backbone, "forward_tokens") and hasattr(backbone, "grid_size"):
        return [patch_grid(backbone, backbone.forward_tokens(x), x)]
    raise ConfigError(f"{type(backbone).__name__} gives no feature maps; dense tasks need a ResNet (its stages) or "
                      "a ViT (its patch tokens)")


def patch_grid(vit: nn.Module, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A ViT's (B, 1 + n, dim) tokens of images x -> its patch tokens on their grid (B, dim, grid_h, grid_w)."""
    grid_h, grid_w = vit.grid_size(*x.shape[-2:])
    return tokens[:, 1:].transpose(1, 2).reshape(len(x), -1, grid_h, grid_w)


def stacked_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images -> one map (B, sum C_i, H_last, W_last): a ResNet's stage maps, or a ViT's patch tokens
    after STACK_LEVELS evenly spaced blocks, each average-pooled to the last map's grid and stacked along the
    channels, the last map's own channels last (so `[:, -C_last:]` is the last map)."""
    if hasattr(backbone, "intermediate_tokens") and hasattr(backbone, "grid_size"):
        maps = [patch_grid(backbone, tokens, x) for tokens in backbone.intermediate_tokens(x, STACK_LEVELS)]
    else:
        maps = feature_maps(backbone, x)
    grid = maps[-1].shape[-2:]
    return torch.cat([F.adaptive_avg_pool2d(m, grid) for m in maps], dim=1)


def last_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return feature_maps(backbone, x)[-1]


class LinearSegmentHead(nn.Module):
    """Batch norm and a 1x1 convolution on the last feature map, upsampled to the image."""

    def __init__(self, channels: list[int], classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels[-1])
        self.classify = nn.Conv2d(channels[-1], classes, 1)

    def forward(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        logits = self.classify(self.norm(maps[-1]))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class FPN(nn.Module):
    """A light feature pyramid over the last three maps (Lin et al. 2017's top-down path), one output level:
    lateral 1x1 convolutions, top-down sums, one 3x3 convolution; (B, width, H_finest, W_finest)."""

    def __init__(self, channels: list[int], width: int = 64):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels[-3:])
        self.smooth = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                    nn.ReLU(inplace=True))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        maps = maps[-len(self.lateral):]
        x = self.lateral[-1](maps[-1])
        for lateral, finer in zip(reversed(self.lateral[:-1]), reversed(maps[:-1])):
            x = F.interpolate(x, size=finer.shape[-2:], mode="bilinear", align_corners=False) + lateral(finer)
        return self.smooth(x)


class FPNSegmentHead(nn.Module):
    """The FPN's output classified per cell by a 1x1 convolution, upsampled to the image."""

    def __init__(self, channels: list[int], classes: int, width: int = 64):
        super().__init__()
        self.neck = FPN(channels, width)
        self.classify = nn.Conv2d(width, classes, 1)

    def forward(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.classify(self.neck(maps)), size=size, mode="bilinear", align_corners=False)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """(classes, classes) counts: row = true class, column = predicted class."""
    index = target.flatten().long() * classes + pred.flatten().long()
    return torch.bincount(index, minlength=classes * classes).reshape(classes, classes)


def segmentation_scores(confusion: torch.Tensor) -> dict:
    """mIoU (mean over the classes that occur in the truth or the prediction), pixel accuracy, per-class IoU."""
    confusion = confusion.double()
    hits = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - hits
    present = union > 0
    iou = torch.where(present, hits / union.clamp(min=1), torch.full_like(hits, float("nan")))
    return {"miou": iou[present].mean().item(), "pixel_accuracy": (hits.sum() / confusion.sum()).item(),
            "iou": [None if math.isnan(v) else v for v in iou.tolist()]}


class DenseModel(nn.Module):
    """backbone + a head on its feature maps; `prepare` turns uint8 scenes into the backbone's normalised input."""

    def __init__(self, backbone: nn.Module, head: nn.Module, prepare: Callable):
        super().__init__()
        self.backbone, self.head, self.prepare = backbone, head, prepare

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        x = self.prepare(images_u8)
        return self.head(feature_maps(self.backbone, x), x.shape[-2:])


def backbone_copy(backbone: nn.Module, device: torch.device) -> nn.Module:
    """A copy of the backbone on `device` for a dense task to train, in the contiguous memory format: on an
    AMD EPYC with AVX512-BF16 (torch 2.13 CPU) the backward pass of a channels_last ResNet under the
    detection head aborted with "double free or corruption" (2026-12-06)."""
    return copy.deepcopy(backbone).to(device, memory_format=torch.contiguous_format)


def segment(backbone: nn.Module, train: SceneSet, val: SceneSet, test: SceneSet, prepare: Callable,
            settings: SegmentSettings, seed: int = 0, device: str | torch.device = "cpu", progress: bool = False,
            desc: str = "segment") -> dict:
    """Train a head (and, fine-tuning, a copy of the backbone) on `train`'s masks; keep the state best on
    `val`; return mIoU and pixel accuracy on `val` (at that state) and on `test`."""
    classes = train.num_classes + 1                                 # + background
    device = torch.device(device)
    backbone = backbone_copy(backbone, device).eval()
    if settings.mode == "linear":
        return segment_linear(backbone, train, val, test, prepare, settings, classes, seed, device, progress, desc)
    torch.manual_seed(seed)
    with torch.no_grad():
        channels = [m.shape[1] for m in feature_maps(backbone, prepare(train.images[:2].to(device)))]
    model = DenseModel(backbone, FPNSegmentHead(channels, classes, settings.decoder_width), prepare).to(device)
    predictors = {name: (lambda i, j, scenes=scenes: model(scenes.images[i:j].to(device)))
                  for name, scenes in (("val", val), ("test", test))}

    def batch_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:     # mirrored scenes and masks alike
        flip = torch.rand(len(idx), generator=gen) < 0.5
        logits = model(flip_images(train.images[idx], flip).to(device))
        return F.cross_entropy(logits, flip_images(train.semantic[idx], flip).long().to(device))

    return train_and_score(model, batch_loss, predictors, val, test, classes, settings, len(train), seed,
                           frozen_backbone=False, progress=progress, desc=desc)


def segment_linear(backbone: nn.Module, train: SceneSet, val: SceneSet, test: SceneSet, prepare: Callable,
                   settings: SegmentSettings, classes: int, seed: int, device: torch.device, progress: bool,
                   desc: str) -> dict:
    """The frozen backbone's map of every scene, once (stacked unless maps=last); a linear head trains on the last
    map, the stacked maps, or (auto) on each, and the one better on `val` is kept; `maps` names it."""
    backbone.requires_grad_(False)
    with torch.no_grad():
        widths = {"last": last_map(backbone, prepare(train.images[:2].to(device))).shape[1]}
    map_of = last_map if settings.maps == "last" else stacked_map
    cached = {name: cached_maps(backbone, scenes.images, prepare, map_of)
              for name, scenes in (("train", train), ("val", val), ("test", test))}
    widths["stack"] = cached["train"].shape[1]
    size = tuple(train.images.shape[-2:])
    results = {}
    for maps in (("last", "stack") if settings.maps == "auto" else (settings.maps,)):
        torch.manual_seed(seed)
        model = DenseModel(backbone, LinearSegmentHead([widths[maps]], classes), prepare).to(device)

        def logits(part: str, index, model=model, width=widths[maps]) -> torch.Tensor:
            # index the rows and the channels together: the last map's batch alone is copied, not the stack's
            return model.head([cached[part][index, -width:].to(device).float()], size)

        predictors = {part: (lambda i, j, part=part, logits=logits: logits(part, slice(i, j)))
                      for part in ("val", "test")}
        batch_loss = (lambda idx, gen, logits=logits:
                      F.cross_entropy(logits("train", idx), train.semantic[idx].long().to(device)))
        results[maps] = {**train_and_score(model, batch_loss, predictors, val, test, classes, settings, len(train),
                                           seed, frozen_backbone=True, progress=progress, desc=f"{desc} ({maps})"),
                         "maps": maps}
    chosen = max(results.values(), key=lambda result: result["val_miou"])
    if settings.maps == "auto":
        chosen["val_miou_by_maps"] = {maps: result["val_miou"] for maps, result in results.items()}
    return chosen


def train_and_score(model: nn.Module, batch_loss: Callable, predictors: dict, val: SceneSet, test: SceneSet,
                    classes: int, settings: FitSettings, count: int, seed: int, frozen_backbone: bool,
                    progress: bool, desc: str) -> dict:
    """`fit` the model, keeping the state best on `val`; its scores on `val` and `test` (predictors[part](i, j)
    -> the logits of scenes i..j)."""
    steps, loss = fit(model, batch_loss, lambda: score_predictions(model, predictors["val"], val.semantic,
                                                                    classes)["miou"],
                      settings, count, seed, frozen_backbone, progress, desc)
    val_scores = score_predictions(model, predictors["val"], val.semantic, classes)
    test_scores = score_predictions(model, predictors["test"], test.semantic, classes)
    return {"val_miou": val_scores["miou"], "val_pixel_accuracy": val_scores["pixel_accuracy"],
            "miou": test_scores["miou"], "pixel_accuracy": test_scores["pixel_accuracy"], "iou": test_scores["iou"],
            "steps": steps, "final_train_loss": loss}


def fit(model: nn.Module, batch_loss: Callable, validate: Callable, settings: FitSettings, count: int,
        seed: int, frozen_backbone: bool, progress: bool, desc: str) -> tuple[int, float]:
    """The fine-tuning loop of the dense tasks and of summaries: AdamW over the parameters that train, warm-up and cosine decay, batches of a
    seeded permutation of `count` samples; validate() (higher is better) at settings.checks points, and the
    model is left at the best of them. batch_loss(indices, generator) -> the loss of one batch."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    steps = settings.steps_for(count)
    warmup = round(settings.warmup_fraction * steps)
    check_at = {round(steps * (i + 1) / settings.checks) - 1 for i in range(settings.checks)}
    gen = torch.Generator().manual_seed(seed)
    batch_size = min(settings.batch_size, count)
    order, position = torch.randperm(count, generator=gen), 0
    best, best_state, loss = -math.inf, None, torch.tensor(float("nan"))
    for step in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        if position + batch_size > len(order):
            order, position = torch.randperm(count, generator=gen), 0
        idx = order[position:position + batch_size]
        position += batch_size
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * lr_factor(step, steps, warmup)
        model.train()
        if frozen_backbone:
            model.backbone.eval()
        loss = batch_loss(idx, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step in check_at:
            score = validate()
            if score > best:
                best, best_state = score, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return steps, loss.item()


def flip_images(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """x (B, ..., W) with the rows where flip is True mirrored left-right."""
    return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


@torch.no_grad()
def cached_maps(backbone: nn.Module, images: torch.Tensor, prepare: Callable, map_of: Callable = last_map,
                batch_size: int = 256) -> torch.Tensor:
    """map_of(backbone, x) of every image (the frozen backbone's last feature map by default), in float16 to halve
    the memory it takes."""
    backbone.eval()
    device = next(backbone.parameters()).device
    return torch.cat([map_of(backbone, prepare(images[i:i + batch_size].to(device))).half().cpu()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def score_predictions(model: nn.Module, predict: Callable, masks: torch.Tensor, classes: int,
                      batch_size: int = 256) -> dict:
    """Scores of predict(i, j) -> logits (j - i, classes, H, W) against masks[i:j], in eval mode."""
    model.eval()
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    for i in range(0, len(masks), batch_size):
        pred = predict(i, i + batch_size).argmax(1).cpu()
        confusion += confusion_matrix(pred, masks[i:i + batch_size], classes)
    return segmentation_scores(confusion)
