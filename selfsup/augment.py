"""Batched image augmentations in torch, on whole uint8 batches, on the training device.

Every op draws its randomness per sample from one ``torch.Generator``, so a batch
augmented twice with equally seeded generators gives the same views, and a resumed
run (which reseeds from (seed, step, rank)) draws the same views as an unbroken one.

1-channel images are first class: saturation, hue and grayscale need colour and
are the identity on 1 channel; brightness, contrast, blur and solarization work
on any channel count.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """One view recipe: SimCLR's (Chen et al., 2020), tuned for 28x28 grayscale Fashion-MNIST, with
    the milder colour jitter of MoCo v2 and BYOL (0.4, 0.4, 0.4, 0.1) that most methods here were
    measured with; SimCLR's recipe (SimCLR.recipe) makes it stronger.

    Training views are made at `size`; features for evaluation at `eval_size`. Views smaller than
    the data trade detail for speed (20 px: 1.6x the images/s of 28 px on Fashion-MNIST), and
    evaluating at a larger size than the training crops makes up for random-resized crops
    showing objects larger than whole images do (Touvron et al., 2019, "Fixing the train-test
    resolution discrepancy"); docs/results.md has the measurements.
    """
    size: int = 20                     # training view side in pixels; 0 = the data set's own size
    eval_size: int = 0                 # evaluation side in pixels; 0 = the data set's own size
    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4            # colour only
    hue: float = 0.1                   # colour only
    grayscale_p: float = 0.2           # colour only
    blur_p: float = 0.0                # SimCLR drops blur for small images
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    local_crops: int = 0               # extra small views (multi-crop, Caron et al. 2020); 0 = off
    local_size: int = 12               # their side in pixels
    local_crop_scale: tuple[float, float] = (0.1, 0.4)
    mean: list[float] = field(default_factory=list)   # empty = measured on the training data
    std: list[float] = field(default_factory=list)
    # Settings that differ for each global view, one mapping per view, e.g. BYOL's asymmetric views
    # [{solarize_p: 0.0}, {solarize_p: 0.2}]; empty = every global view takes the recipe above.
    views: list[dict] = field(default_factory=list)

    def for_view(self, index: int) -> "AugmentConfig":
        """The recipe of global view `index`: this one with augment.views[index] applied (if given)."""
        if not self.views:
            return self
        return dataclasses.replace(self, views=[], **{k: tuple(v) if isinstance(getattr(self, k), tuple) else v
                                                     for k, v in self.views[index].items()})

    def validate(self) -> None:
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"augment.{name} must be a probability in [0, 1], got {p}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"augment.crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"augment.crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        if self.local_crops < 0 or self.local_crops and self.local_size < 1:
            raise ValueError("augment.local_crops must be >= 0 and augment.local_size >= 1")
        if not 0.0 < self.local_crop_scale[0] <= self.local_crop_scale[1] <= 1.0:
            raise ValueError(f"augment.local_crop_scale must satisfy 0 < min <= max <= 1, got {self.local_crop_scale}")
        if self.size < 0 or self.eval_size < 0:
            raise ValueError(f"augment.size and augment.eval_size must be >= 0 (0 keeps the data set's size), "
                             f"got {self.size} and {self.eval_size}")
        if len(self.mean) != len(self.std):
            raise ValueError("augment.mean and augment.std must have the same length")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"augment.std values must be > 0, got {self.std}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"augment.hue must lie in [0, 0.5], got {self.hue}")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"augment.blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}")
        per_view = {f.name for f in dataclasses.fields(self)} - {"views", "local_crops", "local_size",
                                                                  "local_crop_scale", "mean", "std", "eval_size"}
        for i, overrides in enumerate(self.views):
            unknown = sorted(set(overrides) - per_view)
            if unknown:
                raise ValueError(f"augment.views[{i}] sets {', '.join(unknown)}, which a single view cannot "
                                 f"change; it may set: {', '.join(sorted(per_view))}")
            self.for_view(i).validate()


@dataclass
class CroppedViews:
    """A streamed batch of B images: each image's crops, already cut; it stands where the uint8 batch
    (B, C, H, W) of the in-memory path stands, so `shape` and `device` answer as that batch would.

    crops: uint8 (V * B, C, S, S), crop j of image i at row j * B + i (the layout augment_views makes);
    local: the multi-crop's small crops in the same layout, or None."""
    crops: torch.Tensor
    views: int
    local: "CroppedViews | None" = None

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.crops.shape[0] // self.views, *self.crops.shape[1:]))

    @property
    def device(self) -> torch.device:
        return self.crops.device

    def take(self, first: int, copies: int) -> torch.Tensor:
        """Crops first .. first + copies - 1 of every image, stacked as augment_views stacks copies."""
        if first + copies > self.views:
            raise ValueError(f"the streamed batch holds {self.views} crop(s) of each image; the method asked for "
                             f"crop {first + copies - 1}")
        b = self.shape[0]
        return self.crops[first * b:(first + copies) * b]

    def to(self, device: torch.device, non_blocking: bool = False) -> "CroppedViews":
        local = self.local.to(device, non_blocking) if self.local is not None else None
        return CroppedViews(self.crops.to(device, non_blocking=non_blocking), self.views, local)

    def pin_memory(self) -> "CroppedViews":          # what DataLoader(pin_memory=True) calls
        return CroppedViews(self.crops.pin_memory(), self.views,
                            self.local.pin_memory() if self.local is not None else None)


# BYOL's two global views (Grill et al. 2020, table 6), which Barlow Twins, VICReg and DINO took over:
# blur with probability 1.0 / 0.1 and solarization 0.0 / 0.2. At the 20 px views here the blur's sigma,
# scaled from 224 px, would be under 0.2 px, so blur stays off (blur_p 0, as SimCLR's authors and the
# CIFAR settings of these methods' reference reproductions have it) and the views differ in solarization.
ASYMMETRIC_VIEWS = [{"solarize_p": 0.0}, {"solarize_p": 0.2}]


# Each op reads its per-sample random numbers, U[0, 1), from columns of one (N, k) tensor. A view draws
# all of them in one call (DRAWS columns), so a step's randomness costs one kernel per view size, and
# the ops themselves are pure functions of their input and draws, which torch.compile can fuse.
CROP_DRAWS, JITTER_DRAWS, GRAY_DRAWS, BLUR_DRAWS, SOLARIZE_DRAWS = 5, 5, 1, 2, 1
DRAWS = CROP_DRAWS + JITTER_DRAWS + GRAY_DRAWS + BLUR_DRAWS + SOLARIZE_DRAWS


# On a GPU each op is a kernel launch, and at small images the launches, not the arithmetic, take the
# time; at large images each pass over the batch does. So every op below computes its per-sample numbers
# for all samples (and all of its columns) at once, from constants cached on the device, and touches the
# images in one or two passes: a per-sample factor or blend, or a per-sample matrix times each pixel's
# channels (one batched matmul), then a clamp in place. Factors of 1 and identity matrices leave an image
# exactly as it was, so a sample that draws no jitter or grayscale gets those rather than a further pass
# that picks between changed and unchanged images.

def _per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


@functools.lru_cache(maxsize=256)    # a recipe needs about 20 per device and view size
def _constant(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A small constant on the device, copied there once (a host copy each step would sync a GPU)."""
    return torch.tensor(values, device=device, dtype=dtype)


def _uniform(u: torch.Tensor, lows: tuple, highs: tuple) -> torch.Tensor:
    """Draws U[0, 1) in the columns of u mapped onto [low, high) per column, in one kernel."""
    low = _constant(lows, u.device, u.dtype)
    return torch.addcmul(low, u, _constant(tuple(h - lo for lo, h in zip(lows, highs)), u.device, u.dtype))


def _pixel_centres(side: int, like: torch.Tensor) -> torch.Tensor:
    """The centres of `side` pixels in grid_sample's [-1, 1] coordinates (align_corners=False)."""
    return _constant(tuple((2 * i + 1) / side - 1 for i in range(side)), like.device, like.dtype)


def crop_flip(x: torch.Tensor, size: int | tuple[int, int], scale, ratio, flip_p: float, u: torch.Tensor) -> torch.Tensor:
    """Crop a box of area fraction ~U(scale) and aspect ~logU(ratio) from each image, flip it
    horizontally with probability flip_p, and resize it to size x size (or size = (height, width)): one
    ``grid_sample``.
    u: (k * B, CROP_DRAWS) draws (area, aspect, centre x, centre y, flip) for k crops of each of the
    B images of x; crop j of image i is row j * B + i of the result.

    A box that would not fit is shrunk to fit (torchvision instead retries, then centre-crops).
    """
    n, b, c = u.shape[0], x.shape[0], x.shape[1]
    copies = n // b
    area, log_aspect, centres = _uniform(u[:, :4], (scale[0], math.log(ratio[0]), -1.0, -1.0),
                                         (scale[1], math.log(ratio[1]), 1.0, 1.0)).split([1, 1, 2], dim=1)
    # (n, 2): the box's width and height as fractions of the image's, sqrt(area * aspect) and sqrt(area / aspect)
    sides = (area * torch.exp(log_aspect * _constant((1.0, -1.0), x.device, x.dtype))).sqrt_().clamp_(max=1.0)
    offsets = (1 - sides) * centres
    flip = torch.where(u[:, 4:5] < flip_p, -1.0, 1.0)
    height, width = (size, size) if isinstance(size, int) else size
    # The box is axis-aligned, so a sampling point's x depends on its column only and its y on its row
    # only: the grid is two small (n, side) tensors broadcast together, not a matmul over every point.
    xs = torch.addcmul(offsets[:, :1], sides[:, :1] * flip, _pixel_centres(width, x))
    ys = torch.addcmul(offsets[:, 1:], sides[:, 1:], _pixel_centres(height, x))
    # The k crops of an image are sampled as one tall output of it, so the image is never copied.
    xs = xs.view(copies, b, 1, width).transpose(0, 1)
    ys = ys.view(copies, b, height, 1).transpose(0, 1)
    grid = torch.stack(torch.broadcast_tensors(xs, ys), dim=-1).view(b, copies * height, width, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(b, c, copies, height, width).permute(2, 0, 1, 3, 4).reshape(n, c, height, width)


def random_resized_crop_flip(x: torch.Tensor, size: int, scale, ratio, flip_p: float, gen) -> torch.Tensor:
    """crop_flip with its draws taken from `gen`."""
    return crop_flip(x, size, scale, ratio, flip_p, torch.rand(x.shape[0], CROP_DRAWS, generator=gen, device=x.device))


_LUMA = (0.299, 0.587, 0.114)                       # ITU-R 601 weights of R, G and B in an image's luma


def _luma_weights(x: torch.Tensor) -> torch.Tensor:
    """(C,) weights of each channel in an image's luma: ITU-R 601 for RGB, the plain mean otherwise."""
    c = x.shape[1]
    return _constant(_LUMA if c == 3 else (1 / c,) * c, x.device, x.dtype)


def _to_luma_matrix(x: torch.Tensor) -> torch.Tensor:
    """(C, C): every output channel is the input's luma."""
    return _luma_weights(x).expand(x.shape[1], -1)


def _identity(x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    return _constant(tuple(tuple(float(i == j) for j in range(c)) for i in range(c)), x.device, x.dtype)


def _mix_channels(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) with each pixel's channels multiplied by its sample's (B, C, C) matrix."""
    b, c, h, w = x.shape
    return torch.bmm(matrix, x.reshape(b, c, h * w)).view(b, c, h, w)


def adjust_brightness(x, factor):
    return (x * _per_sample(factor)).clamp_(0, 1)


def adjust_contrast(x, factor):
    """Blend each image with its mean luma: factor * x + (1 - factor) * mean, clamped to [0, 1]."""
    mean = x.mean(dim=(2, 3)) @ _luma_weights(x)
    return torch.lerp(_per_sample(mean), x, _per_sample(factor)).clamp_(0, 1)   # exactly x at factor 1


def adjust_saturation(x, factor):
    """Blend each RGB image with its grayscale: factor * x + (1 - factor) * luma, clamped to [0, 1]."""
    if x.shape[1] != 3:
        return x
    matrix = torch.lerp(_to_luma_matrix(x), _identity(x), factor.view(-1, 1, 1))  # the identity at factor 1
    return _mix_channels(x, matrix).clamp_(0, 1)


def _yiq_hue_terms() -> tuple:
    """Rotating the chroma (I, Q) of YIQ by an angle a is, in RGB, the matrix identity + (cos a - 1) * C +
    sin a * T, with C the chroma's projection and T its quarter turn (both taken into RGB): their entries
    as two rows of nine, so that a batch of matrices is one matmul."""
    to_yiq = torch.tensor(((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312)),
                          dtype=torch.float64)
    from_yiq = torch.linalg.inv(to_yiq)
    chroma = torch.diag(torch.tensor((0.0, 1.0, 1.0), dtype=torch.float64))
    quarter_turn = torch.tensor(((0.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)), dtype=torch.float64)
    return tuple(tuple((from_yiq @ m @ to_yiq).flatten().tolist()) for m in (chroma, quarter_turn))


_HUE_TERMS = _yiq_hue_terms()


def adjust_hue(x, shift):
    """Rotate the chroma of RGB images by shift * 360 degrees in YIQ space (shift in [-0.5, 0.5]); a shift
    of 0 gives the identity matrix, and so the image exactly as it was."""
    if x.shape[1] != 3:
        return x
    angle = shift * (2 * math.pi)
    turn = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1) - _constant((1.0, 0.0), x.device, x.dtype)
    matrix = torch.addmm(_identity(x).reshape(1, 9), turn, _constant(_HUE_TERMS, x.device, x.dtype))
    return _mix_channels(x, matrix.view(-1, 3, 3)).clamp_(0, 1)


def jitter(x, brightness, contrast, saturation, hue, p, u):
    """Brightness, contrast, saturation, hue, in that fixed order, on a random p of the batch.
    u: (N, JITTER_DRAWS) draws (whether, then one factor per adjustment)."""
    lows = tuple(max(0.0, 1 - strength) for strength in (brightness, contrast, saturation)) + (-hue,)
    highs = (1 + brightness, 1 + contrast, 1 + saturation, hue)
    unchanged = _constant((1.0, 1.0, 1.0, 0.0), x.device, x.dtype)        # the factors that change nothing
    factors = torch.where(u[:, :1] < p, _uniform(u[:, 1:], lows, highs), unchanged)
    brightness_factor, contrast_factor, saturation_factor, hue_shift = factors.unbind(1)
    out = adjust_brightness(x, brightness_factor) if brightness > 0 else x
    out = adjust_contrast(out, contrast_factor) if contrast > 0 else out
    if x.shape[1] == 3:
        out = adjust_saturation(out, saturation_factor) if saturation > 0 else out
        out = adjust_hue(out, hue_shift) if hue > 0 else out
    return out


def color_jitter(x, brightness, contrast, saturation, hue, p, gen):
    """jitter with its draws taken from `gen`."""
    u = torch.rand(x.shape[0], JITTER_DRAWS, generator=gen, device=x.device)
    return jitter(x, brightness, contrast, saturation, hue, p, u)


def grayscale(x, p, u):
    """Colour images become their luma on a random p of the batch. u: (N, GRAY_DRAWS)."""
    if x.shape[1] != 3:
        return x
    return _mix_channels(x, torch.where((u[:, 0] < p).view(-1, 1, 1), _to_luma_matrix(x), _identity(x)))


def random_grayscale(x, p, gen):
    return grayscale(x, p, torch.rand(x.shape[0], GRAY_DRAWS, generator=gen, device=x.device))


def blur(x, sigma_range, p, u):
    """Separable gaussian blur on a random p of the batch, kernel side ~10% of the image (odd, >= 3),
    sigma ~U(sigma_range). u: (N, BLUR_DRAWS) draws (whether, sigma)."""
    b, c, h, w = x.shape
    k = max(3, int(0.1 * min(h, w)) // 2 * 2 + 1)
    half_squares = _constant(tuple(-(i - k // 2) ** 2 / 2 for i in range(k)), x.device, x.dtype)
    sigma = _uniform(u[:, 1:], (sigma_range[0],), (sigma_range[1],))
    kernel = torch.softmax(half_squares / sigma.square(), dim=1)     # exp(-offset^2 / (2 sigma^2)), summing to 1
    centre = _constant(tuple(float(i == k // 2) for i in range(k)), x.device, x.dtype)
    kernel = torch.where(u[:, :1] < p, kernel, centre)               # (B, k); the centre alone leaves x as it is
    kernel = kernel.repeat_interleave(c, 0)                          # (B*C, k)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), kernel.view(b * c, 1, 1, k), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), kernel.view(b * c, 1, k, 1), groups=b * c)
    return y.view(b, c, h, w)


def gaussian_blur(x, sigma_range, p, gen):
    return blur(x, sigma_range, p, torch.rand(x.shape[0], BLUR_DRAWS, generator=gen, device=x.device))


def solarize(x, p, u, threshold: float = 0.5):
    """Values at or above threshold become 1 - value on a random p of the batch. u: (N, SOLARIZE_DRAWS)."""
    per_sample_threshold = torch.where(u[:, 0] < p, threshold, math.inf)     # inf: no value reaches it
    return torch.where(x >= _per_sample(per_sample_threshold), 1 - x, x)


def random_solarize(x, p, gen, threshold: float = 0.5):
    return solarize(x, p, torch.rand(x.shape[0], SOLARIZE_DRAWS, generator=gen, device=x.device), threshold)


def to_float(batch_u8: torch.Tensor) -> torch.Tensor:
    return torch.div(batch_u8, 255.0)                  # true division: float32, in one kernel


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    if not mean:
        return x
    # (x - mean) / std as one multiply-add
    scale = _constant(tuple(1 / s for s in std), x.device, x.dtype).view(1, -1, 1, 1)
    shift = _constant(tuple(-m / s for m, s in zip(mean, std)), x.device, x.dtype).view(1, -1, 1, 1)
    return torch.addcmul(shift, x, scale)


def views_from_draws(batch_u8: torch.Tensor, u: torch.Tensor, cfg: AugmentConfig,
                     cropped: bool = False) -> torch.Tensor:
    """uint8 (B, C, H, W) and draws (k * B, DRAWS) -> k augmented, normalised views of the batch, stacked
    (k * B, C, size, size): view j of image i is row j * B + i. A pure function of its inputs, in float32
    even inside an autocast region (an online evaluation's), which would round the channel matrices.
    cropped: batch_u8 holds the k * B crops already cut and flipped (streamed images; CroppedViews),
    so the crop's draws go unused and a crop of another side is only resized."""
    with torch.autocast(batch_u8.device.type, enabled=False):
        x = to_float(batch_u8)
        size = cfg.size or x.shape[-1]
        crop_u, jitter_u, gray_u, blur_u, solarize_u = u.split(
            [CROP_DRAWS, JITTER_DRAWS, GRAY_DRAWS, BLUR_DRAWS, SOLARIZE_DRAWS], dim=1)
        if not cropped:
            x = crop_flip(x, size, cfg.crop_scale, cfg.crop_ratio, cfg.flip_p, crop_u)
        elif x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = jitter(x, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, cfg.jitter_p, jitter_u)
        x = grayscale(x, cfg.grayscale_p, gray_u)
        if cfg.blur_p > 0:
            x = blur(x, cfg.blur_sigma, cfg.blur_p, blur_u)
        if cfg.solarize_p > 0:
            x = solarize(x, cfg.solarize_p, solarize_u)
        return normalize(x, cfg.mean, cfg.std)


_views_kernel = views_from_draws


def compile_augmentation(enabled: bool = True) -> None:
    """Run views_from_draws through torch.compile from now on (in this process), which fuses the
    colour, grayscale, solarize and normalisation ops into a few kernels; the draws, and so the
    views a seed gives, stay as they are. enabled=False goes back to eager."""
    global _views_kernel
    _views_kernel = torch.compile(views_from_draws, dynamic=False) if enabled else views_from_draws


def augment_views(batch_u8: torch.Tensor | CroppedViews, cfg: AugmentConfig, gen: torch.Generator, copies: int = 1,
                  first: int = 0) -> list[torch.Tensor]:
    """uint8 (B, C, H, W) -> `copies` augmented, normalised float views (B, C, size, size), made in one
    pass over the stacked copies with the draws of all of them taken from `gen` in one call. A streamed
    batch (CroppedViews) gives its crops `first` .. `first + copies - 1` instead of cutting new ones."""
    u = torch.rand(copies * batch_u8.shape[0], DRAWS, generator=gen, device=batch_u8.device)
    if isinstance(batch_u8, CroppedViews):
        return list(_views_kernel(batch_u8.take(first, copies), u, cfg, True).chunk(copies))
    return list(_views_kernel(batch_u8, u, cfg).chunk(copies))


def augment(batch_u8: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """uint8 (B, C, H, W) -> one augmented, normalised float view (B, C, size, size)."""
    return augment_views(batch_u8, cfg, gen)[0]


def multi_crop(batch_u8: torch.Tensor | CroppedViews, cfg: AugmentConfig, gen: torch.Generator,
               global_views: int = 2) -> list[torch.Tensor]:
    """`global_views` views at cfg.size, then cfg.local_crops small views at cfg.local_size cut from
    cfg.local_crop_scale of the image (same colour recipe): the multi-crop of SwAV / DINO. With
    cfg.views each global view takes its own recipe (one pass each); else all take one pass."""
    if cfg.views and len(cfg.views) != global_views:
        raise ValueError(f"augment.views gives {len(cfg.views)} recipes for {global_views} global views")
    if cfg.views:
        views = [augment_views(batch_u8, cfg.for_view(i), gen, first=i)[0] for i in range(global_views)]
    else:
        views = augment_views(batch_u8, cfg, gen, global_views)
    if cfg.local_crops:
        local = dataclasses.replace(cfg, size=cfg.local_size, crop_scale=cfg.local_crop_scale, views=[])
        small = batch_u8.local if isinstance(batch_u8, CroppedViews) else batch_u8
        views += augment_views(small, local, gen, cfg.local_crops)
    return views


def light_crop_flip(batch_u8: torch.Tensor, seed: int, scale=(0.5, 1.0)) -> torch.Tensor:
    """uint8 -> uint8 at the same size: a random resized crop of `scale` of the image and a coin-flip
    horizontal flip per image, drawn from `seed`; the light augmentation of evaluation protocols."""
    gen = torch.Generator(device=batch_u8.device).manual_seed(seed)
    x = random_resized_crop_flip(to_float(batch_u8), batch_u8.shape[-1], scale, (3 / 4, 4 / 3), 0.5, gen)
    return x.mul(255).round().clamp(0, 255).to(torch.uint8)


def eval_transform(batch_u8: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """The deterministic view used for features: resize to cfg.eval_size (if set), normalise."""
    x = to_float(batch_u8)
    size = cfg.eval_size or x.shape[-1]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return normalize(x, cfg.mean, cfg.std)


def channel_stats(images_u8: torch.Tensor, max_images: int = 10000, chunk: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, from up to max_images evenly spaced images,
    summed in chunks so large images never need a float copy of the whole sample."""
    sample = images_u8[::max(1, images_u8.shape[0] // max_images)]
    total = torch.zeros(sample.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, sample.shape[0], chunk):
        x = sample[start:start + chunk].to(torch.float64).div_(255)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    count = sample.shape[0] * sample.shape[2] * sample.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
    return mean.tolist(), std.tolist()
