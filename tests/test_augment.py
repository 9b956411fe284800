"""Semantics of each batched augmentation on tiny uint8 batches."""
import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.augment import (DRAWS, AugmentConfig, adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation,
                             augment, augment_views, color_jitter, compile_augmentation, eval_transform, gaussian_blur,
                             multi_crop, random_grayscale, random_resized_crop_flip, random_solarize, to_float,
                             views_from_draws)


B, H = 8, 12


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def batch_u8(channels, seed=0):
    torch.manual_seed(seed)
    return torch.randint(0, 256, (B, channels, H, H), dtype=torch.uint8)


def batch_f(channels, seed=0):
    return to_float(batch_u8(channels, seed))


def identity_cfg(**kw):
    base = dict(size=0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0,
                blur_p=0.0, solarize_p=0.0, mean=[], std=[])
    base.update(kw)
    return AugmentConfig(**base)


# ---------------------------------------------------------------- identity settings

@pytest.mark.parametrize("c", [1, 3])
def test_full_crop_without_flip_is_identity(c):
    x = batch_f(c)
    y = random_resized_crop_flip(x, H, (1.0, 1.0), (1.0, 1.0), 0.0, gen())
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("c", [1, 3])
def test_color_jitter_identity_settings(c):
    x = batch_f(c)
    # all strengths 0, always applied
    torch.testing.assert_close(color_jitter(x, 0.0, 0.0, 0.0, 0.0, 1.0, gen()), x, atol=1e-6, rtol=0)
    # strong jitter, never applied
    torch.testing.assert_close(color_jitter(x, 0.8, 0.8, 0.8, 0.4, 0.0, gen()), x, atol=0, rtol=0)


@pytest.mark.parametrize("c", [1, 3])
def test_p0_ops_are_identity(c):
    x = batch_f(c)
    assert torch.equal(random_grayscale(x, 0.0, gen()), x)
    torch.testing.assert_close(gaussian_blur(x, (0.1, 2.0), 0.0, gen()), x, atol=0, rtol=0)
    assert torch.equal(random_solarize(x, 0.0, gen()), x)


@pytest.mark.parametrize("c", [1, 3])
def test_augment_identity_config_is_to_float(c):
    cfg = identity_cfg()
    cfg.validate()
    x = batch_u8(c)
    y = augment(x, cfg, gen())
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, to_float(x), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- flip

