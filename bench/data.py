"""Data-pipeline throughput and memory: clips per second per worker for 3-view training samples.

    python bench/data.py                 # surveillance-fight + generated Kinetics-like videos
    python bench/data.py --memory        # 1,000 decodes (good and broken files): resident memory

Three ways to produce the same 3 augmented clips (T=8, tau=8, short side 256-320, 224 crop, flip) per
video, one process, one decoding thread (what one data-loader worker does):
    naive  open and decode the whole video to RGB once per view, then sample and crop (what many
           codebases do: e.g. torchvision.io.read_video per clip)
    ours   data.VideoDataset: one open, seek to the keyframe before the earliest clip, one forward pass
           for all clips, RGB only for the needed frames, crop then resize
    floor  decoding exactly what the sampler needs and nothing else: one open, the same seek and forward
           pass for the same indices, but no RGB conversion, no resize/crop/flip (a lower bound for any
           decoder-based loader, since H.264 frames cannot be decoded without their keyframe)
Kinetics-like videos: 10 s, 340x256, 30 fps, H.264 with libx264's defaults (keyframe every 250
frames, as in Kinetics files re-encoded by ffmpeg). Time is this process's CPU time (one worker's
work; other jobs on a shared machine would distort wall time), and methods are interleaved video by
video. The last line holds the ratios on the Kinetics-like set: ours vs naive (speed-up, goal >= 2.5x)
and ours vs floor (time ratio, goal <= 1.3x).
"""
import argparse
import os
import sys
import tempfile
import time

import av
import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import augment  # noqa: E402
import data  # noqa: E402
import video  # noqa: E402


