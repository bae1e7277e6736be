"""Run pretrain.main under torchrun and save each rank's trainable weights (tests/test_pretrain.py)."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pretrain  # noqa: E402

if __name__ == "__main__":
    args = pretrain.get_args_parser().parse_args()
    objective = pretrain.main(args)
    rank = int(os.environ["RANK"])
    weights = {k: v for k, v in objective.named_parameters() if v.requires_grad}
    torch.save({k: v.detach().clone() for k, v in weights.items()},
               os.path.join(args.output_dir, f"rank{rank}_weights.pth"))
