"""What every registered method must do through the trainer: train a few steps with finite losses,
resume bitwise (so its queues, teachers, centres and schedules are all in the checkpoint), embed,
and come with a default config in configs/."""
from pathlib import Path

import pytest
import torch

from selfsup.config import load_config
from selfsup.data import load_images
from selfsup.methods import method_names
from selfsup.run import load_run
from selfsup.train import pretrain

from resume import assert_bitwise_equal, straight_and_resumed

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = ["backbone.width=0.125", "train.batch_size=16", "train.precision=fp32", "train.log_every=1",
        "optim.warmup_epochs=0", "eval.online_every=0", "train.checkpoint_every=2"]


def tiny_config(method, *extra):
    cfg = load_config(overrides=[f"method.name={method}", *TINY, *extra])
    if cfg.backbone.name.startswith("vit"):               # the smallest ViT that still has every part
        cfg.backbone.name = "vit_tiny"
    return cfg


@pytest.mark.parametrize("method", method_names())
def test_trains_resumes_bitwise_and_embeds(method, tiny_fashion, tmp_path, monkeypatch):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion)).subset(64)
    straight = pretrain(tiny_config(method, "train.steps=4"), tmp_path / "straight", data=data, progress=False)
    assert torch.isfinite(torch.tensor(straight.final_loss))

    straight_run, resumed = straight_and_resumed(lambda: tiny_config(method, "train.steps=4"), data,
                                                 tmp_path / "again", 2, monkeypatch)
    assert_bitwise_equal(straight_run, resumed)

    run = load_run(tmp_path / "straight")
    feats = run.embed(data.images[:8])
    assert feats.shape == (8, run.backbone.feature_dim) and torch.isfinite(feats).all()


@pytest.mark.parametrize("method", method_names())
def test_default_config_file_matches_the_method_defaults(method):
    path = CONFIGS / f"{method}-fashion-mnist.yaml"
    assert path.is_file(), f"configs/{path.name} is missing; write it with `selfsup config --method {method}`"
    assert load_config(path).to_dict() == load_config(overrides=[f"method.name={method}"]).to_dict()
