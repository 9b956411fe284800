"""timm and Hugging Face backbones for a few steps of SimCLR and DINO on Fashion-MNIST (issue 29,
docs/integrations.md): for each backbone and method, the steps' seconds, images/s, the first and last
loss, the feature dimension, and kNN top-1 on the validation images (5,000 carved from the training
set; the test images are not read) with a 10,000-image memory, next to the same backbone at random
initialisation. One JSON line per pair (appended to --out).

    python benchmarks/external_backbones.py --steps 30 --out docs/integrations-cpu.jsonl
    python benchmarks/external_backbones.py --backbones timm:resnet18 timm:convnext_atto --methods simclr

The runs use each method's recipe at batch --batch (default 64), fp32 and random initial weights: a
check that the backbone trains, not a recipe for accuracy. Needs pip install 'selfsup[timm,hf]'.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from selfsup.config import load_config
from selfsup.run import knn_report, load_run
from selfsup.run_folder import RunFolder
from selfsup.train import pretrain

DEFAULT_BACKBONES = ["timm:resnet18", "timm:mobilenetv3_small_100", "timm:efficientnet_b0",
                     "hf-vit"]


def tiny_hf_vit(folder: Path) -> str:
    """A ViT-Tiny-sized transformers config (patch 4 on 28 px images) saved to folder: hf:<folder>."""
    import transformers
    transformers.ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
                           patch_size=4, image_size=28, num_channels=1).save_pretrained(folder)
    return f"hf:{folder}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=DEFAULT_BACKBONES,
                   help="timm:<model>, hf:<folder>, or hf-vit (a ViT-Tiny config written for the run)")
    p.add_argument("--methods", nargs="+", default=["simclr", "dino"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--runs-dir", default="runs/external-backbones")
    p.add_argument("--out", help="append the JSON lines to this file too")
    args = p.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="selfsup-hf-"))
    for backbone in args.backbones:
        name = tiny_hf_vit(scratch / "vit") if backbone == "hf-vit" else backbone
        for method in args.methods:
            run_dir = Path(args.runs_dir) / f"{backbone.replace(':', '-').replace('/', '-')}-{method}"
            shutil.rmtree(run_dir, ignore_errors=True)
            cfg = load_config(overrides=[f"method.name={method}", f"backbone.name={name}", f"train.steps={args.steps}",
                                         f"train.batch_size={args.batch}", "train.precision=fp32", "eval.online_every=0",
                                         "optim.warmup_epochs=0"])
            started = time.time()
            result = pretrain(cfg, run_dir, progress=False)
            losses = [row["loss"] for row in RunFolder(run_dir).read_metrics() if "loss" in row]
            run = load_run(run_dir)
            train, val = run.labelled_sets(max_train=10000, max_test=5000, part="val")
            knn = knn_report(run, train, val, progress=False)
            backbone_module = result.method.backbone
            row = {"backbone": backbone, "method": method, "steps": result.steps, "batch": args.batch,
                   "feature_dim": backbone_module.feature_dim,
                   "parameters_m": round(sum(p.numel() for p in backbone_module.parameters()) / 1e6, 2),
                   "train_seconds": round(result.seconds, 1), "images_per_second": round(result.images_per_second, 1),
                   "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
                   "knn_top1_val": knn["knn_top1"], "knn_top1_val_random_init": knn.get("knn_top1_random_init"),
                   "wall_seconds": round(time.time() - started, 1)}
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
