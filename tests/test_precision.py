"""fp16 with a gradient scaler: it trains, keeps its loss scale in the checkpoint, resumes exactly,
and an overflowing step is skipped by the scaler instead of stopping the run."""
import importlib
import json
import os
import subprocess
import sys

import torch

from selfsup.checkpoint import latest_checkpoint, load_checkpoint
from selfsup.config import load_config
from selfsup.data import load_images
from selfsup.evaluate.online import OnlineMonitor
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


def scale_after_each_step(monkeypatch) -> list[float]:
    """The gradient scaler's loss scale after each step's update, appended as training goes."""
    history = []
    real_update = torch.amp.GradScaler.update

    def update(self, new_scale=None):
        real_update(self, new_scale)
        history.append(self.get_scale())
    monkeypatch.setattr(torch.amp.GradScaler, "update", update)
    return history


def test_an_overflowing_fp16_step_is_skipped_not_fatal(tiny_fashion, tmp_path, monkeypatch):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    clean = scale_after_each_step(monkeypatch)
    pretrain(load_config(overrides=FP16 + ["train.steps=4"]), tmp_path / "clean", data=data, progress=False)
    # Corrupt a step the clean run got through without overflowing (which steps overflow on their own
    # depends on the CPU's fp16 kernels), so the only reason to back off there is the corruption.
    before = [2.0 ** 16] + clean[:-1]
    step = next(i for i in range(1, 4) if clean[i] == before[i])
    monkeypatch.undo()
    corrupted = scale_after_each_step(monkeypatch)
    corrupt_loss_at_call(monkeypatch, step + 1, 1e30)        # times the scale: infinite gradients
    pretrain(load_config(overrides=FP16 + ["train.steps=4"]), tmp_path / "run", data=data, progress=False)
    assert corrupted[:step] == clean[:step]
    assert corrupted[step] == before[step] / 2               # the scaler skipped the step and backed off


def test_bf16_needs_no_scaler_and_fp32_no_autocast():
    assert not grad_scaler("cpu", "bf16").is_enabled() and grad_scaler("cpu", "fp16").is_enabled()
    with autocast("cpu", "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast("cpu", "fp16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16


def test_compile_option_compiles_the_training_step_and_not_evaluations(tiny_fashion, tmp_path, monkeypatch):
    """train.compile=true compiles the training step's forward and the augmentation; evaluations (the
    online monitor) call the method eagerly, and the checkpoint's weight names stay as they are. The
    real compiler takes minutes on this CPU, so the test compiles with the eager backend (same
    wrapping, no code generation)."""
    augment = importlib.import_module("selfsup.augment")      # (selfsup.augment is also a function's name)
    compiled, real_compile = [], torch.compile

    def eager_compile(target, *args, **kwargs):
        compiled.append(getattr(target, "__name__", type(target).__name__))
        return real_compile(target, backend="eager")
    monkeypatch.setattr(torch, "compile", eager_compile)
    kernels = []
    real_monitor = OnlineMonitor.__call__
    monkeypatch.setattr(OnlineMonitor, "__call__",
                        lambda self, method: kernels.append(augment._views_kernel) or real_monitor(self, method))
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    overrides = ["backbone.width=0.125", "train.batch_size=32", "train.steps=2", "eval.online_every=1",
                 "train.threads=1", "train.compile=true"]
    result = pretrain(load_config(overrides=overrides), tmp_path / "run", data=data, progress=False,
                      labelled=(data, data))
    tensors, _ = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert sorted(compiled) == ["Objective", "views_from_draws"]
    assert kernels and kernels[0] is not augment.views_from_draws      # the monitor ran while training was compiled
    assert not isinstance(result.method, torch._dynamo.eval_frame.OptimizedModule)      # the method itself is not
    assert augment._views_kernel is augment.views_from_draws            # put back after the run
    assert not any("_orig_mod" in key for key in tensors) and "model.backbone.stem.0.weight" in tensors


def test_importing_selfsup_caps_onednns_kernel_cache_unless_the_user_chose():
    # Text batches change shape every step; at oneDNN's default capacity its bf16 kernels filled 14 GB.
    show = "import os, selfsup; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    assert subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True).stdout.strip() == "256"
    env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = "32"
    assert subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True).stdout.strip() == "32"
