"""Debian package descriptions as document -> summary pairs (`selfsup data fetch debian-descriptions`).

Every Debian package has a one-line synopsis and a long description; the English ones are in the
archive's `Translation-en` index, the package -> source package map in its `Packages` index. Both
are deb822 files: stanzas of `Field: value` lines, continuation lines starting with a space.

A long description's continuation lines follow Debian Policy 5.6.13: " text" is a line of a
paragraph, " ." an empty line between paragraphs, "  text" (two spaces or more) a line shown as
it is. Here a paragraph's lines are joined with spaces, verbatim lines stay lines, paragraphs are
separated by a newline.

Pairs with the same long description (a package's -dev / -doc / transitional siblings often share
one) are kept once, and the split into train / val / test is by source package, so `foo`,
`foo-dev` and `foo-doc` always fall on the same side.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Iterator

# Shares of source packages in each part, chosen before any model saw the data.
SPLIT_SHARES = {"train": 0.8, "val": 0.1, "test": 0.1}


def parse_deb822(text: str) -> Iterator[dict[str, str]]:
    """The stanzas of a deb822 file (Packages, Translation-en): {field: value}, a multi-line value with
    its continuation lines after a newline, exactly as written (leading space kept)."""
    stanza: dict[str, str] = {}
    field = None
    for line in text.splitlines():
        if not line.strip():
            if stanza:
                yield stanza
            stanza, field = {}, None
        elif line[0] in " \t":
            if field is not None:              # a continuation before any field is malformed: dropped
                stanza[field] += "\n" + line
        elif ":" in line:
            field, value = line.split(":", 1)
            stanza[field] = value.strip()
    if stanza:
        yield stanza


def long_description(continuation: list[str]) -> str:
    """The text of a description's continuation lines (Debian Policy 5.6.13, see the module docstring):
    the lines of a paragraph joined with spaces until a verbatim line, which stays a line of its own (its
    indentation past the first space kept); a text line after a verbatim one starts a new line."""
    paragraphs: list[list[str]] = [[]]
    for line in continuation:
        body = line[1:] if line.startswith(" ") else line.lstrip()
        lines = paragraphs[-1]
        if body.strip() == "." and not body.startswith(" "):       # " ." : an empty line
            paragraphs.append([])
        elif body.startswith(" "):                                   # "  text": verbatim
            lines.append(body.rstrip())
        elif lines and not lines[-1].startswith(" "):                # text continuing text
            lines[-1] += " " + body.strip()
        else:
            lines.append(body.strip())
    return "\n".join("\n".join(lines) for lines in paragraphs if lines)


def source_packages(packages_files: Iterable[str]) -> dict[str, str]:
    """{binary package: its source package} from Packages indexes ("Source: name (version)" or, when
    absent, the package's own name)."""
    sources = {}
    for text in packages_files:
        for stanza in parse_deb822(text):
            name = stanza.get("Package")
            if name:
                sources.setdefault(name, stanza.get("Source", name).split()[0])
    return sources


def part_of_source(source: str) -> str:
    """'train', 'val' or 'test' for a source package: a fixed hash of its name, so every binary package
    built from it, in every release, falls in the same part."""
    position = int(hashlib.sha1(source.encode()).hexdigest()[:8], 16) / 16 ** 8
    if position < SPLIT_SHARES["train"]:
        return "train"
    return "val" if position < SPLIT_SHARES["train"] + SPLIT_SHARES["val"] else "test"


def description_pairs(translation_files: Iterable[str], sources: dict[str, str]) -> tuple[list[dict], dict[str, int]]:
    """(pairs, counts) from Translation-en indexes: each pair {"document": the long description,
    "summary": the synopsis, "package", "source", "part"}, in package-name order; counts of what was
    dropped and why ("no_long_description", "duplicate_description", "repeated_package")."""
    by_package: dict[str, dict] = {}
    listed: set[str] = set()
    counts = {"no_long_description": 0, "duplicate_description": 0, "repeated_package": 0}
    for text in translation_files:
        for stanza in parse_deb822(text):
            package, description = stanza.get("Package"), stanza.get("Description-en")
            if not package or description is None:
                continue
            if package in listed:                       # the same package in another suite's index
                counts["repeated_package"] += 1
                continue
            listed.add(package)
            synopsis, *continuation = description.split("\n")
            document = long_description(continuation)
            if not document or not synopsis.strip():
                counts["no_long_description"] += 1
                continue
            source = sources.get(package, package)
            by_package[package] = {"document": document, "summary": synopsis.strip(), "package": package,
                                   "source": source, "part": part_of_source(source)}
    pairs, seen = [], set()
    for package in sorted(by_package):
        pair = by_package[package]
        key = " ".join(pair["document"].split())
        if key in seen:
            counts["duplicate_description"] += 1
            continue
        seen.add(key)
        pairs.append(pair)
    return pairs, counts
