"""Self-supervised pretraining of a video encoder with iBoot (or the rhoBYOL baseline).

    python pretrain.py                                   # embedded default: synthetic videos, CPU, minutes
    torchrun --nproc_per_node=8 pretrain.py --dataset kinetics --data_root /data/k400 \
        --train_list /data/k400/train.csv --teacher clip_vit_b16 --output_dir runs/iboot_clip

One script trains every pretraining row of the paper (Tables 1-9) from flags: --method, --teacher
(or an ensemble "a+b"), --num_clips (the #views ablation), --no_temporal_pool, --extra_ssl,
--arch, --init (--inflation), --dataset, --augmentation (the paper's recipe for iBoot, PySlowFast's
BYOL recipe for rhoBYOL). It runs on one CPU, on one GPU, or on many GPUs and nodes under torchrun
(DDP, SyncBN, bf16 autocast). Started again with the same --output_dir and the same flags it resumes
from the latest checkpoint; with other flags it stops and names them.

main() reads as its steps: set up (defaults, torchrun, seeds), the data loader, the objective
(online encoder + teachers or EMA branch), DDP and the optimiser, resume, then the epochs
(train_one_epoch -> train_step) with a checkpoint after each, and the k-NN report.

Defaults are the paper's settings (Section 4.1): LARS, base lr 2.4 x global batch / 256, 8 warm-up
epochs then cosine (per iteration), weight decay 1e-6, 100 epochs, 13 clips per GPU, T=8, tau=8,
224 crops, three clips (v_ref, v1, v2), temporal pooling on. With --dataset synthetic (the default)
the size flags you leave unset take the small values of EMBEDDED_DEFAULTS instead, so that the plain
`python pretrain.py` finishes on a laptop CPU in minutes; the run prints which ones it used.
"""
import argparse
import copy
import math
import os
import time

import torch
import torch.nn as nn

import augment
import checkpoint
import data
import engine
import iboot
import lars
import models
import teachers
import utils

# Paper settings (Section 4.1) for the flags whose scale depends on the data set.
PAPER_DEFAULTS = dict(arch="slow_r50", teacher="clip_vit_b16", epochs=100, batch_size_per_gpu=13,
                      warmup_epochs=8, crop_size=224, num_frames=8, stride=8, num_workers=8)
# The embedded default: small enough for a 2-core CPU in under ten minutes, k-NN after training.
EMBEDDED_DEFAULTS = dict(arch="slow_tiny", teacher="efficientnet_lite0", epochs=12, batch_size_per_gpu=8,
                         warmup_epochs=1, crop_size=64, num_frames=4, stride=8, num_workers=1)


