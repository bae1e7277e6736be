"""Clip augmentation of Section 4.1, split between data workers and the training device.

Worker side (uint8, one clip at a time, in data.py's workers):
    random_short_side_crop  random short side in [256, 320], random 224 crop, resizing only the crop
    random_resized_crop     PySlowFast's random resized crop (area and aspect ranges; the rhoBYOL recipe)
    uniform_crop_boxes      the 3 (or 1) spatial crops of multi-view testing, as PySlowFast
    crop_resize / hflip     the primitives they use
Device side (float, batched, on the training device, CPU or GPU):
    GpuAugment              colour jitter (p=0.8), grayscale (p=0.2), Gaussian blur (p=0.5); other
                            parameter sets: PYSLOWFAST_BYOL_JITTER, PYSLOWFAST_FINETUNE_JITTER
    PRETRAIN_RECIPES        pretraining augmentation: the paper's text ("paper"), PySlowFast's
                            BYOL_SlowR50_8x8.yaml ("pyslowfast_byol"), or the paper's without colour
                            ("paper_nocolour", the CPU-scale recipe of reproduce/mini.sh)
    normalize               mean/std normalisation; STUDENT_MEAN/STD are PySlowFast's Kinetics values
    student_input           clips (uint8 or float in [0, 1]) -> the online network's normalised input

Every random parameter is drawn once per clip and applied to all T frames of that clip ("a consistent
spatial augmentation on its frames", Section 4.1); clips of one video are augmented independently.
Teachers normalise their own input (teachers.py), so normalisation is not part of GpuAugment.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# PySlowFast Kinetics normalisation for the online (student) network.
STUDENT_MEAN = (0.45, 0.45, 0.45)
STUDENT_STD = (0.225, 0.225, 0.225)

# The paper writes "{brightness, contrast, saturation, hue} = {0.2, 0.2, 0.2, 0.2, 0.05}": five numbers
# for four parameters. We read the repeated 0.2 as a typo and take brightness = contrast = saturation
# = 0.2 and hue = 0.05: the last number must be the hue (hue factors live in [-0.5, 0.5] and are
# always listed last and smallest, e.g. SimCLR/BYOL's 0.8/0.8/0.8/0.2 and 0.4/0.4/0.2/0.1 end with the
# hue), and the three remaining parameters then all read 0.2 whichever 0.2 is the extra one.
COLOR_JITTER = dict(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05)
JITTER_P = 0.8
GRAYSCALE_P = 0.2
BLUR_P = 0.5
BLUR_SIGMA = (0.1, 2.0)

# The colour parameter sets GpuAugment is built with (keyword arguments of GpuAugment).
# Section 4.1, iBoot's text: the paper's pretraining recipe.
PAPER_JITTER = dict(COLOR_JITTER, jitter_p=JITTER_P, grayscale_p=GRAYSCALE_P, blur_p=BLUR_P)
# PySlowFast configs/contrastive_ssl/BYOL_SlowR50_8x8.yaml: SSL_COLOR_BRI_CON_SAT [0.6, 0.6, 0.6],
# SSL_COLOR_HUE 0.15, COLOR_RND_GRAYSCALE 0.2, SSL_MOCOV2_AUG True; with the MoCo v2 flag,
# datasets/transform.py color_jitter_video_ssl applies RandomApply(ColorJitter, p=0.8), then
# RandomGrayscale, then RandomApply(GaussianBlur(sigma [0.1, 2.0]), p=0.5).
PYSLOWFAST_BYOL_JITTER = dict(brightness=0.6, contrast=0.6, saturation=0.6, hue=0.15, jitter_p=0.8,
                              grayscale_p=0.2, blur_p=0.5)
# PySlowFast configs/contrastive_ssl/finetune_ucf_Slow_R50_syn8.yaml: SSL_COLOR_JITTER True,
# SSL_COLOR_BRI_CON_SAT [0.4, 0.4, 0.4], SSL_COLOR_HUE 0.1, COLOR_RND_GRAYSCALE 0.2 and no
# SSL_MOCOV2_AUG, so color_jitter_video_ssl's other branch: RandomGrayscale(0.2) FIRST, then ColorJitter
# on every clip (no RandomApply), and no blur.
PYSLOWFAST_FINETUNE_JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, jitter_p=1.0,
                                  grayscale_p=0.2, blur_p=0.0, grayscale_first=True)
# BYOL_SlowR50_8x8.yaml: TRAIN_JITTER_SCALES_RELATIVE [0.2, 0.766] (crop area / frame area) and
# TRAIN_JITTER_ASPECT_RELATIVE [0.75, 1.3333] (w / h), used by datasets/utils.py spatial_sampling.
RESIZED_CROP_AREA = (0.2, 0.766)
RESIZED_CROP_ASPECT = (0.75, 1.3333)
# Pretraining recipes (pretrain.py --augmentation): worker-side crop (None: random short side in
# [256, 320] then a random 224 crop, the paper's text; else (area, aspect) of a random resized crop)
# and the device-side colour parameters. Both flip horizontally with p=0.5 (PySlowFast RANDOM_FLIP).
PRETRAIN_RECIPES = {
    "paper": dict(resized_crop=None, jitter=PAPER_JITTER),
    "pyslowfast_byol": dict(resized_crop=(RESIZED_CROP_AREA, RESIZED_CROP_ASPECT), jitter=PYSLOWFAST_BYOL_JITTER),
    # A deviation from Section 4.1 (not from Eq. 1), for small budgets: the paper's crops and flips,
    # no colour jitter, grayscale or blur (every probability 0: GpuAugment passes the clips through), so
    # the teacher's target carries no colour noise the student cannot predict (docs/learning.md).
    "paper_nocolour": dict(resized_crop=None, jitter=dict(PAPER_JITTER, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)),
}

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)


def normalize(x, mean, std):
    """(x - mean) / std per channel, x float (N, 3, T, H, W) or (N, 3, H, W)."""
    if x.dim() not in (4, 5) or x.shape[1] != 3:
        raise ValueError(f"normalize expects (N, 3, T, H, W) or (N, 3, H, W), got {tuple(x.shape)}")
    shape = (1, 3) + (1,) * (x.dim() - 2)
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - mean) / std


def student_input(clips):
    """The online (student) network's input: clips uint8 in [0, 255] or float in [0, 1], (N, 3, T, H, W),
    normalised with PySlowFast's Kinetics mean and std. The one place this normalisation happens."""
    x = clips.float().div(255.0) if clips.dtype == torch.uint8 else clips
    return normalize(x, STUDENT_MEAN, STUDENT_STD)


