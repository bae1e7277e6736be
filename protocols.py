"""The evaluation protocols of Section 4.2 (PySlowFast's settings where the paper is silent): their
numbers, the flags of every evaluation script, and what an evaluation writes.

    KNN / LINEAR / SEMISUP / FINETUNE_UCF / FINETUNE_SSV2    the paper's settings (batch_size: global)
    *_SYNTHETIC                                             the same recipes at CPU scale (smoke runs)
    add_eval_args / add_finetune_args                       the flags; unset ones take a protocol's values
    prepare(args, paper, synthetic, rules)                  torchrun, defaults, checks -> (flags, device);
                                                            the test crop and the sampling PySlowFast
                                                            derives from other settings
    eval_record / write_eval_record                         one JSON result per run, for reproduce/collect.py
"""
import argparse
import os

import checkpoint
import cli
import data
import distributed
import models
import precision
import records
import trainer

# Section 4.2, k-NN: frozen features, k = 20 (DINO's default). The paper does not give the views; one
# clip x one centre crop (DINO uses one centre crop per image). batch_size: videos per forward.
KNN = dict(batch_size=64, test_clips=1, test_crops=1, num_frames=8, stride=8, crop_size=224, num_workers=8)
# Section 4.2, linear evaluation; silent in the paper, from PySlowFast's linear_k400_Slow_8x8_R50_syn8.yaml:
# weight decay 0 and no dropout.
LINEAR = dict(epochs=100, batch_size=64, lr=1.0, warmup_epochs=8.0, warmup_start_lr=0.0, weight_decay=0.0,
              test_clips=10, test_crops=3, num_frames=8, stride=8, crop_size=224, num_workers=8)
# Section 4.2, semi-supervised: "similar to the linear evaluation, except that the initial learning rate
# is 0.01"; dropout 0.5 is PySlowFast's MODEL.DROPOUT_RATE default (it has no semi-supervised config).
SEMISUP = dict(LINEAR, lr=0.01, dropout=0.5, train_jitter="none")
# Section 4.2 fine-tuning, UCF101 and HMDB51 (lr 0.0025, batch 128, 196 epochs, 10x3 test); dropout and
# jitter from PySlowFast's finetune_ucf_Slow_R50_syn8.yaml.
FINETUNE_UCF = dict(epochs=196, batch_size=128, lr=0.0025, warmup_epochs=0.0, warmup_start_lr=0.0,
                    weight_decay=0.0, test_clips=10, test_crops=3, num_frames=8, stride=8, crop_size=224,
                    num_workers=8, dropout=0.8, train_jitter="pyslowfast")
# Section 4.2 fine-tuning, SSv2 (lr 0.08 -> 0.15 over 3 epochs, weight decay 1e-4, batch 64, 40 epochs,
# 1x1 test); dropout from PySlowFast's finetune_SSv2_Slow_R50_syn8.yaml.
FINETUNE_SSV2 = dict(epochs=40, batch_size=64, lr=0.15, warmup_epochs=3.0, warmup_start_lr=0.08,
                     weight_decay=1e-4, test_clips=1, test_crops=1, num_frames=8, stride=8, crop_size=224,
                     num_workers=8, dropout=0.5, train_jitter="none")

# The same recipes small enough for a 2-core CPU in seconds (the synthetic set of data.make_synthetic_dataset).
_SMALL = dict(test_clips=1, test_crops=1, num_frames=4, stride=8, crop_size=64, num_workers=1)
KNN_SYNTHETIC = dict(KNN, batch_size=8, **_SMALL)
LINEAR_SYNTHETIC = dict(LINEAR, epochs=2, batch_size=8, warmup_epochs=0.0, **_SMALL)
SEMISUP_SYNTHETIC = dict(LINEAR_SYNTHETIC, lr=0.01, dropout=0.5, train_jitter="none")
FINETUNE_SYNTHETIC = dict(FINETUNE_UCF, epochs=2, batch_size=8, **_SMALL)


