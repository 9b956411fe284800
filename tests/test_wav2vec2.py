"""wav2vec 2.0 (issue 26): the waveform encoder, span masking, distractor sampling, the Gumbel quantiser and
both losses against the paper's formulas on small tensors, and a resumable run through the trainer."""
import itertools
import math

import pytest
import torch

from selfsup.audio.views import WaveformInputs
from selfsup.backbones import build_backbone
from selfsup.build import build_method
from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.methods.wav2vec2 import (GumbelQuantizer, codebook_entropy, contrastive_loss, diversity_loss,
                                      distractor_frames, span_mask)

SMALL = ["method.name=wav2vec2", "data.source=x", "backbone.width=0.0625", "backbone.dim=32", "backbone.depth=1",
         "method.codebook_entries=8", "method.final_dim=16", "method.negatives=5"]


def test_the_feature_encoder_makes_a_frame_every_320_samples_seeing_400():
    net = build_backbone("wav2vec2", width=0.0625, dim=32, depth=1, heads=4).eval()
    assert [net.frames(n) for n in (400, 719, 720, 16000)] == [1, 1, 2, 49]
    waves = torch.randn(2, 16000)
    with torch.no_grad():
        frames = net.frame_features(waves)
        assert frames.shape == (2, 49, 32) and net(waves).shape == (2, 32)
        # Frame 10 sees samples 3200-3599 only: changing anything else leaves the feature encoder's frame as it
        # was (once the GroupNorm, which normalises each channel over the whole clip, is taken out).
        net.conv[1] = torch.nn.Identity()
        changed = waves.clone()
        changed[:, :3200] = 0
        changed[:, 3600:] = 0
        torch.testing.assert_close(net.conv_features(changed)[:, 10], net.conv_features(waves)[:, 10])
    with pytest.raises(ValueError, match="at least 400 samples"):
        net(torch.randn(1, 300))


@pytest.mark.parametrize("width", [0.0625, 0.25])
def test_the_feature_encoder_keeps_the_signal_at_initialisation(width):
    # With PyTorch's default initialisation the seven layers shrank a standardised waveform to features of
    # about 1e-3, below the layer norm's epsilon (1e-5 on the variance): nothing downstream could learn.
    torch.manual_seed(0)
    net = build_backbone("wav2vec2", width=width, dim=32, depth=1, heads=4)
    with torch.no_grad():
        features = net.conv_features(torch.randn(4, 16000))
    assert 0.1 < float(features.pow(2).mean().sqrt()) < 10


def test_span_mask_masks_spans_of_the_set_length_from_the_drawn_starts():
    u = torch.rand(64, 50, generator=torch.Generator().manual_seed(0))
    mask = span_mask(64, 50, 0.065, 10, u)
    counts = mask.sum(1)
    assert int(counts.min()) >= 10 and int(counts.max()) <= 30        # round(0.065 * 50) = 3 spans of 10
    starts = u[:, :41].argsort(1)[:, :3]
    expected = torch.zeros(64, 50, dtype=torch.bool)
    for row, row_starts in enumerate(starts.tolist()):
        for s in row_starts:
            expected[row, s:s + 10] = True
    assert torch.equal(mask, expected)
    assert span_mask(2, 4, 0.065, 10, torch.rand(2, 4)).all()          # a clip shorter than a span: all masked
    # The fewest frames the config allows (2) and the shortest spans (2): still two masked frames in every
    # clip, the distractors' need, which distractor_frames does not check (the check would wait for a GPU).
    assert torch.equal(span_mask(64, 2, 0.065, 2, torch.rand(64, 2)).sum(1), torch.full((64,), 2))
    assert int(span_mask(64, 60, 0.01, 2, torch.rand(64, 60)).sum(1).min()) == 2
    for row in mask:                                                   # only whole spans of at least 10 frames
        runs = [len(list(group)) for masked, group in itertools.groupby(row.tolist()) if masked]
        assert 1 <= len(runs) <= 3 and min(runs) >= 10


def test_distractors_are_other_masked_frames_of_the_same_clip_drawn_uniformly():
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, [1, 4, 5, 9]] = True
    mask[1, [0, 11]] = True
    index = distractor_frames(mask, torch.rand(2, 12, 4000, generator=torch.Generator().manual_seed(1)))
    for row in range(2):
        masked = mask[row].nonzero().flatten().tolist()
        for t in masked:
            drawn = index[row, t]
            assert set(drawn.tolist()) == set(masked) - {t}           # every other masked frame, never itself
            counts = torch.bincount(drawn, minlength=12)[[m for m in masked if m != t]].float()
            assert float(counts.max() / counts.min()) < 1.2            # uniformly


def test_contrastive_loss_is_the_papers_formula_and_drops_distractors_equal_to_the_target():
    torch.manual_seed(0)
    context, targets, distractors = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 5, 4)
    distractors[1, 2] = targets[1]
    kappa = 0.1
    expected = 0.0
    for m in range(3):
        sims = [torch.cosine_similarity(context[m], targets[m], 0)]
        sims += [torch.cosine_similarity(context[m], d, 0) for k, d in enumerate(distractors[m]) if (m, k) != (1, 2)]
        scores = torch.stack(sims) / kappa
        expected += -(scores[0] - torch.logsumexp(scores, 0)) / 3
    torch.testing.assert_close(contrastive_loss(context, targets, distractors, kappa), expected)


