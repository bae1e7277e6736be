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
import types

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
                         warmup_epochs=1, crop_size=64, num_frames=4, stride=8, num_workers=1,
                         data_root=data.SYNTHETIC_ROOT)


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
    models.add_inflation_arg(g, "--init")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="synthetic", choices=data.DATASETS,
                   help="synthetic (embedded default), kinetics (K400/K600 lists), ucf101, hmdb51, ssv2, folder, csv")
    g.add_argument("--data_root", default=None,
                   help=f"folder of the videos (and split files); for --dataset synthetic {data.SYNTHETIC_ROOT}")
    g.add_argument("--train_list", default=None,
                   help="list file for kinetics/csv (PySlowFast 'path label' lines, or a CSV path,label)")
    g.add_argument("--split", default=1, type=int, help="official split for ucf101/hmdb51")
    data.add_bad_video_args(g)
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
    g.add_argument("--saveckp_freq", type=int, default=20,
                   help="also keep checkpoint_XXXX.pth every N epochs (0: keep only the latest, checkpoint.pth)")
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


# Allowed values of the numeric flags (utils.check_flags): checked at start-up, before anything is written.
FLAG_RULES = dict(momentum="[0,1]", epochs=">=1", batch_size_per_gpu=">=1", base_lr=">0", warmup_epochs=">=0",
                  weight_decay=">=0", clip_grad=">=0", saveckp_freq=">=0", log_every=">=1", max_iters_per_epoch=">=0",
                  num_frames=">=1", stride=">=1", crop_size="[32,1024]", num_workers=">=0", seed=">=0",
                  split=(1, 2, 3), max_skip_share="[0,1]")
# Weights of the encoder grown this many times beyond their initial norm: the run has diverged (the loss
# 2 - 2 cos is bounded, so it cannot show it). LARS moves a weight by lr x 0.001 of its norm per step, so
# the paper's runs change norms by a few times at most; --base_lr 1e6 on slow_tiny took them from 87 to
# 3,206 / 6,340 / 11,847 / 32,196 / 64,506 in its first five steps (measured).
MAX_WEIGHT_GROWTH = 100.0


def check_args(args):
    utils.check_flags(args, FLAG_RULES)
    if args.method == "iboot" and args.num_clips not in (1, 2, 3):
        raise ValueError(f"--num_clips {args.num_clips}: must be 1, 2 or 3 for iboot")
    if args.method == "rhobyol" and args.num_clips < 2:
        raise ValueError(f"--num_clips {args.num_clips}: must be at least 2 (rho) for rhobyol")
    if args.warmup_epochs > args.epochs:
        raise ValueError(f"--warmup_epochs {args.warmup_epochs}: must be at most --epochs {args.epochs}")


def setup(args):
    """Join torchrun, fill unset flags (printed), check every flag, derive the global batch and lr,
    seed, and generate the synthetic set when it is asked for. Returns the device."""
    rank, world, device = utils.init_distributed(args.device)
    utils.apply_defaults(args, EMBEDDED_DEFAULTS if args.dataset == "synthetic" else PAPER_DEFAULTS,
                         f"--dataset {args.dataset}")
    utils.apply_defaults(args, dict(augmentation="paper" if args.method == "iboot" else "pyslowfast_byol"),
                         f"--method {args.method}")
    if args.num_clips is None:
        args.num_clips = 3 if args.method == "iboot" else 2
    check_args(args)
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
    """Training samples of num_clips clips each, shuffled from (seed, epoch), resumable mid-epoch."""
    train_set = data.build_dataset(args.dataset, root=args.data_root, split="train", list_file=args.train_list,
                                   official_split=args.split, skip_missing=args.skip_missing,
                                   num_clips=args.num_clips, num_frames=args.num_frames, stride=args.stride,
                                   crop_size=args.crop_size, mode="train", seed=args.seed,
                                   resized_crop=augment.PRETRAIN_RECIPES[args.augmentation]["resized_crop"])
    loader, _ = data.train_loader(train_set, args.batch_size_per_gpu, args.num_workers, args.seed, device)
    if len(loader) == 0:
        raise ValueError(f"the training set has {len(train_set)} videos, fewer than one batch of "
                         f"--batch_size_per_gpu {args.batch_size_per_gpu} x {args.world_size} processes")
    return loader


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