def get_args_parser():
    p = argparse.ArgumentParser("iboot pretraining", add_help=True,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("method")
    g.add_argument("--method", default="iboot", choices=["iboot", "rhobyol"],
                   help="iboot: frozen image teacher as target (the paper); rhobyol: EMA video target (baseline)")
    g.add_argument("--teacher", default=None,
                   help="teacher name, or several joined by '+' for an ensemble (Table 2). Known: "
                        + ", ".join(teachers.TEACHERS) + ", open_clip:MODEL:TAG, timm:MODEL. "
                        f"Paper default {PAPER_DEFAULTS['teacher']}; synthetic default {EMBEDDED_DEFAULTS['teacher']}")
    g.add_argument("--teacher_weights", default=None,
                   help="local weights file for the teacher (needed offline); for an ensemble, "
                        "one path per teacher joined by '+'")
    g.add_argument("--num_clips", type=int, default=None,
                   help="clips sampled per video. iboot: 3 = v_ref,v1,v2 (paper), 2 = v_ref,v1, "
                        "1 = v1=v_ref (Table 5). rhobyol: rho (default 2)")
    g.add_argument("--no_temporal_pool", action="store_true",
                   help="frame-wise loss instead of pooling the T features first (Table 4)")
    g.add_argument("--extra_ssl", action="store_true",
                   help="add the momentum-encoder SSL loss to iBoot (Table 3)")
    g.add_argument("--momentum", type=float, default=0.996,
                   help="EMA momentum, cosine-annealed to 1 (rhobyol and --extra_ssl)")

    g = p.add_argument_group("online network")
    g.add_argument("--arch", default=None, choices=list(models.ENCODERS),
                   help=f"online video encoder (paper {PAPER_DEFAULTS['arch']}; Table 7: slow_r101)")
    g.add_argument("--init", default="scratch",
                   help="'scratch', or a file to start from: a torchvision-layout 2D ResNet state dict "
                        "(inflated, Table 9), a PySlowFast checkpoint or an iboot checkpoint")
    g.add_argument("--inflation", default="mean", choices=models.INFLATIONS,
                   help="how a 2D --init is inflated: mean = the 2D kernel repeated over the k temporal taps / k "
                        "(PySlowFast utils/checkpoint.py inflate_weight, I3D); center = on the centre tap only")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="synthetic", choices=data.DATASETS,
                   help="synthetic (embedded default), kinetics (K400/K600 lists), ucf101, hmdb51, ssv2, folder, csv")
    g.add_argument("--data_root", default="cache/synthetic", help="folder of the videos (and split files)")
    g.add_argument("--train_list", default=None,
                   help="list file for kinetics/csv (PySlowFast 'path label' lines, or a CSV path,label)")
    g.add_argument("--split", default=1, type=int, help="official split for ucf101/hmdb51")
    g.add_argument("--skip_missing", action="store_true",
                   help="drop listed videos that do not exist instead of stopping at start-up")
    g.add_argument("--num_frames", type=int, default=None, help="T frames per clip (paper 8)")
    g.add_argument("--stride", type=int, default=None, help="tau, frame stride at 30 fps (paper 8)")
    g.add_argument("--crop_size", type=int, default=None, help="training crop (paper 224)")
    g.add_argument("--num_workers", type=int, default=None, help="data loading processes per GPU")
    g.add_argument("--augmentation", default=None, choices=list(augment.PRETRAIN_RECIPES),
                   help="paper = Section 4.1's text (short side 256-320, 224 crop; jitter p=0.8 "
                        "0.2/0.2/0.2/0.05, grayscale 0.2, blur 0.5); pyslowfast_byol = PySlowFast "
                        "BYOL_SlowR50_8x8.yaml (random resized crop of 20-76.6%% of the area, aspect 0.75-1.33; "
                        "jitter p=0.8 0.6/0.6/0.6/0.15, grayscale 0.2, blur 0.5). Default: paper for iboot, "
                        "pyslowfast_byol for rhobyol")
    return add_training_args(p)


def add_training_args(p):
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help="paper: 100 (ablations), 200 (Tables 6, 9, 10)")
    g.add_argument("--batch_size_per_gpu", type=int, default=None, help="clips per GPU (paper 13)")
    g.add_argument("--base_lr", type=float, default=2.4, help="lr = base_lr x global batch / 256 (paper 2.4)")
    g.add_argument("--warmup_epochs", type=float, default=None, help="linear warm-up (paper 8)")
    g.add_argument("--weight_decay", type=float, default=1e-6, help="paper 1e-6")
    g.add_argument("--optimizer", default="lars", choices=["lars", "sgd"], help="paper: LARS")
    g.add_argument("--clip_grad", type=float, default=0.0, help="max gradient norm (0: off, as the paper)")

    g = p.add_argument_group("system")
    g.add_argument("--output_dir", default="output/pretrain", help="checkpoints, logs and config go here")
    g.add_argument("--saveckp_freq", type=int, default=20, help="also keep checkpoint_XXXX.pth every N epochs")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--precision", default="auto", choices=utils.PRECISIONS,
                   help="autocast precision (auto: bf16 on a GPU that has it, else fp32)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--log_every", type=int, default=10,
                   help="iterations between JSON-lines records (and progress lines when stderr is no terminal)")
    g.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars")
    g.add_argument("--max_iters_per_epoch", type=int, default=0,
                   help="cut epochs short (smoke tests); 0 = full epochs")
    g.add_argument("--knn_eval", default="auto", choices=["auto", "yes", "no"],
                   help="after training, k-NN top-1 of the trained and of the random-init encoder "
                        "on the validation split (auto: yes for synthetic)")
    return p


