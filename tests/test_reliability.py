"""Reliability: exact resume after SIGKILL at any point, crash-safe saves, the checkpoint policy,
a full disk, checkpoints that do not fit, graceful stop, export and safe loading of encoders."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import selfsup.checkpoint
import selfsup.train
from selfsup.backbones import build_backbone
from selfsup.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, read_pointer
from selfsup.cli import main
from selfsup.config import load_config
from selfsup.data import load_images
from selfsup.evaluate.datasets import labelled_eval_sets
from selfsup.evaluate.online import OnlineMonitor
from selfsup.export import import_weights, load_encoder
from selfsup.methods import method_class, method_names
from selfsup.run import load_run
from selfsup.errors import TrainingError
from selfsup.train import pretrain

SMALL = ["backbone.width=0.125", "train.batch_size=32", "train.precision=fp32", "train.log_every=1",
         "optim.warmup_epochs=0", "eval.batch_size=256", "eval.online_train=100", "eval.online_test=50"]


def small_config(*extra):
    return load_config(overrides=SMALL + list(extra))


def final_model(run_dir):
    tensors, meta = load_checkpoint(read_pointer(run_dir / "checkpoints", "latest"))
    return meta["step"], {k: v for k, v in tensors.items() if k.startswith("model.")}


def max_abs_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0 for k in a)


# ----------------------------------------------------------------------------- kill and resume

def cli_command(tiny_fashion, runs, *extra):
    return [sys.executable, "-m", "selfsup", "pretrain", "--runs-dir", str(runs), "--name", "run", "--quiet",
            "--no-eval", "--data-dir", str(tiny_fashion), *SMALL, "train.threads=1", *extra]


def loss_rows(run_dir):
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum('"loss"' in line for line in path.read_text().splitlines())


def test_sigkill_at_several_points_then_resume_is_bitwise_identical(tiny_fashion, tmp_path):
    """A run SIGKILLed three times (wherever it happens to be: mid-step, mid-save, mid-online-eval) and
    resumed each time ends with exactly the weights of a run that was never interrupted."""
    steps = ["train.steps=16", "train.checkpoint_every=1"]
    straight = subprocess.run(cli_command(tiny_fashion, tmp_path / "straight", *steps), capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr

    runs, run_dir = tmp_path / "broken", tmp_path / "broken" / "run"
    kills = []
    for kill_after in (3, 7, 12):
        resume = ["--resume", str(run_dir)] if kills else []
        proc = subprocess.Popen(cli_command(tiny_fashion, runs, *steps) + resume, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while loss_rows(run_dir) < kill_after and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(loss_rows(run_dir))
    finished = subprocess.run(cli_command(tiny_fashion, runs, *steps) + ["--resume", str(run_dir)],
                              capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr

    step_a, reference = final_model(tmp_path / "straight" / "run")
    step_b, resumed = final_model(run_dir)
    assert step_a == step_b == 16
    assert max_abs_difference(reference, resumed) == 0.0, f"killed after steps {kills}"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 17))


class Killed(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


@pytest.mark.parametrize("dies_during", ["tensors", "metadata", "latest pointer"])
def test_kill_in_the_middle_of_a_save_keeps_the_previous_checkpoint_and_resumes_exactly(
        dies_during, tiny_fashion, tmp_path, monkeypatch):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    cfg = ["train.steps=6", "train.checkpoint_every=2"]
    pretrain(small_config(*cfg), tmp_path / "straight", data=data, progress=False)

    real_write = selfsup.checkpoint.atomic_write
    target = {"tensors": ".safetensors", "metadata": ".json", "latest pointer": "latest"}[dies_during]

    def write_or_die(path, payload):
        if path.name.startswith("step-0000004") or (path.name == "latest" and payload == b"step-0000004"):
            if path.name.endswith(target):
                raise Killed
        real_write(path, payload)
    monkeypatch.setattr(selfsup.checkpoint, "atomic_write", write_or_die)
    with pytest.raises(Killed):
        pretrain(small_config(*cfg), tmp_path / "broken", data=data, progress=False)
    monkeypatch.undo()
    assert load_run(tmp_path / "broken").step in (2, 4)        # the previous checkpoint (or the whole new one)

    pretrain(load_config(tmp_path / "broken" / "config.yaml"), tmp_path / "broken", data=data, resume=True,
             progress=False)
    assert max_abs_difference(final_model(tmp_path / "straight")[1], final_model(tmp_path / "broken")[1]) == 0.0


def test_sigterm_finishes_the_step_saves_and_exits_0_with_the_resume_command(tiny_fashion, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(cli_command(tiny_fashion, tmp_path, "train.steps=100000", "train.checkpoint_every=1000"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while loss_rows(run_dir) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"selfsup pretrain --resume {run_dir}" in err
    assert load_run(run_dir).step >= 2


# ----------------------------------------------------------------------------- checkpoint policy

def test_checkpoints_at_epoch_ends_and_every_n_steps(tiny_fashion, tmp_path):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))       # 400 images, 12 steps per epoch
    pretrain(small_config("train.steps=26", "train.checkpoint_every=5", "train.keep_checkpoints=100",
                          "eval.online_every=0"), tmp_path / "run", data=data, progress=False)
    steps = [int(s.name.split("-")[1]) for s in list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert steps == [5, 10, 12, 15, 20, 24, 25, 26]


def test_best_online_knn_checkpoint_is_kept_beyond_keep_last(tiny_fashion, tmp_path, monkeypatch):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    labelled = labelled_eval_sets(small_config(f"data.data_dir={tiny_fashion}"))
    scores = iter([0.5, 0.9, 0.6, 0.7])
    healthy = {"rankme": 20.0, "std": 1.0, "uniformity": -3.0, "alignment": 0.5}
    monkeypatch.setattr(OnlineMonitor, "__call__", lambda self, method: {**healthy, "online_knn_top1": next(scores)})
    pretrain(small_config("train.steps=24", "train.keep_checkpoints=1", "train.checkpoint_every=1000",
                          "eval.online_every=0.5"), tmp_path / "run", data=data, labelled=labelled, progress=False)
    folder = tmp_path / "run" / "checkpoints"           # online kNN every 6 steps: 6, 12, 18, 24
    assert [s.name for s in list_checkpoints(folder)] == ["step-0000012", "step-0000024"]
    assert read_pointer(folder, "best").name == "step-0000012"
    assert load_checkpoint(folder / "step-0000012")[1]["online_knn"] == 0.9
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["online_knn_top1"] for r in rows if "online_knn_top1" in r] == [0.5, 0.9, 0.6, 0.7]


def test_online_knn_scores_the_real_backbone(tiny_fashion, tmp_path):
    cfg = small_config("train.steps=11", f"data.data_dir={tiny_fashion}", "eval.knn_k=10")   # one epoch
    pretrain(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    online = [r["online_knn_top1"] for r in rows if "online_knn_top1" in r]
    assert len(online) == 1 and 0.3 < online[0] <= 1.0       # separable classes: far above chance (0.1)


# ----------------------------------------------------------------------------- failures while saving or loading

def test_full_disk_stops_with_a_message_and_keeps_the_previous_checkpoint(tiny_fashion, tmp_path, monkeypatch):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    real_write = selfsup.checkpoint.atomic_write

    def disk_fills_up(path, payload):
        if path.name.startswith("step-0000004"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, payload)
    monkeypatch.setattr(selfsup.checkpoint, "atomic_write", disk_fills_up)
    with pytest.raises(TrainingError) as e:
        pretrain(small_config("train.steps=6", "train.checkpoint_every=2"), tmp_path / "run", data=data,
                 progress=False)
    message = str(e.value)
    assert "No space left on device" in message and "step 4" in message
    assert "step-0000002 is intact" in message and f"--resume {tmp_path / 'run'}" in message
    monkeypatch.undo()
    assert load_run(tmp_path / "run").step == 2
    result = pretrain(load_config(tmp_path / "run" / "config.yaml"), tmp_path / "run", data=data, resume=True,
                      progress=False)
    assert result.steps == 6


def test_resume_with_weights_of_other_shapes_says_once_which_tensor_and_setting(tiny_fashion, tmp_path, capsys):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    pretrain(small_config("train.steps=4", "train.checkpoint_every=2"), tmp_path / "run", data=data, progress=False)
    capsys.readouterr()
    with pytest.raises(TrainingError) as e:
        pretrain(small_config("train.steps=6", "backbone.width=0.25"), tmp_path / "run", data=data, resume=True,
                 progress=False)
    message = str(e.value)
    assert message.startswith("cannot resume step-0000004: its backbone.") and "\n" not in message
    assert "has shape (8,) but the config builds (16,)" in message          # twice the channels
    assert "backbone.width 0.125 -> 0.25 since the run was saved" in message
    assert "older checkpoint" not in capsys.readouterr().err     # no other checkpoint was tried
    assert load_run(tmp_path / "run").step == 4                  # nothing was set aside or overwritten


def test_a_whole_checkpoint_newer_than_the_pointer_is_resumed_not_set_aside(tiny_fashion, tmp_path, capsys):
    """A kill between a checkpoint's last file and the `latest` pointer's rename leaves the checkpoint
    whole: resume takes it, and clears the temporary files of interrupted writes."""
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    cfg = ["train.steps=6", "train.checkpoint_every=2"]
    pretrain(small_config(*cfg), tmp_path / "straight", data=data, progress=False)
    pretrain(small_config("train.steps=6", "train.checkpoint_every=2"), tmp_path / "run", data=data, progress=False)
    folder = tmp_path / "run" / "checkpoints"
    (folder / "step-0000006.json").unlink()                      # as if killed before step 6's metadata
    (folder / "latest").write_text("step-0000002")              # and before step 4's pointer
    leftovers = [folder / ".step-0000006.json.x1.tmp", folder / ".latest.x2.tmp", tmp_path / "run" / ".config.yaml.x3.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"partial")
    capsys.readouterr()
    pretrain(load_config(tmp_path / "run" / "config.yaml"), tmp_path / "run", data=data, resume=True, progress=False)
    err = capsys.readouterr().err
    assert "resuming from step-0000004 (step 4)" in err and "damaged" not in err
    assert not list(folder.glob("*.damaged")) and not any(leftover.exists() for leftover in leftovers)
    assert max_abs_difference(final_model(tmp_path / "straight")[1], final_model(tmp_path / "run")[1]) == 0.0


def test_resume_of_a_folder_that_is_not_a_run_is_bad_input(tmp_path, capsys):
    assert main(["pretrain", "--resume", str(tmp_path / "nothing-here")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["pretrain", "--resume", str(tmp_path)]) == 2
    assert "has no config.yaml" in capsys.readouterr().err


def test_python_and_numpy_random_states_are_seeded_from_the_run(tiny_fashion, tmp_path):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    states = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        pretrain(small_config("train.steps=2", f"train.seed={seed}"), tmp_path / name, data=data, progress=False)
        states.append(load_checkpoint(read_pointer(tmp_path / name / "checkpoints", "latest"))[1]["rng"])
    assert states[0] == states[1] and states[0]["python"] != states[2]["python"]
    assert states[0]["numpy"] != states[2]["numpy"]


def test_resume_with_another_method_says_what_changed(tiny_fashion, tmp_path):
    other = next(name for name in method_names() if name != "simclr" and method_class(name).modality == "image")
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    pretrain(small_config("train.steps=2"), tmp_path / "run", data=data, progress=False)
    with pytest.raises(TrainingError, match=f"method: simclr -> {other}"):
        pretrain(small_config("train.steps=4", f"method.name={other}"), tmp_path / "run", data=data, resume=True,
                 progress=False)


def test_evaluate_and_embed_take_a_checkpoint_and_say_so_when_the_latest_is_unreadable(tiny_fashion, tmp_path,
                                                                                       capsys):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    pretrain(small_config("train.steps=4", "train.checkpoint_every=2", f"data.data_dir={tiny_fashion}"),
             tmp_path / "run", data=data, progress=False)
    (tmp_path / "run" / "checkpoints" / "step-0000004.safetensors").write_bytes(b"truncated")
    embed = ["embed", str(tmp_path / "run"), "--data", "fashion-mnist", "--data-dir", str(tiny_fashion),
             "--out", str(tmp_path / "e.npy")]
    assert main(embed) == 1
    assert f"pass --checkpoint {tmp_path / 'run' / 'checkpoints' / 'step-0000002'}.safetensors" in capsys.readouterr().err
    older = str(tmp_path / "run" / "checkpoints" / "step-0000002.safetensors")
    assert main([*embed, "--checkpoint", older]) == 0
    assert main(["evaluate", "knn", str(tmp_path / "run"), "--checkpoint", older, "--k", "5", "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "eval" / "knn.json").read_text())["step"] == 2


# ----------------------------------------------------------------------------- export and safe loading

@pytest.fixture
def trained_run(tiny_fashion, tmp_path):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    pretrain(small_config("train.steps=2"), tmp_path / "run", data=data, progress=False)
    return tmp_path / "run"


def test_exported_encoder_loads_as_a_module_with_the_same_outputs(trained_run, tmp_path, capsys):
    out = tmp_path / "enc" / "encoder.safetensors"
    assert main(["export", str(trained_run), "--out", str(out)]) == 0
    assert out.with_suffix(".json").is_file()
    encoder = load_encoder(out)
    run = load_run(trained_run)
    x = torch.randn(4, 1, 28, 28)
    # The run keeps channels_last weights; the same layout makes the comparison exact.
    run.backbone.to(memory_format=torch.contiguous_format).eval()
    with torch.no_grad():
        assert torch.equal(encoder(x), run.backbone(x))
    spec = encoder.selfsup_spec
    assert spec["input"]["channels"] == 1 and len(spec["input"]["mean"]) == 1 and spec["origin"]["step"] == 2
    assert not encoder.training


def test_onnx_export_runs_in_onnxruntime_at_any_batch_size_with_the_same_features(trained_run, tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "enc" / "encoder.onnx"
    assert main(["export", str(trained_run), "--out", str(out), "--format", "onnx"]) == 0
    assert "onnxruntime matches PyTorch to" in capsys.readouterr().out
    spec = json.loads(out.with_suffix(".json").read_text())
    assert spec["input"]["name"] == "images" and spec["input"]["shape"][1:] == [1, 28, 28]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    run = load_run(trained_run)
    run.backbone.eval()
    x = torch.randn(5, 1, 28, 28)                       # traced with 2 images
    exported = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(exported, run.backbone(x), atol=1e-4, rtol=0)


def test_load_encoder_rejects_files_without_a_recipe_or_of_another_shape(trained_run, tmp_path):
    from safetensors.torch import save_file
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(CheckpointError, match="no selfsup rebuild recipe"):
        load_encoder(bare)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_encoder(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 50)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_encoder(garbage)


def torchvision_names(state):
    """Our ResNet keys renamed to torchvision's, the naming a foreign checkpoint would use."""
    renamed = {}
    for key, value in state.items():
        key = key.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.").replace(".shortcut.", ".downsample.")
        if key.startswith("layers."):
            _, stage, rest = key.split(".", 2)
            key = f"layer{int(stage) + 1}.{rest}"
        renamed[key] = value
    return renamed


