"""Image folder source: modes, sizes, labels, unreadable files and error messages, on tiny images."""
import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, features

from selfsup.data import DataError, load_images
from selfsup.data.image_folder import load_image_folder


def save(img: Image.Image, path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def solid(color, mode="RGB", size=(8, 8)):
    return Image.new(mode, size, color)


def jpeg_bytes(size=(64, 64)):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def mixed(tmp_path):
    """Two class folders, nested subfolders, every mode and format the loader has to handle."""
    root = tmp_path / "mixed"
    save(solid(128, "L", (10, 7)), root / "cat" / "grey.png")
    save(solid((255, 0, 0), "RGB", (40, 40)), root / "cat" / "deep" / "er" / "red.jpg")
    save(solid((0, 255, 0, 128), "RGBA"), root / "cat" / "rgba.png")
    palette = Image.new("P", (6, 6), 1)
    palette.putpalette([0, 0, 255, 255, 255, 0] + [0] * 762)
    save(palette, root / "cat" / "palette.png", transparency=0)
    save(solid((0, 0, 0, 0), "CMYK"), root / "dog" / "cmyk.JPG")
    save(Image.fromarray(np.full((5, 5), 65535, dtype=np.uint16)), root / "dog" / "sub" / "white16.png")
    save(solid(200, "L", (1, 1)), root / "dog" / "tiny.bmp")
    save(solid((0, 0, 255)).convert("P"), root / "dog" / "anim.gif")
    n = 8
    if features.check("webp"):
        save(solid((10, 20, 30)), root / "dog" / "photo.webp")
        n += 1
    (root / "dog" / "notes.txt").write_text("not an image")
    return root, n


@pytest.mark.parametrize("channels", [1, 3])
def test_mixed_modes_and_sizes(mixed, channels):
    root, n = mixed
    data = load_image_folder(root, channels=channels, size=12, labels=True)
    assert data.images.shape == (n, channels, 12, 12)
    assert data.images.dtype == torch.uint8
    assert data.classes == ["cat", "dog"]
    assert data.labels.tolist() == [0, 0, 0, 0] + [1] * (n - 4)
    assert data.name == "mixed"


def test_files_are_in_sorted_path_order(mixed):
    root, _ = mixed
    data = load_image_folder(root, channels=3, size=4)
    # cat/deep/er/red.jpg sorts before cat/grey.png: the red image comes first.
    r, g, b = data.images[0, :, 2, 2].tolist()
    assert r >= 250 and g <= 5 and b <= 5                 # JPEG: red within rounding
    assert data.labels is None and data.classes == []


def test_sixteen_bit_scaled_not_clipped(tmp_path):
    for name, value in [("white.png", 65535), ("mid.png", 32896)]:
        save(Image.fromarray(np.full((4, 4), value, dtype=np.uint16)), tmp_path / "d" / name)
    assert Image.open(tmp_path / "d" / "mid.png").mode == "I;16"
    data = load_image_folder(tmp_path / "d", channels=1, size=4)
    mid, white = data.images[:, 0, 0, 0].tolist()
    assert white == 255
    assert mid == 128


def test_transparency_composited_onto_black(tmp_path):
    save(solid((255, 255, 255, 0), "RGBA"), tmp_path / "d" / "clear.png")
    save(solid((255, 255, 255, 255), "RGBA"), tmp_path / "d" / "opaque.png")
    data = load_image_folder(tmp_path / "d", channels=3, size=4)
    assert data.images[0].unique().tolist() == [0]
    assert data.images[1].unique().tolist() == [255]


def test_palette_transparency_and_cmyk(mixed):
    root, _ = mixed
    data = load_image_folder(root / "cat", channels=3, size=6)
    palette = data.images[2]                               # deep/er/red.jpg, grey.png, palette.png, rgba.png
    assert palette[:, 3, 3].tolist() == [255, 255, 0]     # palette index 1, opaque
    cmyk = load_image_folder(root / "dog", channels=3, size=4).images[1]   # anim.gif, cmyk.JPG, ...
    assert (cmyk.int() - 255).abs().max() <= 2             # CMYK (0, 0, 0, 0) is white


def test_palette_transparent_index_is_black(tmp_path):
    img = Image.new("P", (6, 6), 0)
    img.putpalette([255, 255, 255] * 256)
    save(img, tmp_path / "d" / "p.png", transparency=0)
    save(img, tmp_path / "d" / "p.gif", transparency=0)
    data = load_image_folder(tmp_path / "d", channels=3, size=6)
    assert data.images.unique().tolist() == [0]


def test_solid_red_pixel_values(tmp_path):
    save(solid((255, 0, 0), size=(20, 13)), tmp_path / "d" / "red.png")
    rgb = load_image_folder(tmp_path / "d", channels=3, size=8).images[0]
    assert (rgb[0] == 255).all() and (rgb[1:] == 0).all()
    grey = load_image_folder(tmp_path / "d", channels=1, size=8).images[0]
    assert grey.unique().tolist() == [76]                 # ITU-R 601 luma of pure red


def test_large_jpeg_is_shrunk(tmp_path):
    save(Image.fromarray(np.zeros((2000, 3000, 3), dtype=np.uint8)), tmp_path / "d" / "big.jpg", quality=50)
    data = load_image_folder(tmp_path / "d", channels=3, size=8)
    assert data.images.shape == (1, 3, 8, 8)


@pytest.fixture
def with_bad_files(tmp_path):
    root = tmp_path / "bad"
    save(solid((255, 0, 0)), root / "a_good.png")
    (root / "b_corrupt.jpg").write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    good = jpeg_bytes()
    (root / "c_truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "d_good.jpg").write_bytes(good)
    return root


def test_unreadable_and_ignored_files_get_one_warning_line_once(with_bad_files, capsys):
    (with_bad_files / "notes.txt").write_text("not an image")
    (with_bad_files / "scan.tif").write_bytes(b"II*\x00")
    data = load_image_folder(with_bad_files, size=8)
    load_image_folder(with_bad_files, size=8, labels=False)     # read again (as evaluation does): no repeat
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ")
    assert "skipped 2 unreadable" in lines[0] and "b_corrupt.jpg" in lines[0] and "c_truncated.jpg" in lines[0]
    assert "ignored 2 file(s) that are not image files (.tif, .txt)" in lines[0]
    assert len(data) == 2
    assert data.images[0, :, 0, 0].tolist() == [255, 0, 0]


def test_strict_raises_naming_file(with_bad_files):
    with pytest.raises(DataError, match="b_corrupt.jpg") as info:
        load_image_folder(with_bad_files, size=8, strict=True)
    assert "--strict" in str(info.value)


def test_truncated_jpeg_strict(tmp_path):
    good = jpeg_bytes()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "cut.jpg").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="cut.jpg"):
        load_image_folder(tmp_path / "d", size=8, strict=True)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES                # the loader must not flip it globally


