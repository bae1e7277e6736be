"""Training throughput of iBoot: slow_r50 online network, ViT-B/16 (CLIP) teacher, 8x224x224 clips.

    python bench/train.py                      # CPU, small batch
    python bench/train.py --device cuda --batch_sizes 13 26 52 --precision bf16

For each batch size: clips/s (online clips per second: 2 per video, as in the paper's 3-view
setting), peak memory, where the time of a step goes (teacher forward, online forward + backward,
optimiser step) and, on a GPU, the achieved fraction of the bf16 peak. FLOPs per video are counted
as 3 x online forward (forward + backward ~ 3 forwards) for each of the two online clips plus one
teacher forward over the 8 frames of v_ref; one multiply-add = 2 FLOPs. Inputs are random tensors
so the figure isolates the model; with --videos CSV the clips come instead from the real data
pipeline (3-view sampling, decoding in --num_workers processes, device-side augmentation) and the
time spent waiting for data is reported too. The last line is the summary.
"""
import argparse
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import augment  # noqa: E402
import data  # noqa: E402
import iboot  # noqa: E402
import lars  # noqa: E402
import models  # noqa: E402
import teachers  # noqa: E402
import precision as precisions  # noqa: E402

# Dense bf16 tensor-core peaks (datasheet, FLOP/s) for the fraction-of-peak figure.
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "V100": 125e12, "L40S": 362e12}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_bf16(device):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in BF16_PEAK.items():
        if key in name:
            return value
    return None


def get_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", default="slow_r50")
    p.add_argument("--teacher", default="clip_vit_b16")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[2])
    p.add_argument("--num_frames", type=int, default=8)
    p.add_argument("--crop_size", type=int, default=224)
    p.add_argument("--steps", type=int, default=3, help="timed steps per batch size (after 1 warm-up)")
    p.add_argument("--precision", default="auto", choices=precisions.PRECISIONS,
                   help="as in pretrain.py: auto is bf16 on a GPU that has it, else fp32")
    p.add_argument("--videos", default=None,
                   help="CSV path,label of real videos (e.g. ../shared/data/surveillance-fight/labels.csv): "
                        "feed the steps from the data pipeline and measure the data wait")
    p.add_argument("--num_workers", type=int, default=1, help="data workers with --videos")
    return p.parse_args()


def clip_source(args, B, device):
    """A function returning the 3 clips of the next step: random tensors, or with --videos the real
    pipeline (3-view sampling, decoding in workers, device-side augmentation)."""
    T, S = args.num_frames, args.crop_size
    if not args.videos:
        clips = [torch.rand(B, 3, T, S, S, device=device) for _ in range(3)]
        return lambda: clips
    videos, _ = data.read_csv_list(args.videos)
    dataset = data.VideoDataset(videos, num_clips=3, num_frames=T, stride=8, crop_size=S)
    loader = torch.utils.data.DataLoader(dataset, batch_size=B, shuffle=True, drop_last=True,
                                         num_workers=args.num_workers, collate_fn=data.collate_skip_bad,
                                         pin_memory=device.type == "cuda", persistent_workers=True)
    gpu_augment = augment.GpuAugment().to(device)
    state = {"batches": iter(loader)}

    def next_clips():
        batch = next(state["batches"], None)
        if batch is None:
            state["batches"] = iter(loader)
            batch = next(state["batches"])
        views = gpu_augment(batch["clips"].to(device, non_blocking=True).flatten(0, 1))
        views = views.unflatten(0, (batch["clips"].shape[0], 3))
        return [views[:, v] for v in range(3)]
    return next_clips


def measure(objective, optimizer, next_clips, steps, device, precision):
    """Seconds spent per part over `steps` timed steps (after one warm-up step)."""
    times = {"data": 0.0, "teacher": 0.0, "online": 0.0, "optim": 0.0, "total": 0.0}
    for step in range(steps + 1):
        sync(device)
        t_data = time.time()
        clips = next_clips()
        sync(device)
        t0 = time.time()
        with precisions.autocast(device, precision):
            objective.teacher_features(clips[0])  # the teacher alone, to split the step time
        sync(device)
        t1 = time.time()
        with precisions.autocast(device, precision):
            loss = objective(clips)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync(device)
        t2 = time.time()
        optimizer.step()
        sync(device)
        t3 = time.time()
        if step > 0:  # the first step warms up allocators, kernels and data workers
            times["data"] += t0 - t_data
            times["teacher"] += t1 - t0
            times["online"] += (t2 - t1) - (t1 - t0)  # the full step ran the teacher once too
            times["optim"] += t3 - t2
            times["total"] += (t3 - t1) + (t0 - t_data)
    return times


def main():
    args = get_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    teacher = teachers.build_teacher(args.teacher, weights="random")
    objective = iboot.IBoot(models.build_encoder(args.arch), [teacher]).to(device)
    if device.type == "cuda":
        objective.encoder.to(memory_format=torch.channels_last_3d)
    optimizer = lars.build_lars(objective, lr=0.1, weight_decay=1e-6)
    T, S = args.num_frames, args.crop_size
    online_macs = models.count_flops(models.build_encoder(args.arch), (1, 3, T, S, S))
    teacher_macs = models.count_flops(teacher, (T, 3) + tuple(teacher.image_size))
    flops_per_video = 2 * (3 * 2 * online_macs + teacher_macs)
    precision, peak = precisions.resolve(args.precision, device), peak_bf16(device)
    print(f"device {device} | {precision} | {args.arch} ({online_macs / 1e9:.1f} GMACs per clip) | teacher "
          f"{args.teacher} ({teacher_macs / 1e9:.1f} GMACs per {T} frames) | {flops_per_video / 1e12:.3f} TFLOP "
          f"per video")
    print(f"{'batch':>6} {'clips/s':>8} {'peak mem GiB':>12} {'data+aug %':>11} {'teacher %':>9} {'online f+b %':>12} "
          f"{'optim %':>7} {'% bf16 peak':>11}")
    summary = []
    for B in args.batch_sizes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = measure(objective, optimizer, clip_source(args, B, device), args.steps, device, precision)
        step_time = times["total"] / args.steps
        clips_per_s = 2 * B / step_time
        mem = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 30
        frac = (B * flops_per_video / step_time / peak) if peak else None
        shares = {k: 100 * times[k] / times["total"] for k in ("data", "teacher", "online", "optim")}
        print(f"{B:>6} {clips_per_s:>8.2f} {mem:>12.2f} {shares['data']:>11.0f} {shares['teacher']:>9.0f} "
              f"{shares['online']:>12.0f} {shares['optim']:>7.0f} {'' if frac is None else f'{100 * frac:.1f}':>11}")
        summary.append(f"B={B}: {clips_per_s:.2f} clips/s, {mem:.1f} GiB, data+aug {shares['data']:.0f}% "
                       f"teacher {shares['teacher']:.0f}% online {shares['online']:.0f}% optim {shares['optim']:.0f}%"
                       + ("" if frac is None else f", {100 * frac:.1f}% of bf16 peak"))
    print("summary: " + " | ".join(summary))


if __name__ == "__main__":
    main()
