"""What the evaluation scripts share (Section 4.2), as MAE keeps its loops in engine_*.py.

    add_eval_args / prepare_eval   the flags of every evaluation script; defaults, torchrun, seeds, the
                                   batch per GPU, the synthetic set; resolve_protocol fills the PySlowFast
                                   settings that follow from other flags (test crop, sampling)
    add_finetune_args              dropout, training colour jitter and flip (finetune.py, semisup.py)
    load_backbone                  the encoder of --pretrained and the record fields it implies
    build_split / num_classes_of   the training or test set of --dataset
    VideoClassifier                encoder + average pool + dropout + linear layer
    build_sgd / training_input     PySlowFast's SGD (Nesterov, no weight decay on BN) and the device-side
                                   fine-tuning colour jitter
    train_classifier / finetune    SGD with warm-up + cosine, a checkpoint every epoch and resume,
                                   periodic and final multi-view test (linear probe, fine-tuning, semi-sup.)
    evaluate_multiview             V views per video (10 clips x 3 crops), softmax averaged, each video once
    extract_features / knn_*       DINO's weighted k-NN classifier on frozen features (top-5 as DINO)
    write_eval_record              one JSON result per run, for reproduce/collect.py
"""
import argparse
import math
import os
import types

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import augment
import checkpoint
import data
import models
import utils

# Section 4.2, linear evaluation (batch_size: the global batch); semi-supervised learning uses the same
# settings "except that the initial learning rate is 0.01".
LINEAR_PROTOCOL = dict(epochs=100, batch_size=64, lr=1.0, warmup_epochs=8.0, warmup_start_lr=0.0,
                       weight_decay=0.0, test_clips=10, test_crops=3, num_frames=8, stride=8, crop_size=224,
                       num_workers=8)
# Small enough for a 2-core CPU in seconds (the synthetic set of data.make_synthetic_dataset).
LINEAR_PROTOCOL_SYNTHETIC = dict(epochs=2, batch_size=8, lr=1.0, warmup_epochs=0.0, warmup_start_lr=0.0,
                                 weight_decay=0.0, test_clips=1, test_crops=1, num_frames=4, stride=8,
                                 crop_size=64, num_workers=1)

# ----------------------------------------------------------------------------------------------
# Flags and run preparation
# ----------------------------------------------------------------------------------------------


def add_eval_args(p, paper_defaults, training=True):
    """The flags of every evaluation script. Those left unset take `paper_defaults` (printed at start),
    or the script's small synthetic defaults with --dataset synthetic. training=False (k-NN) leaves out
    the optimisation flags."""
    def paper(key):
        return f" (paper {paper_defaults[key]})" if key in paper_defaults else ""

    g = p.add_argument_group("backbone")
    g.add_argument("--pretrained", required=True,
                   help="'scratch' (supervised rows of Tables 10-11), a pretrain.py checkpoint, a PySlowFast "
                        "checkpoint (e.g. the public rhoBYOL one of Table 11) or a torchvision-layout 2D "
                        "ResNet state dict (inflated to 3D)")
    g.add_argument("--pretrained_format", default="auto", choices=checkpoint.FORMATS,
                   help="weights format of --pretrained; auto detects it")
    g.add_argument("--arch", default=None, choices=list(models.ENCODERS),
                   help="encoder: read from a pretrain.py checkpoint; needed for other files (slow_r50 for scratch)")
    models.add_inflation_arg(g, "--pretrained")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="kinetics", choices=data.DATASETS,
                   help="downstream data set (kinetics = K400 lists; synthetic for smoke runs)")
    g.add_argument("--data_root", default=None,
                   help=f"folder of the videos (and list/split files); for --dataset synthetic {data.SYNTHETIC_ROOT}")
    g.add_argument("--train_list", default=None, help="training list for kinetics/csv (default: the root's)")
    g.add_argument("--val_list", default=None, help="validation list for kinetics/csv (default: the root's)")
    data.add_bad_video_args(g)
    g.add_argument("--num_frames", type=int, default=None, help="T frames per clip" + paper("num_frames"))
    g.add_argument("--stride", type=int, default=None, help="tau, frame stride" + paper("stride"))
    g.add_argument("--crop_size", type=int, default=None, help="spatial crop" + paper("crop_size"))
    g.add_argument("--test_clips", type=int, default=None, help="clips per test video" + paper("test_clips"))
    g.add_argument("--test_crops", type=int, default=None, help="crops per test clip" + paper("test_crops"))
    g.add_argument("--test_crop_size", type=int, default=None,
                   help="test views: short side resized to this, then crops of this size (PySlowFast "
                        "DATA.TEST_CROP_SIZE 256 in every contrastive_ssl config; default crop_size x 256/224: "
                        "256 at the paper's 224, scaled with the small synthetic crops)")
    g.add_argument("--test_spacing", default="uniform", choices=data.TEST_SPACINGS,
                   help="start of test clip i of K: uniform = delta*i/K (PySlowFast decoder.get_start_end_idx, "
                        "DATA.USE_OFFSET_SAMPLING False: one clip starts at frame 0); offset = i*floor(delta/(K-1)), "
                        "floor(delta/2) for one clip (USE_OFFSET_SAMPLING True: reaches both ends)")
    g.add_argument("--sampling", default=None, choices=data.SAMPLINGS,
                   help="frame sampling of a PySlowFast dataset class: kinetics = T frames at stride tau in a "
                        "window (kinetics.py); ssv2 = one frame per uniform segment of the whole video "
                        "(ssv2.py get_seq_frames). Default: ssv2 for --dataset ssv2, kinetics otherwise")
    g.add_argument("--num_workers", type=int, default=None, help="data loading processes per GPU")
    g.add_argument("--batch_size_per_gpu", type=int, default=None,
                   help="videos per GPU and step (default: the paper's global batch" + (
                       f" {paper_defaults['batch_size']}" if "batch_size" in paper_defaults else "")
                   + " divided over the processes; the global batch is printed)")
    return add_run_args(p, paper_defaults, training)