def student_input_to_frames(x):
    """The inverse of student_input for float clips: back to [0, 1] (to show a teacher the same clips)."""
    shape = (1, 3) + (1,) * (x.dim() - 2)
    mean = torch.as_tensor(STUDENT_MEAN, dtype=x.dtype, device=x.device).view(shape)
    std = torch.as_tensor(STUDENT_STD, dtype=x.dtype, device=x.device).view(shape)
    return x * std + mean


# ----------------------------------------------------------------------------------------------
# Worker side: geometry on uint8 frames
# ----------------------------------------------------------------------------------------------

def _frame_hw(frames):
    return tuple(frames[0].shape[:2])


def crop_resize(frames, box, size):
    """Crop box=(y0, x0, h, w) (source pixels) out of uint8 frames and resize it to size x size.

    frames: a uint8 tensor (T, H, W, 3) or a list of T numpy arrays (H, W, 3) (decoded frames, which
    are then copied crop only). Returns uint8 (3, T, size, size). Only the crop is resized, which is
    cheaper than resizing the full frame and then cropping, and gives the same picture up to sub-pixel
    rounding of the box.
    """
    y0, x0, h, w = box
    if isinstance(frames, (list, tuple)):
        crop = torch.from_numpy(np.stack([f[y0:y0 + h, x0:x0 + w] for f in frames]))
    else:
        crop = frames[:, y0:y0 + h, x0:x0 + w]  # (T, h, w, 3)
    crop = crop.permute(0, 3, 1, 2)  # (T, 3, h, w), channels-last in memory: fast uint8 resize path
    if h != size or w != size:
        # Antialiased bilinear on uint8 (torch's native kernel): no aliasing when shrinking 1080p.
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return crop.permute(1, 0, 2, 3).contiguous()


def hflip(clip):
    """Horizontal flip of (3, T, H, W)."""
    return clip.flip(-1)


