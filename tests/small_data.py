"""Small text, table and sound files for the tests: a labelled .jsonl corpus of two topics, a CSV of
three classes with numeric, categorical and missing cells, and a folder of three kinds of chirps."""
from __future__ import annotations

import json
import random

import numpy as np

TOPICS = {
    "animals": ["the cat sat on the mat", "a dog barked at the cat", "birds sing in the tree",
                "the horse ran in the field", "cats and dogs play"],
    "markets": ["stocks fell on the market", "the bank raised interest rates", "shares rose after profits",
                "investors sold their bonds", "the market closed higher"],
}


def write_corpus(path, n=120, seed=0):
    """A labelled .jsonl corpus: each document strings together sentences of one topic."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            topic = sorted(TOPICS)[i % 2]
            text = ". ".join(rng.choice(TOPICS[topic]) for _ in range(rng.randint(2, 4)))
            f.write(json.dumps({"body": text, "topic": topic, "id": i}) + "\n")
    return path


def write_table(path, n=240, seed=0):
    """Three classes separated by two numeric columns and a categorical one, with missing cells."""
    rng = np.random.default_rng(seed)
    lines = ["x1,x2,colour,noise,label"]
    for i in range(n):
        label = i % 3
        x1, x2 = rng.normal(label * 3.0, 0.5), rng.normal(-label * 2.0, 0.5)
        colour = ["red", "green", "blue"][label] if rng.random() > 0.1 else ""
        x2_cell = f"{x2:.3f}" if rng.random() > 0.05 else "NA"
        lines.append(f"{x1:.3f},{x2_cell},{colour},{rng.normal():.3f},class{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_interactions(folder, users=60, items=30, seed=0, name="log"):
    """RecBole atomic files `name`.inter / .user / .item in folder: users walk the items in a cycle, one
    step at a time (gender M) or two (gender F), from a random start, so the next item follows from
    the last one and the gender from the history. Item ids are strings, and the rows are shuffled
    (time order is the timestamp's, not the file's)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    events, people = [], []
    for u in range(users):
        gender = "MF"[u % 2]
        step, position, length = 1 + u % 2, rng.randrange(items), rng.randint(8, 14)
        for t in range(length):
            events.append(f"u{u}\tm{position}\t{rng.randint(1, 5)}\t{1000 + 10 * t + u}")
            position = (position + step) % items
        people.append(f"u{u}\t{20 + u % 40}\t{gender}")
    rng.shuffle(events)
    (folder / f"{name}.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                          + "\n".join(events) + "\n")
    (folder / f"{name}.user").write_text("user_id:token\tage:token\tgender:token\n" + "\n".join(people) + "\n")
    (folder / f"{name}.item").write_text("item_id:token\tmovie_title:token_seq\n"
                                         + "\n".join(f"m{i}\tMovie {i}" for i in range(items)) + "\n")
    return folder


def write_tones(folder, per_class=24, rate=16000):
    """Three classes of half-second chirps (rising, falling, steady), each at its own random pitch and
    level, in noise: a folder with one subfolder per class (needs the soundfile package)."""
    import soundfile
    rng = np.random.default_rng(0)
    t = np.arange(rate // 2) / rate
    for label, slope in (("rising", 1.0), ("falling", -1.0), ("steady", 0.0)):
        (folder / label).mkdir(parents=True)
        for i in range(per_class):
            frequency = rng.uniform(300, 900) * (1 + 0.8 * slope * t)
            wave = rng.uniform(0.2, 0.6) * np.sin(2 * np.pi * np.cumsum(frequency) / rate)
            soundfile.write(folder / label / f"{i}.wav", wave + 0.02 * rng.standard_normal(len(t)), rate)
    return folder