def add_run_args(p, paper_defaults, training):
    """The optimisation (training=True), record and system flags of add_eval_args."""
    def paper(key):
        return f" (paper {paper_defaults[key]})" if key in paper_defaults else ""

    if training:
        g = p.add_argument_group("optimisation")
        g.add_argument("--epochs", type=int, default=None, help="training epochs" + paper("epochs"))
        g.add_argument("--lr", type=float, default=None, help="base learning rate" + paper("lr"))
        g.add_argument("--warmup_epochs", type=float, default=None,
                       help="linear warm-up epochs" + paper("warmup_epochs"))
        g.add_argument("--warmup_start_lr", type=float, default=None,
                       help="lr at the start of warm-up" + paper("warmup_start_lr"))
        g.add_argument("--weight_decay", type=float, default=None, help="SGD weight decay" + paper("weight_decay"))
        g.add_argument("--bn_weight_decay", type=float, default=0.0,
                       help="weight decay of batch-norm weights and biases (PySlowFast BN.WEIGHT_DECAY 0.0)")
        g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True,
                       help="Nesterov momentum (PySlowFast SOLVER.NESTEROV True; the paper: SGD, momentum 0.9)")
        g.add_argument("--eval_freq", type=int, default=0,
                       help="also test every N epochs (the record keeps the last and the best top-1); "
                            "0: at the end only")
        g.add_argument("--max_iters_per_epoch", type=int, default=0, help="cut epochs short (smoke tests); 0 = full")

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
                   help="checkpoints (every epoch; a run started again with the same flags resumes), log, config")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--precision", default="auto", choices=utils.PRECISIONS,
                   help="autocast precision (auto: bf16 on a GPU that has it, else fp32)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--log_every", type=int, default=10, help="iterations between progress lines (no terminal)")
    return p


# Allowed values of the flags every evaluation script has (utils.check_flags), checked before anything
# is written; scripts add their own (e.g. --nb_knn, --fraction).
FLAG_RULES = dict(num_frames=">=1", stride=">=1", crop_size="[32,1024]", test_clips=">=1", test_crops=(1, 3),
                  num_workers=">=0", batch_size_per_gpu=">=1", epochs=">=1", lr=">0", warmup_epochs=">=0",
                  warmup_start_lr=">=0", weight_decay=">=0", bn_weight_decay=">=0", eval_freq=">=0",
                  max_iters_per_epoch=">=0", seed=">=0", log_every=">=1", max_skip_share="[0,1]", pretrain_epochs=">=0")


def prepare_eval(args, paper_defaults, synthetic_defaults, flag_rules=None):
    """Join torchrun, fill unset flags (printed), check every flag (FLAG_RULES and the script's
    flag_rules), split the global batch over the processes, seed, and generate the synthetic set when
    it is asked for. Returns the device."""
    rank, world, device = utils.init_distributed(args.device)
    synthetic = args.dataset == "synthetic"
    defaults = dict(synthetic_defaults, data_root=data.SYNTHETIC_ROOT) if synthetic else dict(paper_defaults)
    global_batch = defaults.pop("batch_size")
    if args.batch_size_per_gpu is None and global_batch % world:
        raise ValueError(f"the default global batch {global_batch} does not divide over {world} processes; "
                         f"pass --batch_size_per_gpu")
    defaults["batch_size_per_gpu"] = global_batch // world
    utils.apply_defaults(args, defaults, f"--dataset {args.dataset}")
    utils.check_flags(args, dict(FLAG_RULES, **(flag_rules or {})))
    if getattr(args, "warmup_epochs", 0) > getattr(args, "epochs", 0) > 0:
        raise ValueError(f"--warmup_epochs {args.warmup_epochs}: must be at most --epochs {args.epochs}")
    resolve_protocol(args)
    args.world_size, args.global_batch = world, args.batch_size_per_gpu * world
    args.precision = utils.resolve_precision(args.precision, device)
    if args.output_dir is None:
        args.output_dir = os.path.join("output", args.run_name or "eval")
    if args.run_name is None:
        args.run_name = os.path.basename(os.path.normpath(args.output_dir))
    utils.seed_everything(args.seed + rank)
    if args.dataset == "synthetic":
        data.ensure_synthetic_dataset(args.data_root)
    return device


