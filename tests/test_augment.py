"""augment.py: per-clip geometry in workers, batched colour/grayscale/blur on the device."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import augment

import torchvision.transforms.functional as TF  # noqa: E402


def frame(seed=0, h=20, w=24):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def as_clip(img, t=1):
    """(3, H, W) -> (1, 3, t, H, W)."""
    return img.unsqueeze(1).repeat(1, t, 1, 1).unsqueeze(0)


# ------------------------------------------------------------------------------------------------
# Normalisation
# ------------------------------------------------------------------------------------------------

def test_normalize_hand_values():
    x = torch.full((2, 3, 4, 5, 5), 0.9)
    y = augment.normalize(x, augment.STUDENT_MEAN, augment.STUDENT_STD)
    assert torch.allclose(y, torch.full_like(y, (0.9 - 0.45) / 0.225))
    img = torch.zeros(1, 3, 2, 2)
    y = augment.normalize(img, (0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    assert y[0, :, 0, 0].tolist() == [-1.0, -1.0, 0.0]
    with pytest.raises(ValueError):
        augment.normalize(torch.zeros(3, 4, 4), augment.STUDENT_MEAN, augment.STUDENT_STD)


# ------------------------------------------------------------------------------------------------
# Colour operations against torchvision on single frames and hand-computed values
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op,tv_op,factor", [
    (augment.adjust_brightness, TF.adjust_brightness, 1.17),
    (augment.adjust_contrast, TF.adjust_contrast, 0.83),
    (augment.adjust_saturation, TF.adjust_saturation, 1.2),
    (augment.adjust_hue, TF.adjust_hue, 0.04),
    (augment.adjust_hue, TF.adjust_hue, -0.05),
])
def test_jitter_ops_match_torchvision_per_frame(op, tv_op, factor):
    frames = [frame(1), frame(2)]
    clip = torch.stack(frames, dim=1).unsqueeze(0)  # (1, 3, 2, H, W)
    out = op(clip, torch.tensor([factor]))
    for t, img in enumerate(frames):
        assert torch.allclose(out[0, :, t], tv_op(img, factor), atol=1e-5)


def test_hue_shift_of_pure_red_by_hand():
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1, 1)
    # hue 0 -> 1/3 turns: pure green
    assert torch.allclose(augment.adjust_hue(red, torch.tensor([1 / 3])).flatten(), torch.tensor([0., 1., 0.]),
                          atol=1e-6)
    # hue 0.05: sector 0, f = 0.3 -> (v, v(1 - s(1 - f)), v(1 - s)) = (1, 0.3, 0)
    assert torch.allclose(augment.adjust_hue(red, torch.tensor([0.05])).flatten(),
                          torch.tensor([1.0, 0.3, 0.0]), atol=1e-6)


def test_grayscale_uses_luma_weights_and_equal_channels():
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1, 1).expand(1, 3, 2, 3, 3)
    g = augment.to_grayscale(red)
    assert torch.allclose(g, torch.full_like(g, 0.2989))
    x = torch.rand(4, 3, 2, 8, 8)
    p = augment.sample_params(4, torch.Generator().manual_seed(0), jitter_p=0, grayscale_p=1, blur_p=0)
    y = augment.apply_params(x, p)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])


def test_full_pipeline_matches_torchvision_sequence():
    """One clip, explicit parameters: jitter ops in the clip's order, then grayscale, then blur,
    against the same sequence of torchvision calls on each frame."""
    frames = [frame(3, 32, 32), frame(4, 32, 32)]
    clip = torch.stack(frames, dim=1).unsqueeze(0)
    params = dict(jitter=torch.tensor([True]), order=torch.tensor([[3, 1, 0, 2]]),
                  brightness=torch.tensor([0.9]), contrast=torch.tensor([1.15]),
                  saturation=torch.tensor([0.85]), hue=torch.tensor([0.03]),
                  grayscale=torch.tensor([False]), blur=torch.tensor([True]), sigma=torch.tensor([1.3]))
    out = augment.apply_params(clip, params, kernel_size=7)
    ops = [lambda im: TF.adjust_brightness(im, 0.9), lambda im: TF.adjust_contrast(im, 1.15),
           lambda im: TF.adjust_saturation(im, 0.85), lambda im: TF.adjust_hue(im, 0.03)]
    for t, img in enumerate(frames):
        for o in (3, 1, 0, 2):
            img = ops[o](img)
        img = TF.gaussian_blur(img, [7, 7], [1.3, 1.3])
        assert torch.allclose(out[0, :, t], img, atol=1e-4)


def test_blur_reduces_high_frequencies_and_keeps_constants():
    checker = ((torch.arange(16).view(-1, 1) + torch.arange(16).view(1, -1)) % 2).float()
    x = checker.expand(2, 3, 3, 16, 16).contiguous()
    y = augment.gaussian_blur(x, torch.tensor([0.5, 2.0]), 5)

    def hf_energy(z):
        return (z[..., 1:, :] - z[..., :-1, :]).pow(2).mean(dim=(1, 2, 3, 4))

    e_in, e_out = hf_energy(x), hf_energy(y)
    assert (e_out < 0.5 * e_in).all() and e_out[1] < e_out[0]  # larger sigma, smoother
    const = torch.full((1, 3, 2, 9, 9), 0.3)
    assert torch.allclose(augment.gaussian_blur(const, torch.tensor([1.0]), 5), const, atol=1e-6)
    assert augment.blur_kernel_size(224) == 23 and augment.blur_kernel_size(64) == 7


# ------------------------------------------------------------------------------------------------
# Per-clip parameters: same on all frames, independent between clips, right rates and ranges
# ------------------------------------------------------------------------------------------------

def test_same_parameters_on_all_frames_of_a_clip():
    img = frame(5, 24, 24)
    clips = as_clip(img, t=4).repeat(16, 1, 1, 1, 1)  # 16 clips, each 4 identical frames
    out = augment.GpuAugment(jitter_p=1.0, grayscale_p=0.3, blur_p=0.5, seed=1)(clips)
    assert torch.allclose(out, out[:, :, :1].expand_as(out), atol=1e-6)


def test_clips_get_independent_parameters():
    img = frame(6, 24, 24)
    clips = as_clip(img, t=2).repeat(8, 1, 1, 1, 1)
    out = augment.GpuAugment(jitter_p=1.0, grayscale_p=0.0, blur_p=0.0, seed=2)(clips)
    flat = out.flatten(1)
    dist = torch.cdist(flat, flat)
    assert (dist + torch.eye(8) * 1e9).min() > 1e-3  # no two clips augmented alike


def test_probabilities_and_ranges_within_binomial_bounds():
    n = 4000
    p = augment.sample_params(n, torch.Generator().manual_seed(0), **augment.COLOR_JITTER)
    for key, prob in (("jitter", 0.8), ("grayscale", 0.2), ("blur", 0.5)):
        sd = math.sqrt(prob * (1 - prob) / n)
        assert abs(p[key].float().mean().item() - prob) < 4 * sd, key
    for key, (lo, hi) in (("brightness", (0.8, 1.2)), ("contrast", (0.8, 1.2)), ("saturation", (0.8, 1.2)),
                          ("hue", (-0.05, 0.05)), ("sigma", (0.1, 2.0))):
        v = p[key]
        assert v.min() >= lo and v.max() <= hi and v.max() - v.min() > 0.95 * (hi - lo), key
    assert (p["order"].sort(dim=1).values == torch.arange(4)).all()  # permutations
    assert len({tuple(o) for o in p["order"].tolist()}) == 24  # every order occurs


def test_paper_jitter_values_and_reproducibility():
    assert augment.COLOR_JITTER == dict(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05)
    x = torch.randint(0, 256, (6, 3, 2, 16, 16), dtype=torch.uint8)
    aug = augment.GpuAugment(seed=7)
    a = aug(x)
    aug.reseed(7)
    b = aug(x)
    assert torch.equal(a, b) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    c = aug(x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, c)


def test_uint8_and_float_inputs_agree():
    x = torch.randint(0, 256, (3, 3, 2, 12, 12), dtype=torch.uint8)
    p = augment.sample_params(3, torch.Generator().manual_seed(3), jitter_p=1.0, blur_p=1.0)
    assert torch.allclose(augment.apply_params(x, p), augment.apply_params(x.float() / 255, p), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Worker-side geometry
# ------------------------------------------------------------------------------------------------

def test_uniform_crop_boxes_by_hand():
    # landscape 48x96, crop 48 (scale 1): left, centre, right
    assert augment.uniform_crop_boxes(48, 96, 48, 3) == [(0, 0, 48, 48), (0, 24, 48, 48), (0, 48, 48, 48)]
    # portrait: top, centre, bottom
    assert augment.uniform_crop_boxes(96, 48, 48, 3) == [(0, 0, 48, 48), (24, 0, 48, 48), (48, 0, 48, 48)]
    # Kinetics 256x340 at 224: scale 0.875, width floor(340/256*224) = 297, centre x offset
    # ceil((297-224)/2) = 37 -> source x round(37/0.875) = 42, box side round(224/0.875) = 256
    assert augment.uniform_crop_boxes(256, 340, 224, 1) == [(0, 42, 256, 256)]


def test_random_short_side_box_range():
    rng = np.random.default_rng(0)
    sides = [augment.random_short_side_box(256, 340, 224, (256, 320), rng)[2] for _ in range(2000)]
    # short side 256..320 on a 256-pixel source: the 224 crop covers round(224 * 256 / s) pixels
    assert min(sides) == round(224 * 256 / 320) and max(sides) == 224


def test_crop_then_resize_matches_resize_then_crop():
    yy, xx = torch.meshgrid(torch.arange(120.), torch.arange(160.), indexing="ij")
    img = (127 + 60 * torch.sin(xx / 9) + 60 * torch.cos(yy / 7)).to(torch.uint8)
    frames = img.view(1, 120, 160, 1).expand(2, 120, 160, 3).contiguous()
    short, crop, y_off, x_off = 150, 96, 20, 61
    new_h, new_w = augment.scaled_size(120, 160, short)
    full = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(new_h, new_w), mode="bilinear",
                         antialias=True, align_corners=False)
    ref = full[:, :, y_off:y_off + crop, x_off:x_off + crop].permute(1, 0, 2, 3)
    box = augment.short_side_scale_box(120, 160, short, crop, y_off, x_off)
    out = augment.crop_resize(frames, box, crop).float()
    assert out.shape == (3, 2, crop, crop)
    assert (out - ref).abs().mean() < 4  # same picture up to sub-pixel rounding of the box


def test_random_crop_same_on_all_frames_and_flip_rate():
    rng = np.random.default_rng(1)
    x = torch.arange(64).view(1, 1, 64, 1).expand(1, 48, 64, 3).to(torch.uint8)  # value = column
    frames = x.expand(4, 48, 64, 3).contiguous()
    flips = 0
    for _ in range(400):
        clip = augment.random_short_side_crop(frames, 32, (40, 50), rng)
        assert clip.shape == (3, 4, 32, 32)
        assert torch.equal(clip, clip[:, :1].expand_as(clip))
        row = clip[0, 0, 0].float()
        flips += int(row[0] > row[-1])  # columns decrease left to right: flipped
    assert abs(flips / 400 - 0.5) < 4 * math.sqrt(0.25 / 400)


# ------------------------------------------------------------------------------------------------
# PySlowFast's test views, random resized crop and colour recipes
# ------------------------------------------------------------------------------------------------

def test_test_views_at_short_side_256_by_hand():
    # PySlowFast test views (DATA.TEST_CROP_SIZE 256): short side 256, 256 crops. Kinetics 256x340 at
    # scale 1: x offsets 0, ceil((340 - 256) / 2) = 42, 340 - 256 = 84.
    assert augment.uniform_crop_boxes(256, 340, 256, 3) == [(0, 0, 256, 256), (0, 42, 256, 256), (0, 84, 256, 256)]
    assert augment.uniform_crop_boxes(256, 340, 256, 1, short_side=256) == [(0, 42, 256, 256)]
    # SSv2 240x427: scale 256/240, width floor(427 / 240 * 256) = 455; x offsets 0, ceil(199 / 2) = 100 and
    # 199 map back to round(100 * 240 / 256) = 94 and round(199 * 240 / 256) = 187; the side is 240 source
    # pixels. ssv2.py's single crop is index 0 (the left one), kinetics.py's the centre one.
    assert augment.uniform_crop_boxes(240, 427, 256, 3) == [(0, 0, 240, 240), (0, 94, 240, 240), (0, 187, 240, 240)]
    assert augment.uniform_crop_boxes(240, 427, 256, 1, single_index=0) == [(0, 0, 240, 240)]
    assert augment.uniform_crop_boxes(240, 427, 256, 1) == [(0, 94, 240, 240)]
    # kinetics.py, one crop, TEST_CROP_SIZE 224: frames at TRAIN_JITTER_SCALES[0] = 256, a 224 centre crop
    # (offsets ceil(32 / 2) = 16 and ceil(116 / 2) = 58)
    assert augment.uniform_crop_boxes(256, 340, 224, 1, short_side=256) == [(16, 58, 224, 224)]


class ScriptedRng:
    """Stands in for the numpy Generator: returns the given values and records the integer ranges."""

    def __init__(self, uniforms, integers=(), random=0.9):
        self.uniforms, self.integer_values, self.random_value = list(uniforms), list(integers), random
        self.integer_ranges = []

    def uniform(self, lo, hi):
        value = self.uniforms.pop(0)
        assert lo <= value <= hi
        return value

    def integers(self, lo, hi):
        self.integer_ranges.append((lo, hi))
        return self.integer_values.pop(0)

    def random(self):
        return self.random_value


def test_random_resized_box_by_hand():
    """PySlowFast transform._get_param_spatial_crop (log-uniform aspect, rounded sides, 10 tries, centre
    fallback) on a 256x340 frame with BYOL_SlowR50_8x8.yaml's ranges [0.2, 0.766] and [0.75, 1.3333]."""
    area, aspect = augment.RESIZED_CROP_AREA, augment.RESIZED_CROP_ASPECT
    # area 0.5, aspect exp(0) = 1: sqrt(0.5 * 87040) = 208.6 -> 209 x 209; y in [0, 47], x in [0, 131]
    rng = ScriptedRng([0.5, 0.0], integers=[10, 100])
    assert augment.random_resized_box(256, 340, area, aspect, rng) == (10, 100, 209, 209)
    assert rng.integer_ranges == [(0, 48), (0, 132)]
    # area 0.766, aspect 1.3333: w = round(sqrt(66672.64 * 1.3333)) = 298, h = round(sqrt(66672.64 / 1.3333)) = 224
    rng = ScriptedRng([0.766, math.log(1.3333)], integers=[0, 0])
    assert augment.random_resized_box(256, 340, area, aspect, rng)[2:] == (224, 298)
    # 100x400: area 0.766 at aspect 0.75 needs h = round(sqrt(30640 / 0.75)) = 202 > 100 rows on each of
    # the 10 tries -> the centre crop at the largest aspect: h 100, w round(133.33) = 133, x (400 - 133) // 2
    rng = ScriptedRng([0.766, math.log(0.75)] * 10)
    assert augment.random_resized_box(100, 400, area, aspect, rng) == (0, 133, 100, 133)
    assert rng.uniforms == []
    # an aspect inside the range: the whole frame
    assert augment.random_resized_box(100, 120, (2.0, 2.0), aspect, ScriptedRng([2.0, 0.0] * 10)) == (0, 0, 100, 120)