def test_all_unreadable(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.png").write_bytes(b"nope")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="1 files .* could not be read"):
            load_image_folder(tmp_path / "d")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as info:
        load_image_folder(tmp_path / "empty")
    message = str(info.value)
    assert "no images found" in message and "empty" in message and ".jpg" in message and ".webp" in message


def test_only_text_files(tmp_path):
    (tmp_path / "texts").mkdir()
    for name in ["a.txt", "b.txt"]:
        (tmp_path / "texts" / name).write_text("hello")
    with pytest.raises(DataError, match="no images found") as info:
        load_image_folder(tmp_path / "texts")
    assert "2 file(s) with other extensions" in str(info.value)
    assert ".png" in str(info.value)


def test_labels_with_image_in_root(tmp_path):
    save(solid(0), tmp_path / "d" / "cls" / "a.png")
    save(solid(0), tmp_path / "d" / "loose.png")
    with pytest.raises(DataError, match="class subfolders") as info:
        load_image_folder(tmp_path / "d", labels=True)
    assert "loose.png" in str(info.value)
    assert len(load_image_folder(tmp_path / "d", size=4)) == 2     # fine without labels


def test_missing_path_and_file_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")
    file = save(solid(0), tmp_path / "a.png")
    with pytest.raises(DataError, match="not a folder"):
        load_image_folder(file)


def test_hidden_files_and_folders_ignored(tmp_path):
    save(solid(0), tmp_path / "d" / "cls" / "a.png")
    save(solid(0), tmp_path / "d" / ".ipynb_checkpoints" / "a.png")
    (tmp_path / "d" / "cls" / "._a.png").write_bytes(b"apple double")
    data = load_image_folder(tmp_path / "d", size=4, labels=True)
    assert data.classes == ["cls"] and len(data) == 1


def test_load_images_goes_to_folder_loader(tmp_path):
    save(solid((255, 0, 0)), tmp_path / "d" / "b" / "red.png")
    save(solid((0, 0, 255)), tmp_path / "d" / "a" / "blue.png")
    data = load_images(str(tmp_path / "d"), size=16, channels=1, labels=True)
    assert data.images.shape == (2, 1, 16, 16)
    assert data.classes == ["a", "b"]
    assert data.labels.tolist() == [0, 1]
    assert data.images[:, 0, 0, 0].tolist() == [29, 76]   # luma of blue, then red
