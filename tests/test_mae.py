"""MAE: patch masking, patchify, the per-patch-normalised loss on hidden patches only (against a loop),
an encoder that sees only the visible patches, the recipe, and a short training run."""
import json

import pytest
import torch

import selfsup.backbones.registry
from selfsup.augment import AugmentConfig
from selfsup.backbones import build_backbone
from selfsup.backbones.vit import VisionTransformer
from selfsup.config import ConfigError, load_config
from selfsup.data import ImageSet, load_images
from selfsup.methods.mae import MAE, MAEConfig, mae_loss
from selfsup.methods.masking import num_masked, patchify, random_masking, unpatchify
from selfsup.run import knn_report, load_run
from selfsup.train import pretrain


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n,ratio", [(49, 0.75), (25, 0.75), (16, 0.5), (49, 0.0), (4, 0.9)])
def test_masking_hides_round_n_ratio_patches_per_sample(n, ratio):
    keep, mask, restore = random_masking(6, n, ratio, generator())
    hidden = min(round(n * ratio), n - 1)
    assert mask.shape == (6, n) and mask.dtype == torch.bool
    assert (mask.sum(1) == hidden).all()
    assert keep.shape == (6, n - hidden)
    for b in range(6):
        assert keep[b].tolist() == (~mask[b]).nonzero().flatten().tolist()     # the visible ones, ascending
        # restore puts [visible, hidden] back in grid order
        order = torch.cat([keep[b], mask[b].nonzero().flatten()])
        assert torch.equal(order[restore[b]], torch.arange(n))


def test_masking_is_a_function_of_the_generator_and_differs_across_samples():
    _, a, _ = random_masking(8, 49, 0.75, generator(3))
    _, b, _ = random_masking(8, 49, 0.75, generator(3))
    _, c, _ = random_masking(8, 49, 0.75, generator(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(row.tolist()) for row in a}) == 8


def test_mask_ratio_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="mask ratio"):
        num_masked(49, 1.0)
    with pytest.raises(ConfigError, match="mask_ratio"):
        load_config(overrides=["method.name=mae", "method.mask_ratio=1.2"])
    with pytest.raises(ConfigError, match="decoder_heads"):
        load_config(overrides=["method.name=mae", "method.decoder_dim=128", "method.decoder_heads=3"])


def test_patchify_matches_a_loop_and_unpatchify_inverts_it():
    x = torch.randn(2, 3, 8, 12)
    p = 4
    patches = patchify(x, p)
    assert patches.shape == (2, 6, p * p * 3)
    for b in range(2):
        for r in range(2):
            for c in range(3):
                block = x[b, :, r * p:(r + 1) * p, c * p:(c + 1) * p]            # (C, p, p)
                torch.testing.assert_close(patches[b, r * 3 + c], block.permute(1, 2, 0).flatten())
    torch.testing.assert_close(unpatchify(patches, p, 8, 12, 3), x)


def reference_mae_loss(pred, target, mask, norm_pix, eps=1e-6):
    """Loops: per hidden patch, the mean over its pixels of (pred - t)^2, t normalised by the patch's
    own mean and unbiased variance; averaged over the hidden patches."""
    total, count = 0.0, 0
    for b in range(pred.shape[0]):
        for n in range(pred.shape[1]):
            if not mask[b, n]:
                continue
            t = [float(v) for v in target[b, n]]
            if norm_pix:
                mean = sum(t) / len(t)
                var = sum((v - mean) ** 2 for v in t) / (len(t) - 1)
                t = [(v - mean) / (var + eps) ** 0.5 for v in t]
            total += sum((float(q) - v) ** 2 for q, v in zip(pred[b, n], t)) / len(t)
            count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("b,n,p", [(2, 4, 3), (3, 9, 16)])
def test_mae_loss_matches_loops(norm_pix, b, n, p):
    torch.manual_seed(b * n)
    pred, target = torch.randn(b, n, p), torch.randn(b, n, p) * 3 + 1
    _, mask, _ = random_masking(b, n, 0.5, generator(b))
    got = mae_loss(pred, target, mask, norm_pix).item()
    assert got == pytest.approx(reference_mae_loss(pred, target, mask, norm_pix), rel=1e-5)


