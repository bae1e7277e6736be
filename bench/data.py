"""Data-pipeline throughput and memory: 3-view training samples per worker, ours beside the loaders
users would pick, on the same videos with the same sampling.

    python bench/data.py                 # surveillance-fight + three generated Kinetics-like variants
    python bench/data.py --memory        # 1,000 decodes (good and broken files): resident memory
    python bench/data.py --prepared      # the same clips from sources up to 1080p and from prepare.py's copies

Each method produces the same 3 clips (T=8, tau=8 on a 30 fps time base) of every video, the same
clip starts for all, and all but the floors augment them the same way (short side 256-320, 224 crop,
flip); one process, one decoding thread (what one data-loader worker does):
    naive       open and decode the whole video to RGB once per view, then sample and crop (what many
                codebases do: e.g. torchvision.io.read_video per clip)
    PySlowFast  its pyav path (slowfast/datasets/decoder.py, rewritten here from its documented
                behaviour) for the span of all clips: one seek 1024 pts before the span, decode the
                span, convert every decoded frame to RGB (frame.to_rgb()), then select the clip frames
    torchcodec  a get-frames-by-index loader: VideoDecoder(seek_mode="exact").get_frames_at(indices);
                optional, see bench/requirements.txt ("skipping torchcodec: ..." when not installed)
    ours        data.VideoDataset over video.read_frames: packets demuxed first, decoding restarted at
                keyframes between clips, non-reference frames no clip needs skipped, RGB only for the
                needed frames, crop then resize
    floor       forward-decode floor: one seek to the keyframe before the earliest clip, decode every
                frame until the last needed one comes out; no RGB, no augmentation (the lower bound
                of a loader that decodes forward, as defined before selective decoding)
    ref-chain   reference-chain floor: the same seek, then the packets up to the last one carrying a
                wanted frame, only reference frames and wanted frames decoded (skip_frame NONREF
                elsewhere); no RGB, no augmentation (the lower bound of one forward pass that skips)
Kinetics-like videos: 10 s, 340x256, 30 fps, H.264 High profile with B-frames (libx264 defaults: crf
23, preset medium, 3 B-frames, B-pyramid), as YouTube-derived Kinetics files are; three variants of the
same rendered frames: libx264's default keyframe interval (250 frames) and keyframes every 2 s and 8 s.
Time is this process's CPU time (one worker's work; other jobs on a shared machine would distort wall
time), and methods are interleaved video by video. The last lines give samples/s per core for each
method and the cores per GPU each needs to feed GPU_SAMPLES_PER_S.

--prepared: ours on the source files and on copies that prepare.py (run as a user runs it, one
worker) makes of them at the default short side 320, crf 23, preset medium, with a keyframe every 1, 2
or 4 s or every 250 frames (libx264's default); the same clip starts everywhere, interleaved video by
video. Sources: generated 10-s 1080p and 720p H.264 videos and one 60-s 720p video (hd_frames: the
Kinetics-like scene at that resolution; libx264 defaults) and the surveillance-fight clips (320x240 to
1920x1080, with audio). prepare.py's cost is the CPU time of its process and worker, less that of
`prepare.py --help` (start-up: imports), per minute of source video; break-even is that cost over the
CPU time the copy saves per epoch (one sample per video).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import types

import av
import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import augment  # noqa: E402
import data  # noqa: E402
import video  # noqa: E402

# What one H100-class GPU consumes: slow_r50 with a ViT-B/16 teacher costs 0.78 TFLOP per video, i.e.
# 300-400 videos/s at 25-30% of bf16 peak; the middle of that range.
GPU_SAMPLES_PER_S = 350

# (name, cache sub-folder, keyframe interval in frames; None: libx264's default, 250)
KINETICS_VARIANTS = (("Kinetics-like, libx264 default keyint 250", "", None),
                     ("Kinetics-like, keyframe every 2 s", "keyint60", 60),
                     ("Kinetics-like, keyframe every 8 s", "keyint240", 240))


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
    """{variant name: paths}, generated once into folder (cached); the variants encode the same frames."""
    out = {name: [] for name, _, _ in KINETICS_VARIANTS}
    for i in range(count):
        frames = None
        for name, sub, keyint in KINETICS_VARIANTS:
            path = os.path.join(folder, sub, f"k{i:02d}.mp4")
            if not os.path.isfile(path):
                if frames is None:
                    frames = render_kinetics_like(np.random.default_rng(1000 + i), height, width, seconds * fps)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                video.write_video(path, frames, fps=fps, gop_size=keyint)
            out[name].append(path)
    return out


def hd_frames(rng, height, width, num_frames):
    """render_kinetics_like's scene (a panning textured scene, moving objects, sensor noise) at any
    resolution: texture detail and motion scale with the height (256 the reference), so a video is the
    same scene at every resolution (with libx264's defaults 5.9 Mbit/s at 1080p, 2.7 at 720p, measured).
    Frames are made one at a time, so a 10-s 1080p video never sits in memory whole."""
    k = height / 256
    small = torch.from_numpy(rng.uniform(0, 255, (1, 3, height // 6 + 8, width // 6 + 8)).astype(np.float32))
    texture = torch.nn.functional.interpolate(small, scale_factor=6, mode="bicubic", align_corners=False)[0]
    fine = torch.from_numpy(rng.normal(0, 18, (1, 3, int(texture.shape[1] / k) + 2, int(texture.shape[2] / k) + 2))
                            .astype(np.float32))  # fine detail at 256p density, enlarged
    fine = torch.nn.functional.interpolate(fine, size=texture.shape[1:], mode="bicubic", align_corners=False)[0]
    texture = (texture.clamp(0, 255) + fine).permute(1, 2, 0).numpy()
    vy, vx = rng.uniform(-1.5, 1.5) * k, rng.uniform(-2.5, 2.5) * k
    discs = [dict(colour=rng.uniform(0, 255, 3), r=rng.uniform(0.1, 0.16) * height, y=rng.uniform(0, height),
                  x=rng.uniform(0, width), vy=rng.uniform(-3, 3) * k, vx=rng.uniform(-3, 3) * k) for _ in range(2)]
    yy, xx = np.ogrid[0:height, 0:width]
    for t in range(num_frames):
        frame = np.roll(texture, (int(round(t * vy)), int(round(t * vx))), axis=(0, 1))[:height, :width].copy()
        for d in discs:
            dy = (yy - (d["y"] + d["vy"] * t) + height / 2) % height - height / 2
            dx = (xx - (d["x"] + d["vx"] * t) + width / 2) % width - width / 2
            frame[dy * dy + dx * dx < d["r"] ** 2] = d["colour"]
        frame += rng.standard_normal((height, width, 3), dtype=np.float32) * 3
        yield np.clip(frame, 0, 255).astype(np.uint8)


def hd_videos(folder, count, height, width, seconds=10, fps=30):
    """count generated H.264 videos of height x width (libx264 defaults, as the Kinetics-like ones),
    cached in folder/hd<height>_<seconds>s; video i has the same scene at every resolution."""
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"hd{height}_{seconds}s", f"v{i:02d}.mp4")
        if not os.path.isfile(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with av.open(path + ".part", "w", format="mp4") as out:
                stream = out.add_stream("libx264", rate=fps)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                for frame in hd_frames(np.random.default_rng(2000 + i), height, width, seconds * fps):
                    out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                out.mux(stream.encode())
            os.replace(path + ".part", path)
        paths.append(path)
    return paths


def crop_views(ds, frames, plans, offset, rng):
    """The training views: frames[idx - offset] of each clip (clamped), cropped and flipped."""
    return torch.stack([augment.random_short_side_crop(frames[np.clip(idx - offset, 0, len(frames) - 1)],
                                                       ds.crop_size, ds.short_side, rng, flip=ds.hflip)
                        for idx in plans])


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


def pyslowfast_sample(path, ds, rng):
    """PySlowFast's pyav path over the span of all clips (pts_per_frame = duration / frames; no
    duration or frame count in the header: the whole video)."""
    with av.open(path) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        plans = ds.clip_plan(video.VideoInfo(c), rng)
        first, last = min(p[0] for p in plans), max(p[-1] for p in plans)
        per_frame = s.duration / s.frames if s.duration and s.frames else None
        lo, hi = (int(first * per_frame), int(last * per_frame)) if per_frame else (0, float("inf"))
        c.seek(max(lo - 1024, 0), any_frame=False, backward=True, stream=s)
        kept = []
        for f in c.decode(s):
            if f.pts < lo:
                continue
            kept.append(f)
            if f.pts > hi:  # its buffer_size 0: the first frame past the span is kept, then it stops
                break
        frames = np.stack([f.to_rgb().to_ndarray() for f in kept])
    offset = int(round(kept[0].pts / per_frame)) if per_frame else 0
    return crop_views(ds, torch.from_numpy(frames), plans, offset, rng)


def torchcodec_sample(path, ds, rng):
    """Frames by index: torchcodec finds each index's keyframe, decodes to it and converts it."""
    from torchcodec.decoders import VideoDecoder
    decoder = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=1)
    meta = decoder.metadata
    plans = ds.clip_plan(types.SimpleNamespace(num_frames=meta.num_frames, fps=meta.average_fps), rng)
    wanted = np.unique(np.concatenate(plans))
    frames = decoder.get_frames_at(wanted.tolist()).data
    position = np.zeros(wanted[-1] + 1, np.int64)
    position[wanted] = np.arange(len(wanted))
    return crop_views(ds, frames, [position[p] for p in plans], 0, rng)


