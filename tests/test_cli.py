"""The command line end to end: pretrain a few steps on Fashion-MNIST, evaluate, embed; bad input."""
import argparse
import json
import warnings

import numpy as np
import pytest
from PIL import Image

import selfsup.text.data
from selfsup.cli import build_parser, main, say_own_warnings_plainly

FAST = ["backbone.width=0.125", "train.batch_size=64", "train.steps=3", "train.log_every=1",
        "eval.max_train=2000", "eval.max_test=500", "eval.batch_size=500"]


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    # The whole pipeline after pretraining (probes with every label, the report) is test_report's; here
    # the few-label step runs on its cheapest protocol and budget.
    code = main(["pretrain", "--runs-dir", str(runs), "--name", "fm", "--quiet", "data.subset=1024", *FAST,
                 "eval.after_pretrain=[knn]", "eval.labels=[1%]", "eval.report=false"])
    assert code == 0
    return runs / "fm"


def test_pretrain_writes_the_run_folder_and_knn(fashion_run, capsys):
    for name in ("config.yaml", "metrics.jsonl", "train_summary.json", "eval/knn.json", "checkpoints/latest"):
        assert (fashion_run / name).exists(), name
    knn = json.loads((fashion_run / "eval" / "knn.json").read_text())
    assert knn["train_size"] == 2000 and knn["test_size"] == 500
    for key in ("knn_top1", "knn_top1_random_init", "knn_top1_raw"):
        assert 0.3 < knn[key] <= 1.0, (key, knn[key])          # 10 classes: chance is 0.1
    rows = [json.loads(line) for line in (fashion_run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3]
    online = [row for row in rows if "online_knn_top1" in row]
    assert [row["step"] for row in online] == [3] and 0.1 < online[0]["online_knn_top1"] <= 1.0


def test_evaluate_knn_prints_top1(fashion_run, capsys):
    assert main(["evaluate", "knn", str(fashion_run), "--k", "10", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "pretrained backbone" in out and "k=10" in out
    assert json.loads((fashion_run / "eval" / "knn.json").read_text())["k"] == 10


def test_embed_a_folder_writes_features_and_row_order(fashion_run, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (40 + i, 30), (50 * i, 20, 200)).save(folder / f"{i}.png")
    out = tmp_path / "emb.npy"
    assert main(["embed", str(fashion_run), "--data", str(folder), "--out", str(out)]) == 0
    feats = np.load(out)
    assert feats.shape == (5, 64) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-4)
    assert (tmp_path / "emb.npy.paths.txt").read_text().split() == [f"{i}.png" for i in range(5)]


def test_resume_continues_a_finished_run_with_more_steps(fashion_run, tmp_path):
    import shutil
    copy = tmp_path / "fm"
    shutil.copytree(fashion_run, copy)
    assert main(["pretrain", "--resume", str(copy), "--quiet", "--no-eval", "train.steps=4"]) == 0
    assert json.loads((copy / "train_summary.json").read_text())["steps"] == 4


def test_pretrain_on_an_image_folder_with_unreadable_file(tmp_path, capsys):
    folder = tmp_path / "imgs"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(20):
            Image.new("L", (20, 20), 40 if cls == "a" else 200).save(folder / cls / f"{i}.png")
    (folder / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    args = ["pretrain", "--runs-dir", str(tmp_path / "runs"), "--name", "f", "--data", str(folder), "--quiet",
            "data.size=16", "backbone.width=0.125", "train.batch_size=8", "train.steps=2"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "pretrained backbone" in out
    warned = [line for line in err.splitlines() if "unreadable" in line]     # once, though read twice
    assert len(warned) == 1 and warned[0].startswith(f"warning: {str(folder)!r}: skipped 1 unreadable image file")
    assert "broken.jpg" in warned[0]
    strict = ["pretrain", "--strict", "--runs-dir", str(tmp_path / "runs"), "--name", "g", *args[5:]]
    assert main(strict) == 2
    assert "broken.jpg" in capsys.readouterr().err


def _every_command(parser, path=()):
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _every_command(child, path + (name,))


def test_help_explains_every_command(capsys):
    shown = {}
    for command in _every_command(build_parser()):
        with pytest.raises(SystemExit) as e:
            main(list(command) + ["--help"])
        assert e.value.code == 0
        shown[command] = capsys.readouterr().out
        # argparse %-formats help strings, not descriptions: a %% written in a description is shown as typed
        assert "%%" not in shown[command], f"`selfsup {' '.join(command)} --help` shows '%%'"
    assert len(shown) > 10 and ("evaluate", "linear") in shown
    assert "KEY=VALUE" in shown[("pretrain",)]


def test_selfsups_own_warnings_print_as_one_plain_line(monkeypatch):
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)      # restored after the test
    say_own_warnings_plainly()
    installed = warnings.formatwarning
    say_own_warnings_plainly()                                                 # a second main() in one process
    assert warnings.formatwarning is installed
    shown = warnings.formatwarning("3 documents were cut", UserWarning, selfsup.text.data.__file__, 207)
    assert shown == "warning: 3 documents were cut\n"
    other = warnings.formatwarning("old API", DeprecationWarning, json.__file__, 1)
    assert other.startswith(json.__file__) and "DeprecationWarning: old API" in other


def test_overrides_may_come_before_and_after_options_and_the_later_one_wins(capsys):
    assert main(["config", "optim.lr=1.0", "--method", "byol", "optim.lr=2.0", "train.epochs=3"]) == 0
    printed = capsys.readouterr().out
    assert "  name: byol" in printed and "  lr: 2.0" in printed and "  epochs: 3.0" in printed
    with pytest.raises(SystemExit) as e:
        main(["config", "--method", "byol", "optim.lr=2.0", "--bogus", "train.epochs=3"])
    assert e.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
