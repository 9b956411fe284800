"""COLA (`cola`): the bilinear contrastive loss against its formula, two segments of one clip as the
views with nothing else changed, and a short training that tells held-out clips' segments apart
better than the untrained model."""
import math

import pytest
import torch

from selfsup.audio.views import AudioInputs, time_crop
from selfsup.audio.io import to_float
from selfsup.build import build_method, load_training_data
from selfsup.config import load_config
from selfsup.methods.cola import cola_loss
from selfsup.modalities import modality_of
from selfsup.train import pretrain

from small_data import write_tones
from test_audio import clips


def test_cola_loss_is_the_cross_entropy_of_bilinear_similarities_to_every_positive():
    gen = torch.Generator().manual_seed(0)
    anchors, positives = torch.randn(5, 4, generator=gen).tanh(), torch.randn(5, 4, generator=gen).tanh()
    bilinear = torch.randn(4, 4, generator=gen)
    expected = 0.0
    for i in range(5):
        scores = [float(anchors[i] @ bilinear @ positives[j]) for j in range(5)]
        expected -= scores[i] - math.log(sum(math.exp(s) for s in scores))
    assert cola_loss(anchors, positives, bilinear).item() == pytest.approx(expected / 5, rel=1e-5)
    # s is bilinear, not a cosine: with W the identity it is the plain dot product of the two g's.
    plain = torch.nn.functional.cross_entropy(anchors @ positives.T, torch.arange(5))
    assert cola_loss(anchors, positives, torch.eye(4)).item() == pytest.approx(plain.item(), rel=1e-6)


def test_cola_views_are_two_segments_of_each_clip_and_nothing_else():
    cfg = load_config(overrides=["method.name=cola", "data.source=x"])
    assert cfg.modality == "audio" and (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 1e-4, 0.0)
    method = build_method(cfg)
    batch = clips()
    first, second = method.views(batch, torch.Generator().manual_seed(1))
    assert first.shape == second.shape == (8, 1, 64, 61) and not torch.allclose(first, second)
    # Each view is the evaluation front end of a 0.6 s crop: the crop drawn by the view's first draw.
    gen = torch.Generator().manual_seed(1)
    u = torch.rand(8, AudioInputs.DRAWS, generator=gen)
    crop = time_crop(to_float(batch), round(0.6 * cfg.audio.sample_rate), u[:, 0])
    inputs = AudioInputs(cfg.audio)
    assert torch.allclose(first, inputs.normalise(inputs.log_mel(crop)), atol=1e-5)


def test_a_short_cola_training_tells_held_out_segments_apart_better_than_the_untrained_model(tmp_path):
    source = write_tones(tmp_path / "tones", per_class=16)
    cfg = load_config(overrides=["method.name=cola", f"data.source={source}", "audio.seconds=0.5",
                                 "audio.crop_seconds=0.3", "backbone.width=0.125", "backbone.dim=64",
                                 "method.proj_dim=32", "train.steps=120", "train.batch_size=16", "optim.lr=1e-3",
                                 "optim.warmup_epochs=0", "eval.online_every=0", "train.precision=fp32",
                                 "train.threads=1"])
    data = load_training_data(cfg)
    _, test = modality_of(cfg).labelled_sets(cfg)                      # clips pretraining never read
    untrained = build_method(cfg).eval()
    trained = pretrain(cfg, tmp_path / "run", data=data, progress=False).method.eval()

    def held_out_loss(method):
        with torch.no_grad():
            return method.loss(method.views(test.samples[:16], torch.Generator().manual_seed(0)))[0].item()
    assert held_out_loss(trained) < 0.7 * held_out_loss(untrained)