def ours_sample(path, ds, rng):
    return ds.load_clips(path, rng)


def floor_sample(path, ds, rng):
    """Every frame from the keyframe before the earliest needed one until the last needed one comes out
    of the decoder (today's definition of the floor, kept for comparison)."""
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


def refchain_floor_sample(path, ds, rng):
    """Reference frames and wanted frames only: from the keyframe before the earliest needed frame,
    the packets up to the last one that carries a wanted frame, those without one sent with
    skip_frame NONREF (packets are read 16 past the last wanted index: B-frames come after their
    anchor in decode order)."""
    with av.open(path) as c:
        info = video.VideoInfo(c)
        codec = info.stream.codec_context
        codec.thread_count = 1
        wanted = np.unique(np.concatenate(ds.clip_plan(info, rng)))
        if wanted[0] > 0:
            c.seek(info.start_pts + int(wanted[0] / info.fps / info.time_base), stream=info.stream)
        packets, index, after = [], [], 0
        for p in c.demux(info.stream):
            if p.size:
                packets.append(p)
                index.append(int(round((p.pts - info.start_pts) * info.time_base * info.fps)))
                after += after > 0 or index[-1] > wanted[-1]
                if after > 16:
                    break
        stop = max(k for k, i in enumerate(index) if i <= wanted[-1])
        needed = set(wanted.tolist())
        for p, i in zip(packets[:stop + 1], index):
            codec.skip_frame = "DEFAULT" if i in needed else "NONREF"
            codec.decode(p)


