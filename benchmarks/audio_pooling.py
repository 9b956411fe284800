"""Why sound trains BYOL-A's encoder (docs/audio.md, "The spectrogram encoder"): kNN accuracy on spoken-words'
validation voices of randomly initialised encoders, by how their features are pooled. A ResNet's global
average pooling averages over frequency too; pooling its maps over time only keeps which bands hold energy.
One JSON line: each feature's kNN top-1 at k=20 and k=200 over the training voices' clips.

    python benchmarks/audio_pooling.py --out docs/audio-cpu.jsonl
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from json_lines import emit
from selfsup.backbones import build_backbone
from selfsup.config import load_config
from selfsup.evaluate.knn import knn_accuracy
from selfsup.modalities import modality_of

NEIGHBOURS = (20, 200)


def over_time(maps: torch.Tensor) -> torch.Tensor:
    """(B, C, F, T) -> (B, 2 C F): each channel and frequency row's mean and maximum over time."""
    return torch.cat([maps.mean(3).flatten(1), maps.amax(3).flatten(1)], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="", help="append the JSON line to this file too")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = load_config(overrides=["method.name=byola", "data.source=spoken-words"])
    modality = modality_of(cfg)
    train, val = modality.labelled_sets(cfg, part="val")
    modality.complete_config(cfg, train)                     # the mel normalisation, fitted on training clips
    inputs = modality.method_inputs(cfg)
    resnet = build_backbone("resnet18", width=0.25, stem="imagenet", in_channels=1).eval()
    audio_cnn = build_backbone("audio_cnn", width=0.25, dim=2048).eval()
    features = {
        "log-mel mean and std over time": lambda x: torch.cat([x.mean(-1).flatten(1), x.std(-1).flatten(1)], 1),
        "resnet18 random, global average pool": resnet,
        **{f"resnet18 random, stage {i} pooled over time only": (lambda x, i=i: over_time(resnet.stage_maps(x)[i]))
           for i in range(4)},
        "audio_cnn random (width 0.25, dim 2048)": audio_cnn,
    }

    @torch.no_grad()
    def embed(feature, data):
        return F.normalize(torch.cat([feature(inputs.eval(data.clips[i:i + 256])).float()
                                      for i in range(0, len(data), 256)]), dim=1)

    result = {"benchmark": "audio_pooling", "data": "spoken-words", "scored_on": "val", "train_clips": len(train),
              "val_clips": len(val)}
    for name, feature in features.items():
        a, b = embed(feature, train), embed(feature, val)
        result[name] = {f"knn{k}": round(float(knn_accuracy(a, train.labels, b, val.labels, k=k)), 4)
                        for k in NEIGHBOURS}
    emit(result, args.out)


if __name__ == "__main__":
    main()