def test_import_torchvision_style_weights_through_the_key_map(tmp_path):
    source = build_backbone("resnet18", width=0.25, stem="imagenet", in_channels=3)
    state = torchvision_names(source.state_dict())
    state["fc.weight"] = torch.zeros(10, source.feature_dim)
    path = tmp_path / "foreign.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)

    target = build_backbone("resnet18", width=0.25, stem="imagenet", in_channels=3)
    assert import_weights(path, target) == ["fc.weight"]
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key

    out = tmp_path / "imported.safetensors"
    assert main(["import-weights", str(path), "--out", str(out), "--backbone", "resnet18", "--set", "width=0.25"]) == 0
    x = torch.randn(2, 3, 64, 64)
    source.eval()
    with torch.no_grad():
        assert torch.equal(load_encoder(out)(x), source(x))


def test_import_refuses_code_and_names_what_does_not_fit(tmp_path):
    class Payload:                   # a pickled object that would run code on unpickling
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": Payload()}, evil)
    target = build_backbone("resnet18", width=0.25, stem="imagenet")
    with pytest.raises(CheckpointError, match="never code"):
        import_weights(evil, target)

    wrong = tmp_path / "wrong.pth"
    torch.save(torchvision_names(build_backbone("resnet18", width=0.5, stem="imagenet").state_dict()), wrong)
    with pytest.raises(CheckpointError, match="wrong shape") as e:
        import_weights(wrong, target)
    assert "width" in str(e.value)