def test_mae_loss_ignores_visible_patches():
    torch.manual_seed(0)
    pred, target = torch.randn(4, 16, 8, requires_grad=True), torch.randn(4, 16, 8)
    _, mask, _ = random_masking(4, 16, 0.75, generator())
    loss = mae_loss(pred, target, mask)
    changed = pred.detach().clone()
    changed[~mask] = 100.0
    assert mae_loss(changed, target, mask).item() == pytest.approx(loss.item(), rel=1e-6)
    loss.backward()
    assert pred.grad[~mask].abs().max() == 0
    assert (pred.grad[mask].abs().sum(-1) > 0).all()


def test_mae_loss_is_zero_for_the_normalised_target_and_checks_shapes():
    target = torch.randn(2, 5, 6)
    t = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert mae_loss(t, target, mask).item() == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match="mae_loss expects"):
        mae_loss(torch.randn(2, 5, 6), torch.randn(2, 5, 7), mask)


def small_mae(ratio=0.75, size=20, depth=2):
    torch.manual_seed(0)
    backbone = VisionTransformer(32, depth, 2, patch_size=4, in_channels=1, image_size=size)
    aug = AugmentConfig(size=size, mean=[0.5], std=[0.25])
    return MAE(backbone, MAEConfig(mask_ratio=ratio, decoder_dim=16, decoder_depth=1, decoder_heads=2), aug)


def test_views_draw_the_mask_from_the_step_generator():
    method = small_mae()
    batch = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    x, keep, mask = method.views(batch, generator(7))
    assert x.shape == (4, 1, 20, 20) and mask.shape == (4, 25) and keep.shape == (4, 25 - 19)
    assert (mask.sum(1) == round(25 * 0.75)).all()
    again = method.views(batch, generator(7))
    assert all(torch.equal(u, v) for u, v in zip((x, keep, mask), again))


def test_the_decoder_gets_each_visible_token_at_its_own_position_mask_tokens_elsewhere_and_positions(monkeypatch):
    """MAE's un-shuffle: the encoded visible patches go back to their own grid positions (a wrong scatter
    index fails), every hidden position holds the mask token, and the decoder's position embeddings are
    added to all of them. The encoder's tokens are replaced by markers: visible patch p of sample b
    carries the value 100 * b + p + 1 in every channel."""
    method = small_mae()
    batch = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=generator(2))
    x, keep, mask = method.views(batch, generator(5))
    dim = method.cfg.decoder_dim
    markers = (100 * torch.arange(3)[:, None] + keep + 1).float()                  # (B, n_keep)
    monkeypatch.setattr(method.decoder_embed, "forward", lambda latent: torch.cat(
        [torch.full((3, 1, dim), -5.0), markers[..., None].expand(-1, -1, dim)], dim=1))
    seen = []
    monkeypatch.setattr(method.decoder, "forward", lambda tokens: seen.append(tokens) or tokens)
    method.reconstruct(x, keep)
    without_positions = seen[0] - method.decoder_pos_embed(5, 5, x.device)          # (B, 1 + 25, dim)
    assert torch.all(without_positions[:, 0] == -5.0)                              # the class token first
    for b in range(3):
        for p in range(25):
            token = without_positions[b, 1 + p]
            if mask[b, p]:
                torch.testing.assert_close(token, method.mask_token[0, 0].detach())
            else:
                torch.testing.assert_close(token, torch.full((dim,), 100.0 * b + p + 1))
    assert method.decoder_pos_embed(5, 5, x.device)[0, 1:].abs().sum() > 0         # positions really added


def test_the_encoder_sees_only_the_visible_patches():
    method = small_mae()
    batch = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    x, keep, mask = method.views(batch, generator())
    seen = []
    method.backbone.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    loss, _ = method.loss([x, keep, mask])
    assert seen == [torch.Size([3, 1 + keep.shape[1], 32])]
    # Hidden patches' pixels change only the target, never the encoder's output.
    pixels = x.clone()
    hidden = unpatchify(mask[..., None].expand(-1, -1, 16).float(), 4, 20, 20, 1).bool()
    pixels[hidden] += 3.0
    with torch.no_grad():
        torch.testing.assert_close(method.backbone.forward_tokens(x, keep), method.backbone.forward_tokens(pixels, keep))


