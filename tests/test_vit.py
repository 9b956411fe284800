"""ViT backbones: shapes at any patch-divisible size, position embeddings, encoding a subset of
patches, parameter counts of the presets, and construction through the config."""
import math

import pytest
import torch

from selfsup.backbones import backbone_names, build_backbone, build_backbone_from_config
from selfsup.backbones.vit import VisionTransformer, sincos_pos_embed
from selfsup.config import BackboneConfig


def small_vit(depth=2, pos_embed="sincos", image_size=20, in_channels=1):
    torch.manual_seed(0)
    return VisionTransformer(32, depth, 2, patch_size=4, pos_embed=pos_embed, in_channels=in_channels,
                             image_size=image_size).eval()


def test_presets_are_registered_and_build_for_fashion_mnist():
    assert {"vit_tiny", "vit_small"} <= set(backbone_names())
    model = build_backbone("vit_tiny", patch_size=4, in_channels=1, image_size=28).eval()
    assert model.feature_dim == 192
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 192)
    assert build_backbone("vit_small", patch_size=4, in_channels=1, image_size=28).feature_dim == 384


@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
@pytest.mark.parametrize("size", [(20, 20), (28, 28), (32, 32), (8, 12)])
def test_any_size_divisible_by_the_patch_runs(pos_embed, size):
    model = small_vit(pos_embed=pos_embed)
    x = torch.randn(3, 1, *size)
    with torch.no_grad():
        y = model(x)
        tokens = model.forward_tokens(x)
    assert y.shape == (3, 32)
    assert tokens.shape == (3, 1 + (size[0] // 4) * (size[1] // 4), 32)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, tokens[:, 0])


def test_channels_last_input_gives_the_same_features():
    model = small_vit(in_channels=3)
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x.contiguous(memory_format=torch.channels_last)))


def test_size_not_divisible_by_the_patch_is_a_clear_error():
    model = small_vit()
    with pytest.raises(ValueError, match=r"30x30 is not divisible by the ViT patch size 4"):
        model(torch.randn(1, 1, 30, 30))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build_backbone("vit_tiny", patch_size=4, image_size=30)
    with pytest.raises(ValueError, match="pos_embed"):
        build_backbone("vit_tiny", patch_size=4, pos_embed="rope")


def test_sincos_matches_the_formula():
    dim, grid_h, grid_w = 8, 3, 5
    table = sincos_pos_embed(dim, grid_h, grid_w)
    assert table.shape == (grid_h * grid_w, dim)
    quarter = dim // 4
    for r in range(grid_h):
        for c in range(grid_w):
            expected = []
            for pos in (r, c):
                freqs = [1 / 10000 ** (i / quarter) for i in range(quarter)]
                expected += [math.sin(pos * f) for f in freqs] + [math.cos(pos * f) for f in freqs]
            torch.testing.assert_close(table[r * grid_w + c], torch.tensor(expected), atol=1e-6, rtol=0)


def test_sincos_is_fixed_and_learned_is_a_parameter_interpolated_to_other_grids():
    sincos, learned = small_vit(pos_embed="sincos"), small_vit(pos_embed="learned")
    assert sincos.pos_embed is None
    assert learned.pos_embed.shape == (1, 1 + 25, 32) and learned.pos_embed.requires_grad
    n_sincos = sum(p.numel() for p in sincos.parameters())
    assert sum(p.numel() for p in learned.parameters()) == n_sincos + 26 * 32
    # The construction grid uses the table as is; another grid gets a bicubic resize of it.
    assert learned.position_embedding(5, 5, "cpu", torch.float32) is learned.pos_embed
    resized = learned.position_embedding(7, 7, "cpu", torch.float32)
    assert resized.shape == (1, 50, 32)
    torch.testing.assert_close(resized[:, 0], learned.pos_embed[:, 0])
    x = torch.randn(2, 1, 28, 28)
    learned.train()
    (learned(x) * torch.randn(2, 32)).sum().backward()      # a plain sum of LayerNorm outputs has no gradient
    assert learned.pos_embed.grad is not None and learned.pos_embed.grad.abs().sum() > 0
    # Sin-cos depends only on the position: a larger grid keeps the smaller one's values at shared cells.
    small, large = sincos.position_embedding(5, 5, "cpu", torch.float32), sincos.position_embedding(7, 7, "cpu", torch.float32)
    torch.testing.assert_close(small[0, 1:].view(5, 5, 32), large[0, 1:].view(7, 7, 32)[:5, :5])
    assert small[0, 0].abs().sum() == 0


