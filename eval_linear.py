"""Linear evaluation on frozen features (Section 4.2), and the evaluation code the other protocols share.

    python eval_linear.py --pretrained output/pretrain/checkpoint.pth --dataset synthetic
    torchrun --nproc_per_node=8 eval_linear.py --pretrained runs/iboot/checkpoint.pth \
        --dataset kinetics --data_root /data/k400 --run_name iboot_clip__linear

The paper's protocol: a linear classifier on the frozen backbone (eval mode, so the batch-norm
statistics stay frozen too), trained on K400-train with SGD (momentum 0.9), lr from 0 linearly up to
1.0 over 8 warm-up epochs then cosine, batch 64, 100 epochs; tested on K400-val with 10 clips x 3
crops per video, softmax averaged over the 30 views; top-1 (and top-5) reported.

Shared with eval_knn.py, finetune.py and semisup.py (one place per concept):
- `add_common_args` / `fill_defaults`: the flags every evaluation script has;
- `load_backbone`: a pretrain.py checkpoint, a PySlowFast checkpoint, a torchvision 2D ResNet
  (inflated) or scratch, and the record fields read from a pretrain.py checkpoint;
- `VideoClassifier`: backbone + global average pool + (dropout) + linear layer;
- `train_classifier`: the SGD training loop with per-iteration warm-up + cosine lr, a checkpoint
  every epoch and resume from it, then the multi-view test;
- `aggregate_views` / `evaluate_multiview` / `ShardSampler`: multi-view testing, every video once;
- `clips_to_input` (uint8 clips -> normalised float) and `write_eval_record` (the JSON result).
"""
import argparse
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import utils

utils.register_torchvision_fallbacks()

import augment  # noqa: E402
import data  # noqa: E402
import models  # noqa: E402

# Section 4.2, linear evaluation.
PAPER_DEFAULTS = dict(epochs=100, batch_size=64, lr=1.0, warmup_epochs=8.0, warmup_start_lr=0.0,
                      weight_decay=0.0, test_clips=10, test_crops=3, num_frames=8, stride=8, crop_size=224,
                      num_workers=8)
# Small enough for a 2-core CPU in seconds (the synthetic set of data.make_synthetic_dataset).
SYNTHETIC_DEFAULTS = dict(epochs=2, batch_size=8, lr=1.0, warmup_epochs=0.0, warmup_start_lr=0.0,
                          weight_decay=0.0, test_clips=1, test_crops=1, num_frames=4, stride=8, crop_size=64,
                          num_workers=1)


# ----------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------