def peers():
    """(name, sample function) of every method that can run here; prints why one is skipped."""
    methods = [("naive", naive_sample), ("PySlowFast", pyslowfast_sample)]
    try:
        import torchcodec.decoders  # noqa: F401
        methods.append(("torchcodec", torchcodec_sample))
    except Exception as e:  # not installed, or its FFmpeg libraries are missing: one line, no traceback
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"skipping torchcodec: {reason[:160]} (pip install -r bench/requirements.txt)")
    return methods + [("ours", ours_sample), ("floor", floor_sample), ("ref-chain", refchain_floor_sample)]


def bench(paths, repeats, ds, methods):
    """clips/s per worker of each method (CPU time), methods interleaved video by video."""
    times = {name: 0.0 for name, _ in methods}
    samples = 0
    for r in range(repeats):
        for i, path in enumerate(paths):
            for name, fn in methods:
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
        skipped = sum("undecodable" in ds[int(i)] for i in order[:warmup])
        start, peak, trace = rss_mb(), 0.0, []
        for k, i in enumerate(order):
            skipped += "undecodable" in ds[int(i)]
            peak = max(peak, rss_mb())
            if (k + 1) % 100 == 0:
                trace.append(round(rss_mb()))
        return start, rss_mb(), peak, skipped, trace


