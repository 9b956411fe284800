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

import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from selfsup.audio.io import AUDIO_SUFFIXES, UnreadableAudio, duration, read_clip, to_int16
from selfsup.data.holdout import PARTS, part_of, path_position
from selfsup.data.jsonl import json_objects
from selfsup.data.image_folder import find_image_files, warn_once
from selfsup.errors import DataError

PROGRESS_ABOVE = 500                   # files; fewer load in a few seconds without a bar
MANIFEST_FIELDS = ("path", "label", "speaker", "part", "transcript")


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
        """The clips at idx, with everything known about them."""
        idx = torch.as_tensor(idx, dtype=torch.int64)
        pick = lambda values: [values[i] for i in idx.tolist()] if values else []   # noqa: E731
        labels = None if self.labels is None else self.labels[idx]
        return AudioSet(self.clips[idx], self.sample_rate, labels, self.classes, self.name, pick(self.paths),
                        pick(self.speakers), pick(self.parts), pick(self.transcripts))

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
               cut_every: float = 0.0, progress: bool = True) -> AudioSet:
    """Every readable clip of the source (a folder, a .jsonl manifest, or a manifest inside a folder),
    `seconds` long at `sample_rate`, each with its part. labels=True: each clip's label (the manifest's
    `label`, or the first-level subfolder); a clip without one is an error. Unreadable, too short and
    silent files (or pieces) are skipped with one warning naming a few; strict=True makes the first an
    error. cut_every > 0: a clip every cut_every seconds of each file (the module's docstring)."""
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
    def decode(entry: Entry) -> torch.Tensor | UnreadableAudio:
        try:
            return to_int16(read_clip(entry.path, sample_rate, seconds, min_seconds, entry.start))
        except UnreadableAudio as e:
            return e

    clips, kept, skipped = [], [], []
    # libsndfile and the FFT release the GIL: threads decode in parallel, in the entries' order.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for entry, clip in tqdm(zip(entries, pool.map(decode, entries)), total=len(entries), unit="clip",
                                desc=f"loading {root.name}", file=sys.stderr,
                                disable=not progress or len(entries) <= PROGRESS_ABOVE):
            if isinstance(clip, UnreadableAudio):
                if strict:
                    pool.shutdown(cancel_futures=True)
                    raise DataError(f"cannot read audio file {entry.clip_name!r}: {clip}; without --strict "
                                    "(strict=False) it would be skipped") from clip
                skipped.append(f"{entry.clip_name} ({clip})")
                continue
            clips.append(clip)
            kept.append(entry)
    if not kept:
        raise DataError(f"no readable clips in {str(root)!r}: all {len(entries)} audio files were skipped, e.g. "
                        f"{skipped[0]}")
    warn_once(root, len(entries), skipped, other_files, kind="audio", suffixes=AUDIO_SUFFIXES)
    index = {name: i for i, name in enumerate(classes)}
    return AudioSet(torch.stack(clips), sample_rate,
                    torch.tensor([index[e.label] for e in kept]) if labels else None, classes, root.name,
                    [e.clip_name for e in kept], [e.speaker for e in kept],
                    [e.part or part_of(path_position(e.speaker or e.name), test_fraction, val_fraction) for e in kept],
                    [e.transcript for e in kept] if any(e.transcript for e in kept) else [])


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