def render_kinetics_like(rng, height, width, num_frames):
    """A panning textured scene (camera motion: every block changes, as in real footage) with two
    moving objects and sensor noise, so H.264 decoding costs what it costs on real 340x256 video."""
    small = torch.from_numpy(rng.uniform(0, 255, (1, 3, height // 6 + 8, width // 6 + 8)).astype(np.float32))
    texture = torch.nn.functional.interpolate(small, scale_factor=6, mode="bicubic", align_corners=False)
    texture = texture[0].permute(1, 2, 0).clamp(0, 255).numpy()
    fine = rng.normal(0, 18, texture.shape).astype(np.float32)  # fine detail on top of the blobs
    texture = texture + fine
    vy, vx = rng.uniform(-1.5, 1.5), rng.uniform(-2.5, 2.5)
    objects = data.render_synthetic_video(int(rng.integers(6)), 6, rng, height, width, num_frames)
    mask = (np.abs(objects.astype(np.int16) - objects[:1].astype(np.int16)).sum(-1) > 60)[..., None]
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        bg = np.roll(texture, (int(round(t * vy)), int(round(t * vx))), axis=(0, 1))[:height, :width]
        frame = np.where(mask[t], objects[t], bg) + rng.normal(0, 3, (height, width, 3))
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def kinetics_like_videos(folder, count, seconds=10, width=340, height=256, fps=30):
    """Generated once into folder (cached)."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"k{i:02d}.mp4")
        if not os.path.isfile(path):
            frames = render_kinetics_like(np.random.default_rng(1000 + i), height, width, seconds * fps)
            video.write_video(path, frames, fps=fps)  # libx264 defaults: crf 23, preset medium, keyint 250
        paths.append(path)
    return paths


def naive_sample(path, ds, rng):
    """Decode the whole video once per view."""
    views = []
    for _ in range(ds.num_clips):
        with av.open(path) as c:
            s = c.streams.video[0]
            s.codec_context.thread_count = 1
            fps = float(s.average_rate or 30)
            frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)])
        n = len(frames)
        window = data.clip_window(fps, ds.num_frames, ds.stride, ds.target_fps)
        idx = data.clip_indices(n, window, ds.num_frames, data.clip_start(n, window, -1, 1, rng))
        views.append(augment.random_short_side_crop(torch.from_numpy(frames[idx]), ds.crop_size,
                                                    ds.short_side, rng))
    return torch.stack(views)


def floor_sample(path, ds, rng):
    """Decode the frames the sampler needs (keyframe before the earliest one up to the last one), only."""
    with av.open(path) as c:
        info = video.VideoInfo(c)
        info.stream.codec_context.thread_count = 1
        wanted = np.unique(np.concatenate(ds.clip_plan(info, rng)))
        first, last = int(wanted[0]), int(wanted[-1])
        if first > 0:
            c.seek(info.start_pts + int(first / info.fps / info.time_base), stream=info.stream)
        for k, f in enumerate(c.decode(info.stream)):
            if info.frame_index(f, k) >= last:
                break


def ours_sample(path, ds, rng):
    return ds.load_clips(path, rng)


METHODS = (("naive", naive_sample), ("ours", ours_sample), ("floor", floor_sample))


def bench(paths, repeats, ds):
    times = {name: 0.0 for name, _ in METHODS}
    samples = 0
    for r in range(repeats):
        for i, path in enumerate(paths):
            for name, fn in METHODS:
                rng = np.random.default_rng([r, i])  # the same clip starts for every method
                t = time.process_time()
                fn(path, ds, rng)
                times[name] += time.process_time() - t
            samples += 1
    return {name: ds.num_clips * samples / t for name, t in times.items()}


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def memory_run(paths, decodes):
    """`decodes` dataset items over real videos plus broken files (zero-byte, text, truncated, missing):
    resident memory after a warm-up, every 100 decodes, and at the end."""
    with tempfile.TemporaryDirectory() as tmp:
        bad = []
        for name, payload in (("zero.mp4", b""), ("text.mp4", b"not a video\n" * 100)):
            bad.append(os.path.join(tmp, name))
            with open(bad[-1], "wb") as f:
                f.write(payload)
        with open(paths[0], "rb") as f:
            raw = f.read()
        bad.append(os.path.join(tmp, "truncated.mp4"))
        with open(bad[-1], "wb") as f:
            f.write(raw[: len(raw) // 2])
        bad.append(os.path.join(tmp, "missing.mp4"))
        videos = [(p, 0) for p in paths] + [(p, 0) for p in bad]
        ds = data.VideoDataset(videos, num_clips=3, num_frames=8, stride=8, crop_size=224)
        order = np.random.default_rng(0).integers(0, len(videos), decodes)
        warmup = 100  # every video seen about three times: the allocator has its working set
        for i in order[:warmup]:
            ds[int(i)]
        start, peak, trace = rss_mb(), 0.0, []
        for k, i in enumerate(order):
            ds[int(i)]
            peak = max(peak, rss_mb())
            if (k + 1) % 100 == 0:
                trace.append(round(rss_mb()))
        return start, rss_mb(), peak, ds.skipped, trace


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fight_dir", default=os.path.join(REPO, "..", "shared", "data", "surveillance-fight"),
                   help="folder with labels.csv of the surveillance-fight videos")
    p.add_argument("--num_fight", type=int, default=30, help="surveillance-fight videos to use")
    p.add_argument("--num_kinetics", type=int, default=6, help="generated 10-s Kinetics-like videos")
    p.add_argument("--cache", default=os.path.join(REPO, "cache", "bench_kinetics"))
    p.add_argument("--repeats", type=int, default=3, help="passes over each video set")
    p.add_argument("--memory", action="store_true", help="run the 1,000-decode memory check instead")
    p.add_argument("--decodes", type=int, default=1000)
    args = p.parse_args()
    torch.set_num_threads(1)  # one data-loader worker (DataLoader workers run single-threaded)

    kinetics = kinetics_like_videos(args.cache, args.num_kinetics)
    fight_csv = os.path.join(args.fight_dir, "labels.csv")
    fight = []
    if os.path.isfile(fight_csv):
        videos, _ = data.read_csv_list(fight_csv)
        fight = [v for v, _ in videos[:: max(1, len(videos) // args.num_fight)]][: args.num_fight]

    if args.memory:
        start, end, peak, skipped, trace = memory_run(fight + kinetics, args.decodes)
        half = len(trace) // 2
        drift = sum(trace[half:]) / max(1, len(trace) - half) - sum(trace[:half]) / max(1, half)
        print(f"RSS (MB) every 100 of {args.decodes} decodes (3 clips of 8x224x224 each): {trace}")
        print(f"memory: {start:.0f} MB after a 100-decode warm-up, {end:.0f} MB after {args.decodes} more, "
              f"range {min(trace)}-{max(trace)} MB, peak {peak:.0f} MB; second half minus first half "
              f"{drift:+.1f} MB; {skipped} broken-file decodes skipped")
        return

    ds = data.VideoDataset([], num_clips=3, num_frames=8, stride=8, crop_size=224, mode="train")
    rows = []
    for name, paths in (("surveillance-fight (2 s, 320x240..1080p)", fight),
                        ("Kinetics-like (10 s, 340x256, 30 fps)", kinetics)):
        if not paths:
            print(f"skipping {name}: no videos")
            continue
        r = bench(paths, args.repeats, ds)
        rows.append((name, r))
    print("clips/s per worker (3-view samples, T=8 tau=8, 224 crops, worker-side augmentation)")
    print(f"{'videos':44s} {'naive':>8s} {'ours':>8s} {'floor':>8s} {'ours/naive':>11s} {'ours vs floor':>14s}")
    for name, r in rows:
        print(f"{name:44s} {r['naive']:8.2f} {r['ours']:8.2f} {r['floor']:8.2f} {r['ours'] / r['naive']:10.2f}x "
              f"{r['floor'] / r['ours']:13.2f}x")
    aug = augment.GpuAugment()
    x = torch.randint(0, 256, (12, 3, 8, 224, 224), dtype=torch.uint8)
    aug(x)
    t = time.perf_counter()
    aug(x)
    print(f"device-side colour/grayscale/blur on this CPU, 1 thread: {12 / (time.perf_counter() - t):.1f} clips/s")
    name, r = rows[-1]
    print(f"ratio_vs_naive={r['ours'] / r['naive']:.2f}x ratio_vs_floor={r['floor'] / r['ours']:.2f}x "
          f"(Kinetics-like; goals >=2.5x and <=1.3x)")


if __name__ == "__main__":
    main()