def test_diversity_loss_is_the_negative_entropy_of_the_mean_codebook_use_over_g_v():
    probabilities = torch.softmax(torch.randn(6, 2, 5, generator=torch.Generator().manual_seed(0)), -1)
    mean = probabilities.mean(0)
    expected = sum(float(p * math.log(p)) for p in mean.flatten()) / 10
    assert float(diversity_loss(codebook_entropy(probabilities), 5)) == pytest.approx(expected, rel=1e-5)
    uniform = torch.full((4, 2, 5), 0.2)
    assert float(diversity_loss(codebook_entropy(uniform), 5)) == pytest.approx(-math.log(5) / 5, rel=1e-5)   # its minimum


def test_the_quantiser_picks_one_entry_per_codebook_with_gumbel_noise_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    quantizer = GumbelQuantizer(channels=6, codebooks=2, entries=4, final_dim=8)
    latents = torch.randn(2, 3, 6, requires_grad=True)
    uniform = torch.rand(2, 3, 2, 4)
    out, probabilities = quantizer(latents, uniform, tau=2.0)
    logits = quantizer.logits(latents).view(2, 3, 2, 4)
    chosen = (logits - torch.log(-torch.log(uniform))).argmax(-1)                   # (2, 3, 2)
    vectors = torch.cat([quantizer.codevectors[g, chosen[..., g]] for g in range(2)], -1)
    torch.testing.assert_close(out, quantizer.project(vectors))
    torch.testing.assert_close(probabilities, torch.softmax(logits, -1))
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    # Straight through: the gradient is the soft Gumbel softmax's, whose forward value the hard choice replaced.
    soft_latents = latents.detach().clone().requires_grad_(True)
    soft = torch.softmax((quantizer.logits(soft_latents).view(2, 3, 2, 4) - torch.log(-torch.log(uniform))) / 2.0, -1)
    soft_out = quantizer.project(torch.einsum("btgv,gvd->btgd", soft, quantizer.codevectors).flatten(2))
    (soft_out * weights).sum().backward()
    torch.testing.assert_close(latents.grad, soft_latents.grad)


def test_wav2vec2_recipe_views_and_gumbel_schedule():
    cfg = load_config(overrides=SMALL)
    assert cfg.modality == "audio" and cfg.backbone.name == "wav2vec2"
    # The batch chosen on the validation voices, under the user's setting.
    assert cfg.train.batch_size == 8
    assert load_config(overrides=SMALL + ["train.batch_size=32"]).train.batch_size == 32
    method = build_method(cfg)
    assert isinstance(method.inputs, WaveformInputs)
    clips = (torch.randn(4, 16000, generator=torch.Generator().manual_seed(0)) * 3000).to(torch.int16)
    first = method.views(clips, torch.Generator().manual_seed(3))
    again = method.views(clips, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    waves, mask, distractors, uniform = first
    assert waves.shape == (4, 16000) and mask.shape == (4, 49) and distractors.shape == (4, 49, 5)
    assert uniform.shape == (4, 49, 2, 8)
    torch.testing.assert_close(waves.mean(1), torch.zeros(4), atol=1e-4, rtol=0)
    loss, logs = method.loss(first)
    assert logs["contrastive"] == pytest.approx(math.log(6), abs=0.5)     # chance among 1 + 5 candidates
    loss.backward()
    for progress, tau in ((0.0, 2.0), (0.5, 1.0), (1.0, 0.5)):
        method.after_step(progress)
        assert float(method.gumbel_tau) == pytest.approx(tau)
    with pytest.raises(ConfigError, match="at least 720 samples"):
        method.views(clips[:, :700], torch.Generator().manual_seed(3))
    with pytest.raises(ConfigError, match="mask_length must be >= 2"):
        load_config(overrides=SMALL + ["method.mask_length=1"])
    set_in_python = load_config(overrides=SMALL)
    set_in_python.method.mask_length = 1             # past load_config's check: the method checks it again
    with pytest.raises(ConfigError, match="mask_length must be >= 2"):
        build_method(set_in_python)
    with pytest.raises(ConfigError, match="waveform encoder"):
        build_method(load_config(overrides=["method.name=wav2vec2", "data.source=x", "backbone.name=audio_cnn"]))


def test_wav2vec2_trains_and_resumes_through_the_commands(tmp_path):
    from selfsup.cli import main
    from small_data import write_tones
    data = write_tones(tmp_path / "tones")
    runs = tmp_path / "runs"
    common = ["train.threads=1", "eval.online_every=0", "eval.report=false", "train.batch_size=16", "audio.seconds=0.5"]
    assert main(["pretrain", "--method", "wav2vec2", "--data", str(data), "--runs-dir", str(runs), "--name", "w",
                 "--quiet", "train.steps=4", "eval.after_pretrain=[knn]", *SMALL[2:], *common]) == 0
    assert (runs / "w" / "eval" / "knn.json").is_file()
    assert main(["pretrain", "--resume", str(runs / "w"), "--quiet", "train.steps=6"]) == 0
