"""Linear evaluation on frozen features (Section 4.2).

    python eval_linear.py --pretrained output/pretrain/checkpoint.pth --dataset synthetic
    torchrun --nproc_per_node=8 eval_linear.py --pretrained runs/iboot/checkpoint.pth \
        --dataset kinetics --data_root /data/k400 --run_name iboot_clip__linear

The paper's protocol: a linear classifier on the frozen backbone (eval mode, so the batch-norm
statistics stay frozen too), trained on K400-train with SGD (momentum 0.9), lr from 0 linearly up to
1.0 over 8 warm-up epochs then cosine, batch 64, 100 epochs; tested on K400-val with 10 clips x 3
crops per video, softmax averaged over the 30 views; top-1 (and top-5) reported. Silent in the paper,
from PySlowFast's linear_k400_Slow_8x8_R50_syn8.yaml: weight decay 0, no dropout, training crops as in
pretraining without colour jitter, test views of 256 (DATA.TEST_CROP_SIZE), Nesterov momentum.
"""
import argparse

import torch

import classifier
import cli
import data
import distributed
import protocols
import records
import rng

PAPER_DEFAULTS = protocols.LINEAR
SYNTHETIC_DEFAULTS = protocols.LINEAR_SYNTHETIC


def get_args_parser():
    p = argparse.ArgumentParser("iboot linear evaluation (frozen backbone)", add_help=True,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return protocols.add_eval_args(p, PAPER_DEFAULTS)


def main(args):
    flags, device = protocols.prepare(args, PAPER_DEFAULTS, SYNTHETIC_DEFAULTS)
    flags, encoder = protocols.with_backbone(flags)
    train_set = data.build_split(flags, "train", "train")
    test_set = data.build_split(flags, "val", "test")
    data.check_eval_lists(train_set, test_set, flags.allow_unseen_labels)
    torch.manual_seed(rng.derive_seed(flags.seed, "head"))  # the same classifier initialisation on every process
    model = classifier.VideoClassifier(encoder, data.num_classes_of(train_set), freeze_backbone=True,
                                       test_window=classifier.head_window(flags))
    records.print_main(f"linear probe | {flags.arch} from {flags.pretrained} | {len(train_set)} train / "
                       f"{len(test_set)} test videos | {flags.world_size} process(es) on {device} | batch "
                       f"{flags.batch_size_per_gpu} per GPU, {flags.global_batch} global | lr {flags.lr} | "
                       f"{flags.epochs} epochs | {flags.precision} | test {flags.test_clips}x{flags.test_crops} views")
    metrics = classifier.train_classifier(model, train_set, test_set, flags, device)
    records.print_main(f"linear evaluation on {flags.dataset} val ({flags.test_clips}x{flags.test_crops} views, "
                       f"{metrics['num_videos']} videos): top-1 {metrics['top1']:.2f}% | top-5 {metrics['top5']:.2f}%")
    record = protocols.write_eval_record(flags, "linear", "val", metrics["top1"], top5=metrics["top5"],
                                         best_top1=metrics["best_top1"], best_epoch=metrics["best_epoch"],
                                         num_videos=metrics["num_videos"], skipped_videos=metrics["skipped"],
                                         data=metrics["data"])
    distributed.cleanup()
    return record


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