def print_tables(rows, names, ds):
    """clips/s per worker, the ratios of ours, and (last) samples/s per core with cores per GPU."""
    print("clips/s per worker (3-view samples, T=8 tau=8, 224 crops, worker-side augmentation)")
    print(f"{'videos':44s}" + "".join(f"{n:>11s}" for n in names))
    for set_name, r in rows:
        print(f"{set_name:44s}" + "".join(f"{r[n]:11.2f}" for n in names))
    print("ours: speed-up over naive / PySlowFast, time vs forward-decode floor and vs ref-chain floor")
    for set_name, r in rows:
        print(f"{set_name:44s} {r['ours'] / r['naive']:6.2f}x {r['ours'] / r['PySlowFast']:6.2f}x "
              f"{r['floor'] / r['ours']:6.2f}x floor {r['ref-chain'] / r['ours']:6.2f}x ref-chain")
    aug = augment.GpuAugment()
    x = torch.randint(0, 256, (12, 3, 8, 224, 224), dtype=torch.uint8)
    aug(x)
    t = time.perf_counter()
    aug(x)
    print(f"device-side colour/grayscale/blur on this CPU, 1 thread: {12 / (time.perf_counter() - t):.1f} clips/s")
    print(f"samples/s per core (cores per GPU at {GPU_SAMPLES_PER_S} samples/s per GPU)")
    print(f"{'videos':44s}" + "".join(f"{n:>15s}" for n in names))
    for set_name, r in rows:
        cells = [f"{r[n] / ds.num_clips:6.1f} ({GPU_SAMPLES_PER_S * ds.num_clips / r[n]:5.1f})" for n in names]
        print(f"{set_name:44s}" + "".join(f"{c:>15s}" for c in cells))


# ---- --prepared: sources against prepare.py's copies ------------------------------------------

# (label, seconds between keyframes) of the copies; 250 frames is libx264's default, at 30 fps.
KEYFRAME_INTERVALS = (("1 s", 1.0), ("2 s", 2.0), ("4 s", 4.0), ("250 fr", 250 / 30))
DEFAULT_INTERVAL = next(label for label, s in KEYFRAME_INTERVALS if s == video.KEYFRAME_EVERY)  # prepare.py's


