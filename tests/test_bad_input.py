"""The bad-input matrix, as a user meets it: each case runs the `selfsup` command (or, for in-memory
arrays, the Python API) and checks the exit code and the message. `python tests/test_bad_input.py`
prints the matrix as the markdown table in docs/reliability.md.

Unit tests of the same loaders (pixel values, warnings, file order) live in test_image_folder.py
and test_data.py; this file is about what the user sees and that nothing saved is lost.
"""
from __future__ import annotations

import errno
import io
import os
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import selfsup.checkpoint
from selfsup.cli import main
from selfsup.methods.simclr import SimCLR

QUICK = ["--quiet", "data.size=16", "backbone.width=0.125", "train.batch_size=4", "train.steps=2",
         "train.precision=fp32", "eval.online_every=0", "eval.knn_k=5"]


def images(folder: Path, count: int = 8, mode: str = "L", size=(20, 20)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new(mode, size, 30 * i % 256 if mode == "L" else (30 * i % 256, 80, 160)).save(folder / f"{i}.png")
    return folder


def half_a_jpeg(path: Path) -> None:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def pretrain(tmp: Path, data: Path | str, *extra: str) -> list[str]:
    return ["pretrain", "--runs-dir", str(tmp / "runs"), "--name", "r", "--data", str(data), "--no-eval",
            *QUICK, *extra]


# Each case: (what the user did, setup(tmp) -> argv, or a callable for Python-API cases, expected exit code,
# phrases the message must contain). Setups write their files under tmp.

def missing_folder(tmp):
    return pretrain(tmp, tmp / "no-such-folder")


def empty_folder(tmp):
    (tmp / "empty").mkdir()
    return pretrain(tmp, tmp / "empty")


def only_text_files(tmp):
    (tmp / "texts").mkdir()
    (tmp / "texts" / "notes.txt").write_text("not an image")
    return pretrain(tmp, tmp / "texts")


def truncated_jpeg(tmp):
    half_a_jpeg(images(tmp / "d") / "cut.jpg")
    return pretrain(tmp, tmp / "d")


def truncated_jpeg_strict(tmp):
    return ["pretrain", "--strict", *truncated_jpeg(tmp)[1:]]


def palette_png_with_transparency(tmp):
    folder = images(tmp / "d")
    palette = Image.new("P", (9, 9), 1)
    palette.putpalette([0, 0, 255, 255, 255, 0] + [0] * 762)
    palette.save(folder / "palette.png", transparency=0)
    return pretrain(tmp, folder)


def sixteen_bit_png(tmp):
    folder = images(tmp / "d")
    Image.fromarray(np.full((12, 12), 40000, dtype=np.uint16)).save(folder / "deep.png")
    return pretrain(tmp, folder)


def cmyk_jpeg(tmp):
    folder = images(tmp / "d")
    Image.new("CMYK", (12, 12), (0, 50, 100, 0)).save(folder / "print.jpg")
    return pretrain(tmp, folder)


def one_pixel_image(tmp):
    folder = images(tmp / "d")
    Image.new("L", (1, 1), 255).save(folder / "dot.png")
    return pretrain(tmp, folder)


def huge_image(tmp):
    folder = images(tmp / "d")
    Image.new("L", (10000, 10000), 90).save(folder / "huge.png")
    return pretrain(tmp, folder)


def mixed_channel_counts(tmp):
    folder = images(tmp / "d", 4, "L")
    images(folder / "rgb", 4, "RGB")
    Image.new("RGBA", (20, 20), (255, 0, 0, 100)).save(folder / "alpha.png")
    return pretrain(tmp, folder, "data.channels=3")


def one_class_folder(tmp):
    folder = images(tmp / "d" / "only-class")
    return [a for a in pretrain(tmp, folder.parent) if a != "--no-eval"]


def one_class_folder_evaluated(tmp):
    assert main(pretrain(tmp, images(tmp / "train"))) == 0
    folder = images(tmp / "labelled" / "only-class")
    return ["evaluate", "knn", str(tmp / "runs" / "r"), "--data", str(folder.parent), "--quiet"]


def unknown_config_key(tmp):
    return pretrain(tmp, images(tmp / "d"), "optim.lrr=0.3")


def wrong_type(tmp):
    return pretrain(tmp, images(tmp / "d"), "optim.lr=fast")


def negative_lr(tmp):
    return pretrain(tmp, images(tmp / "d"), "optim.lr=-1")


def batch_larger_than_data(tmp):
    return pretrain(tmp, images(tmp / "d"), "train.batch_size=64")


def unknown_method(tmp):
    return pretrain(tmp, images(tmp / "d"), "--method", "nope")


def full_disk(tmp, monkeypatch):
    real_write = selfsup.checkpoint.atomic_write

    def disk_fills_up(path, payload):
        if path.name.startswith("step-0000002"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, payload)
    monkeypatch.setattr(selfsup.checkpoint, "atomic_write", disk_fills_up)
    return pretrain(tmp, images(tmp / "d"), "train.steps=3", "train.checkpoint_every=1")


def nan_loss(tmp, monkeypatch):
    real_loss, calls = SimCLR.loss, {"n": 0}

    def loss_that_breaks(self, views):
        calls["n"] += 1
        loss, logs = real_loss(self, views)
        return (loss * float("nan"), logs) if calls["n"] == 3 else (loss, logs)
    monkeypatch.setattr(SimCLR, "loss", loss_that_breaks)
    return pretrain(tmp, images(tmp / "d"), "train.steps=4", "train.checkpoint_every=1")


def nan_in_array(tmp):
    import selfsup
    x = np.random.default_rng(0).random((8, 16, 16), dtype=np.float32)
    x[3, 4, 5] = np.nan
    return lambda: selfsup.from_array(x)


CASES = [
    ("data folder does not exist", missing_folder, 2, ["no-such-folder", "neither a built-in data set"]),
    ("empty data folder", empty_folder, 2, ["no images found"]),
    ("folder of non-images", only_text_files, 2, ["no images found", "1 file(s) with other extensions"]),
    ("truncated JPEG among good images", truncated_jpeg, 0, ["skipped 1 unreadable", "cut.jpg"]),
    ("truncated JPEG with --strict", truncated_jpeg_strict, 2, ["cut.jpg", "--strict"]),
    ("PNG with palette + transparency", palette_png_with_transparency, 0, []),
    ("16-bit PNG", sixteen_bit_png, 0, []),
    ("CMYK JPEG", cmyk_jpeg, 0, []),
    ("1x1 image", one_pixel_image, 0, []),
    ("10000x10000 image", huge_image, 0, []),
    ("mixed channel counts (L, RGB, RGBA)", mixed_channel_counts, 0, []),
    ("labels folder with one class (pretrain)", one_class_folder, 0, ["kNN skipped", "needs at least 2"]),
    ("labels folder with one class (evaluate knn)", one_class_folder_evaluated, 2, ["1 class subfolder",
                                                                                    "needs at least 2"]),
    ("config: unknown key", unknown_config_key, 2, ["optim.lrr", "valid keys: name, lr"]),
    ("config: wrong type", wrong_type, 2, ["optim.lr: expected a number", "'fast'"]),
    ("config: negative lr", negative_lr, 2, ["optim.lr must be"]),
    ("config: unknown method", unknown_method, 2, ["unknown method 'nope'"]),
    ("batch size larger than the data set", batch_larger_than_data, 2, ["larger than the data set (8 samples)"]),
    ("disk full while writing a checkpoint", full_disk, 1, ["No space left on device", "step-0000001 is intact",
                                                            "--resume"]),
    ("NaN in input data (array)", nan_in_array, 2, ["NaN"]),
    ("loss becomes NaN", nan_loss, 1, ["loss became nan at step 2", "step-0000002"]),
]


def observe(setup, tmp: Path, monkeypatch) -> tuple[int, str]:
    """Run one case; return (exit code, everything the user saw on stdout, stderr and as warnings)."""
    argv = setup(tmp, monkeypatch) if "monkeypatch" in setup.__code__.co_varnames else setup(tmp)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if callable(argv):                       # a Python-API case: errors surface as exceptions
            from selfsup.errors import USER_ERRORS
            try:
                argv()
                code = 0
            except USER_ERRORS as e:
                print(f"{type(e).__name__}: {e}", file=sys.stderr)
                code = 2
        else:
            code = main(argv)
    seen = out.getvalue() + err.getvalue() + "".join(f"warning: {w.message}\n" for w in caught)
    return code, seen


@pytest.mark.parametrize("what, setup, code, phrases", CASES, ids=[c[0] for c in CASES])
def test_bad_input(what, setup, code, phrases, tmp_path, monkeypatch):
    got, seen = observe(setup, tmp_path, monkeypatch)
    assert got == code, seen
    for phrase in phrases:
        assert phrase in seen, (phrase, seen)
    assert "Traceback" not in seen
    checkpoints = tmp_path / "runs" / "r" / "checkpoints"
    if code == 1:                                # training failed: what was saved before must still load
        from selfsup.run import load_run
        assert load_run(tmp_path / "runs" / "r").step >= 1
    elif code == 2 and what.startswith(("config", "data folder", "empty", "folder of", "batch")):
        assert not checkpoints.exists()          # rejected before anything was written


def _table() -> str:
    """The matrix as markdown: input, exit code, the lines the user sees (progress noise removed)."""
    import tempfile
    rows = ["| input | exit | what the user sees |", "|---|---|---|"]
    for what, setup, _, _ in CASES:
        with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as monkeypatch:
            code, seen = observe(setup, Path(tmp), monkeypatch)
        lines = [line.replace(tmp, "…") for line in seen.splitlines()
                 if line.startswith(("error", "warning", "kNN skipped", "note", "SimCLR", "DataError"))]
        text = "<br>".join(lines) if lines else "trains normally (image converted)"
        rows.append(f"| {what} | {code} | {text.replace('|', '/')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(_table())