def test_keep_subset_with_no_blocks_equals_the_full_tokens_at_the_kept_positions():
    model = small_vit(depth=0)
    x = torch.randn(3, 1, 20, 20)
    keep = torch.stack([torch.randperm(25)[:7] for _ in range(3)])
    with torch.no_grad():
        full, part = model.forward_tokens(x), model.forward_tokens(x, keep)
    assert part.shape == (3, 8, 32)
    torch.testing.assert_close(part[:, 0], full[:, 0])
    torch.testing.assert_close(part[:, 1:], torch.gather(full[:, 1:], 1, keep[..., None].expand(-1, -1, 32)))


@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
def test_keep_all_in_any_order_permutes_the_full_forward(pos_embed):
    model = small_vit(depth=2, pos_embed=pos_embed)
    x = torch.randn(2, 1, 20, 20)
    order = torch.stack([torch.randperm(25) for _ in range(2)])
    with torch.no_grad():
        full, shuffled = model.forward_tokens(x), model.forward_tokens(x, order)
    torch.testing.assert_close(shuffled[:, 0], full[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shuffled[:, 1:], torch.gather(full[:, 1:], 1, order[..., None].expand(-1, -1, 32)),
                               atol=1e-5, rtol=1e-5)


def test_dropped_patches_do_not_reach_the_encoder():
    model = small_vit(depth=2)
    x = torch.randn(2, 1, 20, 20)
    keep = torch.tensor([[0, 6, 24], [3, 4, 16]])
    changed = x.clone()
    changed[:, :, 8:12, :] += 5.0              # grid row 2: patches 10-14, none of them kept
    with torch.no_grad():
        torch.testing.assert_close(model.forward_tokens(x, keep), model.forward_tokens(changed, keep))
        assert not torch.allclose(model(x), model(changed))


@pytest.mark.parametrize("name,expected", [("vit_tiny", 5_524_416), ("vit_small", 21_665_664)])
def test_preset_parameter_counts_match_vit_16_at_224(name, expected):
    """timm's vit_tiny/small_patch16_224 (5.72M / 22.05M) less their 1000-class heads."""
    model = build_backbone(name, patch_size=16, pos_embed="learned", in_channels=3, image_size=224)
    assert sum(p.numel() for p in model.parameters()) == expected
    sincos = build_backbone(name, patch_size=16, pos_embed="sincos", in_channels=3, image_size=224)
    assert sum(p.numel() for p in sincos.parameters()) == expected - 197 * model.feature_dim


def test_built_from_config_with_the_view_size_and_arch_rebuilds_it():
    cfg = BackboneConfig(name="vit_tiny", patch_size=4, pos_embed="learned")
    model = build_backbone_from_config(cfg, in_channels=1, image_size=20)
    assert model.arch == dict(patch_size=4, pos_embed="learned", in_channels=1, image_size=20)
    assert model.pos_embed.shape == (1, 26, 192)
    again = build_backbone("vit_tiny", **model.arch)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_bf16_autocast_forward_and_backward():
    model = small_vit(depth=1).train()
    x = torch.randn(2, 1, 20, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model.forward_tokens(x, torch.tensor([[1, 2, 3], [4, 5, 6]]))
    assert y.shape == (2, 4, 32)
    (y.float() * torch.randn(2, 4, 32)).sum().backward()
    assert model.patch_embed.weight.grad is not None and model.patch_embed.weight.grad.abs().sum() > 0