def setup(args):
    """Join torchrun, fill unset flags (printed), derive the global batch and lr, seed, and generate
    the synthetic set when it is asked for. Returns the device."""
    rank, world, device = utils.init_distributed(args.device)
    utils.apply_defaults(args, EMBEDDED_DEFAULTS if args.dataset == "synthetic" else PAPER_DEFAULTS,
                         f"--dataset {args.dataset}")
    utils.apply_defaults(args, dict(augmentation="paper" if args.method == "iboot" else "pyslowfast_byol"),
                         f"--method {args.method}")
    if args.num_clips is None:
        args.num_clips = 3 if args.method == "iboot" else 2
    if args.method == "iboot" and args.num_clips not in (1, 2, 3):
        raise ValueError(f"--num_clips must be 1, 2 or 3 for iboot, got {args.num_clips}")
    if args.method == "rhobyol" and args.num_clips < 2:
        raise ValueError(f"--num_clips (rho) must be at least 2 for rhobyol, got {args.num_clips}")
    if args.knn_eval == "auto":
        args.knn_eval = "yes" if args.dataset == "synthetic" else "no"
    args.world_size, args.global_batch = world, args.batch_size_per_gpu * world
    args.lr = args.base_lr * args.global_batch / 256
    args.precision = utils.resolve_precision(args.precision, device)
    utils.check_training_precision(device, args.precision, args.num_frames)
    utils.seed_everything(args.seed + rank)
    if args.dataset == "synthetic":
        data.ensure_synthetic_dataset(args.data_root)
    return device


def build_loader(args, device):
    """Training samples of num_clips clips each, shuffled (DistributedSampler under torchrun)."""
    train_set = data.build_dataset(args.dataset, root=args.data_root, split="train", list_file=args.train_list,
                                   official_split=args.split, skip_missing=args.skip_missing,
                                   num_clips=args.num_clips, num_frames=args.num_frames, stride=args.stride,
                                   crop_size=args.crop_size, mode="train", seed=args.seed,
                                   resized_crop=augment.PRETRAIN_RECIPES[args.augmentation]["resized_crop"])
    sampler = torch.utils.data.DistributedSampler(train_set, shuffle=True, seed=args.seed) \
        if args.world_size > 1 else None
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.batch_size_per_gpu, shuffle=sampler is None, sampler=sampler,
        num_workers=args.num_workers, pin_memory=device.type == "cuda", drop_last=True,
        collate_fn=data.collate_skip_bad, persistent_workers=False)
    if len(loader) == 0:
        raise ValueError(f"the training set has {len(train_set)} videos, fewer than one batch of "
                         f"--batch_size_per_gpu {args.batch_size_per_gpu} x {args.world_size} processes")
    return loader, sampler


def build_objective(args):
    encoder = models.build_encoder(args.arch)
    if args.init != "scratch":
        models.load_encoder_weights(encoder, args.init, inflate_mode=args.inflation)
    if args.method == "rhobyol":
        return iboot.RhoBYOL(encoder, momentum=args.momentum)
    teacher_list = teachers.build_teachers(args.teacher, weights=args.teacher_weights)
    return iboot.IBoot(encoder, teacher_list, temporal_pool=not args.no_temporal_pool,
                       extra_ssl=args.extra_ssl, momentum=args.momentum)


