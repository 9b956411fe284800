import gzip

import numpy as np
import pytest
import torch

from conftest import write_idx
from selfsup.data import DataError, ImageSet, convert, from_array, load_images
from selfsup.data.fashion_mnist import find_files, read_idx


def test_idx_reader_round_trip_gzip_and_raw(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", images)
    write_idx(tmp_path / "b", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "b"), images)
    labels = np.array([3, -1, 7], dtype=">i4")
    write_idx(tmp_path / "c.gz", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "c.gz"), labels)


def test_idx_reader_rejects_truncated_and_foreign_files(tmp_path):
    write_idx(tmp_path / "a", np.zeros((4, 5, 5), np.uint8))
    raw = (tmp_path / "a").read_bytes()
    (tmp_path / "cut").write_bytes(raw[:-7])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "cut")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(DataError, match="not an IDX"):
        read_idx(tmp_path / "png")
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(raw)
    (tmp_path / "bad.gz").write_bytes((tmp_path / "bad.gz").read_bytes()[:30])
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "bad.gz")


def test_fashion_mnist_from_data_dir_has_splits_and_labels(tiny_fashion):
    train = load_images("fashion-mnist", "train", data_dir=str(tiny_fashion))
    test = load_images("fashion-mnist", "test", data_dir=str(tiny_fashion))
    assert train.images.shape == (400, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (100, 1, 28, 28)
    assert train.labels.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert train.classes[0] == "T-shirt/top" and len(train.classes) == 10


def test_fashion_mnist_search_order_prefers_data_dir_then_env(tiny_fashion, tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_DATA", str(tiny_fashion))
    images, _ = find_files("train")
    assert images.parent == tiny_fashion
    other = tmp_path / "other"
    other.mkdir()
    for f in tiny_fashion.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    images, _ = find_files("train", str(other))
    assert images.parent == other


def test_missing_fashion_mnist_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    import selfsup.data.fashion_mnist as fm
    monkeypatch.setattr(fm, "search_dirs", lambda data_dir=None: [tmp_path / "nowhere"])
    with pytest.raises(DataError) as e:
        load_images("fashion-mnist")
    message = str(e.value)
    assert str(tmp_path / "nowhere") in message
    assert "selfsup data download fashion-mnist" in message and "--data-dir" in message


def test_unknown_source_is_a_clear_error():
    with pytest.raises(DataError, match="neither a built-in data set"):
        load_images("/no/such/folder")


@pytest.mark.parametrize("shape", [(5, 8, 8), (5, 1, 8, 8), (5, 3, 8, 8), (5, 8, 8, 3)])
def test_from_array_shapes(shape):
    data = from_array(np.random.default_rng(0).integers(0, 256, size=shape).astype(np.uint8))
    channels = 3 if 3 in shape[1:] else 1
    assert data.images.shape == (5, channels, 8, 8)


def test_from_array_scales_floats_and_rejects_nan():
    x = torch.full((2, 4, 4), 0.5)
    assert from_array(x).images.unique().tolist() == [128]
    assert from_array(x * 255).images.unique().tolist() == [128]
    x[0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        from_array(x)


def test_from_array_labels_and_mismatch():
    data = from_array(np.zeros((3, 4, 4), np.uint8), labels=[0, 2, 1])
    assert data.labels.tolist() == [0, 2, 1] and data.classes == ["0", "1", "2"]
    with pytest.raises(DataError, match="labels"):
        from_array(np.zeros((3, 4, 4), np.uint8), labels=[0, 1])


def test_convert_channels_and_size():
    data = ImageSet(torch.full((2, 1, 8, 8), 100, dtype=torch.uint8))
    rgb = convert(data, channels=3, size=4)
    assert rgb.images.shape == (2, 3, 4, 4) and rgb.images.unique().tolist() == [100]
    assert convert(rgb, channels=1).images.shape == (2, 1, 4, 4)
