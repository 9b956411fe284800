"""Checkpoints: round trip with optimizer state, pruning, the `latest` pointer, damaged files, atomic writes."""
import os

import pytest
import torch
from torch import nn

from selfsup.checkpoint import (CheckpointError, atomic_write, latest_checkpoint, list_checkpoints,
                                load_checkpoint, optimizer_state, restore_optimizer, save_checkpoint,
                                set_aside_newer)


def make_model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))


def make_opt(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)


def train_step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 2, generator=g)
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def save_model_and_opt(folder, step, model, opt, keep=2):
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = optimizer_state(opt)
    tensors.update(opt_tensors)
    return save_checkpoint(folder, step, tensors, {"optimizer": opt_meta, "note": "hi"}, keep=keep)


def test_round_trip_restores_model_and_optimizer(tmp_path):
    model = make_model(0)
    opt = make_opt(model)
    for s in range(3):
        train_step(model, opt, s)
    path = save_model_and_opt(tmp_path, 3, model, opt)
    assert path == tmp_path / "step-0000003.safetensors"

    tensors, meta = load_checkpoint(path)
    assert meta["step"] == 3 and meta["note"] == "hi"
    for k, v in model.state_dict().items():
        assert torch.equal(tensors[f"model.{k}"], v), k

    clone = make_model(1)                                # different init
    clone.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    clone_opt = make_opt(clone)
    restore_optimizer(clone_opt, tensors, meta["optimizer"])
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(opt.state[p]["momentum_buffer"], clone_opt.state[q]["momentum_buffer"])
    assert clone_opt.param_groups[0]["lr"] == 0.1 and clone_opt.param_groups[0]["momentum"] == 0.9

    # an optimizer without the restored momentum would step differently: the check below can fail
    fresh = make_model(1)
    fresh.load_state_dict(clone.state_dict())
    fresh_opt = make_opt(fresh)

    train_step(model, opt, 99)
    train_step(clone, clone_opt, 99)
    train_step(fresh, fresh_opt, 99)
    for a, b in zip(model.state_dict().values(), clone.state_dict().values()):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, c) for a, c in zip(model.parameters(), fresh.parameters()))


def test_load_by_stem_or_json(tmp_path):
    save_checkpoint(tmp_path, 5, {"w": torch.arange(4.0)}, {})
    for p in (tmp_path / "step-0000005", tmp_path / "step-0000005.json"):
        tensors, meta = load_checkpoint(p)
        assert torch.equal(tensors["w"], torch.arange(4.0))
        assert meta["step"] == 5


def test_keep_prunes_and_latest_names_newest(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000030", "step-0000040"]
    assert sorted(p.name for p in tmp_path.glob("step-*")) == [
        "step-0000030.json", "step-0000030.safetensors", "step-0000040.json", "step-0000040.safetensors"]
    assert (tmp_path / "latest").read_text().strip() == "step-0000040"
    assert latest_checkpoint(tmp_path) == tmp_path / "step-0000040"
    tensors, _ = load_checkpoint(latest_checkpoint(tmp_path))
    assert torch.equal(tensors["w"], torch.full((2,), 40.0))


def test_latest_falls_back_to_newest_complete(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"w": torch.zeros(1)}, {}, keep=5)
    (tmp_path / "latest").write_text("step-0000009")            # names a checkpoint that is gone
    assert latest_checkpoint(tmp_path) == tmp_path / "step-0000003"
    (tmp_path / "step-0000003.safetensors").unlink()           # newest is now incomplete
    assert latest_checkpoint(tmp_path) == tmp_path / "step-0000002"
    (tmp_path / "latest").unlink()                               # no pointer at all
    assert latest_checkpoint(tmp_path) == tmp_path / "step-0000002"


def test_truncated_safetensors_names_file(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"w": torch.randn(16, 16)}, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert path.name in str(info.value)


def test_json_not_json(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, {})
    meta = path.with_suffix(".json")
    meta.write_text("{not json")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert meta.name in str(info.value)


def test_missing_half_and_foreign_json(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, {})
    path.with_suffix(".json").write_text('{"format": "other"}')
    with pytest.raises(CheckpointError, match="not a selfsup checkpoint"):
        load_checkpoint(path)
    path.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path)


def test_atomic_write_leaves_no_tmp(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_atomic_write_failure_keeps_old_content(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"
    atomic_write(target, b"old")

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write(target, b"new content")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_pruning_never_removes_the_checkpoint_just_written(tmp_path):
    """A resume from step 10 past a newer, damaged step 15 must not lose step 12 when it saves."""
    t = {"w": torch.ones(2)}
    save_checkpoint(tmp_path, 10, t, {}, keep=1)
    save_checkpoint(tmp_path, 15, t, {}, keep=1)
    damaged = tmp_path / "step-0000015.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:10])
    moved = set_aside_newer(tmp_path, tmp_path / "step-0000010")
    assert [m.name for m in moved] == ["step-0000015"]
    assert (tmp_path / "step-0000015.safetensors.damaged").exists()
    save_checkpoint(tmp_path, 12, t, {}, keep=1)
    assert [s.name for s in list_checkpoints(tmp_path)] == ["step-0000012"]
    assert latest_checkpoint(tmp_path).name == "step-0000012"
    load_checkpoint(latest_checkpoint(tmp_path))
