"""Semi-supervised classification on Kinetics-400 with 1% or 10% of the labels (Section 4.2, Table 11).

    python semisup.py --pretrained output/pretrain/checkpoint.pth --dataset synthetic --fraction 50
    torchrun --nproc_per_node=8 semisup.py --pretrained runs/iboot/checkpoint.pth \
        --dataset kinetics --data_root /data/k400 --fraction 1

Following CVRL [48], --fraction percent of the training videos of EACH class are drawn (at least one
per class) with --subset_seed; the drawn list is written to --subset_dir and read back by later runs,
so every method is fine-tuned on the same videos and a run can be repeated.

Training: "the settings are similar to the linear evaluation, except that the initial learning rate
is 0.01". We read this as fine-tuning the whole network (a semi-supervised protocol trains the
backbone, as CVRL and rhoBYOL do) with the linear-evaluation schedule: SGD (momentum 0.9), lr from 0
up to 0.01 over 8 warm-up epochs then cosine, batch 64, 100 epochs; like the linear protocol no colour
jitter; dropout 0.5 before the linear head (PySlowFast's MODEL.DROPOUT_RATE default: it has no
semi-supervised config); synchronised batch norm on GPUs. Tested on the whole K400 validation set,
10 clips x 3 crops of 256 (PySlowFast DATA.TEST_CROP_SIZE).
"""
import argparse
import json
import os
from collections import defaultdict

import numpy as np

import classifier
import cli
import data
import distributed
import protocols
import records

PAPER_DEFAULTS = protocols.SEMISUP
SYNTHETIC_DEFAULTS = protocols.SEMISUP_SYNTHETIC
FLAG_RULES = dict(dropout="[0,1)", fraction="(0,100]", subset_seed=">=0", subset_dir="folder")


def sample_label_subset(labels, percent, seed):
    """Sorted indices of `percent`% of the items of each class (rounded, at least one per class)."""
    if not 0 < percent <= 100:
        raise ValueError(f"--fraction must be a percentage in (0, 100], got {percent}")
    by_class = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[int(label)].append(index)
    rng = np.random.RandomState(seed)
    chosen = []
    for label in sorted(by_class):
        members = by_class[label]
        n = max(1, int(round(len(members) * percent / 100.0)))
        chosen.extend(int(i) for i in rng.choice(members, size=n, replace=False))
    return sorted(chosen)


def load_or_draw_subset(path, labels, percent, seed, video_names=None):
    """The subset written at `path`, or a new one drawn and written there (atomically).

    A file drawn for another training set (another size, or other videos at its indices), fraction or
    seed is refused, since reusing it silently would change the experiment."""
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        expected = dict(fraction=percent, seed=seed, num_train_videos=len(labels))
        for key, value in expected.items():
            if saved.get(key) != value:
                raise ValueError(f"subset file {path} has {key}={saved.get(key)}, this run needs {value}; "
                                 f"use another --subset_dir or delete the file")
        if video_names is not None and "videos" in saved:  # the same size is not the same list
            ours = [video_names[i] for i in saved["indices"]]
            other = next((k for k, (a, b) in enumerate(zip(saved["videos"], ours)) if a != b), None)
            if other is not None:
                raise ValueError(f"subset file {path} was drawn from another training list (its video "
                                 f"{saved['videos'][other]} is {ours[other]} in this one); use another --subset_dir "
                                 f"or delete the file")
        return saved["indices"]
    indices = sample_label_subset(labels, percent, seed)
    record = dict(fraction=percent, seed=seed, num_train_videos=len(labels), num_selected=len(indices),
                  indices=indices)
    if video_names is not None:
        record["videos"] = [video_names[i] for i in indices]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)
    return indices


def get_args_parser():
    p = argparse.ArgumentParser("iboot semi-supervised K400 (1% / 10% labels)", add_help=True,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    protocols.add_eval_args(p, PAPER_DEFAULTS)
    p.add_argument("--fraction", type=float, default=1.0, help="percent of the training videos per class (1 or 10)")
    p.add_argument("--subset_seed", type=int, default=0, help="seed of the drawn subset")
    p.add_argument("--subset_dir", default="splits", help="where the drawn subsets are written and read back")
    return protocols.add_finetune_args(p)


def subset_path(args):
    root = os.path.basename(os.path.normpath(args.data_root)) or "data"
    return os.path.join(args.subset_dir, f"{args.dataset}_{root}_{args.fraction:g}pct_seed{args.subset_seed}.json")


def main(args):
    flags, device = protocols.prepare(args, PAPER_DEFAULTS, SYNTHETIC_DEFAULTS, FLAG_RULES)
    full_train = data.build_split(flags, "train", "train")
    labels, names = data.labels_of(full_train), [path for path, _ in full_train.videos]
    path = subset_path(flags)
    if distributed.is_main():
        load_or_draw_subset(path, labels, flags.fraction, flags.subset_seed, names)
    distributed.barrier()
    indices = load_or_draw_subset(path, labels, flags.fraction, flags.subset_seed)
    records.print_main(f"semi-supervised: {len(indices)} of {len(full_train)} training videos "
                       f"({flags.fraction:g}% per class, seed {flags.subset_seed}) listed in {path}")
    flags, backbone = protocols.with_backbone(flags)
    metrics = classifier.finetune(flags, device, backbone, 1, flags.output_dir, train_subset=indices)
    records.print_main(f"semi-supervised {flags.fraction:g}% on {flags.dataset} val ({flags.test_clips}x"
                       f"{flags.test_crops} views, {metrics['num_videos']} videos): top-1 {metrics['top1']:.2f}% | "
                       f"top-5 {metrics['top5']:.2f}%")
    record = protocols.write_eval_record(flags, "semisup", "val", metrics["top1"], top5=metrics["top5"],
                                         best_top1=metrics["best_top1"], best_epoch=metrics["best_epoch"],
                                         label_fraction=flags.fraction, num_labelled=len(indices),
                                         subset_file=path, num_videos=metrics["num_videos"], data=metrics["data"])
    distributed.cleanup()
    return record


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