def finetune_protocol(dataset):
    """The fine-tuning settings of a data set: SSv2's, or UCF101's (HMDB51 and the others)."""
    return FINETUNE_SSV2 if dataset == "ssv2" else FINETUNE_UCF


# ----------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------

def add_eval_args(p, paper_defaults, training=True):
    """The flags of every evaluation script. Those left unset take `paper_defaults` (printed at start),
    or the script's small synthetic defaults with --dataset synthetic. training=False (k-NN) leaves out
    the optimisation flags."""
    def paper(key):
        return f" (paper {paper_defaults[key]})" if key in paper_defaults else ""

    g = p.add_argument_group("backbone")
    g.add_argument("--pretrained", required=True,
                   help="'scratch' (supervised rows of Tables 10-11), a pretrain.py checkpoint, a PySlowFast "
                        "checkpoint (e.g. the public rhoBYOL one of Table 11) or a torchvision-layout 2D "
                        "ResNet state dict (inflated to 3D)")
    g.add_argument("--pretrained_format", default="auto", choices=checkpoint.FORMATS,
                   help="weights format of --pretrained; auto detects it")
    g.add_argument("--arch", default=None, choices=list(models.ENCODERS),
                   help="encoder: read from a pretrain.py checkpoint; needed for other files (slow_r50 for scratch)")
    models.add_inflation_arg(g, "--pretrained")
    checkpoint.add_trust_arg(g)

    g = p.add_argument_group("data")
    data.add_source_args(g, "kinetics", "validation list for kinetics/csv (default: the root's)")
    data.add_bad_video_args(g)
    g.add_argument("--num_frames", type=int, default=None, help="T frames per clip" + paper("num_frames"))
    g.add_argument("--stride", type=int, default=None, help="tau, frame stride" + paper("stride"))
    g.add_argument("--crop_size", type=int, default=None, help="spatial crop" + paper("crop_size"))
    g.add_argument("--test_clips", type=int, default=None, help="clips per test video" + paper("test_clips"))
    g.add_argument("--test_crops", type=int, default=None, help="crops per test clip" + paper("test_crops"))
    g.add_argument("--test_crop_size", type=int, default=None,
                   help="test views: short side resized to this, then crops of this size (PySlowFast "
                        "DATA.TEST_CROP_SIZE 256 in every contrastive_ssl config; default crop_size x 256/224: "
                        "256 at the paper's 224, scaled with the small synthetic crops)")
    g.add_argument("--test_spacing", default="uniform", choices=data.TEST_SPACINGS,
                   help="start of test clip i of K: uniform = delta*i/K (PySlowFast decoder.get_start_end_idx, "
                        "DATA.USE_OFFSET_SAMPLING False: one clip starts at frame 0); offset = i*floor(delta/(K-1)), "
                        "floor(delta/2) for one clip (USE_OFFSET_SAMPLING True: reaches both ends)")
    g.add_argument("--sampling", default=None, choices=data.SAMPLINGS,
                   help="frame sampling of a PySlowFast dataset class: kinetics = T frames at stride tau in a "
                        "window (kinetics.py); ssv2 = one frame per uniform segment of the whole video "
                        "(ssv2.py get_seq_frames). Default: ssv2 for --dataset ssv2, kinetics otherwise")
    g.add_argument("--num_workers", type=int, default=None, help="data loading processes per GPU")
    g.add_argument("--batch_size_per_gpu", type=int, default=None,
                   help="videos per GPU and step (default: the paper's global batch" + (
                       f" {paper_defaults['batch_size']}" if "batch_size" in paper_defaults else "")
                   + " divided over the processes; the global batch is printed)")
    return add_run_args(p, paper_defaults, training)


