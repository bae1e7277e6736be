"""Export the encoder of a checkpoint: a plain state dict, a safetensors file, and a PySlowFast-named
checkpoint.

    python export.py --pretrained runs/iboot_clip/checkpoint.pth --output_dir exports/iboot_clip

writes
    encoder.pth              {name: tensor} of models.SlowResNet; back with
                             models.load_pretrained("encoder.pth", arch="slow_r50")
    encoder.safetensors      the same tensors as safetensors (no pickle at all), the architecture and
                             what the source says of its pretraining in its metadata; back with
                             models.load_pretrained("encoder.safetensors"), or --pretrained of any evaluation
    encoder_pyslowfast.pyth  {"model_state": {"s1.pathway0_stem.conv.weight": ...}, "epoch": ...}: the Slow
                             pathway under PySlowFast's names, for PySlowFast's TRAIN.CHECKPOINT_FILE_PATH
                             (its classification head is not part of it)
The architecture comes from a pretrain.py checkpoint itself, from --arch for other files. The input is
read without running code from it (checkpoint.load); --trust_checkpoint loads one that needs full
unpickling (e.g. a checkpoint of an earlier iboot version), and its exports load without it.
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
    checkpoint.add_trust_arg(p)
    p.add_argument("--output_dir", required=True,
                   help="encoder.pth, encoder.safetensors and encoder_pyslowfast.pyth go here")
    return p


def safetensors_checkpoint(state, arch, obj):
    """encoder.safetensors' content: the tensors under "encoder", the architecture, and what `obj` (the
    source) says of its pretraining as a pretrain.py checkpoint says it, so that
    models.pretraining_record reads the same fields from the export as from its source."""
    record = models.pretraining_record(obj)
    return dict(encoder=state, encoder_name=arch, epoch=record["pretrain_epochs"],
                args=dict(method=record["method"], teacher=record["teacher"], dataset=record["pretrain_data"],
                          epochs=record["pretrain_epochs"]))


def main(args):
    obj = checkpoint.load(args.pretrained, trust=args.trust_checkpoint, flag="--pretrained")
    encoder = models.load_pretrained(obj, arch=args.arch, inflate_mode=args.inflation)
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    arch = (obj.get("encoder_name") if isinstance(obj, dict) else None) or args.arch
    plain = os.path.join(args.output_dir, "encoder.pth")
    safe = os.path.join(args.output_dir, "encoder.safetensors")
    pyslowfast = os.path.join(args.output_dir, "encoder_pyslowfast.pyth")
    checkpoint.save(state, plain)
    checkpoint.save_safetensors(safetensors_checkpoint(state, arch, obj), safe)
    epoch = obj.get("epoch", 0) if isinstance(obj, dict) else 0
    checkpoint.save(dict(model_state=models.pyslowfast_state_dict(state), epoch=epoch), pyslowfast)
    print(f"{arch} encoder of {args.pretrained} ({len(state)} tensors) written to {plain}, {safe} and {pyslowfast}")
    return plain, pyslowfast


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
