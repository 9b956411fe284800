"""Shared by the resume tests: train a config straight through; train it again, 'killed' right after
the checkpoint of one step, and resume it; return the model tensors of both final checkpoints."""
from __future__ import annotations

from typing import Callable

import torch

import selfsup.run_folder
from selfsup.checkpoint import list_checkpoints, load_checkpoint
from selfsup.config import Config, load_config
from selfsup.train import pretrain


class Killed(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


def model_tensors(run_dir) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def straight_and_resumed(make_config: Callable[[], Config], data, tmp_path, kill_after: int, monkeypatch):
    """make_config() must checkpoint at step kill_after (e.g. train.checkpoint_every=kill_after)."""
    pretrain(make_config(), tmp_path / "straight", data=data, progress=False)
    real_save = selfsup.run_folder.save_checkpoint

    def save_then_die(folder, step, *args, **kwargs):
        real_save(folder, step, *args, **kwargs)
        if step == kill_after:
            raise Killed
    with monkeypatch.context() as patch:
        patch.setattr(selfsup.run_folder, "save_checkpoint", save_then_die)
        try:
            pretrain(make_config(), tmp_path / "broken", data=data, progress=False)
        except Killed:
            pass
        else:
            raise AssertionError(f"the run never saved step {kill_after}, so it was not killed")
    pretrain(load_config(tmp_path / "broken" / "config.yaml"), tmp_path / "broken", data=data, resume=True,
             progress=False)
    return model_tensors(tmp_path / "straight"), model_tensors(tmp_path / "broken")


def assert_bitwise_equal(straight: dict, resumed: dict) -> None:
    assert straight.keys() == resumed.keys()
    different = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not different, f"the resumed run differs in {different[:5]}"