def add_run_args(p, paper_defaults, training):
    """The optimisation (training=True), record and system flags of add_eval_args."""
    def paper(key):
        return f" (paper {paper_defaults[key]})" if key in paper_defaults else ""

    if training:
        g = p.add_argument_group("optimisation")
        g.add_argument("--epochs", type=int, default=None, help="training epochs" + paper("epochs"))
        g.add_argument("--lr", type=float, default=None, help="base learning rate" + paper("lr"))
        g.add_argument("--warmup_epochs", type=float, default=None,
                       help="linear warm-up epochs" + paper("warmup_epochs"))
        g.add_argument("--warmup_start_lr", type=float, default=None,
                       help="lr at the start of warm-up" + paper("warmup_start_lr"))
        g.add_argument("--weight_decay", type=float, default=None, help="SGD weight decay" + paper("weight_decay"))
        g.add_argument("--bn_weight_decay", type=float, default=0.0,
                       help="weight decay of batch-norm weights and biases (PySlowFast BN.WEIGHT_DECAY 0.0)")
        g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True,
                       help="Nesterov momentum (PySlowFast SOLVER.NESTEROV True; the paper: SGD, momentum 0.9)")
        g.add_argument("--eval_freq", type=int, default=0,
                       help="also test every N epochs (the record keeps the last and the best top-1); "
                            "0: at the end only")
        g.add_argument("--max_iters_per_epoch", type=int, default=0, help="cut epochs short (smoke tests); 0 = full")

    g = p.add_argument_group("record (written into the JSON result)")
    g.add_argument("--results_dir", default="results", help="one JSON record per run goes here")
    g.add_argument("--run_name", default=None, help="record name (default: the output_dir's name)")
    g.add_argument("--method", default=None, help="pretraining method (default: from the checkpoint's args)")
    g.add_argument("--teacher", default=None, help="image teacher (default: from the checkpoint's args)")
    g.add_argument("--pretrain_data", default=None, help="pretraining data (default: from the checkpoint's args)")
    g.add_argument("--pretrain_epochs", type=int, default=None,
                   help="pretraining epochs (default: the checkpoint's epoch)")

    g = p.add_argument_group("system")
    g.add_argument("--output_dir", default=None,
                   help="checkpoints (every epoch; a run started again with the same flags resumes), log, config")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--precision", default="auto", choices=precision.PRECISIONS,
                   help="autocast precision (auto: bf16 on a GPU that has it, else fp32)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--log_every", type=int, default=10, help="iterations between progress lines (no terminal)")
    return p


# Allowed values of the flags every evaluation script has (cli.check_flags), checked before anything
# is written; scripts add their own (e.g. --nb_knn, --fraction).
FLAG_RULES = dict(num_frames=">=1", stride=">=1", crop_size="[32,1024]", test_clips=">=1", test_crops=(1, 3),
                  num_workers=">=0", batch_size_per_gpu=">=1", epochs=">=1", lr=">0", warmup_epochs=">=0",
                  warmup_start_lr=">=0", weight_decay=">=0", bn_weight_decay=">=0", eval_freq=">=0",
                  max_iters_per_epoch=">=0", seed=">=0", log_every=">=1", max_skip_share="[0,1]", pretrain_epochs=">=0",
                  output_dir="folder", results_dir="folder")



def prepare(args, paper, synthetic, rules=None):
    """Join torchrun; the flags with the protocol's values for those left unset (`paper`, or
    `synthetic` with --dataset synthetic), printed; every flag checked (FLAG_RULES and `rules`); the
    protocol's global batch split over the processes; the settings PySlowFast derives from others
    (resolve_protocol); --output_dir and --run_name named after each other. Returns (flags, device)."""
    _, world, _ = distributed.init(args.device)
    defaults = dict(synthetic, data_root=data.SYNTHETIC_ROOT) if args.dataset == "synthetic" else dict(paper)
    global_batch = defaults.pop("batch_size")
    if args.batch_size_per_gpu is None and global_batch % world:
        raise ValueError(f"the default global batch {global_batch} does not divide over {world} processes; "
                         f"pass --batch_size_per_gpu")
    defaults["batch_size_per_gpu"] = global_batch // world
    flags, device = trainer.setup(args, defaults, f"--dataset {args.dataset}", dict(FLAG_RULES, **(rules or {})))
    flags = resolve_protocol(flags)
    output_dir = flags.output_dir or os.path.join("output", flags.run_name or "eval")
    return cli.freeze(flags, output_dir=output_dir,
                      run_name=flags.run_name or os.path.basename(os.path.normpath(output_dir))), device


