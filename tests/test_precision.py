"""fp16 with a gradient scaler: it trains, keeps its loss scale in the checkpoint, resumes exactly,
and an overflowing step is skipped by the scaler instead of stopping the run."""
import json

import torch

from selfsup.checkpoint import latest_checkpoint, load_checkpoint
from selfsup.config import load_config
from selfsup.data import load_images
from selfsup.precision import autocast, grad_scaler
from selfsup.train import pretrain

from resume import assert_bitwise_equal, straight_and_resumed
from training import corrupt_loss_at_call

FP16 = ["backbone.width=0.125", "train.batch_size=32", "train.precision=fp16", "train.log_every=1",
        "optim.warmup_epochs=0", "eval.online_every=0", "train.threads=1"]


def test_fp16_trains_and_saves_its_loss_scale(tiny_fashion, tmp_path):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    pretrain(load_config(overrides=FP16 + ["train.steps=4"]), tmp_path / "run", data=data, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    _, meta = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert meta["grad_scaler"]["scale"] > 1.0          # starts at 2**16, halves on overflow, never below 1 here


def test_fp16_resume_is_bitwise_identical(tiny_fashion, tmp_path, monkeypatch):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    make = lambda: load_config(overrides=FP16 + ["train.steps=4", "train.checkpoint_every=2"])  # noqa: E731
    assert_bitwise_equal(*straight_and_resumed(make, data, tmp_path, 2, monkeypatch))
    scalers = [load_checkpoint(latest_checkpoint(tmp_path / run / "checkpoints"))[1]["grad_scaler"]
               for run in ("straight", "broken")]
    assert scalers[0] == scalers[1] and scalers[0]["scale"] < 2.0 ** 16       # it moved, and resumed where it was


def test_an_overflowing_fp16_step_is_skipped_not_fatal(tiny_fashion, tmp_path, monkeypatch):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    pretrain(load_config(overrides=FP16 + ["train.steps=3"]), tmp_path / "clean", data=data, progress=False)
    corrupt_loss_at_call(monkeypatch, 2, 1e30)                # times the scale 2**16: infinite gradients
    pretrain(load_config(overrides=FP16 + ["train.steps=3"]), tmp_path / "run", data=data, progress=False)
    scales = [load_checkpoint(latest_checkpoint(tmp_path / run / "checkpoints"))[1]["grad_scaler"]["scale"]
              for run in ("clean", "run")]
    assert scales[1] == scales[0] / 2                  # the scaler backed off once more, at the overflow


def test_bf16_needs_no_scaler_and_fp32_no_autocast():
    assert not grad_scaler("cpu", "bf16").is_enabled() and grad_scaler("cpu", "fp16").is_enabled()
    with autocast("cpu", "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast("cpu", "fp16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16


def test_compile_option_compiles_the_backbone_in_place(tiny_fashion, tmp_path, monkeypatch):
    """train.compile=true compiles the backbone without renaming its weights. The real compiler takes
    minutes on this CPU, so the test compiles with the eager backend (same wrapping, no code generation)."""
    compiled = []
    real_compile = torch.nn.Module.compile

    def eager_compile(module, *args, **kwargs):
        compiled.append(type(module).__name__)
        return real_compile(module, backend="eager")
    monkeypatch.setattr(torch.nn.Module, "compile", eager_compile)
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    overrides = ["backbone.width=0.125", "train.batch_size=32", "train.steps=2", "eval.online_every=0",
                 "train.threads=1", "train.compile=true"]
    pretrain(load_config(overrides=overrides), tmp_path / "run", data=data, progress=False)
    tensors, _ = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert compiled == ["ResNet"]
    assert not any("_orig_mod" in key for key in tensors) and "model.backbone.stem.0.weight" in tensors
