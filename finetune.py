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

import classifier
import cli
import distributed
import protocols
import records

OFFICIAL_SPLITS = ("ucf101", "hmdb51")
FLAG_RULES = dict(dropout="[0,1)")


def get_args_parser():
    p = argparse.ArgumentParser("iboot fine-tuning (UCF101, HMDB51, SSv2)", add_help=True,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    protocols.add_eval_args(p, protocols.FINETUNE_UCF)
    p.set_defaults(dataset="ucf101")
    p.add_argument("--split", default="1", choices=["1", "2", "3", "all"],
                   help="official train/test split of UCF101/HMDB51; 'all' averages the three (Table 10)")
    return protocols.add_finetune_args(p)


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
    flags, device = protocols.prepare(args, protocols.finetune_protocol(args.dataset), protocols.FINETUNE_SYNTHETIC,
                                      FLAG_RULES)
    flags, backbone = protocols.with_backbone(flags)
    per_split = {}
    for split in splits:
        out = flags.output_dir if len(splits) == 1 else os.path.join(flags.output_dir, f"split{split}")
        metrics = per_split[split] = classifier.finetune(flags, device, backbone, split, out)
        records.print_main(f"fine-tuning on {flags.dataset} split {split} ({flags.test_clips}x{flags.test_crops} "
                           f"views, {metrics['num_videos']} videos): top-1 {metrics['top1']:.2f}% | "
                           f"top-5 {metrics['top5']:.2f}%")
    top1 = sum(m["top1"] for m in per_split.values()) / len(per_split)
    top5 = sum(m["top5"] for m in per_split.values()) / len(per_split)
    if len(splits) > 1:
        records.print_main(f"fine-tuning on {flags.dataset}, mean of splits {splits}: top-1 {top1:.2f}% | "
                           f"top-5 {top5:.2f}%")
    seen = {(k if len(per_split) == 1 else f"split{s} {k}"): v
            for s, m in per_split.items() for k, v in m["data"].items()}
    record = protocols.write_eval_record(
        flags, "finetune", flags.split, top1, top5=top5, num_frames=flags.num_frames, data=seen,
        views=f"{flags.test_clips}x{flags.test_crops}",
        per_split={str(s): {k: m[k] for k in ("top1", "top5", "best_top1", "best_epoch", "num_videos")}
                   for s, m in per_split.items()})
    distributed.cleanup()
    return record


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
