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
(online encoder + teachers or EMA branch), DDP and the optimiser, then trainer.Trainer's loop (resume,
epochs, checkpoints) around train_step, and the k-NN report.

Defaults are the paper's settings (Section 4.1): LARS, base lr 2.4 x global batch / 256, 8 warm-up
epochs then cosine (per iteration), weight decay 1e-6, 100 epochs, 13 clips per GPU, T=8, tau=8,
224 crops, three clips (v_ref, v1, v2), temporal pooling on. With --dataset synthetic (the default)
the size flags you leave unset take the small values of EMBEDDED_DEFAULTS instead, so that the plain
`python pretrain.py` finishes on a laptop CPU in minutes; the run prints which ones it used.
"""
import argparse
import copy
import math

import torch
import torch.nn as nn

import augment
import checkpoint
import cli
import data
import distributed
import iboot
import knn
import lars
import models
import monitors
import precision
import records
import rng
import teachers
import trainer

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
    checkpoint.add_trust_arg(g)

    g = p.add_argument_group("data")
    data.add_source_args(g, "synthetic",
                         "validation list for kinetics/csv, read by the learning monitors and the k-NN only "
                         "(default: the root's val.csv; pretraining itself reads no labels)")
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
                        "jitter p=0.8 0.6/0.6/0.6/0.15, grayscale 0.2, blur 0.5); paper_nocolour = the paper's crops "
                        "and flips without colour jitter, grayscale or blur (a deviation, for small budgets: "
                        "docs/learning.md). Default: paper for iboot, pyslowfast_byol for rhobyol")
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
    g.add_argument("--precision", default="auto", choices=precision.PRECISIONS,
                   help="autocast precision (auto: bf16 on a GPU that has it, else fp32)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--log_every", type=int, default=10,
                   help="iterations between JSON-lines records (and progress lines when stderr is no terminal)")
    g.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars")
    g.add_argument("--max_iters_per_epoch", type=int, default=0,
                   help="cut epochs short (smoke tests); 0 = full epochs")
    g.add_argument("--knn_eval", default="auto", choices=["auto", "yes", "no"],
                   help="after training, k-NN top-1 (training-scale views, knn_views) of the trained encoder, of the same "
                        "encoder at initialisation and of the teacher's frame features, on the validation "
                        "split (auto: yes for synthetic)")

    g = p.add_argument_group("learning monitors (log.jsonl and the epoch line; no effect on training)")
    g.add_argument("--monitor_videos", type=int, default=64,
                   help="every epoch, on this many validation videos: the online features' per-dimension std "
                        "(0: collapse) and effective rank, and for iBoot the student-teacher cosine (0: off)")
    g.add_argument("--knn_every", type=int, default=0,
                   help="online k-NN top-1 (k=20, training-scale views: eval_knn.py --test_crop_size CROP "
                        "--test_spacing offset) of the validation split every N epochs "
                        "and before the first; the clips are decoded once and kept in memory (0: off)")
    return p


# Allowed values of the numeric flags (cli.check_flags): checked at start-up, before anything is written.
FLAG_RULES = dict(momentum="[0,1]", epochs=">=1", batch_size_per_gpu=">=1", base_lr=">0", warmup_epochs=">=0",
                  weight_decay=">=0", clip_grad=">=0", saveckp_freq=">=0", log_every=">=1", max_iters_per_epoch=">=0",
                  num_frames=">=1", stride=">=1", crop_size="[32,1024]", num_workers=">=0", seed=">=0",
                  split=(1, 2, 3), max_skip_share="[0,1]", monitor_videos=">=0", knn_every=">=0",
                  output_dir="folder")
# Weights of the encoder grown this many times beyond their initial norm: the run has diverged (the loss
# 2 - 2 cos is bounded, so it cannot show it). LARS moves a weight by lr x 0.001 of its norm per step, so
# the paper's runs change norms by a few times at most; --base_lr 1e6 on slow_tiny took them from 87 to
# 3,206 / 6,340 / 11,847 / 32,196 / 64,506 in its first five steps (measured).
MAX_WEIGHT_GROWTH = 100.0


def check_args(flags):
    if flags.method == "iboot" and flags.num_clips not in (1, 2, 3):
        raise ValueError(f"--num_clips {flags.num_clips}: must be 1, 2 or 3 for iboot")
    if flags.method == "rhobyol" and flags.num_clips < 2:
        raise ValueError(f"--num_clips {flags.num_clips}: must be at least 2 (rho) for rhobyol")


def setup(args):
    """Join torchrun; the flags with their defaults (the paper's, or the embedded ones for synthetic
    data; printed), checked; the global batch and the lr of the linear scaling rule; seeds; the
    synthetic set when it is asked for. Returns (flags, device); `args` is not changed."""
    synthetic = args.dataset == "synthetic"
    defaults = dict(EMBEDDED_DEFAULTS if synthetic else PAPER_DEFAULTS,
                    augmentation="paper" if args.method == "iboot" else "pyslowfast_byol",
                    num_clips=3 if args.method == "iboot" else 2)
    flags, device = trainer.setup(args, defaults, f"--dataset {args.dataset}, --method {args.method}", FLAG_RULES)
    check_args(flags)
    precision.check_training(device, flags.precision, flags.num_frames)
    knn_eval = flags.knn_eval if flags.knn_eval != "auto" else ("yes" if synthetic else "no")
    return cli.freeze(flags, lr=flags.base_lr * flags.global_batch / 256, knn_eval=knn_eval), device


def build_loader(flags, device):
    """Training samples of num_clips clips each, shuffled from (seed, epoch), resumable mid-epoch."""
    train_set = data.build_dataset(flags.dataset, root=flags.data_root, split="train", list_file=flags.train_list,
                                   official_split=flags.split, skip_missing=flags.skip_missing,
                                   num_clips=flags.num_clips, num_frames=flags.num_frames, stride=flags.stride,
                                   crop_size=flags.crop_size, mode="train", seed=flags.seed,
                                   resized_crop=augment.PRETRAIN_RECIPES[flags.augmentation]["resized_crop"])
    loader, _ = data.train_loader(train_set, flags.batch_size_per_gpu, flags.num_workers, flags.seed, device)
    return loader


def build_objective(flags):
    """The online encoder (same initial weights on every rank) and its targets: the teachers (iBoot) or
    the EMA branch (rhoBYOL)."""
    torch.manual_seed(rng.derive_seed(flags.seed, "init"))
    encoder = models.build_encoder(flags.arch)
    if flags.init != "scratch":
        models.load_encoder_weights(encoder, flags.init, inflate_mode=flags.inflation, trust=flags.trust_checkpoint,
                                    flag="--init")
    if flags.method == "rhobyol":
        return iboot.RhoBYOL(encoder, momentum=flags.momentum)
    teacher_list = teachers.build_teachers(flags.teacher, weights=flags.teacher_weights)
    return iboot.IBoot(encoder, teacher_list, temporal_pool=not flags.no_temporal_pool,
                       extra_ssl=flags.extra_ssl, momentum=flags.momentum)


def prepare_training(objective, flags, device):
    """SyncBN and DDP under torchrun (teachers stay frozen in eval mode), the optimiser (LARS, paper)
    and the fp16 loss scaler. Returns (model to call, optimizer, scaler)."""
    if distributed.wants_sync_batchnorm(device):  # SyncBN across GPUs (paper)
        objective.convert_sync_batchnorm()
    if device.type == "cuda":
        objective.encoder.to(memory_format=torch.channels_last_3d)
    if flags.optimizer == "lars":
        optimizer = lars.build_lars(objective, lr=flags.lr, weight_decay=flags.weight_decay)
    else:
        optimizer = torch.optim.SGD(objective.trainable_parameters(), lr=flags.lr, momentum=0.9,
                                    weight_decay=flags.weight_decay)
    return distributed.ddp(objective, device), optimizer, precision.grad_scaler(device, flags.precision)


def build_gpu_augment(flags, device):
    """The device-side colour jitter, grayscale and blur of --augmentation (augment.PRETRAIN_RECIPES)."""
    return augment.GpuAugment(**augment.PRETRAIN_RECIPES[flags.augmentation]["jitter"]).to(device)


def make_train_step(model, objective, optimizer, scaler, gpu_augment, flags, device, initial_norm):
    """The step trainer.Trainer calls: momentum schedule, device-side augmentation, forward (autocast),
    backward, optimiser step, EMA update. Stops the run with one line when the loss is not finite or
    the encoder's weights exploded (a norm per step: cheap beside the step)."""

    def train_step(batch, at):
        objective.update_momentum(at.step / max(1, at.total_steps))
        clips = batch["clips"].to(device, non_blocking=True)  # uint8 (B, V, 3, T, S, S)
        B, V = clips.shape[:2]
        # Colour jitter, grayscale and blur run here, batched on the training device (augment.py).
        views = gpu_augment(clips.flatten(0, 1)).unflatten(0, (B, V))
        with precision.autocast(device, flags.precision):
            out = model([views[:, v] for v in range(V)])
        loss = out["loss"]
        if not math.isfinite(loss.item()):
            raise cli.Diverged(f"the loss is {loss.item()} at {at}: the run diverged; lower --base_lr or set "
                               f"--clip_grad (the checkpoint of the last finished epoch is intact)")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if flags.clip_grad:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(objective.trainable_parameters(), flags.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        objective.after_step()  # EMA update of the momentum branch (no-op without one)
        norm = weight_norm(objective.encoder.parameters())
        if not norm < MAX_WEIGHT_GROWTH * initial_norm:
            raise cli.Diverged(f"the encoder's weight norm is {norm:.3g}, {norm / initial_norm:.3g} times its "
                               f"initial norm, at {at}: the run diverged; lower --base_lr or set --clip_grad "
                               f"(the checkpoint of the last finished epoch is intact)")
        return dict(n=B, **{k: v.item() for k, v in out.items() if torch.is_tensor(v)})

    return train_step


def weight_norm(tensors):
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.detach().float()) for t in tensors])).item()