def train_one_epoch(run, loader, epoch, args, first_iter=0, partial=None):
    """Iterations first_iter.. of one epoch (`epoch` is 1-based). Returns the epoch's sums so far
    ("loss_sum", "clips", "loaded") and "stopped_at" (the next iteration when a signal stopped it)."""
    run.model.train()
    iters = engine.iterations_per_epoch(loader, args.max_iters_per_epoch)
    total_steps, warmup_steps = args.epochs * iters, int(args.warmup_epochs * iters)
    sums = dict(partial or dict(loss_sum=0.0, clips=0, loaded=0), stopped_at=None)
    progress = utils.Progress(iters - first_iter, f"epoch {epoch}/{args.epochs}", args.log_every)
    end = time.time()
    for it, batch in enumerate(loader, start=first_iter):
        if it >= iters:
            break
        step = (epoch - 1) * iters + it
        lr = utils.warmup_cosine_lr(step, total_steps, warmup_steps, args.lr)
        utils.set_lr(run.optimizer, lr)
        run.objective.update_momentum(step / max(1, total_steps))
        run.skipped.add(batch["skipped"])
        sums["loaded"] += len(batch["skipped"]) + batch["clips"].shape[0]
        waited = time.time() - end
        if batch["clips"].shape[0] > 0:  # else every video of this batch was undecodable
            out = train_step(run, batch["clips"].to(run.device, non_blocking=True), args,
                             f"epoch {epoch}, iteration {it}, lr {lr:.4g}")
            B, V = batch["clips"].shape[:2]
            elapsed = time.time() - end
            sums["loss_sum"], sums["clips"] = sums["loss_sum"] + out["loss"].item() * B, sums["clips"] + B
            clips_per_s = B * V * args.world_size / max(elapsed, 1e-9)
            progress.update(loss=f"{out['loss'].item():.4f}", lr=f"{lr:.3g}", clips_s=f"{clips_per_s:.1f}")
            if it % args.log_every == 0 or it == iters - 1:
                log_step(run, dict(epoch=epoch, iter=it, step=step, lr=lr, clips_per_s=clips_per_s,
                                   data_wait_frac=waited / max(elapsed, 1e-9),
                                   **{k: v.item() for k, v in out.items() if torch.is_tensor(v)}), step)
        end = time.time()
        if run.stop.requested(run.device):
            sums["stopped_at"] = it + 1
            break
    progress.close()
    return sums


def train_step(run, clips, args, where):
    """Augment on the device, forward (autocast), backward, optimiser step, EMA update. clips: uint8
    (B, V, 3, T, S, S). Returns the objective's output (loss and terms). Stops the run with one line
    when the loss is not finite or the encoder's weights exploded (a norm per step: cheap beside it)."""
    B, V = clips.shape[:2]
    # Colour jitter, grayscale and blur run here, batched on the training device (augment.py).
    views = run.gpu_augment(clips.flatten(0, 1)).unflatten(0, (B, V))
    with utils.autocast(run.device, args.precision):
        out = run.model([views[:, v] for v in range(V)])
    loss = out["loss"]
    if not math.isfinite(loss.item()):
        raise utils.Diverged(f"the loss is {loss.item()} at {where}: the run diverged; lower --base_lr or set "
                             f"--clip_grad (the checkpoint of the last finished epoch is intact)")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if args.clip_grad:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.objective.trainable_parameters(), args.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.objective.after_step()  # EMA update of the momentum branch (no-op without one)
    norm = weight_norm(run.objective.encoder.parameters())
    if not norm < MAX_WEIGHT_GROWTH * run.initial_norm:
        raise utils.Diverged(f"the encoder's weight norm is {norm:.3g}, {norm / run.initial_norm:.3g} times its "
                             f"initial norm, at {where}: the run diverged; lower --base_lr or set --clip_grad "
                             f"(the checkpoint of the last finished epoch is intact)")
    return out


def weight_norm(tensors):
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.detach().float()) for t in tensors])).item()


def log_step(run, record, step):
    run.logger.log(**record)
    if run.tb_writer is not None:
        for k, v in record.items():
            if isinstance(v, float):
                run.tb_writer.add_scalar(f"train/{k}", v, step)


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
    skipped = data.SkippedVideos(args.output_dir, args.max_skip_share)
    return {name: engine.knn_top1_on_sets(net, *splits, device=device, skipped=skipped, k=20, batch_size=16,
                                          num_workers=args.num_workers, precision=args.precision)
            for name, net in nets.items()}


def report_knn(objective, initial_encoder, args, device, logger):
    res = knn_report(objective, initial_encoder, args, device)
    logger.log(kind="knn", **res)
    teacher = f" | teacher {args.teacher} (frame features) {res['teacher']:.1f}%" if "teacher" in res else ""
    utils.print_main(f"k-NN top-1 (k=20) on {args.dataset} val: trained {res['trained']:.1f}% | "
                     f"random init {res['random_init']:.1f}%{teacher}")


def resume(run, args, fingerprint):
    """Restore a run saved in --output_dir with the same defining flags. Returns where it stands:
    epochs done, iterations done in the next one (a run stopped by a signal), the global step, the
    partial sums of that epoch and the encoder's initial weights (the k-NN report's baseline)."""
    ckpt = checkpoint.resume_run(args.output_dir, fingerprint, {"gpu_augment": run.gpu_augment.generator})
    if ckpt is None:
        return dict(epoch=0, iteration=0, step=0, partial=None,
                    initial_encoder=copy.deepcopy(run.objective.encoder.state_dict()))
    run.objective.load_checkpoint_state(ckpt)
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scaler.load_state_dict(ckpt["scaler"])
    where = f", {ckpt['iteration']} iterations into epoch {ckpt['epoch'] + 1}" if ckpt["iteration"] else ""
    utils.print_main(f"resumed from {args.output_dir}: {ckpt['epoch']} of {args.epochs} epochs done{where}")
    return {k: ckpt[k] for k in ("epoch", "iteration", "step", "partial", "initial_encoder")}


