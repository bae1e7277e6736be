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

import engine
import utils

PAPER_DEFAULTS = engine.LINEAR_PROTOCOL  # Section 4.2 (semisup.py starts from it too)
SYNTHETIC_DEFAULTS = engine.LINEAR_PROTOCOL_SYNTHETIC


def get_args_parser():
    p = argparse.ArgumentParser("iboot linear evaluation (frozen backbone)", add_help=True,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return engine.add_eval_args(p, PAPER_DEFAULTS)


def main(args):
    device = engine.prepare_eval(args, PAPER_DEFAULTS, SYNTHETIC_DEFAULTS)
    encoder = engine.load_backbone(args)
    train_set = engine.build_split(args, "train", "train")
    test_set = engine.build_split(args, "val", "test")
    torch.manual_seed(args.seed)  # the same classifier initialisation on every process
    model = engine.VideoClassifier(encoder, engine.num_classes_of(train_set), freeze_backbone=True,
                                   test_window=engine.head_window(args))
    utils.print_main(f"linear probe | {args.arch} from {args.pretrained} | {len(train_set)} train / "
                     f"{len(test_set)} test videos | {args.world_size} process(es) on {device} | batch "
                     f"{args.batch_size_per_gpu} per GPU, {args.global_batch} global | lr {args.lr} | "
                     f"{args.epochs} epochs | {args.precision} | test {args.test_clips}x{args.test_crops} views")
    metrics = engine.train_classifier(model, train_set, test_set, args, device)
    utils.print_main(f"linear evaluation on {args.dataset} val ({args.test_clips}x{args.test_crops} views, "
                     f"{metrics['num_videos']} videos): top-1 {metrics['top1']:.2f}% | top-5 {metrics['top5']:.2f}%")
    record = engine.write_eval_record(args, "linear", "val", metrics["top1"], top5=metrics["top5"],
                                      best_top1=metrics["best_top1"], best_epoch=metrics["best_epoch"],
                                      num_videos=metrics["num_videos"], skipped_videos=metrics["skipped"])
    utils.cleanup_distributed()
    return record


if __name__ == "__main__":
    utils.run_cli(main, get_args_parser())
