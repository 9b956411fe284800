"""Checkpoint save and load time and size, as the trainer writes them (model + optimizer state +
RNG, safetensors + JSON, fsynced and renamed), for the backbones a run uses.

    python benchmarks/checkpoint.py                       # resnet18 (width 0.5 and 1.0), vit_small
    python benchmarks/checkpoint.py --backbones resnet18:1.0 --repeats 5

Prints one JSON object per backbone. Times are medians over --repeats, in a scratch folder on the
same disk as --dir (default: a temporary folder).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from selfsup.checkpoint import load_checkpoint, optimizer_state, save_checkpoint
from selfsup.config import load_config
from selfsup.optim import build_optimizer
from selfsup.build import build_method


def measure(spec: str, repeats: int, folder: Path) -> dict:
    name, _, width = spec.partition(":")
    overrides = [f"backbone.name={name}", "data.channels=3", "data.size=32", "augment.size=32"]
    if width:
        overrides.append(f"backbone.width={width}")
    cfg = load_config(overrides=overrides)
    cfg.augment.mean, cfg.augment.std = (0.5,) * 3, (0.25,) * 3
    method = build_method(cfg, 3)
    optimizer = build_optimizer(method, cfg.optim)
    views = method.views(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.Generator().manual_seed(0))
    method.loss(views)[0].backward()
    optimizer.step()                                   # so the optimizer has its momentum buffers

    def tensors():
        out = {f"model.{k}": v for k, v in method.state_dict().items()}
        opt_tensors, opt_meta = optimizer_state(optimizer)
        out.update(opt_tensors)
        return out, {"optimizer": opt_meta, "config": cfg.to_dict()}

    save_times, load_times, stem = [], [], None
    for i in range(repeats):
        t = time.perf_counter()
        all_tensors, meta = tensors()
        path = save_checkpoint(folder, i + 1, all_tensors, meta, keep=1)
        save_times.append(time.perf_counter() - t)
        stem = path.with_suffix("")
        t = time.perf_counter()
        load_checkpoint(stem)
        load_times.append(time.perf_counter() - t)
    backbone_params = sum(p.numel() for p in method.backbone.parameters())
    return {"backbone": spec, "backbone_params_m": round(backbone_params / 1e6, 2),
            "all_params_m": round(sum(p.numel() for p in method.parameters()) / 1e6, 2),
            "file_mb": round((stem.with_suffix(".safetensors").stat().st_size
                              + stem.with_suffix(".json").stat().st_size) / 2**20, 2),
            "save_s": round(statistics.median(save_times), 4), "load_s": round(statistics.median(load_times), 4),
            "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["resnet18:0.5", "resnet18:1.0", "vit_small"],
                        help="NAME or NAME:WIDTH")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="folder for the scratch checkpoints [default: a temp folder]")
    args = parser.parse_args()
    for spec in args.backbones:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            print(json.dumps(measure(spec, args.repeats, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