# ----------------------------------------------------------------------------------------------
# Learning monitors: what the run is learning, on videos it does not train on
# ----------------------------------------------------------------------------------------------

def knn_views(flags):
    """The k-NN views of the learning monitors and the closing report: one clip from the middle of the
    video, one centre crop of the training size from frames resized to a short side of crop x 256 / 224
    (the training scale; the same as eval_knn.py --test_crop_size CROP --test_spacing offset)."""
    return dict(mode="test", test_clips=1, test_crops=1, test_crop_size=flags.crop_size, test_spacing="offset")


class LearningMonitor:
    """After every epoch (and before the first): on a fixed batch of up to --monitor_videos validation
    videos, the per-dimension std of the online features (a collapse detector: 0 when every video gets
    the same direction), their effective rank, and for iBoot the cosine between W(f(x)) and the
    teacher's features of the same clip (raw, and centred over the batch: how much of the variation
    between videos the student follows); every --knn_every epochs, the online k-NN top-1 of the
    validation split on the training split. The monitors' clips are decoded once and kept in memory;
    the k-NN sets too with --knn_every, else (one k-NN at the end) they are decoded when it runs."""

    def __init__(self, flags, objective, device, val_set, train_set=None):
        self.flags, self.objective, self.device, self.first, self.last = flags, objective, device, {}, {}
        self.label = knn.views_label(knn.K, val_set)
        skipped = data.SkippedVideos(flags.output_dir, flags.max_skip_share)
        keep = bool(flags.knn_every)
        self.val = self.train = None
        if train_set is not None:
            self.val = knn.DecodedSet(val_set, 16, flags.num_workers, device, skipped, "the validation set", keep)
            self.train = knn.DecodedSet(train_set, 16, flags.num_workers, device, skipped, "the k-NN training set",
                                        keep)
        self.batch, self.targets = torch.zeros(0), None
        if flags.monitor_videos:
            watched = torch.utils.data.Subset(val_set, range(min(flags.monitor_videos, len(val_set))))
            batches = (self.val.batches if keep else
                       data.decoded_batches(watched, 16, flags.num_workers, device, skipped=skipped,
                                            what="the monitors' videos"))
            self.batch = torch.cat([b["clips"][:, 0] for b in batches])[:flags.monitor_videos]
        if isinstance(objective, iboot.IBoot) and len(self.batch):  # the first teacher's features, pooled over T
            self.targets = torch.cat([objective.teacher_features(c.to(device).float().div(255.0))[0].mean(dim=1)
                                      for c in self.batch.split(16)])

    @torch.no_grad()
    def knn_top1(self, encoder):
        return knn.top1(self.train.features(encoder, self.device, self.flags.precision),
                        self.val.features(encoder, self.device, self.flags.precision), k=knn.K)

    @torch.no_grad()
    def __call__(self, epoch, state=None):
        """The monitors after `epoch` (0: before training), with the network in eval mode."""
        obj, out = self.objective, {}
        was_training = obj.training
        obj.eval()
        if len(self.batch):
            feats = torch.cat([obj.encoder(augment.student_input(c.to(self.device))).float().mean(dim=-1)
                               for c in self.batch.split(16)])
            out.update(feat_std=monitors.per_dim_std(feats), feat_rank=monitors.effective_rank(feats))
            if self.targets is not None:
                online = obj.heads[0](feats)
                out.update(teacher_cos=monitors.cosine(online, self.targets),
                           teacher_cos_centred=monitors.centered_cosine(online, self.targets))
        if self.train is not None and self.flags.knn_every and (epoch % self.flags.knn_every == 0
                                                                 or epoch == self.flags.epochs):
            out["knn_top1"] = self.knn_top1(obj.encoder)
        obj.train(was_training)
        self.last = dict(out, epoch=epoch)
        if epoch == 0:
            self.first = self.last
        return out

    def report(self, initial_state, logger):
        """k-NN of the trained encoder and of the same encoder at initialisation (the monitors' of the last
        epoch and of epoch 0 when they measured them) and, for iBoot, of the teacher's own frame features."""
        random_encoder = copy.deepcopy(self.objective.encoder)
        random_encoder.load_state_dict(initial_state)
        done = self.last.get("epoch") == self.flags.epochs and "knn_top1" in self.last
        res = dict(trained=self.last["knn_top1"] if done else self.knn_top1(self.objective.encoder),
                   random_init=(self.first["knn_top1"] if "knn_top1" in self.first else
                                self.knn_top1(random_encoder)))
        teacher = ""
        if isinstance(self.objective, iboot.IBoot):  # the first teacher of an ensemble, named as such
            first = self.objective.teachers[0]
            res["teacher"] = self.knn_top1(teachers.TeacherAsEncoder(first))
            teacher = f" | teacher {first.name} (frame features) {res['teacher']:.1f}%"
        logger.log(kind="knn", views=self.label, **res)
        records.print_main(f"k-NN top-1 ({self.label}) on {self.flags.dataset} val: trained {res['trained']:.1f}% | "
                           f"random init {res['random_init']:.1f}%{teacher}")
        return res