def short_side_scale_box(height, width, short_side, crop_size, y_offset, x_offset):
    """The source box that becomes pixels [y_offset, +crop) x [x_offset, +crop) after resizing the
    short side to `short_side` (PySlowFast's scale: long side = floor(long / short * short_side))."""
    scale = short_side / min(height, width)
    h = max(1, min(height, int(round(crop_size / scale))))
    w = max(1, min(width, int(round(crop_size / scale))))
    y0 = min(height - h, int(round(y_offset / scale)))
    x0 = min(width - w, int(round(x_offset / scale)))
    return y0, x0, h, w


def scaled_size(height, width, short_side):
    """(new_h, new_w) with the short side at short_side, as PySlowFast's random_short_side_scale_jitter."""
    if width < height:
        return int(math.floor(height / width * short_side)), short_side
    return short_side, int(math.floor(width / height * short_side))


def random_short_side_box(height, width, crop_size, short_side_range, rng, inverse_uniform=False):
    """Random short side in [min, max] then a random crop_size crop. The side is uniform (PySlowFast's
    default), or with inverse_uniform its reciprocal is uniform in [1/max, 1/min] (PySlowFast
    DATA.INV_UNIFORM_SAMPLE, set by finetune_SSv2_Slow_R50_syn8.yaml; transform.random_short_side_scale_jitter)."""
    lo, hi = short_side_range
    if inverse_uniform:
        short_side = int(round(1.0 / rng.uniform(1.0 / hi, 1.0 / lo)))
    else:
        short_side = int(round(rng.uniform(lo, hi)))
    short_side = max(short_side, crop_size)
    new_h, new_w = scaled_size(height, width, short_side)
    y_off = int(rng.integers(0, new_h - crop_size + 1))
    x_off = int(rng.integers(0, new_w - crop_size + 1))
    return short_side_scale_box(height, width, short_side, crop_size, y_off, x_off)


def random_short_side_crop(frames, crop_size, short_side_range, rng, flip=True, inverse_uniform=False):
    """Training geometry of one clip: frames uint8 (T, H, W, 3) (or a list of (H, W, 3) arrays) ->
    uint8 (3, T, crop, crop). One short side, one crop box and one flip decision for all T frames;
    rng is a numpy Generator.
    """
    box = random_short_side_box(*_frame_hw(frames), crop_size, short_side_range, rng, inverse_uniform)
    clip = crop_resize(frames, box, crop_size)
    if flip and rng.random() < 0.5:
        clip = hflip(clip)
    return clip