def add_common_args(p, paper_defaults):
    """The flags of every evaluation script. Size flags left unset take `paper_defaults`, or the
    script's SYNTHETIC_DEFAULTS with --dataset synthetic (see fill_defaults)."""
    def paper(key):
        return f" (paper {paper_defaults[key]})" if key in paper_defaults else ""

    g = p.add_argument_group("backbone")
    g.add_argument("--pretrained", required=True,
                   help="'scratch' (supervised rows of Tables 10-11), a pretrain.py checkpoint, a PySlowFast "
                        "checkpoint (e.g. the public rhoBYOL one of Table 11) or a torchvision-layout 2D "
                        "ResNet state dict (inflated to 3D)")
    g.add_argument("--pretrained_format", default="auto",
                   choices=["auto", "iboot", "pyslowfast", "torchvision", "raw"],
                   help="checkpoint format (models.load_encoder_weights); auto detects it")
    g.add_argument("--arch", default="slow_r50", choices=list(models.ENCODERS),
                   help="encoder; a pretrain.py checkpoint's own 'encoder_name' takes precedence")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="kinetics", choices=data.DATASETS,
                   help="downstream data set (kinetics = K400 lists; synthetic for smoke runs)")
    g.add_argument("--data_root", default="data/k400", help="folder of the videos (and list/split files)")
    g.add_argument("--train_list", default=None, help="training list for kinetics/csv (default: the root's)")
    g.add_argument("--val_list", default=None, help="validation list for kinetics/csv (default: the root's)")
    g.add_argument("--skip_missing", action="store_true",
                   help="drop listed videos that do not exist instead of stopping at start-up")
    g.add_argument("--num_frames", type=int, default=None, help="T frames per clip" + paper("num_frames"))
    g.add_argument("--stride", type=int, default=None, help="tau, frame stride" + paper("stride"))
    g.add_argument("--crop_size", type=int, default=None, help="spatial crop" + paper("crop_size"))
    g.add_argument("--test_clips", type=int, default=None, help="clips per test video" + paper("test_clips"))
    g.add_argument("--test_crops", type=int, default=None, help="crops per test clip" + paper("test_crops"))
    g.add_argument("--num_workers", type=int, default=None, help="data loading processes per process")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help="training epochs" + paper("epochs"))
    g.add_argument("--batch_size", type=int, default=None,
                   help="GLOBAL batch (split over the torchrun processes)" + paper("batch_size"))
    g.add_argument("--lr", type=float, default=None, help="base learning rate" + paper("lr"))
    g.add_argument("--warmup_epochs", type=float, default=None, help="linear warm-up epochs" + paper("warmup_epochs"))
    g.add_argument("--warmup_start_lr", type=float, default=None, help="lr at the start of warm-up"
                   + paper("warmup_start_lr"))
    g.add_argument("--weight_decay", type=float, default=None, help="SGD weight decay" + paper("weight_decay"))

    g = p.add_argument_group("record (written into the JSON result)")
    g.add_argument("--results_dir", default="results", help="one JSON record per run goes here")
    g.add_argument("--run_name", default=None, help="record name (default: the output_dir's name)")
    g.add_argument("--method", default=None, help="pretraining method (default: from the checkpoint's args)")
    g.add_argument("--teacher", default=None, help="image teacher (default: from the checkpoint's args)")
    g.add_argument("--pretrain_data", default=None, help="pretraining data (default: from the checkpoint's args)")
    g.add_argument("--pretrain_epochs", type=int, default=None,
                   help="pretraining epochs (default: the checkpoint's epoch)")

    g = p.add_argument_group("system")
    g.add_argument("--output_dir", default=None,
                   help="checkpoints (every epoch; a run started again resumes), log and config")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max_iters_per_epoch", type=int, default=0, help="cut epochs short (smoke tests); 0 = full")
    return p


def fill_defaults(args, paper_defaults, synthetic_defaults):
    """Unset flags take the paper's value (or the small synthetic one); returns what was filled."""
    used = utils.fill_unset(args, synthetic_defaults if args.dataset == "synthetic" else paper_defaults)
    for key in ("epochs", "batch_size", "num_frames", "crop_size", "test_clips", "test_crops"):
        if getattr(args, key, 1) is not None and getattr(args, key, 1) < 1:
            raise ValueError(f"--{key} must be at least 1, got {getattr(args, key)}")
    if args.output_dir is None:
        args.output_dir = os.path.join("output", args.run_name or "eval")
    if args.run_name is None:
        args.run_name = os.path.basename(os.path.normpath(args.output_dir))
    return used


# ----------------------------------------------------------------------------------------------
# Backbone and record metadata
# ----------------------------------------------------------------------------------------------

def load_backbone(args):
    """Build the encoder and load --pretrained into it; fill the record fields the user left unset.

    A pretrain.py checkpoint names its encoder ("encoder_name") and holds its own flags ("args"), from
    which method, teacher and pretraining data are read; its "epoch" is the pretraining epochs.
    """
    ckpt, meta = None, dict(method="supervised", teacher="-", pretrain_data="-", pretrain_epochs=0)
    if args.pretrained != "scratch":
        if not os.path.isfile(args.pretrained):
            raise FileNotFoundError(f"--pretrained: no such file: {args.pretrained}")
        ckpt = utils.load_checkpoint(args.pretrained)
        if isinstance(ckpt, dict) and "encoder" in ckpt:  # pretrain.py
            args.arch = ckpt.get("encoder_name", args.arch)
            pre = ckpt.get("args") or {}
            method = pre.get("method", "iboot")
            meta = dict(method=method, teacher=pre.get("teacher") if method == "iboot" else "-",
                        pretrain_data=pre.get("dataset", "-"),
                        pretrain_epochs=ckpt.get("epoch", pre.get("epochs", 0)))
        elif isinstance(ckpt, dict) and "model_state" in ckpt:  # PySlowFast
            meta = dict(method="pyslowfast", teacher="-", pretrain_data="-",
                        pretrain_epochs=ckpt.get("epoch", 0))
        else:  # a state dict: torchvision 2D ResNet (inflated) or a raw encoder
            meta = dict(method="init_from_file", teacher="-", pretrain_data="-", pretrain_epochs=0)
    for key, value in meta.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    encoder = models.build_encoder(args.arch)
    if ckpt is not None:
        missing, unexpected = models.load_encoder_weights(encoder, ckpt, fmt=args.pretrained_format)
        utils.print_main(f"loaded {args.pretrained} into {args.arch} ({args.pretrained_format} format): "
                         f"{len(missing)} missing, {len(unexpected)} unexpected keys")
        if missing:
            utils.print_main(f"  missing (kept at initialisation): {list(missing)[:8]}...")
    return encoder


