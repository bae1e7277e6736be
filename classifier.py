"""Classifiers on a video encoder (Section 4.2): the linear probe, fine-tuning and semi-supervised
learning train one, multi-view testing scores it.

    VideoClassifier                 encoder + average pool + dropout + linear layer; views larger than
                                    the training crop scored in windows as PySlowFast's test head
    evaluate_multiview              V views per video (10 clips x 3 crops), softmax averaged, each video once
    build_sgd / train_jitter        PySlowFast's SGD (Nesterov, no weight decay on BN) and the device-side
                                    fine-tuning colour jitter
    train_classifier                the cross-entropy step in trainer.Trainer's loop, a test every
                                    --eval_freq epochs and at the end (the best one recorded)
    finetune                        a fresh copy of the backbone and a head on one split, trained and tested
"""
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import augment
import checkpoint
import cli
import data
import distributed
import precision
import records
import rng
import trainer

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


def head_window(flags):
    """The head's pooling window in feature cells: PySlowFast's TRAIN_CROP_SIZE // 32 (the Slow ResNets
    downsample by 32), 7 for 224 crops (models/video_model_builder.py ResNet, pool_size)."""
    return max(1, flags.crop_size // 32)


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
def evaluate_multiview(model, dataset, device, flags):
    """Top-1/top-5 (%) over the videos of a mode="test" dataset whose items hold V views each.

    Each process scores its shard, counts are summed over processes, so every video counts exactly
    once. Undecodable videos are left out, listed in --output_dir/skipped_videos.txt and counted
    ("skipped"); more than --max_skip_share of them stops the run."""
    model.eval()
    videos_per_step = max(1, flags.batch_size_per_gpu // dataset.views_per_video)
    skipped = data.SkippedVideos(flags.output_dir, flags.max_skip_share)
    correct1 = correct5 = seen = 0
    for batch in data.decoded_batches(dataset, videos_per_step, flags.num_workers, device, flags.log_every, skipped,
                                      "the test set", desc="test"):
        clips = batch["clips"]  # uint8 (B, V, 3, T, S, S)
        B, V = clips.shape[:2]
        with precision.autocast(device, flags.precision):
            logits = model(augment.student_input(clips.to(device, non_blocking=True).flatten(0, 1)))
        hits = topk_correct(aggregate_views(logits.view(B, V, -1)), batch["label"].to(device).view(-1))
        correct1, correct5, seen = correct1 + hits[1], correct5 + hits[5], seen + B
    seen = distributed.all_reduce_sum(seen, device)
    if seen == 0:
        raise ValueError("no test video could be decoded")
    return dict(top1=100.0 * distributed.all_reduce_sum(correct1, device) / seen,
                top5=100.0 * distributed.all_reduce_sum(correct5, device) / seen, num_videos=int(seen), skipped=skipped.last)


# ----------------------------------------------------------------------------------------------
# Training: linear probe, fine-tuning, semi-supervised
# ----------------------------------------------------------------------------------------------

# --train_jitter -> GpuAugment parameters (augment.py holds the values and their PySlowFast sources).
TRAIN_JITTER = {"pyslowfast": augment.PYSLOWFAST_FINETUNE_JITTER, "none": None}


def train_jitter(flags, device):
    """--train_jitter's colour jitter (augment.GpuAugment, batched on the device), or None."""
    recipe = TRAIN_JITTER[getattr(flags, "train_jitter", None) or "none"]
    return None if recipe is None else augment.GpuAugment(**recipe).to(device)


def build_sgd(model, flags):
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
    groups = [dict(params=bn, weight_decay=getattr(flags, "bn_weight_decay", 0.0)),
              dict(params=other, weight_decay=flags.weight_decay)]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=flags.lr, momentum=0.9,
                           nesterov=getattr(flags, "nesterov", True))


def _better(best, metrics, epoch):
    if best is None or metrics["top1"] > best["top1"]:
        return dict(top1=metrics["top1"], top5=metrics["top5"], epoch=epoch)
    return best


def train_classifier(model, train_set, test_set, flags, device):
    """Cross-entropy training in trainer.Trainer's loop: SGD (momentum 0.9) with linear warm-up
    (--warmup_start_lr -> --lr over --warmup_epochs) then cosine to 0; a checkpoint every epoch (and on
    SIGTERM / Ctrl-C, mid-epoch) in --output_dir, resumed when the run is started again with the same
    flags; a test every --eval_freq epochs and at the end. Returns the final test metrics with the best
    top-1 seen ("best_top1", "best_epoch") and the data seen ("data": data.fingerprints)."""
    loader, _ = data.train_loader(train_set, flags.batch_size_per_gpu, flags.num_workers, flags.seed, device)
    model.to(device)
    ddp_model, optimizer, jitter = distributed.ddp(model, device), build_sgd(model, flags), train_jitter(flags, device)
    scaler = precision.grad_scaler(device, flags.precision)

    def step(batch, at):
        """Forward (autocast), cross-entropy, backward, SGD step; a non-finite loss stops the run."""
        labels = batch["label"].to(device).view(-1)
        clips = batch["clips"][:, 0].to(device, non_blocking=True)
        x = augment.student_input(clips if jitter is None else jitter(clips))
        with precision.autocast(device, flags.precision):
            logits = ddp_model(x)
        loss = F.cross_entropy(logits.float(), labels)
        if not math.isfinite(loss.item()):
            raise cli.Diverged(f"the loss is {loss.item()} at {at}: the run diverged; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        hits = (logits.detach().argmax(1) == labels).float().mean().item()
        return dict(n=labels.numel(), loss=loss.item(), train_top1=100.0 * hits)

    run = trainer.Trainer(flags, loader, device, ddp_model, optimizer, scaler,
                          state_dict=lambda: dict(model=model.state_dict()),
                          load_state_dict=lambda ckpt: model.load_state_dict(ckpt["model"]),
                          fingerprint=checkpoint.run_fingerprint(flags, files=("pretrained",)),
                          generators={} if jitter is None else {"train_jitter": jitter.generator})
    state = run.resume(extra=dict(best=None))
    run.start(train_set, test_set)

    def periodic_test(epoch, state):
        if flags.eval_freq and epoch % flags.eval_freq == 0 and epoch < flags.epochs:
            metrics = evaluate_multiview(model, test_set, device, flags)
            state.extra["best"] = _better(state.extra["best"], metrics, epoch)
            run.logger.log(kind="test", epoch=epoch, **metrics)
            return dict(test_top1=metrics["top1"], best_test_top1=state.extra["best"]["top1"])
        return None

    run.fit(step, state, after_epoch=periodic_test)
    metrics = evaluate_multiview(model, test_set, device, flags)
    best = _better(state.extra["best"], metrics, flags.epochs)
    metrics.update(best_top1=best["top1"], best_epoch=best["epoch"],
                   data=data.fingerprints(train_set, test_set, skipped=(run.skipped.last, metrics["skipped"])))
    run.logger.log(kind="test", epoch=flags.epochs, **metrics)
    return metrics


def finetune(flags, device, backbone, official_split, output_dir, train_subset=None):
    """Fine-tune a fresh copy of `backbone` with a new head on one split and test it; returns the test
    metrics. train_subset: indices of the training videos to use (semisup.py's labelled fraction).
    Needs the fine-tuning flags of protocols.add_finetune_args."""
    precision.check_training(device, flags.precision, flags.num_frames)
    hflip = not (flags.no_flip or flags.dataset == "ssv2")  # SSv2 labels name directions
    train_set = data.build_split(flags, "train", "train", official_split=official_split, hflip=hflip)
    test_set = data.build_split(flags, "val", "test", official_split=official_split)
    data.check_eval_lists(train_set, test_set, flags.allow_unseen_labels)
    num_classes = data.num_classes_of(train_set)
    if train_subset is not None:
        train_set = torch.utils.data.Subset(train_set, train_subset)
    torch.manual_seed(rng.derive_seed(flags.seed, "head"))  # the same head initialisation on every process
    model = VideoClassifier(copy.deepcopy(backbone), num_classes, dropout=flags.dropout, test_window=head_window(flags))
    model = distributed.sync_batchnorm(model, device)
    records.print_main(
        f"fine-tuning | {flags.arch} from {flags.pretrained} | {flags.dataset} split {official_split} | "
        f"{len(train_set)} train / {len(test_set)} test videos | {flags.world_size} process(es) on {device} | batch "
        f"{flags.batch_size_per_gpu} per GPU, {flags.global_batch} global | lr {flags.lr} | {flags.epochs} epochs | "
        f"T={flags.num_frames} | {flags.sampling} sampling | flip {hflip} | jitter {flags.train_jitter} | dropout "
        f"{flags.dropout} | {flags.precision} | test {flags.test_clips}x{flags.test_crops} views of {flags.test_crop_size}")
    split_flags = cli.freeze(flags, output_dir=output_dir, split=str(official_split))
    return train_classifier(model, train_set, test_set, split_flags, device)
