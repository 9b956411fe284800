"""Object detection from a pretrained encoder: an anchor-free CenterNet head, scored by COCO's mAP.

CenterNet (Zhou et al. 2019, "Objects as Points") on the FPN output of the backbone's last three maps:
one heatmap per class whose peaks are object centres, and at each centre the box size and the
sub-cell offset of the centre. Training targets: an elliptical Gaussian per object on its class's
heatmap (sigma = size / 6 on each axis, as TTFNet draws them), the penalty-reduced focal loss on the
heatmaps, L1 on size and offset at the centres. Decoding: 3x3 max-pool peaks, the 100 best. Mean
average precision over IoU 0.5:0.95 and at 0.5 comes from pycocotools (`pip install selfsup[dense]`).
"""
from __future__ import annotations

import contextlib
import io

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.scenes import SceneSet
from selfsup.errors import ConfigError
from selfsup.evaluate.dense import (FPN, DenseModel, SegmentSettings, backbone_copy, feature_maps, fit,
                                   flip_images)

MAX_DETECTIONS = 100
SIZE_WEIGHT, OFFSET_WEIGHT = 0.1, 1.0          # CenterNet's loss weights


class CenterNetHead(nn.Module):
    """FPN output -> {"heatmap": (B, K, h, w) logits, "size": (B, 2, h, w) (w, h) in cells, "offset": (B, 2, h, w)}."""

    def __init__(self, channels: list[int], classes: int, width: int = 64):
        super().__init__()
        self.neck = FPN(channels, width)

        def branch(out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width, out, 1))
        self.heatmap, self.size, self.offset = branch(classes), branch(2), branch(2)
        # The heatmap starts at a prior of 0.1 everywhere, as CenterNet initialises it, so the focal loss
        # of the many background cells does not swamp the first steps.
        nn.init.constant_(self.heatmap[-1].bias, -2.19)

    def forward(self, maps: list[torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
        x = self.neck(maps)
        return {"heatmap": self.heatmap(x), "size": self.size(x), "offset": self.offset(x)}


def centre_targets(boxes: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, batch: int, classes: int,
                   grid: tuple[int, int], stride: float) -> dict[str, torch.Tensor]:
    """Targets of the objects `boxes` (M, 4) in pixels, of class `labels`, in batch row `rows`:
    heatmap (B, K, h, w) with 1 at each object's centre cell, and per object its cell and its size and offset."""
    grid_h, grid_w = grid
    centre = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1) / stride
    cell = centre.floor().long()
    cell[:, 0].clamp_(0, grid_w - 1)
    cell[:, 1].clamp_(0, grid_h - 1)
    size = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1) / stride
    sigma = (size / 6).clamp(min=0.5)
    ys = torch.arange(grid_h, dtype=torch.float32).view(1, -1, 1)
    xs = torch.arange(grid_w, dtype=torch.float32).view(1, 1, -1)
    bumps = torch.exp(-((xs - cell[:, 0, None, None]) ** 2 / (2 * sigma[:, 0, None, None] ** 2)
                        + (ys - cell[:, 1, None, None]) ** 2 / (2 * sigma[:, 1, None, None] ** 2)))
    heatmap = torch.zeros(batch * classes, grid_h * grid_w)
    which = (rows * classes + labels)[:, None].expand(-1, grid_h * grid_w)
    heatmap.scatter_reduce_(0, which, bumps.flatten(1), "amax")
    return {"heatmap": heatmap.view(batch, classes, grid_h, grid_w), "cell": cell, "size": size,
            "offset": centre - cell.float()}


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, averaged over the objects (cells where target == 1):
    -[(1 - p)^a log p at centres; (1 - y)^b p^a log(1 - p) elsewhere]."""
    p = torch.sigmoid(logits.float())
    centres = target.eq(1).float()
    positive = centres * (1 - p) ** alpha * F.logsigmoid(logits.float())
    negative = (1 - centres) * (1 - target) ** beta * p ** alpha * F.logsigmoid(-logits.float())
    return -(positive + negative).sum() / centres.sum().clamp(min=1)


def detection_loss(out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """Focal loss on the heatmaps + L1 on size and offset at each object's centre cell."""
    loss = focal_loss(out["heatmap"], targets["heatmap"].to(out["heatmap"].device))
    if len(rows):
        cell = targets["cell"].to(rows.device)
        cx, cy = cell[:, 0], cell[:, 1]
        at = lambda name: out[name][rows, :, cy, cx]                  # (M, 2) at the centres
        count = len(rows)
        loss = loss + SIZE_WEIGHT * F.l1_loss(at("size"), targets["size"].to(loss.device), reduction="sum") / count
        loss = loss + OFFSET_WEIGHT * F.l1_loss(at("offset"), targets["offset"].to(loss.device), reduction="sum") / count
    return loss


