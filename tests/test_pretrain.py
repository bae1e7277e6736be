"""pretrain.py: every pretraining variant of Tables 1-9 trains a few steps; the recipes and the init
follow the flags; DDP on two CPU processes; bf16 on the CPU; a diverging run stops with one line.
(Resume after signals: test_trainer.py, the loop pretraining shares with the classifiers.)

All runs use tiny synthetic clips and random-init teachers (offline).
"""
import os
import subprocess
import sys

import pytest
import torch


import augment
import cli
import data
import iboot
import models
import pretrain
from helpers import PRETRAIN_TINY, free_port, run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--arch", "slow_tiny", "--crop_size", "32", "--num_frames", "2", "--stride", "4",
        "--batch_size_per_gpu", "2", "--num_workers", "0", "--epochs", "1", "--max_iters_per_epoch", "2",
        "--warmup_epochs", "0", "--knn_eval", "no", "--log_every", "1"]


@pytest.fixture(scope="module")
def synthetic_root(small_root):
    return str(small_root / "data")


def run_main(argv):
    args = pretrain.get_args_parser().parse_args(argv)
    return pretrain.main(args)


def read_log(output_dir):
    import json
    with open(os.path.join(output_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


# One row per pretraining variant of the paper's Tables 1-9 (Table 6 varies batch and epochs only).
VARIANTS = {
    "t1_rhobyol": ["--method", "rhobyol"],
    "t1_swav": ["--teacher", "swav_r50w2"],
    "t1_dino": ["--teacher", "dino_vit_b16"],
    "t1_clip": ["--teacher", "clip_vit_b16"],
    "t1_deit": ["--teacher", "deit_b16"],
    "t2_dino_clip": ["--teacher", "dino_vit_b16+clip_vit_b16"],
    "t3_clip_ssl": ["--teacher", "clip_vit_b16", "--extra_ssl"],
    "t4_framewise": ["--teacher", "efficientnet_lite0", "--no_temporal_pool"],
    "t5_one_clip": ["--num_clips", "1"],
    "t5_two_clips": ["--num_clips", "2"],
    "t6_batch_epochs": ["--batch_size_per_gpu", "3", "--epochs", "2"],
    "t7_r101": ["--arch", "slow_r101"],
    "t9_rhobyol_rho3": ["--method", "rhobyol", "--num_clips", "3"],
    "t1_rhobyol_paper_recipe": ["--method", "rhobyol", "--augmentation", "paper"],
    "t1_iboot_byol_recipe": ["--augmentation", "pyslowfast_byol"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_trains_a_few_steps(name, synthetic_root, tmp_path):
    out = str(tmp_path / name)
    weights = ["--teacher_weights", "random"] if "--method" not in VARIANTS[name] else []
    if "+" in " ".join(VARIANTS[name]):
        weights = ["--teacher_weights", "random+random"]
    run_main(TINY + ["--data_root", synthetic_root, "--output_dir", out] + weights + VARIANTS[name])
    log = read_log(out)
    steps = [r for r in log if "loss" in r and r.get("kind") != "epoch"]
    assert len(steps) >= 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    ckpt = torch.load(os.path.join(out, "checkpoint.pth"), weights_only=True)
    assert ckpt["epoch"] == ckpt["args"]["epochs"] and "encoder" in ckpt and "optimizer" in ckpt


@pytest.mark.slow
def test_kinetics_list_and_inflated_init(synthetic_root, tmp_path):
    """Table 8 (a Kinetics-format list, as K400/K600 are given) and Table 9 (inflated 2D init)."""
    import torchvision
    videos, _ = data.read_csv_list(os.path.join(synthetic_root, "train.csv"), root=synthetic_root)
    k_list = tmp_path / "k600_train.csv"
    k_list.write_text("".join(f"{os.path.relpath(p, synthetic_root)} {y}\n" for p, y in videos))
    r50 = tmp_path / "resnet50_2d.pth"
    torch.save(torchvision.models.resnet50().state_dict(), r50)
    out = str(tmp_path / "k600_inflated")
    # 4 clips per batch: batch norm over 2 clips of a randomly initialised ResNet-50 blows the first
    # step's weights up a million times (the divergence check stops it, rightly).
    run_main(TINY + ["--arch", "slow_r50", "--dataset", "kinetics", "--data_root", synthetic_root,
                     "--train_list", str(k_list), "--method", "rhobyol", "--init", str(r50),
                     "--output_dir", out, "--batch_size_per_gpu", "4"])
    assert os.path.isfile(os.path.join(out, "checkpoint.pth"))


def test_augmentation_recipe_follows_the_method(synthetic_root, tmp_path):
    """rhoBYOL trains with PySlowFast's BYOL_SlowR50_8x8.yaml recipe, iBoot with the paper's (Section 4.1)."""
    for method, recipe in (("iboot", "paper"), ("rhobyol", "pyslowfast_byol")):
        args = pretrain.get_args_parser().parse_args(TINY + ["--data_root", synthetic_root, "--method", method,
                                                             "--output_dir", str(tmp_path)])
        flags, _ = pretrain.setup(args)
        assert flags.augmentation == recipe
        loader = pretrain.build_loader(flags, torch.device("cpu"))
        assert loader.dataset.resized_crop == augment.PRETRAIN_RECIPES[recipe]["resized_crop"]
        jitter = pretrain.build_gpu_augment(flags, torch.device("cpu")).cfg
        assert jitter == dict(augment.PRETRAIN_RECIPES[recipe]["jitter"], blur_sigma=(0.1, 2.0))
    assert loader.dataset.resized_crop == ((0.2, 0.766), (0.75, 1.3333))
    assert jitter["brightness"] == 0.6 and jitter["hue"] == 0.15


@pytest.mark.parametrize("inflation", ["mean", "center"])
def test_inflation_flag_reaches_the_init(inflation, synthetic_root, tmp_path):
    sd2d = {k: (v.mean(2) if v.dim() == 5 else v) for k, v in models.build_encoder("slow_tiny").state_dict().items()}
    torch.save(sd2d, tmp_path / "r2d.pth")
    args = pretrain.get_args_parser().parse_args(TINY + ["--method", "rhobyol", "--init", str(tmp_path / "r2d.pth"),
                                                         "--inflation", inflation, "--data_root", synthetic_root])
    flags, _ = pretrain.setup(args)
    weight = pretrain.build_objective(flags).encoder.layer3[0].conv1.weight.detach()  # 3 temporal taps
    w2d = sd2d["layer3.0.conv1.weight"]
    expected = [w2d / 3] * 3 if inflation == "mean" else [torch.zeros_like(w2d), w2d, torch.zeros_like(w2d)]
    for t in range(3):
        torch.testing.assert_close(weight[:, :, t], expected[t])


def test_bad_flags_give_clear_errors(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="batch"):
        run_main(TINY + ["--data_root", synthetic_root, "--batch_size_per_gpu", "100000",
                         "--teacher_weights", "random", "--output_dir", str(tmp_path / "b")])


@pytest.mark.slow
def test_two_cpu_ranks_hold_identical_weights(synthetic_root, tmp_path):
    out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "tests/ddp_pretrain_worker.py"] + TINY + [
        "--data_root", synthetic_root, "--teacher_weights", "random", "--max_iters_per_epoch", "3",
        "--output_dir", out]
    res = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    w0 = torch.load(os.path.join(out, "rank0_weights.pth"))
    w1 = torch.load(os.path.join(out, "rank1_weights.pth"))
    initial = torch.load(os.path.join(out, "checkpoint.pth"), weights_only=True)["initial_encoder"]
    assert any(not torch.equal(w0["encoder." + k], v) for k, v in initial.items() if "encoder." + k in w0), \
        "weights did not move"
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"rank 0 and rank 1 differ in {k}"


@pytest.mark.slow
def test_bf16_autocast_on_the_cpu_trains(synthetic_root, tmp_path):
    """--precision bf16 runs under autocast on the CPU too: the loss stays finite and falls (SGD at a
    high rate so that a few steps show it). The run records 1-based epochs and its environment."""
    out = str(tmp_path / "bf16")
    run_main(TINY + ["--data_root", synthetic_root, "--output_dir", out, "--teacher_weights", "random",
                     "--precision", "bf16", "--num_frames", "4", "--epochs", "3", "--max_iters_per_epoch", "4",
                     "--batch_size_per_gpu", "4", "--optimizer", "sgd", "--base_lr", "5"])
    epochs = [r for r in read_log(out) if r.get("kind") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    losses = [r["loss"] for r in epochs]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.5 * losses[0], losses
    import json
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["precision"] == "bf16" and config["environment"]["versions"]["torch"] == torch.__version__


def test_a_non_finite_loss_is_one_line_with_where_and_what_to_change(small_root, tmp_path, monkeypatch):
    real_forward = iboot.IBoot.forward

    def nan_loss(self, clips):
        out = real_forward(self, clips)
        return dict(out, loss=out["loss"] * float("nan"))
    monkeypatch.setattr(iboot.IBoot, "forward", nan_loss)
    with pytest.raises(cli.Diverged, match=r"^the loss is nan at epoch 1, iteration 0, lr [0-9.e-]+: the run "
                                             r"diverged; lower --base_lr or set --clip_grad"):
        run_script(pretrain, PRETRAIN_TINY + ["--data_root", str(small_root / "data"), "--output_dir", str(tmp_path / "nan")])


def test_divergence_stops_the_run(small_root, tmp_path):
    """The loss 2 - 2 cos is bounded, so only the weights show a divergence: --base_lr 1e6 grows them
    100 times within a few steps, which stops the run with one line."""
    with pytest.raises(cli.Diverged, match=r"the encoder's weight norm is .* times its initial norm, at epoch 1, "
                                             r"iteration \d, lr .*: the run diverged; lower --base_lr"):
        run_script(pretrain, PRETRAIN_TINY + ["--data_root", str(small_root / "data"), "--output_dir", str(tmp_path / "d"),
                                         "--base_lr", "1e6", "--max_iters_per_epoch", "8"])


@pytest.mark.slow
def test_pretrain_reports_the_k_nn_of_eval_knn(small_root, tmp_path, capsys):
    """One name, one protocol: pretrain.py's closing k-NN is eval_knn.py's number on the same checkpoint
    with the same views (--test_crop_size 32 --test_spacing offset), printed with the same label; the
    default eval_knn.py views are another label. The monitors fill the epoch records (and the line)."""
    import eval_knn
    out = str(tmp_path / "run")
    run_script(pretrain, PRETRAIN_TINY + ["--data_root", str(small_root / "data"), "--output_dir", out,
                                          "--epochs", "2", "--knn_every", "1", "--knn_eval", "yes"])
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("k-NN top-1")][-1]
    ours = float(printed.split("trained ")[1].split("%")[0])
    record = run_script(eval_knn, ["--pretrained", os.path.join(out, "checkpoint.pth"), "--output_dir",
                                   str(tmp_path / "knn"), "--results_dir", str(tmp_path / "res"), "--dataset",
                                   "synthetic", "--data_root", str(small_root / "data"), "--crop_size", "32",
                                   "--num_frames", "2", "--stride", "4", "--num_workers", "0", "--test_crop_size", "32",
                                   "--test_spacing", "offset"])
    assert printed.startswith(f"k-NN top-1 ({record['views']}) on synthetic val: trained ")
    assert record["views"] == "k=20, 1 crop of 32 (short side 37), centre clip"
    assert ours == pytest.approx(round(record["value"], 1))
    log = read_log(out)
    epochs = [r for r in log if r.get("kind") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and [r["epoch"] for r in log if r.get("kind") == "init"] == [0]
    assert all({"feat_std", "feat_rank", "teacher_cos", "teacher_cos_centred", "knn_top1"} <= set(r) for r in epochs)
    assert epochs[-1]["knn_top1"] == pytest.approx(record["value"])


def test_the_k_nn_of_pretraining_stops_on_videos_in_both_lists(small_root, tmp_path):
    """The monitors' k-NN is checked as an evaluation's (data.check_eval_lists): a validation list that
    holds training videos stops the run before anything is written, instead of scoring training videos
    on themselves."""
    out, train = tmp_path / "run", str(small_root / "data" / "train.csv")
    with pytest.raises(ValueError, match=r"^\d+ videos are in both the csv train list \(.*\) and the csv val list "
                                         r"\(.*\) \(first: .*\): a score on them is no test"):
        run_script(pretrain, PRETRAIN_TINY + ["--dataset", "csv", "--data_root", str(small_root / "data"),
                                              "--train_list", train, "--val_list", train, "--knn_every", "1",
                                              "--output_dir", str(out)])
    assert not out.exists()


def test_the_monitors_read_the_official_split_that_training_reads(small_root, tmp_path):
    """--dataset ucf101 --split 2: the monitors' k-NN sets are split 2's lists, as the training set
    (split 1's test videos are in split 2's training list: measured on split 1, the k-NN would score
    videos the encoder trained on)."""
    video = data.read_csv_list(str(small_root / "data" / "train.csv"))[0][0][0]
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 A\n2 B\n")
    for k in (1, 2, 3):
        (lists / f"trainlist0{k}.txt").write_text(f"A/v_A_g0{k}_c01.avi 1\nB/v_B_g0{k}_c01.avi 2\n")
        (lists / f"testlist0{k}.txt").write_text(f"A/v_A_g1{k}_c01.avi\nB/v_B_g1{k}_c01.avi\n")
        for c in "AB":
            os.makedirs(tmp_path / "UCF-101" / c, exist_ok=True)
            for g in "01":
                os.symlink(video, tmp_path / "UCF-101" / c / f"v_{c}_g{g}{k}_c01.avi")
    args = pretrain.get_args_parser().parse_args(PRETRAIN_TINY + [
        "--dataset", "ucf101", "--data_root", str(tmp_path), "--split", "2", "--knn_every", "1",
        "--output_dir", str(tmp_path / "run")])
    flags, _ = pretrain.setup(args)
    val, train = pretrain.monitor_sets(flags)
    assert [os.path.basename(p) for p, _ in val.videos] == ["v_A_g12_c01.avi", "v_B_g12_c01.avi"]
    assert [os.path.basename(p) for p, _ in train.videos] == ["v_A_g02_c01.avi", "v_B_g02_c01.avi"]


@pytest.mark.slow
def test_the_k_nn_report_names_the_teacher_it_measured(small_root, tmp_path, capsys):
    """An ensemble's k-NN reference is its first teacher's frame features: the line names that teacher,
    not the ensemble."""
    run_script(pretrain, PRETRAIN_TINY + ["--data_root", str(small_root / "data"), "--output_dir",
                                          str(tmp_path / "run"), "--teacher", "efficientnet_lite0+dino_vit_s16",
                                          "--knn_eval", "yes", "--monitor_videos", "0"])
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("k-NN top-1")][-1]
    assert " | teacher efficientnet_lite0 (frame features) " in line and "+" not in line


def test_a_training_set_smaller_than_one_batch_stops_the_run(small_root, tmp_path):
    """No step could run: one line naming the batch, before anything is written (data.train_loader, the
    same for every script that trains)."""
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"^the training set has 18 videos, fewer than one global batch of "
                                         r"--batch_size_per_gpu 32 x 1 processes$"):
        run_script(pretrain, PRETRAIN_TINY + ["--data_root", str(small_root / "data"), "--output_dir", str(out),
                                              "--batch_size_per_gpu", "32"])
    assert not out.exists()