def resolve_protocol(args):
    """Fill the PySlowFast settings that follow from other flags (printed like the defaults): the test
    crop (DATA.TEST_CROP_SIZE 256 for TRAIN_CROP_SIZE 224, the same ratio for smaller crops) and the
    frame sampling of the data set (ssv2.py for ssv2, kinetics.py for the others)."""
    utils.apply_defaults(args, dict(test_crop_size=int(round(args.crop_size * 256 / 224)),
                                    sampling=data.default_sampling(args.dataset)), "PySlowFast's protocol")
    utils.check_flags(args, dict(test_crop_size="[32,2048]"))


FINETUNE_JITTERS = ("pyslowfast", "none")


def add_finetune_args(p):
    """Flags of the scripts that train the whole network (finetune.py, semisup.py); unset ones take the
    script's protocol defaults (printed at start)."""
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--dropout", type=float, default=None,
                   help="dropout before the linear head (PySlowFast MODEL.DROPOUT_RATE: 0.8 in "
                        "finetune_ucf_Slow_R50_syn8.yaml, 0.5 in finetune_SSv2 and by default)")
    g.add_argument("--train_jitter", default=None, choices=FINETUNE_JITTERS,
                   help="training colour jitter on the device: pyslowfast = finetune_ucf_Slow_R50_syn8.yaml "
                        "(grayscale p=0.2, then brightness/contrast/saturation 0.4 and hue 0.1 on every clip, "
                        "no blur); none (finetune_SSv2 and the linear protocol)")
    g.add_argument("--no_flip", action="store_true",
                   help="no random horizontal flip in training (always off for ssv2, whose labels name directions)")
    return p


# ----------------------------------------------------------------------------------------------
# Backbone and record
# ----------------------------------------------------------------------------------------------

def pretraining_record(obj):
    """Record fields implied by a weights file: a pretrain.py checkpoint names its method, teacher and
    data in its "args" and its epochs in "epoch"; other files say nothing of their pretraining."""
    if isinstance(obj, dict) and "encoder" in obj:
        pre = obj.get("args") or {}
        method = pre.get("method", "iboot")
        return dict(method=method, teacher=pre.get("teacher") if method == "iboot" else "-",
                    pretrain_data=pre.get("dataset", "-"), pretrain_epochs=obj.get("epoch", pre.get("epochs", 0)))
    if isinstance(obj, dict) and "model_state" in obj:
        return dict(method="pyslowfast", teacher="-", pretrain_data="-", pretrain_epochs=obj.get("epoch", 0))
    return dict(method="init_from_file", teacher="-", pretrain_data="-", pretrain_epochs=0)


def load_backbone(args):
    """The encoder of --pretrained (models.load_pretrained), and the record fields the user left unset."""
    if args.pretrained == "scratch":
        args.arch = args.arch or "slow_r50"
        meta = dict(method="supervised", teacher="-", pretrain_data="-", pretrain_epochs=0)
        encoder = models.build_encoder(args.arch)
    else:
        if not os.path.isfile(args.pretrained):
            raise FileNotFoundError(f"--pretrained: no such file: {args.pretrained}")
        obj = checkpoint.load(args.pretrained)
        meta = pretraining_record(obj)
        encoder = models.load_pretrained(obj, arch=args.arch, fmt=args.pretrained_format, inflate_mode=args.inflation)
        args.arch = obj.get("encoder_name") or args.arch
        utils.print_main(f"loaded {args.pretrained} into {args.arch}: every tensor matched")
    for key, value in meta.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
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
# Data
# ----------------------------------------------------------------------------------------------

def build_split(args, split, mode, official_split=1, **kwargs):
    """The train (mode="train", one random clip) or test (mode="test", V views) set of --dataset."""
    list_file = args.train_list if split == "train" else args.val_list
    return data.build_dataset(args.dataset, root=args.data_root, split=split, list_file=list_file,
                              official_split=official_split, skip_missing=args.skip_missing,
                              num_clips=1, num_frames=args.num_frames, stride=args.stride,
                              crop_size=args.crop_size, mode=mode, test_clips=args.test_clips,
                              test_crops=args.test_crops, seed=args.seed, test_crop_size=args.test_crop_size,
                              test_spacing=args.test_spacing, sampling=args.sampling, **kwargs)


