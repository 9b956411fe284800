"""Small text and table files for the tests: a labelled .jsonl corpus of two topics, and a CSV of
three classes with numeric, categorical and missing cells."""
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
