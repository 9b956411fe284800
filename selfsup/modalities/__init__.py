"""Modalities: what the trainer, the evaluation and the report need to know about a kind of data.

One loop trains every method; what differs between images, text and tables is only how a data
set is read into one sample tensor (uint8 images, token ids, standardised table rows), what the
data decides about the config (image size, vocabulary, column layout), which files the run
must keep to read new data the same way (a tokenizer, a table's normalisation), and the no-learning
baseline (raw pixels, bag of words, the raw columns). `Modality` (modalities/base.py) is the
interface; a new kind of data is a new subclass registered here.

    modality_of(cfg).training_data(cfg, run_dir)       the samples pretraining draws batches from
    modality_of(cfg).labelled_sets(cfg, run_dir, part=...)  (train, validation or test) with labels
"""
from __future__ import annotations

from selfsup.modalities.audio import AudioModality
from selfsup.modalities.base import Modality
from selfsup.modalities.image import ImageModality, image_input
from selfsup.modalities.interactions import InteractionsModality
from selfsup.modalities.tabular import TabularModality
from selfsup.modalities.text import TextModality, text_part

__all__ = ["MODALITIES", "AudioModality", "ImageModality", "InteractionsModality", "Modality", "TabularModality", "TextModality", "image_input",
           "modality_of", "text_part"]

MODALITIES: dict[str, Modality] = {m.name: m for m in (ImageModality(), TextModality(), TabularModality(),
                                                       InteractionsModality(), AudioModality())}


def modality_of(cfg) -> Modality:
    """The modality of a config: data.modality, or the method's when that is empty."""
    return MODALITIES[cfg.modality]
