"""The packed image store (selfsup data pack): what it holds, that it reads back as the folder does,
that packing twice does nothing, and clear errors for a store that is unfinished, truncated or foreign."""
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.cli import main
from selfsup.data import DataError, ImageStore, load_images, pack
from selfsup.data.store import INDEX


@pytest.fixture
def folder(tmp_path):
    """Two classes of small images, one large photo-like JPEG and one file that is not an image."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for cls in ("cat", "dog"):
        (root / cls / "deeper").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(root / cls / "deeper" / "grey.png")
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(root / "cat" / "big.jpg")
    (root / "dog" / "broken.jpg").write_bytes(b"not an image")
    return root


def test_a_store_reads_back_as_its_folder_and_is_a_plain_tar_set(folder, tmp_path, capsys):
    result = pack(folder, tmp_path / "photos.store", max_side=100, progress=False)
    assert (result.images, result.skipped, result.packed) == (11, 1, True)
    assert "skipped 1 unreadable" in capsys.readouterr().err
    from_folder = load_images(str(folder), labels=True, size=16)
    from_store = load_images(str(tmp_path / "photos.store"), labels=True, size=16)
    assert (from_store.classes, from_store.paths) == (from_folder.classes, from_folder.paths)
    assert torch.equal(from_store.labels, from_folder.labels)
    big = from_folder.paths.index("cat/big.jpg")
    kept = [i for i in range(len(from_folder)) if i != big]
    assert torch.equal(from_store.images[kept], from_folder.images[kept])      # bytes kept as they were
    store = ImageStore(tmp_path / "photos.store")
    assert store.sizes[big].tolist() == [400, 300]                               # the original size
    with Image.open(store.open(big)) as shrunk:
        assert min(shrunk.size) == 100 and shrunk.size[0] == 133                 # short side, aspect ratio kept
    # Any tar reader sees WebDataset-style pairs: <key>.<ext> with the image's bytes, <key>.cls with its class.
    with tarfile.open(tmp_path / "photos.store" / "shard-000000.tar") as shard:
        names = shard.getnames()
        assert names[:2] == ["000000000.png", "000000000.cls"]
        assert shard.extractfile("000000000.png").read() == (folder / "cat" / "0.png").read_bytes()
        assert shard.extractfile(f"{big:09d}.cls").read() == b"0"


def test_packing_an_unchanged_folder_again_does_nothing_and_a_changed_one_is_packed_anew(folder, tmp_path):
    out = tmp_path / "s"
    pack(folder, out, progress=False)
    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = pack(folder, out, progress=False)
    assert not again.packed and again.images == 11
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == written
    Image.new("RGB", (8, 8)).save(folder / "dog" / "new.png")
    assert pack(folder, out, progress=False).packed and len(ImageStore(out)) == 12


def test_strict_packing_stops_at_an_unreadable_file(folder, tmp_path):
    with pytest.raises(DataError, match="broken.jpg"):
        pack(folder, tmp_path / "s", strict=True, progress=False)
    assert not (tmp_path / "s").exists()


def test_an_unfinished_truncated_or_foreign_store_is_a_one_line_error(folder, tmp_path):
    out = tmp_path / "s"
    pack(folder, out, progress=False)
    shard = out / "shard-000000.tar"
    whole = shard.read_bytes()
    shard.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="truncated.*pack the folder again"):
        load_images(str(out))
    shard.write_bytes(whole)
    index = json.loads((out / INDEX).read_text())
    (out / INDEX).write_text(json.dumps({**index, "version": 99}))
    with pytest.raises(DataError, match="version 99"):
        load_images(str(out))
    (out / INDEX).unlink()
    with pytest.raises(DataError, match="did not finish"):
        load_images(str(out))


def test_the_command_packs_and_pretraining_reads_the_store(folder, tmp_path, capsys):
    store = tmp_path / "photos.store"
    assert main(["data", "pack", str(folder), str(store), "--quiet"]) == 0
    assert "packed 11 images" in capsys.readouterr().out
    assert main(["data", "pack", str(folder), str(store), "--quiet"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["pretrain", "--quiet", "--no-eval", "--data", str(store), "--runs-dir", str(tmp_path), "--name", "r",
                 "backbone.width=0.125", "train.batch_size=4", "train.steps=2", "data.size=16",
                 "eval.online_every=0"]) == 0
    assert (tmp_path / "r" / "checkpoints" / "latest").is_file()


def test_pack_never_writes_over_its_images_or_a_folder_that_is_not_a_store(folder, tmp_path):
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "mine.txt").write_text("not a store")
    for out, message in ((folder, "outside the image folder"), (folder / "cat" / "s", "outside the image folder"),
                         (tmp_path, "outside the image folder"), (keep, "not an image store"),
                         (keep / "mine.txt", "is a file")):
        with pytest.raises(DataError, match=message):
            pack(folder, out, progress=False)
    assert (keep / "mine.txt").read_text() == "not a store" and (folder / "cat" / "0.png").is_file()


def test_a_damaged_store_is_packed_again_and_strict_repacking_names_the_unreadable_file(folder, tmp_path):
    out = tmp_path / "s"
    pack(folder, out, progress=False)
    shard = out / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:1000])
    assert pack(folder, out, progress=False).packed             # not "up to date": its shard was cut
    assert len(ImageStore(out)) == 11
    with pytest.raises(DataError, match="broken.jpg"):
        pack(folder, out, strict=True, progress=False)          # the earlier pack skipped it
    assert len(ImageStore(out)) == 11                           # and the store is still there