def test_prediction_at_visible_patches_does_not_change_the_loss():
    method = small_mae()
    batch = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    x, keep, mask = method.views(batch, generator())
    torch.manual_seed(1)
    with torch.no_grad():
        base, _ = method.loss([x, keep, mask])
    real = method.reconstruct

    def visible_scrambled(x, keep):
        pred = real(x, keep)
        return torch.where(mask[..., None], pred, torch.randn_like(pred) * 50)
    method.reconstruct = visible_scrambled
    with torch.no_grad():
        scrambled, _ = method.loss([x, keep, mask])
    assert scrambled.item() == pytest.approx(base.item(), rel=1e-6)


def test_gradient_reaches_encoder_decoder_and_mask_token():
    method = small_mae().train()
    batch = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    loss, logs = method.loss(method.views(batch, generator()))
    loss.backward()
    for name in ("backbone.patch_embed.weight", "backbone.cls_token", "decoder_embed.weight", "mask_token",
                 "decoder_pred.weight"):
        grad = dict(method.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert set(logs) == {"loss"}


def test_mae_needs_a_vit():
    with pytest.raises(ValueError, match="ViT backbone"):
        MAE(build_backbone("resnet18", width=0.125, in_channels=1), MAEConfig(), AugmentConfig())


def test_config_applies_the_recipe():
    cfg = load_config(overrides=["method.name=mae"])
    assert isinstance(cfg.method, MAEConfig)
    assert (cfg.method.mask_ratio, cfg.method.norm_pix_loss) == (0.75, True)
    assert cfg.backbone.name == "vit_tiny"
    assert (cfg.optim.name, cfg.optim.betas, cfg.optim.weight_decay) == ("adamw", (0.9, 0.95), 0.05)
    assert cfg.optim.warmup_epochs > 0
    assert cfg.augment.crop_scale == (0.2, 1.0)
    user = load_config(overrides=["method.name=mae", "optim.lr=0.01", "method.decoder_depth=4"])
    assert user.optim.lr == 0.01 and user.method.decoder_depth == 4 and user.optim.name == "adamw"


def noisy(images_u8: torch.Tensor, seed: int) -> torch.Tensor:
    """tiny_fashion's bright blocks (220 on 0-40) turned into faint ones (+80) under heavier noise (0-100):
    raw pixels still separate the classes perfectly, a random-initialised ViT's class token only half the time."""
    noise = torch.randint(0, 100, images_u8.shape, generator=generator(seed))
    return (noise + (images_u8 > 100) * 80).to(torch.uint8)


def test_short_training_beats_random_init_on_knn(tiny_fashion, tmp_path, monkeypatch, one_thread):
    """A 2-block ViT (the presets are too slow for a unit test) on a noisy tiny_fashion."""
    monkeypatch.setitem(selfsup.backbones.registry._REGISTRY, "vit_test",
                        lambda patch_size=4, pos_embed="sincos", in_channels=3, image_size=28: VisionTransformer(
                            64, 2, 4, patch_size=patch_size, pos_embed=pos_embed, in_channels=in_channels,
                            image_size=image_size))
    train, test = (load_images("fashion-mnist", split, data_dir=str(tiny_fashion)) for split in ("train", "test"))
    train, test = (ImageSet(noisy(s.images, i), s.labels) for i, s in enumerate((train, test)))
    cfg = load_config(overrides=["method.name=mae", "backbone.name=vit_test", "train.batch_size=32",
                                 "train.precision=fp32", "train.threads=1", "train.log_every=1", "optim.lr=2e-3",
                                 "optim.warmup_epochs=1", "train.epochs=4", "eval.online_every=0"])
    result = pretrain(cfg, tmp_path / "run", data=train, progress=False)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    report = knn_report(load_run(tmp_path / "run"), train, test, k=20, progress=False)
    assert result.final_loss < 0.5 * losses[0]
    assert report["knn_top1"] > report["knn_top1_random_init"]