@torch.no_grad()
def decode(out: dict[str, torch.Tensor], stride: float, top: int = MAX_DETECTIONS) -> list[dict[str, torch.Tensor]]:
    """Per image: boxes (n, 4) x0, y0, x1, y1 in pixels, scores (n,), labels (n,), from the heatmap's local maxima."""
    heat = torch.sigmoid(out["heatmap"].float())
    heat = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    batch, classes, grid_h, grid_w = heat.shape
    scores, flat = heat.flatten(1).topk(min(top, classes * grid_h * grid_w), dim=1)
    labels, cell = flat // (grid_h * grid_w), flat % (grid_h * grid_w)
    cy, cx = cell // grid_w, cell % grid_w
    rows = torch.arange(batch, device=heat.device)[:, None]
    size = out["size"].float()[rows, :, cy, cx]                        # (B, n, 2)
    offset = out["offset"].float()[rows, :, cy, cx]
    centre_x, centre_y = cx + offset[..., 0], cy + offset[..., 1]
    half_w, half_h = size[..., 0].clamp(min=0) / 2, size[..., 1].clamp(min=0) / 2
    boxes = torch.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], -1) * stride
    return [{"boxes": boxes[i].cpu(), "scores": scores[i].cpu(), "labels": labels[i].cpu()} for i in range(batch)]


def coco_map(detections: list[dict[str, torch.Tensor]], scenes: SceneSet) -> dict[str, float]:
    """COCO mAP@[.5:.95] and mAP@.5 of per-scene detections against the scenes' boxes (pycocotools)."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ConfigError("detection's mAP comes from pycocotools: pip install 'selfsup[dense]'") from e
    ground = COCO()
    ground.dataset = {
        "images": [{"id": i} for i in range(len(scenes))],
        "categories": [{"id": k, "name": name} for k, name in enumerate(scenes.classes)],
        "annotations": [{"id": n + 1, "image_id": int(s), "category_id": int(k), "iscrowd": 0,
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                         "area": float((b[2] - b[0]) * (b[3] - b[1]))}
                        for n, (s, k, b) in enumerate(zip(scenes.box_scene, scenes.box_labels, scenes.boxes))]}
    with contextlib.redirect_stdout(io.StringIO()):                   # pycocotools prints its progress
        ground.createIndex()
        found = [{"image_id": i, "category_id": int(k), "score": float(score),
                  "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
                 for i, d in enumerate(detections) for b, score, k in zip(d["boxes"], d["scores"], d["labels"])]
        if not found:
            return {"map": 0.0, "map50": 0.0}
        evaluation = COCOeval(ground, ground.loadRes(found), "bbox")
        evaluation.params.maxDets = [1, 10, MAX_DETECTIONS]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"map": max(0.0, float(evaluation.stats[0])), "map50": max(0.0, float(evaluation.stats[1]))}


def flip_boxes(boxes: torch.Tensor, flip: torch.Tensor, width: int) -> torch.Tensor:
    """Boxes (M, 4) mirrored left-right where flip (M,) is True."""
    mirrored = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
    return torch.where(flip[:, None], mirrored, boxes)


def detect(backbone: nn.Module, train: SceneSet, val: SceneSet, test: SceneSet, prepare, settings: SegmentSettings,
           seed: int = 0, device: str | torch.device = "cpu", progress: bool = False, desc: str = "detect") -> dict:
    """Fine-tune a copy of `backbone` with a CenterNet head on `train`'s boxes; keep the state with the best
    validation mAP; return mAP@[.5:.95] and mAP@.5 on `val` (at that state) and on `test`."""
    torch.manual_seed(seed)
    device = torch.device(device)
    backbone = backbone_copy(backbone, device).requires_grad_(True)
    height, width = train.images.shape[-2:]
    with torch.no_grad():
        channels = [m.shape[1] for m in feature_maps(backbone.eval(), prepare(train.images[:2].to(device)))]
    model = DenseModel(backbone, CenterNetHead(channels, train.num_classes, settings.decoder_width), prepare).to(device)
    with torch.no_grad():
        grid = tuple(model.eval()(train.images[:1].to(device))["heatmap"].shape[-2:])
    stride = width / grid[1]

    def batch_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        flip = torch.rand(len(idx), generator=gen) < 0.5
        where = torch.full((len(train),), -1, dtype=torch.long)
        where[idx] = torch.arange(len(idx))
        objects = where[train.box_scene] >= 0
        rows = where[train.box_scene[objects]]
        boxes = flip_boxes(train.boxes[objects], flip[rows], width)
        targets = centre_targets(boxes, train.box_labels[objects], rows, len(idx), train.num_classes, grid, stride)
        out = model(flip_images(train.images[idx], flip).to(device))
        return detection_loss(out, targets, rows.to(device))

    def predict(scenes: SceneSet, batch_size: int = 128) -> list[dict]:
        model.eval()
        with torch.no_grad():
            return [d for i in range(0, len(scenes), batch_size)
                    for d in decode(model(scenes.images[i:i + batch_size].to(device)), stride)]

    steps, loss = fit(model, batch_loss, lambda: coco_map(predict(val), val)["map"], settings, len(train), seed,
                      False, progress, desc)
    val_scores, test_scores = coco_map(predict(val), val), coco_map(predict(test), test)
    return {"val_map": val_scores["map"], "val_map50": val_scores["map50"], "map": test_scores["map"],
            "map50": test_scores["map50"], "steps": steps, "final_train_loss": loss, "stride": stride}
