"""pretrain.py: every pretraining variant of Tables 1-9 trains a few steps; resume after SIGKILL; DDP.

All runs use tiny synthetic clips and random-init teachers (offline).
"""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import utils  # noqa: F401  (first: registers the torchvision fallback)

import augment  # noqa: E402
import data  # noqa: E402
import models  # noqa: E402
import pretrain  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--arch", "slow_tiny", "--crop_size", "32", "--num_frames", "2", "--stride", "4",
        "--batch_size_per_gpu", "2", "--num_workers", "0", "--epochs", "1", "--max_iters_per_epoch", "2",
        "--warmup_epochs", "0", "--knn_eval", "no", "--log_every", "1"]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    data.make_synthetic_dataset(root, seed=0)
    return root


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
    ckpt = torch.load(os.path.join(out, "checkpoint.pth"), weights_only=False)
    assert ckpt["epoch"] == ckpt["args"]["epochs"] and "encoder" in ckpt and "optimizer" in ckpt


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
        pretrain.setup(args)
        assert args.augmentation == recipe
        loader = pretrain.build_loader(args, torch.device("cpu"))
        assert loader.dataset.resized_crop == augment.PRETRAIN_RECIPES[recipe]["resized_crop"]
        jitter = pretrain.build_gpu_augment(args, torch.device("cpu")).cfg
        assert jitter == dict(augment.PRETRAIN_RECIPES[recipe]["jitter"], blur_sigma=(0.1, 2.0))
    assert loader.dataset.resized_crop == ((0.2, 0.766), (0.75, 1.3333))
    assert jitter["brightness"] == 0.6 and jitter["hue"] == 0.15


@pytest.mark.parametrize("inflation", ["mean", "center"])
def test_inflation_flag_reaches_the_init(inflation, tmp_path):
    sd2d = {k: (v.mean(2) if v.dim() == 5 else v) for k, v in models.build_encoder("slow_tiny").state_dict().items()}
    torch.save(sd2d, tmp_path / "r2d.pth")
    args = pretrain.get_args_parser().parse_args(TINY + ["--method", "rhobyol", "--init", str(tmp_path / "r2d.pth"),
                                                         "--inflation", inflation])
    weight = pretrain.build_objective(args).encoder.layer3[0].conv1.weight.detach()  # 3 temporal taps
    w2d = sd2d["layer3.0.conv1.weight"]
    expected = [w2d / 3] * 3 if inflation == "mean" else [torch.zeros_like(w2d), w2d, torch.zeros_like(w2d)]
    for t in range(3):
        torch.testing.assert_close(weight[:, :, t], expected[t])


def test_bad_flags_give_clear_errors(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="--num_clips"):
        run_main(TINY + ["--data_root", synthetic_root, "--num_clips", "4", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="batch"):
        run_main(TINY + ["--data_root", synthetic_root, "--batch_size_per_gpu", "100000",
                         "--teacher_weights", "random", "--output_dir", str(tmp_path / "b")])


def _final_encoder(output_dir):
    return torch.load(os.path.join(output_dir, "checkpoint.pth"), weights_only=False)["encoder"]


RESUME_ARGV = TINY + ["--teacher_weights", "random", "--epochs", "3", "--max_iters_per_epoch", "6",
                      "--num_workers", "1", "--extra_ssl"]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def uninterrupted(synthetic_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("uninterrupted"))
    subprocess.run([sys.executable, "pretrain.py"] + RESUME_ARGV + ["--data_root", synthetic_root, "--output_dir", out],
                   cwd=ROOT, env=ENV, check=True, capture_output=True)
    return _final_encoder(out)


def _start_and_signal(argv, output_dir, sig, epoch, iteration):
    """Start pretrain.py and send `sig` once the log shows (epoch, iteration) under way."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log_path, deadline = os.path.join(output_dir, "log.jsonl"), time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.isfile(log_path) and any(r.get("epoch") == epoch and r.get("iter", -1) >= iteration
                                            and r.get("kind") != "epoch" for r in read_log(output_dir)):
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between the resumed and the uninterrupted run"


def test_resume_after_sigkill_matches_uninterrupted_run(synthetic_root, tmp_path, uninterrupted):
    resumed = str(tmp_path / "killed")
    argv = [sys.executable, "pretrain.py"] + RESUME_ARGV + ["--data_root", synthetic_root, "--output_dir", resumed]
    code, _, _ = _start_and_signal(argv, resumed, signal.SIGKILL, epoch=2, iteration=2)
    assert code == -signal.SIGKILL, "the run finished before it could be killed mid-epoch"
    assert torch.load(os.path.join(resumed, "checkpoint.pth"), weights_only=False)["epoch"] == 1
    out = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from" in out.stdout
    _assert_same_weights(uninterrupted, _final_encoder(resumed))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_writes_a_mid_epoch_checkpoint_that_resumes_exactly(sig, synthetic_root, tmp_path, uninterrupted):
    """SIGTERM (SLURM's notice before preemption) or Ctrl-C at a random step: the run finishes that step,
    writes a checkpoint that resumes mid-epoch, exits with one line and 128 + the signal; started
    again, it ends with the uninterrupted run's weights, bit for bit."""
    epoch, iteration = [int(v) for v in np.random.default_rng(int(sig)).integers((1, 0), (4, 5))]
    resumed = str(tmp_path / "signalled")
    argv = [sys.executable, "pretrain.py"] + RESUME_ARGV + ["--data_root", synthetic_root, "--output_dir", resumed]
    code, _, err = _start_and_signal(argv, resumed, sig, epoch, iteration)
    assert code == 128 + sig, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"stopped by {sig.name} at epoch {epoch}, iteration \d+; checkpoint written to "
                        rf"{re.escape(resumed)}: run the same command again to resume", last), last
    ckpt = torch.load(os.path.join(resumed, "checkpoint.pth"), weights_only=False)
    assert ckpt["epoch"] == epoch - 1 and ckpt["iteration"] > iteration
    out = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"iterations into epoch {epoch}" in out.stdout
    _assert_same_weights(uninterrupted, _final_encoder(resumed))


def test_two_cpu_ranks_hold_identical_weights(synthetic_root, tmp_path):
    out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "tests/ddp_pretrain_worker.py"] + TINY + [
        "--data_root", synthetic_root, "--teacher_weights", "random", "--max_iters_per_epoch", "3",
        "--output_dir", out]
    res = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    w0 = torch.load(os.path.join(out, "rank0_weights.pth"))
    w1 = torch.load(os.path.join(out, "rank1_weights.pth"))
    initial = torch.load(os.path.join(out, "checkpoint.pth"), weights_only=False)["initial_encoder"]
    assert any(not torch.equal(w0["encoder." + k], v) for k, v in initial.items() if "encoder." + k in w0), \
        "weights did not move"
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"rank 0 and rank 1 differ in {k}"


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