def children_cpu():
    """CPU seconds of this process's finished children (and theirs: prepare.py's workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_prepare(paths, folder, keyframe_every):
    """prepare.py over paths into folder, one worker, as a user runs it. Returns ({source: copy},
    CPU seconds of its processes, minutes of source video, MB of the copies)."""
    listed = os.path.join(folder, "sources.txt")
    with open(listed, "w") as f:
        f.writelines(f"{p} 0\n" for p in paths)
    command = [sys.executable, os.path.join(REPO, "prepare.py"), "--list", listed, "--num_workers", "1",
               "--output_dir", os.path.join(folder, "copy"), "--keyframe_every", str(keyframe_every)]
    start = children_cpu()
    done = subprocess.run(command, capture_output=True, text=True)
    cpu = children_cpu() - start
    if done.returncode:
        raise RuntimeError(f"prepare.py failed: {done.stderr.strip().splitlines()[-1:]}")
    with open(os.path.join(folder, "copy", "train_manifest.json")) as f:
        done = [r for r in json.load(f)["records"] if "copy" in r]
    copies = {r["source"]["path"]: os.path.join(folder, "copy", r["copy"]["path"]) for r in done}
    return copies, cpu, sum(r["source"]["seconds"] for r in done) / 60, sum(r["copy"]["size"] for r in done) / 1e6


def startup_cpu():
    """CPU seconds of starting prepare.py (interpreter and imports): `prepare.py --help`, best of 3."""
    costs = []
    for _ in range(3):
        start = children_cpu()
        subprocess.run([sys.executable, os.path.join(REPO, "prepare.py"), "--help"], check=True, capture_output=True)
        costs.append(children_cpu() - start)
    return min(costs)


def prepared_row(paths, repeats, ds, startup):
    """samples/s per core on the sources and on each copy; MB per video-minute of each copy; prepare.py's
    CPU seconds per video-minute and break-even epochs at the default keyframe interval."""
    paths = [os.path.abspath(p) for p in paths]
    methods, row = [("source", ours_sample)], {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, seconds in KEYFRAME_INTERVALS:
            folder = os.path.join(tmp, label.replace(" ", ""))
            os.makedirs(folder)
            copies, cpu, minutes, mb = run_prepare(paths, folder, seconds)
            missing = [p for p in paths if p not in copies]
            if missing:
                raise RuntimeError(f"prepare.py left out {len(missing)} videos, first {missing[0]}")
            row[label] = dict(cost=(cpu - startup) / minutes, mb=mb / minutes)
            methods.append((label, lambda p, d, r, c=copies: ours_sample(c[p], d, r)))
        rates = bench(paths, repeats, ds, methods)
    row.update({name: dict(row.get(name, {}), rate=rate / ds.num_clips) for name, rate in rates.items()})
    before, after = 1 / row["source"]["rate"], 1 / row[DEFAULT_INTERVAL]["rate"]  # CPU s per sample
    row["break_even"] = row[DEFAULT_INTERVAL]["cost"] * minutes / len(paths) / (before - after)
    return row


def print_prepared(rows):
    labels = [label for label, _ in KEYFRAME_INTERVALS]
    print("samples/s per core (ours, 3 clips T=8 tau=8, 224 crops) on the sources and on prepare.py's copies "
          "(short side 320, keyframe every 1 s / 2 s / 4 s / 250 frames); MB per video-minute of each copy")
    print(f"{'videos':46s}{'source':>8s}" + "".join(f"{x:>8s}" for x in labels * 2))
    for name, r in rows:
        print(f"{name:46s}{r['source']['rate']:8.2f}" + "".join(f"{r[x]['rate']:8.2f}" for x in labels)
              + "".join(f"{r[x]['mb']:8.2f}" for x in labels))
    print(f"at the default keyframe interval ({DEFAULT_INTERVAL}): samples/s per core before -> after, prepare.py "
          f"CPU s per video-minute, break-even in epochs")
    for name, r in rows:
        d, before = r[DEFAULT_INTERVAL], r["source"]["rate"]
        print(f"{name:46s}{before:7.2f} -> {d['rate']:6.2f} ({d['rate'] / before:4.2f}x)  prepare {d['cost']:5.1f} "
              f"CPU s per video-minute  break-even {r['break_even']:5.1f} epochs")


def prepared_main(args, fight):
    ds = data.VideoDataset([], num_clips=3, num_frames=8, stride=8, crop_size=224, mode="train")
    sets = [(f"generated {h}p ({args.num_hd} x 10 s, 30 fps)", hd_videos(args.cache, args.num_hd, h, w))
            for h, w in ((1080, 1920), (720, 1280))]
    sets.append(("generated 720p (1 x 60 s, 30 fps)", hd_videos(args.cache, 1, 720, 1280, seconds=60)))
    if fight:
        sets.append((f"surveillance-fight ({len(fight)} clips, 320x240..1080p)", fight))
    else:
        print(f"skipping surveillance-fight: no {os.path.join(args.fight_dir, 'labels.csv')}")
    startup = startup_cpu()
    print(f"prepare.py start-up (subtracted): {startup:.2f} CPU s")
    print_prepared([(name, prepared_row(paths, args.repeats, ds, startup)) for name, paths in sets])


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
    p.add_argument("--prepared", action="store_true", help="sources up to 1080p against prepare.py's copies instead")
    p.add_argument("--num_hd", type=int, default=3, help="generated 10-s videos per resolution for --prepared")
    args = p.parse_args()
    torch.set_num_threads(1)  # one data-loader worker (DataLoader workers run single-threaded)

    fight_csv = os.path.join(args.fight_dir, "labels.csv")
    fight = []
    if os.path.isfile(fight_csv):
        videos, _ = data.read_csv_list(fight_csv)
        fight = [v for v, _ in videos[:: max(1, len(videos) // args.num_fight)]][: args.num_fight]
    if args.prepared:
        return prepared_main(args, fight)
    kinetics = kinetics_like_videos(args.cache, args.num_kinetics)

    if args.memory:
        start, end, peak, skipped, trace = memory_run(fight + kinetics[KINETICS_VARIANTS[0][0]], args.decodes)
        half = len(trace) // 2
        drift = sum(trace[half:]) / max(1, len(trace) - half) - sum(trace[:half]) / max(1, half)
        print(f"RSS (MB) every 100 of {args.decodes} decodes (3 clips of 8x224x224 each): {trace}")
        print(f"memory: {start:.0f} MB after a 100-decode warm-up, {end:.0f} MB after {args.decodes} more, "
              f"range {min(trace)}-{max(trace)} MB, peak {peak:.0f} MB; second half minus first half "
              f"{drift:+.1f} MB; {skipped} broken-file decodes skipped")
        return

    ds = data.VideoDataset([], num_clips=3, num_frames=8, stride=8, crop_size=224, mode="train")
    methods = peers()
    rows = []
    for name, paths in [("surveillance-fight (2 s, 320x240..1080p)", fight)] + list(kinetics.items()):
        if not paths:
            print(f"skipping {name}: no videos")
            continue
        rows.append((name, bench(paths, args.repeats, ds, methods)))
    print_tables(rows, [name for name, _ in methods], ds)


if __name__ == "__main__":
    main()