def prepare_training(objective, args, device):
    """SyncBN and DDP under torchrun (teachers stay frozen in eval mode), the optimiser (LARS, paper)
    and the fp16 loss scaler. Returns (model to call, optimizer, scaler)."""
    model = objective
    if device.type == "cuda":
        if args.world_size > 1:  # SyncBN across GPUs (paper)
            objective.convert_sync_batchnorm()
        objective.encoder.to(memory_format=torch.channels_last_3d)
    if args.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    if args.optimizer == "lars":
        optimizer = lars.build_lars(objective, lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.SGD(objective.trainable_parameters(), lr=args.lr, momentum=0.9,
                                    weight_decay=args.weight_decay)
    return model, optimizer, utils.grad_scaler(device, args.precision)


def build_gpu_augment(args, device):
    """The device-side colour jitter, grayscale and blur of --augmentation (augment.PRETRAIN_RECIPES)."""
    return augment.GpuAugment(**augment.PRETRAIN_RECIPES[args.augmentation]["jitter"]).to(device)


def train_one_epoch(model, objective, loader, optimizer, scaler, gpu_augment, epoch, args, state, logger,
                    tb_writer, device):
    """One pass over the loader (`epoch` is 1-based). Returns the epoch's statistics (over ranks)."""
    model.train()
    iters = engine.iterations_per_epoch(loader, args.max_iters_per_epoch)
    total_steps, warmup_steps = args.epochs * iters, int(args.warmup_epochs * iters)
    progress = utils.Progress(iters, f"epoch {epoch}/{args.epochs}", args.log_every)
    loss_sum, clips_seen, skipped, data_time, step_time = 0.0, 0, 0, 0.0, 0.0
    end = time.time()
    for it, batch in enumerate(loader):
        if it >= iters:
            break
        step = (epoch - 1) * iters + it
        lr = utils.warmup_cosine_lr(step, total_steps, warmup_steps, args.lr)
        utils.set_lr(optimizer, lr)
        objective.update_momentum(step / max(1, total_steps))
        skipped += batch["skipped"]
        waited = time.time() - end
        if batch["clips"].shape[0] == 0:  # every video of this batch was undecodable
            end = time.time()
            continue
        out = train_step(model, objective, batch["clips"].to(device, non_blocking=True), optimizer, scaler,
                         gpu_augment, args, device, where=f"epoch {epoch}, iteration {it}, lr {lr:.4g}")
        elapsed, end = time.time() - end, time.time()
        B, V = batch["clips"].shape[:2]
        state["step"] = step + 1
        loss_sum, clips_seen = loss_sum + out["loss"].item() * B, clips_seen + B
        data_time, step_time = data_time + waited, step_time + elapsed
        clips_per_s = B * V * args.world_size / max(elapsed, 1e-9)
        progress.update(loss=f"{out['loss'].item():.4f}", lr=f"{lr:.3g}", clips_s=f"{clips_per_s:.1f}")
        if it % args.log_every == 0 or it == iters - 1:
            record = dict(epoch=epoch, iter=it, step=step, lr=lr, clips_per_s=clips_per_s,
                          data_wait_frac=waited / max(elapsed, 1e-9), skipped_videos=skipped,
                          **{k: v.item() for k, v in out.items() if torch.is_tensor(v)})
            log_step(logger, tb_writer, record, step)
    progress.close()
    n = utils.all_reduce_sum(clips_seen, device)
    return dict(epoch=epoch, loss=utils.all_reduce_sum(loss_sum, device) / max(1, n),
                skipped_videos=int(utils.all_reduce_sum(skipped, device)),
                data_wait_frac=data_time / max(step_time, 1e-9), lr=lr)


def train_step(model, objective, clips, optimizer, scaler, gpu_augment, args, device, where):
    """Augment on the device, forward (autocast), backward, optimiser step, EMA update. clips: uint8
    (B, V, 3, T, S, S). Returns the objective's output (loss and terms)."""
    B, V = clips.shape[:2]
    # Colour jitter, grayscale and blur run here, batched on the training device (augment.py).
    views = gpu_augment(clips.flatten(0, 1)).unflatten(0, (B, V))
    with utils.autocast(device, args.precision):
        out = model([views[:, v] for v in range(V)])
    loss = out["loss"]
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"loss is {loss.item()} at {where}; stopping")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if args.clip_grad:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(objective.trainable_parameters(), args.clip_grad)
    scaler.step(optimizer)
    scaler.update()
    objective.after_step()  # EMA update of the momentum branch (no-op without one)
    return out


def log_step(logger, tb_writer, record, step):
    logger.log(**record)
    if tb_writer is not None:
        for k, v in record.items():
            if isinstance(v, float):
                tb_writer.add_scalar(f"train/{k}", v, step)