def save(run, args, fingerprint, state, keep=False):
    checkpoint.save_run(args.output_dir, dict(
        run.objective.checkpoint_state(), encoder_name=args.arch, optimizer=run.optimizer.state_dict(),
        scaler=run.scaler.state_dict(), fingerprint=fingerprint, args=vars(args), **state),
        keep_as=f"checkpoint_{state['epoch']:04d}.pth" if keep else None,
        generators={"gpu_augment": run.gpu_augment.generator})


def tensorboard_writer(args):
    if not (args.tensorboard and utils.is_main_process()):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
    return SummaryWriter(os.path.join(args.output_dir, "tensorboard"))


def start_run_files(args, dataset):
    """What a run writes before training, once its flags are known to be right: config.json and the
    list of the videos --skip_missing left out."""
    utils.save_config(args, args.output_dir)
    data.write_missing_videos(args.output_dir, dataset)


def main(args):
    device = setup(args)
    loader = build_loader(args, device)
    torch.manual_seed(args.seed)  # same initial weights on every rank
    objective = build_objective(args).to(device)
    model, optimizer, scaler = prepare_training(objective, args, device)
    run = types.SimpleNamespace(model=model, objective=objective, optimizer=optimizer, scaler=scaler, device=device,
                                gpu_augment=build_gpu_augment(args, device), stop=utils.GracefulStop())
    fingerprint = checkpoint.run_fingerprint(args)
    state = resume(run, args, fingerprint)
    run.initial_norm = weight_norm(state["initial_encoder"].values())
    start_run_files(args, loader.dataset)
    run.logger, run.tb_writer = utils.JsonlLogger(os.path.join(args.output_dir, "log.jsonl")), tensorboard_writer(args)
    run.skipped = data.SkippedVideos(args.output_dir, args.max_skip_share)
    utils.print_main(f"{args.method} | encoder {args.arch} | teacher {args.teacher if args.method == 'iboot' else '-'}"
                     f" | {len(loader.dataset)} videos | {args.world_size} process(es) on {device} | batch "
                     f"{args.batch_size_per_gpu} per GPU, {args.global_batch} global | lr {args.lr:.4g} | "
                     f"{args.precision} | epochs {args.epochs}")
    with run.stop:
        for epoch in range(state["epoch"] + 1, args.epochs + 1):
            train_epoch_and_save(run, loader, epoch, args, state, fingerprint)
    if args.knn_eval == "yes":
        report_knn(objective, state["initial_encoder"], args, device, run.logger)
    if run.tb_writer is not None:
        run.tb_writer.close()
    utils.cleanup_distributed()
    return objective


def train_epoch_and_save(run, loader, epoch, args, state, fingerprint):
    """One epoch, from where `state` (resume) says it stands, and its checkpoint. A signal during it
    writes a checkpoint that resumes mid-epoch and stops the run."""
    first_iter = state["iteration"] if epoch == state["epoch"] + 1 else 0
    # Everything random in an epoch derives from (seed, epoch): data order and clip sampling here, the
    # device-side augmentation from its generator (restored from the checkpoint mid-epoch).
    data.start_epoch(loader, epoch, first_iter)
    if first_iter == 0:
        run.gpu_augment.reseed(args.seed * 1000 + epoch + utils.get_rank() * 7919)
    sums = train_one_epoch(run, loader, epoch, args, first_iter, state["partial"] if first_iter else None)
    iters = engine.iterations_per_epoch(loader, args.max_iters_per_epoch)
    if sums["stopped_at"] is not None:
        save(run, args, fingerprint, dict(epoch=epoch - 1, iteration=sums["stopped_at"],
                                          step=(epoch - 1) * iters + sums["stopped_at"],
                                          partial={k: sums[k] for k in ("loss_sum", "clips", "loaded")},
                                          initial_encoder=state["initial_encoder"]))
        raise run.stop.stopped(epoch, sums["stopped_at"], args.output_dir)
    skipped = run.skipped.end_epoch(sums["loaded"], run.device, f"epoch {epoch}")
    clips = utils.all_reduce_sum(sums["clips"], run.device)
    stats = dict(epoch=epoch, loss=utils.all_reduce_sum(sums["loss_sum"], run.device) / max(1, clips),
                 skipped_videos=skipped)
    utils.print_main(f"epoch {epoch}/{args.epochs}: loss {stats['loss']:.4f}, skipped videos {skipped}")
    run.logger.log(kind="epoch", **stats)
    save(run, args, fingerprint, dict(epoch=epoch, iteration=0, step=epoch * iters, partial=None,
                                      initial_encoder=state["initial_encoder"]),
         keep=args.saveckp_freq and epoch % args.saveckp_freq == 0)


if __name__ == "__main__":
    utils.run_cli(main, get_args_parser())
