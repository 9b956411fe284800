"""Maps of what an image encoder looks at: a ViT's class-token attention, a CNN's Grad-CAM.

- ViT: the last block's attention of the class token to each patch, one map per head (the
  figures of DINO, Caron et al. 2021), upsampled to the image.
- CNN: Grad-CAM (Selvaraju et al. 2017) on the last stage. The backbone has no classifier, so the
  score explained is the cosine similarity of the image's embedding to its nearest neighbour
  among reference images (the run's training images): the map shows which regions made the image
  look like the one it is retrieved with, and so like that neighbour's class.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from selfsup.data.imageset import ImageSet
from selfsup.errors import ConfigError


def class_attention_maps(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, heads, H, W) in [0, 1] per map: a ViT's last-block class-token attention, upsampled to the image."""
    with torch.no_grad():
        attention = backbone.class_attention(x)
    return _to_unit(F.interpolate(attention, size=x.shape[-2:], mode="nearest"))


def grad_cam(backbone: nn.Module, x: torch.Tensor, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps (B, 1, h, w) at the last stage's resolution, the index of each image's nearest reference): Grad-CAM
    of a ResNet's last stage for the cosine similarity of the pooled embedding to its nearest row of
    `references` (L2-normalised)."""
    # The input asks for a gradient, so the graph to the last stage exists even for a backbone whose
    # weights do not (DINO's evaluated teacher).
    with torch.enable_grad():
        last = backbone.stage_maps(x.detach().requires_grad_(True))[-1]
        embedding = F.normalize(last.mean(dim=(2, 3)), dim=1)
        similarity = embedding @ references.T
        nearest = similarity.argmax(1)
        (gradient,) = torch.autograd.grad(similarity.gather(1, nearest[:, None]).sum(), last)
    weights = gradient.mean(dim=(2, 3), keepdim=True)                  # each channel's importance
    cam = F.relu((weights * last).sum(1, keepdim=True)).detach()
    return cam, nearest.detach()


def explanation_maps(backbone: nn.Module, x: torch.Tensor, references: torch.Tensor | None = None) -> dict:
    """{"maps": (B, M, H, W), "kind": "attention" | "grad-cam", "nearest": (B,) or None} for any backbone that
    has a class token to read (ViT) or stage maps to weigh (ResNet)."""
    backbone.eval()
    if hasattr(backbone, "class_attention"):
        return {"maps": class_attention_maps(backbone, x), "kind": "attention", "nearest": None}
    if hasattr(backbone, "stage_maps"):
        if references is None:
            raise ValueError("Grad-CAM of a CNN explains the similarity to reference embeddings; pass references")
        cam, nearest = grad_cam(backbone, x, references)
        maps = _to_unit(F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False))
        return {"maps": maps, "kind": "grad-cam", "nearest": nearest}
    raise ConfigError(f"{type(backbone).__name__} gives no maps to explain; explanations need a ViT (attention) or a "
                      "ResNet (Grad-CAM)")


def _to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Each (H, W) map scaled to [0, 1] (a constant map becomes 0)."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - low) / (high - low).clamp(min=1e-12)


def overlay(image_u8: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """An (H, W, 3) uint8 picture: the image in grey or colour with the map in the 'jet' colours over it."""
    picture = image_u8.float().div(255)
    picture = picture.expand(3, -1, -1) if picture.shape[0] == 1 else picture[:3]
    colours = torch.from_numpy(matplotlib.colormaps["jet"](heat.numpy())[..., :3]).permute(2, 0, 1).float()
    mixed = (1 - alpha) * picture + alpha * colours
    return (mixed.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()


def save_explanations(images_u8: torch.Tensor, result: dict, out: Path, captions: list[str] | None = None,
                      scale: int = 0) -> list[Path]:
    """One PNG a picture (the image, then each map over it, side by side, enlarged `scale` times; 0 = to
    about 128 px) and a grid of them all, explanations.png; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    scale = scale or max(1, 128 // images_u8.shape[-1])
    paths, rows = [], []
    for i, image in enumerate(images_u8):
        plain = overlay(image, torch.zeros(image.shape[-2:]), alpha=0.0)
        row = np.concatenate([plain] + [overlay(image, m) for m in result["maps"][i]], axis=1)
        row = np.kron(row, np.ones((scale, scale, 1), dtype=np.uint8))
        name = f"explain-{i:03d}.png"
        Image.fromarray(row).save(out / name)
        paths.append(out / name)
        rows.append(row)
    Image.fromarray(np.concatenate(rows, axis=0)).save(out / "explanations.png")
    if captions:
        (out / "explanations.txt").write_text("\n".join(f"{p.name}: {c}" for p, c in zip(paths, captions)) + "\n")
    return paths + [out / "explanations.png"]


def explain_run(run, images: ImageSet, references: ImageSet) -> tuple[dict, list[str]]:
    """explanation_maps of a run's encoder (selfsup.run.Run) for `images`, at their own size; a CNN is explained
    towards each image's nearest neighbour among `references`. Also one caption an image."""
    if not run.modality.dense_tasks:
        raise ConfigError(f"{run.path} is a {run.modality.name} run; explanation maps need an image encoder")
    prepare, backbone = run.modality.native_input(run.config), run.backbone.cpu().eval()
    bank = None
    if not hasattr(backbone, "class_attention"):
        with torch.no_grad():
            bank = torch.cat([F.normalize(backbone(prepare(references.images[i:i + 256])), dim=1)
                              for i in range(0, len(references), 256)])
    result = explanation_maps(backbone, prepare(images.images[:]), bank)      # [:]: streamed images decoded
    if result["nearest"] is None:
        return result, [f"class-token attention, heads 1-{result['maps'].shape[1]}"] * len(images)
    named = references.labels is not None and references.classes
    return result, [f"Grad-CAM towards training image {int(j)}"
                    + (f" ({references.classes[references.labels[j]]})" if named else "") for j in result["nearest"]]
