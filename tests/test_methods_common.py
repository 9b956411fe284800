"""What every registered method must do through the trainer: train a few steps with finite losses,
resume bitwise (so its queues, teachers, centres and schedules are all in the checkpoint), embed,
and come with a default config in configs/."""
from pathlib import Path

import pytest
import torch

from selfsup.config import TrainConfig, load_config
from selfsup.data import load_images
from selfsup.methods import method_class, method_names
from selfsup.run import load_run
from selfsup.train import load_training_data, pretrain

from resume import assert_bitwise_equal, straight_and_resumed
from small_data import write_corpus, write_table

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = ["backbone.width=0.125", "train.batch_size=16", "train.precision=fp32", "train.log_every=1",
        "optim.warmup_epochs=0", "eval.online_every=0", "train.checkpoint_every=2"]


def tiny_config(method, *extra):
    cfg = load_config(overrides=[f"method.name={method}", *TINY, *extra])
    if cfg.backbone.name.startswith("vit"):               # the smallest ViT that still has every part
        cfg.backbone.name = "vit_tiny"
    return cfg


IMAGE_METHODS = [m for m in method_names() if method_class(m).modality == "image"]


@pytest.mark.parametrize("method", IMAGE_METHODS)
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


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_default_config_file_matches_the_method_defaults(method):
    path = CONFIGS / f"{method}-fashion-mnist.yaml"
    assert path.is_file(), f"configs/{path.name} is missing; write it with `selfsup config --method {method}`"
    assert load_config(path).to_dict() == load_config(overrides=[f"method.name={method}"]).to_dict()


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_every_image_method_trains_for_the_shared_time_budget_unless_told_otherwise(method):
    cfg = load_config(overrides=[f"method.name={method}"])
    assert (cfg.train.steps, cfg.train.epochs, cfg.train.minutes) == (0, 0, TrainConfig().minutes) and cfg.train.minutes > 0
    cfg = load_config(overrides=[f"method.name={method}", "train.epochs=1"])     # the user's length wins
    assert (cfg.train.steps, cfg.train.epochs, cfg.train.minutes) == (0, 1, 0)


TEXT_AND_TABLE_METHODS = [m for m in method_names() if method_class(m).modality != "image"]


def small_text_or_table(method, tmp_path, *extra):
    """(config, data) for a few steps of a text or tabular method on a small synthetic file."""
    if method_class(method).modality == "text":
        source = write_corpus(tmp_path / "corpus.jsonl")
        settings = ["text.field=body", "text.max_length=24", "backbone.dim=16", "backbone.heads=2"]
    else:
        source = write_table(tmp_path / "table.csv")
        settings = ["table.label_column=label", "backbone.dim=16"]

    def make_config():
        return load_config(overrides=[f"method.name={method}", f"data.source={source}", *settings, *TINY, *extra])
    return make_config, load_training_data(make_config())


@pytest.mark.parametrize("method", TEXT_AND_TABLE_METHODS)
def test_text_and_table_methods_train_resume_bitwise_and_embed(method, tmp_path, monkeypatch):
    make_config, data = small_text_or_table(method, tmp_path, "train.steps=4")
    straight, resumed = straight_and_resumed(make_config, data, tmp_path, 2, monkeypatch)
    assert_bitwise_equal(straight, resumed)
    run = load_run(tmp_path / "straight")
    feats = run.embed(data.samples[:8])
    assert feats.shape == (8, run.backbone.feature_dim) and torch.isfinite(feats).all()


@pytest.mark.parametrize("method", TEXT_AND_TABLE_METHODS)
def test_text_and_table_methods_have_a_config_file_with_their_defaults(method):
    paths = sorted(CONFIGS.glob(f"{method}-*.yaml"))
    assert paths, f"configs/{method}-<data>.yaml is missing"
    for path in paths:
        cfg = load_config(path)
        assert cfg.modality == method_class(method).modality
        assert cfg.method == load_config(overrides=[f"method.name={method}"]).method