def test_random_resized_crop_ranges_same_box_on_all_frames():
    rng = np.random.default_rng(0)
    boxes = [augment.random_resized_box(256, 340, augment.RESIZED_CROP_AREA, augment.RESIZED_CROP_ASPECT, rng)
             for _ in range(2000)]
    fractions = [h * w / (256 * 340) for _, _, h, w in boxes]
    ratios = [w / h for _, _, h, w in boxes]
    assert 0.195 < min(fractions) < 0.22 and 0.74 < max(fractions) < 0.775
    assert 0.74 < min(ratios) < 0.77 and 1.30 < max(ratios) < 1.34
    assert all(y + h <= 256 and x + w <= 340 for y, x, h, w in boxes)
    x = torch.arange(64).view(1, 1, 64, 1).expand(4, 48, 64, 3).to(torch.uint8).contiguous()
    clip = augment.random_resized_crop(x, 32, augment.RESIZED_CROP_AREA, augment.RESIZED_CROP_ASPECT, rng)
    assert clip.shape == (3, 4, 32, 32) and torch.equal(clip, clip[:, :1].expand_as(clip))


def test_pyslowfast_colour_recipes():
    # BYOL_SlowR50_8x8.yaml (SSL_MOCOV2_AUG branch) and finetune_ucf_Slow_R50_syn8.yaml (the other branch)
    assert augment.PYSLOWFAST_BYOL_JITTER == dict(brightness=0.6, contrast=0.6, saturation=0.6, hue=0.15,
                                                  jitter_p=0.8, grayscale_p=0.2, blur_p=0.5)
    assert augment.PYSLOWFAST_FINETUNE_JITTER == dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                                                      jitter_p=1.0, grayscale_p=0.2, blur_p=0.0,
                                                      grayscale_first=True)
    assert augment.PRETRAIN_RECIPES["paper"] == dict(resized_crop=None, jitter=dict(
        brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, jitter_p=0.8, grayscale_p=0.2, blur_p=0.5))
    p = augment.GpuAugment(**augment.PYSLOWFAST_FINETUNE_JITTER).sample_params(4000)
    assert p["jitter"].all() and not p["blur"].any() and abs(p["grayscale"].float().mean() - 0.2) < 0.03
    assert p["brightness"].min() >= 0.6 and p["brightness"].max() <= 1.4 and p["hue"].abs().max() <= 0.1