def resolve_protocol(flags):
    """The PySlowFast settings that follow from other flags (printed like the defaults): the test crop
    (DATA.TEST_CROP_SIZE 256 for TRAIN_CROP_SIZE 224, the same ratio for smaller crops) and the frame
    sampling of the data set (ssv2.py for ssv2, kinetics.py for the others)."""
    flags = cli.freeze(flags, **cli.unset_defaults(flags, dict(
        test_crop_size=int(round(flags.crop_size * 256 / 224)), sampling=data.default_sampling(flags.dataset)),
        "PySlowFast's protocol"))
    cli.check_flags(flags, dict(test_crop_size="[32,2048]"))
    return flags


FINETUNE_JITTERS = ("pyslowfast", "none")


def add_finetune_args(p):
    """Flags of the scripts that train the whole network (finetune.py, semisup.py); unset ones take the
    script's protocol defaults (printed at start)."""
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--dropout", type=float, default=None,
                   help="dropout before the linear head (PySlowFast MODEL.DROPOUT_RATE: 0.8 in "
                        "finetune_ucf_Slow_R50_syn8.yaml, 0.5 in finetune_SSv2 and by default)")
    g.add_argument("--train_jitter", default=None, choices=FINETUNE_JITTERS,
                   help="training colour jitter on the device: pyslowfast = finetune_ucf_Slow_R50_syn8.yaml "
                        "(grayscale p=0.2, then brightness/contrast/saturation 0.4 and hue 0.1 on every clip, "
                        "no blur); none (finetune_SSv2 and the linear protocol)")
    g.add_argument("--no_flip", action="store_true",
                   help="no random horizontal flip in training (always off for ssv2, whose labels name directions)")
    return p


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------

def eval_record(flags, protocol, split, value, data, **extra):
    """The JSON result of an evaluation run: what was evaluated (the backbone's record fields), how,
    the data it saw ({list: data.fingerprint}: list file, sha256, root, videos listed, found, skipped)
    and the top-1 `value`; reproduce/collect.py places it by its "run" name."""
    return dict(run=flags.run_name, protocol=protocol, method=flags.method, teacher=flags.teacher,
                pretrain_data=flags.pretrain_data, pretrain_epochs=flags.pretrain_epochs,
                pretrained=flags.pretrained, arch=flags.arch, dataset=flags.dataset, split=str(split),
                metric="top1", value=float(value), data=data, config=vars(flags), **extra)


def write_eval_record(flags, protocol, split, value, data, **extra):
    """eval_record written to --results_dir (records.write_result)."""
    record = eval_record(flags, protocol, split, value, data, **extra)
    path = records.write_result(flags.results_dir, record)
    if path:
        records.print_main(f"result written to {path}")
    return record


def with_backbone(flags, device=None):
    """(flags, encoder): the encoder of --pretrained (models.load_backbone) and flags whose unset
    record fields (arch, method, teacher, pretrain_data, pretrain_epochs) the weights file fills."""
    encoder, fields = models.load_backbone(flags.pretrained, flags.arch, flags.pretrained_format, flags.inflation,
                                           trust=flags.trust_checkpoint)
    filled = {k: v for k, v in fields.items() if getattr(flags, k) is None}
    return cli.freeze(flags, **filled), (encoder if device is None else encoder.to(device))
