"""Check that every video of a list opens and decodes, before paying for GPUs.

    python scan.py --dataset kinetics --data_root /data/k400 --list /data/k400/train.csv \
        --num_workers 16 --output k400_train_bad.txt --clean_list k400_train_clean.csv

Each video is read the way training reads it, at five frames spread over its whole length
(video.undecodable_reason, the definition prepare.py uses too): a file that does not exist, does not
open, or has no decodable frame is bad, and so is an mp4 cut short (it loses its index).
Writes `path<TAB>reason` per bad video to --output and prints the count; with --clean_list, also the
list without them as PySlowFast `path label` lines (use it with --dataset kinetics --train_list).
"""
import argparse
import os

import torch

import cli
import data
import records
import video


class VideoScan(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.paths[i], video.undecodable_reason(self.paths[i])


def get_args_parser():
    p = argparse.ArgumentParser("iboot video scan", add_help=True,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="kinetics", choices=data.DATASETS)
    p.add_argument("--data_root", required=True, help="folder of the videos (and list/split files)")
    p.add_argument("--list", default=None, help="list file for kinetics/csv (default: the root's <split>.csv)")
    p.add_argument("--split", default="train", choices=["train", "val"], help="which list of the data set")
    p.add_argument("--official_split", type=int, default=1, choices=[1, 2, 3], help="ucf101/hmdb51 split")
    p.add_argument("--num_workers", type=int, default=os.cpu_count() or 1, help="decoding processes")
    p.add_argument("--output", required=True, help="bad videos, one `path<TAB>reason` per line")
    p.add_argument("--clean_list", default=None, help="also write the list without the bad videos here")
    p.add_argument("--log_every", type=int, default=100, help="videos between progress lines (no terminal)")
    return p


def main(args):
    cli.check_flags(args, dict(num_workers=">=0", log_every=">=1"))
    videos, _ = data.read_video_list(args.dataset, args.data_root, args.split, args.list, args.official_split)
    bad = {}
    loader = torch.utils.data.DataLoader(VideoScan(list(dict.fromkeys(p for p, _ in videos))), batch_size=8,
                                         num_workers=args.num_workers, collate_fn=list)
    progress = records.Progress(len(loader.dataset), "scan", args.log_every)
    for batch in loader:
        for path, reason in batch:
            if reason is not None:
                bad[path] = reason
            progress.update(bad=len(bad))
    progress.close()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.writelines(f"{p}\t{r}\n" for p, r in bad.items())
    if args.clean_list:
        with open(args.clean_list, "w") as f:
            f.writelines(f"{p}\n" if y is None else f"{p} {y}\n" for p, y in videos if p not in bad)
    print(f"{len(bad)} of {len(videos)} videos are missing or cannot be decoded; listed in {args.output}"
          + (f"; the {len(videos) - len(bad)} others in {args.clean_list}" if args.clean_list else ""))
    return bad


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
