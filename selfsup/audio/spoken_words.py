"""`selfsup data fetch spoken-words`: a labelled speech set synthesised offline with espeak-ng.

The ten digits and the ten command words of Speech Commands (yes, no, up, down, left, right, on, off,
stop, go), each spoken by every voice `renditions` times. A voice is one of espeak-ng's English
accents with one of its voice variants (male, female, klatt, croak, ...) at its own pitch and rate;
each rendition moves pitch and rate a little, trims the synthesiser's silence, places the word at a
random point of a one-second clip and mixes in background noise (white or brown) at a random
signal-to-noise ratio. Voices, not clips, are split: 20% of the voices are the test part and 10% the
validation part, so an evaluation hears only voices that training never heard.

Digit strings, for speech recognition (`selfsup finetune-ctc`): each voice also says each digit twice
(pitch and rate moved a little each time), and strings of 2 to 6 of those renditions, with random pauses
between them, are placed in five-second clips with noise, as above. The same voices are held out.

    spoken-words/clips.jsonl      {"path", "label" (the word), "speaker" (the voice), "part"} a line
    spoken-words/clips/<voice>/<word>-<n>.wav     16 kHz, 16-bit mono, one second
    spoken-words/digit-strings.jsonl   {"path", "transcript" ("three one four"), "speaker", "part"} a line
    spoken-words/digit-strings/<voice>/<n>.wav     16 kHz, 16-bit mono, five seconds
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from selfsup.audio.io import read_clip, write_wav
from selfsup.errors import DataError

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3",
            "croak")
TRIM_BELOW = 0.01              # the synthesiser's leading and trailing samples quieter than this are cut


@dataclass
class SpokenWordsRecipe:
    sample_rate: int = 16000
    seconds: float = 1.0
    renditions: int = 2             # clips of each word by each voice
    test_share: float = 0.2         # of the voices
    val_share: float = 0.1
    snr_db: tuple[float, float] = (5.0, 30.0)
    seed: int = 0
    strings_per_voice: int = 16     # digit strings
    string_seconds: float = 5.0
    string_digits: tuple[int, int] = (2, 6)
    pause_seconds: tuple[float, float] = (0.05, 0.35)


DIGIT_STRINGS = "digit-strings.jsonl"


def voices() -> list[str]:
    return [f"{accent}+{variant}" for accent in ACCENTS for variant in VARIANTS]


def voice_parts(names: list[str], recipe: SpokenWordsRecipe) -> dict[str, str]:
    """Each voice's part: a seeded shuffle, the first test_share of it test, the next val_share validation."""
    order = list(names)
    random.Random(recipe.seed).shuffle(order)
    test, val = round(len(order) * recipe.test_share), round(len(order) * recipe.val_share)
    return {name: "test" if i < test else "val" if i < test + val else "train" for i, name in enumerate(order)}


def voice_styles(names: list[str], plan: random.Random) -> dict[str, tuple[int, int]]:
    """Each voice's own pitch (30-70) and rate (140-190 words a minute)."""
    return {name: (plan.randint(30, 70), plan.randint(140, 190)) for name in names}


def synthesise(word: str, voice: str, pitch: int, rate: int, folder: Path) -> Path:
    """espeak-ng's WAV of `word` (22,050 Hz), in folder."""
    path = folder / f"{voice}-{word}-{pitch}-{rate}.wav"
    try:
        subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(rate), "-w", str(path), word],
                       check=True, capture_output=True, timeout=60)
    except FileNotFoundError as e:
        raise DataError("spoken-words is synthesised with espeak-ng, which is not installed: "
                        "`apt-get install espeak-ng` (Debian/Ubuntu) or your system's package") from e
    except subprocess.CalledProcessError as e:
        raise DataError(f"espeak-ng failed on {word!r} with voice {voice}: {e.stderr.decode(errors='replace')}") from e
    return path


def spoken_word(word: str, voice: str, pitch: int, rate: int, sample_rate: int) -> torch.Tensor:
    """The word as the voice says it, at sample_rate, without the synthesiser's silence around it."""
    with tempfile.TemporaryDirectory() as work:
        raw = synthesise(word, voice, pitch, rate, Path(work))
        return trimmed(read_clip(raw, sample_rate, seconds=5.0, min_seconds=0.01))


def trimmed(wave: torch.Tensor) -> torch.Tensor:
    loud = (wave.abs() >= TRIM_BELOW).nonzero()
    return wave[loud[0, 0]:loud[-1, 0] + 1] if len(loud) else wave


def background(length: int, brown: bool, gen: torch.Generator) -> torch.Tensor:
    """Unit-RMS noise: white, or brown (integrated white noise, its power falling 6 dB an octave)."""
    noise = torch.randn(length, generator=gen, dtype=torch.float64)
    if brown:
        noise = torch.cumsum(noise, 0)
        noise = noise - torch.linspace(float(noise[0]), float(noise[-1]), length, dtype=torch.float64)
    return (noise / noise.pow(2).mean().sqrt()).float()


def place(word: torch.Tensor, length: int, snr_db: float, brown: bool, gen: torch.Generator) -> torch.Tensor:
    """The word at a random offset of a `length`-sample clip (cut if longer), noise added at snr_db
    below the word's RMS level, peak-limited to 0.99."""
    word = word[:length]
    start = int(torch.randint(0, length - len(word) + 1, (1,), generator=gen))
    clip = torch.zeros(length)
    clip[start:start + len(word)] = word
    level = word.pow(2).mean().sqrt()
    clip = clip + background(length, brown, gen) * level * 10 ** (-snr_db / 20)
    return clip * min(1.0, 0.99 / float(clip.abs().max()))


