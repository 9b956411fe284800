"""Audio sources as one in-memory data set of fixed-length mono clips (int16, N x samples).

    root/yes/a.wav, root/yes/more/b.flac, root/no/c.ogg      a folder: labels from first-level subfolders
    clips.jsonl: {"path": "a.wav", "label": "yes", "speaker": "anna", "part": "train"}   a manifest
                 (and "transcript": "three one four", for speech recognition)
    spoken-words                                              the fetched set (selfsup data fetch spoken-words)

A manifest's paths are relative to its own folder (or absolute); `label`, `speaker` and `part` are
optional. Every clip belongs to one part (selfsup.data.holdout): the manifest's `part` when it has
one; else a hash of the clip's speaker when it has one, so that no speaker is heard on both sides;
else a hash of its path, with `test_fraction` and `val_fraction` of the clips held out.

With cut_every > 0 every file gives a clip every `cut_every` seconds through its whole length
(recordings longer than a clip: all of them is used, not only the start); the pieces of one file
share its part, so no recording is heard on both sides.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from selfsup.audio.io import AUDIO_SUFFIXES, UnreadableAudio, duration, read_clip, to_int16
from selfsup.checkpoint import atomic_write
from selfsup.data.cache import sidecar_of, trusted_sidecar
from selfsup.data.fetch import default_root
from selfsup.data.holdout import PARTS, part_of, path_position
from selfsup.data.image_folder import find_image_files, warn_once
from selfsup.data.jsonl import json_objects
from selfsup.data.stream import too_large_for_memory
from selfsup.errors import DataError

PROGRESS_ABOVE = 500                   # files; fewer load in a few seconds without a bar
MANIFEST_FIELDS = ("path", "label", "speaker", "part", "transcript")
CACHE_FORMAT = "selfsup-audio-clips-1"


@dataclass
class AudioSet:
    clips: torch.Tensor                        # int16 (N, samples): mono at sample_rate
    sample_rate: int
    labels: torch.Tensor | None = None         # int64 (N,)
    classes: list[str] = field(default_factory=list)
    name: str = ""
    paths: list[str] = field(default_factory=list)
    speakers: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)     # train / val / test of each clip
    transcripts: list[str] = field(default_factory=list)   # what is said in each clip (speech recognition)
    on_disk: bool = False                      # clips mapped from a file (load_audio's stream), not in memory

    def __post_init__(self):
        if self.clips.dtype != torch.int16 or self.clips.dim() != 2:
            raise DataError(f"AudioSet.clips must be int16 (N, samples), got {self.clips.dtype} {tuple(self.clips.shape)}")
        if self.labels is not None and len(self.labels) != len(self.clips):
            raise DataError(f"{len(self.labels)} labels for {len(self.clips)} clips")

    @property
    def samples(self) -> torch.Tensor:
        """The tensor training batches are drawn from (every modality's data set has one)."""
        return self.clips

    def __len__(self) -> int:
        return self.clips.shape[0]

    def subset(self, n: int) -> "AudioSet":
        """The first n clips (all when n <= 0 or n >= len)."""
        return self if n <= 0 or n >= len(self) else self.select(torch.arange(n))

    def select(self, idx) -> "AudioSet":
        """The clips at idx, with everything known about them. A run of consecutive positions is a view
        of the clips (a mapped file stays on disk), any other choice a copy."""
        idx = torch.as_tensor(idx, dtype=torch.int64)
        pick = lambda values: [values[i] for i in idx.tolist()] if values else []   # noqa: E731
        labels = None if self.labels is None else self.labels[idx]
        consecutive = len(idx) > 0 and bool((idx == torch.arange(int(idx[0]), int(idx[0]) + len(idx))).all())
        clips = self.clips[int(idx[0]):int(idx[0]) + len(idx)] if consecutive else self.clips[idx]
        return AudioSet(clips, self.sample_rate, labels, self.classes, self.name, pick(self.paths),
                        pick(self.speakers), pick(self.parts), pick(self.transcripts), self.on_disk and consecutive)

    def part(self, name: str) -> "AudioSet":
        return self.select([i for i, part in enumerate(self.parts) if part == name])


@dataclass
class Entry:
    path: Path                         # the file
    name: str                          # how it is named in messages and paths (relative to the source)
    label: str = ""
    speaker: str = ""
    part: str = ""
    transcript: str = ""
    start: float = 0.0                 # seconds into the file where the clip begins

    @property
    def clip_name(self) -> str:
        """The file's name, and where in it the clip starts when it is a later piece."""
        return f"{self.name}@{self.start:g}s" if self.start else self.name


def load_audio(source: str | Path, sample_rate: int, seconds: float, labels: bool = False, strict: bool = False,
               test_fraction: float = 0.2, val_fraction: float = 0.1, min_seconds: float = 0.05,
               cut_every: float = 0.0, progress: bool = True, stream: str = "off",
               cache_dir: Path | None = None) -> AudioSet:
    """Every readable clip of the source (a folder, a .jsonl manifest, or a manifest inside a folder),
    `seconds` long at `sample_rate`, each with its part. labels=True: each clip's label (the manifest's
    `label`, or the first-level subfolder); a clip without one is an error. Unreadable, too short and
    silent files (or pieces) are skipped with one warning naming a few; strict=True makes the first an
    error. cut_every > 0: a clip every cut_every seconds of each file (the module's docstring).

    stream 'on' (or 'auto' when the decoded clips would fill more than STREAM_MEMORY_SHARE of the
    machine's memory), for sets larger than memory: the clips are decoded once into a file in
    cache_dir (default: audio-cache in $SELFSUP_DATA or ~/.cache/selfsup; the train, val and test
    clips each one stretch of it, in the source's order within a part) and mapped from disk; `part`
    is then a view of the file and nothing is read until a batch asks for it. Loading again with the
    same files and settings reuses the file without decoding."""
    root, entries, other_files = audio_entries(Path(source).expanduser())
    if cut_every > 0:
        entries = [piece for entry in entries for piece in pieces(entry, cut_every, min_seconds)]
    classes = sorted({e.label for e in entries}) if labels else []
    if labels:
        unlabelled = [e.name for e in entries if not e.label]
        if unlabelled:
            raise DataError(f"{root}: {len(unlabelled)} clip(s) have no label, e.g. {unlabelled[0]}; put each class's "
                            "files in its own subfolder (or give a manifest a `label` field), or read without labels")
        if len(classes) < 2:
            raise DataError(f"{root}: the clips have {len(classes)} label(s); evaluation needs at least 2")
    parts = [e.part or part_of(path_position(e.speaker or e.name), test_fraction, val_fraction) for e in entries]
    decoding = Decoding(root, sample_rate, seconds, min_seconds, strict, progress)
    on_disk = streams(stream, len(entries) * round(sample_rate * seconds) * 2, root, len(entries))
    if not on_disk:
        kept, clips = [], []
        for position, clip in decoding.clips(entries):
            kept.append(position)
            clips.append(clip)
        clips = torch.stack(clips) if clips else None
    else:
        by_part = sorted(range(len(entries)), key=lambda i: PARTS.index(parts[i]))
        entries, parts = [entries[i] for i in by_part], [parts[i] for i in by_part]
        clips, kept = mapped_clips(cache_dir or default_root() / "audio-cache", entries, parts, decoding)
    if not kept:
        raise DataError(f"no readable clips in {str(root)!r}: all {len(entries)} audio files were skipped, e.g. "
                        f"{decoding.skipped[0]}")
    warn_once(root, len(entries), decoding.skipped, other_files, kind="audio", suffixes=AUDIO_SUFFIXES)
    index = {name: i for i, name in enumerate(classes)}
    chosen = [entries[i] for i in kept]
    return AudioSet(clips, sample_rate, torch.tensor([index[e.label] for e in chosen]) if labels else None, classes,
                    root.name, [e.clip_name for e in chosen], [e.speaker for e in chosen], [parts[i] for i in kept],
                    [e.transcript for e in chosen] if any(e.transcript for e in chosen) else [], on_disk)


def streams(stream: str, needed_bytes: int, root: Path, count: int) -> bool:
    """data.stream for sound: on, off, or auto: when the decoded clips would not fit in memory."""
    if stream != "auto":
        return stream == "on"
    return too_large_for_memory(needed_bytes, f"{count:,} clips of {root.name}",
                                "decoding them once to a file and reading it from disk")


@dataclass
class Decoding:
    """How entries become int16 clips, and the ones that could not (`skipped`, each with its reason)."""
    root: Path
    sample_rate: int
    seconds: float
    min_seconds: float
    strict: bool
    progress: bool
    skipped: list[str] = field(default_factory=list)

    def settings(self) -> dict:
        return {"sample_rate": self.sample_rate, "seconds": self.seconds, "min_seconds": self.min_seconds}

    def decode(self, entry: Entry) -> torch.Tensor | UnreadableAudio:
        try:
            return to_int16(read_clip(entry.path, self.sample_rate, self.seconds, self.min_seconds, entry.start))
        except UnreadableAudio as e:
            return e

    def clips(self, entries: list[Entry], window: int = 1024):
        """(position, clip) of each readable entry, in the entries' order; an unreadable one is added to
        `skipped` (strict: a DataError). Files are submitted a window at a time, so decoded clips waiting
        behind a slow file never pile up beyond it."""
        # libsndfile and the FFT release the GIL: threads decode in parallel.
        pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
        bar = tqdm(total=len(entries), unit="clip", desc=f"loading {self.root.name}", file=sys.stderr,
                   disable=not self.progress or len(entries) <= PROGRESS_ABOVE)
        try:
            for start in range(0, len(entries), window):
                chunk = entries[start:start + window]
                for position, (entry, clip) in enumerate(zip(chunk, pool.map(self.decode, chunk)), start):
                    bar.update()
                    if not isinstance(clip, UnreadableAudio):
                        yield position, clip
                    elif self.strict:
                        raise DataError(f"cannot read audio file {entry.clip_name!r}: {clip}; without --strict "
                                        "(strict=False) it would be skipped") from clip
                    else:
                        self.skipped.append(f"{entry.clip_name} ({clip})")
        finally:
            pool.shutdown(cancel_futures=True)
            bar.close()


def mapped_clips(cache_dir: Path, entries: list[Entry], parts: list[str],
                 decoding: Decoding) -> tuple[torch.Tensor | None, list[int]]:
    """(the readable entries' clips, int16 (N, samples) mapped from a file in cache_dir, their positions).

    The file is named by a digest of the entries (each file's path, size and modification time, what
    the entry says of it, and its part) and the decoding settings; a sidecar `<file>.json` lists the kept
    positions and the skipped files. It is written under a temporary name, clip by clip, and the
    sidecar last, so an interrupted decoding is never mistaken for a finished one."""
    identity = {"format": CACHE_FORMAT, **decoding.settings(),
                "entries": hashlib.sha256(json.dumps([_describe(e) + [part] for e, part in zip(entries, parts)])
                                          .encode()).hexdigest()}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    cache_file = Path(cache_dir) / f"{key}.int16"
    length = round(decoding.sample_rate * decoding.seconds)
    meta = trusted_sidecar(cache_file, identity, lambda meta: len(meta.get("kept", [])) * length * 2)
    if meta is None:
        meta = _decode_to(cache_file, identity, entries, decoding)
    decoding.skipped.extend(meta["skipped"])
    if decoding.strict and meta["skipped"]:
        raise DataError(f"cannot read audio file {meta['skipped'][0]}; without --strict (strict=False) it would be "
                        "skipped")
    if not meta["kept"]:
        return None, []
    # Copy-on-write: the tensor is writable (torch warns on read-only arrays) but the file never changes.
    mapped = np.memmap(cache_file, dtype=np.int16, mode="c", shape=(len(meta["kept"]), length))
    return torch.from_numpy(mapped), meta["kept"]


def _describe(entry: Entry) -> list:
    stat = entry.path.stat() if entry.path.is_file() else None
    return [str(entry.path.resolve()), stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1, entry.label,
            entry.speaker, entry.part, entry.transcript, entry.start]


def _decode_to(cache_file: Path, identity: dict, entries: list[Entry], decoding: Decoding) -> dict:
    sidecar = sidecar_of(cache_file)
    sidecar.unlink(missing_ok=True)            # a crash below must not leave a sidecar vouching for old clips
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_file.with_name(cache_file.name + ".partial")
    kept, writing = [], replace(decoding, skipped=[])       # the caller reports the skipped files, cached or not
    try:
        with open(partial, "wb") as out:
            for position, clip in writing.clips(entries):
                out.write(clip.numpy().tobytes())
                kept.append(position)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(cache_file)
    meta = {**identity, "kept": kept, "skipped": writing.skipped}
    atomic_write(sidecar, json.dumps(meta).encode())
    return meta


def pieces(entry: Entry, every: float, min_seconds: float) -> list[Entry]:
    """The entry as one clip every `every` seconds of its file, each at least min_seconds long (a file
    whose header cannot be read stays one entry, to be skipped with its reason when decoded)."""
    length = duration(entry.path)
    starts = [i * every for i in range(max(1, math.floor((length - min_seconds) / every) + 1))]
    return [replace(entry, start=start) for start in starts]


def audio_entries(source: Path) -> tuple[Path, list[Entry], list[str]]:
    """(the source's folder, its audio files, the names of other files in a folder source)."""
    if source.is_dir() and (source / "clips.jsonl").is_file():
        source = source / "clips.jsonl"
    if source.suffix == ".jsonl":
        return source.parent, read_manifest(source), []
    if not source.is_dir():
        what = "is not a folder or a .jsonl manifest" if source.exists() else "does not exist"
        raise DataError(f"audio source {str(source)!r} {what}")
    files, other_files = find_image_files(source, AUDIO_SUFFIXES)
    if not files:
        raise DataError(f"no audio files in {str(source)!r}: looked for files ending in {', '.join(AUDIO_SUFFIXES)} "
                        f"(at any depth, in any case) and found {len(other_files)} other file(s)")
    return source, [Entry(source / f, str(f), f.parts[0] if len(f.parts) > 1 else "") for f in files], other_files


def read_manifest(path: Path) -> list[Entry]:
    """The entries of a JSONL manifest: one {"path", optional "label", "speaker", "part", "transcript"} a line."""
    entries = []
    for number, record in json_objects(path, "a \"path\" field"):
        if not record.get("path"):
            raise DataError(f"{path} line {number}: each line needs a \"path\" field (and may have "
                            f"{', '.join(MANIFEST_FIELDS[1:])}); it has: {', '.join(record) or 'nothing'}")
        part = str(record.get("part", ""))
        if part and part not in PARTS:
            raise DataError(f"{path} line {number}: part {part!r} is not one of {', '.join(PARTS)}")
        file = Path(record["path"]).expanduser()
        entries.append(Entry(file if file.is_absolute() else path.parent / file, str(record["path"]),
                             str(record.get("label", "")), str(record.get("speaker", "")), part,
                             str(record.get("transcript", ""))))
    if not entries:
        raise DataError(f"{path} lists no clips")
    return entries
