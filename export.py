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


def safetensors_checkpoint(state, fields):
    """encoder.safetensors' content: the tensors under "encoder", the architecture, and what the source
    says of its pretraining (models.load_weights_file's record fields) as a pretrain.py checkpoint says it,
    so that models.pretraining_record reads the same fields from the export as from its source."""
    return dict(encoder=state, encoder_name=fields["arch"], epoch=fields["pretrain_epochs"],
                args=dict(method=fields["method"], teacher=fields["teacher"], dataset=fields["pretrain_data"],
                          epochs=fields["pretrain_epochs"]))


def main(args):
    encoder, fields = models.load_weights_file(args.pretrained, arch=args.arch, inflation=args.inflation,
                                               trust=args.trust_checkpoint)
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    plain = os.path.join(args.output_dir, "encoder.pth")
    safe = os.path.join(args.output_dir, "encoder.safetensors")
    pyslowfast = os.path.join(args.output_dir, "encoder_pyslowfast.pyth")
    checkpoint.save(state, plain)
    checkpoint.save_safetensors(safetensors_checkpoint(state, fields), safe)
    checkpoint.save(dict(model_state=models.pyslowfast_state_dict(state), epoch=fields["pretrain_epochs"]), pyslowfast)
    print(f"{fields['arch']} encoder of {args.pretrained} ({len(state)} tensors) written to {plain}, {safe} and "
          f"{pyslowfast}")
    return plain, pyslowfast


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser())