def build_spoken_words(output: Path, recipe: SpokenWordsRecipe = SpokenWordsRecipe(), log=print) -> int:
    """Write the set into the folder `output` (clips/ and clips.jsonl); returns the number of clips."""
    if shutil.which("espeak-ng") is None:
        raise DataError("spoken-words is synthesised with espeak-ng, which is not installed: "
                        "`apt-get install espeak-ng` (Debian/Ubuntu) or your system's package")
    names = voices()
    parts = voice_parts(names, recipe)
    plan = random.Random(recipe.seed + 1)
    voice_style = voice_styles(names, plan)
    jobs = []
    for name in names:
        pitch, rate = voice_style[name]
        for word in DIGITS + COMMANDS:
            for k in range(recipe.renditions):
                jobs.append((name, word, k, min(99, max(0, pitch + plan.randint(-6, 6))),
                             rate + plan.randint(-15, 15), plan.uniform(*recipe.snr_db), plan.random() < 0.5))
    length = round(recipe.seconds * recipe.sample_rate)

    def make(job_number: int) -> dict:
        name, word, k, pitch, rate, snr, brown = jobs[job_number]
        gen = torch.Generator().manual_seed(recipe.seed * 1_000_003 + job_number)
        clip = place(spoken_word(word, name, pitch, rate, recipe.sample_rate), length, snr, brown, gen)
        relative = Path("clips") / name / f"{word}-{k}.wav"
        (output / relative).parent.mkdir(parents=True, exist_ok=True)
        write_wav(output / relative, clip, recipe.sample_rate)
        return {"path": relative.as_posix(), "label": word, "speaker": name, "part": parts[name]}

    log(f"spoken-words: synthesising {len(jobs):,} clips ({len(names)} voices x {len(DIGITS + COMMANDS)} words x "
        f"{recipe.renditions}) with espeak-ng")
    with ThreadPoolExecutor(max_workers=4) as pool:
        records = list(pool.map(make, range(len(jobs))))
    random.Random(recipe.seed + 2).shuffle(records)     # any prefix of the manifest mixes words and voices
    with open(output / "clips.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    counts = {part: sum(r["part"] == part for r in records) for part in ("train", "val", "test")}
    log("spoken-words: " + ", ".join(f"{part} {count:,} clips ({sum(p == part for p in parts.values())} voices)"
                                     for part, count in counts.items()))
    build_digit_strings(output, recipe, log)
    return len(records)


def build_digit_strings(output: Path, recipe: SpokenWordsRecipe = SpokenWordsRecipe(), log=print) -> int:
    """Write digit-strings/ and digit-strings.jsonl into the folder `output`; returns the number of strings."""
    names = voices()
    parts = voice_parts(names, recipe)
    voice_style = voice_styles(names, random.Random(recipe.seed + 1))      # the voices of the word clips
    plan = random.Random(recipe.seed + 3)
    renditions = [(name, digit, k, min(99, max(0, voice_style[name][0] + plan.randint(-6, 6))),
                   voice_style[name][1] + plan.randint(-15, 15))
                  for name in names for digit in DIGITS for k in range(2)]
    log(f"spoken-words: synthesising {len(renditions):,} digits ({len(names)} voices x 10 x 2) for "
        f"{len(names) * recipe.strings_per_voice:,} digit strings")
    with ThreadPoolExecutor(max_workers=4) as pool:
        spoken = dict(zip([r[:3] for r in renditions],
                          pool.map(lambda r: spoken_word(r[1], r[0], r[3], r[4], recipe.sample_rate), renditions)))
    length = round(recipe.string_seconds * recipe.sample_rate)
    records = []
    for name in names:
        for n in range(recipe.strings_per_voice):
            digits = [plan.choice(DIGITS) for _ in range(plan.randint(*recipe.string_digits))]
            pieces = [spoken[(name, digit, plan.randrange(2))] for digit in digits]
            pauses = [torch.zeros(round(plan.uniform(*recipe.pause_seconds) * recipe.sample_rate)) for _ in pieces[1:]]
            while len(pieces) > 1 and sum(map(len, pieces + pauses)) > length:      # too long for the clip
                digits, pieces, pauses = digits[:-1], pieces[:-1], pauses[:-1]
            said = torch.cat([pieces[0]] + [x for pause, piece in zip(pauses, pieces[1:]) for x in (pause, piece)])
            gen = torch.Generator().manual_seed(plan.getrandbits(63))
            clip = place(said, length, plan.uniform(*recipe.snr_db), plan.random() < 0.5, gen)
            relative = Path("digit-strings") / name / f"{n}.wav"
            (output / relative).parent.mkdir(parents=True, exist_ok=True)
            write_wav(output / relative, clip, recipe.sample_rate)
            records.append({"path": relative.as_posix(), "transcript": " ".join(digits), "speaker": name,
                            "part": parts[name]})
    with open(output / DIGIT_STRINGS, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    log(f"spoken-words: {len(records):,} digit strings of {recipe.string_seconds:g} s")
    return len(records)