class TeacherAsEncoder(nn.Module):
    """A frozen image teacher seen through the encoder interface (normalised clip -> (N, D, T)), so
    k-NN can measure the teacher's own frame features on the same clips: the reference the student
    is regressing."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher, self.feat_dim = teacher, teacher.dim

    def forward(self, x):
        frames = augment.student_input_to_frames(x).transpose(1, 2).flatten(0, 1)  # (N*T, 3, H, W) in [0, 1]
        return self.teacher(frames).unflatten(0, (x.shape[0], x.shape[2])).transpose(1, 2)


def knn_report(objective, initial_state, args, device):
    """k-NN top-1 on the validation split: the trained encoder beside the same one at initialisation
    (and, for iBoot, beside the teacher's own frame features averaged over the clip). Every rank
    encodes its share of the videos."""
    # A quick check, not the paper's protocol (eval_knn.py is): the training crop and the centre clip.
    splits = [data.build_dataset(args.dataset, root=args.data_root, split=split, mode="test",
                                 test_clips=1, test_crops=1, num_frames=args.num_frames,
                                 stride=args.stride, crop_size=args.crop_size, seed=args.seed,
                                 test_crop_size=args.crop_size, test_spacing="offset")
              for split in ("train", "val")]
    random_encoder = copy.deepcopy(objective.encoder)
    random_encoder.load_state_dict(initial_state)
    nets = {"trained": objective.encoder, "random_init": random_encoder}
    if isinstance(objective, iboot.IBoot):
        nets["teacher"] = TeacherAsEncoder(objective.teachers[0])
    return {name: engine.knn_top1_on_sets(net, *splits, device=device, k=20, batch_size=16,
                                          num_workers=args.num_workers, precision=args.precision)
            for name, net in nets.items()}


def report_knn(objective, initial_encoder, args, device, logger):
    res = knn_report(objective, initial_encoder, args, device)
    logger.log(kind="knn", **res)
    teacher = f" | teacher {args.teacher} (frame features) {res['teacher']:.1f}%" if "teacher" in res else ""
    utils.print_main(f"k-NN top-1 (k=20) on {args.dataset} val: trained {res['trained']:.1f}% | "
                     f"random init {res['random_init']:.1f}%{teacher}")


def resume(objective, optimizer, scaler, args, fingerprint):
    """Restore a run saved in --output_dir with the same defining flags; returns (epoch, step,
    initial encoder state or None)."""
    ckpt = checkpoint.resume_run(args.output_dir, fingerprint)
    if ckpt is None:
        return 0, 0, None
    objective.load_checkpoint_state(ckpt)
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    utils.print_main(f"resumed from {args.output_dir}: {ckpt['epoch']} of {args.epochs} epochs done, "
                     f"step {ckpt['step']}")
    return ckpt["epoch"], ckpt["step"], ckpt["initial_encoder"]


def tensorboard_writer(args):
    if not (args.tensorboard and utils.is_main_process()):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
    return SummaryWriter(os.path.join(args.output_dir, "tensorboard"))


def main(args):
    device = setup(args)
    loader, sampler = build_loader(args, device)
    torch.manual_seed(args.seed)  # same initial weights on every rank
    objective = build_objective(args).to(device)
    model, optimizer, scaler = prepare_training(objective, args, device)
    fingerprint = checkpoint.run_fingerprint(args)
    start_epoch, step, initial_encoder = resume(objective, optimizer, scaler, args, fingerprint)
    initial_encoder = initial_encoder or copy.deepcopy(objective.encoder.state_dict())
    utils.save_config(args, args.output_dir)
    logger, tb_writer = utils.JsonlLogger(os.path.join(args.output_dir, "log.jsonl")), tensorboard_writer(args)
    gpu_augment, state = build_gpu_augment(args, device), {"step": step}
    utils.print_main(f"{args.method} | encoder {args.arch} | teacher {args.teacher if args.method == 'iboot' else '-'}"
                     f" | {len(loader.dataset)} videos | {args.world_size} process(es) on {device} | batch "
                     f"{args.batch_size_per_gpu} per GPU, {args.global_batch} global | lr {args.lr:.4g} | "
                     f"{args.precision} | epochs {args.epochs}")
    for epoch in range(start_epoch + 1, args.epochs + 1):
        # Everything random in an epoch derives from (seed, epoch): data order, worker seeds and the
        # device-side augmentation. A run resumed from an epoch checkpoint therefore replays exactly
        # what the interrupted run would have done.
        if sampler is not None:
            sampler.set_epoch(epoch)
        torch.manual_seed(args.seed * 1000 + epoch)
        gpu_augment.reseed(args.seed * 1000 + epoch + utils.get_rank() * 7919)
        stats = train_one_epoch(model, objective, loader, optimizer, scaler, gpu_augment, epoch, args,
                                state, logger, tb_writer, device)
        utils.print_main(f"epoch {epoch}/{args.epochs}: loss {stats['loss']:.4f}, skipped videos "
                         f"{stats['skipped_videos']}, data wait {100 * stats['data_wait_frac']:.0f}%")
        logger.log(kind="epoch", **stats)
        keep = args.saveckp_freq and epoch % args.saveckp_freq == 0
        checkpoint.save_run(args.output_dir, dict(
            objective.checkpoint_state(), encoder_name=args.arch, optimizer=optimizer.state_dict(),
            scaler=scaler.state_dict(), epoch=epoch, step=state["step"], fingerprint=fingerprint, args=vars(args),
            initial_encoder=initial_encoder), keep_as=f"checkpoint_{epoch:04d}.pth" if keep else None)
    if args.knn_eval == "yes":
        report_knn(objective, initial_encoder, args, device, logger)
    if tb_writer is not None:
        tb_writer.close()
    utils.cleanup_distributed()
    return objective


if __name__ == "__main__":
    utils.run_cli(main, get_args_parser())