def random_resized_box(height, width, area, aspect, rng, tries=10):
    """PySlowFast's random resized crop box (datasets/transform.py _get_param_spatial_crop, as called by
    random_resized_crop): up to 10 draws of an area fraction uniform in `area` and an aspect ratio w/h
    log-uniform in `aspect`, sides rounded; the first box that fits is placed uniformly at random.
    If none fits, the centre crop of the frame clamped to the aspect range. Returns (y0, x0, h, w)."""
    for _ in range(tries):
        target = rng.uniform(*area) * height * width
        ratio = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(aspect):
        w, h = width, int(round(width / min(aspect)))
    elif in_ratio > max(aspect):
        h, w = height, int(round(height * max(aspect)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(frames, crop_size, area, aspect, rng, flip=True):
    """Training geometry of the rhoBYOL recipe: one random resized box for all T frames of a clip,
    resized to crop_size x crop_size, then a horizontal flip with p=0.5. uint8 (3, T, crop, crop)."""
    box = random_resized_box(*_frame_hw(frames), area, aspect, rng)
    clip = crop_resize(frames, box, crop_size)
    if flip and rng.random() < 0.5:
        clip = hflip(clip)
    return clip


def uniform_crop_boxes(height, width, crop_size, num_crops, short_side=None, single_index=1):
    """Test-time crops as PySlowFast (datasets/utils.py spatial_sampling -> transform.uniform_crop):
    short side resized to `short_side` (default crop_size), then num_crops (3 or 1) crops.

    With 3 crops: left/centre/right along the long side (top/centre/bottom for portrait video); with
    1: crop `single_index` (1, the centre, as kinetics.py; ssv2.py takes index 0, the left/top one).
    Returned as source boxes (y0, x0, h, w).
    """
    if num_crops not in (1, 3):
        raise ValueError(f"test_crops must be 1 or 3, got {num_crops}")
    short_side = max(short_side or crop_size, crop_size)
    new_h, new_w = scaled_size(height, width, short_side)
    spatial = [single_index] if num_crops == 1 else [0, 1, 2]
    boxes = []
    for idx in spatial:
        y_off = int(math.ceil((new_h - crop_size) / 2))
        x_off = int(math.ceil((new_w - crop_size) / 2))
        if new_h > new_w:
            y_off = {0: 0, 1: y_off, 2: new_h - crop_size}[idx]
        else:
            x_off = {0: 0, 1: x_off, 2: new_w - crop_size}[idx]
        boxes.append(short_side_scale_box(height, width, short_side, crop_size, y_off, x_off))
    return boxes


# ----------------------------------------------------------------------------------------------
# Device side: colour, grayscale and blur on batched float clips
# ----------------------------------------------------------------------------------------------

def _gray(x):
    """Luma of x (N, 3, ...) as (N, 1, ...)."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _per_clip(f, x):
    return f.view((-1,) + (1,) * (x.dim() - 1)).to(x.dtype)


def adjust_brightness(x, factor):
    """x (N, 3, T, H, W) in [0,1], factor (N,): as torchvision.adjust_brightness on every frame."""
    return (x * _per_clip(factor, x)).clamp_(0, 1)


def adjust_contrast(x, factor):
    """Blend with the mean grey level of each frame (torchvision computes it per image, i.e. per frame)."""
    mean = _gray(x).mean(dim=(-2, -1), keepdim=True)  # (N, 1, T, 1, 1)
    f = _per_clip(factor, x)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def adjust_saturation(x, factor):
    f = _per_clip(factor, x)
    return (f * x + (1 - f) * _gray(x)).clamp_(0, 1)


def _rgb_to_hsv(x):
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc = (maxc - r) / cr_divisor
    gc = (maxc - g) / cr_divisor
    bc = (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return h, s, maxc


def _hsv_to_rgb(h, s, v):
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int32) % 6
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    # (r, g, b) in each of the six hue sectors, as colorsys.hsv_to_rgb
    sectors = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
    rgb = [torch.zeros_like(v) for _ in range(3)]
    for k, sector in enumerate(sectors):
        in_sector = i == k
        rgb = [torch.where(in_sector, sector[c], rgb[c]) for c in range(3)]
    return torch.stack(rgb, dim=1)


def adjust_hue(x, factor):
    """Rotate the hue by factor (N,) in [-0.5, 0.5] turns, as torchvision.adjust_hue."""
    h, s, v = _rgb_to_hsv(x)
    h = torch.remainder(h + _per_clip(factor, h), 1.0)
    return _hsv_to_rgb(h, s, v)


def to_grayscale(x):
    return _gray(x).expand_as(x).contiguous()


def blur_kernel_size(image_size):
    """10% of the image side, odd: 23 px at 224 (SimCLR/BYOL), scaled down for the small CPU crops."""
    k = int(0.1 * image_size)
    return max(3, k + 1 if k % 2 == 0 else k)


def gaussian_blur(x, sigma, kernel_size):
    """Separable Gaussian blur of x (N, 3, T, H, W) with one sigma per clip (N,), reflect padding as
    torchvision.gaussian_blur; every frame of a clip gets the same kernel."""
    n, c, t, h, w = x.shape
    half = kernel_size // 2
    pos = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (pos.view(1, -1) / sigma.to(x).view(-1, 1)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (N, k)
    # Clips become conv groups: (1, N, 3T, H, W) convolved with one 1-D kernel per group.
    y = x.reshape(1, n, c * t, h, w)
    pad_h, pad_w = min(half, h - 1), min(half, w - 1)
    y = F.pad(y, (pad_w, pad_w, pad_h, pad_h, 0, 0), mode="reflect") if (pad_h or pad_w) else y
    kh = kernel[:, half - pad_h:half + pad_h + 1]
    kw = kernel[:, half - pad_w:half + pad_w + 1]
    kh = kh / kh.sum(dim=1, keepdim=True)
    kw = kw / kw.sum(dim=1, keepdim=True)
    y = F.conv3d(y, kh.view(n, 1, 1, -1, 1), groups=n)
    y = F.conv3d(y, kw.view(n, 1, 1, 1, -1), groups=n)
    return y.reshape(n, c, t, h, w)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def sample_params(n, generator=None, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05,
                  jitter_p=JITTER_P, grayscale_p=GRAYSCALE_P, blur_p=BLUR_P, blur_sigma=BLUR_SIGMA):
    """Per-clip random parameters for n clips (CPU tensors), drawn as torchvision's ColorJitter:
    factors uniform in [1-b, 1+b] (hue in [-h, h]) and the four operations in a random order."""
    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    order = torch.argsort(torch.rand(n, 4, generator=generator), dim=1)
    return dict(
        jitter=torch.rand(n, generator=generator) < jitter_p,
        order=order,  # order[i, k] = the operation applied k-th to clip i
        brightness=uniform(max(0.0, 1 - brightness), 1 + brightness),
        contrast=uniform(max(0.0, 1 - contrast), 1 + contrast),
        saturation=uniform(max(0.0, 1 - saturation), 1 + saturation),
        hue=uniform(-hue, hue),
        grayscale=torch.rand(n, generator=generator) < grayscale_p,
        blur=torch.rand(n, generator=generator) < blur_p,
        sigma=uniform(*blur_sigma),
    )


def _apply_jitter(x, p):
    factors = (p["brightness"], p["contrast"], p["saturation"], p["hue"])
    for step in range(4):
        for op in range(4):
            idx = torch.nonzero(p["jitter"] & (p["order"][:, step] == op)).flatten()
            if idx.numel():
                x[idx] = _JITTER_OPS[op](x[idx], factors[op][idx])


def _apply_grayscale(x, p):
    idx = torch.nonzero(p["grayscale"]).flatten()
    if idx.numel():
        x[idx] = to_grayscale(x[idx])


def apply_params(x, params, kernel_size=None, grayscale_first=False):
    """Apply per-clip parameters to x (N, 3, T, H, W): uint8 in [0,255] or float in [0,1] -> float [0,1].

    Order: colour jitter (its four ops in the clip's order), grayscale, blur, as SimCLR/BYOL and
    PySlowFast's MoCo v2 branch; grayscale_first: grayscale before the jitter, as PySlowFast's other
    branch (color_jitter_video_ssl without SSL_MOCOV2_AUG, the fine-tuning recipe).
    """
    if x.dim() != 5 or x.shape[1] != 3:
        raise ValueError(f"expected clips (N, 3, T, H, W), got {tuple(x.shape)}")
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float().clone()
    dev = x.device
    p = {k: v.to(dev) for k, v in params.items()}
    steps = (_apply_grayscale, _apply_jitter) if grayscale_first else (_apply_jitter, _apply_grayscale)
    for step in steps:
        step(x, p)
    idx = torch.nonzero(p["blur"]).flatten()
    if idx.numel():
        k = kernel_size or blur_kernel_size(min(x.shape[-2:]))
        x[idx] = gaussian_blur(x[idx], p["sigma"][idx], k)
    return x


class GpuAugment(nn.Module):
    """Batched colour jitter (p=0.8), grayscale (p=0.2) and Gaussian blur (sigma U[0.1, 2], p=0.5) by
    default (the paper); other parameter sets: GpuAugment(**PYSLOWFAST_BYOL_JITTER) and so on.

    forward(x uint8 or float (N, 3, T, H, W)) -> float (N, 3, T, H, W) in [0, 1], every clip with its
    own parameters, the same on all its T frames. Parameters come from a CPU torch.Generator (seeded
    by `seed`, `reseed`, or passed to forward) so runs are reproducible on any device.
    """

    def __init__(self, brightness=COLOR_JITTER["brightness"], contrast=COLOR_JITTER["contrast"],
                 saturation=COLOR_JITTER["saturation"], hue=COLOR_JITTER["hue"], jitter_p=JITTER_P,
                 grayscale_p=GRAYSCALE_P, blur_p=BLUR_P, blur_sigma=BLUR_SIGMA, kernel_size=None, seed=0,
                 grayscale_first=False):
        super().__init__()
        self.cfg = dict(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue,
                        jitter_p=jitter_p, grayscale_p=grayscale_p, blur_p=blur_p, blur_sigma=blur_sigma)
        self.kernel_size, self.grayscale_first = kernel_size, grayscale_first
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self, seed):
        self.generator.manual_seed(seed)

    def sample_params(self, n, generator=None):
        return sample_params(n, generator or self.generator, **self.cfg)

    @torch.no_grad()
    def forward(self, x, generator=None):
        return apply_params(x, self.sample_params(x.shape[0], generator), self.kernel_size, self.grayscale_first)

    def extra_repr(self):
        return ", ".join(f"{k}={v}" for k, v in dict(self.cfg, grayscale_first=self.grayscale_first).items())
