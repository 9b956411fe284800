"""The audio spectrogram transformer (`ast`) and Audio-MAE (`audiomae`): patches of any clip length, the
mean of the patch tokens, 80% of the patches hidden at random from the step's generator, the loss
against its formula, and a short training that learns to fill in held-out clips."""
import math

import pytest
import torch

from selfsup.audio.views import AudioInputs
from selfsup.backbones import build_backbone
from selfsup.backbones.vit import VisionTransformer
from selfsup.build import build_method, load_training_data
from selfsup.config import load_config
from selfsup.modalities import modality_of
from selfsup.train import pretrain

from small_data import write_tones
from test_audio import clips

SMALL = ["backbone.dim=32", "backbone.depth=2", "backbone.heads=2", "train.precision=fp32", "train.threads=1"]


def small_ast(**kwargs):
    torch.manual_seed(0)
    return build_backbone("ast", **{"dim": 32, "depth": 2, "heads": 2, "patch_size": 8, "image_size": 64, **kwargs})


def test_ast_pads_the_frames_to_whole_patches_and_embeds_the_mean_of_its_patch_tokens():
    net = small_ast().eval()
    x = torch.randn(3, 1, 64, 101)                                     # 101 frames: 13 patches after 3 zero frames
    padded = torch.cat([x, torch.zeros(3, 1, 64, 3)], dim=-1)
    assert torch.equal(net.embed_tokens(x), VisionTransformer.embed_tokens(net, padded))
    tokens = net.forward_tokens(x)
    assert tokens.shape == (3, 1 + 8 * 13, 32)
    assert torch.allclose(net(x), tokens[:, 1:].mean(1)) and not torch.allclose(net(x), tokens[:, 0])
    assert net(torch.randn(2, 1, 64, 81)).shape == (2, 32)            # a crop of another length encodes too
    with pytest.raises(ValueError, match="audio.n_mels 60 must be a multiple of backbone.patch_size 8"):
        small_ast(image_size=60)


def test_audiomae_hides_80_percent_of_the_patches_of_the_unaugmented_clip_from_the_steps_generator():
    cfg = load_config(overrides=["method.name=audiomae", "data.source=x", *SMALL])
    assert (cfg.backbone.name, cfg.method.mask_ratio, cfg.audio.mix_p, cfg.audio.crop_seconds) == ("ast", 0.8, 0.0, 0.0)
    method = build_method(cfg)
    batch = clips()
    x, keep, mask = method.views(batch, torch.Generator().manual_seed(3))
    expected = AudioInputs(cfg.audio).eval(batch)                      # the whole clip's normalised log-mel
    assert torch.equal(x[..., :expected.shape[-1]], expected) and (x[..., expected.shape[-1]:] == 0).all()
    patches = (64 // 8) * math.ceil(expected.shape[-1] / 8)
    assert mask.shape == (8, patches) and (mask.sum(1) == round(0.8 * patches)).all()
    assert keep.shape == (8, patches - round(0.8 * patches))
    assert all(not mask[row, keep[row]].any() for row in range(8))     # the kept patches are the visible ones
    again = method.views(batch, torch.Generator().manual_seed(3))
    other = method.views(batch, torch.Generator().manual_seed(4))
    assert torch.equal(again[1], keep) and not torch.equal(other[1], keep)


def test_audiomae_loss_is_the_mean_squared_error_on_hidden_patches_of_each_patchs_normalised_values():
    cfg = load_config(overrides=["method.name=audiomae", "data.source=x", *SMALL])
    method = build_method(cfg)
    x, keep, mask = method.views(clips(n=2), torch.Generator().manual_seed(0))
    loss, _ = method.loss([x, keep, mask])
    pred = method.reconstruct(x, keep)
    total, hidden = 0.0, 0
    for b in range(2):
        for n in range(mask.shape[1]):
            if not mask[b, n]:
                continue
            row, col = divmod(n, x.shape[-1] // 8)
            target = x[b, 0, 8 * row:8 * row + 8, 8 * col:8 * col + 8].reshape(-1)
            target = (target - target.mean()) / (target.var() + 1e-6).sqrt()
            total += (pred[b, n] - target).square().mean().item()
            hidden += 1
    assert loss.item() == pytest.approx(total / hidden, rel=1e-5)


def test_a_short_audiomae_training_fills_in_held_out_clips_better_than_the_untrained_model(tmp_path):
    source = write_tones(tmp_path / "tones", per_class=16)
    cfg = load_config(overrides=["method.name=audiomae", f"data.source={source}", "audio.seconds=0.5", *SMALL,
                                 "train.steps=60", "train.batch_size=16", "optim.lr=2e-3", "optim.warmup_epochs=0",
                                 "eval.online_every=0"])
    data = load_training_data(cfg)
    _, test = modality_of(cfg).labelled_sets(cfg)                      # clips pretraining never read
    untrained = build_method(cfg).eval()
    result = pretrain(cfg, tmp_path / "run", data=data, progress=False)
    trained = result.method.eval()

    def held_out_loss(method):
        with torch.no_grad():
            return method.loss(method.views(test.samples, torch.Generator().manual_seed(0)))[0].item()
    assert held_out_loss(trained) < 0.8 * held_out_loss(untrained)
