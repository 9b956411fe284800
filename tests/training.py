"""Shared by the method tests: views of a random batch, a short training run on tiny_fashion, the
kNN comparison with the random-initialised backbone, the collapse check, and small vector helpers
for loop references."""
from __future__ import annotations

import json
import math

import torch

from selfsup.config import load_config
from selfsup.run import knn_report, labelled_eval_sets, load_run
from selfsup.train import pretrain, step_generator

# A few epochs on the separable tiny_fashion classes, views gentle enough to keep the classes apart.
SHORT_RUN = ["train.epochs=4", "train.threads=1", "optim.lr=1.0", "augment.crop_scale=[0.6,1.0]", "augment.flip_p=0.0"]


def some_views(method, n=8, seed=0):
    batch = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return method.views(batch, step_generator(seed, 0, 0, torch.device("cpu")))


def train_tiny(tiny_fashion, run_dir, overrides: list[str]):
    """Pretrain SHORT_RUN + overrides on tiny_fashion; return the run and its logged losses."""
    cfg = load_config(overrides=list(overrides) + SHORT_RUN + [f"data.data_dir={tiny_fashion}"])
    pretrain(cfg, run_dir, progress=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return load_run(run_dir), [row["loss"] for row in rows if "loss" in row]


def knn_against_random_init(run):
    """kNN report (k=20) of the run's backbone, with the random-init and pixel baselines, and the test set."""
    train, test = labelled_eval_sets(run.config)
    return knn_report(run, train, test, k=20, progress=False), test


def spread_of_projections(run, test, head="projector"):
    """SimSiam's collapse check (Chen & He 2021, sec. 4.1) on the trained head's test embeddings:
    per-dimension std of the l2-normalised outputs times sqrt(dim): ~1 when spread, 0 when collapsed."""
    method = run.method.eval()
    with torch.no_grad():
        z = torch.nn.functional.normalize(getattr(method, head)(method.embed(test.images[:100])).float(), dim=1)
    return (z.std(dim=0).mean() * z.shape[1] ** 0.5).item()


def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def corrupt_loss_at_call(monkeypatch, call: int, factor: float) -> None:
    """Make SimCLR's loss `factor` times itself at its call number `call` (1-based): a NaN or an
    overflow arriving in the middle of a run."""
    from selfsup.methods.simclr import SimCLR
    real_loss = SimCLR.loss
    calls = {"n": 0}

    def corrupted(self, views):
        calls["n"] += 1
        loss, logs = real_loss(self, views)
        return (loss * factor if calls["n"] == call else loss), logs
    monkeypatch.setattr(SimCLR, "loss", corrupted)
