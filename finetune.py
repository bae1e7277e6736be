"""Fine-tuning for action classification on UCF101, HMDB51 and SSv2 (Section 4.2).

    python finetune.py --pretrained output/pretrain/checkpoint.pth --dataset synthetic
    torchrun --nproc_per_node=8 finetune.py --pretrained runs/iboot/checkpoint.pth \
        --dataset ucf101 --data_root /data/ucf101 --split all

The whole network (backbone + linear head) is trained; the protocol follows the paper, and where it
is silent PySlowFast's configs/contrastive_ssl/ (README, "Protocols"):
- UCF101, HMDB51: SGD (momentum 0.9), lr 0.0025, batch 128, 196 epochs; test 10 clips x 3 crops,
  softmax averaged over the 30 views. --split 1 (ablations), 2, 3, or "all": the three official
  splits one after the other, each from the same pretrained weights, and their top-1 averaged
  (Table 10). Silent in the paper, from finetune_ucf_Slow_R50_syn8.yaml: cosine decay from the start
  (WARMUP_EPOCHS 0), weight decay 0, dropout 0.8, colour jitter in training (grayscale p=0.2, then
  brightness/contrast/saturation 0.4, hue 0.1), synchronised batch norm.
- SSv2: SGD (momentum 0.9), weight decay 1e-4, lr from 0.08 linearly up to 0.15 over 3 warm-up
  epochs then cosine, batch 64, 40 epochs; test 1 clip x 1 crop (the paper follows rhoBYOL; pass
  --test_crops 3 for its "3 v" rows: the test frames of SSv2 are fixed, so its views are crops).
  Frames as PySlowFast's ssv2.py: one per uniform segment of the whole video. No horizontal flip: SSv2
  labels name directions ("pushing something from left to right"). Dropout 0.5, no colour jitter
  (finetune_SSv2_Slow_R50_syn8.yaml).
- Test views: short side 256 and 256x256 crops (DATA.TEST_CROP_SIZE) for the 224 training crops.
- Frames per clip: --num_frames 8 (default) or 32 (the paper's comparison with BraVe).
"""
import argparse
import os

import engine
import utils

# Section 4.2 settings per data set (UCF101 and HMDB51 share theirs); batch_size is the global batch.
# dropout and train_jitter are PySlowFast's (finetune_ucf_Slow_R50_syn8.yaml, finetune_SSv2_Slow_R50_syn8.yaml).
PAPER_DEFAULTS = {
    "ucf": dict(epochs=196, batch_size=128, lr=0.0025, warmup_epochs=0.0, warmup_start_lr=0.0,
                weight_decay=0.0, test_clips=10, test_crops=3, num_frames=8, stride=8, crop_size=224,
                num_workers=8, dropout=0.8, train_jitter="pyslowfast"),
    "ssv2": dict(epochs=40, batch_size=64, lr=0.15, warmup_epochs=3.0, warmup_start_lr=0.08,
                 weight_decay=1e-4, test_clips=1, test_crops=1, num_frames=8, stride=8, crop_size=224,
                 num_workers=8, dropout=0.5, train_jitter="none"),
}
# The UCF101 recipe at CPU scale.
SYNTHETIC_DEFAULTS = dict(epochs=2, batch_size=8, lr=0.0025, warmup_epochs=0.0, warmup_start_lr=0.0,
                          weight_decay=0.0, test_clips=1, test_crops=1, num_frames=4, stride=8, crop_size=64,
                          num_workers=1, dropout=0.8, train_jitter="pyslowfast")
OFFICIAL_SPLITS = ("ucf101", "hmdb51")
FLAG_RULES = dict(dropout="[0,1)")


def paper_defaults(dataset):
    return PAPER_DEFAULTS["ssv2" if dataset == "ssv2" else "ucf"]


def get_args_parser():
    p = argparse.ArgumentParser("iboot fine-tuning (UCF101, HMDB51, SSv2)", add_help=True,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    engine.add_eval_args(p, PAPER_DEFAULTS["ucf"])
    p.set_defaults(dataset="ucf101")
    p.add_argument("--split", default="1", choices=["1", "2", "3", "all"],
                   help="official train/test split of UCF101/HMDB51; 'all' averages the three (Table 10)")
    return engine.add_finetune_args(p)


def splits_of(args):
    if args.split == "all":
        if args.dataset not in OFFICIAL_SPLITS:
            raise ValueError(f"--split all needs a data set with official splits {OFFICIAL_SPLITS}, "
                             f"not --dataset {args.dataset}")
        return [1, 2, 3]
    if args.split != "1" and args.dataset not in OFFICIAL_SPLITS:
        raise ValueError(f"--split {args.split}: --dataset {args.dataset} has no official splits; use --split 1")
    return [int(args.split)]


def main(args):
    splits = splits_of(args)
    device = engine.prepare_eval(args, paper_defaults(args.dataset), SYNTHETIC_DEFAULTS, FLAG_RULES)
    per_split = {}
    for split in splits:
        out = args.output_dir if len(splits) == 1 else os.path.join(args.output_dir, f"split{split}")
        metrics = per_split[split] = engine.finetune(args, device, split, out)
        utils.print_main(f"fine-tuning on {args.dataset} split {split} ({args.test_clips}x{args.test_crops} "
                         f"views, {metrics['num_videos']} videos): top-1 {metrics['top1']:.2f}% | "
                         f"top-5 {metrics['top5']:.2f}%")
    top1 = sum(m["top1"] for m in per_split.values()) / len(per_split)
    top5 = sum(m["top5"] for m in per_split.values()) / len(per_split)
    if len(splits) > 1:
        utils.print_main(f"fine-tuning on {args.dataset}, mean of splits {splits}: top-1 {top1:.2f}% | "
                         f"top-5 {top5:.2f}%")
    record = engine.write_eval_record(
        args, "finetune", args.split, top1, top5=top5, num_frames=args.num_frames,
        views=f"{args.test_clips}x{args.test_crops}",
        per_split={str(s): {k: m[k] for k in ("top1", "top5", "best_top1", "best_epoch", "num_videos")}
                   for s, m in per_split.items()})
    utils.cleanup_distributed()
    return record


if __name__ == "__main__":
    utils.run_cli(main, get_args_parser())