def write_eval_record(args, protocol, split, value, **extra):
    """One JSON record per run in --results_dir (utils.write_result); reproduce/collect.py reads it."""
    record = dict(run=args.run_name, protocol=protocol, method=args.method, teacher=args.teacher,
                  pretrain_data=args.pretrain_data, pretrain_epochs=args.pretrain_epochs,
                  pretrained=args.pretrained, arch=args.arch, dataset=args.dataset, split=str(split),
                  metric="top1", value=float(value), config=vars(args), **extra)
    path = utils.write_result(args.results_dir, record)
    if path:
        utils.print_main(f"result written to {path}")
    return record


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------

def clips_to_input(clips):
    """uint8 (N, 3, T, H, W) clips from the data workers -> normalised float input of the encoder."""
    x = clips.float().div_(255.0)
    return augment.normalize(x, augment.STUDENT_MEAN, augment.STUDENT_STD)


class VideoClassifier(nn.Module):
    """Encoder, global average pool over (T, H, W), dropout, linear layer.

    freeze_backbone: the linear probe. The encoder gets no gradient and stays in eval mode even when
    the classifier is put in train mode, so its batch-norm statistics do not move.
    The linear layer starts as in PySlowFast's heads: normal(std 0.01) weights, zero bias.
    """

    def __init__(self, encoder, num_classes, dropout=0.0, freeze_backbone=False):
        super().__init__()
        self.encoder = encoder
        self.freeze_backbone = freeze_backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(encoder.feat_dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        if freeze_backbone:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode=True):
        super().train(mode)
        if self.freeze_backbone:
            self.encoder.eval()
        return self

    def forward(self, x):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            feats = self.encoder(x).mean(dim=2)  # (N, C, T) -> (N, C): the spatial pool is in the encoder
        return self.fc(self.dropout(feats.float()))


# ----------------------------------------------------------------------------------------------
# Multi-view testing
# ----------------------------------------------------------------------------------------------

class ShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + world, ...: every item on exactly one process, none padded or repeated
    (DistributedSampler pads the last shard, which would count some test videos twice)."""

    def __init__(self, num_items, rank, world_size):
        self.indices = list(range(rank, num_items, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def aggregate_views(logits):
    """(N, V, K) view logits -> (N, K): softmax per view, averaged over the V views of each video."""
    if logits.dim() != 3:
        raise ValueError(f"expected (videos, views, classes) logits, got shape {tuple(logits.shape)}")
    return logits.float().softmax(dim=-1).mean(dim=1)


def topk_correct(scores, labels, ks=(1, 5)):
    """Number of rows whose label is among the k best scores, for each k (k capped at #classes)."""
    out = {}
    for k in ks:
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        out[k] = (top == labels.view(-1, 1)).any(dim=1).sum().item()
    return out


def autocast_context(device):
    """bf16 autocast on CUDA (as pretrain.py); plain fp32 on the CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def evaluate_multiview(model, dataset, device, videos_per_step, num_workers):
    """Top-1/top-5 (%) over the videos of a mode="test" dataset whose items hold V views each.

    Each process scores its shard (ShardSampler), counts are summed over processes, so every video
    counts exactly once. Undecodable videos are skipped (and counted in "skipped").
    """
    model.eval()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=videos_per_step, sampler=ShardSampler(len(dataset), utils.get_rank(),
                                                                  utils.get_world_size()),
        num_workers=num_workers, collate_fn=data.collate_skip_bad, pin_memory=device.type == "cuda")
    correct1 = correct5 = seen = skipped = 0
    progress = utils.progress_bar(len(loader), "test")
    for batch in loader:
        skipped += batch["skipped"]
        clips = batch["clips"]  # uint8 (B, V, 3, T, S, S)
        if clips.shape[0] == 0:
            continue
        B, V = clips.shape[:2]
        x = clips_to_input(clips.to(device, non_blocking=True).flatten(0, 1))
        with autocast_context(device):
            logits = model(x)
        probs = aggregate_views(logits.view(B, V, -1))
        hits = topk_correct(probs, batch["label"].to(device).view(-1))
        correct1 += hits[1]
        correct5 += hits[5]
        seen += B
        progress.update(1)
    progress.close()
    seen = utils.all_reduce_sum(seen, device)
    if seen == 0:
        raise ValueError("no test video could be decoded")
    return dict(top1=100.0 * utils.all_reduce_sum(correct1, device) / seen,
                top5=100.0 * utils.all_reduce_sum(correct5, device) / seen,
                num_videos=int(seen), skipped=int(utils.all_reduce_sum(skipped, device)))


# ----------------------------------------------------------------------------------------------
# Training loop shared by the linear probe, fine-tuning and semi-supervised learning
# ----------------------------------------------------------------------------------------------

def build_loader(dataset, args, world, shuffle=True):
    if args.batch_size % world:
        raise ValueError(f"--batch_size {args.batch_size} (global) does not divide over {world} processes")
    per_process = args.batch_size // world
    sampler = torch.utils.data.DistributedSampler(dataset, shuffle=shuffle, seed=args.seed) if world > 1 \
        else None
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=per_process, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=args.num_workers, collate_fn=data.collate_skip_bad, drop_last=True,
        pin_memory=torch.cuda.is_available())
    if len(loader) == 0:
        raise ValueError(f"the training set has {len(dataset)} videos, fewer than one batch of "
                         f"--batch_size {args.batch_size}")
    return loader, sampler


def train_classifier(model, train_set, test_set, args, device):
    """SGD (momentum 0.9) with per-iteration linear warm-up (--warmup_start_lr -> --lr over
    --warmup_epochs) then cosine to 0; checkpoint every epoch in --output_dir, resumed from when the
    run is started again; finally the multi-view test. Returns the test metrics (dict)."""
    world = utils.get_world_size()
    rank = utils.get_rank()
    loader, sampler = build_loader(train_set, args, world)
    model.to(device)
    # Per-process batch norm when fine-tuning under torchrun (PySlowFast's default BN.NORM_TYPE
    # "batchnorm"; the paper does not say); the linear probe's batch norms are frozen anyway.
    ddp_model = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    iters = len(loader) if not args.max_iters_per_epoch else min(len(loader), args.max_iters_per_epoch)
    total_steps, warmup_steps = args.epochs * iters, int(round(args.warmup_epochs * iters))

    start_epoch = 0
    ckpt_path = os.path.join(args.output_dir, "checkpoint.pth")
    if os.path.isfile(ckpt_path):
        ckpt = utils.load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = ckpt["epoch"]
        states = ckpt["random_state"]
        utils.set_random_state(states[rank] if rank < len(states) else states[0])
        utils.print_main(f"resumed from {ckpt_path}: epoch {start_epoch}")
    logger = utils.JsonlLogger(os.path.join(args.output_dir, "log.jsonl"))

    for epoch in range(start_epoch, args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        ddp_model.train()
        loss_sum = correct = seen = 0.0
        t0 = time.time()
        progress = utils.progress_bar(iters, f"epoch {epoch + 1}/{args.epochs}")
        lr = args.lr
        for it, batch in enumerate(loader):
            if it >= iters:
                break
            step = epoch * iters + it
            lr = utils.warmup_cosine_lr(step, total_steps, warmup_steps, args.lr,
                                        warmup_start_lr=args.warmup_start_lr)
            utils.set_lr(optimizer, lr)
            if batch["clips"].shape[0] == 0:  # every video of the batch was undecodable
                continue
            x = clips_to_input(batch["clips"][:, 0].to(device, non_blocking=True))
            labels = batch["label"].to(device).view(-1)
            with autocast_context(device):
                logits = ddp_model(x)
            loss = F.cross_entropy(logits.float(), labels)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, iteration {it}; stopping")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * labels.numel()
            correct += (logits.argmax(1) == labels).sum().item()
            seen += labels.numel()
            progress.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.3g}")
            progress.update(1)
        progress.close()
        n = max(1.0, utils.all_reduce_sum(seen, device))
        stats = dict(epoch=epoch + 1, loss=utils.all_reduce_sum(loss_sum, device) / n,
                     train_top1=100.0 * utils.all_reduce_sum(correct, device) / n, lr=lr,
                     seconds=time.time() - t0)
        utils.print_main(f"epoch {epoch + 1}/{args.epochs}: loss {stats['loss']:.4f}, "
                         f"train top-1 {stats['train_top1']:.1f}%, lr {lr:.4g}")
        logger.log(kind="epoch", **stats)
        random_states = utils.gather_objects(utils.get_random_state())
        if utils.is_main_process():
            utils.save_checkpoint(dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                                       epoch=epoch + 1, args=vars(args), random_state=random_states),
                                  ckpt_path)
        utils.barrier()

    views = args.test_clips * args.test_crops
    videos_per_step = max(1, (args.batch_size // world) // views)
    metrics = evaluate_multiview(model, test_set, device, videos_per_step, args.num_workers)
    logger.log(kind="test", **metrics)
    return metrics


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def build_split(args, split, mode, official_split=1, **kwargs):
    """The train (mode="train", one random clip) or val (mode="test", V views) set of --dataset."""
    list_file = args.train_list if split == "train" else args.val_list
    return data.build_dataset(args.dataset, root=args.data_root, split=split, list_file=list_file,
                              official_split=official_split, skip_missing=args.skip_missing,
                              num_clips=1, num_frames=args.num_frames, stride=args.stride,
                              crop_size=args.crop_size, mode=mode, test_clips=args.test_clips,
                              test_crops=args.test_crops, seed=args.seed, **kwargs)


def labels_of(dataset):
    """Labels of every video of a data.VideoDataset, read from its list (nothing decoded)."""
    return [label for _, label in dataset.videos]


def video_names_of(dataset):
    return [path for path, _ in dataset.videos]


def num_classes_of(dataset):
    """Classes of a labelled training set: its class-name list, else the largest label + 1."""
    labels = labels_of(dataset)
    if any(label < 0 for label in labels):
        raise ValueError(f"the training list has {sum(label < 0 for label in labels)} videos without a label; "
                         "evaluation needs labels (`path label` lines)")
    return len(dataset.classes) if dataset.classes else max(labels) + 1


def prepare_run(args, paper_defaults, synthetic_defaults):
    """Fill defaults, join torchrun, seed, write the config, make the synthetic set if asked."""
    used = fill_defaults(args, paper_defaults, synthetic_defaults)
    rank, world, device = utils.init_distributed(args.device)
    utils.seed_everything(args.seed + rank)
    if used:
        utils.print_main("defaults for --dataset %s: %s" % (
            args.dataset, ", ".join(f"--{k} {v}" for k, v in used.items())))
    # --dataset synthetic generates the default synthetic set when the folder holds none yet.
    if args.dataset == "synthetic" and utils.is_main_process() and not os.path.isfile(
            os.path.join(args.data_root, "train.csv")):
        data.make_synthetic_dataset(args.data_root, seed=0)
    utils.barrier()
    return device


# ----------------------------------------------------------------------------------------------
# Linear evaluation
# ----------------------------------------------------------------------------------------------

def get_args_parser():
    p = argparse.ArgumentParser("iboot linear evaluation (frozen backbone)", add_help=True,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p, PAPER_DEFAULTS)
    return p


def main(args):
    device = prepare_run(args, PAPER_DEFAULTS, SYNTHETIC_DEFAULTS)
    encoder = load_backbone(args)
    utils.save_args(args, args.output_dir)
    train_set = build_split(args, "train", "train")
    test_set = build_split(args, "val", "test")
    torch.manual_seed(args.seed)  # the same classifier initialisation on every process
    model = VideoClassifier(encoder, num_classes_of(train_set), freeze_backbone=True)
    utils.print_main(f"linear probe | {args.arch} from {args.pretrained} | {len(train_set)} train / "
                     f"{len(test_set)} test videos | {utils.get_world_size()} process(es) on {device} | "
                     f"batch {args.batch_size} | lr {args.lr} | {args.epochs} epochs | "
                     f"test {args.test_clips}x{args.test_crops} views")
    metrics = train_classifier(model, train_set, test_set, args, device)
    utils.print_main(f"linear evaluation on {args.dataset} val ({args.test_clips}x{args.test_crops} views, "
                     f"{metrics['num_videos']} videos): top-1 {metrics['top1']:.2f}% | top-5 {metrics['top5']:.2f}%")
    record = write_eval_record(args, "linear", "val", metrics["top1"], top5=metrics["top5"],
                               num_videos=metrics["num_videos"], skipped_videos=metrics["skipped"])
    utils.cleanup_distributed()
    return record


if __name__ == "__main__":
    utils.run_cli(main, get_args_parser())