def labels_of(dataset):
    """Labels of every video of a data.VideoDataset, read from its list (nothing decoded)."""
    return [label for _, label in dataset.videos]


def num_classes_of(dataset):
    """Classes of a labelled training set: its class-name list, else the largest label + 1."""
    labels = labels_of(dataset)
    if any(label < 0 for label in labels):
        raise ValueError(f"the training list has {sum(label < 0 for label in labels)} videos without a label; "
                         "evaluation needs labels (`path label` lines)")
    return len(dataset.classes) if dataset.classes else max(labels) + 1


class ShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + world, ...: every item on exactly one process, none padded or repeated
    (DistributedSampler pads the last shard, which would count some test videos twice)."""

    def __init__(self, num_items, rank, world_size):
        self.indices = list(range(rank, num_items, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def eval_loader(dataset, batch_size, num_workers, device):
    """This process's shard of a test set, in order, every video once over all processes."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), utils.get_rank(), utils.get_world_size()),
        num_workers=num_workers, collate_fn=data.collate_skip_bad, pin_memory=device.type == "cuda")


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------

class VideoClassifier(nn.Module):
    """Encoder, global average pool over (T, H, W), dropout, linear layer.

    freeze_backbone: the linear probe. The encoder gets no gradient and stays in eval mode even when
    the classifier is put in train mode, so its batch-norm statistics do not move.
    The linear layer starts as in PySlowFast's heads: normal(std 0.01) weights, zero bias.
    test_window: in eval mode, views larger than the training crop are scored as PySlowFast's
    ResNetBasicHead does (windowed_log_probs); None pools the whole map.
    """

    def __init__(self, encoder, num_classes, dropout=0.0, freeze_backbone=False, test_window=None):
        super().__init__()
        self.encoder = encoder
        self.freeze_backbone, self.test_window = freeze_backbone, test_window
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
        windowed = not self.training and self.test_window and hasattr(self.encoder, "feature_map")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            if windowed:
                return windowed_log_probs(self.encoder.feature_map(x), self.fc, self.test_window)
            feats = self.encoder(x).mean(dim=2)  # (N, C, T) -> (N, C): the spatial pool is in the encoder
        return self.fc(self.dropout(feats.float()))


