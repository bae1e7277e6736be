"""Weighted k-nearest-neighbour classification on frozen features (Section 4.2), as in DINO.

    python eval_knn.py --pretrained output/pretrain/checkpoint.pth --dataset synthetic
    torchrun --nproc_per_node=8 eval_knn.py --pretrained runs/iboot/checkpoint.pth \
        --dataset kinetics --data_root /data/k400 --nb_knn 20

Features: the backbone's global average pool (over T, H and W), L2-normalised, of one clip per video
(centre crop) of the training and of the validation set. Each validation feature takes its k nearest
training features by cosine similarity; each neighbour votes for its label with weight
exp(similarity / 0.07) (DINO's temperature); the class with the largest total wins. The paper uses
k = 20 (DINO's default); --nb_knn takes several values (e.g. 10 20 100 200). Top-1 and top-5.

The paper does not say how many views per video the k-NN features use; one clip x one centre crop
(DINO uses one centre crop per image) is the default, --test_clips/--test_crops average more.
"""
import argparse

import torch
import torch.nn.functional as F

import utils

utils.register_torchvision_fallbacks()

import data  # noqa: E402
import eval_linear  # noqa: E402

PAPER_DEFAULTS = dict(batch_size=64, test_clips=1, test_crops=1, num_frames=8, stride=8, crop_size=224,
                      num_workers=8)
SYNTHETIC_DEFAULTS = dict(batch_size=8, test_clips=1, test_crops=1, num_frames=4, stride=8, crop_size=64,
                          num_workers=1)
TEMPERATURE = 0.07
# Similarity chunks hold at most this many (test x train) entries: 2^26 floats = 256 MiB, so the
# K400 sets (240k training videos) need chunks of ~280 validation videos, and no larger matrix.
MAX_CHUNK_ELEMENTS = 2 ** 26


@torch.no_grad()
def extract_features(encoder, dataset, device, batch_size, num_workers, distributed=None):
    """L2-normalised pooled features of every decodable video of a mode="test" dataset.

    Returns (features (N, C) float, labels (N,), indices (N,)) sorted by dataset index, on `device`.
    Distributed: each process encodes its shard once (ShardSampler: no padding, no repeats) and
    the shards are gathered, so every process ends with the whole set, each video exactly once.
    """
    distributed = utils.is_distributed() if distributed is None else distributed
    rank, world = (utils.get_rank(), utils.get_world_size()) if distributed else (0, 1)
    encoder.eval()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=eval_linear.ShardSampler(len(dataset), rank, world),
        num_workers=num_workers, collate_fn=data.collate_skip_bad, pin_memory=device.type == "cuda")
    feats, labels, indices = [], [], []
    progress = utils.progress_bar(len(loader), "features")
    for batch in loader:
        clips = batch["clips"]  # uint8 (B, V, 3, T, S, S)
        if clips.shape[0] == 0:
            continue
        B, V = clips.shape[:2]
        x = eval_linear.clips_to_input(clips.to(device, non_blocking=True).flatten(0, 1))
        with eval_linear.autocast_context(device):
            f = encoder(x)  # (B*V, C, T): already pooled over H and W
        f = f.float().mean(dim=2).view(B, V, -1).mean(dim=1)
        feats.append(F.normalize(f, dim=1))
        labels.append(batch["label"].to(device).view(-1).long())
        indices.append(batch["index"].to(device).view(-1).long())
        progress.update(1)
    progress.close()
    dim = encoder.feat_dim
    feats = torch.cat(feats) if feats else torch.zeros(0, dim, device=device)
    labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    indices = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long, device=device)
    if distributed and world > 1:
        feats = utils.all_gather_variable(feats)
        labels = utils.all_gather_variable(labels)
        indices = utils.all_gather_variable(indices)
    order = indices.argsort()
    return feats[order], labels[order], indices[order]


