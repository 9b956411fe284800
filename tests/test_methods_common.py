"""What every registered method must do through the trainer: train a few steps with finite losses,
resume bitwise (so its queues, teachers, centres and schedules are all in the checkpoint), embed,
and come with a default config in configs/."""
from pathlib import Path

import pytest
import torch

from selfsup.checkpoint import list_checkpoints, load_checkpoint
from selfsup.config import load_config
from selfsup.data import load_images
from selfsup.methods import method_names
from selfsup.run import load_run
from selfsup.train import pretrain

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = ["backbone.width=0.125", "train.batch_size=16", "train.precision=fp32", "train.log_every=1",
        "optim.warmup_epochs=0", "eval.online_every=0", "train.checkpoint_every=2"]


def tiny_config(method, *extra):
    cfg = load_config(overrides=[f"method.name={method}", *TINY, *extra])
    if cfg.backbone.name.startswith("vit"):               # the smallest ViT that still has every part
        cfg.backbone.name = "vit_tiny"
    return cfg


def model_tensors(run_dir):
    tensors, _ = load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


@pytest.mark.parametrize("method", method_names())
def test_trains_resumes_bitwise_and_embeds(method, tiny_fashion, tmp_path):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion)).subset(64)
    straight = pretrain(tiny_config(method, "train.steps=4"), tmp_path / "straight", data=data, progress=False)
    assert torch.isfinite(torch.tensor(straight.final_loss))

    pretrain(tiny_config(method, "train.steps=4"), tmp_path / "broken", data=data, progress=False)
    for later in list_checkpoints(tmp_path / "broken" / "checkpoints")[1:]:     # as if killed after step 2
        for suffix in (".safetensors", ".json"):
            later.with_suffix(suffix).unlink()
    (tmp_path / "broken" / "checkpoints" / "latest").unlink()
    pretrain(load_config(tmp_path / "broken" / "config.yaml"), tmp_path / "broken", data=data, resume=True,
             progress=False)
    a, b = model_tensors(tmp_path / "straight"), model_tensors(tmp_path / "broken")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{method}: resumed run differs in {different[:5]}"

    run = load_run(tmp_path / "straight")
    feats = run.embed(data.images[:8])
    assert feats.shape == (8, run.backbone.feature_dim) and torch.isfinite(feats).all()


@pytest.mark.parametrize("method", method_names())
def test_default_config_file_matches_the_method_defaults(method):
    path = CONFIGS / f"{method}-fashion-mnist.yaml"
    assert path.is_file(), f"configs/{path.name} is missing; write it with `selfsup config --method {method}`"
    assert load_config(path).to_dict() == load_config(overrides=[f"method.name={method}"]).to_dict()