def test_grayscale_first_matches_torchvision_sequence():
    """PySlowFast's fine-tuning jitter: RandomGrayscale, then ColorJitter (its ops in a random order)."""
    frames = [frame(5, 16, 16), frame(6, 16, 16)]
    clip = torch.stack(frames, dim=1).unsqueeze(0)
    params = dict(jitter=torch.tensor([True]), order=torch.tensor([[2, 0, 3, 1]]),
                  brightness=torch.tensor([1.3]), contrast=torch.tensor([0.7]),
                  saturation=torch.tensor([1.2]), hue=torch.tensor([-0.08]),
                  grayscale=torch.tensor([True]), blur=torch.tensor([False]), sigma=torch.tensor([1.0]))
    out = augment.apply_params(clip, params, grayscale_first=True)
    ops = [lambda im: TF.adjust_brightness(im, 1.3), lambda im: TF.adjust_contrast(im, 0.7),
           lambda im: TF.adjust_saturation(im, 1.2), lambda im: TF.adjust_hue(im, -0.08)]
    for t, img in enumerate(frames):
        img = TF.rgb_to_grayscale(img, num_output_channels=3)
        for o in (2, 0, 3, 1):
            img = ops[o](img)
        assert torch.allclose(out[0, :, t], img, atol=1e-4)
    # the default order (jitter, then grayscale) differs: hue and saturation act before the grey
    assert not torch.allclose(augment.apply_params(clip, params), out, atol=1e-3)


def test_inverse_uniform_short_side():
    # DATA.INV_UNIFORM_SAMPLE: 1 / U(1/320, 1/256); the median side is 1 / ((1/320 + 1/256) / 2) = 284.4
    rng = np.random.default_rng(0)
    sides = [round(224 * 256 / augment.random_short_side_box(256, 340, 224, (256, 320), rng, True)[2])
             for _ in range(4000)]
    assert min(sides) >= 256 and max(sides) <= 320 and abs(float(np.median(sides)) - 284.4) < 2


def test_paper_nocolour_keeps_the_crops_and_flips_and_passes_the_colours_through():
    recipe = augment.PRETRAIN_RECIPES["paper_nocolour"]
    assert recipe["resized_crop"] is None  # the paper's short side and crop
    clips = torch.randint(0, 256, (6, 3, 2, 8, 8), dtype=torch.uint8)
    out = augment.GpuAugment(**recipe["jitter"], seed=3)(clips)
    assert torch.equal(out, clips.float() / 255)  # no jitter, grayscale or blur, whatever the draws