@torch.no_grad()
def knn_scores(train_features, train_labels, test_features, k, num_classes, temperature=TEMPERATURE,
               chunk_size=None):
    """Class scores (N_test, num_classes): sum over the k most similar training features of
    exp(cos / temperature), per neighbour label. Features must be L2-normalised (cos = dot product).

    The similarity matrix is computed in chunks of test rows, so its size stays bounded; k larger
    than the training set uses every training sample.
    """
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
        neighbour_labels = train_labels[top_idx]  # (chunk, k)
        scores[start:start + chunk_size].scatter_add_(1, neighbour_labels, weights)
    return scores


def knn_accuracy(train_features, train_labels, test_features, test_labels, k, num_classes, **kwargs):
    """(top-1 %, top-5 %) of the weighted k-NN classifier."""
    scores = knn_scores(train_features, train_labels, test_features, k, num_classes, **kwargs)
    hits = eval_linear.topk_correct(scores, test_labels, ks=(1, 5))
    n = max(1, test_labels.numel())
    return 100.0 * hits[1] / n, 100.0 * hits[5] / n


def knn_top1_on_sets(encoder, train_set, val_set, device, k=20, batch_size=16, num_workers=0,
                     distributed=False):
    """k-NN top-1 (%) of an encoder: the quick check pretrain.py runs (on one process) after training."""
    train_f, train_y, _ = extract_features(encoder, train_set, device, batch_size, num_workers, distributed)
    val_f, val_y, _ = extract_features(encoder, val_set, device, batch_size, num_workers, distributed)
    num_classes = int(max(train_y.max().item(), val_y.max().item())) + 1
    return knn_accuracy(train_f, train_y, val_f, val_y, k, num_classes)[0]


def get_args_parser():
    p = argparse.ArgumentParser("iboot k-NN evaluation (frozen features)", add_help=True,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    eval_linear.add_common_args(p, PAPER_DEFAULTS)
    p.add_argument("--nb_knn", type=int, nargs="+", default=[20],
                   help="k values; the paper reports k = 20 (DINO's default); 10, 100, 200 are DINO's others")
    p.add_argument("--temperature", type=float, default=TEMPERATURE, help="vote weight exp(cos / T) (DINO 0.07)")
    return p


def main(args):
    device = eval_linear.prepare_run(args, PAPER_DEFAULTS, SYNTHETIC_DEFAULTS)
    if any(k < 1 for k in args.nb_knn):
        raise ValueError(f"--nb_knn values must be at least 1, got {args.nb_knn}")
    encoder = eval_linear.load_backbone(args).to(device)
    utils.save_args(args, args.output_dir)
    train_set = eval_linear.build_split(args, "train", "test")
    val_set = eval_linear.build_split(args, "val", "test")
    world = utils.get_world_size()
    per_process = max(1, args.batch_size // world)
    utils.print_main(f"k-NN | {args.arch} from {args.pretrained} | {len(train_set)} train / {len(val_set)} val "
                     f"videos | {world} process(es) on {device} | {args.test_clips}x{args.test_crops} views")
    train_f, train_y, _ = extract_features(encoder, train_set, device, per_process, args.num_workers)
    val_f, val_y, _ = extract_features(encoder, val_set, device, per_process, args.num_workers)
    num_classes = eval_linear.num_classes_of(train_set)
    utils.print_main(f"features: train {tuple(train_f.shape)}, val {tuple(val_f.shape)}; "
                     f"skipped {len(train_set) - len(train_f)} train / {len(val_set) - len(val_f)} val videos")
    record = None
    for k in args.nb_knn:
        top1, top5 = knn_accuracy(train_f, train_y, val_f, val_y, k, num_classes, temperature=args.temperature)
        utils.print_main(f"{k}-NN on {args.dataset} val: top-1 {top1:.2f}% | top-5 {top5:.2f}%")
        # One record per k; the run name carries k when several are asked for.
        run_name = args.run_name
        if len(args.nb_knn) > 1:
            args.run_name = f"{run_name}_k{k}"
        record = eval_linear.write_eval_record(args, "knn", "val", top1, top5=top5, k=k,
                                               num_train=len(train_f), num_videos=len(val_f))
        args.run_name = run_name
    utils.cleanup_distributed()
    return record


if __name__ == "__main__":
    utils.run_cli(main, get_args_parser())
