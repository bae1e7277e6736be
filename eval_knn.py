"""Weighted k-nearest-neighbour classification on frozen features (Section 4.2), as in DINO.

    python eval_knn.py --pretrained output/pretrain/checkpoint.pth --dataset synthetic
    torchrun --nproc_per_node=8 eval_knn.py --pretrained runs/iboot/checkpoint.pth \
        --dataset kinetics --data_root /data/k400 --nb_knn 20

Features: the backbone's global average pool (over T, H and W), L2-normalised, of one clip per video
(centre crop) of the training and of the validation set. Each validation feature takes its k nearest
training features by cosine similarity; each neighbour votes for its label with weight
exp(similarity / 0.07) (DINO's temperature); the class with the largest total wins. The paper uses
k = 20 (DINO's default); --nb_knn takes several values (e.g. 10 20 100 200). Top-1 and top-5, both
counted as DINO's knn_classifier (top-5 among the first min(5, k) classes by votes).

The paper does not say how many views per video the k-NN features use; one clip x one centre crop
(DINO uses one centre crop per image) is the default, --test_clips/--test_crops average more. The
views are PySlowFast's test views (DATA.TEST_CROP_SIZE: short side 256, a 256 centre crop; the one
clip starts where PySlowFast's test loader starts it, at frame 0 unless --test_spacing offset).
--dump_features DIR writes the features, labels and video paths, as DINO's eval_knn.py does.
"""
import argparse
import os

import torch

import cli
import data
import distributed
import knn
import protocols
import records

PAPER_DEFAULTS = protocols.KNN
SYNTHETIC_DEFAULTS = protocols.KNN_SYNTHETIC
FLAG_RULES = dict(nb_knn=">=1", temperature=">0", dump_features="folder")


def get_args_parser():
    p = argparse.ArgumentParser("iboot k-NN evaluation (frozen features)", add_help=True,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    protocols.add_eval_args(p, PAPER_DEFAULTS, training=False)
    p.add_argument("--nb_knn", type=int, nargs="+", default=[knn.K],
                   help="k values; the paper reports k = 20 (DINO's default); 10, 100, 200 are DINO's others")
    p.add_argument("--temperature", type=float, default=knn.TEMPERATURE,
                   help="vote weight exp(cos / T) (DINO 0.07)")
    p.add_argument("--dump_features", default=None,
                   help="folder to write trainfeat.pth, testfeat.pth, trainlabels.pth, testlabels.pth and "
                        "trainpaths.txt, testpaths.txt (one video per feature row)")
    return p


def dump_features(folder, sets, features):
    """DINO's file names; the paths follow the rows (undecodable videos have no row)."""
    os.makedirs(folder, exist_ok=True)
    for name, dataset, (feats, labels, indices) in zip(("train", "test"), sets, features):
        torch.save(feats.cpu(), os.path.join(folder, f"{name}feat.pth"))
        torch.save(labels.cpu(), os.path.join(folder, f"{name}labels.pth"))
        with open(os.path.join(folder, f"{name}paths.txt"), "w") as f:
            f.writelines(dataset.videos[i][0] + "\n" for i in indices.tolist())
    records.print_main(f"features, labels and paths written to {folder}")


def main(args):
    flags, device = protocols.prepare(args, PAPER_DEFAULTS, SYNTHETIC_DEFAULTS, FLAG_RULES)
    flags, encoder = protocols.with_backbone(flags, device)
    sets = (data.build_split(flags, "train", "test"), data.build_split(flags, "val", "test"))
    data.check_eval_lists(*sets, flags.allow_unseen_labels)
    records.lock_output_dir(flags.output_dir)
    records.save_config(flags, flags.output_dir, data=data.fingerprints(*sets))
    data.write_missing_videos(flags.output_dir, *sets)
    records.print_main(f"k-NN | {flags.arch} from {flags.pretrained} | {len(sets[0])} train / {len(sets[1])} val "
                       f"videos | {flags.world_size} process(es) on {device} | {flags.precision} | "
                       f"{flags.test_clips}x{flags.test_crops} views")
    skipped = data.SkippedVideos(flags.output_dir, flags.max_skip_share)
    features = [knn.extract_features(encoder, s, device, flags.batch_size_per_gpu, flags.num_workers, flags.precision,
                                     flags.log_every, skipped, f"the {name} set")
                for s, name in zip(sets, ("train", "val"))]
    (train_f, train_y, _), (val_f, val_y, _) = features
    records.print_main(f"features: train {tuple(train_f.shape)}, val {tuple(val_f.shape)}; skipped "
                       f"{len(sets[0]) - len(train_f)} train / {len(sets[1]) - len(val_f)} val videos")
    if flags.dump_features and distributed.is_main():
        dump_features(flags.dump_features, sets, features)
    num_classes = data.num_classes_of(sets[0])
    seen = data.fingerprints(*sets, skipped=[len(s) - len(f) for s, (f, _, _) in zip(sets, features)])
    record = None
    for k in flags.nb_knn:
        top1, top5 = knn.knn_accuracy(train_f, train_y, val_f, val_y, k, num_classes, temperature=flags.temperature)
        views = knn.views_label(k, sets[1])
        records.print_main(f"k-NN top-1 ({views}) on {flags.dataset} val: {top1:.2f}% | top-5 {top5:.2f}%")
        # One record per k; the run name carries k when several are asked for.
        run_name = f"{flags.run_name}_k{k}" if len(flags.nb_knn) > 1 else flags.run_name
        record = protocols.write_eval_record(cli.freeze(flags, run_name=run_name), "knn", "val", top1, top5=top5, k=k,
                                             views=views, num_train=len(train_f), num_videos=len(val_f), data=seen)
    distributed.cleanup()
    return record


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
