"""A packed image store: an image folder as a few large files with random access to every image.

    selfsup data pack photos/ photos.store          # any depth; labels from first-level subfolders
    selfsup pretrain --data photos.store

Layout (docs/data.md says why): WebDataset-style tar shards that any tar reader, `webdataset` and
HF `datasets` read, plus an index for random access by position:

    photos.store/
      shard-000000.tar ...   members 000000000.jpg (the image's bytes) and 000000000.cls (its class)
      index.safetensors      per image: shard, byte offset and length inside it, label, original size
      paths.json             per image: its path relative to the source folder
      index.json             format, version, count, classes, shards, settings, and a fingerprint of
                             the source; written last, so a store without it is an unfinished pack

Each image keeps its encoded bytes when its short side is at most `max_side`; larger ones are
shrunk to that short side (aspect ratio kept) and re-encoded (JPEG at quality 90, PNG where there
is transparency). Unreadable files are skipped with the folder source's warning (strict: an error).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from selfsup.checkpoint import atomic_write
from selfsup.data.image_folder import decode_images, find_image_files, to_8_bit, warn_once
from selfsup.data.imageset import ImageSet
from selfsup.errors import DataError

FORMAT = "selfsup-image-store"
VERSION = 1
INDEX, TENSORS, PATHS = "index.json", "index.safetensors", "paths.json"
SHARD_BYTES = 1 << 30                  # a new tar shard after this many bytes of images
JPEG_QUALITY = 90
NO_LABEL = -1


@dataclass
class PackResult:
    store: Path
    images: int
    skipped: int
    bytes: int
    packed: bool                       # False: the store was up to date and nothing was done


def is_store(path: str | Path) -> bool:
    """Whether `path` is a packed store (or one whose index.json was lost: reading it says so)."""
    path = Path(path).expanduser()
    return (path / INDEX).is_file() or (path / TENSORS).is_file()


def pack(source: str | Path, out: str | Path, max_side: int = 512, strict: bool = False, workers: int = 0,
         progress: bool = True) -> PackResult:
    """Pack the image folder `source` into the store `out` (see the module's docstring). Packing again
    with the same files and settings does nothing; a changed folder is packed anew. workers: processes
    that read and re-encode (0: one per core)."""
    root = Path(source).expanduser()
    out = Path(out).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} {'is not a folder' if root.exists() else 'does not exist'}; "
                        "pack takes a folder of images (any depth, classes as first-level subfolders)")
    if max_side < 1:
        raise DataError(f"--max-side must be a positive number of pixels, got {max_side}")
    files, other_files = find_image_files(root)
    if not files:
        raise DataError(f"no images found in {str(root)!r}")
    _check_output(root, out)
    fingerprint = _fingerprint(root, files, max_side)
    previous = _index_if_up_to_date(out, fingerprint, strict)
    if previous is not None:
        return PackResult(out, previous["count"], previous.get("skipped", 0), previous.get("bytes", 0), False)
    # Labels when every image sits in a first-level subfolder (as the folder source reads them).
    labelled = all(len(f.parts) > 1 for f in files)
    classes = sorted({f.parts[0] for f in files}) if labelled else []
    class_index = {name: i for i, name in enumerate(classes)}

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    columns = {key: [] for key in ("shard", "offset", "length", "label", "width", "height")}
    kept, skipped, shards, total = [], [], [], 0
    writer = None
    pool = ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1)
    try:
        for file, (data, suffix, size, error) in tqdm(zip(files, _prepared(pool, root, files, max_side)),
                                                      total=len(files), unit="img", desc=f"packing {root.name}",
                                                      file=sys.stderr, disable=not progress):
            if error is not None:
                if strict:
                    raise DataError(f"cannot read image {str(root / file)!r}: {error}; without --strict it "
                                    "would be skipped")
                skipped.append(f"{file} ({error})")
                continue
            if writer is None or writer.fileobj.tell() > SHARD_BYTES:
                if writer is not None:
                    writer.close()
                shards.append(f"shard-{len(shards):06d}.tar")
                writer = tarfile.open(partial / shards[-1], "w", format=tarfile.USTAR_FORMAT)
            key = f"{len(kept):09d}"
            offset = _add_member(writer, f"{key}{suffix}", data)
            label = class_index[file.parts[0]] if labelled else NO_LABEL
            if labelled:
                _add_member(writer, f"{key}.cls", str(label).encode())
            for name, value in zip(columns, (len(shards) - 1, offset, len(data), label, *size)):
                columns[name].append(value)
            kept.append(str(file))
            total += len(data)
        if writer is not None:
            writer.close()
        if not kept:
            raise DataError(f"no readable images in {str(root)!r}: all {len(files)} could not be read, "
                            f"e.g. {skipped[0]}")
    except BaseException:
        # An error or Ctrl-C: stop the workers without waiting for the rest of the folder, keep no half store.
        pool.shutdown(wait=False, cancel_futures=True)
        if writer is not None:
            writer.close()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    pool.shutdown()
    warn_once(root, len(files), skipped, other_files)
    save_file({name: torch.tensor(values, dtype=torch.int64) for name, values in columns.items()},
              str(partial / TENSORS))
    # JSON escapes any character a file name may hold (newlines, undecodable bytes), so the list reads back whole.
    (partial / PATHS).write_text(json.dumps(kept))
    index = {"format": FORMAT, "version": VERSION, "count": len(kept), "classes": classes, "shards": shards,
             "max_side": max_side, "source": str(root.resolve()), "fingerprint": fingerprint,
             "skipped": len(skipped), "bytes": total}
    atomic_write(partial / INDEX, json.dumps(index, indent=1).encode())
    previous = out.with_name(out.name + ".previous")
    if out.exists():                     # the older store goes only once the new one is in place
        shutil.rmtree(previous, ignore_errors=True)
        out.rename(previous)
    partial.rename(out)
    shutil.rmtree(previous, ignore_errors=True)
    return PackResult(out, len(kept), len(skipped), total, True)


def _check_output(root: Path, out: Path) -> None:
    """A store is written where there is nothing, an empty folder, or an earlier store; never over or
    inside the images it packs, or over anything else."""
    source, target = root.resolve(), out.resolve()
    if target == source or source in target.parents or target in source.parents:
        raise DataError(f"the store {str(out)!r} must lie outside the image folder {str(root)!r} and not contain "
                        "it; choose another place, e.g. next to the folder")
    if out.exists() and not out.is_dir():
        raise DataError(f"{str(out)!r} is a file; give pack a folder name for the store")
    if out.is_dir() and any(out.iterdir()) and _store_index(out) is None:
        raise DataError(f"{str(out)!r} already holds files and is not an image store; pack into a new or empty "
                        "folder (nothing was written)")


def _store_index(path: Path) -> dict | None:
    """The index.json of the store at `path`; None when it is not one."""
    try:
        index = json.loads((path / INDEX).read_text())
    except (OSError, ValueError):
        return None
    return index if index.get("format") == FORMAT else None


def _index_if_up_to_date(out: Path, fingerprint: str, strict: bool) -> dict | None:
    """The index of `out` when it is a readable store of the same files and settings (under strict, one
    that skipped none: packing again must name the unreadable file); else None."""
    index = _store_index(out)
    if index is None or index.get("fingerprint") != fingerprint or (strict and index.get("skipped")):
        return None
    try:
        ImageStore(out).close()
    except DataError:                    # shards deleted or truncated since: pack again
        return None
    return index


def _prepared(pool: ProcessPoolExecutor, root: Path, files: list[Path], max_side: int, window: int = 256):
    """_prepare's results in file order, submitted a window at a time so that finished images waiting
    behind a slow one never pile up beyond it."""
    for start in range(0, len(files), window):
        chunk = [str(root / f) for f in files[start:start + window]]
        yield from pool.map(_prepare, chunk, [max_side] * len(chunk), chunksize=16)


class ImageStore:
    """A packed store opened for reading: len(store), store.read(i) (the encoded bytes of image i),
    store.labels (int64, or None without classes), store.classes, store.paths, store.sizes (N, 2)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self._files: dict[int, int] = {}     # shard -> open file descriptor
        self._opening = threading.Lock()
        index = _read_index_json(self.path)
        if index.get("format") != FORMAT:
            raise DataError(f"{self.path / INDEX} is not a selfsup image store (format {index.get('format')!r})")
        if index.get("version") != VERSION:
            raise DataError(f"{self.path} is an image store of version {index.get('version')}, this selfsup reads "
                            f"version {VERSION}; pack the folder again with `selfsup data pack`")
        try:
            columns = load_file(str(self.path / TENSORS))
            self.paths = json.loads((self.path / PATHS).read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{self.path}: its index cannot be read ({e}); pack the folder again with "
                            "`selfsup data pack`") from e
        self.count, self.classes, self.shards = index["count"], index["classes"], index["shards"]
        self.shard, self.offset, self.length = columns["shard"], columns["offset"], columns["length"]
        self.labels = columns["label"] if self.classes else None
        self.sizes = torch.stack([columns["width"], columns["height"]], 1)
        if len(self.paths) != self.count or len(self.offset) != self.count:
            raise DataError(f"{self.path}: the index lists {len(self.offset)} images and {len(self.paths)} paths "
                            f"but index.json says {self.count}; pack the folder again")
        for number, name in enumerate(self.shards):
            mine = self.shard == number
            needed = int((self.offset[mine] + self.length[mine]).max()) if bool(mine.any()) else 0
            shard = self.path / name
            if not shard.is_file() or shard.stat().st_size < needed:
                what = ("is missing" if not shard.is_file()
                        else f"is truncated ({shard.stat().st_size} of {needed}+ bytes)")
                raise DataError(f"{shard} {what}; pack the folder again with `selfsup data pack`")

    def __len__(self) -> int:
        return self.count

    def read(self, i: int) -> bytes:
        """The encoded bytes of image i (a positioned read: safe from threads)."""
        shard = int(self.shard[i])
        with self._opening:
            if shard not in self._files:
                self._files[shard] = os.open(self.path / self.shards[shard], os.O_RDONLY)
        return os.pread(self._files[shard], int(self.length[i]), int(self.offset[i]))

    def open(self, i: int) -> io.BytesIO:
        return io.BytesIO(self.read(i))

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    def __del__(self):
        self.close()


def load_store(path: str | Path, channels: int = 3, size: int = 32, labels: bool = False,
               strict: bool = False) -> ImageSet:
    """Every image of a packed store decoded into memory at size x size, as the folder source reads a
    folder (the same conversion and the same warning for images that cannot be decoded)."""
    store = ImageStore(path)
    if labels and store.labels is None:
        raise DataError(f"{store.path} was packed from a folder without class subfolders, so it has no labels; "
                        "pack a folder with one subfolder per class to evaluate on it")
    try:
        decoded = decode_images(store.open, [f"{store.path}: {p}" for p in store.paths], channels, size, strict,
                                f"loading {store.path.name}")
    finally:
        store.close()
    if not decoded.kept:
        raise DataError(f"no image of {store.path} could be decoded, e.g. {store.paths[decoded.skipped[0][0]]}")
    warn_once(store.path, len(store), [f"{store.paths[i]} ({why})" for i, why in decoded.skipped], [])
    label_tensor = store.labels[decoded.kept] if labels else None
    return ImageSet(decoded.images, label_tensor, store.classes if labels else [], store.path.name,
                    paths=[store.paths[i] for i in decoded.kept])


def _read_index_json(path: Path) -> dict:
    file = path / INDEX
    if not file.is_file():
        raise DataError(f"{path} has no {INDEX}: it is not a packed image store, or its packing did not finish; "
                        "run `selfsup data pack SOURCE_FOLDER " + str(path) + "` again")
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{file} cannot be read ({e}); pack the folder again with `selfsup data pack`") from e


def _fingerprint(root: Path, files: list[Path], max_side: int) -> str:
    """What a pack depends on: every file's path, size and modification time, and the settings."""
    digest = hashlib.sha1(json.dumps([VERSION, max_side, JPEG_QUALITY]).encode())
    for f in files:
        stat = (root / f).stat()
        digest.update(f"{f}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _add_member(writer: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append a member to the tar; return the byte offset of its data in the file."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    data_offset = writer.offset + len(info.tobuf(writer.format, writer.encoding, writer.errors))
    writer.addfile(info, io.BytesIO(data))
    return data_offset


def _prepare(file: str, max_side: int) -> tuple[bytes | None, str, tuple[int, int], str | None]:
    """(bytes, suffix, (width, height) of the original, None), or (None, '', (0, 0), why) for a file that
    cannot be read. The file is decoded once to be sure it can be; its bytes are kept when its short
    side is at most max_side, else it is shrunk to that and re-encoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as img:
                size = img.size
                if min(size) <= max_side:
                    img.load()               # a truncated or corrupt file fails here, not in training
                    return Path(file).read_bytes(), Path(file).suffix.lower(), size, None
                scale = max_side / min(size)
                target = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
                # Kept on the re-encoded file, so readers that honour them (orientation, colour) see the
                # shrunk image as they would the original.
                kept_info = {key: img.info[key] for key in ("exif", "icc_profile") if img.info.get(key)}
                img.draft("RGB", target)     # JPEG: decode at a reduced scale
                img = to_8_bit(img)          # L, RGB, or RGBA where there is transparency
                transparent = img.mode == "RGBA"
                img = img.resize(target, Image.BICUBIC, reducing_gap=3.0)
                buffer = io.BytesIO()
                if transparent:
                    img.save(buffer, "PNG", **kept_info)
                else:
                    img.save(buffer, "JPEG", quality=JPEG_QUALITY, **kept_info)
                return buffer.getvalue(), ".png" if transparent else ".jpg", size, None
    # Decoders signal bad data with many exception types; the message goes into the warning.
    except Exception as e:  # noqa: BLE001
        return None, "", (0, 0), f"{type(e).__name__}: {e}"