def monitor_sets(flags):
    """(validation set, k-NN training set or None) of the learning monitors, read and checked as an
    evaluation's (data.check_eval_lists) before anything is written; None without monitors. A run with no
    validation list (pretraining needs none) says so and trains without monitors, unless --knn_every or
    --knn_eval yes asked for k-NN, which stop the run naming --val_list."""
    wants_knn = bool(flags.knn_every) or flags.knn_eval == "yes"
    if not (flags.monitor_videos or wants_knn):
        return None
    split_set = lambda split, list_file: data.build_dataset(  # noqa: E731
        flags.dataset, root=flags.data_root, split=split, list_file=list_file, official_split=flags.split,
        seed=flags.seed, skip_missing=flags.skip_missing, num_frames=flags.num_frames, stride=flags.stride,
        crop_size=flags.crop_size, **knn_views(flags))
    try:
        val_set = split_set("val", flags.val_list)
    except FileNotFoundError as e:
        if wants_knn:
            raise
        records.print_main(f"learning monitors off: {e}")
        return None
    train_set = split_set("train", flags.train_list) if wants_knn else None
    if train_set is not None:
        data.check_eval_lists(train_set, val_set, flags.allow_unseen_labels)
    return val_set, train_set


def main(args):
    flags, device = setup(args)
    loader = build_loader(flags, device)
    watched = monitor_sets(flags)
    objective = build_objective(flags).to(device)
    model, optimizer, scaler = prepare_training(objective, flags, device)
    gpu_augment = build_gpu_augment(flags, device)
    run = trainer.Trainer(flags, loader, device, model, optimizer, scaler,
                          state_dict=lambda: dict(objective.checkpoint_state(), encoder_name=flags.arch),
                          load_state_dict=objective.load_checkpoint_state,
                          fingerprint=checkpoint.run_fingerprint(flags),
                          generators={"gpu_augment": gpu_augment.generator})
    state = run.resume(extra=dict(initial_encoder=copy.deepcopy(objective.encoder.state_dict())))
    run.start(loader.dataset, *([] if watched is None else [watched[0]]))
    monitor = None if watched is None else LearningMonitor(flags, objective, device, *watched)
    initial_norm = weight_norm(state.extra["initial_encoder"].values())
    records.print_main(
        f"{flags.method} | encoder {flags.arch} | teacher {flags.teacher if flags.method == 'iboot' else '-'} | "
        f"{len(loader.dataset)} videos | {flags.world_size} process(es) on {device} | batch "
        f"{flags.batch_size_per_gpu} per GPU, {flags.global_batch} global | lr {flags.lr:.4g} | "
        f"{flags.precision} | epochs {flags.epochs}")
    if monitor is not None and state.epoch == 0 and state.iteration == 0:
        run.logger.log(kind="init", epoch=0, **monitor(0))  # before training: the reference
    run.fit(make_train_step(model, objective, optimizer, scaler, gpu_augment, flags, device, initial_norm),
            state, after_epoch=monitor)
    if flags.knn_eval == "yes":
        monitor.report(state.extra["initial_encoder"], run.logger)
    run.logger.close()
    distributed.cleanup()
    return objective


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
