"""Figure 2: last-layer attention of a ViT teacher ([CLS] to patches, per head) on video frames.

    python reproduce/figure2.py --teacher dino_vit_b16 --teacher_weights /w/dino_vitbase16.pth \
        --video /data/k400/val/abseiling/xyz.mp4 --out reproduce/out/figure2.png
    python reproduce/figure2.py --teacher_weights random --video synthetic     # offline smoke run

One row per sampled frame: the frame, the mean over heads, then one panel per head, each map
upsampled to the frame and overlaid. Works with any ViT teacher that teachers.attention_maps
supports (timm and open_clip ViTs: dino_vit_s16, dino_vit_b16, deit_b16, clip_vit_b16,
"timm:MODEL", "open_clip:MODEL:TAG"). With random weights the maps mean nothing; the title says so.
The paper's figure uses DINO ViT (ImageNet-1k) on Kinetics-400 frames.
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import augment  # noqa: E402
import cli  # noqa: E402
import teachers  # noqa: E402
import video  # noqa: E402

DEFAULT_VIDEO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                                 "surveillance-fight")


def read_frames(path, num_frames, size):
    """num_frames frames spread evenly over the video (video.read_frames decodes up to the last of them
    only), short side resized to size, centre-cropped: uint8 (num_frames, size, size, 3)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--video {path}: no such file")
    picks = []

    def plan(info):
        picks[:] = np.linspace(0, max(info.num_frames - 1, 0), num_frames).round().astype(int)
        return np.unique(picks)

    try:
        _, decoded = video.read_frames(path, plan)
    except video.DECODE_ERRORS as e:
        raise ValueError(f"--video {path}: cannot be decoded ({type(e).__name__}: {e})") from None
    frames = [decoded[i] for i in picks]
    box = augment.uniform_crop_boxes(*frames[0].shape[:2], size, 1)[0]
    return augment.crop_resize(frames, box, size).permute(1, 2, 3, 0).numpy()


def synthetic_frames(num_frames, size, seed=0):
    """A moving bright disc and square on a smooth background: uint8 (num_frames, size, size, 3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([0.3 + 0.2 * xx, 0.3 + 0.2 * yy, 0.4 * np.ones_like(xx)], -1)
    out = []
    for t in range(num_frames):
        img = base.copy()
        cx, cy = 0.25 + 0.5 * t / max(1, num_frames - 1), 0.5
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < 0.015] = (0.95, 0.2, 0.1)
        sq = (abs(xx - 0.7) < 0.08) & (abs(yy - 0.25 - 0.4 * t / max(1, num_frames - 1)) < 0.08)
        img[sq] = (0.1, 0.8, 0.2)
        img += rng.normal(0, 0.02, img.shape)
        out.append((img.clip(0, 1) * 255).astype(np.uint8))
    return np.stack(out)


def default_video():
    labels = os.path.join(DEFAULT_VIDEO_DIR, "labels.csv")
    if os.path.isfile(labels):
        with open(labels) as f:
            rows = [line.strip().split(",")[0] for line in f.readlines()[1:] if line.strip()]
        fights = [r for r in rows if r.startswith("fight")] or rows
        if fights:
            return os.path.join(DEFAULT_VIDEO_DIR, fights[0])
    return "synthetic"


def normalise_maps(maps):
    """Each map to [0, 1] on its own, so the overlay shows where a head looks, not how sharply."""
    flat = maps.flatten(-2)
    lo, hi = flat.min(-1, keepdim=True)[0], flat.max(-1, keepdim=True)[0]
    return ((flat - lo) / (hi - lo).clamp_min(1e-8)).view_as(maps)


def attention_grid(frames_uint8, maps, title, path, max_heads=12):
    """frames (N, S, S, 3) uint8, maps (N, heads, h, w) -> PNG: frame | mean | head 1..heads."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n, size = frames_uint8.shape[0], frames_uint8.shape[1]
    heads = min(maps.shape[1], max_heads)
    up = F.interpolate(maps.float(), size=(size, size), mode="bilinear", align_corners=False)
    up = torch.cat([normalise_maps(up.mean(1, keepdim=True)), normalise_maps(up[:, :heads])], 1).numpy()
    cols = 2 + heads
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.6 * n + 0.6), squeeze=False)
    for i in range(n):
        axes[i][0].imshow(frames_uint8[i])
        for j in range(heads + 1):
            axes[i][j + 1].imshow(frames_uint8[i])
            axes[i][j + 1].imshow(up[i, j], cmap="jet", alpha=0.5, vmin=0, vmax=1)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(f"frame {i + 1}", fontsize=8)
    axes[0][0].set_title("frame", fontsize=8)
    axes[0][1].set_title("mean", fontsize=8)
    for j in range(heads):
        axes[0][j + 2].set_title(f"head {j + 1}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="dino_vit_b16", help="a ViT teacher name (teachers.py)")
    p.add_argument("--teacher_weights", default=None,
                   help="weights file, or 'random' for random init (the maps then mean nothing; the title "
                        "says so). Unset: the teacher's public weights (hub or local cache)")
    p.add_argument("--video", default=None, help="an mp4 (default: a surveillance-fight clip), or 'synthetic'")
    p.add_argument("--num_frames", type=int, default=4, help="frames shown (rows)")
    p.add_argument("--size", type=int, default=224, help="frame crop shown and given to the teacher")
    p.add_argument("--max_heads", type=int, default=12)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "figure2.png"))
    return p


def main(args):
    if args.num_frames < 1:
        raise ValueError(f"--num_frames must be at least 1, got {args.num_frames}")
    weights = args.teacher_weights
    source = args.video or default_video()
    frames = synthetic_frames(args.num_frames, args.size) if source == "synthetic" else \
        read_frames(source, args.num_frames, args.size)
    teacher = teachers.build_teacher(args.teacher, weights=weights)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        maps = teachers.attention_maps(teacher, x)
    if maps.dim() != 4 or maps.shape[0] != len(frames):
        raise ValueError(f"teachers.attention_maps returned shape {tuple(maps.shape)}, expected (N, heads, h, w)")
    origin = "RANDOM INIT (not pretrained)" if weights == "random" else (weights or "pretrained")
    name = "synthetic video" if source == "synthetic" else os.path.basename(source)
    title = (f"Figure 2: [CLS] attention, last layer of {args.teacher} ({origin}), {maps.shape[1]} heads, "
             f"{maps.shape[2]}x{maps.shape[3]} patches | {name}")
    attention_grid(frames, maps, title, args.out, args.max_heads)
    print(f"wrote {args.out}: {len(frames)} frames x {maps.shape[1]} heads")


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
