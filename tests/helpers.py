"""What several test files share: the tiny evaluation flags, the small synthetic set, a pretrain.py-style
checkpoint, running a script's main in-process, and the processes of a run (free ports, children)."""
import os
import socket

import torch

import data
import models

# Evaluation flags that make every script run in seconds on the small set.
EVAL_TINY = ["--dataset", "synthetic", "--crop_size", "32", "--num_frames", "2", "--stride", "4",
             "--batch_size_per_gpu", "4", "--num_workers", "0", "--device", "cpu", "--test_clips", "1",
             "--test_crops", "1"]

# pretrain.py flags for one short epoch on the small set (random-init teacher: offline).
PRETRAIN_TINY = ["--arch", "slow_tiny", "--crop_size", "32", "--num_frames", "2", "--stride", "4",
                 "--batch_size_per_gpu", "2", "--num_workers", "0", "--epochs", "1", "--max_iters_per_epoch", "1",
                 "--warmup_epochs", "0", "--knn_eval", "no", "--teacher_weights", "random"]


def make_small_set(folder):
    """3 classes, 6 training and 3 validation videos each, 1 s at 30 fps."""
    return data.make_synthetic_dataset(str(folder), seed=0, num_classes=3, videos_per_class=6,
                                       val_videos_per_class=3, num_frames=30)


def save_tiny_checkpoint(path, seed=0, epoch=3, teacher="efficientnet_lite0"):
    """A pretrain.py checkpoint of a randomly initialised slow_tiny."""
    torch.manual_seed(seed)
    torch.save({"encoder": models.build_encoder("slow_tiny").state_dict(), "encoder_name": "slow_tiny",
                "epoch": epoch, "args": {"method": "iboot", "teacher": teacher, "dataset": "synthetic",
                                         "epochs": epoch}}, str(path))
    return path


def run_script(module, argv):
    return module.main(module.get_args_parser().parse_args(argv))


def free_port():
    """A TCP port nobody listens on now (for torchrun's rendezvous; tests may run side by side)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid):
    """The child processes of `pid` (Linux: /proc/PID/task/TID/children)."""
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(k) for k in f.read().split()]
        except OSError:
            pass
    return kids
