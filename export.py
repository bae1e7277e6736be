"""Export the encoder of a checkpoint: a plain state dict, and a PySlowFast-named checkpoint.

    python export.py --pretrained runs/iboot_clip/checkpoint.pth --output_dir exports/iboot_clip

writes
    encoder.pth              {name: tensor} of models.SlowResNet; back with
                             models.load_pretrained("encoder.pth", arch="slow_r50")
    encoder_pyslowfast.pyth  {"model_state": {"s1.pathway0_stem.conv.weight": ...}, "epoch": ...}: the Slow
                             pathway under PySlowFast's names, for PySlowFast's TRAIN.CHECKPOINT_FILE_PATH
                             (its classification head is not part of it)
The architecture comes from a pretrain.py checkpoint itself, from --arch for other files.
"""
import argparse
import os

import checkpoint
import cli
import models


def get_args_parser():
    p = argparse.ArgumentParser("iboot encoder export", add_help=True,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pretrained", required=True,
                   help="a pretrain.py checkpoint (or a PySlowFast / torchvision / raw file, with --arch)")
    p.add_argument("--arch", default=None, choices=list(models.ENCODERS),
                   help="encoder of a file that does not record it")
    models.add_inflation_arg(p, "--pretrained")
    p.add_argument("--output_dir", required=True, help="encoder.pth and encoder_pyslowfast.pyth go here")
    return p


def main(args):
    if not os.path.isfile(args.pretrained):
        raise FileNotFoundError(f"--pretrained: no such file: {args.pretrained}")
    obj = checkpoint.load(args.pretrained)
    encoder = models.load_pretrained(obj, arch=args.arch, inflate_mode=args.inflation)
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    plain = os.path.join(args.output_dir, "encoder.pth")
    pyslowfast = os.path.join(args.output_dir, "encoder_pyslowfast.pyth")
    checkpoint.save(state, plain)
    epoch = obj.get("epoch", 0) if isinstance(obj, dict) else 0
    checkpoint.save(dict(model_state=models.pyslowfast_state_dict(state), epoch=epoch), pyslowfast)
    arch = obj.get("encoder_name") or args.arch
    print(f"{arch} encoder of {args.pretrained} ({len(state)} tensors) written to {plain} and {pyslowfast}")
    return plain, pyslowfast


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
