"""cli.py: every bad flag value of every script is one line naming it, before anything is written;
the flags a script reads are read-only, and main() leaves the parsed args as they were."""
import argparse
import copy

import pytest

import cli
import eval_knn
import eval_linear
import finetune
import pretrain
import semisup
from helpers import EVAL_TINY, PRETRAIN_TINY, run_script

PRETRAIN_BAD = [("--epochs", "0"), ("--epochs", "-1"), ("--batch_size_per_gpu", "0"), ("--batch_size_per_gpu", "-2"),
                ("--base_lr", "0"), ("--base_lr", "-0.1"), ("--base_lr", "nan"), ("--base_lr", "inf"),
                ("--warmup_epochs", "-1"), ("--warmup_epochs", "1000"), ("--weight_decay", "-1e-06"),
                ("--momentum", "2.0"), ("--momentum", "-0.5"), ("--clip_grad", "-1.0"), ("--saveckp_freq", "-1"),
                ("--log_every", "0"), ("--max_iters_per_epoch", "-1"), ("--num_frames", "0"), ("--stride", "0"),
                ("--crop_size", "0"), ("--crop_size", "16"), ("--crop_size", "100000"), ("--num_workers", "-1"),
                ("--seed", "-1"), ("--num_clips", "0"), ("--num_clips", "4"), ("--split", "4"),
                ("--max_skip_share", "1.5"), ("--max_skip_share", "-0.1"), ("--num_frames", "-1"), ("--stride", "-1"),
                ("--weight_decay", "nan"), ("--momentum", "nan"), ("--momentum", "1.5"), ("--clip_grad", "nan"),
                ("--warmup_epochs", "nan"), ("--max_skip_share", "nan"), ("--base_lr", "-inf")]
KNN_BAD = [("--nb_knn", "0"), ("--nb_knn", "-5"), ("--temperature", "0.0"), ("--temperature", "-0.07"),
           ("--temperature", "nan"), ("--batch_size_per_gpu", "0"), ("--num_frames", "0"), ("--stride", "0"),
           ("--crop_size", "0"), ("--crop_size", "5000"), ("--test_clips", "0"), ("--test_crops", "2"),
           ("--test_crops", "0"), ("--num_workers", "-1"), ("--seed", "-1"), ("--log_every", "0"),
           ("--max_skip_share", "2.0"), ("--pretrain_epochs", "-1"), ("--test_clips", "-1"), ("--crop_size", "16"),
           ("--stride", "-1"), ("--num_frames", "-1"), ("--temperature", "inf"), ("--test_crop_size", "0"),
           ("--test_crop_size", "100000")]
TRAINING_BAD = [(finetune, "--dropout", "1.0"), (finetune, "--dropout", "-0.1"), (finetune, "--lr", "0.0"),
                (finetune, "--epochs", "0"), (finetune, "--eval_freq", "-1"), (finetune, "--warmup_epochs", "500.0"),
                (finetune, "--weight_decay", "-1.0"), (finetune, "--max_iters_per_epoch", "-3"),
                (semisup, "--fraction", "0.0"), (semisup, "--fraction", "150.0"), (eval_linear, "--lr", "-1.0"),
                (eval_linear, "--warmup_start_lr", "-0.5"), (finetune, "--lr", "nan"), (finetune, "--lr", "inf"),
                (finetune, "--dropout", "nan"), (finetune, "--epochs", "-1"), (finetune, "--weight_decay", "nan"),
                (finetune, "--bn_weight_decay", "-1.0"), (finetune, "--warmup_start_lr", "nan"),
                (semisup, "--fraction", "-1.0"), (semisup, "--fraction", "nan"), (semisup, "--epochs", "0"),
                (semisup, "--lr", "0.0"), (eval_linear, "--epochs", "0"), (eval_linear, "--lr", "inf"),
                (eval_linear, "--eval_freq", "-2"), (eval_linear, "--batch_size_per_gpu", "0")]
CASES = ([(pretrain, f, v) for f, v in PRETRAIN_BAD] + [(eval_knn, f, v) for f, v in KNN_BAD] + TRAINING_BAD)


@pytest.mark.parametrize("module,flag,value", CASES, ids=[f"{m.__name__}{f}={v}" for m, f, v in CASES])
def test_every_bad_flag_value_is_one_line_naming_it_before_anything_is_written(module, flag, value, small_root, tmp_path):
    out = tmp_path / "out"
    bad = [f"{flag}={value}"] if flag != "--nb_knn" else [flag, "20", value]  # one bad k among good ones
    if module is pretrain:
        argv = PRETRAIN_TINY + ["--data_root", str(small_root / "data"), "--output_dir", str(out)] + bad
    else:
        argv = ["--pretrained", "scratch", "--output_dir", str(out)] + EVAL_TINY + ["--data_root", str(small_root / "data")] + bad
    with pytest.raises(ValueError) as e:
        run_script(module, argv)
    message = str(e.value)
    assert message.startswith(f"{flag} ") and value.strip("-.0") in message and "\n" not in message, message
    assert not out.exists()


def test_flags_are_read_only_and_copies_carry_new_values():
    flags = cli.freeze(argparse.Namespace(epochs=3, lr=0.1))
    with pytest.raises(AttributeError, match="--epochs"):
        flags.epochs = 4
    more = cli.freeze(flags, epochs=4)
    assert (flags.epochs, more.epochs, more.lr) == (3, 4, 0.1)


@pytest.mark.slow
@pytest.mark.parametrize("module", [pretrain, eval_knn, eval_linear, finetune, semisup])
def test_main_leaves_the_parsed_args_as_they_were(module, small_root, tmp_path):
    if module is pretrain:
        argv = PRETRAIN_TINY + ["--data_root", str(small_root / "data"), "--output_dir", str(tmp_path / "out")]
    else:
        argv = ["--pretrained", str(small_root / "A.pth"), "--output_dir", str(tmp_path / "out"), "--results_dir",
                str(tmp_path / "res")] + EVAL_TINY + ["--data_root", str(small_root / "data")]
        argv += ["--nb_knn", "3"] if module is eval_knn else ["--epochs", "1", "--max_iters_per_epoch", "1"]
        argv += ["--fraction", "50", "--subset_dir", str(tmp_path / "splits")] if module is semisup else []
    args = module.get_args_parser().parse_args(argv)
    before = copy.deepcopy(vars(args))
    module.main(args)
    assert vars(args) == before