def head_window(args):
    """The head's pooling window in feature cells: PySlowFast's TRAIN_CROP_SIZE // 32 (the Slow ResNets
    downsample by 32), 7 for 224 crops (models/video_model_builder.py ResNet, pool_size)."""
    return max(1, args.crop_size // 32)


def windowed_log_probs(fmap, fc, window):
    """View scores as PySlowFast's ResNetBasicHead in eval mode (models/head_helper.py): the map
    (N, C, T, h, w) average-pooled with the training window (AvgPool3d of [T, TRAIN_CROP_SIZE // 32,
    TRAIN_CROP_SIZE // 32], stride 1: a 256 view's 8x8 map gives 2x2 windows of 7x7), the linear layer
    and the softmax on each window, then their mean ("fully convolutional inference"). Returned as
    log-probabilities, so that the softmax of the multi-view average gives these probabilities back;
    a map no larger than the window is one window, i.e. the global pool of training."""
    kernel = (fmap.shape[2], min(window, fmap.shape[3]), min(window, fmap.shape[4]))
    pooled = F.avg_pool3d(fmap.float(), kernel, stride=1)  # (N, C, 1, h', w')
    probs = fc(pooled.permute(0, 2, 3, 4, 1)).float().softmax(dim=-1).mean(dim=(1, 2, 3))
    return probs.log()


# ----------------------------------------------------------------------------------------------
# Multi-view testing
# ----------------------------------------------------------------------------------------------

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


@torch.no_grad()
def evaluate_multiview(model, dataset, device, args):
    """Top-1/top-5 (%) over the videos of a mode="test" dataset whose items hold V views each.

    Each process scores its shard, counts are summed over processes, so every video counts exactly
    once. Undecodable videos are left out, listed in --output_dir/skipped_videos.txt and counted
    ("skipped"); more than --max_skip_share of them stops the run."""
    model.eval()
    videos_per_step = max(1, args.batch_size_per_gpu // dataset.views_per_video)
    loader = eval_loader(dataset, videos_per_step, args.num_workers, device)
    skipped = data.SkippedVideos(args.output_dir, args.max_skip_share)
    correct1 = correct5 = seen = loaded = 0
    progress = utils.Progress(len(loader), "test", args.log_every)
    for batch in loader:
        skipped.add(batch["skipped"])
        clips = batch["clips"]  # uint8 (B, V, 3, T, S, S)
        loaded += len(batch["skipped"]) + clips.shape[0]
        if clips.shape[0] == 0:
            continue
        B, V = clips.shape[:2]
        with utils.autocast(device, args.precision):
            logits = model(augment.student_input(clips.to(device, non_blocking=True).flatten(0, 1)))
        hits = topk_correct(aggregate_views(logits.view(B, V, -1)), batch["label"].to(device).view(-1))
        correct1, correct5, seen = correct1 + hits[1], correct5 + hits[5], seen + B
        progress.update()
    progress.close()
    num_skipped = skipped.end_epoch(loaded, device, "the test set")
    seen = utils.all_reduce_sum(seen, device)
    if seen == 0:
        raise ValueError("no test video could be decoded")
    return dict(top1=100.0 * utils.all_reduce_sum(correct1, device) / seen,
                top5=100.0 * utils.all_reduce_sum(correct5, device) / seen, num_videos=int(seen), skipped=num_skipped)


# ----------------------------------------------------------------------------------------------
# Training: linear probe, fine-tuning, semi-supervised
# ----------------------------------------------------------------------------------------------

def iterations_per_epoch(loader, max_iters):
    """Steps of a full epoch (--max_iters_per_epoch caps them), also while the loader skips the steps
    a resumed run has done (data.ResumableSampler)."""
    samples = getattr(loader.sampler, "num_samples", None)  # this rank's share of a whole epoch
    batches = len(loader) if samples is None else samples // loader.batch_size
    return min(batches, max_iters) if max_iters else batches


# --train_jitter -> GpuAugment parameters (augment.py holds the values and their PySlowFast sources).
TRAIN_JITTER = {"pyslowfast": augment.PYSLOWFAST_FINETUNE_JITTER, "none": None}


def training_input(clips, args, epoch, iteration):
    """The classifier's training input from uint8 clips on the device: --train_jitter's colour jitter
    (batched, augment.GpuAugment), then the student normalisation. The jitter's random parameters
    derive from (seed, rank, epoch, iteration), so a resumed run draws the same ones."""
    recipe = TRAIN_JITTER[getattr(args, "train_jitter", None) or "none"]
    if recipe is not None:
        seed = int(np.random.SeedSequence([args.seed, utils.get_rank(), epoch, iteration]).generate_state(1)[0])
        clips = augment.GpuAugment(**recipe, seed=seed)(clips)
    return augment.student_input(clips)


def build_sgd(model, args):
    """SGD as PySlowFast's models/optimizer.py construct_optimizer: momentum 0.9 (the paper), Nesterov
    (SOLVER.NESTEROV, default True, not changed by the contrastive_ssl configs), batch-norm weights and
    biases in their own group with --bn_weight_decay (BN.WEIGHT_DECAY 0.0 in the BYOL, linear, ucf and
    SSv2 configs), every other trainable parameter with --weight_decay."""
    bn, other = [], []
    for module in model.modules():
        is_bn = isinstance(module, nn.modules.batchnorm._NormBase)
        for param in module.parameters(recurse=False):
            if param.requires_grad:
                (bn if is_bn else other).append(param)
    groups = [dict(params=bn, weight_decay=getattr(args, "bn_weight_decay", 0.0)),
              dict(params=other, weight_decay=args.weight_decay)]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=args.lr, momentum=0.9,
                           nesterov=getattr(args, "nesterov", True))


def sync_batchnorm(model, device):
    """Batch norm synchronised across the processes, as PySlowFast's fine-tuning configs
    (BN.NORM_TYPE sync_batchnorm). PyTorch's SyncBatchNorm runs on CUDA only, so a CPU (gloo) run or a
    single process keeps per-process batch norm, which is the same thing on one process."""
    if device.type == "cuda" and utils.get_world_size() > 1:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def train_one_epoch(run, loader, epoch, args, first_iter=0, partial=None):
    """Iterations first_iter.. of one epoch of cross-entropy training with the per-iteration warm-up
    + cosine lr (`epoch` is 1-based). Returns this rank's sums so far ("loss_sum", "correct", "seen",
    "loaded"), the lr, and "stopped_at" (the next iteration when a signal stopped the epoch)."""
    run.model.train()
    iters = iterations_per_epoch(loader, args.max_iters_per_epoch)
    total_steps, warmup_steps = args.epochs * iters, int(round(args.warmup_epochs * iters))
    sums = dict(partial or dict(loss_sum=0.0, correct=0, seen=0, loaded=0), stopped_at=None, lr=args.lr)
    progress = utils.Progress(iters - first_iter, f"epoch {epoch}/{args.epochs}", args.log_every)
    for it, batch in enumerate(loader, start=first_iter):
        if it >= iters:
            break
        sums["lr"] = lr = utils.warmup_cosine_lr((epoch - 1) * iters + it, total_steps, warmup_steps, args.lr,
                                                 warmup_start_lr=args.warmup_start_lr)
        utils.set_lr(run.optimizer, lr)
        run.skipped.add(batch["skipped"])
        sums["loaded"] += len(batch["skipped"]) + batch["clips"].shape[0]
        if batch["clips"].shape[0] > 0:  # else every video of the batch was undecodable
            labels = batch["label"].to(run.device).view(-1)
            x = training_input(batch["clips"][:, 0].to(run.device, non_blocking=True), args, epoch, it)
            logits, loss = classifier_step(run, x, labels, args, f"epoch {epoch}, iteration {it}, lr {lr:.4g}")
            sums["loss_sum"] += loss * labels.numel()
            sums["correct"] += (logits.argmax(1) == labels).sum().item()
            sums["seen"] += labels.numel()
            progress.update(loss=f"{loss:.3f}", lr=f"{lr:.3g}")
        if run.stop.requested(run.device):
            sums["stopped_at"] = it + 1
            break
    progress.close()
    return sums


def classifier_step(run, x, labels, args, where):
    """Forward (autocast), cross-entropy, backward, SGD step on the normalised input x (B, 3, T, S, S).
    Returns the logits and the loss; a non-finite loss stops the run with one line."""
    with utils.autocast(run.device, args.precision):
        logits = run.model(x)
    loss = F.cross_entropy(logits.float(), labels)
    if not math.isfinite(loss.item()):
        raise utils.Diverged(f"the loss is {loss.item()} at {where}: the run diverged; lower --lr")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return logits.detach(), loss.item()


def _better(best, metrics, epoch):
    if best is None or metrics["top1"] > best["top1"]:
        return dict(top1=metrics["top1"], top5=metrics["top5"], epoch=epoch)
    return best


def _resume_classifier(run, model, args, fingerprint):
    state = checkpoint.resume_run(args.output_dir, fingerprint)
    if state is None:
        return dict(epoch=0, iteration=0, partial=None, best=None)
    model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    where = f", {state['iteration']} iterations into epoch {state['epoch'] + 1}" if state["iteration"] else ""
    utils.print_main(f"resumed from {args.output_dir}: {state['epoch']} of {args.epochs} epochs done{where}")
    return {k: state[k] for k in ("epoch", "iteration", "partial", "best")}


def _classifier_epoch(run, model, loader, test_set, epoch, args, state):
    """One epoch from where `state` says it stands, its periodic test and its checkpoint; a signal
    during it writes a checkpoint that resumes mid-epoch and stops the run."""
    first_iter = state["iteration"] if epoch == state["epoch"] + 1 else 0
    data.start_epoch(loader, epoch, first_iter)
    sums = train_one_epoch(run, loader, epoch, args, first_iter, state["partial"] if first_iter else None)
    save = dict(model=model.state_dict(), optimizer=run.optimizer.state_dict(), scaler=run.scaler.state_dict(),
                fingerprint=run.fingerprint, args=vars(args))
    if sums["stopped_at"] is not None:
        partial = {k: sums[k] for k in ("loss_sum", "correct", "seen", "loaded")}
        checkpoint.save_run(args.output_dir, dict(save, epoch=epoch - 1, iteration=sums["stopped_at"],
                                                  partial=partial, best=state["best"]))
        raise run.stop.stopped(epoch, sums["stopped_at"], args.output_dir)
    skipped = run.skipped.end_epoch(sums["loaded"], run.device, f"epoch {epoch}")
    n = max(1.0, utils.all_reduce_sum(sums["seen"], run.device))
    stats = dict(epoch=epoch, loss=utils.all_reduce_sum(sums["loss_sum"], run.device) / n, lr=sums["lr"],
                 train_top1=100.0 * utils.all_reduce_sum(sums["correct"], run.device) / n, skipped_videos=skipped)
    utils.print_main(f"epoch {epoch}/{args.epochs}: loss {stats['loss']:.4f}, train top-1 {stats['train_top1']:.1f}%, "
                     f"lr {stats['lr']:.4g}, skipped videos {skipped}")
    run.logger.log(kind="epoch", **stats)
    if args.eval_freq and epoch % args.eval_freq == 0 and epoch < args.epochs:
        metrics = evaluate_multiview(model, test_set, run.device, args)
        state["best"] = _better(state["best"], metrics, epoch)
        utils.print_main(f"epoch {epoch}: test top-1 {metrics['top1']:.2f}% (best {state['best']['top1']:.2f}%)")
        run.logger.log(kind="test", epoch=epoch, **metrics)
    checkpoint.save_run(args.output_dir, dict(save, epoch=epoch, iteration=0, partial=None, best=state["best"]))


def train_classifier(model, train_set, test_set, args, device):
    """SGD (momentum 0.9) with linear warm-up (--warmup_start_lr -> --lr over --warmup_epochs) then
    cosine to 0; a checkpoint every epoch (and on SIGTERM / Ctrl-C, mid-epoch) in --output_dir,
    resumed when the run is started again with the same flags; a test every --eval_freq epochs and at
    the end. Returns the final test metrics with the best top-1 seen ("best_top1", "best_epoch")."""
    loader, _ = data.train_loader(train_set, args.batch_size_per_gpu, args.num_workers, args.seed, device)
    if len(loader) == 0:
        raise ValueError(f"the training set has {len(train_set)} videos, fewer than one global batch of "
                         f"--batch_size_per_gpu {args.batch_size_per_gpu} x {utils.get_world_size()} processes")
    model.to(device)
    ddp_model = model if utils.get_world_size() == 1 else nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_sgd(model, args)
    run = types.SimpleNamespace(model=ddp_model, optimizer=optimizer, scaler=utils.grad_scaler(device, args.precision),
                                device=device, stop=utils.GracefulStop(),
                                fingerprint=checkpoint.run_fingerprint(args, files=("pretrained",)),
                                skipped=data.SkippedVideos(args.output_dir, args.max_skip_share))
    state = _resume_classifier(run, model, args, run.fingerprint)
    utils.save_config(args, args.output_dir)
    data.write_missing_videos(args.output_dir, train_set, test_set)
    run.logger = utils.JsonlLogger(os.path.join(args.output_dir, "log.jsonl"))
    with run.stop:
        for epoch in range(state["epoch"] + 1, args.epochs + 1):
            _classifier_epoch(run, model, loader, test_set, epoch, args, state)
    metrics = evaluate_multiview(model, test_set, device, args)
    best = _better(state["best"], metrics, args.epochs)
    metrics.update(best_top1=best["top1"], best_epoch=best["epoch"])
    run.logger.log(kind="test", epoch=args.epochs, **metrics)
    return metrics


def finetune(args, device, official_split, output_dir, train_subset=None):
    """Fine-tune a fresh copy of --pretrained (backbone and head) on one split and test it; returns the
    test metrics. train_subset: indices of the training videos to use (semisup.py's labelled fraction).
    Needs the fine-tuning flags of add_finetune_args."""
    utils.check_training_precision(device, args.precision, args.num_frames)
    hflip = not (args.no_flip or args.dataset == "ssv2")  # SSv2 labels name directions
    train_set = build_split(args, "train", "train", official_split=official_split, hflip=hflip)
    test_set = build_split(args, "val", "test", official_split=official_split)
    num_classes = num_classes_of(train_set)
    if train_subset is not None:
        train_set = torch.utils.data.Subset(train_set, train_subset)
    encoder = load_backbone(args)
    torch.manual_seed(args.seed)  # the same head initialisation on every process
    model = VideoClassifier(encoder, num_classes, dropout=args.dropout, test_window=head_window(args))
    model = sync_batchnorm(model, device)
    utils.print_main(f"fine-tuning | {args.arch} from {args.pretrained} | {args.dataset} split {official_split} | "
                     f"{len(train_set)} train / {len(test_set)} test videos | {args.world_size} process(es) on "
                     f"{device} | batch {args.batch_size_per_gpu} per GPU, {args.global_batch} global | lr "
                     f"{args.lr} | {args.epochs} epochs | T={args.num_frames} | {args.sampling} sampling | flip "
                     f"{hflip} | jitter {args.train_jitter} | dropout {args.dropout} | {args.precision} | "
                     f"test {args.test_clips}x{args.test_crops} views of {args.test_crop_size}")
    run_args = argparse.Namespace(**vars(args))
    run_args.output_dir, run_args.split = output_dir, str(official_split)
    return train_classifier(model, train_set, test_set, run_args, device)


# ----------------------------------------------------------------------------------------------
# k-NN on frozen features (DINO's weighted k-NN classifier)
# ----------------------------------------------------------------------------------------------

TEMPERATURE = 0.07
# Similarity chunks hold at most this many (test x train) entries: 2^26 floats = 256 MiB, so the
# K400 sets (240k training videos) need chunks of ~280 validation videos, and no larger matrix.
MAX_CHUNK_ELEMENTS = 2 ** 26


@torch.no_grad()
def extract_features(encoder, dataset, device, batch_size, num_workers, precision="fp32", log_every=10,
                     skipped=None, what="the set"):
    """L2-normalised pooled features of every decodable video of a mode="test" dataset.

    Returns (features (N, C) float, labels (N,), indices (N,)) sorted by dataset index, on `device`.
    Under torchrun each process encodes its shard once and the shards are gathered, so every process
    ends with the whole set, each video exactly once. Undecodable videos are left out and, with a
    data.SkippedVideos, listed (too many of them stop the run)."""
    encoder.eval()
    feats, labels, indices, loaded = [], [], [], 0
    loader = eval_loader(dataset, batch_size, num_workers, device)
    progress = utils.Progress(len(loader), "features", log_every)
    for batch in loader:
        clips = batch["clips"]  # uint8 (B, V, 3, T, S, S)
        loaded += len(batch["skipped"]) + clips.shape[0]
        if skipped is not None:
            skipped.add(batch["skipped"])
        if clips.shape[0] == 0:
            continue
        B, V = clips.shape[:2]
        with utils.autocast(device, precision):
            f = encoder(augment.student_input(clips.to(device, non_blocking=True).flatten(0, 1)))  # (B*V, C, T)
        feats.append(F.normalize(f.float().mean(dim=2).view(B, V, -1).mean(dim=1), dim=1))
        labels.append(batch["label"].to(device).view(-1).long())
        indices.append(batch["index"].to(device).view(-1).long())
        progress.update()
    progress.close()
    if skipped is not None:
        skipped.end_epoch(loaded, device, what)
    feats = torch.cat(feats) if feats else torch.zeros(0, encoder.feat_dim, device=device)
    labels, indices = [torch.cat(t) if t else torch.zeros(0, dtype=torch.long, device=device)
                       for t in (labels, indices)]
    feats, labels, indices = [utils.all_gather_variable(t) for t in (feats, labels, indices)]
    order = indices.argsort()
    return feats[order], labels[order], indices[order]


@torch.no_grad()
def knn_scores(train_features, train_labels, test_features, k, num_classes, temperature=TEMPERATURE,
               chunk_size=None):
    """Class scores (N_test, num_classes): sum over the k most similar training features of
    exp(cos / temperature), per neighbour label. Features must be L2-normalised (cos = dot product).

    The similarity matrix is computed in chunks of test rows, so its size stays bounded; k larger
    than the training set uses every training sample."""
    n_train = train_features.shape[0]
    if n_train == 0:
        raise ValueError("k-NN: the training set has no features")
    k = min(k, n_train)
    if chunk_size is None:
        chunk_size = max(1, MAX_CHUNK_ELEMENTS // n_train)
    scores = torch.zeros(test_features.shape[0], num_classes, device=test_features.device)
    for start in range(0, test_features.shape[0], chunk_size):
        sims = test_features[start:start + chunk_size] @ train_features.T  # (chunk, n_train)
        top_sims, top_idx = sims.topk(k, dim=1)
        weights = (top_sims / temperature).exp()
        scores[start:start + chunk_size].scatter_add_(1, train_labels[top_idx], weights)
    return scores


def knn_topk_correct(scores, labels, k):
    """(top-1 hits, top-5 hits) as DINO's eval_knn.py knn_classifier: the classes sorted by their votes,
    descending (`probs.sort(1, True)`), the label counted among the first 1 and the first min(5, k)
    of them (`correct.narrow(1, 0, min(5, k))`): with k < 5 neighbours top-5 looks at k classes only,
    and classes without votes rank after every class with one. DINO's sort leaves the order of equal
    scores to the device; ours is stable (ties by class index), so every run counts the same."""
    order = scores.sort(dim=1, descending=True, stable=True).indices
    correct = order == labels.view(-1, 1)
    return int(correct[:, :1].sum().item()), int(correct[:, :min(5, k, scores.shape[1])].sum().item())


def knn_accuracy(train_features, train_labels, test_features, test_labels, k, num_classes, **kwargs):
    """(top-1 %, top-5 %) of the weighted k-NN classifier, counted as DINO's (knn_topk_correct). k larger
    than the training set uses all of it (DINO would stop), and top-5 then looks at min(5, that many)."""
    scores = knn_scores(train_features, train_labels, test_features, k, num_classes, **kwargs)
    top1, top5 = knn_topk_correct(scores, test_labels, min(k, train_features.shape[0]))
    n = max(1, test_labels.numel())
    return 100.0 * top1 / n, 100.0 * top5 / n


def knn_top1_on_sets(encoder, train_set, val_set, device, skipped, k=20, batch_size=16, num_workers=0,
                     precision="fp32"):
    """k-NN top-1 (%) of an encoder on two test-mode sets: the quick check pretrain.py runs after training."""
    train_f, train_y, _ = extract_features(encoder, train_set, device, batch_size, num_workers, precision,
                                           skipped=skipped, what="the k-NN training set")
    val_f, val_y, _ = extract_features(encoder, val_set, device, batch_size, num_workers, precision,
                                       skipped=skipped, what="the k-NN validation set")
    num_classes = int(max(train_y.max().item(), val_y.max().item())) + 1
    return knn_accuracy(train_f, train_y, val_f, val_y, k, num_classes)[0]