@pytest.mark.parametrize("c", [1, 3])
def test_flip_p1_full_crop_is_horizontal_flip_and_involution(c):
    x = batch_f(c)
    y = random_resized_crop_flip(x, H, (1.0, 1.0), (1.0, 1.0), 1.0, gen())
    torch.testing.assert_close(y, torch.flip(x, dims=[-1]), atol=1e-5, rtol=0)
    assert not torch.allclose(y, x)  # the batch is random, so a flip must change it
    z = random_resized_crop_flip(y, H, (1.0, 1.0), (1.0, 1.0), 1.0, gen(1))
    torch.testing.assert_close(z, x, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- grayscale / saturation

def test_grayscale_p1_on_rgb_gives_equal_channels_with_luma():
    x = batch_f(3)
    y = random_grayscale(x, 1.0, gen())
    assert y.shape == x.shape
    torch.testing.assert_close(y[:, 0], y[:, 1], atol=0, rtol=0)
    torch.testing.assert_close(y[:, 0], y[:, 2], atol=0, rtol=0)
    expected = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    torch.testing.assert_close(y[:, 0], expected, atol=1e-6, rtol=0)


def test_grayscale_p1_on_one_channel_is_identity():
    x = batch_f(1)
    assert torch.equal(random_grayscale(x, 1.0, gen()), x)


def test_saturation_zero_gives_gray():
    x = batch_f(3)
    y = adjust_saturation(x, torch.zeros(B))
    torch.testing.assert_close(y[:, 0], y[:, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(y[:, 1], y[:, 2], atol=1e-6, rtol=0)


# ---------------------------------------------------------------- solarize

@pytest.mark.parametrize("c", [1, 3])
def test_solarize_p1(c):
    x = batch_f(c)
    y = random_solarize(x, 1.0, gen())
    flat_x, flat_y = x.flatten().tolist(), y.flatten().tolist()
    for a, b in zip(flat_x, flat_y):
        expected = 1 - a if a >= 0.5 else a
        assert b == pytest.approx(expected, abs=1e-7)


# ---------------------------------------------------------------- brightness / contrast

@pytest.mark.parametrize("c", [1, 3])
def test_brightness_half_halves(c):
    x = batch_f(c)
    y = adjust_brightness(x, torch.full((B,), 0.5))
    torch.testing.assert_close(y, x / 2, atol=1e-7, rtol=0)


@pytest.mark.parametrize("c", [1, 3])
def test_contrast_zero_gives_constant_mean_luma(c):
    x = batch_f(c)
    y = adjust_contrast(x, torch.zeros(B))
    for i in range(B):
        # per-image mean luma, by hand
        total = 0.0
        for r in range(H):
            for col in range(H):
                if c == 3:
                    total += (0.299 * x[i, 0, r, col] + 0.587 * x[i, 1, r, col] + 0.114 * x[i, 2, r, col]).item()
                else:
                    total += x[i, 0, r, col].item()
        mean = total / (H * H)
        torch.testing.assert_close(y[i], torch.full_like(y[i], mean), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- hue

def test_hue_shift_zero_is_identity():
    x = batch_f(3)
    torch.testing.assert_close(adjust_hue(x, torch.zeros(B)), x, atol=1e-5, rtol=0)


def test_hue_shift_changes_colour_but_keeps_gray_gray():
    torch.manual_seed(0)
    x = batch_f(3)
    shift = torch.linspace(-0.5, 0.5, B)
    assert not torch.allclose(adjust_hue(x, torch.full((B,), 0.25)), x, atol=1e-3)
    gray = x[:, :1].expand(-1, 3, -1, -1).contiguous()
    y = adjust_hue(gray, shift)
    torch.testing.assert_close(y[:, 0], y[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(y[:, 0], y[:, 2], atol=1e-5, rtol=0)
    torch.testing.assert_close(y, gray, atol=1e-5, rtol=0)


def test_hue_on_one_channel_is_identity():
    x = batch_f(1)
    assert torch.equal(adjust_hue(x, torch.full((B,), 0.3)), x)


# ---------------------------------------------------------------- blur

@pytest.mark.parametrize("c", [1, 3])
def test_blur_keeps_constant_image(c):
    x = torch.full((B, c, H, H), 0.3)
    y = gaussian_blur(x, (0.5, 2.0), 1.0, gen())
    assert y.shape == x.shape
    torch.testing.assert_close(y.mean(), torch.tensor(0.3), atol=1e-6, rtol=0)
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("c", [1, 3])
def test_blur_reduces_variance_of_noise(c):
    x = batch_f(c)
    y = gaussian_blur(x, (1.0, 2.0), 1.0, gen())
    var_x = x.var(dim=(2, 3))
    var_y = y.var(dim=(2, 3))
    assert bool((var_y < var_x).all()), (var_x, var_y)


# ---------------------------------------------------------------- randomness

def test_draws_are_per_sample():
    one = batch_u8(1)[:1]
    x = one.repeat(B, 1, 1, 1)
    cfg = AugmentConfig(mean=[0.5], std=[0.5])
    cfg.validate()
    y = augment(x, cfg, gen())
    distinct = {tuple(v.flatten().tolist()) for v in y}
    assert len(distinct) > 1


@pytest.mark.parametrize("c", [1, 3])
def test_same_seed_same_views_different_seed_different_views(c):
    x = batch_u8(c)
    cfg = AugmentConfig(blur_p=0.5, solarize_p=0.5, mean=[0.5] * c, std=[0.5] * c)
    a = augment(x, cfg, gen(7))
    b = augment(x, cfg, gen(7))
    d = augment(x, cfg, gen(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, d)


@pytest.mark.parametrize("c", [1, 3])
def test_augment_output_shape_and_dtype(c):
    cfg = AugmentConfig(size=20, blur_p=0.5, solarize_p=0.5)
    y = augment(batch_u8(c), cfg, gen())
    assert y.shape == (B, c, 20, 20)
    assert y.dtype == torch.float32
    y = augment(batch_u8(c), AugmentConfig(size=6), gen())
    assert y.shape == (B, c, 6, 6)


# ---------------------------------------------------------------- validate

def test_validate_rejects_bad_probability():
    with pytest.raises(ValueError, match="flip_p"):
        AugmentConfig(flip_p=1.5).validate()
    with pytest.raises(ValueError, match="solarize_p"):
        AugmentConfig(solarize_p=1.5).validate()


def test_validate_rejects_bad_crop_scale():
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.5, 0.2)).validate()


def test_validate_accepts_defaults():
    AugmentConfig().validate()


def test_eval_transform_keeps_native_size_unless_eval_size_is_set():
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    cfg = AugmentConfig(size=20, mean=[0.5], std=[0.25])
    native = eval_transform(x, cfg)
    assert native.shape == (4, 1, 28, 28)
    torch.testing.assert_close(native, (to_float(x) - 0.5) / 0.25)
    cfg.eval_size = 14
    assert eval_transform(x, cfg).shape == (4, 1, 14, 14)


# ---------------------------------------------------------------- one pass for several views

def test_copies_are_independent_views_of_each_image_in_order():
    """augment_views stacks its copies in one pass: copy j of image i must be image i cropped by row
    j * B + i of the draws, which the same op applied to the batch alone with that row reproduces."""
    x = batch_u8(3)
    cfg = AugmentConfig(size=8, blur_p=0.5, solarize_p=0.5, mean=[0.5] * 3, std=[0.5] * 3)
    views = augment_views(x, cfg, gen(4), copies=3)
    assert len(views) == 3 and all(v.shape == (B, 3, 8, 8) for v in views)
    draws = torch.rand(3 * B, DRAWS, generator=gen(4))
    for j in range(3):
        alone = views_from_draws(x, draws[j * B:(j + 1) * B], cfg)
        torch.testing.assert_close(views[j], alone, atol=1e-5, rtol=0)
    assert not torch.allclose(views[0], views[1])


def test_multi_crop_gives_global_then_local_views():
    cfg = AugmentConfig(size=10, local_crops=3, local_size=6, mean=[0.5], std=[0.5])
    views = multi_crop(batch_u8(1), cfg, gen(), global_views=2)
    assert [v.shape[-1] for v in views] == [10, 10, 6, 6, 6]


def test_compiled_augmentation_gives_the_eager_views():
    """torch.compile fuses the ops (train.compile on CUDA) but must not change the views a seed gives,
    or a resumed or replayed run would see other images."""
    x = batch_u8(3)
    cfg = AugmentConfig(size=10, blur_p=0.5, solarize_p=0.5, mean=[0.5] * 3, std=[0.25] * 3)
    eager = augment_views(x, cfg, gen(9), copies=2)
    try:
        compile_augmentation()
        compiled = augment_views(x, cfg, gen(9), copies=2)
    finally:
        compile_augmentation(False)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- a recipe per global view

def test_each_global_view_takes_its_own_recipe():
    """BYOL-style asymmetric views: here view 1 never solarizes and view 2 always does, so a white image
    stays white in view 1 and turns black in view 2; local crops keep the shared recipe."""
    white = torch.full((4, 1, 12, 12), 255, dtype=torch.uint8)
    cfg = identity_cfg(views=[{"solarize_p": 0.0}, {"solarize_p": 1.0}], local_crops=1, local_size=6,
                       local_crop_scale=(1.0, 1.0))
    cfg.validate()
    first, second, local = multi_crop(white, cfg, gen(), global_views=2)
    assert torch.all(first == 1.0) and torch.all(second == 0.0) and torch.all(local == 1.0)
    assert cfg.for_view(1).solarize_p == 1.0 and cfg.for_view(0).solarize_p == 0.0 and cfg.solarize_p == 0.0


def test_per_view_recipes_are_checked():
    with pytest.raises(ValueError, match="local_crops"):
        AugmentConfig(views=[{"local_crops": 2}, {}]).validate()
    with pytest.raises(ValueError, match="solarize_p"):
        AugmentConfig(views=[{"solarize_p": 2.0}, {}]).validate()
    with pytest.raises(ValueError, match="3 recipes for 2 global views"):
        multi_crop(batch_u8(1), AugmentConfig(views=[{}, {}, {}]), gen(), global_views=2)


@pytest.mark.parametrize("method", ["byol", "barlow", "vicreg", "dino"])
def test_byol_style_methods_take_the_papers_asymmetric_solarization(method):
    from selfsup.config import load_config
    cfg = load_config(overrides=[f"method.name={method}"]).augment
    assert [cfg.for_view(i).solarize_p for i in (0, 1)] == [0.0, 0.2] and cfg.blur_p == 0.0
    assert load_config(overrides=["method.name=simclr"]).augment.views == []


# ---------------------------------------------------------------- the fused ops against their definitions

def _luma(x):
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3] if x.shape[1] == 3 else x.mean(1, keepdim=True)


def _reference_views(batch, u, cfg):
    """views_from_draws written op by op from each op's definition (torchvision's colour jitter with a
    fixed order, hue as a rotation in YIQ, F.affine_grid for the crop of each copy, the blur as one 2-d
    kernel per image), a pass per op."""
    x = batch.float() / 255
    b = batch.shape[0]
    copies = u.shape[0] // b
    crops = []
    for j in range(copies):
        d = u[j * b:(j + 1) * b]
        area = cfg.crop_scale[0] + d[:, 0] * (cfg.crop_scale[1] - cfg.crop_scale[0])
        log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
        aspect = torch.exp(log_lo + d[:, 1] * (log_hi - log_lo))
        w, h = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
        sign = torch.where(d[:, 4] < cfg.flip_p, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = w * sign, (1 - w) * (2 * d[:, 2] - 1)
        theta[:, 1, 1], theta[:, 1, 2] = h, (1 - h) * (2 * d[:, 3] - 1)
        grid = F.affine_grid(theta, [b, x.shape[1], cfg.size, cfg.size], align_corners=False)
        crops.append(F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False))
    x = torch.cat(crops)
    per = lambda v: v.view(-1, 1, 1, 1)
    between = lambda col, lo, hi: per(lo + u[:, col] * (hi - lo))
    y = (x * between(6, 1 - cfg.brightness, 1 + cfg.brightness)).clamp(0, 1)
    mean = per(_luma(y).mean(dim=(1, 2, 3)))
    y = ((y - mean) * between(7, 1 - cfg.contrast, 1 + cfg.contrast) + mean).clamp(0, 1)
    if x.shape[1] == 3:
        gray = _luma(y)
        y = ((y - gray) * between(8, 1 - cfg.saturation, 1 + cfg.saturation) + gray).clamp(0, 1)
        to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        angle = (-cfg.hue + u[:, 9] * 2 * cfg.hue) * 2 * math.pi
        yiq = torch.einsum("ij,bjhw->bihw", to_yiq, y)
        cos, sin = per(torch.cos(angle))[:, 0], per(torch.sin(angle))[:, 0]
        rotated = torch.stack([yiq[:, 0], cos * yiq[:, 1] - sin * yiq[:, 2], sin * yiq[:, 1] + cos * yiq[:, 2]], 1)
        y = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), rotated).clamp(0, 1)
    x = torch.where(per(u[:, 5] < cfg.jitter_p), y, x)
    if x.shape[1] == 3:
        x = torch.where(per(u[:, 10] < cfg.grayscale_p), _luma(x).expand_as(x), x)
    k = max(3, int(0.1 * cfg.size) // 2 * 2 + 1)
    offsets = torch.arange(k, dtype=torch.float64) - k // 2
    blurred = []
    for i in range(x.shape[0]):                   # one 2-d gaussian per image, on its reflected border
        if u[i, 11] >= cfg.blur_p:
            blurred.append(x[i])
            continue
        sigma = cfg.blur_sigma[0] + u[i, 12].item() * (cfg.blur_sigma[1] - cfg.blur_sigma[0])
        line = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
        square = (torch.outer(line, line) / line.sum() ** 2).float()
        padded = F.pad(x[i:i + 1], (k // 2,) * 4, mode="reflect")
        blurred.append(F.conv2d(padded, square.expand(x.shape[1], 1, k, k), groups=x.shape[1])[0])
    x = torch.stack(blurred)
    x = torch.where(per(u[:, 13] < cfg.solarize_p) & (x >= 0.5), 1 - x, x)
    return (x - torch.tensor(cfg.mean).view(1, -1, 1, 1)) / torch.tensor(cfg.std).view(1, -1, 1, 1)


@pytest.mark.parametrize("c", [1, 3])
def test_fused_ops_give_the_views_of_their_op_by_op_definitions(c):
    """The colour ops run as per-sample factors and channel matrices with identity values for samples that
    draw no jitter or grayscale, the crop's grid is built from its rows and columns and the blur's kernel
    is a softmax: the views must be those of the plain definitions to float rounding, for jittered and
    unjittered, blurred and unblurred samples alike."""
    cfg = AugmentConfig(size=10, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, jitter_p=0.6,
                        grayscale_p=0.4, blur_p=0.5, blur_sigma=(0.3, 1.5), solarize_p=0.5, mean=[0.4] * c,
                        std=[0.3] * c)
    x = batch_u8(c)
    u = torch.rand(2 * B, DRAWS, generator=gen(5))
    for column, p in ((5, cfg.jitter_p), (10, cfg.grayscale_p), (11, cfg.blur_p), (13, cfg.solarize_p)):
        assert 0 < int((u[:, column] < p).sum()) < 2 * B            # both kinds of sample are present
    torch.testing.assert_close(views_from_draws(x, u, cfg), _reference_views(x, u, cfg), atol=2e-5, rtol=0)


@pytest.mark.parametrize("c", [1, 3])
def test_views_inside_an_autocast_region_are_the_float32_views(c):
    """The online monitor makes views inside bf16 autocast: the channel matrices, the contrast's mean and
    the blur must still run in float32, or the views differ (and a lerp of mixed dtypes fails)."""
    cfg = AugmentConfig(size=10, blur_p=0.5, solarize_p=0.5, mean=[0.5] * c, std=[0.25] * c)
    plain = augment_views(batch_u8(c), cfg, gen(3), copies=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = augment_views(batch_u8(c), cfg, gen(3), copies=2)
    for a, b in zip(plain, inside):
        assert b.dtype == torch.float32
        assert torch.equal(a, b)
